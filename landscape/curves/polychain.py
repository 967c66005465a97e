"""Polygonal chain: straight segments through the control points, reached at
evenly spaced t (Garipov et al. 2018, sec. 3.2; one bend = two segments
meeting at t = 1/2)."""

from __future__ import annotations

import torch

from .base import Curve, register_curve

__all__ = ["PolyChain"]


@register_curve
class PolyChain(Curve):
    name = "polychain"

    def _segments(self) -> int:
        return self.num_anchors - 1

    def coefficients(self, t: torch.Tensor) -> torch.Tensor:
        n = self._segments()
        knots = torch.linspace(0, 1, n + 1, dtype=torch.float64, device=t.device)
        # Hat functions: 1 at their knot, falling linearly to 0 at the neighbours.
        return (1 - (t.double()[:, None] - knots).abs() * n).clamp(min=0)

    def derivative_coefficients(self, t: torch.Tensor) -> torch.Tensor:
        n = self._segments()
        seg = (t.double() * n).floor().clamp(0, n - 1).long()  # segment of each t (t = 1 -> last)
        d = torch.zeros(t.shape[0], n + 1, dtype=torch.float64, device=t.device)
        rows = torch.arange(t.shape[0], device=t.device)
        d[rows, seg] = -float(n)
        d[rows, seg + 1] = float(n)
        return d

    def breaks(self) -> list[float]:
        n = self._segments()
        return [i / n for i in range(n + 1)]
