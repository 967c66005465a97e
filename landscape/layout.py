"""Channels-last image batches, where the network takes them.

The CPU's convolutions (oneDNN) run faster on channels-last (NHWC) tensors,
and a convolution hands its input's layout on to the layers after it. So
every pass over image data — the engine's, training's, batch-norm
re-estimation's, ``evaluate_model``'s — feeds its batches channels-last,
except to a network that reads an activation's memory as NCHW
(``x.view(x.size(0), -1)`` after a convolution, as the papers' VGG and
PreResNet do), which channels-last strides make fail: it gets NCHW.
``bench/train_layout.py`` measures the gain in training.

The environment variable ``LANDSCAPE_CHANNELS_LAST=0`` (or :data:`ENABLED`
set False) turns it off everywhere: for a network that would compute
something else on channels-last tensors without failing (one reading raw
memory through ``as_strided``, say), or to compare the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ENABLED", "to_channels_last", "takes_channels_last", "image_layout"]

ENABLED = os.environ.get("LANDSCAPE_CHANNELS_LAST", "1").strip() != "0"


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., C, H, W) with channels-last strides in its last three
    dimensions: 4-D images or weights, or (K, O, I, kh, kw) stacks of K
    points' conv weights, each slice channels-last.

    Copied into fresh storage whenever the strides are not exactly these,
    where ``contiguous(memory_format=channels_last)`` keeps a tensor's strides
    when a size-1 dimension makes it count as channels-last already (one
    channel, as digits and MNIST images and a first layer's weights; K = 1).
    A convolution picks its output's layout from its input's and weight's
    strides: given one-channel images and first-layer weights both in NCHW
    strides it writes NCHW, and the layers after it run NCHW. Batch norm's
    rounding also follows the layout, so in the engine a point's values would
    otherwise depend on how many points share its pass."""
    n = x.dim()
    lead = tuple(range(n - 3))
    out = x.new_empty(*x.shape[:-3], x.shape[-2], x.shape[-1], x.shape[-3]).permute(*lead, n - 1, n - 3, n - 2)
    if x.stride() == out.stride():
        return x
    return out.copy_(x)


def takes_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` runs on the images ``x`` (a few) laid out channels-last:
    False when :data:`ENABLED` is off, for inputs that are not (N, C, H, W)
    images, and for a network that reads an activation's memory as NCHW
    (``x.view(x.size(0), -1)`` after a convolution, common in research code),
    which fails on channels-last strides, or that fails on them in any other
    way (a check of its own that its input is contiguous, say). One forward in eval mode without gradients, on the model's
    device, every module's mode restored: no batch-norm statistics or weights
    change."""
    if not ENABLED or x.dim() != 4:
        return False
    where = next(iter(model.parameters()), None)
    x = x[:2] if where is None else x[:2].to(where.device)
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.inference_mode():
            model.eval()
            model(to_channels_last(x))
    except Exception:  # noqa: BLE001  (any failure: the NCHW passes then meet it, or not, as before)
        return False
    finally:
        for m, mode in modes.items():
            m.training = mode
    return True


def image_layout(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """What to apply to ``model``'s input batches, decided on ``x`` (one of
    them): :func:`to_channels_last` where :func:`takes_channels_last`, else
    nothing."""
    if takes_channels_last(model, x):
        return to_channels_last
    return lambda batch: batch
