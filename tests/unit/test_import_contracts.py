"""The layering in CONVENTIONS.md, enforced by import-linter (pyproject.toml contracts)."""

from __future__ import annotations

import ast
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


def test_the_node_composes_the_runtime_below_the_commands() -> None:
    """cli.py keeps the commands; the Node wires listener, worker and HTTP, which sit below it."""
    assert _level("dicom_node.cli") < _level("dicom_node.node") < _level("dicom_node.observability")
    assert _level("dicom_node.observability") < _level("dicom_node.admin")  # it serves the status page
    assert _level("dicom_node.node") < _level("dicom_node.supervisor") < _level("dicom_node.worker")
    # The listener, the worker and the outbox read the live settings: they sit below all three.
    assert _level("dicom_node.ingest") < _level("dicom_node.live_settings")
    assert _level("dicom_node.worker") < _level("dicom_node.live_settings")


def test_only_the_node_builds_the_runtime() -> None:
    """The wiring moved out of the commands: cli.py imports none of the parts the Node composes."""
    tree = ast.parse((REPO / "dicom_node" / "cli.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    wiring = {
        "dicom_node.ingest.scp", "dicom_node.ingest.catalog", "dicom_node.worker", "dicom_node.ticks",
        "dicom_node.observability", "dicom_node.metrics", "dicom_node.pipeline", "dicom_node.live_settings",
    }
    assert "dicom_node.node" in imported
    assert not imported & wiring, imported & wiring
