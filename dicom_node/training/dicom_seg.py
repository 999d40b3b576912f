"""Reader of DICOM + SEG training data: one folder per case, a CT series and a SEG.

The SEG must reference the series (ReferencedSeriesSequence). Split by case,
with a seed (:mod:`dicom_node.training.splits`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.imaging.volume import CTVolume, assemble_volume
from dicom_node.models.inputs import InputSpec
from dicom_node.models.runner import measured_slices
from dicom_node.training.cases import Case, SliceSet, volume_slices


@dataclass(frozen=True)
class DicomCase:
    """A CT series and the SEG that annotates it, found in one folder."""

    name: str
    series_instance_uid: str
    ct_files: tuple[Path, ...]
    seg_file: Path


def dicom_cases_in(root: str | Path) -> list[DicomCase]:
    """One :class:`DicomCase` per SEG under ``root`` whose referenced series is there too.

    Cases are named after the SEG's folder relative to ``root``; a SEG whose
    series is missing is an error, as is a folder with no SEG at all.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of DICOM cases")
    series: dict[str, list[Path]] = {}
    segs: list[tuple[Path, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if header.get("Modality") == "SEG":
            referenced = header.get("ReferencedSeriesSequence")
            if not referenced:
                raise ValueError(f"{path}: a SEG without ReferencedSeriesSequence cannot be matched to its CT")
            segs.append((path, str(referenced[0].SeriesInstanceUID)))
        elif header.get("Modality") == "CT":
            series.setdefault(str(header.SeriesInstanceUID), []).append(path)
    if not segs:
        raise FileNotFoundError(f"{root} holds no DICOM SEG: DICOM training data needs SEG ground truth")
    cases = []
    for seg_path, series_uid in segs:
        if series_uid not in series:
            raise ValueError(f"{seg_path} references series {series_uid}, whose CT images are not under {root}")
        name = str(seg_path.parent.relative_to(root)) if seg_path.parent != root else seg_path.stem
        cases.append(DicomCase(name, series_uid, tuple(series[series_uid]), seg_path))
    return cases


def read_dicom_case(case: DicomCase) -> tuple[CTVolume, np.ndarray]:
    """The assembled HU volume and its SEG mask (any segment), aligned frame for frame.

    Slices the volume interpolated for missing instances have no SEG frame and
    get an empty mask.
    """
    import highdicom as hd

    volume = assemble_volume(list(case.ct_files), series_instance_uid=case.series_instance_uid)
    seg = hd.seg.segread(case.seg_file)
    uids = [uid for uid in volume.source_sop_instance_uids if uid is not None]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=False)
    truth = np.zeros(volume.hu.shape, dtype=bool)
    present = [k for k, uid in enumerate(volume.source_sop_instance_uids) if uid is not None]
    truth[present] = np.asarray(pixels).any(axis=-1)
    return volume, truth


def dicom_slices(root: str | Path, names: Sequence[str], spec: InputSpec) -> SliceSet:
    """Model-size training slices of the named DICOM cases."""
    items = []
    for case in dicom_cases_in(root):
        if case.name in names:
            volume, truth = read_dicom_case(case)
            z, y, x = (float(s) for s in volume.spacing_mm)
            items += volume_slices(case.name, volume.hu, truth, (z, y, x), spec, measured=measured_slices(volume))
    return SliceSet.build(items)


def dicom_eval_cases(root: str | Path, names: Sequence[str] | None = None) -> Iterator[Case]:
    """Evaluation cases of DICOM + SEG data (all, or the named ones)."""
    for case in dicom_cases_in(root):
        if names is None or case.name in names:
            volume, truth = read_dicom_case(case)
            yield Case(key=case.name, volume=volume, label=int(truth.any()), truth=truth)


