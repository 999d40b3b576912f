"""The combination rules of a classifier and a segmenter (models/combine.py), on tiny arrays."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dicom_node.models.combine import RULES, aligned_probability, combine, combined_threshold
from dicom_node.models.result import ModelKind, ModelResult, findings_from_labels
from dicom_node.training.cases import PseudoVolume

SHAPE = (6, 32, 32)
SPACING = (5.0, 0.5, 0.5)


def _classifier(probability: float, *, threshold: float = 0.5) -> ModelResult:
    return ModelResult(
        model_kind=ModelKind.CLASSIFIER,
        model_name="clf",
        model_version="1",
        label_map=np.zeros(SHAPE, dtype=np.uint8),
        findings=(),
        study_probability=probability,
        decision_threshold=threshold,
        slice_probabilities=np.full(SHAPE[0], probability),
    )


def _segmenter(with_lesion: bool, *, threshold: float = 0.5) -> ModelResult:
    """A U-Net result: one 0.9-confident lesion on two slices, or nothing (probability 0)."""
    mask = np.zeros(SHAPE, dtype=bool)
    if with_lesion:
        mask[2:4, 10:20, 10:20] = True
    volume = PseudoVolume(hu=np.zeros(SHAPE, np.float32), spacing_mm=SPACING)
    labelled = findings_from_labels(mask, volume, confidences=np.where(mask, 0.9, 0.0), min_volume_ml=0.0)
    return ModelResult(
        model_kind=ModelKind.UNET,
        model_name="seg",
        model_version="2",
        label_map=labelled.label_map,
        findings=labelled.findings,
        study_probability=0.9 if with_lesion else 0.0,
        decision_threshold=threshold,
    )


@pytest.mark.parametrize(
    ("classifier", "lesion", "positive", "findings"),
    [(0.97, True, True, 1), (0.97, False, False, 0), (0.2, True, False, 0), (0.2, False, False, 0)],
)
def test_both_calls_positive_only_when_the_classifier_does_and_a_lesion_is_kept(classifier, lesion, positive, findings):
    combined = combine(_classifier(classifier), _segmenter(lesion), rule="both")
    assert combined.positive is positive
    assert len(combined.findings) == findings
    assert bool((combined.label_map != 0).any()) is (findings > 0)
    # The lower of the two probabilities: never above the classifier's, 0 without a lesion.
    assert combined.study_probability == pytest.approx(min(classifier, 0.9 if lesion else 0.0))


def test_a_study_the_classifier_alone_calls_reads_positive_with_no_lesion_under_gate_but_not_under_both():
    """The failure ``both`` exists for: a classifier maximum over slices with no finding behind it."""
    study, lesions = _classifier(0.97), _segmenter(False)
    assert combine(study, lesions, rule="gate").positive and not combine(study, lesions, rule="gate").findings
    assert not combine(study, lesions, rule="both").positive


@pytest.mark.parametrize(
    ("classifier", "lesion", "positive"),
    [(0.2, True, True), (0.1, True, False), (0.2, False, False), (0.99, True, True)],
)
def test_both_calls_by_each_model_s_own_threshold_when_they_differ(classifier, lesion, positive):
    # A classifier whose validation put its threshold at 0.17, a U-Net at 0.5.
    combined = combine(_classifier(classifier, threshold=0.17), _segmenter(lesion), rule="both")
    assert combined.positive is positive
    assert combined.decision_threshold == 0.5
    assert len(combined.findings) == (1 if positive else 0)
    assert 0.0 <= combined.study_probability <= 1.0


@pytest.mark.parametrize(
    ("segmenter_threshold", "segmenter_probability", "positive"),
    [(0.3, 0.4, True), (0.7, 0.6, False), (0.05, 0.1, True), (0.7, 0.9, True)],
)
def test_both_asks_the_segmenter_by_its_own_threshold_too(segmenter_threshold, segmenter_probability, positive):
    # A classifier at 0.5 (the Kaggle-only one) with a segmenter whose study decision moved its threshold.
    lesions = replace(
        _segmenter(True, threshold=segmenter_threshold), study_probability=segmenter_probability
    )
    combined = combine(_classifier(0.9), lesions, rule="both")
    assert combined.positive is positive
    assert bool(combined.findings) is positive  # never "positive, no lesion", never a lesion on a negative


@pytest.mark.parametrize("threshold", [0.05, 0.17, 0.5, 0.8, 1.0])
def test_an_aligned_probability_puts_the_threshold_on_one_half_and_keeps_the_order(threshold):
    grid = np.linspace(0.0, 1.0, 101)
    aligned = [aligned_probability(float(p), threshold) for p in grid]
    assert aligned[0] == 0.0 and aligned[-1] == 1.0
    assert all(a <= b for a, b in zip(aligned, aligned[1:], strict=False))
    assert all((a >= 0.5) == (p >= threshold) for a, p in zip(aligned, grid, strict=True))
    assert combined_threshold("both", threshold, 0.5) == (0.5 if threshold != 0.5 else threshold)
    assert combined_threshold("gate", threshold, 0.5) == threshold


def test_every_rule_keeps_both_names_and_the_classifier_slice_probabilities():
    for rule in RULES:
        combined = combine(_classifier(0.9), _segmenter(True), rule=rule)
        assert combined.model_name == "clf+seg" and combined.model_kind == ModelKind.UNET
        assert combined.slice_probabilities is not None and combined.slice_probabilities.max() == pytest.approx(0.9)


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown combination rule"):
        combine(_classifier(0.9), _segmenter(True), rule="mean")
