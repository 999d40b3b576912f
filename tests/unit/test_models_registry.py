"""Model cards and model directories: written, read back, and refused when inconsistent."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dicom_node.models.card import CARD_FILE, ICH_LABEL, ModelCard, sha256_of
from dicom_node.models.registry import build_network, load_model
from tests.support.models import tiny_card


def write_model(directory, kind: str = "unet") -> ModelCard:
    draft = tiny_card(kind)
    torch.manual_seed(0)
    directory.mkdir(exist_ok=True)
    torch.save(build_network(draft).state_dict(), directory / "weights.pt")
    card = replace(draft, weights_sha256=sha256_of(directory / "weights.pt"))
    card.save(directory)
    return card


@pytest.mark.parametrize("kind", ["classifier", "unet", "maskrcnn"])
def test_a_written_model_loads_back(tmp_path, kind):
    card = write_model(tmp_path / kind, kind)
    loaded = load_model(tmp_path / kind, kind=kind)
    assert loaded.card == card
    assert not loaded.network.training


def test_the_card_carries_the_snomed_code_of_ich(tmp_path):
    write_model(tmp_path / "m")
    data = json.loads((tmp_path / "m" / CARD_FILE).read_text())
    assert data["labels"] == [
        {"value": 1, "name": "hemorrhage", "scheme": "SCT", "code": "1386000", "meaning": "Intracranial hemorrhage"}
    ]
    assert ModelCard.from_json(data).labels == (ICH_LABEL,)


def test_weights_that_are_not_the_cards_are_refused(tmp_path):
    write_model(tmp_path / "m")
    with open(tmp_path / "m" / "weights.pt", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ValueError, match="not the ones this card describes"):
        load_model(tmp_path / "m")


def test_the_wrong_kind_is_refused(tmp_path):
    write_model(tmp_path / "m", "unet")
    with pytest.raises(ValueError, match="holds a unet model, not a maskrcnn"):
        load_model(tmp_path / "m", kind="maskrcnn")


def test_weights_of_another_architecture_are_refused(tmp_path):
    card = write_model(tmp_path / "m", "unet")
    replace(card, architecture={"base_channels": 4, "depth": 3}).save(tmp_path / "m")
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_model(tmp_path / "m")


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(ValueError, match="no model_card.json"):
        load_model(tmp_path)
    write_model(tmp_path / "m")
    (tmp_path / "m" / "weights.pt").unlink()
    with pytest.raises(ValueError, match="which are not in"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("kind"), "needs 'kind'"),
        (lambda d: d.update(kind="threshold"), "network kind"),
        (lambda d: d.update(kind="svm"), "unknown model kind"),
        (lambda d: d.update(schema="other"), "schema"),
        (lambda d: d["weights"].update(file="../w.pt"), "not a path"),
        (lambda d: d["labels"][0].update(value=2), "numbered 1..n"),
        (lambda d: d["labels"][0].update(code=""), "code value"),
        (lambda d: d.update(study_pooling="mean"), "study_pooling"),
        (lambda d: d.update(thresholds={"decision": 0.0}), "in \\(0, 1\\]"),
        (lambda d: d["input"].update(windows=["lung"]), "unknown window"),
    ],
)
def test_card_rules_are_stated(tmp_path, change, message):
    write_model(tmp_path / "m")
    data = json.loads((tmp_path / "m" / CARD_FILE).read_text())
    change(data)
    with pytest.raises(ValueError, match=message):
        ModelCard.from_json(data)
