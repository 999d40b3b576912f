"""Each kind's network builds, trains (a few steps lower the loss) and has its documented shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicom_node.models.classifier import pool_slices
from dicom_node.models.losses import segmentation_loss, soft_dice_loss
from dicom_node.models.maskrcnn import instance_targets
from dicom_node.models.registry import build_network
from dicom_node.models.result import ModelKind
from dicom_node.training.augment import Augmentation, augment_batch
from dicom_node.training.train import batch_loss, learning_rate_at
from tests.support.models import one_torch_thread, synthetic_slice, tiny_card  # noqa: F401

SIZE = 64


def synthetic_batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model-size images with a bright disc (label 1) on every other slice, and its instance map."""
    rng = np.random.default_rng(0)
    images, instances = [], []
    for k in range(n):
        image, polygon = synthetic_slice(rng, rows=SIZE, cols=SIZE, lesion=k % 2 == 0)
        mask = np.zeros((SIZE, SIZE), np.int64)
        if polygon:
            ys, xs = np.mgrid[0:SIZE, 0:SIZE]
            cx = np.mean([p[0] for p in polygon])
            cy = np.mean([p[1] for p in polygon])
            radius = np.hypot(polygon[0][0] - cx, polygon[0][1] - cy)
            mask[np.hypot(ys - cy, xs - cx) <= radius] = 1
        images.append(image[None])
        instances.append(mask)
    labels = torch.tensor([1.0 if k % 2 == 0 else 0.0 for k in range(n)])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(instances)), labels


@pytest.mark.parametrize("kind", ["classifier", "unet", "maskrcnn"])
def test_a_few_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    network = build_network(tiny_card(kind))
    network.train()
    images, instances, labels = synthetic_batch()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = batch_loss(ModelKind(kind), network, images, instances, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


def test_output_shapes():
    images, _, _ = synthetic_batch(2)
    classifier = build_network(tiny_card("classifier")).eval()
    unet = build_network(tiny_card("unet")).eval()
    maskrcnn = build_network(tiny_card("maskrcnn")).eval()
    with torch.inference_mode():
        assert classifier(images).shape == (2,)
        assert unet(images).shape == (2, 1, SIZE, SIZE)
        outputs = maskrcnn(list(images))
    assert len(outputs) == 2 and {"boxes", "scores", "masks", "labels"} <= set(outputs[0])


def test_unet_refuses_sizes_its_depth_cannot_halve():
    unet = build_network(tiny_card("unet"))
    with pytest.raises(ValueError, match="multiples of 8"):
        unet(torch.zeros(1, 1, 60, 60))


def test_instance_targets_have_one_box_per_instance_and_none_for_empty_slices():
    instances = torch.zeros(2, 32, 32, dtype=torch.int64)
    instances[0, 2:6, 3:9] = 1
    instances[0, 20:30, 20:25] = 2
    targets = instance_targets(instances)
    assert targets[0]["boxes"].tolist() == [[3.0, 2.0, 9.0, 6.0], [20.0, 20.0, 25.0, 30.0]]
    assert targets[0]["masks"].shape == (2, 32, 32)
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].numel() == 0


def test_dice_loss_is_zero_for_a_confident_perfect_prediction():
    target = torch.zeros(1, 8, 8)
    target[0, 2:5, 2:5] = 1
    logits = (target * 2 - 1) * 50
    assert float(soft_dice_loss(logits, target)) < 1e-3
    assert float(segmentation_loss(logits, target, "dice_focal")) < 1e-3


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), "hinge")


@pytest.mark.parametrize(
    ("rule", "expected"), [("max", 0.8), ("noisy_or", 1 - 0.9 * 0.2 * 0.5), ("top2_mean", 0.65)]
)
def test_pooling_rules(rule, expected):
    assert pool_slices(np.array([0.1, 0.8, 0.5]), rule) == pytest.approx(expected)


def test_augmentation_keeps_instance_numbers_and_range_and_is_seeded():
    images, instances, _ = synthetic_batch(4)
    first = augment_batch(images, instances, torch.Generator().manual_seed(5))
    again = augment_batch(images, instances, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert float(first[0].min()) >= 0.0 and float(first[0].max()) <= 1.0
    assert set(torch.unique(first[1]).tolist()) <= {0, 1}
    assert float(first[0][images == 0].abs().max()) <= 1.0  # air stays in range
    off = augment_batch(images, instances, torch.Generator(), Augmentation(enabled=False))
    assert off[0] is images


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate_at(s, 100, 10, 1.0) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0)
    assert rates[-1] < 0.05
