"""The loss surface in a plane of weight space: through three points (Garipov
et al. 2018, figs. 1-2), around one point along two random directions, or
through a training trajectory's principal directions (Li et al. 2018).

Writes ``plane.npz`` (grid axes, every metric on the grid, the anchors' and
the path's coordinates), ``summary.json`` and ``config.json``; figures come
from ``landscape.plots.plane``.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .brief import brief_repr
from .data import as_dataset
from .errors import UserError, check_keywords, check_number, check_seed
from .evaluate import METRICS
from .evaluate import precision_amp as _bf16
from .geometry import (
    PATH_OFF_SHARE,
    PlaneBasis,
    check_grid_options,
    check_normalize,
    gains_fixed,
    plane_basis,
    plane_coefficients,
    plane_grid,
    project,
    project_with_distance,
    random_plane_basis,
    trajectory_basis,
    weight_mask,
)
from .sweep import STORE, begin_result, check_sweep_fits, finish_result, is_main, request_key, run_sweep
from .weights import ParamSpace

__all__ = ["PlaneResult", "evaluate_plane", "evaluate_random_plane", "evaluate_trajectory_plane"]


@brief_repr
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
    **options: Any,
) -> PlaneResult:
    """Evaluate ``model``'s metrics on a ``grid`` x ``grid`` grid in the plane
    through three flat weight vectors ``points`` (P,) — origin the first, x
    axis towards the second, y towards the third.

    ``path`` (M, P) is projected and stored (e.g. a curve's points). Every
    grid point gets train loss (NLL + wd/2 ||w||^2), train NLL, train error,
    test NLL and test error with batch norm re-estimated: arrays (grid,
    grid) indexed ``[i, j]`` at (``x[i]``, ``y[j]``), so matplotlib's
    ``contourf(x, y, Z)`` takes ``Z.T``. ``options``, for
    every kind of plane:

    - ``marks`` (further points, e.g. an SWA average: drawn at their
      projections onto the plane and evaluated as they are; the summary
      gives each one's distance from the plane) and ``mark_labels``;
    - ``grid`` (21), ``margin`` (0.2 of the points' extent on each side) or
      ``xrange`` / ``yrange`` (LO, HI);
    - the evaluation's ``wd`` (0), ``batch_size`` (1000), ``bn_batches``,
      ``bn_stats`` ("auto"), ``points_per_pass``, ``strategy`` (the
      engine's, :func:`~landscape.evaluate.evaluate_points`), ``precision``
      ("fp32"), ``progress``;
    - with ``out`` the sweep is resumable (``resume=True``) and the result is
      written there, with ``config`` added to its config.json.
    """
    if len(points) != 3:
        raise UserError(f"a plane needs exactly three points, got {len(points)}")
    if len(labels) != 3:  # the summary would drop the points without one
        raise UserError(f"labels has {len(labels)} entries for the plane's 3 points: give one a point")
    data = as_dataset(data)
    _check_options(model, data, options, "evaluate_plane")  # before a basis is worked out, or a folder claimed
    vecs = _vectors(model, points, data.device, "a plane point")
    layout = _Layout(basis=plane_basis(*vecs), anchors=vecs, labels=list(labels), path=path, path_label=path_label,
                     inputs=[torch.as_tensor(p) for p in points], request={})
    return _sweep_in_plane(model, layout, data, out, **options)


def evaluate_random_plane(model: nn.Module, center: torch.Tensor, data, out: str | Path | None = None, *,
                          normalize: str = "filter", seed: int = 0, label: str = "center",
                          span: float | None = None, **options) -> PlaneResult:
    """The loss surface around one network ``center`` (P,) in the plane of two
    random directions, as Li et al. (2018) draw it: grid point (a, b) is
    ``center + a d_1 + b d_2``, with d_1, d_2 Gaussian and, by default,
    filter-normalised (:func:`~landscape.geometry.random_plane_basis`; the
    same seed gives ``evaluate_rays``' directions when it draws two).

    The grid spans [-span, span] on both axes unless ``xrange`` / ``yrange``
    say otherwise; ``span`` defaults to 1 for filter-normalised directions
    (Li et al.'s [-1, 1]) and to half the centre's norm for unit Gaussian
    ones (as ``rays``). ``options`` are :func:`evaluate_plane`'s (``marks``,
    ``grid``, ``wd``, ``batch_size``, ``resume``, ...; not ``margin``)."""
    data = as_dataset(data)
    _check_options(model, data, options, "evaluate_random_plane")  # before a basis is worked out, or a folder claimed
    if span is not None:
        check_number("--span", span)
    (c,) = _vectors(model, [center], data.device, "the centre")
    check_normalize(normalize)
    seed = check_seed(seed)
    asked = span
    if span is None:
        span = 1.0 if normalize == "filter" else 0.5 * float(c.norm())
    if not (np.isfinite(span) and 0 < span < 1e30):
        raise UserError(f"--span (the random plane's) must be a positive number below 1e30, got {span}")
    if "margin" in options:
        raise UserError("a random plane has no margin: its grid spans [-span, span] (or xrange, yrange)")
    basis = random_plane_basis(c, ParamSpace.of(model), normalize, seed)
    cos = float(basis.u @ basis.v / (basis.u.norm() * basis.v.norm()))
    axis = "filter-normalised" if normalize == "filter" else "unit Gaussian"
    layout = _Layout(
        basis=basis, anchors=[c], labels=[label], inputs=[torch.as_tensor(center)],
        request={"plane": "random", "normalize": normalize, "seed": seed, "span": asked,
                 **gains_fixed(model, normalize == "filter")},
        default_range=(-span, span),
        summary={"plane": "random", "normalize": normalize, "seed": seed, "span": span,
                 "axis_labels": [f"random direction 1 ({axis})", f"random direction 2 ({axis})"],
                 "direction_norms": [float(basis.u.norm()), float(basis.v.norm())], "direction_cosine": cos,
                 "notes": f"grid point (x, y) is the centre + x d1 + y d2, d1 and d2 {axis} random directions "
                          f"(Li et al. 2018; not orthogonalised: their cosine is {cos:.3g}); batch norm "
                          f"re-estimated at every grid point"})
    return _sweep_in_plane(model, layout, data, out, **options)


def evaluate_trajectory_plane(model: nn.Module, trajectory: Sequence[torch.Tensor], data,
                              out: str | Path | None = None, *, labels: Sequence[str] | None = None,
                              ignore: str | None = None, **options) -> PlaneResult:
    """The loss surface in the plane of a training trajectory (Li et al.
    2018, sec. 7): ``trajectory`` is the checkpoints' flat weights in
    training order (each once); the plane's origin is the last, its axes the
    first two principal directions of ``w_i - w_last``
    (:func:`~landscape.geometry.trajectory_basis`), and the trajectory is
    projected onto it and drawn in. The summary gives the fraction of the
    trajectory's variance (about its mean) each axis explains and, for
    every checkpoint, its distance from the plane. ``labels`` name the
    checkpoints. ``ignore="biasbn"`` leaves biases and batch-norm
    parameters out of the PCA (Li et al.'s ``--ignore biasbn``): the axes
    are zero there, so the grid keeps the last checkpoint's, and the
    shares of variance are of the weights kept. ``options`` are
    :func:`evaluate_plane`'s. Memory: the
    trajectory stacked (checkpoints x parameters floats) besides the
    vectors given, and float64 work of at most 2^22 entries at a time."""
    if labels is not None and len(labels) != len(trajectory):
        raise UserError(f"give one label per checkpoint: {len(labels)} labels for {len(trajectory)} checkpoints")
    labels = list(labels) if labels is not None else [f"checkpoint {i + 1}" for i in range(len(trajectory))]
    if ignore not in (None, "biasbn"):
        raise UserError(f"unknown --ignore {ignore!r}; the one choice is biasbn (biases and batch-norm parameters)")
    data = as_dataset(data)
    _check_options(model, data, options, "evaluate_trajectory_plane")  # before a basis is worked out, or a folder
    vecs = _vectors(model, trajectory, data.device, "a trajectory checkpoint")
    _refuse_repeats(vecs, labels)
    path = torch.stack(vecs)
    del vecs  # the stacked copy is the one kept
    mask = weight_mask(ParamSpace.of(model)) if ignore else None
    if mask is not None and not bool(mask.any()):
        raise UserError("--ignore biasbn leaves nothing: the model has no weight with two or more dimensions")
    basis, ratio = trajectory_basis(path, mask=mask)
    xy, off = project_with_distance(basis, path, rows=max(1, (1 << 22) // path.shape[1]))
    layout = _Layout(  # the path is the request's input
        basis=basis, anchors=[path[-1]], labels=[labels[-1]], path=path, path_xy=xy, path_label="trajectory",
        inputs=[], request={"plane": "trajectory", **({"ignore": ignore} if ignore else {}),  # old keys unchanged
                            **gains_fixed(model, bool(ignore))},
        summary={"plane": "trajectory", "checkpoints": len(labels), "start_label": labels[0], "ignore": ignore,
                 "trajectory_labels": labels,
                 "explained_variance": [float(r) for r in ratio],
                 "axis_labels": [f"PC1 ({100 * ratio[0]:.1f}% of the trajectory's variance"
                                 f"{', biases and BN left out' if ignore else ''})",
                                 f"PC2 ({100 * ratio[1]:.1f}%)"],
                 "trajectory_distance_from_plane": [float(d) for d in off],
                 "notes": "origin: the last checkpoint; x, y along the first two principal directions of the "
                          "checkpoints' differences from it (Li et al. 2018), in weight-space units; the shares of "
                          "variance are about the checkpoints' mean (the PCA's plane through it, parallel to this "
                          "one), the distances from this plane; the trajectory is drawn at its projection; batch "
                          "norm re-estimated at every grid point" + (
                              "; biases and batch-norm parameters left out of the PCA (zero along both axes: the "
                              "grid keeps the last checkpoint's), but not out of the distances" if ignore else "")})
    return _sweep_in_plane(model, layout, data, out, **options)


def _note_path_off(label: str, off: float, x: np.ndarray, y: np.ndarray) -> None:
    """A note when a path (a curve of more bends than a plane holds) leaves the
    plane by more than :data:`PATH_OFF_SHARE` of the grid's extent: it is drawn
    at its projection, over the plane's values, which are not the path's own."""
    extent = max(float(np.ptp(x)), float(np.ptp(y)))
    if off > PATH_OFF_SHARE * extent and is_main():
        print(f"note: the {label} leaves this plane by up to {off:.3g} (the grid spans {extent:.3g}): it is drawn "
              f"at its projection, over the plane's values, not its own ('landscape curve' gives those)",
              file=sys.stderr)


def _note_outside(x: np.ndarray, y: np.ndarray, points: Sequence[tuple[str, np.ndarray]], path_xy: np.ndarray) -> None:
    """A note naming the points (and how much of the path) that an explicit
    --xrange / --yrange leaves outside the grid, where the figure does not
    draw them."""
    tol = 1e-9 * max(np.ptp(x), np.ptp(y), 1.0)  # a coordinate this far off an edge or an axis is on it

    def inside(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        return ((xy[:, 0] >= x[0] - tol) & (xy[:, 0] <= x[-1] + tol) & (xy[:, 1] >= y[0] - tol)
                & (xy[:, 1] <= y[-1] + tol))

    def shown(v: float) -> str:
        return f"{v if abs(v) > tol else 0.0:.3g}"

    out = [f"{label} ({shown(xy[0])}, {shown(xy[1])})" for label, xy in points if not inside(xy)[0]]
    path_out = int((~inside(path_xy)).sum()) if len(path_xy) else 0
    if path_out:
        out.append(f"{path_out} of the path's {len(path_xy)} points")
    if out:
        print(f"note: outside --xrange/--yrange ([{x[0]:.3g}, {x[-1]:.3g}] x [{y[0]:.3g}, {y[-1]:.3g}]), not drawn: "
              f"{', '.join(out)}", file=sys.stderr)


def _refuse_repeats(vectors: Sequence[torch.Tensor], labels: Sequence[str]) -> None:
    """One line for a checkpoint given twice: a trajectory passes each once."""
    probe = torch.randn(vectors[0].numel(), generator=torch.Generator().manual_seed(0)).to(vectors[0].device)
    seen: dict[float, list[int]] = {}
    for i, v in enumerate(vectors):
        key = float(v.float() @ probe)
        for j in seen.get(key, []):
            if torch.equal(v, vectors[j]):
                raise UserError(f"{labels[i]} has the weights of {labels[j]}: a trajectory passes each checkpoint "
                                f"once")
        seen.setdefault(key, []).append(i)


@dataclass
class _Layout:
    """What a kind of plane contributes: its basis, the points evaluated
    exactly and labelled (in the plane), a projected path, the input
    vectors and settings that identify the request, a default range, and
    summary entries."""

    basis: PlaneBasis
    anchors: list[torch.Tensor]
    labels: list[str]
    inputs: list[torch.Tensor]
    request: dict[str, Any]
    path: torch.Tensor | None = None
    path_xy: np.ndarray | None = None  # the path's coordinates, when the layout has them already
    path_label: str | None = None
    default_range: tuple[float, float] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _check_options(model: nn.Module, data, options: dict[str, Any], caller: str) -> None:
    """One line for a keyword no plane takes (``grd=21``: a TypeError naming a private function), grid
    options that make no grid, marks that are no networks' weights or labelled otherwise, before any work (a
    trajectory's PCA) and before the result folder is claimed; ``options["grid"]`` made an int."""
    check_keywords([name for name, p in inspect.signature(_sweep_in_plane).parameters.items()
                    if p.kind == p.KEYWORD_ONLY], options, caller)
    options["grid"] = check_grid_options(options.get("grid", 21), options.get("margin", 0.2), options.get("xrange"),
                                         options.get("yrange"))
    marks = _vectors(model, options.get("marks", ()), data.device, "a marked point")
    named = options.get("mark_labels") or ()
    if named and len(named) != len(marks):
        raise UserError(f"mark_labels has {len(named)} entries for {len(marks)} marks: give one a mark")


def _vectors(model: nn.Module, points: Sequence[torch.Tensor], device, what: str) -> list[torch.Tensor]:
    numel = ParamSpace.of(model).numel
    vecs = [torch.as_tensor(p).detach().reshape(-1).to(device) for p in points]  # numpy arrays too
    for i, v in enumerate(vecs):
        if v.numel() != numel:
            raise UserError(f"{what} has {v.numel()} values, the model {numel} parameters")
        bad = int((~torch.isfinite(v)).sum())
        if bad:  # the basis and every point through it would be NaN (an "empty plane range x [nan, nan]")
            which = f" (number {i + 1} of the {len(vecs)} given)" if len(vecs) > 1 else ""
            raise UserError(f"{what}{which} has {bad} non-finite weight{'s' if bad > 1 else ''}; no plane "
                            f"can pass through it")
    return vecs


def _sweep_in_plane(
    model: nn.Module,
    layout: _Layout,
    data,
    out: str | Path | None = None,
    *,
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
    out = Path(out) if out is not None else None
    _bf16(precision)  # an unknown precision fails before anything is written
    path = layout.path  # the grid options were checked by the caller (_check_options), before any work
    request = request_key([*layout.inputs, *marks, *([path] if path is not None else [])], {
        "kind": "plane", "marks": len(marks), "grid": grid, "margin": margin, "xrange": xrange, "yrange": yrange,
        "wd": wd, "batch_size": batch_size, "bn_batches": bn_batches, "bn_stats": bn_stats, "precision": precision,
        "dataset": data.describe(), **layout.request,
        # Marks are evaluated as themselves (earlier versions reported their projection onto the plane):
        # a result stored the old way is not handed back as this one.
        **({"marks_evaluated": "themselves"} if marks else {})})
    finished = begin_result(out, "plane.npz", resume, "plane", request)
    if finished is not None:
        return PlaneResult(*finished, out=out)
    basis = layout.basis
    anchor_xy = project(basis, torch.stack(layout.anchors))
    path_xy, path_off = (layout.path_xy, None) if layout.path_xy is not None else (
        project_with_distance(basis, path.to(data.device)) if path is not None else (np.zeros((0, 2)), None))
    mark_vecs = _vectors(model, marks, data.device, "a marked point")
    mark_xy, mark_distance = project_with_distance(basis, torch.stack(mark_vecs)) if mark_vecs else (
        np.zeros((0, 2)), np.zeros(0))
    if layout.default_range is not None:
        x, y = plane_grid(np.zeros((1, 2)), grid, 0.0, xrange or layout.default_range, yrange or layout.default_range)
    else:
        x, y = plane_grid(np.concatenate([anchor_xy, path_xy, mark_xy]), grid, margin, xrange, yrange)
    if xrange is not None or yrange is not None:  # the figure's axes are the grid's: what lies outside is not drawn
        _note_outside(x, y, [*zip(layout.labels, anchor_xy), *zip(list(mark_labels) or
                                                                 [f"mark {i + 1}" for i in range(len(mark_xy))],
                                                                 mark_xy)], path_xy)
    # plane_grid gave the axes (and refused a grid below 2); the grid's G x G points come next
    check_sweep_fits(grid * grid + len(layout.anchors) + len(marks), 3 + len(marks), f"--grid {grid}")

    # Grid points, then the anchors (in the plane), then the marks themselves: a mark
    # off the plane is drawn at its projection, but its values are the network's own.
    W = basis.anchors().to(data.device)  # (3, P): origin, u, v
    k, n_anchor = len(mark_vecs), len(layout.anchors)
    if k:
        W = torch.cat([W, torch.stack(mark_vecs).to(W.dtype)])  # (3 + k, P)
    in_plane = np.concatenate([plane_coefficients(x, y), np.concatenate([np.ones((n_anchor, 1)), anchor_xy], axis=1)])
    coeffs = np.block([[in_plane, np.zeros((len(in_plane), k))], [np.zeros((k, 3)), np.eye(k)]])
    run_config = dict(config or {}, command="plane", grid=grid, margin=margin, xrange=list(x[[0, -1]]),
                      yrange=list(y[[0, -1]]), wd=wd, batch_size=batch_size, bn_batches=bn_batches,
                      bn_stats=bn_stats, precision=precision, dataset=data.describe(), **layout.request)
    values = run_sweep(model, W, coeffs, data, store=out / STORE if out is not None else None, resume=resume,
                       settings={"kind": "plane", "dataset": data.describe()}, config=run_config, wd=wd,
                       batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats,
                       points_per_pass=points_per_pass, strategy=strategy, progress=progress,
                       amp=_bf16(precision), identity=request, what=f"the {grid} x {grid} grid and {n_anchor} anchor{'s' if n_anchor != 1 else ''}"
                       + (f" and {k} marked points" if k else ""))
    g2 = grid * grid
    arrays: dict[str, np.ndarray] = {"x": x, "y": y, "anchor_xy": anchor_xy}
    if len(path_xy):
        arrays["path_xy"] = path_xy
    if len(mark_xy):
        arrays["mark_xy"] = mark_xy
    for m in METRICS:
        arrays[m] = values[m][:g2].reshape(grid, grid)
    exact = {m: values[m][g2:] for m in METRICS}
    summary = _plane_summary(arrays, exact, layout.labels, list(mark_labels), mark_distance.tolist(),
                             layout.path_label, data, wd, grid)
    if path_off is not None and len(path_off):
        summary["path_distance_from_plane_max"] = float(path_off.max())
        _note_path_off(layout.path_label or "path", float(path_off.max()), x, y)
    summary.update(layout.summary)
    finish_result(out, "plane.npz", arrays, summary, request)
    return PlaneResult(arrays=arrays, summary=summary, out=out)


def _plane_summary(arrays, exact, labels, mark_labels, mark_distance, path_label, data, wd, grid) -> dict[str, Any]:
    def point(values_at: dict[str, np.ndarray], i: int) -> dict[str, float]:
        return {m: float(values_at[m][i]) for m in METRICS}

    minima, maxima = {}, {}
    for m in ("train_loss", "test_error"):
        if np.isnan(arrays[m]).all():  # every point's loss overflowed (a span far too wide): no extremes
            minima[m] = maxima[m] = None
            continue
        i, j = np.unravel_index(np.nanargmin(arrays[m]), arrays[m].shape)
        minima[m] = {"value": float(arrays[m][i, j]), "x": float(arrays["x"][i]), "y": float(arrays["y"][j])}
        maxima[m] = float(np.nanmax(arrays[m]))
    # grid points whose train loss or test NLL is not finite (logits that overflowed): left out of the extremes
    non_finite = int((~np.isfinite(arrays["train_loss"]) | ~np.isfinite(arrays["test_nll"])).sum())
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
        "grid_max": maxima,
        "non_finite_points": non_finite,
        "wd": wd,
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "notes": "x along the second point minus the first, y towards the third (orthonormal, Gram-Schmidt in "
                 "float64), distances in weight space; batch norm re-estimated at every grid point",
    }
