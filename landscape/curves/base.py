"""Curves as trainable anchor sets over any model's named parameters.

A curve with ``bends`` bends has A = bends + 2 anchors (control points) in
the flat parameter space of the model (:class:`landscape.weights.ParamSpace`)
and coefficient functions c(t) (A,) summing to one, so

    phi(t) = sum_a c_a(t) * anchor_a          (Garipov et al. 2018, eq. 1-2)

The two end anchors are the endpoints (fixed unless asked otherwise); the
bends are ``nn.Parameter`` rows, initialised evenly on the straight segment,
which makes phi(t) the straight line at the start. Nothing depends on the
architecture: parameters are matched by name through the ParamSpace.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from landscape.device import device_constant
from landscape.errors import UserError
from landscape.geometry import line_coefficients
from landscape.weights import ParamSpace

__all__ = ["Curve", "CURVES", "register_curve", "create_curve", "frozen_pin"]

CURVES: dict[str, type["Curve"]] = {}


def register_curve(cls: type["Curve"]) -> type["Curve"]:
    """Register a :class:`Curve` kind under its ``name``. Its coefficients
    must sum to 1 at every t (a point is an affine combination of the
    control points, so the ends are the networks): :meth:`Curve.speed`
    relies on their derivatives summing to 0."""
    CURVES[cls.name] = cls
    return cls


class Curve(nn.Module):
    """Control points over a ParamSpace; subclasses define the coefficients."""

    name: ClassVar[str] = ""

    def __init__(self, space: ParamSpace, start: torch.Tensor, end: torch.Tensor, bends: int = 1,
                 fix_start: bool = True, fix_end: bool = True):
        super().__init__()
        if bends < 0:
            raise UserError(f"--bends must be >= 0, got {bends}")
        if bends == 0 and fix_start and fix_end:
            raise UserError("a curve with no bends and both endpoints fixed has nothing to train; use --bends 1 or more")
        if start.shape != (space.numel,) or end.shape != (space.numel,):
            raise ValueError(f"endpoints must be ({space.numel},) vectors")
        self.space = space
        self.bends = bends
        self.fix_start = fix_start
        self.fix_end = fix_end
        n = bends + 2
        s = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
        init = ((1 - s) * start.double() + s * end.double()).to(start.dtype)  # (A, P) on the segment
        init[0], init[-1] = start, end  # exactly, not up to rounding
        free = [not fix_start] + [True] * bends + [not fix_end]
        self._order = [("free", sum(free[:a])) if f else ("fixed", a - sum(free[:a])) for a, f in enumerate(free)]
        self.free = nn.Parameter(init[[a for a in range(n) if free[a]]].clone())
        self.register_buffer("fixed", init[[a for a in range(n) if not free[a]]].clone())

    @property
    def num_anchors(self) -> int:
        return self.bends + 2

    def anchors(self) -> torch.Tensor:
        """The control points as an ``(A, P)`` matrix (differentiable in the free ones)."""
        rows = [self.free[i] if kind == "free" else self.fixed[i] for kind, i in self._order]
        return torch.stack(rows)

    @torch.no_grad()
    def load_anchors(self, anchors: torch.Tensor) -> None:
        """Set every control point from an ``(A, P)`` matrix (e.g. a checkpoint's)."""
        if tuple(anchors.shape) != (self.num_anchors, self.space.numel):
            raise UserError(f"expected anchors of shape {(self.num_anchors, self.space.numel)}, got {tuple(anchors.shape)}")
        for a, (kind, i) in enumerate(self._order):
            (self.free if kind == "free" else self.fixed)[i].copy_(anchors[a])

    # -- coefficient functions, defined by subclasses --------------------------------
    def coefficients(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (K,) in [0, 1] -> coefficients (K, A), each row summing to one."""
        raise NotImplementedError

    def line_coefficients(self, t: torch.Tensor) -> torch.Tensor:
        """The straight line between the curve's two ends at ``t``: (K,) ->
        (K, A) float64 on ``t``'s device, 1 - t and t on the first and last
        control points."""
        a = self.num_anchors
        return torch.as_tensor(line_coefficients(a, 0, a - 1, 1.0, t.cpu().numpy()), device=t.device)

    def derivative_coefficients(self, t: torch.Tensor) -> torch.Tensor:
        """d/dt of :meth:`coefficients`: (K,) -> (K, A)."""
        raise NotImplementedError

    def breaks(self) -> list[float]:
        """Points of [0, 1] between which the curve is smooth (for quadrature)."""
        return list(np.linspace(0.0, 1.0, 9))

    # -- points, speed, length ---------------------------------------------------------
    def points(self, t: torch.Tensor) -> torch.Tensor:
        """phi(t): (K,) -> (K, P), in the anchors' dtype: under autocast (``--amp``) too, where a bf16 matmul
        would round every weight and give batch norm bf16 parameters its CPU kernel refuses. ``t`` a list or an
        array is taken as float64, one number as one point."""
        if not isinstance(t, torch.Tensor):  # one number is one point
            t = torch.atleast_1d(torch.as_tensor(t, dtype=torch.float64, device=self.fixed.device))
        c = self.coefficients(t).to(self.fixed.dtype)
        with torch.autocast(self.fixed.device.type, enabled=False):
            return c @ self.anchors()

    def speed(self, t: torch.Tensor) -> torch.Tensor:
        """||phi'(t)||: (K,) -> (K,), in the anchors' dtype; differentiable.

        phi'(t) = sum_a c'_a(t) W_a, and the c'_a(t) sum to 0 (the
        coefficients sum to 1), so phi'(t) = sum_{a>0} c'_a(t) (W_a - W_0):
        its squared norm is d(t)^T G d(t) with G the Gram matrix of the
        anchors' differences from the first, (A-1) x (A-1) in float64. No
        K x P matrix is formed (128 quadrature nodes of a VGG16 were 7.7 GB),
        and the differences keep the precision a norm of weights would cancel."""
        W = self.anchors()
        diff = (W[1:] - W[:1]).double()
        gram = diff @ diff.T
        d = self.derivative_coefficients(t).double()[:, 1:]
        squared = ((d @ gram) * d).sum(-1)
        return squared.clamp(min=1e-300).sqrt().to(self.fixed.dtype)  # the floor: a finite gradient at rest

    def length(self, nodes_per_piece: int = 16) -> torch.Tensor:
        """Arc length, integral_0^1 ||phi'(t)|| dt, by Gauss-Legendre quadrature on
        each smooth piece (exact for a polygonal chain); differentiable."""
        t, w = quadrature(self.breaks(), nodes_per_piece, device=self.fixed.device)
        return (self.speed(t) * w.to(self.fixed.dtype)).sum()

    def arc_lengths(self, t: Sequence[float] | np.ndarray, nodes_per_piece: int = 16) -> np.ndarray:
        """Arc length from ``t[0]`` to each of the increasing ``t``, float64 (N,), starting at 0: Gauss-Legendre
        on every interval between neighbouring points, split at the curve's :meth:`breaks` (exact for a
        polygonal chain, whose speed jumps at a bend: a trapezoid of the speed sampled there takes one side)."""
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        if len(t) < 2 or (np.diff(t) < 0).any():
            raise ValueError("arc_lengths takes two or more increasing t")
        knots = np.unique(np.concatenate([t, [b for b in self.breaks() if t[0] < b < t[-1]]]))
        x, w = np.polynomial.legendre.leggauss(nodes_per_piece)
        half = 0.5 * np.diff(knots)[:, None]
        nodes = half * x + 0.5 * (knots[:-1] + knots[1:])[:, None]  # (intervals, nodes)
        with torch.no_grad():
            speed = self.speed(torch.as_tensor(nodes.reshape(-1), device=self.fixed.device))
        pieces = (speed.double().cpu().numpy().reshape(nodes.shape) * half * w).sum(axis=1)
        return np.concatenate([[0.0], np.cumsum(pieces)])[np.searchsorted(knots, t)]

    def describe(self) -> dict:
        return {"type": self.name, "bends": self.bends, "fix_start": self.fix_start, "fix_end": self.fix_end}

    def extra_repr(self) -> str:
        return f"bends={self.bends}, params={self.space.numel}, fix_start={self.fix_start}, fix_end={self.fix_end}"


def quadrature(breaks: list[float], nodes: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre nodes and weights on [0, 1] split at ``breaks``
    (made once per breaks, nodes and device: the arc-length objective asks every step)."""

    def make() -> torch.Tensor:
        x, w = np.polynomial.legendre.leggauss(nodes)
        ts, ws = [], []
        for a, b in zip(breaks[:-1], breaks[1:]):
            ts.append(0.5 * (b - a) * x + 0.5 * (a + b))
            ws.append(0.5 * (b - a) * w)
        return torch.tensor(np.stack([np.concatenate(ts), np.concatenate(ws)]), dtype=torch.float64)

    both = device_constant(("gauss-legendre", tuple(float(b) for b in breaks), nodes), device, make)
    return both[0], both[1]


def create_curve(name: str, space: ParamSpace, start: torch.Tensor, end: torch.Tensor, bends: int = 1,
                 fix_start: bool = True, fix_end: bool = True) -> Curve:
    """Build a registered curve (``bezier``, ``polychain``) between two flat endpoints."""
    name = name.lower() if isinstance(name, str) and name.lower() in CURVES else name  # Bezier, PolyChain too
    if name not in CURVES:
        raise UserError(f"unknown curve {name!r}; choose one of: {', '.join(sorted(CURVES))}")
    return CURVES[name](space, start, end, bends=bends, fix_start=fix_start, fix_end=fix_end)


def frozen_pin(free: nn.Parameter, space: ParamSpace) -> Callable[..., None] | None:
    """What keeps the parameters the network does not train
    (``space.frozen``) where the trainable control points or vertices
    ``free`` (n, P) hold them now: called after every optimiser step, it puts
    their coordinates back (momentum and weight decay move them otherwise).
    None when the network trains every parameter."""
    mask = space.trainable_mask(free.device)
    if mask is None or free.numel() == 0:
        return None
    keep = torch.nonzero(~mask).squeeze(1)  # indices, once: a boolean mask would wait for the GPU every step
    held = free.detach().index_select(1, keep)

    def pin(*_step) -> None:
        with torch.no_grad():
            free.index_copy_(1, keep, held)

    return pin
