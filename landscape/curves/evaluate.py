"""Evaluation along a fitted curve and along the straight line between its ends.

Writes (when ``out`` is given) ``curve.npz`` with every per-t array,
``summary.json`` with the headline numbers and ``config.json``; the figure
``curve.png`` is drawn from those files by ``landscape.plots.curve``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from landscape.brief import brief_repr
from landscape.checkpoint import Checkpoint
from landscape.data import Dataset
from landscape.device import check_fits
from landscape.errors import UserError, check_whole
from landscape.bn import bn_modules, per_batch_norms
from landscape.evaluate import METRICS, precision_amp
from landscape.inputs import buffers_named, check_data_options, stored_data
from landscape.metrics import ensemble_metrics, path_stats
from landscape.sweep import STORE, begin_result, finish_result, is_main, process_device, request_key, run_sweep

from .fit import LoadedCurve, load_curve

__all__ = ["CurveEvaluation", "evaluate_curve"]


@brief_repr
@dataclass
class CurveEvaluation:
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]  # what curve.npz holds
    out: Path | None


def _normalisation_note(normalisation: str) -> str:
    """The summary notes' words for a curve network's ``normalisation``."""
    if normalisation == "batch norm re-estimated":
        return "batch norm re-estimated at every point"
    if normalisation == "none":
        return "no batch norm: every point's network as it is"
    return f"each batch normalised by its own statistics ({normalisation}: track_running_stats=False)"


def evaluate_curve(
    curve: str | Path | Checkpoint | LoadedCurve,
    out: str | Path | None = None,
    *,
    points: int = 61,
    data: Dataset | None = None,
    wd: float | None = None,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    precision: str = "fp32",
    device: str = "auto",
    resume: bool = False,
    progress: bool = False,
    argv: Sequence[str] | None = None,
    model: str | None = None,
    **data_overrides: Any,
) -> CurveEvaluation:
    """Evaluate a curve checkpoint at ``points`` evenly spaced t, and the straight
    line between its endpoints at the same t (Garipov et al. 2018, fig. 2).

    Per t: train loss (NLL + wd/2 ||w||^2), train NLL, train error, test NLL,
    test error, with batch norm re-estimated at every point. Summaries per
    path: length; for each metric start / end / min / max / mean / the
    arc-length-weighted mean and the barrier (max minus the mean of the two
    ends); the ensemble of the points' predictions (test error and NLL).
    ``wd`` and the data default to the settings the curve was fitted with.
    ``model`` names the curve's own network, to trust a
    ``package.module:factory`` it names. ``precision="bf16"`` evaluates under bf16 autocast (about 2x faster on
    CPUs with bf16 units; metrics within about 1 % of fp32).

    With ``out``, finished points are kept in ``out/sweep.partial.npz`` (with
    their test-set probabilities, for the ensembles) as the evaluation goes;
    after an interruption ``resume=True`` continues it, and on a finished
    ``out`` returns the stored result. Without ``resume`` a folder holding
    either is refused.
    """
    check_data_options(data_overrides)  # a misspelt keyword lands among them
    amp = precision_amp(precision)
    points = check_whole("--points", points)
    if points < 3:  # the ends alone have no barrier: nothing between them would be measured
        raise UserError(f"--points must be at least 3 (the ends and a point between them), got {points}")
    out_path = Path(out) if out is not None else None
    device = process_device(device)  # under torchrun: joins the process group
    loaded = curve if isinstance(curve, LoadedCurve) else load_curve(curve, device, model)
    data, wd = stored_data(loaded.meta, loaded.spec, loaded.path or "the curve", data_overrides, device, data, wd)
    model, crv = loaded.model.to(device), loaded.curve.to(device)
    check_fits(8.0 * 2 * points * len(data.y_test) * data.num_classes,
               f"--points {points} (the test-set probabilities of every point, kept for the ensembles: 2 x points x "
               f"test images x classes float64)", "cpu")
    request = request_key([crv.anchors().detach()], {
        "kind": "curve", "points": points, "wd": wd, "batch_size": batch_size, "bn_batches": bn_batches,
        "bn_stats": bn_stats, "precision": precision, "dataset": data.describe()})
    finished = begin_result(out_path, "curve.npz", resume, "curve", request)
    if finished is not None:
        arrays, summary = finished
        return CurveEvaluation(summary=summary, arrays=arrays, out=out_path)
    kept = (loaded.meta or {}).get("buffers_from_start") or []  # the fit found the end's buffers other
    kept_note = (f"{buffers_named(kept)} of the end network differ{'' if len(kept) > 1 else 's'} from the start's, "
                 f"and every point, t = 1 included, keeps the start's: only parameters move along a path"
                 if kept else "")
    if kept_note and is_main():
        print(f"note: {kept_note}", file=sys.stderr)

    t = torch.linspace(0, 1, points, dtype=torch.float64, device=device)
    with torch.no_grad():
        W = crv.anchors().detach()  # (A, P)
        curve_coeffs = crv.coefficients(t)  # (N, A)
        line_coeffs = crv.line_coefficients(t)
        speed_curve = crv.speed(t).double().cpu().numpy()
        arc_curve = crv.arc_lengths(t.cpu().numpy())  # exact at a polygonal chain's bends, where the speed jumps
        line_length = float((W[-1] - W[0]).double().norm())
        curve_length = float(crv.length())
    # Both paths in one sweep: they share the passes over the data.
    config = {"command": "curve", "argv": list(argv) if argv is not None else None,
              "checkpoint": str(loaded.path) if loaded.path else None, "points": points, "wd": wd,
              "batch_size": batch_size, "bn_batches": bn_batches, "bn_stats": bn_stats, "precision": precision,
              "device": str(device), "dataset": data.describe()}
    res = run_sweep(model, W, torch.cat([curve_coeffs, line_coeffs]).cpu().numpy(), data,
                    store=out_path / STORE if out_path is not None else None, resume=resume,
                    settings={"kind": "curve", "dataset": data.describe()}, config=config, wd=wd,
                    batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats, points_per_pass=points_per_pass,
                    progress=progress, amp=amp, return_probs=True,
                    what=f"{points} along the curve and {points} along the line, the shared ends once")
    n = points
    arrays: dict[str, np.ndarray] = {"t": t.cpu().numpy()}
    for key in METRICS:
        arrays[f"curve_{key}"] = res[key][:n]
        arrays[f"line_{key}"] = res[key][n:]
    arrays["curve_speed"] = speed_curve
    arrays["line_speed"] = np.full(n, line_length)
    arrays["curve_arc_length"] = arc_curve  # from t = 0: the arc_mean weights
    arrays["line_arc_length"] = line_length * arrays["t"]
    labels = data.y_test.cpu().numpy()
    summary: dict[str, Any] = {}
    for path, sl, length in (("curve", slice(0, n), curve_length), ("line", slice(n, 2 * n), line_length)):
        arc = arrays[f"{path}_arc_length"]
        stats = {key: path_stats(arrays["t"], res[key][sl], arc) for key in METRICS}
        ens = ensemble_metrics(res["probs"][sl], labels)
        summary[path] = {
            "length": length,
            "train_loss_barrier": stats["train_loss"]["barrier"],
            "train_nll_barrier": stats["train_nll"]["barrier"],  # without the weight-decay term, which may fall
            "test_error_barrier": stats["test_error"]["barrier"],
            "train_loss_max": stats["train_loss"]["max"],
            "test_error_max": stats["test_error"]["max"],
            "ensemble_test_error": ens["error"],
            "ensemble_test_nll": ens["nll"],
            "metrics": stats,
        }
    normalisation = ("batch norm re-estimated" if bn_modules(model) else
                     f"per batch of {batch_size}" if per_batch_norms(model) else "none")
    summary.update({
        "points": n,
        "curve_type": crv.name,
        "bends": crv.bends,
        "wd": wd,
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "checkpoint": str(loaded.path) if loaded.path else None,
        # what makes a point's numbers differ from its network's as trained, where they do
        "normalisation": normalisation,
        "notes": "barrier = max along the path - mean of its two ends; train_loss = NLL + wd/2 ||w||^2; "
                 f"errors in percent; {_normalisation_note(normalisation)}; ensemble = averaged "
                 "predicted probabilities of all points of the path" + (f"; {kept_note}" if kept_note else ""),
    })
    finish_result(out_path, "curve.npz", arrays, summary, request)
    return CurveEvaluation(summary=summary, arrays=arrays, out=out_path)

