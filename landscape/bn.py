"""Batch-norm statistics re-estimated for a point in weight space.

A point that was never trained (the middle of a curve, a grid point of a
plane) has no running statistics of its own, so they are recomputed from one
pass over the training data without augmentation, as the average of the
per-batch statistics weighted by each batch's size — what the papers' code
does (``update_bn`` of dnn-mode-connectivity, ``bn_update`` of swa and
swa_gaussian: momentum b / (n + b); Izmailov et al. 2018; Garipov et al.
2018). ``torch.optim.swa_utils.update_bn`` (momentum None) weighs every
batch alike instead, which gives a short last batch too much say.

One deliberate difference: only the batch-norm layers are put in train mode.
Dropout stays off, so the statistics describe the network as it is then
evaluated (for a network without dropout the results are identical).

Instance norm that keeps running statistics (``track_running_stats=True``)
reads them in eval mode as batch norm does, so it counts as a batch-norm
layer here: its statistics are the mean over the training images of each
image's own mean and (unbiased) variance, estimated batch by batch the same
way. In that pass it normalises each image by itself (its train mode), as
in training, so the layers after it get the statistics training gives
them; and the engine's one-batch population estimate, which relies on
train mode normalising by the statistics, does not apply to it
(:func:`instance_norms`).

A layer that the network keeps in eval mode when it is put in train mode
(a frozen pretrained stem, by an override of ``train()``) is not one: its
statistics are left as they are, as training leaves them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .errors import note_once
from .layout import image_layout

__all__ = ["bn_modules", "instance_norms", "bn_buffer_names", "has_batch_norm", "per_batch_norms", "note_per_batch_norms",
           "reestimate_bn", "population_bn", "bn_collecting",
           "sample_weighted"]


def bn_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The batch-norm layers of ``model`` that keep running statistics and
    gather them in training, with their names: instance-norm layers that keep
    them count too, and layers that ``model.train()`` leaves in eval mode do
    not (above; every module's mode is put back)."""
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (_BatchNorm, _InstanceNorm)) and m.track_running_stats]
    if not layers:
        return layers
    modes = {m: m.training for m in model.modules()}
    trained = {p: p.requires_grad for p in model.parameters()}  # an override of train() may freeze, too
    try:
        model.train()
        return [(n, m) for n, m in layers if m.training]
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in trained.items():
            p.requires_grad_(flag)


def instance_norms(model: nn.Module) -> list[str]:
    """The names of ``model``'s instance-norm layers that keep running
    statistics: whole-training-set passes in train mode normalise each image
    by itself there, not by the statistics, so such a network's statistics
    are estimated batch by batch and its curvature is not measured."""
    return [n or "(the model)" for n, m in bn_modules(model) if isinstance(m, _InstanceNorm)]


def bn_buffer_names(model: nn.Module, layers: list[tuple[str, _BatchNorm]] | None = None) -> set[str]:
    """The names (as ``named_buffers`` gives them) of the running statistics of
    :func:`bn_modules` (``layers``, when the caller has them): ``running_mean``,
    ``running_var``, ``num_batches_tracked``."""
    return {f"{name}.{b}" if name else b for name, _ in (bn_modules(model) if layers is None else layers)
            for b in ("running_mean", "running_var", "num_batches_tracked")}


def has_batch_norm(model: nn.Module) -> bool:
    return bool(bn_modules(model))


def per_batch_norms(model: nn.Module) -> list[str]:
    """The batch-norm layers without running statistics
    (``track_running_stats=False``): in eval mode too they normalise every
    batch by its own statistics, so what the network gives an image depends
    on the batch it is in (its size, its other images). Instance norm
    normalises each image alone and is not among them."""
    return [name or "(the model)" for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and not m.track_running_stats]


def note_per_batch_norms(model: nn.Module, batch_size: int) -> None:
    """Once per process and network: a note on stderr that ``model``'s
    :func:`per_batch_norms` make every metric depend on ``--batch-size``."""
    names = per_batch_norms(model)
    if not names:
        return
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    note_once(("per-batch norms", "\0".join((type(model).__qualname__, *names))),
              f"{shown} normalise{'s' if len(names) == 1 else ''} each batch by its own statistics (batch norm "
              f"with track_running_stats=False, in evaluation too): the metrics depend on --batch-size ({batch_size}) "
              f"and on which images share a batch")


@contextmanager
def bn_collecting(model: nn.Module, momentum: float | None) -> Iterator[list[tuple[str, _BatchNorm]]]:
    """Put the model in eval mode except its batch-norm layers (train mode, given
    ``momentum``); restore every mode and momentum on exit."""
    modes = {m: m.training for m in model.modules()}
    layers = bn_modules(model)
    momenta = {m: m.momentum for _, m in layers}
    try:
        model.eval()
        for _, m in layers:
            m.train()
            m.momentum = momentum
        yield layers
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, mom in momenta.items():
            m.momentum = mom


@contextmanager
def sample_weighted(layers: list[tuple[str, _BatchNorm]]) -> Iterator[None]:
    """Within it, each train-mode call of a batch-norm layer of ``layers``
    weighs its batch's statistics by the batch's size: momentum b / (n + b),
    n the samples the layer's statistics already hold (the first call, with
    n = 0, replaces the reset ones), counted for each copy of the statistics
    (the engine's points each have theirs, swapped in by ``functional_call``).
    A layer called twice per forward counts both calls; eval-mode calls count
    none. The caller restores the momenta (:func:`bn_collecting`)."""
    held: dict[int, int] = {}  # by the statistics' storage: the engine swaps in one copy a point

    def weigh(m, args):
        if not m.training:  # an eval-mode call (a probe of the input layout) leaves the statistics alone
            return
        b, key = args[0].shape[0], m.running_mean.data_ptr()
        if b == 0:  # an empty batch holds no statistics (torch leaves them as they are)
            return
        m.momentum = b / (held.get(key, 0) + b)
        held[key] = held.get(key, 0) + b

    handles = [m.register_forward_pre_hook(weigh) for _, m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> int:
    """Recompute ``model``'s batch-norm running statistics in place.

    ``batches`` yields inputs or ``(inputs, targets)`` pairs (training data,
    unaugmented). Statistics are reset, then averaged with each batch
    weighted by its size (:func:`sample_weighted`, as the papers' code), over
    at most ``max_batches`` batches, fed
    channels-last where the model takes them (:mod:`landscape.layout`). The
    model's modes and momenta are restored. Returns the number of batches used.
    """
    if hasattr(batches, "x_train") or not hasattr(batches, "__iter__"):  # before the statistics are reset
        from .errors import UserError

        hint = (": give its training batches, e.g. data.statistics_batches(1000)" if hasattr(batches, "x_train")
                else "")
        raise UserError(f"reestimate_bn takes batches (an iterable of inputs or (inputs, targets)), not a "
                        f"{type(batches).__name__}{hint}")
    layers = bn_modules(model)
    if not layers:
        return 0
    for _, m in layers:
        m.reset_running_stats()
    used = 0
    layout = None
    with bn_collecting(model, momentum=None), sample_weighted(layers):
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            layout = layout or image_layout(model, x)  # channels-last where the model takes it
            model(layout(x))
            used += 1
    return used


@torch.no_grad()
def population_bn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Set every batch-norm layer's statistics to the exact mean and
    population variance of its input over all of ``x`` (the training set),
    layer by layer in eval mode: each layer sees its input normalised by the
    earlier layers' exact statistics. Returns the eval-mode output on ``x``.

    This is the definition the engine's ``bn_stats="population"`` computes in
    one train-mode pass; it is written out here, the slow and obvious way, as
    its reference. Modes are restored.
    """
    layers = bn_modules(model)

    def hook(m, args):
        v = args[0].double()
        dims = [d for d in range(v.dim()) if d != 1]
        m.running_mean.copy_(v.mean(dim=dims))
        m.running_var.copy_(v.var(dim=dims, unbiased=False))
        m.num_batches_tracked.fill_(1)

    handles = [m.register_forward_pre_hook(hook) for _, m in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        return model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
