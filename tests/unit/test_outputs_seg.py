"""The SEG: BINARY, uncompressed, frame-aligned, coded, valid, and the same when rebuilt."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as library_codes
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from dicom_node.outputs import RESEARCH_USE_DISCLAIMER, SegmentSpec, build_segmentation, codes
from dicom_node.outputs.uids import SEG
from tests.support.dciodvfy import parse_dciodvfy_output, run_dciodvfy
from tests.support.outputs_fixtures import (
    ALGORITHM,
    EQUIPMENT,
    Case,
    assert_valid,
    make_case,
    require_dciodvfy,
    uid_elements,
)


def _build(
    case: Case, segments: list[SegmentSpec] | None = None, label_map: np.ndarray | None = None
) -> hd.seg.Segmentation:
    return build_segmentation(
        source_images=case.source_images,
        label_map=case.label_map if label_map is None else label_map,
        segments=case.segments if segments is None else segments,
        algorithm=ALGORITHM,
        equipment=EQUIPMENT,
        series_instance_uid=case.uids.series(SEG),
        series_number=9001,
        series_description="AI ICH SEGMENTATION - RESEARCH USE ONLY",
        sop_instance_uid=case.uids.instance(SEG),
        dimension_organization_uid=case.uids.dimension_organization(SEG),
    )


def _write_and_read(segmentation: hd.seg.Segmentation, path: Path) -> hd.seg.Segmentation:
    segmentation.save_as(path, enforce_file_format=True)
    return hd.seg.segread(path)


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def written(case: Case, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, hd.seg.Segmentation]:
    require_dciodvfy()
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    return path, _write_and_read(_build(case), path)


def _frame_source_uid(frame_item: pydicom.Dataset) -> str:
    derivation = frame_item.DerivationImageSequence[0]
    return derivation.SourceImageSequence[0].ReferencedSOPInstanceUID


def test_it_is_a_binary_uncompressed_segmentation(written: tuple[Path, hd.seg.Segmentation]) -> None:
    _, seg = written
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert list(seg.ImageType) == ["DERIVED", "PRIMARY"]


def _frame_segment_number(seg: hd.seg.Segmentation, frame_item: pydicom.Dataset) -> int:
    """With a single segment, highdicom puts the identification in the shared groups."""
    item = frame_item if "SegmentIdentificationSequence" in frame_item else seg.SharedFunctionalGroupsSequence[0]
    return int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _assert_frames_map_to_their_sources(case: Case, seg: hd.seg.Segmentation) -> None:
    """Every segment has one frame per source image, and each frame shows that image's mask.

    highdicom 0.28.2 orders the frames along the slice normal whatever the
    caller's order; each frame names its source image (Derivation Image
    Sequence) and position, which is what viewers use to place it.
    """
    n_slices, n_segments = len(case.source_images), len(seg.SegmentSequence)
    assert seg.NumberOfFrames == n_slices * n_segments
    index_of = {ds.SOPInstanceUID: k for k, ds in enumerate(case.source_images)}
    pixels = seg.pixel_array.reshape(seg.NumberOfFrames, seg.Rows, seg.Columns)
    seen: dict[int, list[int]] = {n: [] for n in range(1, n_segments + 1)}
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment_number = _frame_segment_number(seg, item)
        k = index_of[_frame_source_uid(item)]
        seen[segment_number].append(k)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in case.source_images[k].ImagePositionPatient])
        np.testing.assert_array_equal(pixels[f], case.label_map[k] == segment_number)
    for segment_number, slices in seen.items():
        assert sorted(slices) == list(range(n_slices)), f"segment {segment_number} is not frame-aligned"


def test_one_frame_per_source_image_and_segment(case: Case, written: tuple[Path, hd.seg.Segmentation]) -> None:
    _, seg = written
    _assert_frames_map_to_their_sources(case, seg)
    referenced = [
        ref.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    ]
    assert sorted(referenced) == sorted(ds.SOPInstanceUID for ds in case.source_images)


def test_each_segment_holds_exactly_its_voxels(case: Case, written: tuple[Path, hd.seg.Segmentation]) -> None:
    _, seg = written
    for lesion in case.lesions:
        expected = int((case.label_map == lesion.segment_number).sum())
        assert expected > 0
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in case.source_images],
            segment_numbers=[lesion.segment_number],
        )
        assert int(pixels.sum()) == expected


def test_segments_carry_codes_algorithm_and_tracking(
    case: Case, written: tuple[Path, hd.seg.Segmentation]
) -> None:
    _, seg = written
    for spec, item in zip(case.segments, seg.SegmentSequence, strict=True):
        description = hd.seg.SegmentDescription.from_dataset(item)
        assert description.segment_number == spec.segment_number
        assert description.segment_label == spec.label
        assert description.segmented_property_type == codes.INTRACRANIAL_HEMORRHAGE
        assert description.segmented_property_type.value == "1386000"
        assert description.segmented_property_category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        assert [r.value for r in description.anatomic_regions] == ["12738006"]
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification
        assert algorithm is not None
        assert (algorithm.name, algorithm.version) == (ALGORITHM.name, ALGORITHM.version)
        assert algorithm.family == library_codes.DCM.ArtificialIntelligence
        assert algorithm.family.value == "123110"
        assert description.tracking_uid == spec.tracking_uid
        assert description.tracking_id == spec.label
        assert hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb() == (255, 0, 0)


def test_equipment_series_and_research_marking(case: Case, written: tuple[Path, hd.seg.Segmentation]) -> None:
    _, seg = written
    source = case.source_images[0]
    assert seg.Manufacturer == EQUIPMENT.manufacturer
    assert seg.ManufacturerModelName == EQUIPMENT.manufacturer_model_name
    assert seg.SoftwareVersions == EQUIPMENT.software_versions
    assert seg.DeviceSerialNumber == EQUIPMENT.device_serial_number
    assert (seg.SeriesNumber, seg.SeriesDescription) == (9001, "AI ICH SEGMENTATION - RESEARCH USE ONLY")
    assert seg.ContentDescription == RESEARCH_USE_DISCLAIMER
    assert seg.ImageComments == RESEARCH_USE_DISCLAIMER
    assert seg.ContentQualification == "RESEARCH"
    # The brain is unpaired: Image Laterality says so, and General Series Laterality
    # (Type 2C, for paired body parts) is absent.
    assert seg.ImageLaterality == "U"
    assert "Laterality" not in seg
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert (seg.PatientName, seg.PatientID) == (source.PatientName, source.PatientID)


def test_dciodvfy_finds_no_error(written: tuple[Path, hd.seg.Segmentation]) -> None:
    assert_valid(written[0])


def test_frames_map_to_their_sources_whatever_the_callers_order(case: Case, tmp_path: Path) -> None:
    order = np.random.default_rng(3).permutation(len(case.source_images))
    shuffled = Case(
        case.spec,
        [case.source_images[k] for k in order],
        case.hu[order],
        case.label_map[order],
        case.lesions,
        case.uids,
    )
    seg = _write_and_read(_build(shuffled), tmp_path / "shuffled.dcm")
    _assert_frames_map_to_their_sources(shuffled, seg)


def test_a_negative_study_gets_a_loadable_seg_with_an_empty_segment(case: Case, tmp_path: Path) -> None:
    empty = np.zeros_like(case.label_map)
    spec = [SegmentSpec(segment_number=1, label="ICH", tracking_uid=case.uids.tracking(1))]
    path = tmp_path / "empty.dcm"
    seg = _write_and_read(_build(case, spec, empty), path)
    assert seg.NumberOfFrames == len(case.source_images)
    assert not seg.pixel_array.any()
    _assert_frames_map_to_their_sources(Case(case.spec, case.source_images, case.hu, empty, (), case.uids), seg)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in case.source_images], segment_numbers=[1]
    )
    assert pixels.shape[0] == len(case.source_images) and not pixels.any()
    assert_valid(path)


def test_subtypes_keep_their_own_codes(case: Case, tmp_path: Path) -> None:
    # Any library code works for the test; the pipeline would pass the subtype's SNOMED code.
    subtype = library_codes.SCT.Hemorrhage
    segments = [
        case.segments[0],
        SegmentSpec(2, "Hemorrhage 2", case.uids.tracking(2), property_type=subtype, display_rgb=(0, 0, 255)),
    ]
    path = tmp_path / "subtypes.dcm"
    seg = _write_and_read(_build(case, segments), path)
    types = [item.SegmentedPropertyTypeCodeSequence[0].CodeValue for item in seg.SegmentSequence]
    assert types == ["1386000", subtype.value]
    assert_valid(path)


def test_rebuilding_gives_identical_uids(case: Case) -> None:
    first, second = uid_elements(_build(case)), uid_elements(_build(case))
    assert first == second
    assert first["/SOPInstanceUID"] == case.uids.instance(SEG)
    assert first["/SeriesInstanceUID"] == case.uids.series(SEG)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: {"label_map": c.label_map[1:]}, "frame-aligned"),
        (lambda c: {"label_map": c.label_map[:, 1:]}, "source grid"),
        (lambda c: {"label_map": c.label_map.astype(np.int16)}, "unsigned"),
        (lambda c: {"segments": []}, "at least one segment"),
        (lambda c: {"segments": c.segments[:1]}, "every label value needs a SegmentSpec"),
        (lambda c: {"segments": c.segments[::-1]}, "numbered 1..n"),
    ],
)
def test_inputs_that_break_a_rule_are_refused(
    case: Case, change: Callable[[Case], dict[str, Any]], message: str
) -> None:
    arguments = {"label_map": case.label_map, "segments": case.segments}
    arguments.update(change(case))
    with pytest.raises(ValueError, match=message):
        _build(case, arguments["segments"], arguments["label_map"])


def test_a_realistic_series_builds_quickly(tmp_path: Path) -> None:
    """40 slices of 512x512 with two lesions: the node's common case (NOTES.md: ~0.7 s for 300)."""
    case = make_case(n_slices=40, rows=512, columns=512)
    started = time.perf_counter()
    segmentation = _build(case)
    elapsed = time.perf_counter() - started
    assert segmentation.NumberOfFrames == 80
    assert elapsed < 5.0, f"building the SEG took {elapsed:.2f} s"
    path = tmp_path / "realistic.dcm"
    segmentation.save_as(path, enforce_file_format=True)
    assert_valid(path)


def test_the_validator_sees_a_broken_seg(written: tuple[Path, hd.seg.Segmentation], tmp_path: Path) -> None:
    """Guards the dciodvfy checks above against passing vacuously."""
    broken = pydicom.dcmread(written[0])
    del broken.SegmentSequence[0].SegmentLabel  # Type 1 (PS3.3 C.8.20.2)
    path = tmp_path / "broken.dcm"
    broken.save_as(path)
    result = run_dciodvfy(path)
    assert not result.ok
    assert any("SegmentLabel" in error for error in result.errors), result.errors
    assert result.iod == "Segmentation"


def test_a_missing_validator_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dicom3tools"):
        run_dciodvfy(tmp_path / "x.dcm", executable=tmp_path / "no-dciodvfy")


def test_dciodvfy_output_is_parsed_into_errors_warnings_and_iod() -> None:
    text = "Segmentation\nWarning - something odd\nError - Missing attribute Type 1 Required Element=<X>"
    result = parse_dciodvfy_output(text, returncode=1)
    assert result.iod == "Segmentation"
    assert result.warnings == ("Warning - something odd",)
    assert result.errors == ("Error - Missing attribute Type 1 Required Element=<X>",)
    assert not result.ok
