"""Combine a study-level classifier with a segmenter into one result.

The classifier is trained for the study call; the segmenters are trained for
contours and volumes. Three rules are offered (:data:`RULES`):

* ``gate``: the classifier makes the study call and gives the probability;
  the segmenter's lesions are reported only in studies the classifier calls
  positive. This removes segmentation false positives from negative studies,
  at the price that a bleed the classifier misses gets no contour either. Its
  call is the classifier's maximum over slices, which grows with the slice
  count: on the held-out whole stacks the Kaggle-only classifier reached its
  threshold on 14 % of the slices without clot (the whole-stack one, the
  default since, on 2.8 %), so one such slice calls a normal head.
* ``either``: positive when the classifier is, or when the segmenter keeps a
  lesion; the probability is the classifier's, raised to the decision
  threshold when only the segmenter fires. More sensitive, less specific.
* ``both`` (the default): positive only when the classifier calls the study
  positive *and* the segmenter keeps a lesion, each by its own decision
  threshold; the probability is the lower of the two (of the two mapped values
  when the thresholds differ, below). A study then never reads
  "positive, no lesion", and one slice's classifier maximum cannot call it on
  its own: the call needs a 3D finding, which thin slices of the same anatomy
  do not multiply as they multiply slices. When the two thresholds differ (a
  classifier's threshold is chosen on validation slices, a segmenter's is 0.5),
  each probability is first mapped so that its threshold falls on 0.5
  (:func:`aligned_probability`), and the lower of the two mapped values is
  compared with 0.5: the same call as both models' own thresholds.

The result keeps the segmenter's label map and findings (so its kind is the
segmenter's), the classifier's slice probabilities (for key images), and a
name that says both models.

A segmenter can also make the study call on its own from whole-study evidence
(:class:`StudyDecision`): each finding gets a probability from its volume and
its mean confidence (a logistic fitted on whole stacks by ``dicom-node
calibrate``); findings under the decision threshold are dropped and the study
probability is the highest left. The call looks at lesions, not slices: a
longer stack adds slices, each of which could raise a maximum over slices,
but a finding must be large and confident on its own to count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dicom_node.models.result import LesionFinding, ModelKind, ModelResult, VolumeLike, findings_from_labels

RULES = ("gate", "either", "both")


@dataclass(frozen=True)
class StudyDecision:
    """A finding's probability of being blood: ``sigmoid(b0 + b1 log(1 + mL) + b2 confidence)``.

    Fitted on whole stacks (``dicom-node calibrate``), where every finding that
    touches no true clot counts as a negative, wherever it lies.
    """

    intercept: float
    log_volume: float
    confidence: float
    threshold: float = 0.5
    fitted_on: str = ""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("a study decision threshold must be in (0, 1)")

    def probability(self, finding: LesionFinding) -> float:
        """The finding's probability of being blood."""
        z = (
            self.intercept
            + self.log_volume * math.log1p(finding.volume_ml)
            + self.confidence * (finding.confidence if finding.confidence is not None else 0.0)
        )
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": "finding logistic: log(1 + mL), mean confidence",
            "intercept": self.intercept,
            "log_volume": self.log_volume,
            "confidence": self.confidence,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyDecision:
        return cls(
            intercept=float(data["intercept"]),
            log_volume=float(data["log_volume"]),
            confidence=float(data["confidence"]),
            threshold=float(data.get("threshold", 0.5)),
            fitted_on=str(data.get("fitted_on", "")),
        )


def decide_study(result: ModelResult, decision: StudyDecision, volume: VolumeLike) -> ModelResult:
    """Keep the findings the decision accepts; the study probability is the highest of theirs.

    Findings are renumbered 1..n (largest first) on a label map holding only the
    kept ones, measured again on ``volume`` so numbers and map agree.
    """
    scores = {f.label: decision.probability(f) for f in result.findings}
    kept = [label for label, p in scores.items() if p >= decision.threshold]
    probability = max((scores[label] for label in kept), default=0.0)
    if len(kept) == len(result.findings):
        findings = result.findings
        label_map = result.label_map
    else:
        # Each kept lesion is one old component; its old label carries its confidence over.
        confidences = {f.label: f.confidence for f in result.findings if f.label in kept}
        known = all(c is not None for c in confidences.values())
        relabelled = findings_from_labels(
            np.where(np.isin(result.label_map, kept), result.label_map, 0),
            volume,
            confidences={k: float(c) for k, c in confidences.items() if c is not None} if known else None,
            min_volume_ml=0.0,
            fill_holes=False,
        )
        findings, label_map = relabelled.findings, relabelled.label_map
    return ModelResult(
        model_kind=result.model_kind,
        model_name=result.model_name,
        model_version=result.model_version,
        label_map=label_map,
        findings=findings,
        study_probability=probability,
        decision_threshold=decision.threshold,
        slice_probabilities=result.slice_probabilities,
        gate=result.gate,
    )


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
    threshold = combined_threshold(rule, study.decision_threshold, lesions.decision_threshold)
    if rule == "gate":
        keep = study.positive
    elif rule == "both":
        keep = study.positive and lesions.positive
        probability = _lower_probability(study, lesions)
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
        decision_threshold=threshold,
        slice_probabilities=study.slice_probabilities,
        gate=lesions.gate,
    )


def _lower_probability(study: ModelResult, lesions: ModelResult) -> float:
    """Rule ``both``'s probability: the lower of the two, mapped onto 0.5 when their thresholds differ
    (a :class:`ModelResult` refuses a probability outside [0, 1], NaN included)."""
    if study.decision_threshold == lesions.decision_threshold:
        return min(study.study_probability, lesions.study_probability)
    return min(aligned_probability(r.study_probability, r.decision_threshold) for r in (study, lesions))


def combined_threshold(rule: str, classifier_threshold: float, segmenter_threshold: float) -> float:
    """The decision threshold of a combined result: the classifier's, or 0.5 where rule
    ``both`` aligns two different thresholds (see :func:`aligned_probability`)."""
    if rule == "both" and classifier_threshold != segmenter_threshold:
        return 0.5
    return classifier_threshold


def aligned_probability(probability: float, threshold: float) -> float:
    """``probability`` mapped piecewise linearly so that ``threshold`` falls on 0.5 (0 and 1 stay).

    Monotone, so the call against 0.5 is the call against ``threshold``; used where two
    models with different thresholds must agree (rule ``both``).
    """
    if probability < threshold:
        return 0.5 * probability / threshold
    if threshold >= 1.0:
        return 1.0
    return 0.5 + 0.5 * (probability - threshold) / (1.0 - threshold)


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


class DecidedModel:
    """A segmenter (``predict(volume)``) followed by its study decision.

    The worker wraps the *gated* segmenter in it, so that the decision sees the
    findings as ``dicom-node calibrate --gate`` fitted it on: clipped to the
    intracranial space and measured again, those outside the skull gone.
    """

    def __init__(self, model: Predictor, decision: StudyDecision) -> None:
        self.model = model
        self.decision = decision
        self.name = model.name
        self.version = model.version

    def predict(self, volume: VolumeLike) -> ModelResult:
        return decide_study(self.model.predict(volume), self.decision, volume)


class Predictor(Protocol):
    """A named, versioned model that turns a volume into a :class:`ModelResult`."""

    name: str
    version: str

    def predict(self, volume: VolumeLike) -> ModelResult: ...
