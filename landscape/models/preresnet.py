"""Pre-activation ResNet for CIFAR-sized images (He et al., 2016, "Identity
Mappings in Deep Residual Networks").

Parameter and buffer names and shapes match ``PreResNetBase`` of
dnn-mode-connectivity (Garipov et al., 2018), so its checkpoints load
unchanged: ``conv1``, ``layer{1,2,3}.<i>.{bn,conv}{1,2,3}``,
``layer{1,2,3}.0.downsample.0``, ``bn`` and ``fc``.

Differences that leave the keys alone: ``conv1`` takes C input channels from
``input_shape``; the final pooling is adaptive (same as their ``AvgPool2d(8)``
on 32x32 images, and smaller images work); residual sums and ReLUs are not
in-place, so the model runs under ``torch.func.functional_call`` + ``vmap``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .simple import GlobalAvgPool, check_int, he_normal_conv_, image_shape

__all__ = ["PreResNet", "preresnet", "preresnet20", "preresnet56", "preresnet110", "preresnet164"]


class BasicBlock(nn.Module):
    """Two pre-activated 3x3 convs: BN-ReLU-conv, BN-ReLU-conv, plus the shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class Bottleneck(nn.Module):
    """Pre-activated 1x1 (reduce), 3x3, 1x1 (expand x4) convs, plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreResNet(nn.Module):
    """PreResNet, ``(B, C, H, W)`` images -> ``(B, num_classes)`` logits.

    Three stages of ``blocks`` blocks with 16, 32, 64 planes (times the block's
    expansion at the output), strides 1, 2, 2.
    """

    def __init__(self, num_classes: int, in_channels: int, block: type[BasicBlock | Bottleneck], blocks: int) -> None:
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 16, blocks, stride=1)
        self.layer2 = self._make_layer(block, 32, blocks, stride=2)
        self.layer3 = self._make_layer(block, 64, blocks, stride=2)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU()
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(64 * block.expansion, num_classes)

        he_normal_conv_(self)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # A 1x1 projection where the shortcut must change shape; a Sequential
            # so the key is `downsample.0.weight`, as in the reference.
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, num_classes)``."""
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16e, H, W)
        x = self.layer2(x)  # (B, 32e, H/2, W/2)
        x = self.layer3(x)  # (B, 64e, H/4, W/4)
        x = self.relu(self.bn(x))
        x = self.avgpool(x).flatten(start_dim=-3)  # (B, 64e)
        return self.fc(x)


def _build(name: str, num_classes: int, input_shape: tuple[int, ...], depth: object) -> PreResNet:
    depth = check_int(name, "depth", depth, 8)
    if depth >= 44:
        if (depth - 2) % 9:
            raise UserError(f"model {name!r} needs depth 9n+2 when depth >= 44 (e.g. 56, 110, 164); got {depth}")
        block, blocks = Bottleneck, (depth - 2) // 9
    else:
        if (depth - 2) % 6:
            raise UserError(f"model {name!r} needs depth 6n+2 when depth < 44 (e.g. 8, 14, 20, 32); got {depth}")
        block, blocks = BasicBlock, (depth - 2) // 6
    channels, _, _ = image_shape(name, input_shape)
    return PreResNet(num_classes, channels, block, blocks)


def preresnet(num_classes: int, input_shape: tuple[int, ...], depth: int = 20) -> nn.Module:
    """PreResNet of the given depth.

    ``depth >= 44`` uses Bottleneck blocks and must be 9n+2 (56, 110, 164, ...);
    smaller depths use BasicBlocks and must be 6n+2 (8, 14, 20, 26, 32, 38), with
    n blocks per stage.
    """
    return _build("preresnet", num_classes, input_shape, depth)


def preresnet20(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """PreResNet-20: BasicBlocks, 3 per stage (about 0.27M parameters)."""
    return _build("preresnet20", num_classes, input_shape, 20)


def preresnet56(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """PreResNet-56: Bottlenecks, 6 per stage."""
    return _build("preresnet56", num_classes, input_shape, 56)


def preresnet110(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """PreResNet-110: Bottlenecks, 12 per stage."""
    return _build("preresnet110", num_classes, input_shape, 110)


def preresnet164(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """PreResNet-164: Bottlenecks, 18 per stage (about 1.7M parameters)."""
    return _build("preresnet164", num_classes, input_shape, 164)
