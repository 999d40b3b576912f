"""Slice-level hemorrhage probability from a narrow ResNet, pooled to a study probability.

The network sees one slice and answers "is there blood on this slice?". A study
is positive when any slice is, so slice probabilities are pooled with a rule
named in the card (:data:`~dicom_node.models.card.STUDY_POOLING`):

* ``max`` (default): the most suspicious slice decides. A bleed may be visible on
  a single 5 mm slice, and max keeps that single-slice sensitivity; the price is
  that false positives accumulate with the number of slices, so the decision
  threshold should be set on whole studies when such labels exist.
* ``noisy_or``: ``1 - prod(1 - p_k)``, the probability that at least one slice is
  positive if slices were independent. They are not (neighbours see the same
  bleed), so it over-counts; it is offered for comparison.
* ``top2_mean``: the mean of the two highest slices, which asks for a finding to
  persist over two slices and damps single-slice noise, at some cost for tiny
  bleeds.

The classifier draws no contours: its label map is empty and it has no findings.
Lesions come from a segmentation model (see the combination rule in the card).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dicom_node.imaging.geometry import CropResize
from dicom_node.models.backbone import NarrowResNet
from dicom_node.models.card import STUDY_POOLING, ModelCard
from dicom_node.models.result import ModelKind, ModelResult, VolumeLike

POOLING = STUDY_POOLING
DEFAULT_ARCHITECTURE: dict[str, Any] = {"widths": [16, 32, 64, 128], "blocks": [2, 2, 2, 2], "dropout": 0.2}


class SliceClassifier(nn.Module):
    """NarrowResNet body, then average and max pooling side by side, then one logit.

    Max pooling next to the usual global average keeps a small bright focus from
    being averaged away over a whole brain.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        self.body = NarrowResNet(in_channels, widths, blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch,)``: log-odds of blood on each slice."""
        features = self.body(x)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled)).squeeze(1)


def build_classifier(in_channels: int, architecture: dict[str, Any]) -> SliceClassifier:
    """The network a card's ``architecture`` section describes."""
    return SliceClassifier(
        in_channels,
        widths=tuple(architecture.get("widths", DEFAULT_ARCHITECTURE["widths"])),
        blocks=tuple(architecture.get("blocks", DEFAULT_ARCHITECTURE["blocks"])),
        dropout=float(architecture.get("dropout", DEFAULT_ARCHITECTURE["dropout"])),
    )


def classifier_loss(network: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the slice logits against image labels (0/1)."""
    return nn.functional.binary_cross_entropy_with_logits(network(images), labels.float())


def pool_slices(probabilities: np.ndarray, rule: str) -> float:
    """One study probability from slice probabilities; see the module docstring."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("pooling needs a non-empty vector of slice probabilities")
    if rule == "max":
        return float(p.max())
    if rule == "noisy_or":
        return float(1.0 - np.prod(1.0 - np.clip(p, 0.0, 1.0)))
    if rule == "top2_mean":
        return float(np.sort(p)[-2:].mean())
    raise ValueError(f"unknown pooling rule {rule!r}: use one of {POOLING}")


class ClassifierDecoder:
    """Collects slice probabilities during a run and pools them into a ModelResult."""

    def __init__(self, card: ModelCard, volume: VolumeLike) -> None:
        self.card = card
        self.volume = volume
        self.probabilities = np.zeros(volume.hu.shape[0], dtype=np.float64)

    def infer(self, network: nn.Module, images: torch.Tensor) -> list[float]:
        """Slice probabilities of one batch, as Python floats on the CPU."""
        return torch.sigmoid(network(images).float()).cpu().tolist()

    def add(self, index: int, output: float, transform: CropResize) -> None:
        """Record slice ``index``'s probability (the crop does not matter for a number)."""
        self.probabilities[index] = output

    def result(self) -> ModelResult:
        """The pooled study probability; no label map, no findings."""
        return ModelResult(
            model_kind=ModelKind.CLASSIFIER,
            model_name=self.card.name,
            model_version=self.card.version,
            label_map=np.zeros(self.volume.hu.shape, dtype=np.uint8),
            findings=(),
            study_probability=min(1.0, max(0.0, pool_slices(self.probabilities, self.card.study_pooling))),
            decision_threshold=self.card.thresholds.decision,
            slice_probabilities=self.probabilities.copy(),
        )
