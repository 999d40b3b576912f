"""The layering in CONVENTIONS.md, enforced by import-linter (pyproject.toml contracts)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _level(module: str) -> int:
    """The index of ``module``'s layer in the layers contract (0 is the top)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    return next(i for i, layer in enumerate(layers) if module in [m.strip() for m in layer.split("|")])


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_training_sits_above_models_and_imaging_below() -> None:
    """The worker's models never reach into training code; the models may use imaging directly."""
    assert _level("dicom_node.training") < _level("dicom_node.models") < _level("dicom_node.imaging")
    assert _level("dicom_node.pipeline") == _level("dicom_node.training")  # siblings: the worker never trains


def test_ticks_drive_the_worker_which_runs_the_pipeline() -> None:
    """scheduler.py split in two: the ticks above the worker, the worker above the one job."""
    assert _level("dicom_node.ticks") < _level("dicom_node.worker") < _level("dicom_node.pipeline")
    assert _level("dicom_node.pipeline") < _level("dicom_node.send")  # the outbox records what a job wrote
