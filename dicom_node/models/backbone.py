"""A narrow ResNet body, shared by the slice classifier and the Mask R-CNN backbone.

torchvision's ``ResNet`` class fixes the widths at 64-512 channels (11 M
parameters for ResNet-18), far more than 140 training slices can fit and more
than two CPU cores can train in minutes. This body reuses torchvision's
``BasicBlock`` with widths chosen by the card (default 16-32-64-128, about 0.7 M
parameters). Its children run in order (stem, layer1..layer4), which is what
``torchvision.models._utils.IntermediateLayerGetter`` needs to tap it for an FPN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1


def _stage(in_width: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_width != width:
        downsample = nn.Sequential(conv1x1(in_width, width, stride), nn.BatchNorm2d(width))
    layers: list[nn.Module] = [BasicBlock(in_width, width, stride=stride, downsample=downsample)]
    layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class NarrowResNet(nn.Module):
    """Stem (two 3x3 convolutions, stride 2, then max-pool) and four BasicBlock stages.

    Feature strides are 4, 8, 16 and 32 for ``layer1``..``layer4``. The stem uses
    3x3 convolutions instead of ResNet's 7x7 because the input has 1-3 channels
    and small lesions: a cheap, finer first look.
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("a NarrowResNet has four stages: give four widths and four block counts")
        if min(widths) < 1 or min(blocks) < 1 or in_channels < 1:
            raise ValueError("widths, block counts and in_channels must be positive")
        self.widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.layer1 = _stage(widths[0], widths[0], blocks[0], stride=1)
        self.layer2 = _stage(widths[0], widths[1], blocks[1], stride=2)
        self.layer3 = _stage(widths[1], widths[2], blocks[2], stride=2)
        self.layer4 = _stage(widths[2], widths[3], blocks[3], stride=2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, BasicBlock):
                # Zero-init the last BN of each residual branch: every block starts as
                # identity, which trains from scratch more stably (Goyal et al. 2017).
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 feature map ``(batch, widths[3], rows / 32, cols / 32)``."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
