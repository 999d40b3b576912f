"""The layering in CONVENTIONS.md, enforced by import-linter (pyproject.toml contracts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_training_sits_above_models_and_imaging_below() -> None:
    """The worker's models never reach into training code; the models may use imaging directly."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]

    def level(module: str) -> int:
        return next(i for i, layer in enumerate(layers) if module in [m.strip() for m in layer.split("|")])

    assert level("dicom_node.training") < level("dicom_node.models") < level("dicom_node.imaging")
    assert level("dicom_node.pipeline") == level("dicom_node.training")  # siblings: the worker never trains
