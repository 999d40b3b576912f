"""Whole-study figures: what a model does on every slice of a head, not only near the bleed.

A model that is good on the slices through a clot can still call blood in the
pharynx, along the petrous bone or at the vertex. On whole stacks with voxel
truth this module counts, per split:

* **false-positive findings** per patient, and their volume in mL: reported
  findings (the model's own lesions after its post-processing) that touch no
  true clot voxel;
* **slice-level specificity** on the negative slices (no true clot) of each
  stack, by level: the lower, middle and upper third of the stack's slices
  (skull base, mid-brain, vertex, for a stack that covers the head);
* **lesion-level sensitivity**: true lesions (3D components) touched by a
  finding;
* **Dice** pooled over every voxel of the split, and the mean of per-slice Dice
  over the slices that hold true clot;
* the **worst false positives** (largest in mL) kept for a montage.

A classifier marks slices, not voxels: for it only the slice-level specificity
applies (a negative slice is clean when its probability stays under the
decision threshold), and one figure more, the stacks whose slices without clot
alone would be called positive by max pooling: what its study call makes of a
head without a bleed, which these stacks (every patient has one) cannot give
directly.

:func:`clot_free_cases` gives those heads without a bleed as studies of their
own: each long run of slices without clot, cut out of its stack, is a negative
case (``evaluate --clot-free``), so the whole default model, study call
included, can be measured on real anatomy from skull base to vertex with no
bleed in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from dicom_node.imaging.morphology import label_components
from dicom_node.models.result import ModelKind, ModelResult
from dicom_node.training.cases import Case, PseudoVolume
from dicom_node.training.plots import Example

LEVELS = ("lower", "middle", "upper")
#: Worst false positives kept for the montage.
WORST_KEPT = 8


@dataclass(frozen=True)
class FalsePositive:
    """One false-positive finding, for the montage."""

    volume_ml: float
    example: Example


@dataclass
class WholeStudyFigures:
    """Accumulates the whole-study figures over the cases of a split (``add`` each, then ``metrics``)."""

    patients: int = 0
    fp_findings: list[int] = field(default_factory=list)
    fp_ml: list[float] = field(default_factory=list)
    negative_slices: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    clean_negative_slices: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    true_lesions: int = 0
    detected_lesions: int = 0
    overlap: int = 0
    predicted_voxels: int = 0
    true_voxels: int = 0
    slice_dices: list[float] = field(default_factory=list)
    worst: list[FalsePositive] = field(default_factory=list)
    #: Classifier results only: stacks whose slices without clot alone reach the threshold.
    classified: bool = False
    clot_free_stacks_called: int = 0

    def add(self, key: str, result: ModelResult, truth: np.ndarray, brain: np.ndarray) -> None:
        """One patient's stack: ``truth`` bool (slices, rows, cols), ``brain`` its display [0, 1] slices."""
        self.patients += 1
        if result.model_kind is ModelKind.CLASSIFIER:
            self._count_classified_slices(result, truth)
            return
        predicted = result.label_map
        self._count_false_positives(key, result, truth, brain)
        self._count_slices(predicted != 0, truth)
        self._count_lesions(predicted != 0, truth)

    def _count_classified_slices(self, result: ModelResult, truth: np.ndarray) -> None:
        if result.slice_probabilities is None:
            raise ValueError("a classifier result without slice probabilities")
        fired = np.asarray(result.slice_probabilities) >= result.decision_threshold
        clot = _slices_with_clot(truth)
        self.classified = True
        self.clot_free_stacks_called += int(fired[~clot].any())
        for index in np.flatnonzero(~clot):
            level = _level(int(index), truth.shape[0])
            self.negative_slices[level] += 1
            self.clean_negative_slices[level] += int(not fired[index])

    def _count_false_positives(self, key: str, result: ModelResult, truth: np.ndarray, brain: np.ndarray) -> None:
        labels = result.label_map
        touched = set(np.unique(labels[truth]).tolist()) - {0}
        false = [f for f in result.findings if f.label not in touched]
        self.fp_findings.append(len(false))
        self.fp_ml.append(float(sum(f.volume_ml for f in false)))
        for finding in false:
            region = labels == finding.label
            index = int(np.argmax(region.reshape(region.shape[0], -1).sum(axis=1)))
            self.worst.append(
                FalsePositive(
                    finding.volume_ml,
                    Example(
                        title=f"{key} slice {index}/{labels.shape[0]}  {finding.volume_ml:.1f} mL",
                        image=brain[index],
                        truth=truth[index],
                        prediction=region[index],
                    ),
                )
            )
        self.worst = sorted(self.worst, key=lambda fp: -fp.volume_ml)[:WORST_KEPT]

    def _count_slices(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        count = truth.shape[0]
        for index in range(count):
            level = _level(index, count)
            if truth[index].any():
                t, p = truth[index], predicted[index]
                self.slice_dices.append(2.0 * float((t & p).sum()) / float(t.sum() + p.sum()))
                continue
            self.negative_slices[level] += 1
            self.clean_negative_slices[level] += int(not predicted[index].any())
        self.overlap += int((predicted & truth).sum())
        self.predicted_voxels += int(predicted.sum())
        self.true_voxels += int(truth.sum())

    def _count_lesions(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        lesions, n = label_components(truth)
        if n:
            hit = np.unique(lesions[predicted])
            self.true_lesions += n
            self.detected_lesions += int(np.count_nonzero(hit))

    def metrics(self) -> dict[str, Any]:
        """The split's whole-study figures (see the module docstring)."""
        total = self.predicted_voxels + self.true_voxels
        specificity = {
            level: (self.clean_negative_slices[level] / self.negative_slices[level] if self.negative_slices[level]
                    else None)
            for level in LEVELS
        }
        if self.classified:
            return {
                "patients": self.patients,
                "negative_slice_specificity": specificity,
                "negative_slices": dict(self.negative_slices),
                "clot_free_stacks_called": self.clot_free_stacks_called,
            }
        return {
            "patients": self.patients,
            "false_positive_findings_per_patient": float(np.mean(self.fp_findings)) if self.fp_findings else None,
            "false_positive_ml_per_patient": float(np.mean(self.fp_ml)) if self.fp_ml else None,
            "patients_with_a_false_positive": int(np.count_nonzero(self.fp_findings)),
            "negative_slice_specificity": specificity,
            "negative_slices": dict(self.negative_slices),
            "lesion_sensitivity": self.detected_lesions / self.true_lesions if self.true_lesions else None,
            "true_lesions": self.true_lesions,
            "dice_pooled": None if self.true_voxels == 0 else 2.0 * self.overlap / total,
            "dice_mean_positive_slices": float(np.mean(self.slice_dices)) if self.slice_dices else None,
            "positive_slices": len(self.slice_dices),
        }


def _slices_with_clot(truth: np.ndarray) -> np.ndarray:
    """Per slice of ``truth`` (slices, rows, cols): whether it holds any clot."""
    return truth.reshape(truth.shape[0], -1).any(axis=1)


def _level(index: int, count: int) -> str:
    """The third of a stack of ``count`` slices that slice ``index`` lies in."""
    return LEVELS[min(2, index * 3 // count)]


def clot_free_cases(cases: Iterable[Case], *, min_mm: float = 40.0, margin_slices: int = 1) -> Iterator[Case]:
    """Negative studies cut from stacks with clot: every run of slices without clot at least ``min_mm`` long.

    The ``margin_slices`` next to a slice with clot are left out too, since the derived
    clot masks can miss a faint edge or partial volume there. Each run keeps its slices'
    spacing and pixels; it is named ``<case> slices <first>-<last>``. Only volumes
    without DICOM provenance (PNG and NIfTI stacks) can be cut this way.
    """
    stacks = 0
    for case in cases:
        if case.truth is None or case.truth.shape[0] < 2:
            continue
        if not isinstance(case.volume, PseudoVolume):
            raise ValueError("clot-free runs are cut from PHE-SICH and NIfTI stacks, not from DICOM series")
        stacks += 1
        clot = _slices_with_clot(case.truth)
        for first, stop in _clot_free_runs(clot, margin_slices):
            if (stop - first) * case.volume.spacing_mm[0] >= min_mm:
                yield _cut(case, first, stop)
    if not stacks:
        raise ValueError("no whole stacks with voxel truth to cut bleed-free runs from (single slices, or labels only)")


def _clot_free_runs(clot: np.ndarray, margin: int) -> list[tuple[int, int]]:
    """``[first, stop)`` of each maximal run of slices at least ``margin`` slices away from clot."""
    # iterations=0 would mean "until nothing changes" to scipy: no margin is no dilation.
    near = ndimage.binary_dilation(clot, iterations=margin) if margin else clot
    runs, _ = ndimage.label(~near)
    return [(found.start, found.stop) for (found,) in ndimage.find_objects(runs)]


def _cut(case: Case, first: int, stop: int) -> Case:
    """Slices ``[first, stop)`` of ``case`` as a negative case of its own."""
    volume = case.volume
    affine = None
    if volume.affine is not None:  # the cut's slice 0 is the stack's slice ``first``
        affine = volume.affine.copy()
        affine[:3, 3] = volume.affine[:3, :3] @ np.array([first, 0.0, 0.0]) + volume.affine[:3, 3]
    return Case(
        key=f"{case.key} slices {first}-{stop - 1}",
        volume=replace(volume, hu=volume.hu[first:stop], affine=affine),
        label=0,
        truth=np.zeros_like(case.truth[first:stop]),
        windowed=None if case.windowed is None else case.windowed[first:stop],
    )
