"""train() and evaluate() end to end on a tiny synthetic Kaggle-layout folder, and the commands."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from dicom_node.models.card import ModelCard
from dicom_node.models.inputs import InputSpec
from dicom_node.models.registry import load_model
from dicom_node.models.result import ModelKind
from dicom_node.training import commands
from dicom_node.training.data import load_training_data
from dicom_node.training.evaluate import evaluate, evaluate_threshold, format_table
from dicom_node.training.train import CHECKPOINT_FILE, train
from tests.support.models import TINY_ARCHITECTURES, one_torch_thread, write_tiny_kaggle  # noqa: F401

SIZE = 64


@pytest.fixture(scope="module")
def tiny_kaggle(tmp_path_factory):
    return write_tiny_kaggle(tmp_path_factory.mktemp("kaggle") / "headct")


@pytest.fixture(scope="module")
def training_data(tiny_kaggle):
    return load_training_data(tiny_kaggle, InputSpec(size=(SIZE, SIZE)), seed=0)


def tiny_train(kind, data_dir, out, training_data, **overrides):
    options = dict(
        epochs=2,
        seed=0,
        batch_size=4,
        size=SIZE,
        architecture=TINY_ARCHITECTURES[kind],
        steps_per_epoch=2,
        threads=1,
        command="test",
        training_data=training_data,
    )
    options.update(overrides)
    return train(kind, data_dir, out, **options)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_kaggle, training_data):
    """One tiny model directory per kind."""
    root = tmp_path_factory.mktemp("models")
    kinds = ("classifier", "unet", "maskrcnn")
    return {kind: tiny_train(kind, tiny_kaggle, root / kind, training_data).out for kind in kinds}


@pytest.mark.parametrize("kind", ["classifier", "unet", "maskrcnn"])
def test_training_writes_a_loadable_model_with_its_card(trained, kind):
    loaded = load_model(trained[kind], kind=kind)
    card = loaded.card
    assert card.kind == ModelKind(kind)
    assert card.training["command"] == "test"
    assert len(card.training["history"]) == 2
    assert card.training["data"]["split"].startswith("fixed")
    assert card.input.size == (SIZE, SIZE)
    assert card.labels[0].code == "1386000"


def test_resume_repeats_what_an_uninterrupted_run_does(tmp_path, tiny_kaggle, training_data):
    straight = tiny_train("classifier", tiny_kaggle, tmp_path / "straight", training_data, epochs=3)
    tiny_train("classifier", tiny_kaggle, tmp_path / "resumed", training_data, epochs=1)
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file()
    resumed = tiny_train("classifier", tiny_kaggle, tmp_path / "resumed", training_data, epochs=3, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, tiny_kaggle, training_data):
    tiny_train("classifier", tiny_kaggle, tmp_path / "m", training_data, epochs=1)
    with pytest.raises(ValueError, match="different run"):
        tiny_train("classifier", tiny_kaggle, tmp_path / "m", training_data, epochs=2, resume=True, seed=1)


def test_threshold_is_not_trainable(tmp_path, tiny_kaggle):
    with pytest.raises(ValueError, match="no trainable network"):
        train("threshold", tiny_kaggle, tmp_path, epochs=1)


def test_evaluate_writes_figures_into_the_card_and_plots_next_to_it(trained, tiny_kaggle):
    report = evaluate(trained["unet"], tiny_kaggle, device="cpu", resamples=50)
    card = ModelCard.load(trained["unet"])
    figures = card.metrics["evaluation"]
    assert set(figures) == {"val", "test"}
    assert figures["val"]["study"]["n"] == 4 and figures["test"]["study"]["n"] == 4
    assert "segmentation" in figures["val"] and "segmentation" not in figures["test"]
    assert 0.0 <= figures["val"]["segmentation"]["dice_pooled"] <= 1.0
    for name in ("roc.png", "calibration.png", "examples.png"):
        assert (trained["unet"] / name).stat().st_size > 1000
    table = format_table(report)
    assert "val" in table and "test" in table


def test_the_card_keeps_one_evaluation_per_data_folder_and_gate(trained, tiny_kaggle):
    evaluate(trained["unet"], tiny_kaggle, splits=["val"], device="cpu", resamples=20)
    evaluate(trained["unet"], tiny_kaggle, splits=["test"], device="cpu", resamples=20, gate=True)
    kept = ModelCard.load(trained["unet"]).metrics["evaluations"]
    assert set(kept[str(tiny_kaggle)]) == {"val"}
    assert set(kept[f"{tiny_kaggle} (gated)"]) == {"test"}
    assert ModelCard.load(trained["unet"]).metrics["evaluation"] == kept[f"{tiny_kaggle} (gated)"]


def test_evaluate_a_classifier_has_no_segmentation_figures(trained, tiny_kaggle):
    report = evaluate(trained["classifier"], tiny_kaggle, splits=["val"],
                      device="cpu", write_card=False, resamples=50)
    assert "segmentation" not in report.splits[0].metrics
    assert report.splits[0].metrics["study"]["n"] == 4


def test_the_threshold_baseline_is_evaluated_the_same_way(tiny_kaggle):
    report = evaluate_threshold(tiny_kaggle, splits=["val"], resamples=50)
    metrics = report.splits[0].metrics
    assert metrics["study"]["n"] == 4 and "segmentation" in metrics


def test_the_commands_train_and_evaluate(tmp_path, tiny_kaggle):
    app = typer.Typer()
    commands.register(app)
    runner = CliRunner()
    out = tmp_path / "cls"
    result = runner.invoke(
        app,
        ["train", "--kind", "classifier", "--data", str(tiny_kaggle), "--out", str(out), "--epochs", "1",
         "--size", "64", "--threads", "1", "--batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model_card.json").read_text())["training"]["command"].startswith("dicom-node")
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(tiny_kaggle), "--splits", "test"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    result = runner.invoke(app, ["train", "--kind", "svm", "--data", str(tiny_kaggle), "--out", str(out)])
    assert result.exit_code != 0


def test_evaluate_measures_a_classifier_and_a_segmenter_combined_and_gated(trained, tiny_kaggle):
    app = typer.Typer()
    commands.register(app)
    args = ["evaluate", "--classifier", str(trained["classifier"]), "--model", str(trained["unet"]),
            "--data", str(tiny_kaggle), "--splits", "val", "--gate"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "classifier+unet (gate, gated)" in result.output and "val" in result.output
    alone = CliRunner().invoke(app, ["evaluate", "--classifier", str(trained["classifier"]), "--data", str(tiny_kaggle)])
    assert alone.exit_code != 0


def test_an_epoch_takes_every_positive_and_fresh_negatives(training_data):
    import torch

    from dicom_node.training.train import epoch_sample

    slices = training_data.train
    positives = set(map(int, (slices.labels > 0).nonzero()[0]))
    first = epoch_sample(slices, torch.Generator().manual_seed(1), 0.5)
    second = epoch_sample(slices, torch.Generator().manual_seed(2), 0.5)
    assert positives <= set(first.tolist()) and positives <= set(second.tolist())
    assert len(first) - len(positives) == round(0.5 * len(positives))
    assert len(epoch_sample(slices, torch.Generator().manual_seed(1), None)) == len(slices)


def test_training_can_start_from_given_weights_and_says_so(tmp_path, tiny_kaggle, training_data, trained):
    from dicom_node.models.card import sha256_of

    start = trained["unet"] / "weights.pt"
    summary = tiny_train(
        "unet", tiny_kaggle, tmp_path / "tuned", training_data, init=start, epochs=1, negatives_per_positive=1.0
    )
    card = ModelCard.load(summary.out)
    assert card.training["init"] == {"path": str(start), "sha256": sha256_of(start)}
    assert card.training["options"]["negatives_per_positive"] == 1.0
