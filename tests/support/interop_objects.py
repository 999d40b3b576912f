"""Interoperability tests: third-party readers open the objects the node creates.

Each test in this package takes the result objects of one synthetic study
(built here with :mod:`dicom_node.outputs`, exactly as the pipeline builds
them) and hands them to software we did not write: OHIF's parsers (dcmjs and
@cornerstonejs/adapters, run by Node), Orthanc's DICOMweb plugin, and
PixelMed's validators. A missing tool fails the test with the command that
installs it; nothing here skips.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.outputs import (
    LesionMeasurement,
    SegmentSpec,
    StudyAssessment,
    build_key_images,
    build_report,
    build_segmentation,
    device_observer_uid,
)
from dicom_node.outputs.sources import prepare_sources
from dicom_node.outputs.uids import KEY_IMAGES, SEG, SR
from tests.support.outputs_fixtures import (
    ALGORITHM,
    EQUIPMENT,
    UID_ROOT,
    Case,
    make_case,
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


def negative_case(job_key: str = "job-negative") -> Case:
    """A study without lesions; the pipeline then sends an empty one-segment SEG."""
    return make_case(lesions=(), job_key=job_key)


def without_frame_of_reference(case: Case) -> Case:
    """The case as an anonymised export sends it: no Frame of Reference UID on any CT image.

    The returned case's ``source_images`` are what the CT files hold. The
    result objects are then built, as the pipeline builds them, from
    :func:`~dicom_node.outputs.sources.prepare_sources` copies, which carry a
    Frame of Reference UID derived from the series (see :func:`write_results`).
    """
    images = [copy.deepcopy(ds) for ds in case.source_images]
    for image in images:
        del image.FrameOfReferenceUID
    return dataclasses.replace(case, source_images=images)


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
    segmentation = build_segmentation(
        source_images=case.source_images,
        label_map=case.label_map,
        segments=segments,
        algorithm=ALGORITHM,
        equipment=EQUIPMENT,
        series_instance_uid=case.uids.series(SEG),
        series_number=9001,
        series_description="AI ICH SEGMENTATION - RESEARCH USE ONLY",
        sop_instance_uid=case.uids.instance(SEG),
        dimension_organization_uid=case.uids.dimension_organization(SEG),
    )
    seg_path = directory / "seg.dcm"
    segmentation.save_as(seg_path, enforce_file_format=True)

    report = _report(case, segmentation if case.lesions else None)
    sr_path = directory / "sr.dcm"
    report.save_as(sr_path, enforce_file_format=True)

    images = build_key_images(
        source_images=case.source_images,
        hu_volume=case.hu,
        label_map=case.label_map,
        lesions=case.lesions,
        assessment=case.assessment,
        equipment=EQUIPMENT,
        algorithm_text=f"{ALGORITHM.name} {ALGORITHM.version}",
        series_instance_uid=case.uids.series(KEY_IMAGES),
        series_number=9003,
        series_description="AI ICH KEY IMAGES - RESEARCH USE ONLY",
        sop_instance_uids=[case.uids.instance(KEY_IMAGES, n) for n in range(1, len(case.lesions) + 2)],
    )
    key_paths = []
    for image in images:
        path = directory / f"KI{int(image.InstanceNumber):03d}.dcm"
        image.save_as(path, enforce_file_format=True)
        key_paths.append(path)
    return WrittenResults(written_case, tuple(ct_paths), seg_path, sr_path, tuple(key_paths))


def _report(case: Case, segmentation: Dataset | None) -> Dataset:
    lesions: tuple[LesionMeasurement, ...] = case.lesions
    assessment: StudyAssessment = case.assessment
    return build_report(
        source_images=case.source_images,
        assessment=assessment,
        lesions=lesions,
        segmentation=segmentation,
        algorithm=ALGORITHM,
        equipment=EQUIPMENT,
        device_observer_uid=device_observer_uid(UID_ROOT),
        series_instance_uid=case.uids.series(SR),
        series_number=9002,
        series_description="AI ICH REPORT - RESEARCH USE ONLY",
        sop_instance_uid=case.uids.instance(SR),
    )
