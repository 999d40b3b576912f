"""The study decision from whole-study evidence, its calibration, and the whole-study figures."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.models.combine import StudyDecision, decide_study
from dicom_node.models.result import ModelKind, ModelResult, findings_from_labels
from dicom_node.training.calibrate import choose_threshold, finding_examples, fit_logistic
from dicom_node.training.cases import PseudoVolume
from dicom_node.training.whole_study import WholeStudyFigures

SPACING = (5.0, 0.5, 0.5)  # one voxel = 1.25 uL


def _result(mask: np.ndarray, probability: np.ndarray) -> ModelResult:
    volume = PseudoVolume(hu=np.zeros(mask.shape, np.float32), spacing_mm=SPACING)
    labelled = findings_from_labels(mask, volume, confidences=probability, min_volume_ml=0.0)
    return ModelResult(
        model_kind=ModelKind.UNET,
        model_name="test",
        model_version="0",
        label_map=labelled.label_map,
        findings=labelled.findings,
        study_probability=float(probability[mask].max()) if mask.any() else 0.0,
        decision_threshold=0.5,
    )


def _stack(slices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stack with one large confident true clot and one small, unsure blob at the base."""
    mask = np.zeros((slices, 64, 64), dtype=bool)
    probability = np.zeros(mask.shape, dtype=np.float64)
    truth = np.zeros(mask.shape, dtype=bool)
    middle = slices // 2
    truth[middle - 1 : middle + 2, 20:44, 20:44] = True
    mask[middle - 1 : middle + 2, 22:44, 20:44] = True
    probability[mask] = 0.95
    mask[0, 5:9, 5:9] = True  # 16 voxels = 0.02 mL at the skull base
    probability[0, 5:9, 5:9] = 0.6
    return mask, probability, truth


DECISION = StudyDecision(intercept=-2.0, log_volume=6.0, confidence=3.0, threshold=0.5)


def test_the_decision_keeps_the_large_confident_finding_and_drops_the_small_unsure_one():
    mask, probability, truth = _stack(30)
    result = _result(mask, probability)
    assert len(result.findings) == 2
    volume = PseudoVolume(hu=np.zeros(mask.shape, np.float32), spacing_mm=SPACING)
    decided = decide_study(result, DECISION, volume)
    assert len(decided.findings) == 1 and decided.positive
    assert decided.findings[0].label == 1 and decided.findings[0].volume_ml == pytest.approx(result.findings[0].volume_ml)
    assert decided.findings[0].confidence == pytest.approx(0.95)
    assert not decided.label_map[0].any() and (decided.label_map != 0).sum() == result.findings[0].voxel_count
    assert decided.study_probability == pytest.approx(DECISION.probability(result.findings[0]))


def test_the_study_probability_does_not_grow_with_the_number_of_slices():
    volume_of = lambda n: PseudoVolume(hu=np.zeros((n, 64, 64), np.float32), spacing_mm=SPACING)  # noqa: E731
    short, long = _stack(20), _stack(200)
    p_short = decide_study(_result(short[0], short[1]), DECISION, volume_of(20)).study_probability
    p_long = decide_study(_result(long[0], long[1]), DECISION, volume_of(200)).study_probability
    assert p_short == pytest.approx(p_long)


def test_a_study_with_only_small_unsure_findings_is_called_negative_with_none_left():
    mask = np.zeros((10, 64, 64), dtype=bool)
    mask[0, 5:9, 5:9] = True
    mask[9, 50:54, 50:54] = True
    probability = np.where(mask, 0.6, 0.0)
    volume = PseudoVolume(hu=np.zeros(mask.shape, np.float32), spacing_mm=SPACING)
    decided = decide_study(_result(mask, probability), DECISION, volume)
    assert not decided.positive and decided.findings == () and not decided.label_map.any()


def test_the_decision_round_trips_through_json():
    assert StudyDecision.from_json(DECISION.to_json()) == DECISION
    with pytest.raises(ValueError, match="threshold"):
        StudyDecision(0.0, 1.0, 1.0, threshold=1.0)


def test_calibration_learns_that_large_confident_findings_are_blood():
    rng = np.random.default_rng(0)
    results = []
    for _ in range(12):
        mask, probability, truth = _stack(20)
        mask[19, rng.integers(0, 50) :, :][:4, :4] = True  # another small blob at the vertex
        probability[mask & (probability == 0)] = 0.55
        results.append((_result(mask, probability), truth))
    examples = finding_examples(results)
    assert examples.labels.sum() == 12 and len(examples.labels) == 36
    beta = fit_logistic(examples.features, examples.labels)
    assert beta[1] > 0  # more volume, more likely blood
    threshold = choose_threshold(examples, beta)
    assert choose_threshold(examples, beta, target=2.0) <= threshold  # a looser target keeps at least as much
    x = np.hstack([np.ones((len(examples.labels), 1)), examples.features])
    p = 1 / (1 + np.exp(-(x @ beta)))
    assert ((p >= threshold) & (examples.labels == 0)).sum() / 12 <= 0.5
    assert ((p >= threshold) & (examples.labels == 1)).all() or ((p >= threshold) == (examples.labels == 1)).mean() > 0.9
    with pytest.raises(ValueError, match="both kinds"):
        fit_logistic(examples.features[examples.labels == 1], examples.labels[examples.labels == 1])


def test_whole_study_figures_count_false_positives_by_patient_and_level():
    mask, probability, truth = _stack(30)
    result = _result(mask, probability)
    figures = WholeStudyFigures()
    figures.add("p1", result, truth, np.zeros(mask.shape, np.float32))
    figures.add("p2", _result(truth, np.where(truth, 0.9, 0.0)), truth, np.zeros(mask.shape, np.float32))
    m = figures.metrics()
    assert m["patients"] == 2
    assert m["false_positive_findings_per_patient"] == 0.5
    assert m["false_positive_ml_per_patient"] == pytest.approx(16 * 1.25e-3 / 2)
    assert m["negative_slices"] == {"lower": 20, "middle": 14, "upper": 20}
    assert m["negative_slice_specificity"]["lower"] == pytest.approx(19 / 20)
    assert m["negative_slice_specificity"]["middle"] == 1.0 and m["negative_slice_specificity"]["upper"] == 1.0
    assert m["lesion_sensitivity"] == 1.0 and m["true_lesions"] == 2
    per_slice = 2 * 22 * 24 / (24 * 24 + 22 * 24)
    assert m["dice_mean_positive_slices"] == pytest.approx((3 * per_slice + 3 * 1.0) / 6)
    assert len(figures.worst) == 1 and "p1 slice 0/30" in figures.worst[0].example.title


def test_a_classifier_on_whole_stacks_is_measured_by_its_slices_and_its_clot_free_call():
    """A classifier has no voxels: its negative slices are clean under the threshold, and a stack
    counts as called on its clot-free slices when one of them alone reaches it."""
    shape = (30, 8, 8)
    truth = np.zeros(shape, bool)
    truth[12:15, 2:5, 2:5] = True  # the clot: slices 12-14 (middle third)

    def classified(probabilities: np.ndarray, threshold: float) -> ModelResult:
        return ModelResult(
            model_kind=ModelKind.CLASSIFIER, model_name="clf", model_version="1",
            label_map=np.zeros(shape, np.uint8), findings=(), study_probability=float(probabilities.max()),
            decision_threshold=threshold, slice_probabilities=probabilities,
        )

    quiet = np.full(30, 0.1)
    quiet[12:15] = 0.9  # fires on the clot only
    loud = quiet.copy()
    loud[[2, 25, 26]] = 0.3  # and on one lower, two upper clot-free slices
    figures = WholeStudyFigures()
    figures.add("p1", classified(quiet, 0.2), truth, np.zeros(shape, np.float32))
    figures.add("p2", classified(loud, 0.2), truth, np.zeros(shape, np.float32))
    m = figures.metrics()
    assert m["patients"] == 2 and m["clot_free_stacks_called"] == 1
    assert m["negative_slices"] == {"lower": 20, "middle": 14, "upper": 20}
    assert m["negative_slice_specificity"] == {"lower": 19 / 20, "middle": 1.0, "upper": 18 / 20}
    assert "false_positive_findings_per_patient" not in m and "dice_pooled" not in m  # no voxels: no such figures


def test_cross_fitting_counts_every_held_out_finding_once():
    from dicom_node.training.calibrate import cross_fit

    results = []
    for k in range(8):
        mask, probability, truth = _stack(20)
        if k % 3 == 0:
            mask[19, 40:48, 40:48] = True  # a larger false positive on some stacks
            probability[19, 40:48, 40:48] = 0.7
        results.append((_result(mask, probability), truth))
    figures = cross_fit(finding_examples(results))
    assert 0.0 <= figures["false_positive_findings_per_patient"] <= 2.0
    assert figures["true_findings_kept"] == 1.0


def test_the_worker_applies_a_cards_decision_after_the_gate(tmp_path):
    """``calibrate --gate`` fits on gated findings, so the worker's model gates first, then decides."""
    import shutil
    from dataclasses import replace

    from dicom_node.config import AnalysisSettings
    from dicom_node.models.card import ModelCard
    from dicom_node.models.combine import DecidedModel
    from dicom_node.models.gating import GatedModel
    from dicom_node.models.loading import load_configured_model
    from dicom_node.models.registry import shipped_model_dir
    from dicom_node.models.runner import Runner

    folder = tmp_path / "unet"
    shutil.copytree(shipped_model_dir("unet"), folder)
    card = ModelCard.load(folder)
    replace(card, study_decision=DECISION).save(folder)

    model = load_configured_model(AnalysisSettings(model="unet", unet_dir=folder, device="cpu")).model
    assert isinstance(model, DecidedModel) and model.decision == DECISION
    assert isinstance(model.model, GatedModel)
    assert isinstance(model.model.model, Runner)  # the bare runner: it never decides (test_models_runner.py)


def test_clot_free_runs_become_negative_cases_with_a_margin_and_a_minimum_length():
    from dicom_node.training.cases import Case, PseudoVolume
    from dicom_node.training.whole_study import clot_free_cases

    truth = np.zeros((30, 4, 4), bool)
    truth[12:15, 1, 1] = True  # clot on slices 12-14
    hu = np.arange(30, dtype=np.float32)[:, None, None] * np.ones((30, 4, 4), np.float32)
    affine = np.diag([5.0, 0.5, 0.5, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    case = Case(key="p1", volume=PseudoVolume(hu=hu, spacing_mm=(5.0, 0.5, 0.5), affine=affine), label=1, truth=truth,
                windowed=hu / 30)

    cut = list(clot_free_cases([case], min_mm=40.0, margin_slices=1))

    # 0-10 (11 slices, 55 mm) and 16-29 (14 slices, 70 mm); slices 11 and 15 are the margin.
    assert [c.key for c in cut] == ["p1 slices 0-10", "p1 slices 16-29"]
    assert all(c.label == 0 and not c.truth.any() for c in cut)
    upper = cut[1]
    assert upper.volume.hu[0, 0, 0] == 16 and upper.windowed.shape[0] == 14 and upper.truth.shape[0] == 14
    assert np.allclose(upper.volume.affine[:3, 3], (10.0 + 16 * 5.0, 20.0, 30.0))  # slice 0 of the cut is slice 16
    assert [c.key for c in clot_free_cases([case], min_mm=60.0)] == ["p1 slices 16-29"]
    with pytest.raises(ValueError, match="no whole stacks"):  # labels only (Kaggle): nothing to cut runs from
        list(clot_free_cases([Case(key="x", volume=case.volume, label=0, truth=None)]))


@pytest.mark.parametrize(
    ("clot", "margin", "runs"),
    [
        ([0, 0], 1, [(0, 2)]),  # shorter than the margin's window: still the stack's own slices
        ([0, 1], 1, []),  # the slice next to the clot is the margin
        ([0, 0, 0, 1], 3, []),
        ([0, 0, 0, 0, 0, 1], 3, [(0, 2)]),
        ([1, 0, 0, 0, 0, 0, 1], 1, [(2, 5)]),
        ([0, 0, 1], 0, [(0, 2)]),
    ],
)
def test_clot_free_runs_keep_the_margin_on_stacks_of_any_length(clot, margin, runs):
    from dicom_node.training.whole_study import _clot_free_runs

    assert _clot_free_runs(np.array(clot, bool), margin) == runs


def test_evaluation_calls_a_card_with_a_study_decision_at_the_decision_s_threshold():
    """The worker calls a decided study positive at the decision's threshold (``decide_study`` sets it
    on the result); scoring it at the card's own 0.5 counted kept findings of 0.05-0.5 as negatives."""
    from dataclasses import replace as replaced

    from dicom_node.models.card import ModelCard
    from dicom_node.models.registry import shipped_model_dir
    from dicom_node.training.evaluate import _called_at

    card = ModelCard.load(shipped_model_dir("unet"))
    assert _called_at(card) == card.thresholds.decision == 0.5
    decided = replaced(card, study_decision=StudyDecision(intercept=-3.0, log_volume=2.0, confidence=1.0, threshold=0.05))
    assert _called_at(decided) == 0.05
