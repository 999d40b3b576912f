"""Inputs for the output-object tests: a synthetic head CT with labelled lesions, and dciodvfy.

The lesions of :mod:`tests.support.synthetic_ct` come as one union mask; here
each voxel is given to the nearest planted lesion, which is exact for the
well-separated spheres used in the tests. Measurements are computed with plain
numpy so the tests know the values the objects must carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.outputs import (
    AlgorithmInfo,
    Equipment,
    JobUids,
    LesionMeasurement,
    SegmentSpec,
    StudyAssessment,
)
from tests.support.dciodvfy import DCIODVFY, ValidationResult, run_dciodvfy
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, series_datasets

#: The default org root of ``IdentitySettings``, normalised with its trailing dot.
UID_ROOT = "1.2.826.0.1.3680043.10.1476."
EQUIPMENT = Equipment(
    manufacturer="dicom-node project",
    manufacturer_model_name="dicom-node",
    software_versions="0.1.0",
    device_serial_number="TESTNODE1",
)
ALGORITHM = AlgorithmInfo(name="ich-threshold", version="1.0.0")
#: Two separated lesions: a larger one right-posterior, a smaller one left-anterior.
TWO_LESIONS = (Lesion((25.0, 15.0, 0.0), 14.0), Lesion((-30.0, -25.0, 5.0), 9.0))

#: dciodvfy warnings we accept, each with the reason; anything else fails a test.
ACCEPTED_WARNINGS: tuple[str, ...] = ()
#: Accepted only when the source itself lacks Study ID: we copy the study's
#: (empty) Study ID as PS3.3 C.7.2.1 asks; inventing one would fork the study.
EMPTY_STUDY_ID_WARNING = "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID"


@dataclass(frozen=True)
class Case:
    """A source series with everything the three builders need."""

    spec: SeriesSpec
    source_images: list[Dataset]
    hu: np.ndarray
    label_map: np.ndarray
    lesions: tuple[LesionMeasurement, ...]
    uids: JobUids

    @property
    def segments(self) -> list[SegmentSpec]:
        """One segment per lesion, labelled as the pipeline would."""
        return [
            SegmentSpec(segment_number=n, label=f"ICH {n}", tracking_uid=self.uids.tracking(n))
            for n in range(1, len(self.lesions) + 1)
        ]

    @property
    def assessment(self) -> StudyAssessment:
        return StudyAssessment(hemorrhage_present=bool(self.lesions), probability=0.87 if self.lesions else 0.04)


def make_case(
    *,
    n_slices: int = 12,
    rows: int = 128,
    columns: int = 128,
    lesions: Sequence[Lesion] = TWO_LESIONS,
    job_key: str = "job-1",
) -> Case:
    """A synthetic series; pixel spacing keeps the head's size whatever the matrix."""
    spacing = 0.45 * 512 / rows
    spec = SeriesSpec(
        n_slices=n_slices,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=(spacing, spacing),
        lesions=list(lesions),
    )
    hu, mask = head_volume(spec)
    label_map = _label_nearest_lesion(spec, mask)
    measurements = tuple(_measure(spec, hu, label_map, n) for n in range(1, len(lesions) + 1))
    return Case(spec, series_datasets(spec), hu, label_map, measurements, JobUids(UID_ROOT, job_key))


def _voxel_mm(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient x, y, z (mm) of the voxel grid of an untilted phantom, broadcastable."""
    dy, dx = spec.pixel_spacing_mm
    z = (np.arange(spec.n_slices) - (spec.n_slices - 1) / 2.0) * spec.slice_thickness_mm
    y = (np.arange(spec.rows) - (spec.rows - 1) / 2.0) * dy
    x = (np.arange(spec.columns) - (spec.columns - 1) / 2.0) * dx
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _label_nearest_lesion(spec: SeriesSpec, mask: np.ndarray) -> np.ndarray:
    label_map = np.zeros(mask.shape, dtype=np.uint8)
    if not spec.lesions:
        return label_map
    z, y, x = _voxel_mm(spec)
    distances = np.stack(
        [
            np.broadcast_to((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2, mask.shape)
            for cx, cy, cz in (lesion.center_mm for lesion in spec.lesions)
        ]
    )
    label_map[mask] = (np.argmin(distances, axis=0) + 1)[mask]
    return label_map


def _measure(spec: SeriesSpec, hu: np.ndarray, label_map: np.ndarray, label: int) -> LesionMeasurement:
    dy, dx = spec.pixel_spacing_mm
    voxels = label_map == label
    areas = voxels.sum(axis=(1, 2))
    key = int(np.argmax(areas))
    return LesionMeasurement(
        segment_number=label,
        volume_ml=float(voxels.sum()) * dy * dx * spec.slice_thickness_mm / 1000.0,
        longest_axial_diameter_mm=2.0 * float(np.sqrt(areas[key] * dy * dx / np.pi)),
        mean_hu=float(hu[voxels].mean()),
        confidence=0.5 + 0.1 * label,
        key_slice_index=key,
    )


def require_dciodvfy() -> None:
    """Fail, not skip: every object we create must be validated (CONVENTIONS.md)."""
    if not DCIODVFY.is_file():
        pytest.fail(f"{DCIODVFY} is required: install dicom3tools (apt-get install dicom3tools)")


def assert_valid(path: Path, also_accepted: Sequence[str] = ()) -> ValidationResult:
    """dciodvfy finds no error, and no warning beyond :data:`ACCEPTED_WARNINGS` and ``also_accepted``."""
    require_dciodvfy()
    result = run_dciodvfy(path)
    assert result.ok, f"dciodvfy errors in {path.name}:\n" + "\n".join(result.errors)
    unexpected = [w for w in result.warnings if w not in (*ACCEPTED_WARNINGS, *also_accepted)]
    assert not unexpected, f"dciodvfy warnings in {path.name}:\n" + "\n".join(unexpected)
    return result


def uid_elements(dataset: Dataset, path: str = "") -> dict[str, str]:
    """Every UI element of a dataset, nested sequences included, keyed by its path."""
    found: dict[str, str] = {}
    for element in dataset:
        where = f"{path}/{element.keyword or element.tag}"
        if element.VR == "UI":
            found[where] = str(element.value)
        elif element.VR == "SQ":
            for index, item in enumerate(element.value):
                found.update(uid_elements(item, f"{where}[{index}]"))
    return found
