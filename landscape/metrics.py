"""Summaries of metrics along a path: barriers, arc-length averages, ensembles."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["barrier", "path_stats", "arc_length_mean", "ensemble_metrics", "running_ensemble",
           "expected_calibration_error", "diagram_calibration_error", "reliability", "ECE_BINS", "PROB_FLOOR"]

# The smallest probability a log is taken of: members' probabilities are
# float64 (landscape.evaluate.probs_of), and exact down to it.
PROB_FLOOR = float(np.finfo(np.float64).tiny)

# Equal-width bins of the top-label confidence for the expected calibration error.
ECE_BINS = 20


def barrier(values: np.ndarray) -> float:
    """Maximum along the path minus the mean of its two endpoints: Frankle et al.
    (2020)'s barrier (Garipov et al. 2018 plot the path without naming a scalar)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.max() - 0.5 * (values[0] + values[-1]))


def arc_length_mean(t: np.ndarray, values: np.ndarray, *, arc: np.ndarray) -> float:
    """integral m ds / integral ds over the path, s its arc length, by the
    trapezoid rule in s: the average of the metric over the path's length,
    which the papers' objective weights by (their ``int`` column, whose
    intervals weigh the chord between their points; here the arc length).
    ``arc``: the arc length from ``t[0]`` to each ``t``
    (:meth:`~landscape.curves.base.Curve.arc_lengths`), keyword-only (it
    was the speed ||phi'(t)|| in earlier builds); one that is not 0, then
    non-decreasing, is refused. For a line it is the
    trapezoid rule's time average, not the plain mean of the samples (which
    weighs the two ends as fully as the points between); a path of no
    length (its ends one network) gets that time average too."""
    t, values, arc = (np.asarray(a, dtype=np.float64) for a in (t, values, arc))
    if arc[0] != 0 or (np.diff(arc) < 0).any():
        raise ValueError("arc: the arc length from t[0] to each t (0, then non-decreasing), not the speed")
    den = arc[-1] - arc[0]
    if not den > 0:
        return float(np.trapezoid(values, t) / max(t[-1] - t[0], 1e-300))
    return float(np.trapezoid(values, arc) / den)


def path_stats(t: np.ndarray, values: np.ndarray, arc: np.ndarray) -> dict[str, float]:
    """start / end / min / max / mean / arc-length-weighted mean / barrier of one metric."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "start": float(values[0]),
        "end": float(values[-1]),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "arc_mean": arc_length_mean(t, values, arc=arc),
        "barrier": barrier(values),
    }


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, ...]:
    """The reliability diagram of predicted probabilities ``probs`` (M,
    classes) against ``labels`` (M,): for each of ``bins`` equal-width bins of
    the top-label confidence (the largest probability; a confidence on an
    edge goes to the bin above, 1.0 to the last), the examples' mean
    confidence, their accuracy (a fraction) and their count; NaN for an
    empty bin, and every bin empty when a probability is not finite."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.size == 0 or not np.isfinite(probs).all():  # overflowing outputs: no calibration to measure
        return np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=(predicted == labels).astype(np.float64), minlength=bins) / count
    return mean_confidence, accuracy, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The expected calibration error in percent (Guo et al. 2017): the
    count-weighted mean over the :func:`reliability` bins of |accuracy -
    mean confidence| (:func:`diagram_calibration_error`)."""
    return diagram_calibration_error(reliability(probs, labels, bins))


def diagram_calibration_error(diagram: Sequence[np.ndarray]) -> float:
    """The expected calibration error (percent) of a :func:`reliability`
    diagram (mean confidence, accuracy, count per bin)."""
    confidence, accuracy, count = diagram
    if count.sum() == 0:  # non-finite probabilities (or none): NaN, as their NLL is
        return float("nan")
    filled = count > 0
    return float(100.0 * (count[filled] * np.abs(accuracy[filled] - confidence[filled])).sum() / count.sum())


def ensemble_metrics(probs: np.ndarray, labels: np.ndarray, calibration: bool = True) -> dict[str, float]:
    """NLL, error (percent) and expected calibration error (percent,
    :func:`expected_calibration_error`) of the prediction averaged over
    members.

    ``probs`` (N, M, classes): N members' predicted probabilities on M
    examples; ``labels`` (M,). ``calibration=False`` leaves the ECE out.
    The NLL is exact while the averaged probability of every true class is
    above :data:`PROB_FLOOR` (float64's smallest normal number, 2.2e-308):
    up to 708 nats an example. Below it, an example counts 708 nats.
    """
    mean = np.asarray(probs, dtype=np.float64).mean(axis=0)  # (M, classes)
    labels = np.asarray(labels)
    p_true = mean[np.arange(len(labels)), labels]
    out = {
        "nll": float(-np.log(np.clip(p_true, PROB_FLOOR, None)).mean()),
        # a NaN probability (a member whose logits overflowed) predicts nothing: an error, as the engine counts it
        "error": float(100.0 * ((mean.argmax(axis=1) != labels) | np.isnan(mean).any(axis=1)).mean()),
        "members": int(probs.shape[0]),
    }
    if calibration:
        out["ece"] = expected_calibration_error(mean, labels)
    return out


def running_ensemble(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NLL and error (percent) of the averaged prediction of the first 1, 2,
    .., N members (``probs`` (N, M, classes)): a model average against the
    number of samples in it."""
    probs = np.asarray(probs, dtype=np.float64)
    running = np.cumsum(probs, axis=0) / np.arange(1, len(probs) + 1)[:, None, None]
    rows = [ensemble_metrics(r[None], labels, calibration=False) for r in running]
    return np.array([r["nll"] for r in rows]), np.array([r["error"] for r in rows])
