"""VGG-16 and VGG-19, with and without BatchNorm (Simonyan & Zisserman, 2015,
"Very Deep Convolutional Networks for Large-Scale Image Recognition").

Parameter and buffer names and shapes match ``VGGBase`` of
dnn-mode-connectivity (Garipov et al., 2018, "Loss Surfaces, Mode
Connectivity, and Fast Ensembling of DNNs"), so its checkpoints load with
``load_state_dict`` unchanged: ``layer_blocks.<block>.<entry>.*`` for convs and
BatchNorms and ``classifier.{1,4,6}.*`` for the linear layers.

Differences that leave the keys alone: the first conv takes C input channels
from ``input_shape``; a pooling is skipped when the map is already too small to
halve (so 8x8 and 28x28 inputs work); a map still larger than 1x1 after the
last block is average-pooled to 1x1; and ReLUs are not in-place.
"""

from __future__ import annotations

import torch
from torch import nn

from .simple import he_normal_conv_, image_shape

__all__ = ["VGG", "vgg16", "vgg16bn", "vgg19", "vgg19bn", "vgg16bn_dnnmc", "vgg19bn_dnnmc"]

# Output channels of each conv, grouped into the blocks that end in a 2x2 max pool.
CONFIGS: dict[int, list[list[int]]] = {
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGG(nn.Module):
    """VGG network, ``(B, C, H, W)`` images -> ``(B, num_classes)`` logits.

    ``layer_blocks[b]`` holds, per conv of block ``b``, the Conv2d followed (with
    ``batch_norm``) by its BatchNorm2d, so with BatchNorm a block has two entries
    per activation. ``activation_blocks`` and ``poolings`` mirror the reference
    layout; they have no parameters.
    """

    def __init__(self, num_classes: int, in_channels: int, depth: int = 16, batch_norm: bool = False,
                 reference_zip: bool = False) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        # dnn-mode-connectivity's forward zips a block's layers with its activations, one per conv: with batch
        # norm it runs the first half of the layers only (conv, ReLU, BN, ReLU, conv, ReLU, ... : its issue #2).
        # ``reference_zip`` builds that network: the layers it runs, under the names they have there.
        self.reference_zip = reference_zip and batch_norm
        self.depth = depth
        self.layer_blocks = nn.ModuleList()
        self.activation_blocks = nn.ModuleList()
        self.poolings = nn.ModuleList()
        channels = in_channels
        for block in CONFIGS[depth]:
            layers = nn.ModuleList()
            activations = nn.ModuleList()
            for out_channels in block:
                layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                activations.append(nn.ReLU())
                channels = out_channels
            if self.reference_zip:
                del layers[len(activations):]  # never run there; the first layers keep their indices
            self.layer_blocks.append(layers)
            self.activation_blocks.append(activations)
            self.poolings.append(nn.MaxPool2d(kernel_size=2, stride=2))

        # Indices 1, 4 and 6 are the Linear layers, as in the reference checkpoints.
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        # Only convs get the custom init in the reference; BN and Linear keep torch defaults.
        he_normal_conv_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, num_classes)``."""
        per_conv = 1 if self.reference_zip or not self.batch_norm else 2
        for layers, activations, pooling in zip(self.layer_blocks, self.activation_blocks, self.poolings):
            for i, activation in enumerate(activations):
                for layer in layers[i * per_conv:(i + 1) * per_conv]:  # conv, then BN if any
                    x = layer(x)
                x = activation(x)
            # A 2x2 pool cannot halve a side of 1; skipping it lets small images
            # (8x8 digits, 28x28 MNIST) through the five blocks.
            if x.shape[-2] >= 2 and x.shape[-1] >= 2:
                x = pooling(x)
        if x.shape[-2] > 1 or x.shape[-1] > 1:
            # Images larger than 32x32 leave a map bigger than 1x1; the classifier expects 512 features.
            x = x.mean(dim=(-2, -1), keepdim=True)  # global mean: vmap batches it (adaptive pooling it does not)
        x = x.flatten(start_dim=-3)  # (B, 512)
        return self.classifier(x)

    def unrun_reference_key(self, key: str) -> bool:
        """Whether ``key`` of a dnn-mode-connectivity VGG-BN state dict is a layer its forward never runs
        (left out of this network with ``reference_zip``)."""
        return self.reference_zip and never_run_by_reference(self.depth, key)


def never_run_by_reference(depth: int, key: str) -> bool:
    """Whether ``key`` of a VGG-BN state dict (``layer_blocks.<block>.<j>.*``) is a layer dnn-mode-connectivity's
    forward never runs: its block's layers past the first, one per conv."""
    parts = key.split(".")
    if not (len(parts) > 3 and parts[0] == "layer_blocks" and parts[1].isdigit() and parts[2].isdigit()
            and int(parts[1]) < len(CONFIGS[depth])):
        return False
    return int(parts[2]) >= len(CONFIGS[depth][int(parts[1])])


def reference_zip_state(depth: int, state: dict[str, torch.Tensor]) -> bool | None:
    """Whether a VGG-BN state dict is dnn-mode-connectivity's (keys optionally behind one leading name: a
    CurveNet's ``net.``, a wrapper's ``model.``): True when every batch norm its forward never runs still holds
    the statistics a batch norm starts with (running mean 0, variance 1) while one it runs holds others, False
    when a never-run one holds others (a network that ran every layer), None when that cannot be told (no
    such statistics, other names, or a network never trained, every batch norm as it started)."""
    never, ran = [], []
    for key, value in state.items():
        name = key if key.startswith("layer_blocks.") else key.split(".", 1)[-1]
        if not (name.startswith("layer_blocks.") and name.endswith(("running_mean", "running_var"))):
            continue
        first = 0.0 if name.endswith("running_mean") else 1.0
        (never if never_run_by_reference(depth, name) else ran).append(bool((value == first).all()))
    if not never:
        return None
    if not all(never):
        return False
    return True if ran and not all(ran) else None


def _vgg(name: str, num_classes: int, input_shape: tuple[int, ...], depth: int, batch_norm: bool,
         reference_zip: bool = False) -> nn.Module:
    channels, _, _ = image_shape(name, input_shape)
    return VGG(num_classes, channels, depth=depth, batch_norm=batch_norm, reference_zip=reference_zip)


def vgg16(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-16 without BatchNorm (13 convs + 3 linears, about 15M parameters)."""
    return _vgg("vgg16", num_classes, input_shape, 16, False)


def vgg16bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-16 with a BatchNorm after every conv."""
    return _vgg("vgg16bn", num_classes, input_shape, 16, True)


def vgg19(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-19 without BatchNorm (16 convs + 3 linears, about 20M parameters)."""
    return _vgg("vgg19", num_classes, input_shape, 19, False)


def vgg19bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-19 with a BatchNorm after every conv."""
    return _vgg("vgg19bn", num_classes, input_shape, 19, True)


def vgg16bn_dnnmc(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-16 with batch norm as dnn-mode-connectivity's code runs it: in each block the first conv, ReLU,
    its BatchNorm, ReLU, then the next convs, each with a ReLU (8 of the 13 convs and 5 of the 13 batch norms;
    its forward zips a block's layers with one activation per conv). Its VGG16BN checkpoints are this network."""
    return _vgg("vgg16bn_dnnmc", num_classes, input_shape, 16, True, reference_zip=True)


def vgg19bn_dnnmc(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-19 with batch norm as dnn-mode-connectivity's code runs it (as :func:`vgg16bn_dnnmc`)."""
    return _vgg("vgg19bn_dnnmc", num_classes, input_shape, 19, True, reference_zip=True)
