"""Builders of anchor sets: planes through three points, rays from a centre.

Every landscape is ``points = coefficients @ anchors``:

- a plane through a, b, c: anchors (a, u, v), coefficients (1, x, y), with
  u, v an orthonormal basis (Gram-Schmidt, float64) of span(b - a, c - a);
- a random plane around w (Li et al. 2018): anchors (w, d_1, d_2), two random
  (filter-normalised) directions, not orthogonalised;
- a training trajectory's plane (Li et al. 2018): anchors (w_final, p_1, p_2),
  the first two principal directions of the checkpoints' w_i - w_final;
- rays from a centre w: anchors (w, d_1 .. d_n), coefficients (1, 0.., s, ..0);
- the line through X and Y: anchors (X, Y), coefficients (1 - s/L, s/L).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError, check_number, check_whole
from .weights import ParamSpace, gram_schmidt

MIN_TRAJECTORY = 3  # checkpoints a trajectory's plane needs (two axes and a point off the line)
PATH_OFF_SHARE = 0.01  # a path farther than this share of a plane's grid from the plane is said to be projected

__all__ = ["PlaneBasis", "plane_basis", "random_plane_basis", "trajectory_basis", "project", "plane_grid",
           "plane_coefficients", "random_directions", "filter_normalize", "ray_coefficients", "line_coefficients",
           "NORMALIZATIONS", "check_normalize", "project_with_distance", "weight_mask", "gains_fixed"]

NORMALIZATIONS = ("gaussian", "filter")


def check_normalize(normalize: str) -> None:
    """One line for a normalisation of random directions that is not one of :data:`NORMALIZATIONS`."""
    if normalize not in NORMALIZATIONS:
        raise UserError(f"--normalize {normalize!r}: unknown normalisation; choose one of: "
                        f"{', '.join(NORMALIZATIONS)}")


@dataclass
class PlaneBasis:
    """Origin (P,) and axes u, v (P,), all float64: the plane's points are
    origin + x u + y v. The axes of :func:`plane_basis` and
    :func:`trajectory_basis` are orthonormal, those of
    :func:`random_plane_basis` are two random directions as drawn."""

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    orthonormal: bool = True

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


def random_plane_basis(center: torch.Tensor, space: ParamSpace, normalize: str = "filter",
                       seed: int = 0) -> PlaneBasis:
    """The plane around ``center`` (P,) spanned by two random directions (Li
    et al. 2018, "Visualizing the loss landscape of neural nets"):
    :func:`random_directions` ``(P, 2, seed)`` (the directions of ``rays
    --directions 2`` with the same seed), filter-normalised to ``center`` with
    ``normalize="filter"`` (biases and batch-norm parameters stay put), zero on
    the parameters the network does not train.
    The directions are not orthogonalised; in many dimensions they are
    nearly orthogonal anyway."""
    check_normalize(normalize)
    c = center.detach().reshape(-1)
    d = random_directions(c.numel(), 2, seed, space.trainable_mask()).to(c.device)
    if normalize == "filter":
        d = filter_normalize(d, c, space)
    if not bool((d.norm(dim=1) > 0).all()):
        raise UserError("filter normalisation left a zero direction: the model has no weight with two or more "
                        "dimensions (use --normalize gaussian)")
    c64, d64 = c.double(), d.double()
    if torch.linalg.matrix_rank(d64 @ d64.T) < 2:
        raise UserError("the two random directions are parallel: they span no plane")
    return PlaneBasis(origin=c64, u=d64[0], v=d64[1], orthonormal=False)


def trajectory_basis(points: torch.Tensor, chunk: int | None = None,
                     mask: torch.Tensor | None = None) -> tuple[PlaneBasis, np.ndarray]:
    """The plane of a training trajectory (Li et al. 2018, sec. 7): origin
    the last point of ``points`` (n, P), axes the first two principal
    directions of the rows ``w_i - w_last`` (centred, as their PCA), and the
    fraction of the rows' variance each explains (2,).

    Computed in float64 from the n x n Gram matrix, ``chunk`` columns at a
    time (by default as many as make 2^22 float64 entries), so a long
    trajectory of a large model needs no float64 copy of it. Signs are
    fixed so that the first point has non-negative coordinates. The shares
    are of the variance about the points' mean (the PCA's plane passes
    through it; the plane returned is the parallel one through the last
    point, as Li et al. draw it). With ``mask`` (P,) bool, only the
    coordinates it keeps enter the PCA, and the axes are zero elsewhere
    (Li et al.'s ``--ignore biasbn``: :func:`weight_mask`)."""
    points = points.detach()
    n, numel = points.shape
    chunk = chunk or max(1, (1 << 22) // n)
    if n < MIN_TRAJECTORY:
        raise UserError(f"a trajectory's plane needs at least {MIN_TRAJECTORY} checkpoints, got {n}")
    last = points[-1].double()

    keep = None if mask is None else mask.to(points.device, torch.float64)

    def centred(j: int) -> torch.Tensor:  # (n, chunk) columns of the centred rows w_i - w_last
        x = points[:, j:j + chunk].double() - last[j:j + chunk]
        x = x - x.mean(dim=0)
        return x if keep is None else x * keep[j:j + chunk]

    gram = torch.zeros(n, n, dtype=torch.float64, device=points.device)
    for j in range(0, numel, chunk):
        x = centred(j)
        gram += x @ x.T
    eig, vec = torch.linalg.eigh(gram)  # ascending
    eig, vec = eig.flip(0), vec.flip(1)[:, :2]
    total = float(eig.clamp(min=0).sum())
    if not (total > 0 and float(eig[1]) > 1e-10 * float(eig[0])):
        raise UserError("the trajectory's checkpoints span fewer than two directions: they give no plane")
    axes = torch.cat([vec.T @ centred(j) for j in range(0, numel, chunk)], dim=1)  # (2, P)
    u, v = gram_schmidt(axes)  # unit length and orthogonal despite rounding
    first = points[0].double() - last
    u, v = (a if float(first @ a) >= 0 else -a for a in (u, v))  # masked coordinates: zero in u and v
    ratio = (eig[:2] / total).cpu().numpy()
    return PlaneBasis(origin=last, u=u, v=v), ratio


def project(basis: PlaneBasis, points: torch.Tensor, rows: int | None = None) -> np.ndarray:
    """Plane coordinates (M, 2) of points (M, P): the (x, y) whose
    origin + x u + y v is nearest p, ((p - origin) . u, (p - origin) . v)
    for an orthonormal basis, G^-1 times that for skew axes (G the Gram
    matrix of u, v). In float64, ``rows`` points at a time (all at once by
    default)."""
    return project_with_distance(basis, points, rows)[0]


def project_with_distance(basis: PlaneBasis, points: torch.Tensor,
                          rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`project`'s coordinates (M, 2) and each point's distance from
    the plane (M,)."""
    rows = rows or max(1, points.shape[0])
    uv = torch.stack([basis.u, basis.v])  # (2, P)
    coords, dist = [np.zeros((0, 2))], [np.zeros(0)]
    for i in range(0, points.shape[0], rows):
        d = points[i:i + rows].detach().double().to(basis.origin.device) - basis.origin
        xy = torch.stack([d @ basis.u, d @ basis.v], dim=-1)  # (r, 2)
        if not basis.orthonormal:
            xy = torch.linalg.solve(uv @ uv.T, xy.T).T
        coords.append(xy.cpu().numpy())
        dist.append((d - xy @ uv).norm(dim=1).cpu().numpy())
    return np.concatenate(coords), np.concatenate(dist)


def check_grid_options(grid: object, margin: object, xrange: object, yrange: object) -> int:
    """The grid size as an int; one line for a plane's grid options that cannot make one: a grid of fewer
    than 2 (or no whole number), a negative margin, a range that is not two finite numbers LO < HI."""
    grid = check_whole("--grid", grid)
    if grid < 2:
        raise UserError(f"--grid must be at least 2, got {grid}")
    check_number("--margin", margin)
    if not (margin >= 0 and np.isfinite(margin)):
        raise UserError(f"--margin must be a finite number >= 0 (a fraction of the points' extent), got {margin}")
    for flag, given in (("--xrange", xrange), ("--yrange", yrange)):
        if given is None:
            continue
        pair = list(given) if isinstance(given, (tuple, list, np.ndarray)) else None
        if pair is None or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in pair):
            raise UserError(f"{flag} must be two numbers LO HI, got {given!r}")
        if not (np.all(np.isfinite(pair)) and pair[1] > pair[0]):
            raise UserError(f"{flag} needs finite LO < HI, got {pair[0]} {pair[1]}")
    return grid


def plane_grid(xy: np.ndarray, grid: int = 21, margin: float = 0.2,
               xrange: tuple[float, float] | None = None,
               yrange: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes x (G,), y (G,) covering the points ``xy`` (M, 2) with a margin
    of ``margin`` times their extent on each side (the papers' 0.2), unless
    explicit ranges are given."""
    grid = check_grid_options(grid, margin, xrange, yrange)
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


def random_directions(numel: int, n: int, seed: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """n Gaussian directions (n, P) from N(0, I), each scaled to unit norm
    (Izmailov et al. 2018: w(t) = w + t d / ||d||). With ``mask`` (P,) bool
    (:meth:`ParamSpace.trainable_mask`) the draws are zeroed where it is
    False before the scaling, so parameters the network does not train stay
    put; the kept coordinates are the same draws as without it."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, numel, generator=gen, dtype=torch.float32)
    if mask is not None:
        if not bool(mask.any()):
            raise UserError("the network trains none of its parameters: no direction to move along")
        d = d * mask.to(d.dtype).cpu()
    return d / d.norm(dim=1, keepdim=True)


def weight_mask(space: ParamSpace) -> torch.Tensor:
    """(P,) bool: True on the coordinates of weight tensors of two or more
    dimensions, False on biases and batch-norm parameters (one-dimensional
    tensors), as Li et al.'s ``ignore biasbn`` and filter normalisation
    tell them apart, and on weight norm's magnitudes (``space.gains``: a
    scale a filter like batch norm's, shaped (filters, 1, ...))."""
    return torch.cat([torch.full((size,), _is_filters(name, shape, space), dtype=torch.bool)
                      for name, size, shape in zip(space.names, space.sizes, space.shapes)])


def gains_fixed(model: torch.nn.Module, applies: bool) -> dict[str, str]:
    """The request entry of a sweep whose directions or axes treat weight
    norm's magnitudes as gains (``applies``: filter normalisation, ``--ignore
    biasbn``) on a network that has them: an earlier build's result, which
    took them for filters, is another request. Empty otherwise, so other
    networks' stored results keep their keys."""
    return {"gains": "fixed"} if applies and ParamSpace.of(model).gains else {}


def _is_filters(name: str, shape: tuple[int, ...], space: ParamSpace) -> bool:
    """Whether the parameter ``name`` holds filters (slices along dim 0) to normalise."""
    return len(shape) >= 2 and name not in space.gains


def filter_normalize(directions: torch.Tensor, center: torch.Tensor, space: ParamSpace) -> torch.Tensor:
    """Filter normalisation (Li et al. 2018): in every weight tensor with two or
    more dimensions, each filter (slice along dim 0) of a direction is scaled
    to the norm of the matching filter of ``center``; biases, batch-norm
    parameters (one-dimensional tensors) and weight norm's magnitudes
    (:func:`weight_mask`) are zeroed. (n, P) -> (n, P)."""
    out = directions.clone()
    pieces = dict(zip(space.names, torch.split(out, space.sizes, dim=1)))  # views (n, size)
    weights = space.unflatten(center.to(out.dtype))
    for name, shape in zip(space.names, space.shapes):
        piece = pieces[name]
        if not _is_filters(name, shape, space):
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
