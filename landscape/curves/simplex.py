"""Simplexes and simplicial complexes of low loss (Benton et al. 2021).

A simplicial complex is a set of anchors (vertices) over a model's
``ParamSpace`` and a list of simplexes, each a tuple of anchor indices. A
point of a simplex with vertices v_0..v_k is sum_i b_i v_i with barycentric
weights b on the probability simplex; uniform samples are Dirichlet(1). One
simplex around a mode is the complex with a single simplex; modes joined
through shared connectors are simplexes {mode_i, c_1, .., c_m}.

Volumes come from the k x k Gram matrix G of the edges from the first
vertex (dot products of flat parameter vectors, in float64; no P x P
matrix): V = sqrt(det G) / k!, which equals the Cayley-Menger determinant's
volume. The vertices' own Gram matrix would lose small edges to
cancellation against the weights' norm.
"""

from __future__ import annotations

from math import factorial
from typing import Sequence

import torch
from torch import nn

from landscape.device import host_to_device
from landscape.errors import UserError
from landscape.weights import ParamSpace

__all__ = ["SimplicialComplex", "cayley_menger_volume", "sample_barycentric", "face_grid"]


def cayley_menger_volume(vertices: torch.Tensor) -> torch.Tensor:
    """Volume of the simplex spanned by the rows of ``vertices`` (k+1, P), in float64.

    V^2 = det(E E^T) / (k!)^2 with E (k, P) the edges from the first vertex,
    which is the Cayley-Menger determinant's (-1)^(k+1) / (2^k (k!)^2) det(CM),
    CM = [[0, 1^T], [1, D]] with D the pairwise squared distances.
    Differentiable; 0 for a degenerate simplex.
    """
    n = vertices.shape[0]
    if n < 2:
        return torch.zeros((), dtype=torch.float64, device=vertices.device)
    k = n - 1
    edges = vertices[1:].double() - vertices[:1].double()  # exact differences of float32 weights
    v2 = torch.linalg.det(edges @ edges.T) / factorial(k) ** 2
    return v2.clamp(min=0).sqrt()


def sample_barycentric(n: int, k: int, generator: torch.Generator | None = None,
                       device=None, dtype=torch.float64) -> torch.Tensor:
    """n uniform points of the (k-1)-simplex: Dirichlet(1, .., 1) weights (n, k),
    as normalised exponential variables."""
    e = -torch.log(torch.rand(n, k, generator=generator, dtype=torch.float64).clamp(min=1e-300))
    return (e / e.sum(dim=1, keepdim=True)).to(device=device, dtype=dtype)


def face_grid(resolution: int) -> torch.Tensor:
    """Barycentric coordinates (N, 3) of a triangular grid over a face:
    (i, j, r - i - j) / r for i + j <= r; N = (r + 1)(r + 2) / 2."""
    r = resolution
    rows = [(i / r, j / r, (r - i - j) / r) for i in range(r + 1) for j in range(r + 1 - i)]
    return torch.tensor(rows, dtype=torch.float64)


class SimplicialComplex(nn.Module):
    """Anchors (A, P): the fixed ones a buffer, the trainable ones a Parameter,
    in the order given by ``order``; ``simplexes`` are tuples of anchor indices."""

    def __init__(self, space: ParamSpace, fixed: torch.Tensor, free: torch.Tensor | None,
                 simplexes: Sequence[Sequence[int]], labels: Sequence[str] | None = None):
        super().__init__()
        self.space = space
        n_fixed = fixed.shape[0]
        n_free = 0 if free is None else free.shape[0]
        self.register_buffer("fixed", fixed.detach().clone())
        self.free = nn.Parameter(free.detach().clone() if n_free else torch.zeros(0, space.numel,
                                                                                  dtype=fixed.dtype))
        self.simplexes = [tuple(int(i) for i in s) for s in simplexes]
        n = n_fixed + n_free
        for s in self.simplexes:
            if len(set(s)) != len(s) or min(s) < 0 or max(s) >= n:
                raise UserError(f"bad simplex {s}: vertices must be distinct anchors in 0..{n - 1}")
        self.labels = list(labels or [f"v{i}" for i in range(n)])

    @property
    def num_anchors(self) -> int:
        return self.fixed.shape[0] + self.free.shape[0]

    def anchors(self) -> torch.Tensor:
        """(A, P): fixed anchors first, then the trainable ones."""
        return torch.cat([self.fixed, self.free]) if self.free.shape[0] else self.fixed

    def volumes(self) -> torch.Tensor:
        """Volume of every simplex (S,), float64, differentiable."""
        a = self.anchors()
        return torch.stack([cayley_menger_volume(a[list(s)]) for s in self.simplexes])

    def sample(self, n: int, generator: torch.Generator | None = None, volume_weighted: bool = False) -> torch.Tensor:
        """Coefficients (n, A) of uniform samples: a simplex chosen uniformly (or in
        proportion to its volume), then Dirichlet(1) weights on its vertices."""
        s = len(self.simplexes)
        if volume_weighted and s > 1:
            p = self.volumes().detach().cpu()
            which = torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)
        else:
            which = torch.randint(s, (n,), generator=generator)
        coeffs = torch.zeros(n, self.num_anchors, dtype=torch.float64)
        for row, j in enumerate(which.tolist()):
            verts = self.simplexes[j]
            coeffs[row, list(verts)] = sample_barycentric(1, len(verts), generator)[0]
        return host_to_device(coeffs, self.fixed.device)

    def barycentres(self) -> torch.Tensor:
        """Coefficients (S, A) of each simplex's barycentre."""
        c = torch.zeros(len(self.simplexes), self.num_anchors, dtype=torch.float64, device=self.fixed.device)
        for j, verts in enumerate(self.simplexes):
            c[j, list(verts)] = 1.0 / len(verts)
        return c

    def describe(self) -> dict:
        return {"simplexes": [list(s) for s in self.simplexes], "labels": self.labels,
                "fixed": int(self.fixed.shape[0]), "free": int(self.free.shape[0])}
