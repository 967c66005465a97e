"""Widths of optima along random rays (Izmailov et al. 2018, sec. 4; Li et al. 2018).

From each centre w, the rays w + s d_i / ||d_i|| for s in [-D, D], d_i ~ N(0, I)
(or filter-normalised, ``normalize="filter"``); the same Gaussian draws for
every centre so their profiles compare. Optionally the line through the two
centres, extended beyond both (the SWA paper's SWA-SGD figure).

Width of a ray, on each side: the distance at which the train loss first
rises by ``rise`` above the centre's (linear interpolation between steps;
infinite when it never does within D). Asymmetry: the larger side over the
smaller (He et al. 2019's asymmetric valleys). Writes ``rays.npz``,
``summary.json`` and ``config.json``; figures come from ``landscape.plots.rays``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .brief import brief_repr
from .data import as_dataset
from .device import check_fits
from .errors import UserError, check_number, check_seed, check_whole
from .evaluate import METRICS
from .evaluate import precision_amp as _bf16
from .geometry import (
    NORMALIZATIONS,
    check_normalize,
    filter_normalize,
    gains_fixed,
    line_coefficients,
    random_directions,
    ray_coefficients,
)
from .sweep import STORE, begin_result, check_sweep_fits, finish_result, request_key, run_sweep
from .weights import ParamSpace

__all__ = ["NORMALIZATIONS", "RaysResult", "evaluate_rays", "side_widths", "width_report"]


@brief_repr
@dataclass
class RaysResult:
    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]
    out: Path | None


def side_widths(distance: np.ndarray, values: np.ndarray, rise: float) -> tuple[float, float]:
    """(negative side, positive side) widths of one profile.

    ``distance`` (S,) increasing and containing 0; ``values`` (S,). The width
    on a side is the distance from 0 at which ``values`` first reaches
    values(0) + rise, linearly interpolated; ``inf`` if it never does. A
    point whose value is not finite (a loss that overflowed: inf, or NaN from
    inf - inf) counts as reached, at the last finite point before it; NaN
    widths where values(0) is not finite.
    """
    zero = int(np.argmin(np.abs(distance)))
    target = values[zero] + rise
    if not np.isfinite(target):
        return float("nan"), float("nan")

    def first_crossing(idx: range) -> float:
        prev = zero
        for i in idx:
            if not values[i] < target:  # NaN too: a scan past it reported a valley wider than the overflow
                d0, d1, v0, v1 = abs(distance[prev]), abs(distance[i]), values[prev], values[i]
                if not np.isfinite(v1):
                    return float(d0)
                frac = (target - v0) / (v1 - v0) if v1 != v0 else 1.0
                return float(d0 + frac * (d1 - d0))
            prev = i
        return float("inf")

    return first_crossing(range(zero - 1, -1, -1)), first_crossing(range(zero + 1, len(distance)))


def line_valley(distance: np.ndarray, values: np.ndarray, rise: float, marks: Sequence[float],
                labels: Sequence[str]) -> dict[str, Any] | None:
    """Where points sit in the valley of a line's loss profile (He et al.
    2019's asymmetric valleys; the SWA paper's SGD-SWA line). ``distance``
    (S,) increasing, ``values`` (S,) the train loss; the valley is the
    interval around the profile's lowest sample where the loss stays below
    that minimum + ``rise`` (:func:`side_widths` from the minimum; an end is
    null where the loss never rises that much within the line), with the
    number of samples in it and the largest gap between samples across it
    (its edges are interpolated, its minimum a sample: the resolution). For each
    mark (a centre's distance) its offset from the valley's middle, also
    as a fraction of the half-width (-1 and 1: the valley's edges), and the
    loss at the line's end beyond it (the lowest of several marks faces the
    line's start, the others its end). Points where the loss is not finite
    are no minimum; None when it is finite nowhere."""
    distance, values = np.asarray(distance, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).any():
        return None  # the loss overflowed everywhere on the line: no valley
    low = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))  # a point that overflowed is no minimum
    neg, pos = side_widths(distance - distance[low], values, rise)
    lo, hi = distance[low] - neg, distance[low] + pos
    bounded = bool(np.isfinite(lo) and np.isfinite(hi))
    middle, half = ((lo + hi) / 2, (hi - lo) / 2) if bounded else (None, None)
    first, last = float(distance[0]), float(distance[-1])
    points = []
    for mark, label in zip(marks, labels):
        beyond_end = first if len(marks) > 1 and mark == min(marks) else last  # the lowest mark faces the start
        points.append({"label": label, "position": float(mark),
                       "offset_from_middle": float(mark - middle) if bounded else None,
                       "relative_offset": float((mark - middle) / half) if bounded and half > 0 else None,
                       "loss_beyond": float(values[int(np.argmin(np.abs(distance - beyond_end)))]),
                       "beyond_at": beyond_end})
    # how finely the line resolves it: its edges are interpolated between samples, its lowest point is one
    inside = (distance >= lo) & (distance <= hi)
    cover = np.flatnonzero(inside)
    if len(cover):
        cover = np.arange(max(cover[0] - 1, 0), min(cover[-1] + 1, len(distance) - 1) + 1)  # a sample past each edge
    gap = float(np.diff(distance[cover]).max()) if len(cover) > 1 else None
    return {"rise": float(rise), "minimum_at": float(distance[low]), "minimum_train_loss": float(values[low]),
            "from": float(lo) if np.isfinite(lo) else None, "to": float(hi) if np.isfinite(hi) else None,
            "samples": int(inside.sum()), "largest_gap": gap, "points": points}


def _finite_median(values: np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return None
    med = float(np.median(v))
    return med if np.isfinite(med) else None


def evaluate_rays(
    model: nn.Module,
    centers: Sequence[torch.Tensor],
    data,
    out: str | Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    directions: int = 10,
    distance: float | None = None,
    steps: int = 10,
    normalize: str = "gaussian",
    line: bool = False,
    rise: float = 0.1,
    seed: int = 0,
    wd: float = 0.0,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    precision: str = "fp32",
    resume: bool = False,
    progress: bool = False,
    config: dict[str, Any] | None = None,
) -> RaysResult:
    """Evaluate ``directions`` rays of ``2 * steps + 1`` points in [-distance,
    distance] from each centre (flat weight vectors (P,)), and with ``line``
    the line through the first two centres extended by ``distance`` on both
    sides. ``distance`` defaults to half the first centre's norm (gaussian) or
    1 (filter). Returns per-ray profiles, widths and asymmetries."""
    out = Path(out) if out is not None else None
    data = as_dataset(data)
    _bf16(precision)  # an unknown precision fails before anything is written
    check_normalize(normalize)
    directions, steps = check_whole("--directions", directions), check_whole("--steps", steps)
    seed = check_seed(seed)
    check_number("--rise", rise)
    if distance is not None:
        check_number("--distance", distance)
    if directions < 1 or steps < 1:
        raise UserError(f"--directions and --steps must be at least 1, got {directions} and {steps}")
    if isinstance(centers, (torch.Tensor, np.ndarray)) and centers.ndim < 2 or isinstance(centers, (str, Path)):
        got = (f"an array of shape {tuple(centers.shape)}" if isinstance(centers, (torch.Tensor, np.ndarray)) else
               repr(str(centers)))
        raise UserError(f"centers is a list of flat weight vectors (P,), one a centre, or a (centres, P) tensor; got "
                        f"{got} (one centre: [vector])")
    for name, given in (("labels", labels), ("paths", paths)):
        if given is not None and len(given) != len(centers):  # the summary would drop the centres without one
            raise UserError(f"{name} has {len(given)} entr{'y' if len(given) == 1 else 'ies'} for {len(centers)} "
                            f"centre{'s' if len(centers) != 1 else ''}: give one a centre")
    if line and len(centers) < 2:
        raise UserError("--line needs two centres (--center and --compare)")
    m = len(centers)
    check_sweep_fits(m * directions * (2 * steps + 1) + (4 * steps + 1 if line else 0), m * (1 + directions),
                     f"--directions {directions} x --steps {steps}")
    if not (rise > 0 and np.isfinite(rise)):
        raise UserError(f"--rise must be a positive train-loss increase, got {rise}")
    request = request_key([torch.as_tensor(c) for c in centers], {
        "kind": "rays", "directions": directions, "distance": distance, "steps": steps, "normalize": normalize,
        "line": line, "rise": rise, "seed": seed, "wd": wd, "batch_size": batch_size, "bn_batches": bn_batches,
        "bn_stats": bn_stats, "precision": precision, "dataset": data.describe(),
        # the line's reach with filter directions: the rays', not --distance (an earlier build's result is another)
        **({"line_reach": "rays"} if line and normalize == "filter" else {}), **gains_fixed(model, normalize == "filter")})
    finished = begin_result(out, "rays.npz", resume, "rays", request)
    if finished is not None:
        return RaysResult(*finished, out=out)
    space = ParamSpace.of(model)
    device = data.device
    check_fits(4.0 * 3 * m * (1 + directions) * space.numel, f"--directions {directions} (the centres and their "
               f"directions, about three float32 copies of rays x parameters)", device)
    cs = [torch.as_tensor(c).detach().reshape(-1).float().to(device) for c in centers]  # numpy arrays too
    for c in cs:
        if c.numel() != space.numel:
            raise UserError(f"a centre has {c.numel()} values, the model {space.numel} parameters")
    labels = list(labels or [f"centre {k + 1}" for k in range(len(cs))])
    if distance is None:
        distance = 0.5 * float(cs[0].norm()) if normalize == "gaussian" else 1.0
    if not (distance > 0 and distance < 1e30):  # NaN fails both; beyond 1e30 float32 weights overflow
        raise UserError(f"--distance must be a positive number below 1e30, got {distance}")
    dist_grid = np.linspace(-distance, distance, 2 * steps + 1)

    gauss = random_directions(space.numel, directions, seed, space.trainable_mask()).to(device)  # (n, P)
    dirs = [filter_normalize(gauss, c, space) if normalize == "filter" else gauss for c in cs]
    W = torch.cat([torch.stack(cs)] + dirs)  # (m + m*n, P): centres, then each centre's directions
    m, n_anchor = len(cs), len(cs) * (1 + directions)
    blocks = [ray_coefficients(n_anchor, k, [m + k * directions + i for i in range(directions)], dist_grid)
              for k in range(m)]
    line_length, line_dist = None, None
    if line:
        line_length = float((cs[1] - cs[0]).double().norm())
        if line_length == 0:
            raise UserError(f"the two centres ({labels[0]} and {labels[1]}) hold the same weights: no line "
                            f"through them")
        # As far beyond each centre, in weight space, as the rays reach: filter-normalised directions are as long
        # as the weights' filters (15 for the digits convnet), and a line extended by `distance` in weight units
        # covered a fifteenth of them, its valley cut off (He et al.'s analysis lost, the slope misread)
        reach = distance if normalize != "filter" else distance * float(torch.cat([d.norm(dim=1) for d in dirs]).mean())
        # Samples that include both centres exactly: steps per side beyond them, 2 * steps between.
        line_dist = np.unique(np.concatenate([np.linspace(-reach, 0, steps + 1),
                                              np.linspace(0, line_length, 2 * steps + 1),
                                              np.linspace(line_length, line_length + reach, steps + 1)]))
        blocks.append(line_coefficients(n_anchor, 0, 1, line_length, line_dist))
    coeffs = np.concatenate(blocks)
    run_config = dict(config or {}, command="rays", directions=directions, distance=distance, steps=steps,
                      normalize=normalize, line=line, rise=rise, seed=seed, wd=wd, batch_size=batch_size,
                      bn_batches=bn_batches, bn_stats=bn_stats, precision=precision, dataset=data.describe())
    values = run_sweep(model, W, coeffs, data, store=out / STORE if out is not None else None, resume=resume,
                       settings={"kind": "rays", "dataset": data.describe()}, config=run_config, wd=wd,
                       batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats,
                       points_per_pass=points_per_pass, progress=progress, amp=_bf16(precision), identity=request,
                       what=f"{m} centre(s), {directions} ray(s) each at {len(dist_grid)} distances"
                       + (f", {len(line_dist)} on the line" if line else ""))

    s = len(dist_grid)
    per = directions * s
    arrays: dict[str, np.ndarray] = {"distance": dist_grid}
    for key in METRICS:
        arrays[key] = values[key][: m * per].reshape(m, directions, s)
    zero = steps
    arrays["center_train_loss"] = arrays["train_loss"][:, 0, zero]
    arrays["width_neg"], arrays["width_pos"] = _ray_widths(dist_grid, arrays["train_loss"], rise)
    if wd:  # the weight-decay term alone rises by about wd/2 t^2 along a unit ray: widths on the NLL too
        arrays["nll_width_neg"], arrays["nll_width_pos"] = _ray_widths(dist_grid, arrays["train_nll"], rise)
    if line:
        arrays["line_distance"] = line_dist
        for key in METRICS:
            arrays[f"line_{key}"] = values[key][m * per:]
        arrays["line_marks"] = np.array([0.0, line_length])
    summary = _rays_summary(arrays, labels, list(paths or [None] * m), rise, normalize, distance, directions, steps,
                            line_length, data, wd)
    finish_result(out, "rays.npz", arrays, summary, request)
    return RaysResult(arrays=arrays, summary=summary, out=out)


def _ray_widths(distance: np.ndarray, profiles: np.ndarray, rise: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`side_widths` of every ray's profile (centres, rays, distances): the (centres, rays) widths on the
    negative side and on the positive side."""
    widths = np.array([[side_widths(distance, p, rise) for p in per_centre] for per_centre in profiles])
    return widths[..., 0], widths[..., 1]


def _rays_summary(arrays, labels, paths, rise, normalize, distance, directions, steps, line_length, data, wd):
    centers = []
    for k, (label, path) in enumerate(zip(labels, paths)):
        neg, pos = arrays["width_neg"][k], arrays["width_pos"][k]
        lo, hi = np.minimum(neg, pos), np.maximum(neg, pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            asym = np.where(np.isinf(lo), np.nan, hi / lo)
        centers.append({
            "label": label,
            "path": path,
            "center_train_loss": float(arrays["train_loss"][k, 0, steps]),
            "center_test_error": float(arrays["test_error"][k, 0, steps]),
            "median_width": _finite_median(np.concatenate([neg, pos])),
            "median_full_width": _finite_median(neg + pos),
            "median_asymmetry": _finite_median(asym),
            **({"median_nll_width": _finite_median(np.concatenate([arrays["nll_width_neg"][k],
                                                                  arrays["nll_width_pos"][k]]))}
               if "nll_width_neg" in arrays else {}),
            "widths_beyond_distance": int(np.isinf(neg).sum() + np.isinf(pos).sum()),
            "max_train_loss": float(arrays["train_loss"][k].max()),
            "max_test_error": float(arrays["test_error"][k].max()),
        })
    summary = {
        "centers": centers,
        "rise": rise,
        "normalize": normalize,
        "distance": distance,
        "directions": directions,
        "steps": steps,
        "wd": wd,
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "notes": "width: distance on each side of the centre where train loss first rises by `rise` above the "
                 "centre's (null median: half the sides or more never rise that much within `distance`); asymmetry: larger "
                 "side / smaller side; the same Gaussian draws for every centre; nll width (with wd > 0): the same "
                 "on the train NLL alone, since the weight-decay term rises by about wd/2 t^2 along a unit ray "
                 "whatever the network, which keeps the train loss's widths below sqrt(2 rise / wd)",
    }
    if line_length is not None:
        d, tl = arrays["line_distance"], arrays["line_train_loss"]
        between = (d >= 0) & (d <= line_length)  # both centres are samples (see evaluate_rays)
        ends = tl[np.argmin(np.abs(d))], tl[np.argmin(np.abs(d - line_length))]
        summary["line"] = {"length": line_length, "extension": float(-d[0]),
                           "valley": line_valley(d, tl, rise, [0.0, line_length], labels[:2]),
                           "between_train_loss_max": float(np.max(tl[between])),
                           "train_loss_barrier": float(np.max(tl[between]) - (ends[0] + ends[1]) / 2),
                           "between_test_error_max": float(np.max(arrays["line_test_error"][between])),
                           "train_loss_max": float(np.max(tl)),
                           "test_error_max": float(np.max(arrays["line_test_error"])),
                           "notes": "between_*: from one centre to the other; train_loss_max, test_error_max: "
                                    "the whole line, extended beyond each centre by `extension`, the rays' reach "
                                    "in weight space (`distance`; with filter-normalised directions, `distance` "
                                    "times their mean norm); barrier: the "
                                    "maximum between them minus the mean of the two centres'; valley: the "
                                    "interval around the line's lowest sample where the train loss stays within "
                                    "`rise` of it, each centre's offset from its middle (relative: as a fraction "
                                    "of the half-width) and the train loss at the line's end beyond it"}
    return summary


def width_report(swa: str | Path, sgd: str | Path, out: str | Path | None = None, *,
                 model: str | None = None, model_kwargs: dict | None = None,
                 data_overrides: dict[str, Any] | None = None, device: str = "auto", data=None,
                 **kwargs: Any) -> RaysResult:
    """The SWA paper's width figures (Izmailov et al. 2018, fig. 5) for two
    checkpoints: the line through SGD and SWA extended both ways, and random
    unit rays from each with the same directions. ``data``: the
    :class:`~landscape.data.Dataset` the networks were trained on with
    ``data=``, and ``model`` / ``model_kwargs`` the network they hold when it
    is not one the checkpoints name (:func:`~landscape.inputs.load_points`:
    a foreign checkpoint, or your ``package.module:factory``). ``kwargs`` go to
    :func:`evaluate_rays` (directions, distance, steps, normalize, rise, ...),
    but for the data options (``dataset=``, ``data_path=``, ...), which join
    ``data_overrides``."""
    from .inputs import DATA_FIELDS, joined_data_options, load_points

    data_overrides = joined_data_options(data_overrides, {k: kwargs.pop(k) for k in DATA_FIELDS if k in kwargs})
    pts = load_points([swa, sgd], model=model, model_kwargs=model_kwargs, data_overrides=data_overrides,
                      device=device, data=data)
    kwargs.setdefault("wd", pts.wd)
    return evaluate_rays(pts.model, pts.vectors, pts.data, out, labels=["SWA", "SGD"], paths=[str(swa), str(sgd)],
                         line=True, **kwargs)
