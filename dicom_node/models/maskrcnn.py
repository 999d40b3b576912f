"""Instance segmentation of hemorrhage with torchvision's Mask R-CNN on a small backbone.

``maskrcnn_resnet50_fpn`` has 44 M parameters and takes seconds per 512x512
slice on two CPU cores; it cannot be trained from scratch here nor shipped
under our size budget. This builds the same torchvision ``MaskRCNN`` with:

* the :class:`~dicom_node.models.backbone.NarrowResNet` body (1-3 input
  channels) under torchvision's ``BackboneWithFPN`` with narrow FPN channels;
* anchors of 8-128 px, matching lesions on a 256 px slice;
* a narrower box head (``representation`` units) and a mask head of
  ``mask_channels``;
* fewer proposals and sampled RoIs, and no internal resize (the input already
  has the model size; ``min_size == max_size == input size``).

Two classes: background and hemorrhage. Each kept detection (score >= the
card's ``score`` threshold) has its mask probability map mapped back to the
source grid bilinearly and thresholded at ``pixel``; instances are painted
lowest score first, so where they overlap the more confident one wins. The
common post-processing then merges touching instances into 3D lesions; a
lesion's confidence is the best score among the instances it contains, and the
study probability is the best confidence (0 without lesions).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dicom_node.imaging.geometry import CropResize
from dicom_node.models.backbone import NarrowResNet
from dicom_node.models.card import ModelCard
from dicom_node.models.result import ModelKind, ModelResult, VolumeLike, findings_from_labels

DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "widths": [16, 32, 64, 128],
    "blocks": [1, 1, 1, 1],
    "fpn_channels": 64,
    "representation": 256,
    "mask_channels": 64,
    "anchor_sizes": [8, 16, 32, 64, 128],
}
#: Smallest instance (model pixels) kept as a training target; slivers left by augmentation are noise.
MIN_INSTANCE_PIXELS = 4


def build_maskrcnn(in_channels: int, size: tuple[int, int], architecture: dict[str, Any]) -> MaskRCNN:
    """The network a card's ``architecture`` section describes, for inputs of ``size``."""
    arch = {**DEFAULT_ARCHITECTURE, **architecture}
    widths = [int(w) for w in arch["widths"]]
    fpn_channels = int(arch["fpn_channels"])
    mask_channels = int(arch["mask_channels"])
    anchor_sizes = tuple((int(s),) for s in arch["anchor_sizes"])
    if len(anchor_sizes) != 5:
        raise ValueError("anchor_sizes needs five sizes: four FPN levels and the pooled level")
    body = NarrowResNet(in_channels, widths, [int(b) for b in arch["blocks"]])
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=widths,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes))
    side = max(size)
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=min(size),
        max_size=side,
        image_mean=[0.5] * in_channels,
        image_std=[0.25] * in_channels,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=200,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, int(arch["representation"])),
        box_predictor=FastRCNNPredictor(int(arch["representation"]), 2),
        box_batch_size_per_image=128,
        box_detections_per_img=20,
        box_score_thresh=0.05,
        mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, 2),
    )


def instance_targets(instances: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Mask R-CNN targets from instance label maps ``(batch, rows, cols)`` (0 = background).

    An empty slice gets zero boxes, which torchvision trains as all-background.
    """
    targets = []
    rows, cols = instances.shape[-2:]
    for label_map in instances:
        values = [int(v) for v in torch.unique(label_map) if v != 0]
        masks = [label_map == v for v in values]
        masks = [m for m in masks if int(m.sum()) >= MIN_INSTANCE_PIXELS]
        if masks:
            stacked = torch.stack(masks).to(torch.uint8)
            boxes = []
            for m in masks:
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
            box_tensor = torch.stack(boxes)
        else:
            stacked = torch.zeros((0, rows, cols), dtype=torch.uint8, device=instances.device)
            box_tensor = torch.zeros((0, 4), dtype=torch.float32, device=instances.device)
        targets.append(
            {
                "boxes": box_tensor,
                "labels": torch.ones(len(masks), dtype=torch.int64, device=instances.device),
                "masks": stacked,
            }
        )
    return targets


def maskrcnn_loss(network: nn.Module, images: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """Sum of torchvision's RPN, box and mask losses on a batch with instance label maps."""
    losses = network(list(images), instance_targets(instances))
    return sum(losses.values())  # type: ignore[return-value]


class InstanceDecoder:
    """Paints each slice's kept instances on the source grid, then measures lesions.

    Memory: one uint8 score map of the source grid (the best instance score
    covering each voxel, in 1/255 steps), nothing per instance.
    """

    def __init__(self, card: ModelCard, volume: VolumeLike) -> None:
        self.card = card
        self.volume = volume
        self.scores = np.zeros(volume.hu.shape, dtype=np.uint8)
        self.slice_probabilities = np.zeros(volume.hu.shape[0], dtype=np.float64)

    def infer(self, network: nn.Module, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per slice: (scores ``(n,)``, mask probabilities ``(n, rows, cols)``) of kept detections."""
        outputs = network(list(images))
        kept = []
        for output in outputs:
            keep = output["scores"] >= self.card.thresholds.score
            kept.append(
                (
                    output["scores"][keep].float().cpu().numpy(),
                    output["masks"][keep][:, 0].float().cpu().numpy(),
                )
            )
        return kept

    def add(self, index: int, output: tuple[np.ndarray, np.ndarray], transform: CropResize) -> None:
        """Paint slice ``index``'s instances (lowest score first) as their quantised score."""
        scores, masks = output
        self.slice_probabilities[index] = float(scores.max()) if scores.size else 0.0
        if not scores.size:
            return
        order = np.argsort(scores, kind="stable")
        source = transform.to_source(masks[order], order="linear", fill=0.0)
        plane = self.scores[index]
        for probability, score in zip(source, scores[order], strict=True):
            plane[probability >= self.card.thresholds.pixel] = max(1, int(np.rint(score * 255.0)))

    def result(self) -> ModelResult:
        """Merge instances into 3D lesions, measure them, score them by their best instance."""
        thresholds = self.card.thresholds
        labelled = findings_from_labels(
            self.scores != 0,
            self.volume,
            min_volume_ml=thresholds.min_lesion_ml,
            fill_holes=thresholds.fill_holes,
        )
        findings = labelled.findings
        if findings:
            inside = np.nonzero(labelled.label_map)
            best = np.zeros(len(findings) + 1)
            np.maximum.at(best, labelled.label_map[inside].astype(np.intp), self.scores[inside] / 255.0)
            findings = tuple(replace(f, confidence=float(best[f.label])) for f in findings)
        study = max((f.confidence or 0.0 for f in findings), default=0.0)
        return ModelResult(
            model_kind=ModelKind.MASKRCNN,
            model_name=self.card.name,
            model_version=self.card.version,
            label_map=labelled.label_map,
            findings=findings,
            study_probability=min(1.0, study),
            decision_threshold=thresholds.decision,
            slice_probabilities=self.slice_probabilities.copy(),
        )
