"""Bezier curve: phi(t) = sum_a C(n, a) t^a (1 - t)^(n - a) theta_a, n = bends + 1.

With one bend this is the papers' quadratic curve
(1 - t)^2 w1 + 2 t (1 - t) theta + t^2 w2 (Garipov et al. 2018, sec. 3.2).
"""

from __future__ import annotations

from math import comb

import torch

from landscape.device import device_constant

from .base import Curve, register_curve

__all__ = ["Bezier", "bernstein"]


def bernstein(t: torch.Tensor, n: int) -> torch.Tensor:
    """Bernstein basis of degree n: (K,) -> (K, n + 1), in float64."""
    t = t.double()[:, None]
    a = torch.arange(n + 1, dtype=torch.float64, device=t.device)
    binom = device_constant(("binomial", n), t.device,
                            lambda: torch.tensor([comb(n, i) for i in range(n + 1)], dtype=torch.float64))
    return binom * t.pow(a) * (1 - t).pow(n - a)  # 0^0 = 1 keeps the ends exact


@register_curve
class Bezier(Curve):
    name = "bezier"

    def coefficients(self, t: torch.Tensor) -> torch.Tensor:
        return bernstein(t, self.num_anchors - 1)

    def derivative_coefficients(self, t: torch.Tensor) -> torch.Tensor:
        n = self.num_anchors - 1
        lower = bernstein(t, n - 1)  # (K, n)
        zero = torch.zeros_like(lower[:, :1])
        # d/dt B_{a,n} = n (B_{a-1,n-1} - B_{a,n-1})
        return n * (torch.cat([zero, lower], dim=1) - torch.cat([lower, zero], dim=1))
