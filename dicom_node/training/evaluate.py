"""Evaluate a model directory (or the HU threshold baseline) on a data folder.

Every prediction goes through the same road as in production: the runner
prepares each slice with the shared preprocessing, runs the network, maps the
output back to the source grid and post-processes it into a
:class:`~dicom_node.models.result.ModelResult`. Metrics are computed there, on
the source pixels the truth was drawn on, not at model size.

Per split, figures are:

* study level (one PNG = one study): accuracy, sensitivity, specificity at the
  threshold the model's results are called at (the card's, or its study
  decision's when it has one; every result must carry that same threshold) and
  ROC AUC, each with a bootstrap 95 % CI
  (:mod:`dicom_node.training.metrics`);
* segmentation (cases with pixel truth): pooled Dice and IoU (all voxels of all
  cases together, so false positives on negative cases count), mean Dice over
  the cases with a lesion, lesion sensitivity and false-positive lesions per
  case (any-overlap rule; :mod:`dicom_node.training.segmentation_figures`);
* whole stacks (cases of more than one slice with voxel truth): false-positive
  findings and mL per patient, specificity on negative slices by level, lesion
  sensitivity, pooled and per-slice Dice (:mod:`dicom_node.training.whole_study`);
  their largest false positives go to ``false_positives.png``;
* throughput: slices per second, preprocessing and post-processing included.

``evaluate`` writes the figures into the model card (``metrics.evaluation``)
and ``roc.png``, ``calibration.png`` and ``examples.png`` next to it, except for
a ``clot_free`` run (negative studies only: no figure a card should keep).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.models.card import ModelCard
from dicom_node.models.combine import StudyDecision, decide_study
from dicom_node.models.inputs import InputSpec
from dicom_node.models.result import ModelKind, ModelResult
from dicom_node.models.threshold import ThresholdModel
from dicom_node.training.cases import Case
from dicom_node.training.data import detect_layout, evaluation_cases
from dicom_node.training.metrics import study_metrics
from dicom_node.training.plots import Example, plot_calibration, plot_examples, plot_roc
from dicom_node.training.segmentation_figures import SegmentationFigures
from dicom_node.training.whole_study import WholeStudyFigures, clot_free_cases

logger = logging.getLogger(__name__)

Predict = Callable[[Case], ModelResult]
#: Examples shown in examples.png: this many positive and this many negative cases.
_EXAMPLES_PER_CLASS = 4


@dataclass
class SplitReport:
    """Figures of one split, plus what the plots need."""

    name: str
    metrics: dict[str, Any]
    truth: np.ndarray
    scores: np.ndarray
    examples: list[Example] = field(default_factory=list)
    false_positives: list[Example] = field(default_factory=list)


@dataclass
class EvaluationReport:
    """All splits of one evaluation, and where its files went."""

    model: str
    data: str
    splits: list[SplitReport]
    files: list[Path] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """Split name -> figures, as written into the card."""
        return {split.name: split.metrics for split in self.splits}


def _display_slice(case: Case, truth: np.ndarray | None, prediction: np.ndarray) -> int:
    """The slice to show: the largest true lesion, else the largest predicted one, else the middle."""
    for mask in (truth, prediction):
        if mask is not None and mask.any():
            return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    return case.volume.hu.shape[0] // 2


def _brain_view(case: Case, index: int) -> np.ndarray:
    if case.windowed is not None:
        return case.windowed[index]
    # Display only: the brain window (40/80) of the HU slice.
    return np.clip(case.volume.hu[index].astype(np.float32) / 80.0, 0.0, 1.0)


@dataclass
class _Examples:
    """The first cases of each class, as ``examples.png`` shows them."""

    by_label: dict[int, list[Example]] = field(default_factory=lambda: {0: [], 1: []})

    def offer(self, case: Case, result: ModelResult, predicted: np.ndarray, *, with_prediction: bool) -> None:
        """Keep ``case`` while its class has room; draw the prediction only for a model that makes masks."""
        shown = self.by_label[int(case.label)]
        if len(shown) >= _EXAMPLES_PER_CLASS:
            return
        index = _display_slice(case, case.truth, predicted)
        shown.append(
            Example(
                title=f"{case.key}  label {case.label}  p={result.study_probability:.2f}",
                image=_brain_view(case, index),
                truth=None if case.truth is None else case.truth[index],
                prediction=predicted[index] if with_prediction else None,
            )
        )

    def ordered(self) -> list[Example]:
        """Positives first, then negatives."""
        return self.by_label[1] + self.by_label[0]


def evaluate_cases(
    name: str,
    cases: Iterable[Case],
    predict: Predict,
    *,
    decision_threshold: float,
    resamples: int = 2000,
    seed: int = 0,
) -> SplitReport:
    """Run ``predict`` on every case and compute the split's figures (see the module docstring)."""
    truth_labels: list[int] = []
    scores: list[float] = []
    slices = 0
    seconds = 0.0
    # Whether the model draws masks: a classifier without findings has no segmentation figures.
    has_masks = False
    segmentation = SegmentationFigures()
    whole = WholeStudyFigures()
    examples = _Examples()
    for case in cases:
        started = time.perf_counter()
        result = predict(case)
        seconds += time.perf_counter() - started
        if not math.isclose(result.decision_threshold, decision_threshold):
            raise ValueError(
                f"case {case.key}: its result is called at {result.decision_threshold:g}, "
                f"the evaluation scores at {decision_threshold:g}"
            )
        slices += case.volume.hu.shape[0]
        truth_labels.append(case.label)
        scores.append(result.study_probability)
        predicted = result.label_map != 0
        has_masks = has_masks or bool(result.findings) or result.model_kind is not ModelKind.CLASSIFIER
        if case.truth is not None:
            segmentation.add(predicted, case.truth)
            if case.truth.shape[0] > 1:  # a stack: the whole-study figures apply
                brain = np.stack([_brain_view(case, k) for k in range(case.truth.shape[0])])
                whole.add(case.key, result, case.truth, brain)
        examples.offer(case, result, predicted, with_prediction=has_masks)
    if not truth_labels:
        raise ValueError(f"split {name!r} has no cases")
    truth = np.array(truth_labels)
    score_array = np.array(scores)
    metrics: dict[str, Any] = {
        "study": study_metrics(truth, score_array, decision_threshold, resamples=resamples, seed=seed),
        "slices_per_s": slices / seconds if seconds > 0 else math.inf,
        "slices": slices,
    }
    if segmentation.cases and has_masks:
        metrics["segmentation"] = segmentation.metrics()
    if whole.patients:
        metrics["whole_study"] = whole.metrics()
    logger.info("evaluated split %s: %d cases, %d slices", name, len(truth), slices, extra={"count": len(truth)})
    return SplitReport(
        name=name,
        metrics=metrics,
        truth=truth,
        scores=score_array,
        examples=examples.ordered(),
        false_positives=[fp.example for fp in whole.worst],
    )


def _default_splits(data: Path) -> list[str]:
    return ["val", "test"] if detect_layout(data) == "kaggle" else ["all"]


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    *,
    splits: Sequence[str] | None = None,
    device: str | None = "auto",
    batch_size: int = 16,
    write_card: bool = True,
    seed: int = 0,
    resamples: int = 2000,
    gate: bool = False,
    clot_free: bool = False,
) -> EvaluationReport:
    """Evaluate the model in ``model_dir`` on ``data``; write figures and plots into its directory.

    ``gate``: restrict the findings to the intracranial space first
    (:mod:`dicom_node.models.gating`). ``clot_free``: on the stacks' runs of slices
    without clot, as negative studies (:func:`~dicom_node.training.whole_study.clot_free_cases`).
    """
    from dicom_node.models.registry import load_model
    from dicom_node.models.runner import Runner

    model_dir, data = Path(model_dir), Path(data)
    loaded = load_model(model_dir)
    runner = Runner(loaded, device=device, batch_size=batch_size)

    def predict(case: Case) -> ModelResult:
        if case.windowed is not None:
            return runner.predict_windowed(case.windowed, case.volume)
        return runner.predict(case.volume)

    predict = _decided(_gated(predict) if gate else predict, loaded.card.study_decision)
    reports = _evaluate_splits(
        data, loaded.card.input, splits, predict, decision_threshold=_called_at(loaded.card),
        seed=seed, resamples=resamples, clot_free=clot_free,
    )
    report = EvaluationReport(model=str(model_dir) + _variant(gate, clot_free), data=str(data), splits=reports)
    if write_card and not clot_free:
        report.files = write_figures(report, model_dir, loaded.card.name)
        # "evaluation" is the latest run; "evaluations" keeps one entry per data folder (and gate),
        # so a card can carry its Kaggle figures and its whole-stack figures side by side.
        earlier = dict(loaded.card.metrics.get("evaluations", {}))
        card = loaded.card.with_metrics(
            {
                "evaluation": report.metrics(),
                "evaluations": {**earlier, report.model.replace(str(model_dir), str(data)): report.metrics()},
                "evaluation_data": str(data),
                "evaluation_device": str(runner.device),
                "evaluation_figures": [p.name for p in report.files],
            }
        )
        card.save(model_dir)
    return report


def evaluate_threshold(
    data: str | Path,
    *,
    splits: Sequence[str] | None = None,
    seed: int = 0,
    resamples: int = 2000,
    model: ThresholdModel | None = None,
    gate: bool = False,
    clot_free: bool = False,
) -> EvaluationReport:
    """Evaluate the HU threshold baseline the same way (PNG data get pseudo-HU, see data.pseudo_hu)."""
    data = Path(data)
    baseline = model or ThresholdModel()
    spec = InputSpec()
    predict: Predict = lambda case: baseline.predict(case.volume)  # noqa: E731
    if gate:
        predict = _gated(predict)
    reports = _evaluate_splits(
        data, spec, splits, predict, decision_threshold=baseline.parameters.decision_threshold,
        seed=seed, resamples=resamples, clot_free=clot_free,
    )
    return EvaluationReport(model="threshold" + _variant(gate, clot_free), data=str(data), splits=reports)


def _called_at(card: ModelCard) -> float:
    """The threshold a card's study calls are made against: its study decision's when it has one
    (:func:`_decided` applies it, and :func:`decide_study` sets it on the result), else its own."""
    return card.study_decision.threshold if card.study_decision is not None else card.thresholds.decision


def _evaluate_splits(
    data: Path,
    spec: InputSpec,
    splits: Sequence[str] | None,
    predict: Predict,
    *,
    decision_threshold: float,
    seed: int,
    resamples: int,
    clot_free: bool,
) -> list[SplitReport]:
    """:func:`evaluate_cases` on each split of ``data`` (its default splits when none are given);
    ``clot_free``: on the runs of their slices without clot, as negative cases."""
    reports = []
    for split in splits or _default_splits(data):
        cases: Iterable[Case] = evaluation_cases(data, spec, split=split, seed=seed)
        if clot_free:
            cases = clot_free_cases(cases)
        reports.append(
            evaluate_cases(split, cases, predict, decision_threshold=decision_threshold, resamples=resamples, seed=seed)
        )
    return reports


def _variant(gate: bool, clot_free: bool) -> str:
    """What a report's name adds for the options it was made with (also the card's key)."""
    return (" (gated)" if gate else "") + (" (clot-free)" if clot_free else "")


def _gated(predict: Predict) -> Predict:
    """``predict`` followed by the intracranial gate, with the space found on the case's own volume."""
    from dicom_node.imaging.anatomy import intracranial_space
    from dicom_node.models.gating import gate_result

    def gated(case: Case) -> ModelResult:
        return gate_result(predict(case), case.volume, intracranial_space(case.volume))

    return gated


def _decided(predict: Predict, decision: StudyDecision | None) -> Predict:
    """``predict`` followed by the card's study decision, if it has one; else ``predict`` itself.

    The runner never applies the decision, so this is where evaluation does, last
    (after the gate when there is one), as the worker's
    :class:`~dicom_node.models.combine.DecidedModel` does (models/loading.py).
    """
    if decision is None:
        return predict

    def decided(case: Case) -> ModelResult:
        return decide_study(predict(case), decision, case.volume)

    return decided


def evaluate_combination(
    classifier_dir: str | Path,
    segmenter_dir: str | Path,
    data: str | Path,
    *,
    rule: str = "gate",
    splits: Sequence[str] | None = None,
    device: str | None = "auto",
    batch_size: int = 16,
    seed: int = 0,
    resamples: int = 2000,
    gate: bool = False,
    clot_free: bool = False,
) -> EvaluationReport:
    """Evaluate a classifier and a segmenter combined by ``rule`` (see :mod:`dicom_node.models.combine`).

    ``gate``: the segmenter's findings are restricted to the intracranial space
    before combining, as the worker's default model does. ``clot_free``: as in :func:`evaluate`.
    """
    from dicom_node.models.combine import combine, combined_threshold
    from dicom_node.models.registry import load_model
    from dicom_node.models.runner import Runner

    data = Path(data)
    study_runner = Runner(load_model(classifier_dir), device=device, batch_size=batch_size)
    lesion_runner = Runner(load_model(segmenter_dir), device=device, batch_size=batch_size)

    def run(runner: Runner, case: Case) -> ModelResult:
        if case.windowed is not None:
            return runner.predict_windowed(case.windowed, case.volume)
        return runner.predict(case.volume)

    def lesions(case: Case) -> ModelResult:
        return run(lesion_runner, case)

    def studies(case: Case) -> ModelResult:
        return run(study_runner, case)

    # Each model's own decision comes last, after the gate, as in the worker (models/loading.py).
    segment = _decided(_gated(lesions) if gate else lesions, lesion_runner.model.card.study_decision)
    classify = _decided(studies, study_runner.model.card.study_decision)

    def predict(case: Case) -> ModelResult:
        return combine(classify(case), segment(case), rule=rule)

    threshold = combined_threshold(rule, _called_at(study_runner.model.card), _called_at(lesion_runner.model.card))
    reports = _evaluate_splits(
        data, study_runner.model.card.input, splits, predict, decision_threshold=threshold,
        seed=seed, resamples=resamples, clot_free=clot_free,
    )
    name = f"{Path(classifier_dir).name}+{Path(segmenter_dir).name} ({rule}{', gated' if gate else ''})"
    name += " (clot-free)" if clot_free else ""
    return EvaluationReport(model=name, data=str(data), splits=reports)


def write_figures(report: EvaluationReport, directory: Path, title: str) -> list[Path]:
    """roc.png, calibration.png, examples.png and (whole stacks) false_positives.png in ``directory``."""
    curves = {s.name: (s.truth, s.scores) for s in report.splits if len(set(s.truth.tolist())) == 2}
    files = []
    if curves:
        files.append(plot_roc(curves, directory / "roc.png", f"{title}: study-level ROC"))
        files.append(plot_calibration(curves, directory / "calibration.png", f"{title}: calibration"))
    with_masks = [s for s in report.splits if "segmentation" in s.metrics] or report.splits
    files.append(plot_examples(with_masks[0].examples, directory / "examples.png", f"{title} on {with_masks[0].name}"))
    stacks = [s for s in report.splits if s.false_positives]
    if stacks:
        files.append(
            plot_examples(
                stacks[0].false_positives,
                directory / "false_positives.png",
                f"{title}: largest false positives on {stacks[0].name}",
            )
        )
    return files


def _fmt(value: Any, ci: Sequence[float] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.3f}"
    if ci is not None and not any(math.isnan(c) for c in ci):
        text += f" [{ci[0]:.2f}-{ci[1]:.2f}]"
    return text


def format_table(*reports: EvaluationReport) -> str:
    """A plain-text table of the figures, one row per model and split."""
    header = (
        f"{'model':<28} {'split':<5} {'n':>3} {'accuracy [95% CI]':<20} {'sensitivity':<20} {'specificity':<20} "
        f"{'ROC AUC':<20} {'Dice pool':>9} {'Dice mean+':>10} {'lesion sens':>11} {'FP/case':>7} {'slices/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for report in reports:
        name = report.model if report.model == "threshold" or "+" in report.model else Path(report.model).name
        for split in report.splits:
            s = split.metrics["study"]
            seg = split.metrics.get("segmentation", {})
            lines.append(
                f"{name:<28} {split.name:<5} {s['n']:>3} "
                f"{_fmt(s['accuracy'], s['accuracy_ci95']):<20} {_fmt(s['sensitivity'], s['sensitivity_ci95']):<20} "
                f"{_fmt(s['specificity'], s['specificity_ci95']):<20} {_fmt(s['roc_auc'], s['roc_auc_ci95']):<20} "
                f"{_fmt(seg.get('dice_pooled')):>9} {_fmt(seg.get('dice_mean_lesion_cases')):>10} "
                f"{_fmt(seg.get('lesion_sensitivity')):>11} {_fmt(seg.get('false_positives_per_case')):>7} "
                f"{split.metrics['slices_per_s']:>8.1f}"
            )
    lines += _whole_study_lines(reports)
    return "\n".join(lines)


def _whole_study_lines(reports: Sequence[EvaluationReport]) -> list[str]:
    """A second table for splits of whole stacks (see :mod:`dicom_node.training.whole_study`)."""
    rows = [(r, s) for r in reports for s in r.splits if "whole_study" in s.metrics]
    if not rows:
        return []
    header = (
        f"{'model':<28} {'split':<5} {'patients':>8} {'FP/patient':>10} {'pts w/ FP':>9} {'FP mL/pt':>8} "
        f"{'spec lower':>10} {'spec mid':>8} {'spec upper':>10} {'lesion sens':>11} {'Dice pool':>9} {'Dice/slice+':>11}"
        f" {'clot-free called':>16}"
    )
    lines = ["", "whole stacks", header, "-" * len(header)]
    for report, split in rows:
        w = split.metrics["whole_study"]
        spec = w["negative_slice_specificity"]
        name = report.model if report.model == "threshold" or "+" in report.model else Path(report.model).name
        # A classifier's figures are slice specificity and the stacks called on clot-free slices only.
        called = w.get("clot_free_stacks_called")
        called_text = "-" if called is None else f"{called}/{w['patients']}"
        lines.append(
            f"{name:<28} {split.name:<5} {w['patients']:>8} {_fmt(w.get('false_positive_findings_per_patient')):>10} "
            f"{w.get('patients_with_a_false_positive', '-'):>9} "
            f"{_fmt(w.get('false_positive_ml_per_patient')):>8} {_fmt(spec['lower']):>10} {_fmt(spec['middle']):>8} "
            f"{_fmt(spec['upper']):>10} {_fmt(w.get('lesion_sensitivity')):>11} {_fmt(w.get('dice_pooled')):>9} "
            f"{_fmt(w.get('dice_mean_positive_slices')):>11} {called_text:>16}"
        )
    return lines
