"""The loss surface in the plane through three points (Garipov et al. 2018, figs. 1-2).

Writes ``plane.npz`` (grid axes, every metric on the grid, the anchors' and
the path's coordinates), ``summary.json`` and ``config.json``; figures come
from ``plots.plane``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .evaluate import METRICS
from .evaluate import precision_amp as _bf16
from .geometry import plane_basis, plane_coefficients, plane_grid, project
from .sweep import STORE, begin_result, finish_result, request_key, run_sweep
from .weights import ParamSpace

__all__ = ["PlaneResult", "evaluate_plane"]


@dataclass
class PlaneResult:
    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]
    out: Path | None


def evaluate_plane(
    model: nn.Module,
    points: Sequence[torch.Tensor],
    data,
    out: str | Path | None = None,
    *,
    labels: Sequence[str] = ("A", "B", "C"),
    path: torch.Tensor | None = None,
    path_label: str | None = None,
    marks: Sequence[torch.Tensor] = (),
    mark_labels: Sequence[str] = (),
    grid: int = 21,
    margin: float = 0.2,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    wd: float = 0.0,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    strategy: str = "auto",
    precision: str = "fp32",
    resume: bool = False,
    progress: bool = False,
    config: dict[str, Any] | None = None,
) -> PlaneResult:
    """Evaluate ``model``'s metrics on a ``grid`` x ``grid`` grid in the plane
    through three flat weight vectors ``points`` (P,) — origin the first, x
    axis towards the second, y towards the third.

    ``path`` (M, P) is projected and stored (e.g. a curve's points), ``marks``
    are further points (e.g. an SWA average), drawn at their projections onto
    the plane and evaluated as they are (the summary gives each one's
    distance from the plane). Every
    grid point gets train loss (NLL + wd/2 ||w||^2), train NLL, train error,
    test NLL and test error with batch norm re-estimated. With ``out`` the
    sweep is resumable (``resume=True``) and the result is written there.
    ``strategy`` is the engine's (:func:`~landscape.evaluate.evaluate_points`).
    """
    out = Path(out) if out is not None else None
    _bf16(precision)  # an unknown precision fails before anything is written
    if len(points) != 3:
        raise UserError(f"a plane needs exactly three points, got {len(points)}")
    request = request_key([*points, *marks, *([path] if path is not None else [])], {
        "kind": "plane", "marks": len(marks), "grid": grid, "margin": margin, "xrange": xrange, "yrange": yrange,
        "wd": wd, "batch_size": batch_size, "bn_batches": bn_batches, "bn_stats": bn_stats, "precision": precision,
        "dataset": data.describe(),
        # Marks are evaluated as themselves (earlier versions reported their projection onto the plane):
        # a result stored the old way is not handed back as this one.
        **({"marks_evaluated": "themselves"} if marks else {})})
    finished = begin_result(out, "plane.npz", resume, "plane", request)
    if finished is not None:
        return PlaneResult(*finished, out=out)
    space = ParamSpace.of(model)
    vecs = [p.detach().reshape(-1).to(data.device) for p in points]
    for v in vecs:
        if v.numel() != space.numel:
            raise UserError(f"a plane point has {v.numel()} values, the model {space.numel} parameters")
    basis = plane_basis(*vecs)
    anchor_xy = project(basis, torch.stack(vecs))
    path_xy = project(basis, path.to(data.device)) if path is not None else np.zeros((0, 2))
    mark_vecs = [m.detach().reshape(-1).to(data.device) for m in marks]
    mark_xy = project(basis, torch.stack(mark_vecs)) if mark_vecs else np.zeros((0, 2))
    x, y = plane_grid(np.concatenate([anchor_xy, path_xy, mark_xy]), grid, margin, xrange, yrange)

    # Grid points, then the anchors (in the plane), then the marks themselves: a mark
    # off the plane is drawn at its projection, but its values are the network's own.
    W = basis.anchors().to(data.device)  # (3, P): origin, u, v
    k = len(mark_vecs)
    mark_distance = [float((m - W[0] - float(xy[0]) * W[1] - float(xy[1]) * W[2]).norm())
                     for m, xy in zip(mark_vecs, mark_xy)]
    if k:
        W = torch.cat([W, torch.stack(mark_vecs).to(W.dtype)])  # (3 + k, P)
    in_plane = np.concatenate([plane_coefficients(x, y), np.concatenate([np.ones((3, 1)), anchor_xy], axis=1)])
    coeffs = np.block([[in_plane, np.zeros((len(in_plane), k))], [np.zeros((k, 3)), np.eye(k)]])
    run_config = dict(config or {}, command="plane", grid=grid, margin=margin, xrange=list(x[[0, -1]]),
                      yrange=list(y[[0, -1]]), wd=wd, batch_size=batch_size, bn_batches=bn_batches,
                      bn_stats=bn_stats, precision=precision, dataset=data.describe())
    values = run_sweep(model, W, coeffs, data, store=out / STORE if out is not None else None, resume=resume,
                       settings={"kind": "plane", "dataset": data.describe()}, config=run_config, wd=wd,
                       batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats,
                       points_per_pass=points_per_pass, strategy=strategy, progress=progress,
                       amp=_bf16(precision))
    g2 = grid * grid
    arrays: dict[str, np.ndarray] = {"x": x, "y": y, "anchor_xy": anchor_xy}
    if len(path_xy):
        arrays["path_xy"] = path_xy
    if len(mark_xy):
        arrays["mark_xy"] = mark_xy
    for m in METRICS:
        arrays[m] = values[m][:g2].reshape(grid, grid)
    exact = {m: values[m][g2:] for m in METRICS}
    summary = _plane_summary(arrays, exact, list(labels), list(mark_labels), mark_distance, path_label, data, wd,
                             grid)
    finish_result(out, "plane.npz", arrays, summary, request)
    return PlaneResult(arrays=arrays, summary=summary, out=out)


def _plane_summary(arrays, exact, labels, mark_labels, mark_distance, path_label, data, wd, grid) -> dict[str, Any]:
    def point(values_at: dict[str, np.ndarray], i: int) -> dict[str, float]:
        return {m: float(values_at[m][i]) for m in METRICS}

    minima = {}
    for m in ("train_loss", "test_error"):
        i, j = np.unravel_index(np.nanargmin(arrays[m]), arrays[m].shape)
        minima[m] = {"value": float(arrays[m][i, j]), "x": float(arrays["x"][i]), "y": float(arrays["y"][j])}
    n_anchor = len(labels)
    return {
        "grid": grid,
        "x_range": [float(arrays["x"][0]), float(arrays["x"][-1])],
        "y_range": [float(arrays["y"][0]), float(arrays["y"][-1])],
        "anchor_labels": labels,
        "anchors": [dict(label=lab, x=float(arrays["anchor_xy"][k, 0]), y=float(arrays["anchor_xy"][k, 1]),
                         **point(exact, k)) for k, lab in enumerate(labels)],
        "mark_labels": mark_labels,
        "marks": [dict(label=lab, x=float(arrays["mark_xy"][k, 0]), y=float(arrays["mark_xy"][k, 1]),
                       distance_from_plane=mark_distance[k], **point(exact, n_anchor + k))
                  for k, lab in enumerate(mark_labels)],
        "path_label": path_label,
        "grid_min": minima,
        "grid_max": {m: float(np.nanmax(arrays[m])) for m in ("train_loss", "test_error")},
        "wd": wd,
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "notes": "x along the second point minus the first, y towards the third (orthonormal, Gram-Schmidt in "
                 "float64), distances in weight space; batch norm re-estimated at every grid point",
    }
