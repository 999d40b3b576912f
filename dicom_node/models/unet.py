"""Semantic segmentation of hemorrhage with a small U-Net (Ronneberger et al. 2015).

Each slice gets a probability map at model size. It is mapped back to the
source grid bilinearly (probabilities are thresholded after mapping back, not
before, so the contour does not inherit the model grid's staircase), stored as
8 bits (1/255 steps; a 1000-slice study of 512x512 is then 262 MB rather than
1 GB as float32), thresholded at the card's ``pixel`` threshold, and cleaned by
the common post-processing of :func:`~dicom_node.models.result.findings_from_labels`
(in-plane hole filling, 3D connected components, removal of components under
``min_lesion_ml``).

Study call: positive when at least one lesion survives the post-processing.
The study probability is the highest pixel probability inside a surviving
lesion (so at least the ``pixel`` threshold when there is one; the card's
``decision`` threshold equals ``pixel`` for this kind), 0 when none survives.
Each lesion's confidence is its mean pixel probability. ``slice_probabilities`` hold each slice's
highest pixel probability at model size, before post-processing, for ranking
and key images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dicom_node.imaging.geometry import CropResize
from dicom_node.models.card import ModelCard
from dicom_node.models.losses import segmentation_loss
from dicom_node.models.result import ModelKind, ModelResult, VolumeLike, findings_from_labels

DEFAULT_ARCHITECTURE: dict[str, Any] = {"base_channels": 16, "depth": 4, "loss": "dice_bce"}


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` 2x downsamplings, ``base_channels`` doubling at each.

    Batch normalisation after every convolution (training from scratch on a
    few hundred slices), transposed convolutions to upsample, skip connections
    by concatenation, one output logit per pixel.
    """

    def __init__(self, in_channels: int, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        if base_channels < 1 or not 1 <= depth <= 6:
            raise ValueError("base_channels must be positive and depth in 1..6")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.depth = depth
        inputs = [in_channels, *widths[:-1]]
        self.down = nn.ModuleList([_double_conv(inputs[level], widths[level]) for level in range(depth + 1)])
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2) for level in range(depth)]
        )
        self.merge = nn.ModuleList([_double_conv(2 * widths[level], widths[level]) for level in range(depth)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, 1, rows, cols)``; rows and cols must be multiples of 2**depth."""
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(f"input rows and columns must be multiples of {2**self.depth}")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for level in reversed(range(self.depth)):
            x = self.merge[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        return self.head(x)


def build_unet(in_channels: int, architecture: dict[str, Any]) -> UNet:
    """The network a card's ``architecture`` section describes."""
    return UNet(
        in_channels,
        base_channels=int(architecture.get("base_channels", DEFAULT_ARCHITECTURE["base_channels"])),
        depth=int(architecture.get("depth", DEFAULT_ARCHITECTURE["depth"])),
    )


def unet_loss(network: nn.Module, images: torch.Tensor, masks: torch.Tensor, kind: str = "dice_bce") -> torch.Tensor:
    """Segmentation loss of the network on a batch; ``masks`` are ``(batch, rows, cols)`` 0/1."""
    return segmentation_loss(network(images)[:, 0], masks.float(), kind)


class SegmentationDecoder:
    """Maps each slice's probability map back to the source grid, then measures lesions."""

    def __init__(self, card: ModelCard, volume: VolumeLike) -> None:
        self.card = card
        self.volume = volume
        self.probability = np.zeros(volume.hu.shape, dtype=np.uint8)
        self.slice_probabilities = np.zeros(volume.hu.shape[0], dtype=np.float64)

    def infer(self, network: nn.Module, images: torch.Tensor) -> np.ndarray:
        """Probability maps ``(batch, rows, cols)`` of one batch, float32 on the CPU."""
        return torch.sigmoid(network(images)[:, 0].float()).cpu().numpy()

    def add(self, index: int, output: np.ndarray, transform: CropResize) -> None:
        """Put slice ``index``'s probability map on the source grid (bilinear, 0 outside the crop)."""
        self.slice_probabilities[index] = float(output.max())
        source = transform.to_source(output, order="linear", fill=0.0)
        self.probability[index] = np.rint(np.clip(source, 0.0, 1.0) * 255.0).astype(np.uint8)

    def result(self) -> ModelResult:
        """Threshold, clean and measure; see the module docstring for the study call."""
        thresholds = self.card.thresholds
        level = int(np.ceil(thresholds.pixel * 255.0))
        labelled = findings_from_labels(
            self.probability >= level,
            self.volume,
            confidences=self.probability,
            min_volume_ml=thresholds.min_lesion_ml,
            fill_holes=thresholds.fill_holes,
        )
        # The probability map is in 1/255 steps; a confidence is a probability.
        findings = tuple(
            replace(f, confidence=None if f.confidence is None else f.confidence / 255.0) for f in labelled.findings
        )
        study = 0.0
        if findings:
            study = float(self.probability[labelled.label_map != 0].max()) / 255.0
        return ModelResult(
            model_kind=ModelKind.UNET,
            model_name=self.card.name,
            model_version=self.card.version,
            label_map=labelled.label_map,
            findings=findings,
            study_probability=min(1.0, study),
            decision_threshold=thresholds.decision,
            slice_probabilities=self.slice_probabilities.copy(),
        )
