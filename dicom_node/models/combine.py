"""Combine a study-level classifier with a segmenter into one result.

The classifier is trained for the study call; the segmenters are trained for
contours and volumes. Two rules are offered (:data:`RULES`):

* ``gate`` (proposed default): the classifier makes the study call and gives
  the probability; the segmenter's lesions are reported only in studies the
  classifier calls positive. This removes segmentation false positives from
  negative studies (the most visible error of a segmenter on normal scans),
  at the price that a bleed the classifier misses gets no contour either.
* ``either``: positive when the classifier is, or when the segmenter keeps a
  lesion; the probability is the classifier's, raised to the decision
  threshold when only the segmenter fires. More sensitive, less specific.

The result keeps the segmenter's label map and findings (so its kind is the
segmenter's), the classifier's slice probabilities (for key images), and a
name that says both models.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dicom_node.models.result import ModelKind, ModelResult, VolumeLike

RULES = ("gate", "either")


def combine(study: ModelResult, lesions: ModelResult, *, rule: str = "gate") -> ModelResult:
    """One result from a classifier's ``study`` result and a segmenter's ``lesions`` result."""
    if rule not in RULES:
        raise ValueError(f"unknown combination rule {rule!r}: use one of {RULES}")
    if study.model_kind != ModelKind.CLASSIFIER:
        raise ValueError("the study call must come from a classifier result")
    if lesions.model_kind not in (ModelKind.UNET, ModelKind.MASKRCNN, ModelKind.THRESHOLD):
        raise ValueError("lesions must come from a segmenting model (unet, maskrcnn or threshold)")
    if study.label_map.shape != lesions.label_map.shape:
        raise ValueError("both results must be on the same source grid")
    probability = study.study_probability
    if rule == "gate":
        keep = study.positive
    else:
        keep = True
        if lesions.findings and not study.positive:
            probability = study.decision_threshold
    return ModelResult(
        model_kind=lesions.model_kind,
        model_name=f"{study.model_name}+{lesions.model_name}",
        model_version=f"{study.model_version}+{lesions.model_version}",
        label_map=lesions.label_map if keep else np.zeros_like(lesions.label_map),
        findings=lesions.findings if keep else (),
        study_probability=probability,
        decision_threshold=study.decision_threshold,
        slice_probabilities=study.slice_probabilities,
        gate=lesions.gate,
    )


class CombinedModel:
    """A classifier and a segmenter run as one model for the pipeline (``predict(volume)``).

    Both runners see the same volume; ``rule`` is one of :data:`RULES`.
    """

    def __init__(self, classifier: Predictor, segmenter: Predictor, *, rule: str) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown combination rule {rule!r}: use one of {RULES}")
        self.classifier = classifier
        self.segmenter = segmenter
        self.rule = rule
        self.name = f"{classifier.name}+{segmenter.name}"
        self.version = f"{classifier.version}+{segmenter.version}"

    def predict(self, volume: VolumeLike) -> ModelResult:
        return combine(self.classifier.predict(volume), self.segmenter.predict(volume), rule=self.rule)


class Predictor(Protocol):
    """A named, versioned model that turns a volume into a :class:`ModelResult`."""

    name: str
    version: str

    def predict(self, volume: VolumeLike) -> ModelResult: ...
