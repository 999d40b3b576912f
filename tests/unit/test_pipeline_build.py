"""The build stage: one object's failure never blocks the others, and the SR says what is missing."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom_node import pipeline as pipeline_module
from dicom_node.config import load_settings
from dicom_node.errors import NotApplicableError, SourceDataError
from dicom_node.jobs.queue import ClaimedJob
from dicom_node.models.threshold import ThresholdModel, ThresholdParameters
from dicom_node.outputs import codes
from tests.support.dciodvfy import run_dciodvfy
from dicom_node.imaging.volume import AssemblyWarning, AssemblyWarningKind as Kind
from dicom_node.pipeline import BuiltObjects, Pipeline, StudyInput, job_warnings
from tests.support.node import REPO
from tests.support.outputs_fixtures import assert_valid
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

SEG_REFUSED = "Source images have no Frame Of Reference UID, but it is required by the IOD"


def _pipeline() -> Pipeline:
    settings = load_settings(REPO / "config" / "dicom-node.toml")
    return Pipeline(settings, None, None, ThresholdModel(ThresholdParameters()))  # type: ignore[arg-type]


def _study(tmp_path: Path, spec: SeriesSpec) -> StudyInput:
    paths = write_series(spec, tmp_path / "in")
    return StudyInput(spec.study_instance_uid, {spec.series_instance_uid: paths})


def _build(tmp_path: Path, spec: SeriesSpec) -> BuiltObjects:
    pipeline = _pipeline()
    volume, headers = pipeline.select_and_load(_study(tmp_path, spec))
    result = pipeline.model.predict(volume)
    assert result.positive, "the phantom's lesion must be found for this test to mean anything"
    job = ClaimedJob(1, 1, spec.study_instance_uid, 1, "threshold@1", 1, 3, "test")
    return pipeline.build(job, volume, headers, result)


POSITIVE = SeriesSpec(n_slices=16, rows=128, columns=128, pixel_spacing_mm=(1.6, 1.6),
                      lesions=[Lesion((20.0, 10.0, 0.0), 12.0)], seed=4)


def _text_items(dataset: pydicom.Dataset) -> list[str]:
    found = []
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value:
            found.append(str(item.TextValue))
        found.extend(_text_items(item))
    return found


def test_when_the_seg_cannot_be_built_the_sr_and_key_images_still_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**_: object) -> None:
        raise ValueError(SEG_REFUSED)

    monkeypatch.setattr(pipeline_module, "build_segmentation", refuse)
    built = _build(tmp_path, POSITIVE)
    assert built.kinds()[0] == "sr" and set(built.kinds()[1:]) == {"key_images"} and len(built.kinds()) >= 3
    assert built.missing[0] == f"segmentation (SEG) not created: {SEG_REFUSED}"
    assert built.missing[1].startswith("lesion measurement groups omitted (they reference the SEG): lesion 1 ")
    report = dict(built.objects)["sr"]
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    assert_valid(path)
    back = hd.sr.srread(path)
    assert _text_items(back) == built.missing
    assert not _references_a_segment(back)  # no TID 1411 group points at a SEG that was never sent


def _references_a_segment(dataset: pydicom.Dataset) -> bool:
    for element in dataset:
        if element.keyword == "ReferencedSegmentNumber":
            return True
        if element.VR == "SQ" and any(_references_a_segment(item) for item in element.value):
            return True
    return False


def test_when_every_object_fails_the_job_fails_permanently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_: object) -> None:
        raise ValueError("impossible geometry")

    for builder in ("build_segmentation", "build_report", "build_key_images"):
        monkeypatch.setattr(pipeline_module, builder, refuse)
    with pytest.raises(SourceDataError, match="no result object could be built: segmentation \\(SEG\\) not created: impossible geometry"):
        _build(tmp_path, POSITIVE)


def test_a_complete_build_misses_nothing(tmp_path: Path) -> None:
    built = _build(tmp_path, POSITIVE)
    assert built.missing == []
    assert built.kinds()[:2] == ["seg", "sr"]
    assert _text_items(dict(built.objects)["sr"]) == []
    assert _references_a_segment(dict(built.objects)["sr"])


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (SeriesSpec(n_slices=1, rows=64, columns=64), "1 slice covering 5 mm; at least 60 mm needed"),
        (SeriesSpec(n_slices=8, rows=64, columns=64), "8 slices covering 40 mm; at least 60 mm needed"),
    ],
    ids=["stray-slice", "partial-scan"],
)
def test_a_series_too_short_for_a_head_is_not_applicable(tmp_path: Path, spec: SeriesSpec, reason: str) -> None:
    with pytest.raises(NotApplicableError, match=reason):
        _pipeline().select_and_load(_study(tmp_path, spec))


def test_a_study_without_a_qualifying_series_is_not_applicable(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=16, rows=64, columns=64, series_description="CHEST 5mm")
    paths = write_series(spec, tmp_path / "in")
    for path in paths:  # a chest CT whose header says so
        dataset = pydicom.dcmread(path)
        dataset.BodyPartExamined = "CHEST"
        dataset.StudyDescription = "CT CHEST"
        dataset.save_as(path)
    with pytest.raises(NotApplicableError, match="no series qualifies for analysis"):
        _pipeline().select_and_load(StudyInput(spec.study_instance_uid, {spec.series_instance_uid: paths}))


def test_malformed_source_uids_are_kept_and_are_the_only_thing_dciodvfy_flags(tmp_path: Path) -> None:
    """Leading zeros in the study's and series' UIDs: the PACS knows the study by them, so our
    objects carry them as sent; every other value in our objects is valid."""
    study_uid, series_uid = "1.2.840.0099.1", "1.2.840.099.2.3"
    spec = SeriesSpec(n_slices=16, rows=128, columns=128, pixel_spacing_mm=(1.6, 1.6),
                      lesions=[Lesion((20.0, 10.0, 0.0), 12.0)], seed=4,
                      study_instance_uid=study_uid, series_instance_uid=series_uid)
    built = _build(tmp_path, spec)
    assert built.missing == [] and {"seg", "sr", "key_images"} <= set(built.kinds())
    for number, (kind, dataset) in enumerate(built.objects):
        assert dataset.StudyInstanceUID == study_uid
        path = tmp_path / f"{number}-{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        errors = run_dciodvfy(path).errors
        specific = [e for e in errors if e != "Error - Dicom dataset contains invalid data values for Value Representations"]
        assert specific and all(
            "Leading zeroes in embedded numeric component(s)" in e and (study_uid in e or series_uid in e) for e in specific
        ), (kind, errors)


def test_a_job_warns_of_missing_objects_and_repeated_slices_only_chosen_by_kind() -> None:
    """The repeated-slice warning is picked by its kind, not by words in its text: a tilt whose
    text happened to mention repeating positions stays in the log, not in the job's warnings."""
    assembly = [
        AssemblyWarning(Kind.GANTRY_TILT, "gantry tilt of 20.00 deg (no instances repeating a slice position)"),
        AssemblyWarning(Kind.REPEATED_POSITION, "2 instances repeating a slice position dropped"),
        AssemblyWarning(Kind.MISSING_SLICES, "1 missing slice(s) filled by linear interpolation"),
    ]
    assert job_warnings(["SEG not created: x"], assembly) == ["SEG not created: x", "2 instances repeating a slice position dropped"]
    assert job_warnings([], assembly[:1]) == []
