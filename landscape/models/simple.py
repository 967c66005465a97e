"""Small models for quick experiments: ``mlp``, ``convnet`` and ``lenet5``.

Also home to the argument checks and the conv initialisation that the other
model files share, so that every factory rejects bad input the same way.

Every factory takes ``num_classes`` and ``input_shape`` (``(C, H, W)`` for
images, ``(D,)`` for feature vectors) from the dataset, and returns a module
mapping a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from ..errors import UserError

__all__ = ["mlp", "convnet", "lenet5"]


# ---------------------------------------------------------------------------
# Shared checks and initialisation (used by vgg, preresnet and wide_resnet).
# ---------------------------------------------------------------------------

def check_int(model: str, arg: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int, or raise :class:`UserError` if it is not an integer >= ``minimum``."""
    # bool is an int subclass, but `width=True` is a mistake, not a width of 1.
    if isinstance(value, bool):
        raise UserError(f"model {model!r} needs {arg} to be an integer >= {minimum}; got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise UserError(f"model {model!r} needs {arg} to be an integer >= {minimum}; got {value!r}") from None
    if number < minimum:
        raise UserError(f"model {model!r} needs {arg} to be an integer >= {minimum}; got {value!r}")
    return number


def image_shape(model: str, input_shape: tuple[int, ...], min_size: int = 1) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` from ``input_shape``, or raise :class:`UserError` for non-image input.

    ``min_size`` is the smallest height and width the model's poolings can take.
    """
    if len(input_shape) != 3:
        raise UserError(f"model {model!r} needs image input (C, H, W); got input shape {tuple(input_shape)}")
    channels, height, width = (int(s) for s in input_shape)
    if min(height, width) < min_size:
        raise UserError(
            f"model {model!r} needs images of at least {min_size}x{min_size}; got input shape {tuple(input_shape)}"
        )
    return channels, height, width


def he_normal_conv_(module: nn.Module) -> None:
    """Draw every Conv2d weight in ``module`` from N(0, 2 / (k*k*out_channels)), biases 0.

    This is the fan-out He initialisation (He et al., 2015, "Delving Deep into
    Rectifiers") that dnn-mode-connectivity's VGG and PreResNet use; keeping it
    makes freshly created models statistically match theirs.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GlobalAvgPool(nn.Module):
    """``(..., C, H, W) -> (..., C, 1, 1)``: the mean over each map, as
    ``nn.AdaptiveAvgPool2d(1)`` computes it, but written as a ``mean`` so that
    ``torch.vmap`` batches it (adaptive pooling has no batching rule for its
    ``as_strided_`` and falls back to one call per point). No parameters: the
    state dict is the same as with the adaptive layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def mlp(num_classes: int, input_shape: tuple[int, ...], hidden: int = 256, depth: int = 2) -> nn.Module:
    """Fully connected ReLU network: flatten, ``depth`` x (Linear, ReLU), Linear to classes.

    Works for any ``input_shape``: ``(B, *input_shape)`` is flattened to
    ``(B, prod(input_shape))``. ``depth=0`` gives multinomial logistic regression.
    """
    hidden = check_int("mlp", "hidden", hidden, 1)
    depth = check_int("mlp", "depth", depth, 0)
    features = math.prod(input_shape)
    # Flatten only the trailing input dims so the model also works on an
    # unbatched sample, e.g. under torch.vmap over the batch.
    layers: list[nn.Module] = [nn.Flatten(start_dim=-len(input_shape))]
    for _ in range(depth):
        layers += [nn.Linear(features, hidden), nn.ReLU()]
        features = hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Three 3x3 conv + BatchNorm + ReLU layers (w, 2w, 4w channels), two 2x2 max pools,
    global average pooling and a linear head. See :func:`convnet`."""

    def __init__(self, num_classes: int, channels: int, width: int) -> None:
        super().__init__()

        def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
            # No conv bias: the BatchNorm shift that follows would cancel it.
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *conv_bn_relu(channels, width),
            *conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *conv_bn_relu(2 * width, 4 * width),
            nn.MaxPool2d(2),
            # Global pooling makes the head independent of the image size.
            GlobalAvgPool(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)
        he_normal_conv_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""
        x = self.features(x)  # (B, 4w, 1, 1)
        return self.classifier(x.flatten(start_dim=-3))


def convnet(num_classes: int, input_shape: tuple[int, ...], width: int = 32) -> nn.Module:
    """Small BatchNorm CNN for 8x8 (sklearn digits), 28x28 (MNIST) and 32x32 images.

    conv3x3(C->w)+BN+ReLU, conv3x3(w->2w)+BN+ReLU, maxpool 2, conv3x3(2w->4w)+BN+ReLU,
    maxpool 2, global average pool, Linear(4w -> classes). With ``width=32`` on
    1x8x8 digits it has about 94k parameters. Needs images of at least 4x4.
    """
    width = check_int("convnet", "width", width, 1)
    channels, _, _ = image_shape("convnet", input_shape, min_size=4)
    return ConvNet(num_classes, channels, width)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998, "Gradient-based learning applied to document
    recognition") with ReLU and max pooling. See :func:`lenet5`."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = input_shape
        # In the original 32x32 layout conv1 sees 32x32 and conv2 sees 14x14.
        # A conv whose input is smaller gets padding 2 ("same" for a 5x5 kernel),
        # per dimension: MNIST 28x28 gets the classic padded first conv, and 8x8
        # digits stay large enough for both 5x5 kernels.
        pad1 = (2 if height < 32 else 0, 2 if width < 32 else 0)
        h1, w1 = (height + 2 * pad1[0] - 4) // 2, (width + 2 * pad1[1] - 4) // 2
        pad2 = (2 if h1 < 14 else 0, 2 if w1 < 14 else 0)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""
        x = self.features(x)  # (B, 16, h, w)
        return self.classifier(x.flatten(start_dim=-3))


def lenet5(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc classes (ReLU).

    On 32x32 inputs it is the original layout (16x5x5 features). A conv whose
    input is smaller than in that layout (conv1 below 32, conv2 below 14 pixels,
    checked per dimension) gets padding 2, so 28x28 gives the classic MNIST
    layout (16x5x5 features) and 8x8 gives 8 -> 4 -> 2 (16x2x2 features). The
    flatten size comes from a dummy forward pass. Needs images of at least 4x4.
    """
    shape = image_shape("lenet5", input_shape, min_size=4)
    return LeNet5(num_classes, shape)
