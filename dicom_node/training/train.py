"""Train a model of any network kind from a data folder into a model directory.

``train(kind, data, out, epochs=..., seed=...)`` reads the data
through the shared preprocessing (:mod:`dicom_node.training.data`), trains with
augmentation (:mod:`dicom_node.training.augment`), validates after every epoch,
keeps the best epoch by the validation criterion of the kind, and writes
``out/weights.pt`` and ``out/model_card.json`` (with the exact command, the
split, the per-epoch history and the validation figures).

Selection criterion: validation loss for the classifier (40 validation images
saturate AUC and accuracy long before the model stops improving); pooled Dice
at model size for the segmenters (the quantity they are shipped for).

Reproducibility: the network is initialised from ``seed``; epoch ``e``
shuffles and augments from a generator seeded with ``(seed, e)``, so a run
resumed from ``out/checkpoint.pt`` (written after every epoch) repeats the
epochs an uninterrupted run would have done. The learning rate is a pure
function of the step (linear warm-up, cosine decay), so it needs no saved
state either. On the CPU, results are then bitwise repeatable for a fixed
number of threads.
"""

from __future__ import annotations

import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dicom_node.models import classifier as classifier_module
from dicom_node.models import maskrcnn as maskrcnn_module
from dicom_node.models import unet as unet_module
from dicom_node.models.card import ModelCard, Thresholds, sha256_of
from dicom_node.models.inputs import DEFAULT_CONTEXT_SPACING_MM, DEFAULT_SLAB_MM, InputSpec
from dicom_node.models.losses import LOSSES
from dicom_node.models.registry import build_network
from dicom_node.models.result import ModelKind
from dicom_node.training.augment import Augmentation, augment_batch
from dicom_node.training.cases import SliceSet, TrainingData
from dicom_node.training.data import load_training_sets
from dicom_node.training.metrics import BinaryCounts, best_threshold, roc_auc

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CHECKPOINT_FILE = "checkpoint.pt"
_DEFAULT_ARCHITECTURES = {
    ModelKind.CLASSIFIER: classifier_module.DEFAULT_ARCHITECTURE,
    ModelKind.UNET: unet_module.DEFAULT_ARCHITECTURE,
    ModelKind.MASKRCNN: maskrcnn_module.DEFAULT_ARCHITECTURE,
}


@dataclass(frozen=True)
class TrainingOptions:
    """Hyper-parameters of one run (all recorded in the card)."""

    epochs: int
    seed: int = 0
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    steps_per_epoch: int | None = None
    val_fraction: float = 0.2
    threads: int | None = None
    negatives_per_positive: float | None = None
    oversample: dict[str, int] = field(default_factory=dict)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("learning_rate must be positive, weight_decay and warmup_epochs not negative")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch, when given, must be at least 1")
        if self.negatives_per_positive is not None and self.negatives_per_positive <= 0:
            raise ValueError("negatives_per_positive, when given, must be positive")


@dataclass(frozen=True)
class TrainingSummary:
    """What a run produced: the model directory and the selected epoch's validation figures."""

    out: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, float]]
    duration_s: float


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, base: float) -> float:
    """Linear warm-up to ``base`` over ``warmup_steps``, then cosine decay to 1 % of it."""
    if warmup_steps and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def trainable_slices(kind: ModelKind, slices: SliceSet) -> SliceSet:
    """The slices a kind learns from: all for the classifier, pixel-annotated ones for segmenters."""
    if kind == ModelKind.CLASSIFIER:
        return slices
    keep = np.flatnonzero(slices.annotated)
    if keep.size == 0:
        raise ValueError("a segmentation model needs slices with pixel annotations; none were found")
    return slices.subset(keep)


def batch_loss(
    kind: ModelKind,
    network: nn.Module,
    images: torch.Tensor,
    instances: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: str = "dice_bce",
) -> torch.Tensor:
    """The training loss of ``network`` (of ``kind``) on one batch."""
    if kind == ModelKind.CLASSIFIER:
        return classifier_module.classifier_loss(network, images, labels)
    if kind == ModelKind.UNET:
        return unet_module.unet_loss(network, images, instances > 0, loss)
    if kind == ModelKind.MASKRCNN:
        return maskrcnn_module.maskrcnn_loss(network, images, instances)
    raise ValueError(f"{kind.value} models are not trained")


def epoch_sample(slices: SliceSet, generator: torch.Generator, negatives_per_positive: float | None) -> np.ndarray:
    """The slice indices one epoch trains on: every positive, and negatives drawn afresh each epoch.

    Whole stacks are mostly negative slices (skull base, vertex, far from the
    clot); all of them every epoch would make an epoch ten times longer while
    teaching the same thing. ``None`` keeps every slice.
    """
    every = np.arange(len(slices))
    if negatives_per_positive is None:
        return every
    positives = every[slices.labels > 0]
    negatives = every[slices.labels == 0]
    wanted = min(len(negatives), max(1, int(round(negatives_per_positive * max(1, len(positives))))))
    drawn = negatives[torch.randperm(len(negatives), generator=generator)[:wanted].numpy()]
    return np.sort(np.concatenate([positives, drawn]))


def _batches(slices: SliceSet, batch_size: int, generator: torch.Generator, steps: int | None) -> Iterator[np.ndarray]:
    order = torch.randperm(len(slices), generator=generator).numpy()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # A last batch of one would make BatchNorm's batch statistics meaningless.
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = np.concatenate([batches[-2], batches[-1]])
        batches.pop()
    if steps is not None:
        while len(batches) < steps:
            batches += batches
        batches = batches[:steps]
    yield from batches


def _tensors(slices: SliceSet, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(slices.images[index].astype(np.float32)),
        torch.from_numpy(slices.instances[index].astype(np.int64)),
        torch.from_numpy(slices.labels[index].astype(np.float32)),
    )


@torch.inference_mode()
def predict_model_size(kind: ModelKind, network: nn.Module, slices: SliceSet, batch_size: int = 16) -> np.ndarray:
    """Model-size outputs of a set: slice probabilities (classifier) or pixel probabilities (segmenters)."""
    network.eval()
    outputs = []
    for first in range(0, len(slices), batch_size):
        images = torch.from_numpy(slices.images[first : first + batch_size].astype(np.float32))
        if kind == ModelKind.CLASSIFIER:
            outputs.append(torch.sigmoid(network(images)).numpy())
        elif kind == ModelKind.UNET:
            outputs.append(torch.sigmoid(network(images)[:, 0]).numpy())
        else:
            maps = np.zeros((images.shape[0],) + tuple(images.shape[2:]), dtype=np.float32)
            for k, output in enumerate(network(list(images))):
                keep = output["scores"] >= 0.5
                if keep.any():
                    maps[k] = output["masks"][keep][:, 0].amax(dim=0).numpy()
            outputs.append(maps)
    return np.concatenate(outputs)


def validate(kind: ModelKind, network: nn.Module, val: SliceSet) -> dict[str, float]:
    """Validation figures at model size; ``score`` is the selection criterion (higher is better)."""
    predictions = predict_model_size(kind, network, val)
    if kind == ModelKind.CLASSIFIER:
        p = np.clip(predictions.astype(np.float64), 1e-7, 1 - 1e-7)
        y = val.labels.astype(np.float64)
        bce = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
        counts = BinaryCounts.of(val.labels, p >= 0.5)
        return {"val_loss": bce, "val_auc": roc_auc(val.labels, p), "val_accuracy": counts.accuracy, "score": -bce}
    truth = val.instances > 0
    predicted = predictions >= 0.5
    overlap = float(np.logical_and(predicted, truth).sum())
    total = float(predicted.sum() + truth.sum())
    pooled = 1.0 if total == 0 else 2.0 * overlap / total
    return {"val_dice_pooled": pooled, "score": pooled}


def _set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


@contextmanager
def _torch_settings(threads: int | None) -> Iterator[None]:
    """Threads and deterministic algorithms for the run, restored afterwards."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)


def _draft_card(
    kind: ModelKind, spec: InputSpec, architecture: dict[str, Any], name: str, version: str
) -> ModelCard:
    """A card to build the network from before any weights exist (the hash is a placeholder)."""
    return ModelCard(
        name=name,
        version=version,
        kind=kind,
        weights_file=WEIGHTS_FILE,
        weights_sha256="0" * 64,
        architecture=architecture,
        input=spec,
    )


@dataclass(frozen=True)
class _RunSetup:
    """Everything fixed before the first step: options, input, architecture, draft card, data."""

    kind: ModelKind
    options: TrainingOptions
    loss: str
    spec: InputSpec
    architecture: dict[str, Any]
    out: Path
    draft: ModelCard
    run_config: dict[str, Any]
    training_data: TrainingData
    train_set: SliceSet
    val_set: SliceSet
    init: Path | None


@dataclass
class _Progress:
    """What a checkpoint carries between epochs: history, best epoch so far, where to go on."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": -math.inf, "epoch": 0, "state": None})
    first_epoch: int = 1

    def keep_best(self, epoch: int, score: float, network: nn.Module) -> None:
        """Record ``epoch`` as the best so far, with a copy of its state (training goes on changing the network)."""
        self.best = {
            "score": score,
            "epoch": epoch,
            "state": {k: v.detach().clone() for k, v in network.state_dict().items()},
        }


def train(
    kind: ModelKind | str,
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    epochs: int,
    seed: int = 0,
    resume: bool = False,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    size: int = 256,
    windows: Sequence[str] = ("brain",),
    context_slices: int = 0,
    context_spacing_mm: float = DEFAULT_CONTEXT_SPACING_MM,
    slab_mm: float = DEFAULT_SLAB_MM,
    oversample: dict[str, int] | None = None,
    architecture: dict[str, Any] | None = None,
    loss: str = "dice_bce",
    augment: bool = True,
    threads: int | None = None,
    steps_per_epoch: int | None = None,
    negatives_per_positive: float | None = None,
    init: str | Path | None = None,
    val_fraction: float = 0.2,
    name: str | None = None,
    version: str = "1.0.0",
    command: str | None = None,
    training_data: TrainingData | None = None,
) -> TrainingSummary:
    """Train a ``kind`` model on ``data`` and write the model directory ``out``.

    ``training_data`` may be passed to reuse slices already read (tests, or
    several kinds trained on one read); it must come from ``data`` with the same
    input spec. ``init`` names weights (of the same kind, architecture and input)
    to start from instead of a random initialisation, e.g. to fine-tune a
    shipped model on more data; the card records their SHA-256. Weights of a 2D
    model may start a 2.5D one (``context_slices`` > 0) of the same kind and
    architecture: see :func:`expand_input_channels`. ``oversample`` repeats a
    data folder's training slices (by folder name, see
    :func:`~dicom_node.training.data.load_training_sets`). ``command`` is recorded in the card as the way to reproduce the
    run (default: this process's command line).

    The steps: :func:`_setup` (options, data), :func:`_initial_network`,
    :func:`_resume` (checkpoint), :func:`_run_epochs` (:func:`_run_epoch` once per
    epoch), :func:`_finish` (weights, thresholds, card), :func:`_summary`.
    """
    started = time.perf_counter()
    options = TrainingOptions(
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        steps_per_epoch=steps_per_epoch,
        val_fraction=val_fraction,
        threads=threads,
        negatives_per_positive=negatives_per_positive,
        oversample=dict(oversample or {}),
        augmentation=Augmentation(enabled=augment),
    )
    setup = _setup(
        ModelKind(kind), data, Path(out), options,
        loss=loss,
        spec=InputSpec(
            size=(size, size), windows=tuple(windows),
            context_slices=context_slices, context_spacing_mm=context_spacing_mm, slab_mm=slab_mm,
        ),
        architecture=architecture,
        init=None if init is None else Path(init), name=name, version=version, training_data=training_data,
    )
    with _torch_settings(threads):
        torch.manual_seed(seed)
        network = _initial_network(setup)
        optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=options.weight_decay)
        progress = _resume(setup, network, optimizer) if resume else _Progress()
        _run_epochs(setup, network, optimizer, progress)
        card = _finish(setup, network, progress, command=command, duration=lambda: time.perf_counter() - started)
    return _summary(setup, progress, card)


def _setup(
    kind: ModelKind,
    data: str | Path | Sequence[str | Path],
    out: Path,
    options: TrainingOptions,
    *,
    loss: str,
    spec: InputSpec,
    architecture: dict[str, Any] | None,
    init: Path | None,
    name: str | None,
    version: str,
    training_data: TrainingData | None,
) -> _RunSetup:
    """Check the arguments, make ``out``, read and split the data."""
    if kind not in _DEFAULT_ARCHITECTURES:
        raise ValueError(f"{kind.value} has no trainable network")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use one of {LOSSES}")
    arch = {**_DEFAULT_ARCHITECTURES[kind], **(architecture or {})}
    if kind == ModelKind.UNET:
        arch["loss"] = loss
    out.mkdir(parents=True, exist_ok=True)
    run_config = {
        "kind": kind.value,
        "input": spec.to_json(),
        "architecture": arch,
        "seed": options.seed,
        "negatives_per_positive": options.negatives_per_positive,
        **({"oversample": options.oversample} if options.oversample else {}),
        "init_sha256": None if init is None else sha256_of(init),
    }
    if training_data is None:
        folders = [data] if isinstance(data, (str, Path)) else list(data)
        training_data = load_training_sets(
            folders, spec, seed=options.seed, val_fraction=options.val_fraction, oversample=options.oversample
        )
    return _RunSetup(
        kind=kind,
        options=options,
        loss=loss,
        spec=spec,
        architecture=arch,
        out=out,
        draft=_draft_card(kind, spec, arch, name or f"ich-{kind.value}", version),
        run_config=run_config,
        training_data=training_data,
        train_set=trainable_slices(kind, training_data.train),
        val_set=trainable_slices(kind, training_data.val),
        init=init,
    )


@dataclass(frozen=True)
class _Schedule:
    """Steps per epoch and the learning-rate schedule's length (fixed by the first epoch's sample)."""

    steps: int
    total_steps: int
    warmup: int

    @classmethod
    def of(cls, setup: _RunSetup) -> _Schedule:
        options = setup.options
        first_sample = setup.train_set.subset(
            epoch_sample(setup.train_set, torch.Generator().manual_seed(0), options.negatives_per_positive)
        )
        steps = options.steps_per_epoch or max(1, len(_list_batches(first_sample, options.batch_size)))
        return cls(steps=steps, total_steps=steps * options.epochs, warmup=int(round(options.warmup_epochs * steps)))


def _initial_network(setup: _RunSetup) -> nn.Module:
    """The network built from the draft card: random (from the global seed), or from ``init``'s weights."""
    network = build_network(setup.draft)
    if setup.init is not None:
        initial = torch.load(setup.init, map_location="cpu", weights_only=True)
        network.load_state_dict(expand_input_channels(initial, network.state_dict(), setup.spec))
    return network


def _run_epochs(setup: _RunSetup, network: nn.Module, optimizer: torch.optim.Optimizer, progress: _Progress) -> None:
    """The epochs not done yet; then ``network`` holds the best epoch's state, in eval mode."""
    schedule = _Schedule.of(setup)
    for epoch in range(progress.first_epoch, setup.options.epochs + 1):
        _run_epoch(setup, schedule, network, optimizer, progress, epoch)
    network.load_state_dict(progress.best["state"])
    network.eval()


def _summary(setup: _RunSetup, progress: _Progress, card: ModelCard) -> TrainingSummary:
    """Log the finished run and say what it produced (the duration as the card records it)."""
    duration = float(card.training["duration_s"])
    logger.info(
        "trained %s in %.0f s; best epoch %d (score %.4f)",
        setup.kind.value,
        duration,
        progress.best["epoch"],
        progress.best["score"],
        extra={"path": str(setup.out), "duration_s": duration},
    )
    return TrainingSummary(
        out=setup.out,
        best_epoch=int(progress.best["epoch"]),
        best_score=float(progress.best["score"]),
        history=progress.history,
        duration_s=duration,
    )


def _resume(setup: _RunSetup, network: nn.Module, optimizer: torch.optim.Optimizer) -> _Progress:
    """Network, optimizer and progress from ``out/checkpoint.pt`` of the same run (a fresh start without one)."""
    checkpoint_path = setup.out / CHECKPOINT_FILE
    if not checkpoint_path.is_file():
        logger.info("no checkpoint to resume from; starting at epoch 1", extra={"path": str(checkpoint_path)})
        return _Progress()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if checkpoint["config"] != setup.run_config:
        raise ValueError(
            f"{checkpoint_path} was written by a different run (kind, input, architecture or seed differ); "
            "resume only continues the same run"
        )
    network.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    progress = _Progress(
        history=list(checkpoint["history"]), best=dict(checkpoint["best"]), first_epoch=int(checkpoint["epoch"]) + 1
    )
    logger.info("resuming after epoch %d", progress.first_epoch - 1, extra={"path": str(checkpoint_path)})
    return progress


def _run_epoch(
    setup: _RunSetup,
    schedule: _Schedule,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: _Progress,
    epoch: int,
) -> None:
    """One epoch: train on its sample, validate, keep the best state, write the checkpoint."""
    epoch_started = time.perf_counter()
    losses = _train_steps(setup, schedule, network, optimizer, epoch)
    figures = validate(setup.kind, network, setup.val_set)
    record = {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)),
        **{k: float(v) for k, v in figures.items()},
        "seconds": round(time.perf_counter() - epoch_started, 2),
    }
    progress.history.append(record)
    if figures["score"] > progress.best["score"]:
        progress.keep_best(epoch, float(figures["score"]), network)
    logger.info(
        "epoch %d/%d: %s",
        epoch,
        setup.options.epochs,
        " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch",)),
        extra={"stage": "train"},
    )
    _save_checkpoint(setup, network, optimizer, progress, epoch)


def _train_steps(
    setup: _RunSetup, schedule: _Schedule, network: nn.Module, optimizer: torch.optim.Optimizer, epoch: int
) -> list[float]:
    """The optimisation steps of one epoch; returns each step's loss.

    One generator, seeded from (seed, epoch), draws the epoch's sample, its batch
    order and its augmentation, in that order: a resumed run repeats them exactly.
    """
    options = setup.options
    generator = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
    network.train()
    losses = []
    epoch_set = setup.train_set.subset(epoch_sample(setup.train_set, generator, options.negatives_per_positive))
    for step_in_epoch, index in enumerate(_batches(epoch_set, options.batch_size, generator, options.steps_per_epoch)):
        step = (epoch - 1) * schedule.steps + step_in_epoch
        _set_learning_rate(
            optimizer, learning_rate_at(step, schedule.total_steps, schedule.warmup, options.learning_rate)
        )
        images, instances, labels = _tensors(epoch_set, index)
        images, instances = augment_batch(images, instances, generator, options.augmentation)
        value = batch_loss(setup.kind, network, images, instances, labels, loss=setup.loss)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(network.parameters(), 5.0)
        optimizer.step()
        losses.append(float(value.detach()))
    return losses


def _save_checkpoint(
    setup: _RunSetup, network: nn.Module, optimizer: torch.optim.Optimizer, progress: _Progress, epoch: int
) -> None:
    """``out/checkpoint.pt`` after ``epoch``: what :func:`_resume` needs to go on as if never stopped."""
    torch.save(
        {
            "config": setup.run_config,
            "epoch": epoch,
            "model": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": progress.history,
            "best": progress.best,
        },
        setup.out / CHECKPOINT_FILE,
    )


def _finish(
    setup: _RunSetup,
    network: nn.Module,
    progress: _Progress,
    *,
    command: str | None,
    duration: Callable[[], float],
) -> ModelCard:
    """Write the selected weights and the card (thresholds and validation figures at model size)."""
    kind, options = setup.kind, setup.options
    weights_path = setup.out / WEIGHTS_FILE
    torch.save(network.state_dict(), weights_path)
    thresholds = _choose_thresholds(kind, network, setup.val_set)
    val_figures = validate(kind, network, setup.val_set)
    card = ModelCard(
        name=setup.draft.name,
        version=setup.draft.version,
        kind=kind,
        weights_file=WEIGHTS_FILE,
        weights_sha256=sha256_of(weights_path),
        architecture=setup.architecture,
        input=setup.spec,
        thresholds=thresholds,
        training={
            "command": command or shlex.join(["dicom-node", *sys.argv[1:]]),
            "data": setup.training_data.description,
            "options": {**asdict(options), "loss": setup.loss if kind == ModelKind.UNET else None},
            "selection": "val loss" if kind == ModelKind.CLASSIFIER else "val pooled Dice at model size",
            "init": _init_record(setup),
            "best_epoch": int(progress.best["epoch"]),
            "duration_s": round(duration(), 1),
            "parameters": int(sum(p.numel() for p in network.parameters())),
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": "cpu",
                "threads": options.threads or torch.get_num_threads(),
            },
            "history": progress.history,
        },
        metrics={"validation_model_size": {k: v for k, v in val_figures.items() if k != "score"}},
    )
    card.save(setup.out)
    return card


def expand_input_channels(
    initial: dict[str, torch.Tensor], target: dict[str, torch.Tensor], spec: InputSpec
) -> dict[str, torch.Tensor]:
    """``initial`` (a 2D model's state) fitted to a 2.5D network's ``target`` state, else unchanged.

    Only tensors whose input-channel axis (dim 1) is ``spec.slices`` times too
    narrow are changed (the first convolution): the centre slice's channels take
    the initial weights and the neighbours' start at zero, so the 2.5D network
    starts out computing exactly what the 2D one did and learns from there what
    the neighbours add. Any other mismatch is left for ``load_state_dict`` to
    refuse.
    """
    if spec.context_slices == 0:
        return initial
    out = dict(initial)
    per_slice = len(spec.windows)
    centre = spec.context_slices * per_slice
    for key, value in initial.items():
        wanted = target.get(key)
        if wanted is None or wanted.shape == value.shape or value.ndim < 2:
            continue
        if value.shape[1] == per_slice and wanted.shape[1] == per_slice * spec.slices and (
            value.shape[0] == wanted.shape[0] and value.shape[2:] == wanted.shape[2:]
        ):
            expanded = torch.zeros_like(wanted)
            expanded[:, centre : centre + per_slice] = value
            out[key] = expanded
    return out


def _init_record(setup: _RunSetup) -> dict[str, Any] | None:
    """The card's ``training.init``: which weights the run started from, and how they were fitted."""
    if setup.init is None:
        return None
    record: dict[str, Any] = {"path": str(setup.init), "sha256": setup.run_config["init_sha256"]}
    if setup.spec.context_slices:
        record["input_channels"] = (
            "2D weights widened to 2.5D input: the first convolution's centre-slice channels take the "
            "initial weights, the neighbour slices' channels start at zero (the network starts equal to "
            "the 2D model)"
        )
    return record


def _list_batches(slices: SliceSet, batch_size: int) -> list[np.ndarray]:
    return list(_batches(slices, batch_size, torch.Generator().manual_seed(0), None))


def _choose_thresholds(kind: ModelKind, network: nn.Module, val: SliceSet) -> Thresholds:
    """The classifier's decision threshold from validation (balanced accuracy); 0.5 elsewhere.

    Segmenters keep pixel and score thresholds at 0.5 and their decision
    threshold equal to them: their study call is "a lesion survived".
    """
    if kind != ModelKind.CLASSIFIER:
        return Thresholds()
    probabilities = predict_model_size(kind, network, val)
    return Thresholds(decision=best_threshold(val.labels, probabilities, prefer=0.5))
