"""Wide ResNet (Zagoruyko & Komodakis, 2016, "Wide Residual Networks").

Parameter and buffer names and shapes match ``WideResNetBase`` of
dnn-mode-connectivity (Garipov et al., 2018), so its checkpoints load
unchanged: ``conv1``, ``layer{1,2,3}.<i>.{bn1,conv1,bn2,conv2}``,
``layer{1,2,3}.0.shortcut.0``, ``bn1`` and ``linear``.

Differences that leave the keys alone: ``conv1`` takes C input channels from
``input_shape``; the final pooling is adaptive (same as their
``avg_pool2d(8)`` on 32x32 images, and smaller images work); the final
BatchNorm uses torch's default momentum (theirs passes 0.9, which in torch's
convention keeps only 10% of the running average per step); residual sums and
ReLUs are not in-place.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..errors import UserError
from .simple import GlobalAvgPool, check_int, image_shape

__all__ = ["WideResNet", "wrn28x10"]


class WideBasic(nn.Module):
    """BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3 (strided), plus the shortcut.

    As in the reference, the stride sits on the second conv.
    """

    def __init__(self, in_planes: int, planes: int, dropout_rate: float, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()  # identity; keeps the key layout of the reference
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-k, ``(B, C, H, W)`` images -> ``(B, num_classes)`` logits.

    Stages of 16k, 32k, 64k channels with ``blocks`` WideBasic blocks each,
    strides 1, 2, 2 (on the first block of a stage).
    """

    def __init__(
        self, num_classes: int, in_channels: int, blocks: int, widen_factor: int, dropout_rate: float
    ) -> None:
        super().__init__()
        k = widen_factor
        stages = [16, 16 * k, 32 * k, 64 * k]
        self.in_planes = stages[0]
        self.conv1 = nn.Conv2d(in_channels, stages[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = self._wide_layer(stages[1], blocks, dropout_rate, stride=1)
        self.layer2 = self._wide_layer(stages[2], blocks, dropout_rate, stride=2)
        self.layer3 = self._wide_layer(stages[3], blocks, dropout_rate, stride=2)
        self.bn1 = nn.BatchNorm2d(stages[3])
        self.relu = nn.ReLU()
        self.avgpool = GlobalAvgPool()
        self.linear = nn.Linear(stages[3], num_classes)

    def _wide_layer(self, planes: int, blocks: int, dropout_rate: float, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout_rate, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, num_classes)``."""
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16k, H, W)
        x = self.layer2(x)  # (B, 32k, H/2, W/2)
        x = self.layer3(x)  # (B, 64k, H/4, W/4)
        x = self.relu(self.bn1(x))
        x = self.avgpool(x).flatten(start_dim=-3)  # (B, 64k)
        return self.linear(x)


def wrn28x10(
    num_classes: int,
    input_shape: tuple[int, ...],
    depth: int = 28,
    widen_factor: int = 10,
    dropout_rate: float = 0.0,
) -> nn.Module:
    """Wide ResNet, WRN-28-10 by default (about 36.5M parameters).

    ``depth`` must be 6n+4 (n WideBasic blocks per stage; 10, 16, 22, 28, ...),
    ``widen_factor`` an integer >= 1, ``dropout_rate`` in [0, 1).
    """
    depth = check_int("wrn28x10", "depth", depth, 10)
    if (depth - 4) % 6:
        raise UserError(f"model 'wrn28x10' needs depth 6n+4 (e.g. 10, 16, 22, 28); got {depth}")
    widen_factor = check_int("wrn28x10", "widen_factor", widen_factor, 1)
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, numbers.Real) or not 0.0 <= dropout_rate < 1.0:
        raise UserError(f"model 'wrn28x10' needs dropout_rate to be a number in [0, 1); got {dropout_rate!r}")
    channels, _, _ = image_shape("wrn28x10", input_shape)
    return WideResNet(num_classes, channels, (depth - 4) // 6, widen_factor, float(dropout_rate))
