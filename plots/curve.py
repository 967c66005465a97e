"""Figure of a curve evaluation: train loss and test error against t, the
fitted curve beside the straight line, endpoints marked (Garipov et al. 2018,
fig. 2). Drawn from ``curve.npz`` and ``summary.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.checkpoint import read_result

from .style import new_figure, save_figure

__all__ = ["plot_curve_metric", "draw_curve_figure", "load_curve_result"]

CURVE_COLOR = "#1f77b4"
LINE_COLOR = "#d62728"


def load_curve_result(result_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The stored arrays and summary of a curve result."""
    return read_result(result_dir, "curve.npz")


def plot_curve_metric(ax, arrays: dict[str, np.ndarray], metric: str, label: str, summary: dict | None = None):
    """Draw one metric against t for the curve and the line on ``ax``; returns ``ax``."""
    t = arrays["t"]
    curve_name = (summary or {}).get("curve_type", "curve")
    bends = (summary or {}).get("bends")
    curve_label = f"{curve_name} ({bends} bend{'s' if bends != 1 else ''})" if bends is not None else curve_name
    ax.plot(t, arrays[f"line_{metric}"], color=LINE_COLOR, lw=2, ls="--", label="straight line")
    ax.plot(t, arrays[f"curve_{metric}"], color=CURVE_COLOR, lw=2, label=curve_label)
    ends = [0, -1]
    ax.scatter(t[ends], arrays[f"curve_{metric}"][ends], s=60, color="black", zorder=5, label="endpoints")
    ax.set_xlabel("t")
    ax.set_ylabel(label)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    return ax


def draw_curve_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``curve.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = load_curve_result(result_dir)
    fig, (ax_loss, ax_err) = new_figure(1, 2, width=10.0, height=3.8)
    split = summary.get("eval_split", "test")
    plot_curve_metric(ax_loss, arrays, "train_loss", "train loss", summary)
    plot_curve_metric(ax_err, arrays, "test_error", f"{split} error (%)", summary)
    c, l = summary["curve"], summary["line"]
    ax_loss.set_title(f"train loss barrier: curve {c['train_loss_barrier']:.3f}, line {l['train_loss_barrier']:.3f}",
                      fontsize=10)
    ax_err.set_title(f"{split} error barrier: curve {c['test_error_barrier']:.2f}%, line {l['test_error_barrier']:.2f}%",
                     fontsize=10)
    ax_loss.legend(frameon=False, fontsize=9)
    if summary.get("synthetic"):
        fig.suptitle("synthetic data — benchmark only", color="gray")
    return save_figure(fig, result_dir / "curve", formats)
