"""Named-tensor algebra: a model's parameters as one flat vector, and back.

Every landscape is ``points = coefficients @ anchors`` with anchors stacked as
rows of a ``(A, P)`` matrix over the model's P parameter entries. A
:class:`ParamSpace` fixes the order (the model's ``named_parameters``, matched
by name, never by position) and converts between state dicts and flat rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from .device import device_constant
from .errors import UserError

__all__ = ["ParamSpace", "stack_anchors", "gram_schmidt", "weight_norm_gains", "refuse_for_gradients"]


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside ``torch.compile``'s and (Distributed)DataParallel's
    wrappers, which a factory may return: checkpoints hold the plain
    network's state dict, and the toolkit batches points itself."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def refuse_unusable(model: nn.Module, source: object = "the network") -> None:
    """One line for a network the toolkit cannot evaluate at other weights:
    a TorchScript module (no forward hooks, no torch.func), one still in a
    DataParallel wrapper (torch.func refuses it) or torch.compile's (its
    parameters are named for the wrapper), one on the meta device (no
    values). ``load_model`` loads a compiled network through the module
    inside."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(f"{source} is a TorchScript module (torch.jit.script / trace), which cannot be evaluated at "
                        f"other weights (no forward hooks, no torch.func): pass the plain nn.Module")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise UserError(f"{source} is wrapped in {type(model).__name__}: pass the network inside it (.module); "
                        f"landscape batches the points on one device itself")
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
        raise UserError(f"{source} is compiled by torch.compile, whose parameters are named for the wrapper "
                        f"('_orig_mod.' ...) and whose backward takes no Hessian products: pass the network inside "
                        f"it (._orig_mod)")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise UserError(f"{source} has tensors on the meta device, which hold no values: build it on a real "
                        f"device (or model.to_empty(device='cpu') and load its weights)")


def weight_norm_gains(model: nn.Module) -> tuple[str, ...]:
    """The names of ``model``'s weight-norm magnitudes: g of
    ``torch.nn.utils.parametrizations.weight_norm`` (``...parametrizations.
    weight.original0``) and of the older ``torch.nn.utils.weight_norm``
    (``weight_g``). Shaped like the weight with every dimension but one of
    size 1, they are a gain a filter, not a filter of weights."""
    from torch.nn.utils.parametrizations import _WeightNorm
    from torch.nn.utils.weight_norm import WeightNorm

    gains = []
    for prefix, module in model.named_modules():
        head = f"{prefix}." if prefix else ""
        for tensor, chain in getattr(module, "parametrizations", {}).items():
            if any(isinstance(p, _WeightNorm) for p in chain) and hasattr(chain, "original0"):
                gains.append(f"{head}parametrizations.{tensor}.original0")
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                gains.append(f"{head}{hook.name}_g")
    named = {n for n, _ in model.named_parameters()}
    return tuple(n for n in gains if n in named)


def refuse_for_gradients(model: nn.Module, what: str, *, sparse_ok: bool = False, computed: bool = True) -> None:
    """One line for a layer whose weights ``what`` (training, a curve's fit, the
    Hessian) cannot differentiate as the toolkit does: an embedding with
    ``sparse=True`` (sparse gradients: weight decay, momentum, curves and
    Hessian products take dense ones only), and one with ``max_norm`` (its
    forward renormalises the weight in place, which a curve's point, a
    computed tensor, cannot take). ``sparse_ok``: plain SGD without weight
    decay, which takes sparse gradients. ``computed=False``: the weights are
    the module's own (training), where max_norm is fine."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            kind = f"the network's {name or 'embedding'} ({type(m).__name__})"
            if m.sparse and not sparse_ok:
                raise UserError(f"{kind} has sparse=True, whose sparse gradients {what} cannot take: build it "
                                f"with sparse=False (the same results, dense gradients)")
            if m.max_norm is not None and computed:
                raise UserError(f"{kind} has max_norm={m.max_norm:g}, which renormalises its weight in place in "
                                f"every forward; {what} forms the weights as computed tensors, which cannot be "
                                f"changed in place: build it without max_norm (or renormalise in forward, "
                                f"out of place)")


@dataclass(frozen=True)
class ParamSpace:
    """The ordered parameter names and shapes of a model.

    ``flatten`` turns a state dict (or module) into a ``(P,)`` vector,
    ``unflatten`` turns ``(..., P)`` into named views ``(..., *shape)``.
    ``frozen`` names the parameters the model does not train
    (``requires_grad=False``): they are part of every point, but curves and
    simplexes keep them where they start and the weight-decay term leaves
    them out, as training does; random directions (planes, rays, random
    subspaces) and the Hessian (sharpness) leave them out too.
    ``gains`` names the magnitudes of weight-normalised weights (weight
    norm's g, one scale a filter): filter normalisation and ``--ignore
    biasbn`` treat them as they treat batch-norm scales.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    frozen: tuple[str, ...] = ()
    gains: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: nn.Module) -> "ParamSpace":
        refuse_unusable(model)
        names, shapes, frozen = [], [], []
        for name, p in model.named_parameters():
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise UserError(f"the network's lazy layer {name.rpartition('.')[0] or name} has no shape yet: run "
                                f"one forward of an input batch first (under torch.no_grad())")
            names.append(name)
            shapes.append(tuple(p.shape))
            if not p.requires_grad:
                frozen.append(name)
        if not names:
            raise UserError(f"{type(model).__name__} has no parameters")
        return cls(tuple(names), tuple(shapes), tuple(frozen), weight_norm_gains(model))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, state: Mapping[str, torch.Tensor] | nn.Module, *, source: str = "state dict",
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(P,)`` vector of the named parameters in ``state`` (a state dict's
        extra keys, e.g. buffers, are ignored; a module's parameters must be
        this space's, none more)."""
        if isinstance(state, nn.Module):
            state = dict(state.named_parameters())
            extra = [name for name in state if name not in set(self.names)]
            if extra:
                raise UserError(f"{source}: parameter '{extra[0]}' is not one of the model's (another architecture)")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            if name not in state:
                raise UserError(f"{source}: parameter '{name}' is missing")
            t = state[name].detach()
            if tuple(t.shape) != shape:
                raise UserError(f"{source}: parameter '{name}' has shape {tuple(t.shape)}, expected {shape}")
            parts.append(t.reshape(-1).to(dtype or t.dtype))
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(..., P)`` -> ``{name: (..., *shape)}`` views of ``flat``."""
        lead = flat.shape[:-1]
        if flat.shape[-1] != self.numel:
            raise ValueError(f"expected a last dimension of {self.numel}, got {flat.shape[-1]}")
        pieces = torch.split(flat, self.sizes, dim=-1)
        # the shape as a tuple: a 0-dim parameter of a 1-D vector is reshape(()), which reshape() is not
        return {n: p.reshape((*lead, *s)) for n, p, s in zip(self.names, pieces, self.shapes)}

    @cached_property
    def _trainable(self) -> torch.Tensor | None:
        if not self.frozen:
            return None
        frozen = set(self.frozen)
        with torch.inference_mode(False):  # usable in a graph whichever call made it
            return torch.cat([torch.full((n,), name not in frozen, dtype=torch.bool)
                              for name, n in zip(self.names, self.sizes)])

    def trainable_mask(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """``(P,)`` bool, True at the coordinates of trained parameters; None
        when every parameter is trained (the usual case). Built once per
        space: the curve fit's weight-decay term asks for it every step."""
        if self._trainable is None:
            return None
        return device_constant(("trainable mask", self), device, lambda: self._trainable)  # one copy a device

    def trained(self) -> "ParamSpace":
        """The space of the trained parameters alone, in order (this space when
        none is frozen): the coordinates of :meth:`trainable_mask`."""
        if not self.frozen:
            return self
        frozen = set(self.frozen)
        kept = [(n, s) for n, s in zip(self.names, self.shapes) if n not in frozen]
        if not kept:
            raise UserError("the network trains none of its parameters (all have requires_grad=False)")
        return ParamSpace(tuple(n for n, _ in kept), tuple(s for _, s in kept),
                          gains=tuple(n for n in self.gains if n not in frozen))

    def squared_norm(self, points: torch.Tensor) -> torch.Tensor:
        """``(..., P) -> (...)``: the squared norm over the trained
        parameters, which the weight-decay term 0.5 * wd * ||w||^2 decays."""
        mask = self.trainable_mask(points.device)
        return points.pow(2).sum(dim=-1) if mask is None else points.pow(2).mul(mask).sum(dim=-1)

    def describe(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}


def stack_anchors(space: ParamSpace, states: Sequence[Mapping[str, torch.Tensor] | nn.Module],
                  sources: Sequence[str] | None = None) -> torch.Tensor:
    """Stack state dicts (or modules) as the rows of an ``(A, P)`` anchor matrix."""
    sources = sources or [f"anchor {i}" for i in range(len(states))]
    return torch.stack([space.flatten(s, source=src) for s, src in zip(states, sources)])


def gram_schmidt(vectors: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
    """Orthonormalise the rows of ``vectors`` (n, P) in float64; returns (n, P) float64.

    A row whose part orthogonal to the previous ones is below ``rtol`` times
    its own norm is refused: with float32 weights, rounding alone leaves a
    residue of about 1e-7 of the norm, which is no direction.
    """
    basis: list[torch.Tensor] = []
    for v in vectors.double():
        scale = v.norm()
        for b in basis:
            v = v - (v @ b) * b
        norm = v.norm()
        if norm <= rtol * scale or norm == 0:
            raise UserError("the points are (nearly) collinear: cannot build an orthonormal basis")
        basis.append(v / norm)
    return torch.stack(basis)
