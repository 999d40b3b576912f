"""Metric definitions against hand-computed cases and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dicom_node.training.metrics import (
    BinaryCounts,
    best_threshold,
    bootstrap_ci,
    calibration_bins,
    dice,
    iou,
    lesion_counts,
    roc_auc,
    roc_curve,
    study_metrics,
)


def test_dice_and_iou_by_hand():
    p = np.zeros((4, 4), bool)
    t = np.zeros((4, 4), bool)
    p[0, :2] = True  # 2 pixels
    t[0, 1:4] = True  # 3 pixels, 1 shared
    assert dice(p, t) == pytest.approx(2 * 1 / 5)
    assert iou(p, t) == pytest.approx(1 / 4)


def test_empty_prediction_of_empty_truth_is_perfect():
    empty = np.zeros((3, 3), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="one shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_lesion_counts_use_any_overlap():
    truth = np.zeros((1, 10, 10), bool)
    truth[0, 1:3, 1:3] = True  # lesion A, found
    truth[0, 6:8, 6:8] = True  # lesion B, missed
    prediction = np.zeros_like(truth)
    prediction[0, 2:4, 2:4] = True  # overlaps A by one pixel
    prediction[0, 0, 8] = True  # a false positive
    counts = lesion_counts(prediction, truth)
    assert (counts.true_lesions, counts.detected, counts.predicted_lesions, counts.false_positives) == (2, 1, 2, 1)


def _brute_force_auc(truth, scores):
    pos = [s for t, s in zip(truth, scores, strict=True) if t]
    neg = [s for t, s in zip(truth, scores, strict=True) if not t]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # many ties
    assert roc_auc(truth, scores) == pytest.approx(_brute_force_auc(truth, scores))


def test_auc_is_undefined_with_one_class():
    assert np.isnan(roc_auc(np.ones(4), np.arange(4)))


def test_roc_curve_runs_from_origin_to_one():
    fpr, tpr, _ = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_binary_counts():
    counts = BinaryCounts.of(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 0, 1, 0]))
    assert (counts.tp, counts.fn, counts.tn, counts.fp) == (1, 1, 2, 1)
    assert counts.accuracy == pytest.approx(3 / 5)
    assert counts.sensitivity == pytest.approx(1 / 2)
    assert counts.specificity == pytest.approx(2 / 3)


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    truth = np.r_[np.ones(30), np.zeros(30)]
    scores = truth * 0.3 + rng.random(60)
    low, high = bootstrap_ci(roc_auc, truth, scores, resamples=300, seed=3)
    assert low <= roc_auc(truth, scores) <= high
    assert (low, high) == bootstrap_ci(roc_auc, truth, scores, resamples=300, seed=3)


def test_study_metrics_report_every_figure_with_a_ci():
    truth = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1])
    figures = study_metrics(truth, scores, 0.5, resamples=100)
    assert figures["accuracy"] == pytest.approx(4 / 6)
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert len(figures[f"{name}_ci95"]) == 2


def test_best_threshold_separates_separable_scores_nearest_one_half():
    truth = np.array([0, 0, 1, 1])
    assert 0.3 < best_threshold(truth, np.array([0.1, 0.3, 0.7, 0.9])) <= 0.7


def test_calibration_bins_count_every_case():
    table = calibration_bins(np.array([0, 1, 1, 0]), np.array([0.05, 0.95, 0.9, 0.5]), bins=10)
    assert sum(row["count"] for row in table) == 4


def test_best_threshold_does_not_chase_one_case_far_from_one_half():
    truth = np.array([1] * 10 + [0] * 10)
    scores = np.r_[np.full(9, 0.9), 0.1, np.full(10, 0.05)]  # one positive scored 0.1
    assert best_threshold(truth, scores, tolerance_cases=0) < 0.1
    assert best_threshold(truth, scores, tolerance_cases=1) == 0.5
