"""The configured model, built from ``[analysis]``: the one place that knows how its kinds combine.

The worker calls :func:`load_configured_model` once at start-up. Trained kinds import torch
there, never in the listener (which imports this module only to ask
:func:`missing_packages`). Every kind's findings are restricted to the intracranial space
(:class:`~dicom_node.models.gating.GatedModel`); a card's study decision comes after the
gate (:class:`~dicom_node.models.combine.DecidedModel`), as it was fitted. The device is
reported here, where it is chosen, so that the start-up line names it without looking
inside the running model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.config import AnalysisSettings
from dicom_node.errors import ConfigError
from dicom_node.models.combine import DecidedModel, Predictor

if TYPE_CHECKING:
    from dicom_node.models.gating import GateParameters

#: Where the threshold baseline runs: numpy, on the CPU.
CPU = "cpu"


@dataclass(frozen=True)
class LoadedModel:
    """The model the worker runs, and the device it chose (``cpu``, ``cuda``, ``cuda:1``)."""

    model: Predictor
    device: str


def missing_packages(analysis: AnalysisSettings) -> list[str]:
    """What the configured model needs that is not installed here (checked without importing it)."""
    if analysis.model != "threshold" and importlib.util.find_spec("torch") is None:
        return [
            f"[analysis] model = {analysis.model!r} needs PyTorch: pip install -e '.[inference]' "
            "(or set model = \"threshold\")"
        ]
    return []


def load_configured_model(analysis: AnalysisSettings) -> LoadedModel:
    """The model ``analysis`` names, gated, on its device; ConfigError when PyTorch is missing.

    ConfigError, not ImportError: the process exits with status 2, which systemd does not
    restart into the same error.
    """
    from dicom_node.models.gating import GatedModel  # scipy: only the worker needs it

    if analysis.model == "threshold":
        from dicom_node.models.threshold import ThresholdModel, ThresholdParameters

        baseline = ThresholdModel(ThresholdParameters(min_lesion_ml=analysis.min_lesion_ml))
        return LoadedModel(GatedModel(baseline, gate_parameters(analysis)), CPU)
    if problems := missing_packages(analysis):
        raise ConfigError(problems)
    directories = {"unet": analysis.unet_dir, "maskrcnn": analysis.maskrcnn_dir}
    if "+" not in analysis.model:
        return _runner(analysis, analysis.model, directories[analysis.model])
    from dicom_node.models.combine import CombinedModel

    segmenter = analysis.model.split("+")[1]
    classifier = _runner(analysis, "classifier", analysis.classifier_dir)
    segmenting = _runner(analysis, segmenter, directories[segmenter])
    combined = CombinedModel(classifier.model, segmenting.model, rule=analysis.combination)
    return LoadedModel(combined, classifier.device)


def gate_parameters(analysis: AnalysisSettings) -> GateParameters:
    """The gate as ``[analysis.gate]`` sets it."""
    from dicom_node.models.gating import GateParameters

    gate = analysis.gate
    return GateParameters(
        margin_mm=gate.margin_mm,
        min_inside_fraction=gate.min_inside_fraction,
        max_blood_hu=gate.max_blood_hu if gate.density_rule else None,
    )


def _runner(analysis: AnalysisSettings, kind: str, directory: Path | None) -> LoadedModel:
    """One trained kind, from its folder (or the shipped weights), bound to its device and gated."""
    from dicom_node.models.gating import GatedModel
    from dicom_node.models.registry import load_model, shipped_model_dir
    from dicom_node.models.runner import Runner

    loaded = load_model(directory or shipped_model_dir(kind), kind=kind)
    runner = Runner(
        loaded,
        device=None if analysis.device == "auto" else analysis.device,
        batch_size=analysis.batch_size,
    )
    # The runner never applies the card's decision; it comes here, after the gate: it was fitted on gated findings.
    decision = loaded.card.study_decision
    model: Predictor = GatedModel(runner, gate_parameters(analysis))
    if decision is not None:
        model = DecidedModel(model, decision)
    return LoadedModel(model, str(runner.device))
