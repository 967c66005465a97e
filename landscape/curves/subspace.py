"""The curve subspace of subspace inference (Izmailov et al. 2019): the plane
through a fitted curve's points at t = 0, 1/2 and 1 (for a one-bend Bezier
curve, the plane of its three control points), sampled by
:func:`landscape.subspace.sample_subspace`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscape.checkpoint import Checkpoint
from landscape.subspace import Subspace, plane_of_points

from .fit import LoadedCurve, load_curve

__all__ = ["curve_subspace"]

PATH_POINTS = 61  # the curve drawn in the subspace figure


def curve_subspace(curve: str | Path | Checkpoint | LoadedCurve, device: torch.device | str = "auto",
                   model: str | None = None) -> Subspace:
    """The ``curve`` subspace of a curve checkpoint (written by ``landscape connect``), on ``device``
    (``"auto"``: a GPU when there is one), where :func:`~landscape.subspace.sample_subspace` samples it."""
    loaded = curve if isinstance(curve, LoadedCurve) else load_curve(curve, device, model)
    with torch.no_grad():
        crv = loaded.curve  # the three points in float64: a straight line's midpoint rounded in float32 lay 3e-8 of
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, device=crv.fixed.device)  # its length off it
        w0, wm, w1 = crv.coefficients(t).double() @ crv.anchors().detach().double()
        shift, basis, landmarks = plane_of_points(w0, wm, w1)
        path, off = _curve_in_plane(loaded, shift, basis)
    # the chains start at the curve's end t = 1, as the reference's (the plane's centre is a poor network)
    return Subspace(kind="curve", shift=shift, basis=basis, model=loaded.model, spec=loaded.spec, meta=loaded.meta,
                    source=loaded.path, landmarks=landmarks, start=landmarks["t=1"], path=path, path_off=off)


def _curve_in_plane(loaded: LoadedCurve, shift: torch.Tensor, basis: torch.Tensor) -> tuple[np.ndarray, float]:
    """The whole curve in the plane's coordinates (PATH_POINTS, 2), for the
    figure, and how far off the plane it strays at most, relative to the
    distance between its ends (0 for one bend: the plane holds it). A point
    of the curve is C(t) W with each row of C(t) summing to one, so its
    coordinates are C(t) Z, Z the control points' own: no (points x
    parameters) array is made, only (control points x parameters)."""
    crv = loaded.curve
    t = torch.linspace(0, 1, PATH_POINTS, dtype=torch.float64, device=crv.fixed.device)
    coeffs = crv.coefficients(t).double()  # (n, A)
    b = basis.double().to(coeffs.device)
    centred = crv.anchors().detach().double() - shift.double().to(coeffs.device)  # (A, P)
    z = (centred @ b.T) / (b * b).sum(1)  # (A, 2): the rows of the basis are orthogonal
    rest = centred - z @ b  # (A, P): what the plane leaves of each control point
    gram = rest @ rest.T  # (A, A)
    off2 = ((coeffs @ gram) * coeffs).sum(1).clamp(min=0)  # ||C(t) rest||^2
    ends = float((centred[-1] - centred[0]).norm())
    return (coeffs @ z).cpu().numpy(), float(off2.max().sqrt()) / max(ends, 1e-30)
