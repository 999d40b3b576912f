"""The intracranial gate: findings outside the skull dropped, extra-axial bleeds on the inner table kept,
findings denser than blood (contrast, calcification) dropped on measured HU only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dicom_node.imaging.anatomy import intracranial_space
from dicom_node.imaging.volume import CTVolume
from dicom_node.models.combine import DecidedModel, StudyDecision, combine
from dicom_node.models.gating import GatedModel, GateParameters, _medians, gate_result
from dicom_node.models.result import ModelKind, ModelResult, findings_from_labels
from dicom_node.models.threshold import ThresholdModel, ThresholdParameters
from dicom_node.training.cases import PseudoVolume
from tests.support.synthetic_ct import Anatomy, Lesion, SeriesSpec, anatomical_volume

SPEC = SeriesSpec(n_slices=34, rows=256, columns=256, pixel_spacing_mm=(0.9, 0.9), anatomy=Anatomy())


@pytest.fixture(scope="module")
def head() -> tuple[CTVolume, np.ndarray, dict[str, np.ndarray]]:
    hu, _, truth = anatomical_volume(SPEC)
    volume = CTVolume.from_array(hu, spacing_mm=(SPEC.slice_thickness_mm, *SPEC.pixel_spacing_mm))
    z = (np.arange(SPEC.n_slices) - (SPEC.n_slices - 1) / 2.0) * SPEC.slice_thickness_mm
    y = (np.arange(SPEC.rows) - (SPEC.rows - 1) / 2.0) * SPEC.pixel_spacing_mm[0]
    x = (np.arange(SPEC.columns) - (SPEC.columns - 1) / 2.0) * SPEC.pixel_spacing_mm[1]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")

    def ball(cx: float, cy: float, cz: float, r: float) -> np.ndarray:
        return (xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= r**2

    # Epidural: a lens on the inner table of the left convexity (x = +68 mm there at z = 0),
    # reaching 1 mm into the bone as a model's contour does.
    inner_x = 68.0 * np.sqrt(np.clip(1 - (yy / 85.0) ** 2 - (zz / 78.0) ** 2, 0, None))
    epidural = (xx > inner_x - 7.0) & (xx < inner_x + 1.0) & (np.abs(yy) < 25) & (np.abs(zz) < 15)
    # A thicker one on the right, 3 mm into the bone (inside the 4 mm margin): about 30 % bone voxels.
    deep = (xx < -inner_x + 7.0) & (xx > -inner_x - 3.0) & (np.abs(yy) < 25) & (np.abs(zz) < 15)
    blobs = {
        "brain": ball(-20.0, 10.0, 10.0, 10.0),
        "clot": ball(25.0, -20.0, -5.0, 8.0),
        "epidural": epidural,
        "epidural_deep": deep,
        "pharynx": ball(0.0, -15.0, -65.0, 9.0),  # in the neck, below the skull base
        "scalp": ball(0.0, -94.0, 20.0, 4.0),  # in front of the frontal bone
    }
    return volume, truth, blobs


def _result(volume: CTVolume, blobs: dict[str, np.ndarray], kind: ModelKind, names: list[str]) -> ModelResult:
    raw = np.zeros(volume.hu.shape, dtype=np.uint8)
    scores = {}
    for i, name in enumerate(names, start=1):
        raw[blobs[name]] = i
        scores[i] = 0.5 + 0.1 * i
    measured = findings_from_labels(raw, volume, confidences=scores, fill_holes=False)
    return ModelResult(
        model_kind=kind,
        model_name="test",
        model_version="1",
        label_map=measured.label_map,
        findings=measured.findings,
        study_probability=max(f.confidence for f in measured.findings),
        decision_threshold=0.5,
    )


@pytest.mark.parametrize("kind", [ModelKind.UNET, ModelKind.MASKRCNN, ModelKind.THRESHOLD])
def test_extracranial_findings_are_dropped_and_the_epidural_kept(head, kind):
    volume, truth, blobs = head
    result = _result(volume, blobs, kind, ["brain", "epidural", "pharynx", "scalp"])
    assert len(result.findings) == 4
    gated = gate_result(result, volume, intracranial_space(volume))
    assert gated.gate is not None
    assert (gated.gate.kept, gated.gate.dropped) == (2, 2)
    kept = gated.label_map != 0
    assert not (kept & blobs["pharynx"]).any() and not (kept & blobs["scalp"]).any()
    assert (kept & blobs["brain"]).sum() == blobs["brain"].sum()
    # The epidural is kept where it lies inside the skull; the model's overshoot into bone may be clipped.
    assert (kept & blobs["epidural"] & truth).sum() == (blobs["epidural"] & truth).sum()
    assert gated.gate.clipped_voxels <= (blobs["epidural"] & ~truth).sum()
    # Measured again: the findings describe the kept voxels, numbered 1..n by size.
    assert sum(f.voxel_count for f in gated.findings) == int(kept.sum())
    assert [f.label for f in gated.findings] == [1, 2]
    assert gated.positive


def test_a_result_with_every_finding_outside_becomes_negative(head):
    volume, _, blobs = head
    result = _result(volume, blobs, ModelKind.UNET, ["pharynx", "scalp"])
    assert result.positive
    gated = gate_result(result, volume, intracranial_space(volume))
    assert gated.findings == () and not gated.label_map.any()
    assert gated.study_probability == 0.0 and not gated.positive
    assert gated.gate.dropped == 2


def _classifier_result(volume: CTVolume, probability: float) -> ModelResult:
    """A study-level call without lesions, as a classifier gives it."""
    return ModelResult(
        model_kind=ModelKind.CLASSIFIER,
        model_name="c",
        model_version="1",
        label_map=np.zeros(volume.hu.shape, dtype=np.uint8),
        findings=(),
        study_probability=probability,
        decision_threshold=0.5,
    )


def test_a_finding_mostly_inside_is_clipped_not_dropped(head):
    volume, truth, blobs = head
    # A ball astride the vertex of the skull: most of it inside.
    z = (np.arange(SPEC.n_slices) - (SPEC.n_slices - 1) / 2.0) * SPEC.slice_thickness_mm
    astride = blobs["brain"].copy()
    astride[:] = False
    astride[(z > 55) & (z < 80)] = truth[(z > 55) & (z < 80)]
    astride[(z >= 80) & (z < 86), 120:136, 120:136] = True  # into the bone cap above
    result = _result(volume, {"astride": astride}, ModelKind.MASKRCNN, ["astride"])
    gated = gate_result(result, volume, intracranial_space(volume), GateParameters(margin_mm=0.0))
    assert gated.gate.kept == 1 and gated.gate.clipped_voxels > 0
    assert not (gated.label_map.astype(bool) & (np.arange(SPEC.n_slices) >= np.searchsorted(z, 80))[:, None, None]).any()


def test_a_classifier_result_and_a_skull_less_image_pass_unchanged(head):
    volume, _, blobs = head
    classifier = _classifier_result(volume, 0.9)
    gated = gate_result(classifier, volume, intracranial_space(volume))
    assert gated.study_probability == 0.9 and gated.gate.dropped == 0
    # No skull (all soft tissue): nothing can be told apart; the findings stay, and the report says why.
    blank = CTVolume.from_array(np.full(volume.hu.shape, 40, dtype=np.int16), spacing_mm=volume.spacing_mm)
    lesions = _result(blank, blobs, ModelKind.UNET, ["pharynx"])
    passed = gate_result(lesions, blank, intracranial_space(blank))
    assert len(passed.findings) == 1 and passed.gate.skull_found is False


def test_combined_results_keep_the_classifier_call_and_the_gated_lesions(head):
    volume, _, blobs = head
    study = _classifier_result(volume, 0.9)
    lesions = gate_result(_result(volume, blobs, ModelKind.UNET, ["brain", "pharynx"]), volume, intracranial_space(volume))
    combined = combine(study, lesions)
    assert combined.positive and len(combined.findings) == 1 and combined.gate.dropped == 1


class _Fixed:
    """A stand-in model that returns one prepared result."""

    name, version = "fixed", "1"

    def __init__(self, result: ModelResult) -> None:
        self.result = result

    def predict(self, volume: CTVolume) -> ModelResult:
        return self.result


def test_a_study_decision_sees_the_gated_findings_as_it_was_fitted(head):
    """The worker decides after the gate: a large pharynx finding cannot lend the study its probability."""
    volume, _, blobs = head
    decision = StudyDecision(intercept=-2.0, log_volume=6.0, confidence=3.0, threshold=0.5)
    brain = np.zeros_like(blobs["brain"])
    middle = int(np.argmax(blobs["brain"].sum(axis=(1, 2))))
    brain[middle] = blobs["brain"][middle]  # one slice of the brain blob: smaller than the pharynx one
    # Confidence 0.6 in the brain, 0.7 in the pharynx: outside, the larger and more confident finding.
    result = _result(volume, {"brain": brain, "pharynx": blobs["pharynx"]}, ModelKind.UNET, ["brain", "pharynx"])
    decided = DecidedModel(GatedModel(_Fixed(result)), decision).predict(volume)
    assert [f.voxel_count for f in decided.findings] == [int(brain.sum())]
    assert decided.study_probability == pytest.approx(decision.probability(decided.findings[0]))
    assert decided.study_probability < max(decision.probability(f) for f in result.findings)
    assert decided.gate is not None and decided.gate.dropped == 1


def test_gated_model_runs_any_model_and_keeps_its_name():
    spec = SeriesSpec(
        n_slices=34, rows=192, columns=192, pixel_spacing_mm=(1.2, 1.2), anatomy=Anatomy(),
        lesions=[Lesion(center_mm=(25.0, 0.0, 10.0), radius_mm=9.0)],
    )
    hu, planted, _ = anatomical_volume(spec)
    volume = CTVolume.from_array(hu, spacing_mm=(spec.slice_thickness_mm, *spec.pixel_spacing_mm))
    model = GatedModel(ThresholdModel(ThresholdParameters()))
    assert (model.name, model.version) == (model.model.name, model.model.version)
    result = model.predict(volume)
    assert result.gate is not None and result.gate.kept >= 1
    largest = result.label_map == 1
    assert (largest & planted).sum() >= 0.5 * planted.sum()


def _mimics(volume: CTVolume, truth: np.ndarray, blobs: dict[str, np.ndarray]) -> CTVolume:
    """The head with contrast (200 HU) under "brain", a 70 HU clot under "clot" and under the
    intracranial part of "epidural_deep" (its part in the inner table stays bone)."""
    hu = volume.hu.copy()
    hu[blobs["brain"]] = 200
    hu[blobs["clot"]] = 70
    hu[blobs["epidural_deep"] & truth] = 70
    return replace(volume, hu=hu)


def test_a_finding_denser_than_blood_is_dropped_and_blood_kept(head):
    """Contrast dropped as dense; a clot kept, and an epidural clot whose contour takes in a rim of bone too."""
    volume, truth, blobs = head
    dense = _mimics(volume, truth, blobs)
    deep = blobs["epidural_deep"]
    assert dense.hu[deep].mean() > 100 > np.median(dense.hu[deep]), "the bone rim lifts the mean, not the median"
    result = _result(dense, blobs, ModelKind.UNET, ["brain", "clot", "epidural_deep"])
    gated = gate_result(result, dense, intracranial_space(volume))
    assert gated.gate is not None
    assert (gated.gate.kept, gated.gate.dropped, gated.gate.dense) == (2, 0, 1)
    kept = gated.label_map != 0
    assert not (kept & blobs["brain"]).any()
    assert (kept & blobs["clot"]).sum() == blobs["clot"].sum()
    assert (kept & deep & truth).sum() == (deep & truth).sum()
    assert gated.positive and [f.label for f in gated.findings] == [1, 2]


def test_only_contrast_left_makes_the_result_negative_and_the_model_logs_it(head, caplog):
    volume, truth, blobs = head
    dense = _mimics(volume, truth, blobs)
    result = _result(dense, blobs, ModelKind.MASKRCNN, ["brain"])
    with caplog.at_level("INFO", logger="dicom_node.models.gating"):
        gated = GatedModel(_Fixed(result)).predict(dense)
    assert gated.findings == () and gated.study_probability == 0.0 and not gated.positive
    assert gated.gate.dense == 1 and gated.gate.dropped == 0
    assert "1 dropped as denser than blood" in caplog.text


def test_the_density_rule_never_judges_pseudo_hu_and_can_be_turned_off(head):
    """PNG data carry pseudo-HU (saturated white is a placeholder): the rule must not fire on them."""
    volume, truth, blobs = head
    dense = _mimics(volume, truth, blobs)
    space = intracranial_space(volume)
    for pseudo in (replace(dense, real_hu=False), PseudoVolume(hu=dense.hu, spacing_mm=dense.spacing_mm)):
        result = _result(pseudo, blobs, ModelKind.UNET, ["brain", "clot"])  # type: ignore[arg-type]
        gated = gate_result(result, pseudo, space)  # type: ignore[arg-type]
        assert (gated.gate.kept, gated.gate.dense) == (2, 0)
    off = gate_result(_result(dense, blobs, ModelKind.UNET, ["brain"]), dense, space, GateParameters(max_blood_hu=None))
    assert (off.gate.kept, off.gate.dense) == (1, 0)


def test_the_density_rule_applies_where_no_skull_is_found(head):
    volume, _, blobs = head
    hu = np.full(volume.hu.shape, 40, dtype=np.int16)
    hu[blobs["brain"]] = 400  # a calcification in a skull-less image
    blank = CTVolume.from_array(hu, spacing_mm=volume.spacing_mm)
    gated = gate_result(_result(blank, blobs, ModelKind.UNET, ["brain", "clot"]), blank, intracranial_space(blank))
    assert gated.gate.skull_found is False
    assert (gated.gate.kept, gated.gate.dense) == (1, 1)
    assert (gated.label_map != 0).sum() == blobs["clot"].sum()


def test_per_label_medians_match_numpys():
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 5, 101)
    labels[labels == 3] = 4  # label 3 absent: no median
    values = rng.normal(60.0, 40.0, labels.size).astype(np.float32)
    medians = _medians(values, labels, 6)
    expected = [np.median(values[labels == i]) if (labels == i).any() else np.nan for i in range(6)]
    np.testing.assert_allclose(medians, expected, rtol=1e-6)


def test_gate_parameters_are_checked():
    with pytest.raises(ValueError, match="margin_mm"):
        GateParameters(margin_mm=-1)
    with pytest.raises(ValueError, match="min_inside_fraction"):
        GateParameters(min_inside_fraction=0)
    with pytest.raises(ValueError, match="max_blood_hu"):
        GateParameters(max_blood_hu=float("nan"))


def test_the_gate_is_configured_from_analysis_gate():
    """``[analysis.gate]`` reaches the gate of every kind; the defaults are the measured ones."""
    from dicom_node.config import AnalysisSettings, GateSettings
    from dicom_node.models.loading import gate_parameters, load_configured_model

    assert gate_parameters(AnalysisSettings()) == GateParameters()
    chosen = AnalysisSettings(
        model="threshold", gate=GateSettings(margin_mm=8.0, min_inside_fraction=0.8, density_rule=False)
    )
    assert gate_parameters(chosen) == GateParameters(margin_mm=8.0, min_inside_fraction=0.8, max_blood_hu=None)
    assert load_configured_model(chosen).model.parameters == gate_parameters(chosen)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_blood_hu"):
        GateSettings(max_blood_hu=20.0)  # below acute blood: every bleed would go
