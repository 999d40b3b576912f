"""Segmentation losses: soft Dice with BCE (default) or with focal loss.

Blood covers about 1-3 % of a positive slice and nothing of a negative one, so
plain BCE is dominated by background. Soft Dice rewards overlap directly and is
insensitive to the imbalance; BCE next to it keeps gradients well-behaved early
and on negative slices, where Dice alone is undefined (0/0). Focal loss
(Lin et al. 2017) down-weights easy background pixels instead; it is offered as
the alternative to BCE.

Dice is computed over the whole batch as one volume ("batch Dice"), not per
image and averaged: a negative slice then adds false-positive pixels to the
denominator instead of contributing a 0/0 term.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

LOSSES = ("dice_bce", "dice_focal", "bce", "focal")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 |P.T| + s) / (|P| + |T| + s)`` over the whole batch, P = sigmoid(logits)."""
    probability = torch.sigmoid(logits)
    intersection = (probability * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probability.sum() + target.sum() + smooth)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Mean focal loss: BCE scaled by ``(1 - p_t) ** gamma`` and weighted by ``alpha`` for positives."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    weight = alpha * target + (1.0 - alpha) * (1.0 - target)
    return (weight * (1.0 - p_t) ** gamma * bce).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice_bce") -> torch.Tensor:
    """The loss named ``kind`` (one of :data:`LOSSES`) of logits against a 0/1 mask of the same shape."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape")
    target = target.float()
    if kind == "dice_bce":
        return soft_dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
    if kind == "dice_focal":
        # Focal values are about 10x smaller than BCE; scale so both terms matter.
        return soft_dice_loss(logits, target) + 10.0 * focal_loss(logits, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "focal":
        return focal_loss(logits, target)
    raise ValueError(f"unknown loss {kind!r}: use one of {LOSSES}")
