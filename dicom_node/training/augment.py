"""Training-time augmentation of model-size batches, on tensors, from a seeded generator.

Applied after the shared preprocessing, to images in [0, 1] and their label
maps together (the same geometry for both):

* left-right flip (p = 0.5): the brain is nearly symmetric, bleeds are not
  lateralised. No up-down flip: anterior is always up in axial head CT;
* rotation (+-15 deg), isotropic scale (0.85-1.15) and shift (+-5 %): positioning
  and the head crop vary between scanners and patients;
* contrast x gain (0.85-1.15) and offset (+-0.05), then gamma (0.7-1.4): window
  settings and the rendering of the training PNGs vary, and HU calibration
  differs between scanners;
* Gaussian noise (sigma up to 0.03, i.e. about 2.4 HU in the brain window),
  on tissue only: windowed air is exactly 0 in real CT and stays 0.

Images are resampled bilinearly, label maps with nearest neighbour so that
instance numbers survive. Everything is drawn from the ``generator`` passed in,
so an epoch is reproducible from its seed (and a resumed run repeats it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; ``enabled=False`` passes batches through."""

    enabled: bool = True
    flip_probability: float = 0.5
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift_fraction: float = 0.05
    gain: tuple[float, float] = (0.85, 1.15)
    offset: float = 0.05
    gamma: tuple[float, float] = (0.7, 1.4)
    noise_sigma: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError("flip_probability must be in [0, 1]")
        if min(self.scale) <= 0 or min(self.gain) <= 0 or min(self.gamma) <= 0:
            raise ValueError("scale, gain and gamma ranges must be positive")
        if self.noise_sigma < 0 or self.rotation_deg < 0 or self.shift_fraction < 0:
            raise ValueError("noise_sigma, rotation_deg and shift_fraction must not be negative")


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    augmentation: Augmentation = Augmentation(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies of ``images`` ``(B, C, H, W)`` in [0, 1] and ``labels`` ``(B, H, W)`` (integer maps)."""
    if images.ndim != 4 or labels.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError("images must be (B, C, H, W) and labels (B, H, W) with the same B")
    if not augmentation.enabled:
        return images, labels
    a = augmentation
    n = images.shape[0]
    angle = _uniform(generator, n, -a.rotation_deg, a.rotation_deg) * (math.pi / 180.0)
    scale = _uniform(generator, n, *a.scale)
    flip = torch.where(torch.rand(n, generator=generator) < a.flip_probability, -1.0, 1.0)
    shift = _uniform(generator, 2 * n, -2 * a.shift_fraction, 2 * a.shift_fraction).reshape(n, 2)
    # affine_grid maps output to input coordinates in [-1, 1]: inverse rotation and scale.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_labels = F.grid_sample(
        labels[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )[:, 0].round().to(labels.dtype)

    tissue = warped > 0
    gain = _uniform(generator, n, *a.gain).view(n, 1, 1, 1)
    offset = _uniform(generator, n, -a.offset, a.offset).view(n, 1, 1, 1)
    gamma = _uniform(generator, n, *a.gamma).view(n, 1, 1, 1)
    sigma = _uniform(generator, n, 0.0, a.noise_sigma).view(n, 1, 1, 1)
    out = (warped * gain + offset).clamp(0.0, 1.0) ** gamma
    out = out + sigma * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    out = torch.where(tissue, out.clamp(0.0, 1.0), torch.zeros_like(out))
    return out, warped_labels
