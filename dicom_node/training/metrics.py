"""Evaluation metrics: overlap, lesion detection, study calls, ROC AUC with bootstrap CIs.

numpy only (no scikit-learn), each definition stated where it is computed:

* Dice ``2|P.T| / (|P| + |T|)`` and IoU ``|P.T| / |P u T|``; both are 1 when
  prediction and truth are both empty (nothing to find, nothing found).
* Lesion detection: lesions are connected components (6-connected in 3D, the
  node's post-processing rule). A true lesion is *detected* when any predicted
  voxel overlaps it; a predicted lesion overlapping no true lesion is a *false
  positive*. Overlap, not an IoU cut-off, because readers count a lesion as
  found when it is marked at all, and contours of small bleeds disagree a lot.
* Study calls: accuracy, sensitivity, specificity from the 2x2 table.
* ROC AUC: the Mann-Whitney probability that a positive outranks a negative,
  ties counting one half.
* 95 % CIs: percentile bootstrap, resampling positives and negatives separately
  (stratified), so every resample has both classes and the AUC is defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dicom_node.imaging.morphology import label_components


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two masks of one shape; 1.0 when both are empty."""
    p, t = _masks(prediction, truth)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    p, t = _masks(prediction, truth)
    union = int(np.logical_or(p, t).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, t).sum()) / union


def overlap_counts(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(|P.T|, |P|, |T|): what pooled Dice over many images is summed from."""
    p, t = _masks(prediction, truth)
    return int(np.logical_and(p, t).sum()), int(p.sum()), int(t.sum())


def _masks(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must have one shape")
    return prediction != 0, truth != 0


@dataclass(frozen=True)
class LesionCounts:
    """Lesion-level detection counts of one image or volume."""

    true_lesions: int
    detected: int
    predicted_lesions: int
    false_positives: int


def lesion_counts(prediction: np.ndarray, truth: np.ndarray) -> LesionCounts:
    """Detected true lesions and false-positive predicted lesions (any-overlap rule)."""
    p, t = _masks(prediction, truth)
    true_labels, n_true = label_components(t)
    pred_labels, n_pred = label_components(p)
    both = p & t
    detected = np.unique(true_labels[both]).size if n_true else 0
    hit_predictions = np.unique(pred_labels[both]).size if n_pred else 0
    return LesionCounts(
        true_lesions=n_true,
        detected=int(detected),
        predicted_lesions=n_pred,
        false_positives=int(n_pred - hit_predictions),
    )


@dataclass(frozen=True)
class BinaryCounts:
    """The 2x2 table of study (or image) calls."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def of(cls, truth: np.ndarray, called: np.ndarray) -> BinaryCounts:
        """Counts from 0/1 truth and 0/1 calls."""
        t = np.asarray(truth).astype(bool)
        c = np.asarray(called).astype(bool)
        if t.shape != c.shape:
            raise ValueError("truth and calls must have one shape")
        return cls(
            tp=int((t & c).sum()), fp=int((~t & c).sum()), tn=int((~t & ~c).sum()), fn=int((t & ~c).sum())
        )

    @property
    def accuracy(self) -> float:
        """(TP + TN) / all; NaN without cases."""
        total = self.tp + self.fp + self.tn + self.fn
        return (self.tp + self.tn) / total if total else float("nan")

    @property
    def sensitivity(self) -> float:
        """TP / (TP + FN); NaN without positives."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        """TN / (TN + FP); NaN without negatives."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n+ n-)), ties count 1/2; NaN with one class."""
    t = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    # Average ranks over ties (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates, thresholds), from (0, 0) to (1, 1)."""
    t = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.r_[np.inf, np.unique(s)[::-1]]
    n_pos, n_neg = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    tpr = np.array([(s[t] >= th).sum() / n_pos for th in thresholds])
    fpr = np.array([(s[~t] >= th).sum() / n_neg for th in thresholds])
    return fpr, tpr, thresholds


def calibration_bins(truth: np.ndarray, scores: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: per equal-width probability bin, mean predicted, observed rate and count."""
    t = np.asarray(truth).astype(float)
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    index = np.minimum((s * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        members = index == b
        if members.any():
            table.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "mean_predicted": float(s[members].mean()),
                    "observed": float(t[members].mean()),
                    "count": int(members.sum()),
                }
            )
    return table


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    truth: np.ndarray,
    scores: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of ``statistic(truth, scores)``, resampling each class separately."""
    if resamples < 1 or not 0 < level < 1:
        raise ValueError("resamples must be positive and level in (0, 1)")
    t = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = np.flatnonzero(t), np.flatnonzero(~t)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = np.concatenate(
            [
                rng.choice(positives, positives.size) if positives.size else positives,
                rng.choice(negatives, negatives.size) if negatives.size else negatives,
            ]
        )
        value = statistic(t[pick], s[pick])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def study_metrics(
    truth: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = 2000, seed: int = 0
) -> dict[str, float | int | list[float]]:
    """Accuracy, sensitivity, specificity at ``threshold`` and ROC AUC, each with a 95 % CI."""
    t = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    counts = BinaryCounts.of(t, s >= threshold)

    def at_threshold(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda tt, ss: getattr(BinaryCounts.of(tt, ss >= threshold), name)

    out: dict[str, float | int | list[float]] = {
        "n": int(t.size),
        "n_positive": int(t.sum()),
        "threshold": float(threshold),
        "tp": counts.tp,
        "fp": counts.fp,
        "tn": counts.tn,
        "fn": counts.fn,
    }
    for name in ("accuracy", "sensitivity", "specificity"):
        out[name] = getattr(counts, name)
        out[f"{name}_ci95"] = list(bootstrap_ci(at_threshold(name), t, s, resamples=resamples, seed=seed))
    out["roc_auc"] = roc_auc(t, s)
    out["roc_auc_ci95"] = list(bootstrap_ci(roc_auc, t, s, resamples=resamples, seed=seed))
    return out


def best_threshold(truth: np.ndarray, scores: np.ndarray, *, prefer: float = 0.5, tolerance_cases: int = 1) -> float:
    """A score cut-off chosen on validation data without over-fitting it.

    Balanced accuracy is computed for ``prefer`` and for the midpoints between
    consecutive distinct scores. Among the cut-offs within ``tolerance_cases``
    misclassified cases of the best one (one case of the smaller class is
    worth ``1 / (2 n_smaller)`` of balanced accuracy), the one nearest
    ``prefer`` is returned: on 40 validation images, moving the threshold far
    from 0.5 to win one more case is fitting noise.
    """
    t = np.asarray(truth).astype(bool)
    s = np.unique(np.asarray(scores, dtype=np.float64))
    candidates = np.r_[prefer, (s[1:] + s[:-1]) / 2.0] if s.size > 1 else np.array([prefer])
    candidates = candidates[(candidates > 0) & (candidates <= 1)]
    smaller = max(1, min(int(t.sum()), int((~t).sum())))

    def balanced(th: float) -> float:
        c = BinaryCounts.of(t, np.asarray(scores) >= th)
        return (np.nan_to_num(c.sensitivity) + np.nan_to_num(c.specificity)) / 2.0

    values = np.array([balanced(th) for th in candidates])
    near_best = np.flatnonzero(values >= values.max() - tolerance_cases / (2.0 * smaller) - 1e-12)
    return float(candidates[near_best[np.argmin(np.abs(candidates[near_best] - prefer))]])
