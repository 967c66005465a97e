"""Builders of anchor sets: planes through three points, rays from a centre.

Every landscape is ``points = coefficients @ anchors``:

- a plane through a, b, c: anchors (a, u, v), coefficients (1, x, y), with
  u, v an orthonormal basis (Gram-Schmidt, float64) of span(b - a, c - a);
- rays from a centre w: anchors (w, d_1 .. d_n), coefficients (1, 0.., s, ..0);
- the line through X and Y: anchors (X, Y), coefficients (1 - s/L, s/L).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError
from .weights import ParamSpace, gram_schmidt

__all__ = ["PlaneBasis", "plane_basis", "project", "plane_grid", "plane_coefficients",
           "random_directions", "filter_normalize", "ray_coefficients", "line_coefficients"]


@dataclass
class PlaneBasis:
    """Origin (P,) and orthonormal axes u, v (P,), all float64."""

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor

    def anchors(self, dtype=torch.float32) -> torch.Tensor:
        """(3, P) anchor matrix (origin, u, v) for coefficients (1, x, y)."""
        return torch.stack([self.origin, self.u, self.v]).to(dtype)


def plane_basis(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> PlaneBasis:
    """The plane through a, b, c: origin a, u along b - a, v towards c.

    (The papers take a, b, c = start, end, bend, so the segment lies on the
    x axis and the bend above it.)
    """
    a64, b64, c64 = (t.detach().double() for t in (a, b, c))
    if torch.equal(a64, b64):
        raise UserError("the first two points are identical: they span no plane")
    u, v = gram_schmidt(torch.stack([b64 - a64, c64 - a64]))
    return PlaneBasis(origin=a64, u=u, v=v)


def project(basis: PlaneBasis, points: torch.Tensor) -> np.ndarray:
    """Plane coordinates (M, 2) of points (M, P): ((p - origin) . u, (p - origin) . v)."""
    d = points.detach().double().to(basis.origin.device) - basis.origin
    return torch.stack([d @ basis.u, d @ basis.v], dim=-1).cpu().numpy()


def plane_grid(xy: np.ndarray, grid: int = 21, margin: float = 0.2,
               xrange: tuple[float, float] | None = None,
               yrange: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes x (G,), y (G,) covering the points ``xy`` (M, 2) with a margin
    of ``margin`` times their extent on each side (the papers' 0.2), unless
    explicit ranges are given."""
    if grid < 2:
        raise UserError(f"--grid must be at least 2, got {grid}")
    if not margin >= 0:
        raise UserError(f"--margin must be at least 0 (a fraction of the points' extent), got {margin}")
    for flag, given in (("--xrange", xrange), ("--yrange", yrange)):
        if given is not None and not (np.all(np.isfinite(given)) and given[1] > given[0]):
            raise UserError(f"{flag} needs finite LO < HI, got {given[0]} {given[1]}")
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    ext = np.maximum(hi - lo, 1e-12)
    x0, x1 = xrange if xrange is not None else (lo[0] - margin * ext[0], hi[0] + margin * ext[0])
    y0, y1 = yrange if yrange is not None else (lo[1] - margin * ext[1], hi[1] + margin * ext[1])
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"empty plane range x [{x0}, {x1}], y [{y0}, {y1}]")
    return np.linspace(x0, x1, grid), np.linspace(y0, y1, grid)


def plane_coefficients(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(G*G, 3) coefficients (1, x_i, y_j) in row-major [i, j] order."""
    xx, yy = np.meshgrid(x, y, indexing="ij")
    return np.stack([np.ones(xx.size), xx.ravel(), yy.ravel()], axis=1)


def random_directions(numel: int, n: int, seed: int) -> torch.Tensor:
    """n Gaussian directions (n, P) from N(0, I), each scaled to unit norm
    (Izmailov et al. 2018: w(t) = w + t d / ||d||)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, numel, generator=gen, dtype=torch.float32)
    return d / d.norm(dim=1, keepdim=True)


def filter_normalize(directions: torch.Tensor, center: torch.Tensor, space: ParamSpace) -> torch.Tensor:
    """Filter normalisation (Li et al. 2018): in every weight tensor with two or
    more dimensions, each filter (slice along dim 0) of a direction is scaled
    to the norm of the matching filter of ``center``; biases and batch-norm
    parameters (one-dimensional tensors) are zeroed. (n, P) -> (n, P)."""
    out = directions.clone()
    pieces = dict(zip(space.names, torch.split(out, space.sizes, dim=1)))  # views (n, size)
    weights = space.unflatten(center.to(out.dtype))
    for name, shape in zip(space.names, space.shapes):
        piece = pieces[name]
        if len(shape) < 2:
            piece.zero_()
            continue
        d = piece.view(out.shape[0], shape[0], -1)  # (n, filters, rest)
        w = weights[name].reshape(shape[0], -1)  # (filters, rest)
        d.mul_(w.norm(dim=1)[None, :, None] / (d.norm(dim=2, keepdim=True) + 1e-10))
    return out


def ray_coefficients(n_anchors: int, center: int, direction_rows: list[int], distances: np.ndarray) -> np.ndarray:
    """(n_dirs * S, n_anchors) coefficients for centre + s * d_i, ray-major."""
    rows = []
    for r in direction_rows:
        for s in distances:
            c = np.zeros(n_anchors)
            c[center] = 1.0
            c[r] += s
            rows.append(c)
    return np.array(rows)


def line_coefficients(n_anchors: int, first: int, second: int, length: float, distances: np.ndarray) -> np.ndarray:
    """(L, n_anchors) coefficients for X + s (Y - X) / ||Y - X|| at distances s."""
    out = np.zeros((len(distances), n_anchors))
    out[:, first] = 1.0 - distances / length
    out[:, second] += distances / length
    return out
