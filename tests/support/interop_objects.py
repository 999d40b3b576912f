"""Interoperability tests: third-party readers open the objects the node creates.

Each test in this package takes the result objects of one synthetic study
(built here with :mod:`dicom_node.outputs`, exactly as the pipeline builds
them) and hands them to software we did not write: OHIF's parsers (dcmjs and
@cornerstonejs/adapters, run by Node), Orthanc's DICOMweb plugin, and
PixelMed's validators. A missing tool fails the test with the command that
installs it; nothing here skips.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.outputs import SegmentSpec
from dicom_node.outputs.sources import prepare_sources
from tests.support.outputs_fixtures import (
    UID_ROOT,
    Case,
    case_key_images,
    case_report,
    case_segmentation,
    make_case,
    write_key_images,
)


@dataclass(frozen=True)
class WrittenResults:
    """The source CT and the result objects of one case, as Part 10 files."""

    case: Case
    ct: tuple[Path, ...]
    seg: Path
    sr: Path
    key_images: tuple[Path, ...]

    @property
    def segment_voxel_counts(self) -> dict[int, int]:
        """Voxels of each segment in the label map the SEG was built from (a negative case: one, empty)."""
        return {
            n: int(np.count_nonzero(self.case.label_map == n))
            for n in range(1, max(len(self.case.lesions), 1) + 1)
        }


def write_results(directory: Path, case: Case | None = None) -> WrittenResults:
    """Build SEG, SR and key images of ``case`` (default: two lesions) and write them with the CT.

    A case without lesions gets what a negative study gets: a SEG with one
    empty segment, an SR with the study-level group only, and the summary key
    image. CT images without a Frame of Reference UID are written as they are,
    and the objects built from the pipeline's prepared copies of them.
    """
    case = make_case() if case is None else case
    directory.mkdir(parents=True, exist_ok=True)
    ct_dir = directory / "ct"
    ct_dir.mkdir(exist_ok=True)
    ct_paths = []
    for source in case.source_images:
        path = ct_dir / f"IM{int(source.InstanceNumber):05d}.dcm"
        source.save_as(path, enforce_file_format=True)
        ct_paths.append(path)
    written_case = case
    if not all("FrameOfReferenceUID" in ds for ds in case.source_images):
        case = dataclasses.replace(case, source_images=prepare_sources(case.source_images, uid_root=UID_ROOT).images)

    segments = case.segments or [SegmentSpec(segment_number=1, label="ICH", tracking_uid=case.uids.tracking(1))]
    segmentation = case_segmentation(case, segments=segments)
    seg_path = directory / "seg.dcm"
    segmentation.save_as(seg_path, enforce_file_format=True)

    report = case_report(case, segmentation if case.lesions else None)
    sr_path = directory / "sr.dcm"
    report.save_as(sr_path, enforce_file_format=True)

    key_paths = write_key_images(case_key_images(case), directory)
    return WrittenResults(written_case, tuple(ct_paths), seg_path, sr_path, tuple(key_paths))

