"""The ``train`` and ``evaluate`` commands, for the CLI to register (``register(app)``).

torch is imported when a command runs, not when the CLI starts.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from dicom_node.logs import configure_logging

KINDS = ("classifier", "unet", "maskrcnn")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``calibrate`` and ``evaluate`` to ``app``."""
    app.command("train")(train_command)
    app.command("calibrate")(calibrate_command)
    app.command("evaluate")(evaluate_command)


def train_command(
    kind: Annotated[str, typer.Option("--kind", help=f"Model kind: {', '.join(KINDS)}.")],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="Data folder: Kaggle, PHE-SICH, NIfTI or DICOM + SEG (repeat to join several)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (weights, card, checkpoint).")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, shuffling, augmentation and splits.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    batch_size: Annotated[int, typer.Option(help="Slices per step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).")] = 2e-3,
    size: Annotated[int, typer.Option(help="Model input size in pixels (square, multiple of 32).")] = 256,
    windows: Annotated[str, typer.Option(help="Windows as channels, e.g. brain,subdural,bone.")] = "brain",
    context_slices: Annotated[
        int, typer.Option(help="2.5D: neighbouring slices on each side given as extra channels (0 = 2D).")
    ] = 0,
    context_spacing_mm: Annotated[
        float, typer.Option(help="2.5D: distance between the slices the network sees, in mm.")
    ] = 5.0,
    slab_mm: Annotated[
        float, typer.Option(help="HU slices thinner than this are averaged to it (mm; 0 = as they are).")
    ] = 5.0,
    oversample: Annotated[
        list[str] | None,
        typer.Option(help="NAME=N: repeat the training slices of the data folder named NAME N times per epoch."),
    ] = None,
    loss: Annotated[str, typer.Option(help="U-Net loss: dice_bce, dice_focal, bce, focal.")] = "dice_bce",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    negatives_per_positive: Annotated[
        float | None,
        typer.Option(help="Per epoch, all positive slices and this many negatives per positive, drawn afresh."),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from these weights (same kind, architecture, input), e.g. to fine-tune."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name for the card (default ich-KIND).")] = None,
    version: Annotated[str, typer.Option(help="Model version for the card.")] = "1.0.0",
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Train a model and write its weights and model card."""
    from dicom_node.training.train import train

    configure_logging(log_level.upper(), "text")
    if kind not in KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(KINDS)}")
    summary = train(
        kind,
        data,
        out,
        epochs=epochs,
        seed=seed,
        resume=resume,
        batch_size=batch_size,
        learning_rate=learning_rate,
        size=size,
        windows=[w.strip() for w in windows.split(",") if w.strip()],
        context_slices=context_slices,
        context_spacing_mm=context_spacing_mm,
        slab_mm=slab_mm,
        oversample=_oversample(oversample or []),
        loss=loss,
        threads=threads,
        negatives_per_positive=negatives_per_positive,
        init=init,
        name=name,
        version=version,
        command=shlex.join(["dicom-node", *sys.argv[1:]]),
    )
    typer.echo(
        f"{kind}: best epoch {summary.best_epoch}, score {summary.best_score:.4f}, "
        f"{summary.duration_s:.0f} s -> {out}"
    )


def _oversample(values: list[str]) -> dict[str, int]:
    """``["headct-kaggle=3"]`` -> ``{"headct-kaggle": 3}``; a malformed entry is a BadParameter."""
    out = {}
    for value in values:
        name, _, factor = value.partition("=")
        if not name or not factor.isdigit():
            raise typer.BadParameter(f"--oversample takes NAME=N (a data folder's name, a whole number), not {value!r}")
        out[name] = int(factor)
    return out


def calibrate_command(
    model: Annotated[Path, typer.Option("--model", help="Segmenter model directory (card + weights).")],
    data: Annotated[Path, typer.Option("--data", help="Whole stacks with voxel truth (PHE-SICH, NIfTI, DICOM).")],
    split: Annotated[str, typer.Option(help="Split of the stacks to fit on.")] = "val",
    seed: Annotated[int, typer.Option(help="Seed of the split (as in training).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    gate: Annotated[bool, typer.Option("--gate", help="Fit on findings gated to the intracranial space.")] = False,
    max_fp_per_patient: Annotated[
        float, typer.Option(help="The threshold is the lowest keeping false findings per stack at or under this.")
    ] = 0.5,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Fit the model's study decision on whole stacks and write it into its card."""
    from dicom_node.training.calibrate import calibrate

    configure_logging(log_level.upper(), "text")
    decision, figures = calibrate(
        model, data, split=split, seed=seed, device=device, gate=gate, target_fp_per_patient=max_fp_per_patient
    )
    typer.echo(json.dumps({"study_decision": decision.to_json(), **figures}, indent=2))


def evaluate_command(
    data: Annotated[Path, typer.Option("--data", help="Data folder: Kaggle, PHE-SICH, NIfTI or DICOM + SEG.")],
    model: Annotated[Path | None, typer.Option("--model", help="Model directory (card + weights).")] = None,
    classifier: Annotated[
        Path | None,
        typer.Option("--classifier", help="With --model: evaluate this classifier and the model combined (--rule)."),
    ] = None,
    rule: Annotated[
        str, typer.Option(help="With --classifier: the combination rule (gate, either, both; models/combine.py).")
    ] = "gate",
    threshold_baseline: Annotated[
        bool, typer.Option("--threshold-baseline", help="Evaluate the HU threshold baseline instead of a model.")
    ] = False,
    splits: Annotated[str, typer.Option(help="Splits (Kaggle: val,test; else all,train,val).")] = "",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Slices per inference batch.")] = 16,
    write_card: Annotated[bool, typer.Option(help="Write the figures and plots into the model directory.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of NIfTI/DICOM splits.")] = 0,
    gate: Annotated[
        bool, typer.Option("--gate", help="Restrict findings to the intracranial space first (models/gating.py).")
    ] = False,
    clot_free: Annotated[
        bool,
        typer.Option(
            "--clot-free",
            help="Whole stacks: evaluate on each run of slices without clot (at least 40 mm) as a negative study "
            "(the card is not written).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Evaluate a model (or the threshold baseline) and print a table of its figures."""
    from dicom_node.training.evaluate import evaluate, evaluate_combination, evaluate_threshold, format_table

    configure_logging(log_level.upper(), "text")
    if (model is None) == (not threshold_baseline):
        raise typer.BadParameter("give either --model DIR or --threshold-baseline")
    chosen = [s.strip() for s in splits.split(",") if s.strip()] or None
    if classifier is not None:
        if model is None:
            raise typer.BadParameter("--classifier needs --model (the segmenter it is combined with)")
        report = evaluate_combination(
            classifier, model, data, rule=rule, splits=chosen, device=device, batch_size=batch_size, seed=seed,
            gate=gate, clot_free=clot_free,
        )
    elif model is not None:
        report = evaluate(
            model, data, splits=chosen, device=device, batch_size=batch_size,
            write_card=write_card, seed=seed, gate=gate, clot_free=clot_free,
        )
    else:
        report = evaluate_threshold(data, splits=chosen, seed=seed, gate=gate, clot_free=clot_free)
    typer.echo(format_table(report))
