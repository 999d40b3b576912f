"""Series selection: one pure test per rule, the ranking, and the recorded reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicom_node.config import SelectionSettings
from dicom_node.imaging.anatomy import HeadEvidence
from dicom_node.imaging.selection import (
    KernelClass,
    SeriesCandidate,
    classify_kernel,
    head_from_header,
    rule_violations,
    select_series,
)
from tests.support.synthetic_ct import SeriesSpec, series_datasets

RULES = SelectionSettings()


def candidate(**overrides) -> SeriesCandidate:
    """An eligible 5 mm soft-tissue axial head series unless overridden."""
    values = dict(
        series_instance_uid="1.2.3.1",
        modality="CT",
        n_instances=32,
        image_type_common=frozenset({"ORIGINAL", "PRIMARY", "AXIAL"}),
        image_type_any=frozenset({"ORIGINAL", "PRIMARY", "AXIAL"}),
        slice_thickness_mm=5.0,
        slice_spacing_mm=5.0,
        convolution_kernel="H30s",
        body_part_examined="HEAD",
        study_description="CT HEAD WO",
        series_description="Head 5mm",
        series_number=2,
        slice_normal_z_cosine=1.0,
    )
    values.update(overrides)
    return SeriesCandidate(**values)


def test_from_datasets_summarises_headers():
    spec = SeriesSpec(n_slices=5, rows=16, columns=16)
    datasets = series_datasets(spec)
    datasets[2].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    c = SeriesCandidate.from_datasets(spec.series_instance_uid, datasets)
    assert c.n_instances == 5
    assert c.modality == "CT"
    assert c.slice_thickness_mm == 5.0
    assert c.slice_spacing_mm == pytest.approx(5.0)
    assert c.convolution_kernel == "STANDARD"
    assert c.image_type_common == {"ORIGINAL", "PRIMARY"}
    assert "LOCALIZER" in c.image_type_any
    assert c.slice_normal_z_cosine == pytest.approx(1.0)


def test_from_datasets_refuses_instances_of_another_series():
    spec = SeriesSpec(n_slices=2, rows=16, columns=16)
    with pytest.raises(ValueError, match="do not belong"):
        SeriesCandidate.from_datasets("1.2.3", series_datasets(spec))


def test_eligible_series_breaks_no_rule():
    assert rule_violations(candidate(), RULES) == []


def test_modality_rule():
    assert rule_violations(candidate(modality="MR"), RULES) == ["modality MR is not one of CT"]


def test_required_image_type_must_be_in_every_instance():
    problems = rule_violations(candidate(image_type_common=frozenset({"DERIVED", "SECONDARY"})), RULES)
    assert problems == ["ImageType lacks required value(s) ORIGINAL in some instances"]


def test_rejected_image_type_in_any_instance_excludes():
    problems = rule_violations(candidate(image_type_any=frozenset({"ORIGINAL", "LOCALIZER"})), RULES)
    assert problems == ["ImageType has rejected value(s) LOCALIZER"]


def test_slice_thickness_bounds():
    assert "below the minimum" in rule_violations(candidate(slice_thickness_mm=0.3), RULES)[0]
    assert "above the maximum" in rule_violations(candidate(slice_thickness_mm=10.0), RULES)[0]


def test_slice_spacing_stands_in_for_a_missing_thickness():
    assert rule_violations(candidate(slice_thickness_mm=None, slice_spacing_mm=2.5), RULES) == []
    problems = rule_violations(candidate(slice_thickness_mm=None, slice_spacing_mm=None), RULES)
    assert problems == ["slice thickness unknown: no SliceThickness and no spacing between positions"]


def test_min_slices():
    rules = SelectionSettings(min_slices=20)
    assert rule_violations(candidate(n_instances=19), rules) == ["19 slice(s), fewer than the minimum 20"]


def test_head_regex_on_any_of_three_descriptions():
    header_only = SelectionSettings(head_check="header")
    no_head = dict(body_part_examined="CHEST", study_description="CT THORAX", series_description="Lung 1mm")
    assert rule_violations(candidate(**no_head), RULES) == ["not head: header says CHEST (BodyPartExamined)"]
    assert rule_violations(candidate(**no_head), header_only) == ["not head: header says CHEST (BodyPartExamined)"]
    for field in no_head:
        assert rule_violations(candidate(**{**no_head, field: "BRAIN"}), RULES) == []


def test_a_silent_header_is_left_to_the_image_unless_the_header_must_decide():
    silent = candidate(body_part_examined="", study_description="", series_description="C+ 0.625 STND")
    assert head_from_header(silent, RULES).is_head is None
    assert rule_violations(silent, RULES) == []
    assert rule_violations(silent, SelectionSettings(head_check="header")) == [
        "neither BodyPartExamined, StudyDescription nor SeriesDescription names the head"
    ]
    # With "image" even a header naming another part is left to the image.
    assert rule_violations(candidate(body_part_examined="CHEST"), SelectionSettings(head_check="image")) == []


def test_the_head_wins_over_another_body_part_in_the_header():
    verdict = head_from_header(candidate(body_part_examined="", study_description="CTA HEAD NECK"), RULES)
    assert (verdict.is_head, verdict.reason) == (True, "head: header StudyDescription=CTA HEAD NECK")
    assert head_from_header(candidate(), RULES).reason == "head: header BodyPartExamined=HEAD"


def _evidence(is_head: bool, rings: int = 30, slices: int = 32) -> HeadEvidence:
    return HeadEvidence(is_head=is_head, ring_slices=rings, n_slices=slices, field_of_view_mm=230.0, z_coverage_mm=160.0)


class _Checks:
    """An image check that answers from a table and counts its calls."""

    def __init__(self, answers: dict[str, HeadEvidence]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, c: SeriesCandidate) -> HeadEvidence:
        self.calls.append(c.series_instance_uid)
        return self.answers[c.series_instance_uid]


SILENT = dict(body_part_examined="", study_description="", series_description="")


def test_the_image_decides_when_the_header_is_silent_and_the_reason_says_so():
    thin = candidate(series_instance_uid="1.1", slice_thickness_mm=1.0, **SILENT)
    thick = candidate(series_instance_uid="1.2", slice_thickness_mm=5.0, **SILENT)
    checks = _Checks({"1.1": _evidence(False, rings=0), "1.2": _evidence(True)})
    result = select_series([thin, thick], RULES, image_check=checks)
    assert result.chosen == thick
    assert checks.calls == ["1.1", "1.2"]
    assert result.decision_for("1.1").reasons == (
        "skipped: not head: image (skull ring on 0/32 slices, 230 mm FOV, 160 mm z)",
    )
    chosen = result.decision_for("1.2").reasons
    assert chosen[0].startswith("chosen: passes every rule; ranked 2 of 2 eligible")
    assert chosen[1] == "head: image (skull ring on 30/32 slices, 230 mm FOV, 160 mm z)"


def test_the_image_is_checked_lazily_and_never_when_the_header_decides():
    named = candidate(series_instance_uid="1.1", slice_thickness_mm=5.0)
    silent = candidate(series_instance_uid="1.2", slice_thickness_mm=1.0, **SILENT)
    silent_too = candidate(series_instance_uid="1.3", slice_thickness_mm=2.0, **SILENT)
    checks = _Checks({"1.2": _evidence(True), "1.3": _evidence(True)})
    result = select_series([named, silent, silent_too], RULES, image_check=checks)
    assert result.chosen == silent and checks.calls == ["1.2"]
    assert "ranks higher" in result.decision_for("1.3").reasons[0]
    chest = candidate(series_instance_uid="1.4", body_part_examined="CHEST", study_description="CT CHEST", series_description="")
    checks = _Checks({})
    result = select_series([chest], RULES, image_check=checks)
    assert result.chosen is None and checks.calls == []
    assert result.decision_for("1.4").reasons == ("skipped: not head: header says CHEST (BodyPartExamined)",)


def test_with_image_only_the_image_overrules_the_header():
    rules = SelectionSettings(head_check="image")
    labelled_head = candidate(series_instance_uid="1.1")
    result = select_series([labelled_head], rules, image_check=_Checks({"1.1": _evidence(False, rings=1)}))
    assert result.chosen is None
    assert result.decision_for("1.1").reasons[0].startswith("skipped: not head: image (skull ring on 1/32")


def test_without_an_image_check_a_silent_series_is_not_chosen():
    result = select_series([candidate(series_instance_uid="1.1", **SILENT)], RULES)
    assert result.chosen is None
    assert result.decision_for("1.1").reasons == (
        "skipped: body part unknown: the header names no body part and no image check was available",
    )


def test_reformats_that_are_not_axial_are_skipped():
    assert rule_violations(candidate(slice_normal_z_cosine=0.0), RULES) == [
        "slices are not axial (models are trained on axial slices)"
    ]
    assert rule_violations(candidate(slice_normal_z_cosine=0.96), RULES) == []  # gantry tilt


def test_every_broken_rule_is_reported():
    problems = rule_violations(candidate(modality="SR", n_instances=0, slice_thickness_mm=9.0), RULES)
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("H30s", KernelClass.SOFT_TISSUE),
        ("STANDARD", KernelClass.SOFT_TISSUE),
        ("Qr40d\\3", KernelClass.SOFT_TISSUE),  # multi-valued, Siemens "r" naming
        ("H70h", KernelClass.BONE),
        ("BONE", KernelClass.BONE),
        ("FC30", KernelClass.BONE),  # both default regexes match: bone wins
        ("XYZ", KernelClass.UNKNOWN),
    ],
)
def test_kernel_classes(kernel, expected):
    assert classify_kernel(candidate(convolution_kernel=kernel), RULES) is expected


def test_kernel_falls_back_to_series_description():
    c = candidate(convolution_kernel="", series_description="HEAD BONE 1mm")
    assert classify_kernel(c, RULES) is KernelClass.BONE


def test_soft_tissue_beats_a_thinner_bone_series():
    soft = candidate(series_instance_uid="1.1", slice_thickness_mm=5.0)
    bone = candidate(series_instance_uid="1.2", slice_thickness_mm=1.0, convolution_kernel="H70h")
    result = select_series([bone, soft], RULES)
    assert result.chosen == soft
    assert result.decision_for("1.1").selected
    assert result.decision_for("1.2").rank == 2
    assert "ranks higher" in result.decision_for("1.2").reasons[0]


def test_tie_breaks_thinner_then_more_slices_then_series_number():
    thick = candidate(series_instance_uid="1.1", slice_thickness_mm=5.0)
    thin = candidate(series_instance_uid="1.2", slice_thickness_mm=2.5)
    assert select_series([thick, thin], RULES).chosen == thin

    few = candidate(series_instance_uid="1.3", n_instances=30)
    many = candidate(series_instance_uid="1.4", n_instances=34)
    assert select_series([few, many], RULES).chosen == many

    later = candidate(series_instance_uid="1.5", series_number=4)
    earlier = candidate(series_instance_uid="1.6", series_number=3)
    assert select_series([later, earlier], RULES).chosen == earlier


def test_unknown_kernel_ranks_between_soft_and_bone():
    unknown = candidate(series_instance_uid="1.1", convolution_kernel="XYZ")
    bone = candidate(series_instance_uid="1.2", convolution_kernel="BONE")
    assert select_series([bone, unknown], RULES).chosen == unknown


def test_every_series_gets_a_decision_with_reasons():
    chosen = candidate(series_instance_uid="1.1")
    scout = candidate(series_instance_uid="1.2", image_type_any=frozenset({"ORIGINAL", "LOCALIZER"}))
    dose = candidate(series_instance_uid="1.3", modality="SR", slice_thickness_mm=None, slice_spacing_mm=None)
    result = select_series([scout, chosen, dose], RULES)
    assert result.chosen == chosen
    assert {d.series_instance_uid for d in result.decisions} == {"1.1", "1.2", "1.3"}
    assert result.decision_for("1.1").reasons[0].startswith("chosen: passes every rule")
    assert result.decision_for("1.2").reasons == ("skipped: ImageType has rejected value(s) LOCALIZER",)
    assert len(result.decision_for("1.3").reasons) == 2
    assert not result.decision_for("1.3").eligible


def test_no_eligible_series_chooses_none():
    result = select_series([candidate(modality="MR")], RULES)
    assert result.chosen is None
    assert not result.decisions[0].selected


def test_a_series_may_appear_only_once():
    with pytest.raises(ValueError, match="only once"):
        select_series([candidate(), replace(candidate(), n_instances=3)], RULES)
