"""Figure of a curve evaluation: train loss and test error against t, the
fitted curve beside the straight line, endpoints marked (Garipov et al. 2018,
fig. 2). Drawn from ``curve.npz`` and ``summary.json`` alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from landscape.checkpoint import read_result

from .style import (LINE_COLOR, MARKERS, PATH_LOG_FACTOR, compare_color, drawing, fs, legend_below, log_scale_when_spread,
                    mark_endpoints, new_figure, note_synthetic, panel_legend, result_color, result_colors, save_figure,
                    train_loss_label)

__all__ = ["plot_curve_metric", "draw_curve_figure", "load_curve_result", "compare_curves", "curve_label",
           "curve_color", "line_groups"]

CURVE_COLOR = compare_color(0)  # a curve of a type the colour table (style.RESULT_COLORS) does not name


def load_curve_result(result_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The stored arrays and summary of a curve result."""
    return read_result(result_dir, "curve.npz")


def curve_label(summary: dict | None) -> str:
    """A curve result's name in a legend: its type and bends, as "bezier (1 bend)"."""
    curve_name = (summary or {}).get("curve_type", "curve")
    bends = (summary or {}).get("bends")
    return f"{curve_name} ({bends} bend{'s' if bends != 1 else ''})" if bends is not None else curve_name


def curve_color(summary: dict | None) -> str:
    """A curve result's colour, by its type (style.RESULT_COLORS: a Bezier
    curve's is one colour in its own figure and in every comparison)."""
    return result_color((summary or {}).get("curve_type")) or CURVE_COLOR


def plot_curve_metric(ax, arrays: dict[str, np.ndarray], metric: str, label: str, summary: dict | None = None):
    """Draw one metric against t for the curve and the line on ``ax``; returns ``ax``."""
    t = arrays["t"]
    ax.plot(t, arrays[f"line_{metric}"], color=LINE_COLOR, lw=2, ls="--", label="straight line")
    ax.plot(t, arrays[f"curve_{metric}"], color=curve_color(summary), lw=2, label=curve_label(summary))
    mark_endpoints(ax, t, arrays[f"curve_{metric}"])
    _axes(ax, label, [arrays[f"{path}_{metric}"] for path in ("line", "curve")], metric)
    return ax


def _axes(ax, label: str, drawn, metric: str) -> None:
    """A path figure's axes: t from 0 to 1, ``label`` up, a grid; a loss spanning decades on a log axis."""
    ax.set_xlabel("t")
    ax.set_ylabel(label)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if not metric.endswith("error"):  # errors stay linear, as the papers draw them
        log_scale_when_spread(ax, np.concatenate([np.ravel(v) for v in drawn]), PATH_LOG_FACTOR)


@drawing
def draw_curve_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``curve.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = load_curve_result(result_dir)
    fig, (ax_loss, ax_err) = new_figure(1, 2, width=10.0, height=3.8)
    split = summary.get("eval_split", "test")
    plot_curve_metric(ax_loss, arrays, "train_loss", train_loss_label(summary), summary)
    plot_curve_metric(ax_err, arrays, "test_error", f"{split} error (%)", summary)
    c, l = summary["curve"], summary["line"]
    # three significant digits: a barrier of 1e-4 is not "0.000"
    title = f"train loss barrier: curve {c['train_loss_barrier']:.3g}, line {l['train_loss_barrier']:.3g}"
    if summary.get("wd"):  # the weight-decay term may fall along the curve and hide a rise in NLL
        nll = [p["metrics"]["train_nll"]["barrier"] for p in (c, l)]
        title += f"\nNLL alone: curve {nll[0]:.3g}, line {nll[1]:.3g}"
    ax_loss.set_title(title + _gaps(arrays, "train_loss"), fontsize=fs(10))
    ax_err.set_title(f"{split} error barrier: curve {c['test_error_barrier']:.3g}%, line {l['test_error_barrier']:.3g}%"
                     + _gaps(arrays, "test_error"), fontsize=fs(10))
    panel_legend(fig, ax_loss, frameon=False, fontsize=fs(9))
    note_synthetic(fig, [summary])
    return save_figure(fig, result_dir / "curve", formats)


def _gaps(arrays: dict[str, np.ndarray], metric: str) -> str:
    """A title's last line when points of ``metric`` are not finite (a network whose loss overflowed): the
    lines leave them out, and the reader is told."""
    missing = sum(int(np.sum(~np.isfinite(np.asarray(arrays[f"{p}_{metric}"], dtype=float)))) for p in ("curve", "line"))
    return f"\n{missing} point{'s' if missing != 1 else ''} not finite: gaps in the lines" if missing else ""


def _ends(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([arrays[f"line_{m}"][[0, -1]] for m in ("train_loss", "test_nll", "test_error")], dtype=float)


def line_groups(results: Sequence[tuple[dict[str, np.ndarray], dict]]) -> list[list[int]]:
    """The results grouped by the straight line they share, in order of first
    appearance (lists of indices): two lines join the same two networks when
    their metrics at t = 0 and t = 1 agree (to float32 rounding), which two
    other pairs of networks would not."""
    groups: list[list[int]] = []
    for i, (arrays, _) in enumerate(results):
        ends = _ends(arrays)
        for g in groups:
            if np.allclose(ends, _ends(results[g[0]][0]), rtol=1e-6, atol=1e-9):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


@drawing
def compare_curves(results: Sequence[tuple[dict[str, np.ndarray], dict]], labels: Sequence[str]):
    """Several curve results on one pair of axes per metric (train loss,
    test error against t), each curve in its type's colour, as in its own
    figure (:func:`curve_color`; another where two share a type), and its own
    marker (:data:`~landscape.plots.style.MARKERS`, about eight along it), labelled
    ``labels[i]``. Curves between the same endpoints (:func:`line_groups`)
    share one straight line, drawn dashed from the group's result with the
    most points: red and labelled "straight line" when every curve shares
    it, else in the colour of the group's first curve and labelled with the
    group's curves; one legend below both panels. Returns the figure (not
    saved)."""
    split = results[0][1].get("eval_split", "test")
    fig, axes = new_figure(1, 2, width=10.0, height=3.8)
    groups = line_groups(results)
    colors = result_colors(s.get("curve_type") for _, s in results)  # each in its own figure's colour
    for ax, metric, metric_label in zip(axes, ("train_loss", "test_error"),
                                        (train_loss_label(*(r[1] for r in results)), f"{split} error (%)")):
        for g in groups:
            a = results[max(g, key=lambda i: results[i][0]["t"].size)][0]
            if len(groups) == 1:
                ax.plot(a["t"], a[f"line_{metric}"], color=LINE_COLOR, lw=2, ls="--", label="straight line")
            else:
                ax.plot(a["t"], a[f"line_{metric}"], color=colors[g[0]], lw=1.5, ls="--",
                        label=f"straight line: {', '.join(labels[i] for i in g)}")
        for i, ((a, _), label) in enumerate(zip(results, labels)):
            # each its own marker, about eight a curve, the curves' marks apart: told apart in grey print too
            step = max(1, a["t"].size // 8)
            ax.plot(a["t"], a[f"curve_{metric}"], color=colors[i], lw=2, label=label, marker=MARKERS[i % len(MARKERS)],
                    ms=fs(5), markevery=((i * step) // len(results) + step // 2, step))
        for i, (a, _) in enumerate(results):  # after the curves, so the legend lists the paths first
            mark_endpoints(ax, a["t"], a[f"curve_{metric}"], "endpoints" if i == 0 else None)
        _axes(ax, metric_label, [a[f"{path}_{metric}"] for a, _ in results for path in ("line", "curve")], metric)
    legend_below(fig, axes[0])
    note_synthetic(fig, [summary for _, summary in results])
    return fig
