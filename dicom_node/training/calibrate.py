"""Fit a segmenter's study decision on whole stacks (``dicom-node calibrate``).

The model runs on every stack of the calibration split with no decision of its
own; every finding it reports becomes one example: ``log(1 + mL)`` and its mean
confidence as features, 1 if it touches true clot, else 0 (wherever it lies:
skull base, vertex, venous sinus). A two-feature logistic regression (IRLS with
a small ridge, numpy only) gives :class:`~dicom_node.models.combine.StudyDecision`.
Its threshold is the lowest of 0.05, 0.10, ... 0.95 that keeps false-positive
findings at or below a target per patient (:data:`TARGET_FP_PER_PATIENT` by
default) on these stacks (0.95 when none does): a higher target keeps more
small findings, true and false. The decision is written into the model card, with the
whole-study figures of these stacks before and after it (in-sample) and a
two-fold cross-fit by patient (fit on one half, count on the other), the
honest estimate of what the decision does on stacks it was not fitted on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.imaging.anatomy import intracranial_space
from dicom_node.models.combine import StudyDecision, decide_study
from dicom_node.models.gating import gate_result
from dicom_node.training.cases import Case
from dicom_node.training.data import evaluation_cases
from dicom_node.training.whole_study import WholeStudyFigures

logger = logging.getLogger(__name__)

TARGET_FP_PER_PATIENT = 0.5
_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True)
class FindingExamples:
    """Per-finding features ``(n, 2)``, labels ``(n,)`` and the patient index of each."""

    features: np.ndarray
    labels: np.ndarray
    patient: np.ndarray
    patients: int


def finding_examples(results: list[tuple[Any, np.ndarray]]) -> FindingExamples:
    """Examples from ``(ModelResult, truth mask)`` pairs, one pair per stack."""
    features, labels, patient = [], [], []
    for index, (result, truth) in enumerate(results):
        touched = set(np.unique(result.label_map[truth]).tolist()) - {0}
        for finding in result.findings:
            confidence = finding.confidence if finding.confidence is not None else 0.0
            features.append((math.log1p(finding.volume_ml), confidence))
            labels.append(1 if finding.label in touched else 0)
            patient.append(index)
    return FindingExamples(
        features=np.array(features, dtype=np.float64).reshape(-1, 2),
        labels=np.array(labels, dtype=np.float64),
        patient=np.array(patient, dtype=np.int64),
        patients=len(results),
    )


def fit_logistic(features: np.ndarray, labels: np.ndarray, *, ridge: float = 1e-2, steps: int = 50) -> np.ndarray:
    """(intercept, weights...) of a logistic regression by IRLS; the ridge keeps separable data finite."""
    if len(labels) < 4 or labels.min() == labels.max():
        raise ValueError("calibration needs findings of both kinds (true and false) on the stacks")
    x = np.hstack([np.ones((len(features), 1)), features])
    beta = np.zeros(x.shape[1])
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -60, 60)))
        gradient = x.T @ (p - labels) + penalty @ beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def choose_threshold(
    examples: FindingExamples, beta: np.ndarray, target: float = TARGET_FP_PER_PATIENT
) -> float:
    """The lowest threshold in 0.05..0.95 keeping false positives per patient at or under ``target``."""
    x = np.hstack([np.ones((len(examples.features), 1)), examples.features])
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -60, 60)))
    for threshold in _THRESHOLDS:
        false = int(((p >= threshold) & (examples.labels == 0)).sum())
        if false / max(examples.patients, 1) <= target:
            return threshold
    return _THRESHOLDS[-1]


def cross_fit(examples: FindingExamples, target: float = TARGET_FP_PER_PATIENT) -> dict[str, float]:
    """Two folds by patient (even/odd): per fold, fit on the other; pooled counts of the held-out findings."""
    false = kept = true = 0
    for fold in (0, 1):
        held = examples.patient % 2 == fold
        beta = fit_logistic(examples.features[~held], examples.labels[~held])
        fitted = FindingExamples(
            examples.features[~held], examples.labels[~held], examples.patient[~held], (examples.patients + fold) // 2
        )
        threshold = choose_threshold(fitted, beta, target)
        x = np.hstack([np.ones((int(held.sum()), 1)), examples.features[held]])
        accepted = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -60, 60))) >= threshold
        false += int((accepted & (examples.labels[held] == 0)).sum())
        kept += int((accepted & (examples.labels[held] == 1)).sum())
        true += int((examples.labels[held] == 1).sum())
    return {
        "false_positive_findings_per_patient": false / max(examples.patients, 1),
        "true_findings_kept": kept / true if true else float("nan"),
    }


def calibrate(
    model_dir: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    seed: int = 0,
    device: str | None = "auto",
    batch_size: int = 16,
    gate: bool = False,
    target_fp_per_patient: float = TARGET_FP_PER_PATIENT,
) -> tuple[StudyDecision, dict[str, Any]]:
    """Fit the study decision of the segmenter in ``model_dir`` on ``data``'s stacks and save it in the card.

    ``gate``: fit on findings restricted to the intracranial space, as the node
    reports them when it gates. Returns the decision and the figures written
    with it (see the module docstring).
    """
    from dicom_node.models.registry import load_model
    from dicom_node.models.runner import Runner

    model_dir = Path(model_dir)
    loaded = load_model(model_dir)
    runner = Runner(loaded, device=device, batch_size=batch_size)  # never applies the card's decision: we refit it
    results, cases = [], []
    for case in evaluation_cases(data, loaded.card.input, split=split, seed=seed):
        if case.truth is None or case.truth.shape[0] < 2:
            continue
        result = _predict(runner, case)
        if gate:
            result = gate_result(result, case.volume, intracranial_space(case.volume))
        results.append((result, case.truth))
        cases.append(case)
    if not results:
        raise ValueError(f"{data} split {split!r} has no whole stacks with voxel truth to calibrate on")
    examples = finding_examples(results)
    beta = fit_logistic(examples.features, examples.labels)
    decision = StudyDecision(
        intercept=float(beta[0]),
        log_volume=float(beta[1]),
        confidence=float(beta[2]),
        threshold=choose_threshold(examples, beta, target_fp_per_patient),
        fitted_on=f"{data} split {split} (seed {seed}): {examples.patients} stacks, {len(examples.labels)} findings, "
        f"{int(examples.labels.sum())} touching clot",
    )
    before, after = WholeStudyFigures(), WholeStudyFigures()
    for case, (result, truth) in zip(cases, results, strict=True):
        brain = np.clip(case.volume.hu.astype(np.float32) / 80.0, 0.0, 1.0)
        before.add(case.key, result, truth, brain)
        after.add(case.key, decide_study(result, decision, case.volume), truth, brain)
    figures = {
        "data": f"{data} split {split} (seed {seed})" + (", findings gated to the intracranial space" if gate else ""),
        "before": before.metrics(),
        "after_in_sample": after.metrics(),
        "target_fp_per_patient": target_fp_per_patient,
        "cross_fit_two_folds": cross_fit(examples, target_fp_per_patient),
    }
    card = replace(loaded.card, study_decision=decision).with_metrics({"study_decision_calibration": figures})
    card.save(model_dir)
    logger.info("study decision fitted: %s", decision.fitted_on, extra={"path": str(model_dir)})
    return decision, figures


def _predict(runner: Any, case: Case) -> Any:
    if case.windowed is not None:
        return runner.predict_windowed(case.windowed, case.volume)
    return runner.predict(case.volume)
