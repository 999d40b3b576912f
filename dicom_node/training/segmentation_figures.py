"""Segmentation figures of a split: what a model's masks make of the cases with pixel truth.

Pooled over every case (all voxels together, so a false positive on a negative
case lowers Dice and IoU as much as one on a positive case), plus the mean and
median Dice over the cases that hold a lesion, and lesion-level detection by the
any-overlap rule (:func:`~dicom_node.training.metrics.lesion_counts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dicom_node.training.metrics import LesionCounts, dice, lesion_counts, overlap_counts


@dataclass
class SegmentationFigures:
    """Accumulates the segmentation figures over the cases of a split (``add`` each, then ``metrics``)."""

    cases: int = 0
    overlap: int = 0
    predicted_voxels: int = 0
    true_voxels: int = 0
    lesion_dices: list[float] = field(default_factory=list)
    lesions: LesionCounts = field(default_factory=lambda: LesionCounts(0, 0, 0, 0))

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        """One case: ``predicted`` and ``truth`` masks of one shape."""
        self.cases += 1
        both, p, t = overlap_counts(predicted, truth)
        self.overlap += both
        self.predicted_voxels += p
        self.true_voxels += t
        if t:
            self.lesion_dices.append(dice(predicted, truth))
        counts = lesion_counts(predicted, truth)
        self.lesions = LesionCounts(
            *(a + b for a, b in zip(vars(self.lesions).values(), vars(counts).values(), strict=True))
        )

    def metrics(self) -> dict[str, Any]:
        """The split's segmentation figures (see the module docstring); at least one case must have been added."""
        total = self.predicted_voxels + self.true_voxels
        union = total - self.overlap
        dices, lesions = self.lesion_dices, self.lesions
        return {
            "cases": self.cases,
            "cases_with_lesion": len(dices),
            "dice_pooled": 1.0 if total == 0 else 2.0 * self.overlap / total,
            "iou_pooled": 1.0 if union == 0 else self.overlap / union,
            "dice_mean_lesion_cases": float(np.mean(dices)) if dices else math.nan,
            "dice_median_lesion_cases": float(np.median(dices)) if dices else math.nan,
            "lesion_sensitivity": lesions.detected / lesions.true_lesions if lesions.true_lesions else math.nan,
            "true_lesions": lesions.true_lesions,
            "false_positives_per_case": lesions.false_positives / self.cases,
            "false_positive_lesions": lesions.false_positives,
        }
