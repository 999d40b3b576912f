"""The TID 1500 report: measurements, units, references to SEG segments and images, validity."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes as library_codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from dicom_node.outputs import (
    LesionMeasurement,
    SegmentSpec,
    StudyAssessment,
    build_report,
    build_segmentation,
    codes,
    device_observer_uid,
)
from dicom_node.outputs.common import with_patient_study_type2
from dicom_node.outputs.sr import VIEWER_TOOL_PREFIX, lesion_caption
from dicom_node.outputs.uids import SEG, SR
from tests.support.outputs_fixtures import (
    ALGORITHM,
    EMPTY_STUDY_ID_WARNING,
    EQUIPMENT,
    UID_ROOT,
    Case,
    assert_valid,
    make_case,
    require_dciodvfy,
    uid_elements,
)


def _segmentation(case: Case, segments: list[SegmentSpec] | None = None) -> hd.seg.Segmentation:
    return build_segmentation(
        source_images=case.source_images,
        label_map=case.label_map,
        segments=case.segments if segments is None else segments,
        algorithm=ALGORITHM,
        equipment=EQUIPMENT,
        series_instance_uid=case.uids.series(SEG),
        series_number=9001,
        series_description="AI ICH SEGMENTATION - RESEARCH USE ONLY",
        sop_instance_uid=case.uids.instance(SEG),
        dimension_organization_uid=case.uids.dimension_organization(SEG),
    )


def _report(
    case: Case,
    segmentation: pydicom.Dataset | None,
    lesions: tuple[LesionMeasurement, ...] | None = None,
    assessment: StudyAssessment | None = None,
) -> hd.sr.Comprehensive3DSR:
    return build_report(
        source_images=case.source_images,
        assessment=case.assessment if assessment is None else assessment,
        lesions=case.lesions if lesions is None else lesions,
        segmentation=segmentation,
        algorithm=ALGORITHM,
        equipment=EQUIPMENT,
        device_observer_uid=device_observer_uid(UID_ROOT),
        series_instance_uid=case.uids.series(SR),
        series_number=9002,
        series_description="AI ICH REPORT - RESEARCH USE ONLY",
        sop_instance_uid=case.uids.instance(SR),
    )


def _write_and_read(report: hd.sr.Comprehensive3DSR, path: Path) -> hd.sr.Comprehensive3DSR:
    report.save_as(path, enforce_file_format=True)
    return hd.sr.srread(path)


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def segmentation(case: Case) -> hd.seg.Segmentation:
    return _segmentation(case)


@pytest.fixture(scope="module")
def written(
    case: Case, segmentation: hd.seg.Segmentation, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, hd.sr.Comprehensive3DSR]:
    require_dciodvfy()
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    return path, _write_and_read(_report(case, segmentation), path)


def _content(report: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    return report.content  # type: ignore[return-value]


def _measurement(
    group: hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations,
    name: Code,
) -> hd.sr.Measurement:
    found = group.get_measurements(name=name)
    assert len(found) == 1, f"expected one {name.meaning} measurement, found {len(found)}"
    return found[0]


def _algorithm_of(measurement: hd.sr.Measurement) -> tuple[str, str, str]:
    """(name, version, family code) of the TID 4019 items under a measurement."""
    def one(name: Code) -> Any:
        (item,) = find_content_items(measurement[0], name=name)
        return item.value

    family = one(library_codes.DCM.AlgorithmFamily)
    return one(library_codes.DCM.AlgorithmName), one(library_codes.DCM.AlgorithmVersion), family.value


def test_it_is_a_comprehensive_3d_sr_measurement_report(written: tuple[Path, hd.sr.Comprehensive3DSR]) -> None:
    _, report = written
    assert report.SOPClassUID == Comprehensive3DSRStorage
    assert report.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (report.CompletionFlag, report.VerificationFlag, report.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert report.ContentQualification == "RESEARCH"
    assert (report.SeriesNumber, report.SeriesDescription) == (9002, "AI ICH REPORT - RESEARCH USE ONLY")


def test_the_device_is_the_observer_and_the_procedure_is_a_ct_from_cid_100(
    written: tuple[Path, hd.sr.Comprehensive3DSR],
) -> None:
    _, report = written
    content = _content(report)
    procedures = find_content_items(content[0], name=library_codes.DCM.ProcedureReported)
    assert [item.value for item in procedures] == [codes.CT_UNSPECIFIED_BODY_REGION]
    assert (codes.CT_UNSPECIFIED_BODY_REGION.value, codes.CT_UNSPECIFIED_BODY_REGION.scheme_designator) == (
        "25045-6",
        "LN",
    )
    assert codes.CT_UNSPECIFIED_BODY_REGION in library_codes.cid100.concepts.values()
    device = content.get_observer_contexts(observer_type=library_codes.cid270.Device)
    assert len(device) == 1
    attributes = device[0].observer_identifying_attributes
    assert attributes.uid == device_observer_uid(UID_ROOT)
    assert attributes.manufacturer_name == EQUIPMENT.manufacturer
    assert attributes.model_name == EQUIPMENT.manufacturer_model_name


def _study_call(report: hd.sr.Comprehensive3DSR) -> tuple[Code, float]:
    """(Present/Absent, probability) from TID 1500 "Qualitative Evaluations" (row 12)."""
    (container,) = find_content_items(_content(report)[0], name=codes.QUALITATIVE_EVALUATIONS)
    (call,) = find_content_items(container, name=codes.INTRACRANIAL_HEMORRHAGE)
    (probability,) = find_content_items(container, name=codes.PROBABILITY)
    assert probability.ValueType == "TEXT"
    return call.value, float(probability.value)


def test_the_study_call_is_a_qualitative_evaluation_outside_any_measurement_group(
    case: Case, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    """A viewer expects a shape in every measurement group; the study call has none (issue 14)."""
    _, report = written
    groups = _content(report).get_image_measurement_groups()
    assert all(_outline(group) is not None for group in groups), "a TID 1501 group without an outline"
    present, probability = _study_call(report)
    assert present == codes.PRESENT
    assert probability == pytest.approx(case.assessment.probability, rel=1e-6)


def test_one_volumetric_group_per_lesion_with_values_and_units(
    case: Case, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    _, report = written
    groups = _content(report).get_volumetric_roi_measurement_groups()
    assert len(groups) == len(case.lesions) == 2
    for lesion, spec, group in zip(case.lesions, case.segments, groups, strict=True):
        assert group.tracking_uid == spec.tracking_uid
        assert group.tracking_identifier == VIEWER_TOOL_PREFIX + spec.label
        assert group.finding_type == codes.INTRACRANIAL_HEMORRHAGE
        assert [site.value for site in group.finding_sites] == [codes.BRAIN]
        expected = [
            (codes.VOLUME, lesion.volume_ml, "mL"),
            (codes.LONG_AXIS, lesion.longest_axial_diameter_mm, "mm"),
            (codes.ATTENUATION_COEFFICIENT, lesion.mean_hu, "[hnsf'U]"),
            (codes.CERTAINTY_OF_FINDING, lesion.confidence, "1"),
        ]
        for name, value, unit in expected:
            measurement = _measurement(group, name)
            assert measurement.value == pytest.approx(value, rel=1e-12)
            assert (measurement.unit.value, measurement.unit.scheme_designator) == (unit, "UCUM")
            assert _algorithm_of(measurement) == (ALGORITHM.name, ALGORITHM.version, "123110")
        assert _measurement(group, codes.ATTENUATION_COEFFICIENT).derivation == codes.MEAN


def test_groups_follow_the_template_rows_segments_then_outlines(
    case: Case, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    """TID 1500 row 8 (TID 1411) before row 9 (TID 1501): PS3.16 chapter 6, order significant."""
    _, report = written
    imaging_measurements = next(
        item for item in report.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    templates = [group.ContentTemplateSequence[0].TemplateIdentifier for group in imaging_measurements.ContentSequence]
    assert templates == ["1411"] * len(case.lesions) + ["1501"] * len(case.lesions)
    root_items = [item.ConceptNameCodeSequence[0].CodeValue for item in report.ContentSequence]
    assert root_items[-2:] == ["126010", "C0034375"], "Imaging Measurements (row 6) before Qualitative Evaluations"


def test_every_lesion_has_both_groups_under_its_tracking_uid(
    case: Case, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    """The outline group and the segment group of a lesion are one finding: same identifier and UID.

    The lesion's own measurements are in the segment group; the outline group
    holds the area on the key slice and the caption that names the lesion with
    its volume (what OHIF's Measurements panel shows).
    """
    _, report = written
    content = _content(report)
    outlines = content.get_image_measurement_groups()
    volumetric = content.get_volumetric_roi_measurement_groups()
    for lesion, spec, outline, segment in zip(case.lesions, case.segments, outlines, volumetric, strict=True):
        assert outline.tracking_uid == segment.tracking_uid == spec.tracking_uid
        assert outline.tracking_identifier == segment.tracking_identifier == VIEWER_TOOL_PREFIX + spec.label
        assert outline.finding_type == segment.finding_type == codes.INTRACRANIAL_HEMORRHAGE
        assert [m.name for m in outline.get_measurements()] == [codes.AREA]
        assert len(segment.get_measurements()) == 4
        (caption,) = find_content_items(outline[0], name=codes.COMMENT)
        expected = f"{spec.label}: {lesion.volume_ml:.2f} mL"
        assert caption.value == lesion_caption(spec.label, lesion.volume_ml) == expected


def _pixels_inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which pixel centres (c + 0.5, r + 0.5) lie inside a closed polygon (even-odd rule)."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y = columns + 0.5, rows + 0.5
    inside = np.zeros(shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon[:-1], polygon[1:], strict=True):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _outline(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> hd.sr.ScoordContentItem:
    """The group's Image Region (TID 1501 row 10c)."""
    (region,) = find_content_items(group[0], name=library_codes.DCM.ImageRegion)
    return region


def test_each_outline_encloses_exactly_the_lesion_on_its_key_slice(
    case: Case, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    """The outline is written twice: as the group's Image Region (what viewers draw) and as
    what the area is INFERRED FROM (what OHIF rebuilds its own outline from); both alike."""
    _, report = written
    groups = _content(report).get_image_measurement_groups()
    for lesion, group in zip(case.lesions, groups, strict=True):
        region = _outline(group)
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        polygon = region.value
        (area,) = group.get_measurements(name=codes.AREA)
        (inferred_from,) = area.referenced_coordinates
        assert inferred_from.RelationshipType == "INFERRED FROM"
        np.testing.assert_array_equal(inferred_from.value, polygon)
        spacing = [float(v) for v in case.source_images[lesion.key_slice_index].PixelSpacing]
        np.testing.assert_array_equal(polygon[0], polygon[-1])  # closed (PS3.3 C.18.6.1.2)
        key = case.source_images[lesion.key_slice_index]
        (source,) = region.ContentSequence
        assert source.RelationshipType == "SELECTED FROM"
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
        assert source.ReferencedSOPSequence[0].ReferencedSOPClassUID == key.SOPClassUID
        lesion_pixels = case.label_map[lesion.key_slice_index] == lesion.segment_number
        inside = _pixels_inside(polygon, lesion_pixels.shape)
        # The synthetic lesions are convex blobs without holes: the outline holds them exactly.
        assert np.array_equal(inside, lesion_pixels)
        assert area.value == pytest.approx(lesion_pixels.sum() * spacing[0] * spacing[1], rel=1e-9)
        assert (area.unit.value, area.unit.scheme_designator) == ("mm2", "UCUM")


def test_each_lesion_group_references_its_seg_segment(
    case: Case, segmentation: hd.seg.Segmentation, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    _, report = written
    groups = _content(report).get_volumetric_roi_measurement_groups()
    for lesion, group in zip(case.lesions, groups, strict=True):
        reference = group.referenced_segment
        assert reference is not None
        assert reference.referenced_sop_class_uid == SegmentationStorage
        assert reference.referenced_sop_instance_uid == segmentation.SOPInstanceUID
        assert reference.referenced_segment_numbers == [lesion.segment_number]
        source_series = reference.source_series_for_segmentation
        assert source_series is not None
        assert source_series.value == case.source_images[0].SeriesInstanceUID


def test_the_evidence_lists_every_source_image_and_the_seg(
    case: Case, segmentation: hd.seg.Segmentation, written: tuple[Path, hd.sr.Comprehensive3DSR]
) -> None:
    _, report = written
    referenced = {
        instance.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in case.source_images} | {segmentation.SOPInstanceUID}
    source = case.source_images[0]
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert (report.PatientName, report.PatientID) == (source.PatientName, source.PatientID)


def test_dciodvfy_finds_no_error(written: tuple[Path, hd.sr.Comprehensive3DSR]) -> None:
    assert_valid(written[0])


def test_a_negative_report_states_absent_and_has_no_measurement_group(tmp_path: Path) -> None:
    """Titled "CT Head Report" (CID 7021 is extensible): no measurement is promised (issue 14)."""
    negative = make_case(lesions=(), job_key="job-negative")
    path = tmp_path / "negative.dcm"
    report = _write_and_read(_report(negative, None), path)
    title = report.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("24725-4", "LN", "CT Head Report")
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    (evaluations,) = find_content_items(_content(report)[0], name=codes.QUALITATIVE_EVALUATIONS)
    # Separate statements: a viewer showing the report as text names each ("Probability: 0.04").
    assert report.ContinuityOfContent == evaluations.ContinuityOfContent == "SEPARATE"
    content = _content(report)
    assert content.get_volumetric_roi_measurement_groups() == []
    assert content.get_planar_roi_measurement_groups() == []
    assert content.get_image_measurement_groups() == []
    assert not any(item.ConceptNameCodeSequence[0].CodeValue == "126010" for item in report.ContentSequence)
    assert _study_call(report) == (codes.ABSENT, pytest.approx(0.04))
    assert_valid(path)


def test_a_negative_report_may_reference_an_empty_seg(tmp_path: Path) -> None:
    negative = make_case(lesions=(), job_key="job-negative")
    empty = build_segmentation(
        source_images=negative.source_images,
        label_map=np.zeros_like(negative.label_map),
        segments=[SegmentSpec(1, "ICH", negative.uids.tracking(1))],
        algorithm=ALGORITHM,
        equipment=EQUIPMENT,
        series_instance_uid=negative.uids.series(SEG),
        series_number=9001,
        series_description="AI ICH SEGMENTATION - RESEARCH USE ONLY",
        sop_instance_uid=negative.uids.instance(SEG),
        dimension_organization_uid=negative.uids.dimension_organization(SEG),
    )
    path = tmp_path / "negative-with-seg.dcm"
    report = _write_and_read(_report(negative, empty), path)
    assert _content(report).get_volumetric_roi_measurement_groups() == []
    assert_valid(path)


def test_a_lesion_without_confidence_has_no_certainty(
    case: Case, segmentation: hd.seg.Segmentation, tmp_path: Path
) -> None:
    lesions = tuple(dataclasses.replace(lesion, confidence=None) for lesion in case.lesions)
    path = tmp_path / "no-confidence.dcm"
    report = _write_and_read(_report(case, segmentation, lesions), path)
    for group in _content(report).get_volumetric_roi_measurement_groups():
        assert group.get_measurements(name=codes.CERTAINTY_OF_FINDING) == []
        assert len(group.get_measurements()) == 3
    assert_valid(path)


def test_a_subtype_coded_in_the_seg_is_the_finding_type(case: Case, tmp_path: Path) -> None:
    subtype = library_codes.SCT.Hemorrhage
    segments = [case.segments[0], dataclasses.replace(case.segments[1], property_type=subtype)]
    report = _write_and_read(_report(case, _segmentation(case, segments)), tmp_path / "subtype.dcm")
    content = _content(report)
    for groups in (content.get_image_measurement_groups(), content.get_volumetric_roi_measurement_groups()):
        assert [g.finding_type for g in groups] == [codes.INTRACRANIAL_HEMORRHAGE, subtype]


def test_sources_without_some_type2_attributes_are_completed_once_then_give_valid_objects(tmp_path: Path) -> None:
    sparse = make_case(job_key="job-sparse")
    omitted = ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID")
    for source in sparse.source_images:
        for keyword in omitted:
            delattr(source, keyword)
    with pytest.raises(ValueError, match="lacks Type 2 patient/study attributes"):
        _segmentation(sparse)
    case = dataclasses.replace(sparse, source_images=[with_patient_study_type2(s) for s in sparse.source_images])
    segmentation = _segmentation(case)
    report = _report(case, segmentation)
    with pytest.raises(ValueError, match="lacks Type 2 patient/study attributes"):
        _report(sparse, segmentation)
    for name, dataset in (("seg.dcm", segmentation), ("sr.dcm", report)):
        dataset.save_as(tmp_path / name, enforce_file_format=True)
        assert_valid(tmp_path / name, also_accepted=[EMPTY_STUDY_ID_WARNING])
        assert all(dataset[keyword].value in (None, "") for keyword in omitted)
    assert not any(keyword in sparse.source_images[0] for keyword in omitted), "a source was modified"


def test_rebuilding_gives_identical_uids(case: Case, segmentation: hd.seg.Segmentation) -> None:
    first, second = uid_elements(_report(case, segmentation)), uid_elements(_report(case, segmentation))
    assert first == second
    assert first["/SOPInstanceUID"] == case.uids.instance(SR)


def test_inputs_that_break_a_rule_are_refused(case: Case, segmentation: hd.seg.Segmentation) -> None:
    with pytest.raises(ValueError, match="pass the segmentation"):
        _report(case, None)
    stray = (dataclasses.replace(case.lesions[0], segment_number=7),)
    with pytest.raises(ValueError, match="no segment of that number"):
        _report(case, segmentation, stray)
    other_study = make_case(job_key="other")
    with pytest.raises(ValueError, match="same study"):
        _report(case, _segmentation(other_study))
    off_slice = (dataclasses.replace(case.lesions[0], key_slice_index=0),)
    with pytest.raises(ValueError, match="no voxel on its key slice"):
        _report(case, segmentation, off_slice)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StudyAssessment(hemorrhage_present=True, probability=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StudyAssessment(hemorrhage_present=True, probability=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(case.lesions[0], volume_ml=float("inf"))


def test_building_a_report_is_fast(case: Case, segmentation: hd.seg.Segmentation) -> None:
    started = time.perf_counter()
    _report(case, segmentation)
    assert time.perf_counter() - started < 2.0


def test_a_seg_read_from_a_file_gives_the_same_outlines_and_is_left_as_read(
    case: Case, segmentation: hd.seg.Segmentation, tmp_path: Path
) -> None:
    path = tmp_path / "seg.dcm"
    segmentation.save_as(path, enforce_file_format=True)
    read = pydicom.dcmread(path)
    from_file = _content(_write_and_read(_report(case, read), tmp_path / "a.dcm")).get_image_measurement_groups()
    built = _content(_write_and_read(_report(case, segmentation), tmp_path / "b.dcm")).get_image_measurement_groups()
    for a, b in zip(from_file, built, strict=True):
        np.testing.assert_array_equal(_outline(a).value, _outline(b).value)
    assert not isinstance(read, hd.seg.Segmentation)
