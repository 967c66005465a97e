"""The curve subspace of subspace inference (Izmailov et al. 2019): the plane
through a fitted curve's points at t = 0, 1/2 and 1 (for a one-bend Bezier
curve, the plane of its three control points), sampled by
:func:`landscape.subspace.sample_subspace`."""

from __future__ import annotations

from pathlib import Path

import torch

from landscape.checkpoint import Checkpoint
from landscape.subspace import Subspace, plane_of_points

from .fit import LoadedCurve, load_curve

__all__ = ["curve_subspace"]

PATH_POINTS = 61  # the curve drawn in the subspace figure


def curve_subspace(curve: str | Path | Checkpoint | LoadedCurve, device: torch.device | str = "cpu",
                   model: str | None = None) -> Subspace:
    """The ``curve`` subspace of a curve checkpoint (written by ``landscape connect``)."""
    loaded = curve if isinstance(curve, LoadedCurve) else load_curve(curve, device, model)
    with torch.no_grad():
        w0, wm, w1 = loaded.curve.points(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64,
                                                      device=loaded.curve.fixed.device)).detach()
        shift, basis, landmarks = plane_of_points(w0, wm, w1)
        # the whole curve in the plane's coordinates, for the figure; a curve of more bends leaves the plane
        pts = loaded.curve.points(torch.linspace(0, 1, PATH_POINTS, dtype=torch.float64,
                                                 device=loaded.curve.fixed.device)).detach().double()
        b = basis.double().to(pts.device)
        centred = pts - shift.double().to(pts.device)
        coords = (centred @ b.T) / (b * b).sum(1)  # the rows are orthogonal
        off = float((centred - coords @ b).norm(dim=1).max() / max(float((pts[-1] - pts[0]).norm()), 1e-30))
    # the chains start at the curve's end t = 1, as the reference's (the plane's centre is a poor network)
    return Subspace(kind="curve", shift=shift, basis=basis, model=loaded.model, spec=loaded.spec, meta=loaded.meta,
                    source=loaded.path, landmarks=landmarks, start=landmarks["t=1"], path=coords.cpu().numpy(),
                    path_off=off)
