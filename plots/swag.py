"""Figure of a SWAG evaluation: the Bayesian model average's test NLL and error
against the number of samples, the SWA mean and the samples' own mean as
lines (Maddox et al. 2019). Drawn from ``swag.npz`` and ``summary.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from landscape.checkpoint import read_result

from .style import new_figure, save_figure

__all__ = ["draw_swag_figure", "plot_model_average"]

BMA_COLOR = "#1f77b4"
SWA_COLOR = "#d62728"
SAMPLE_COLOR = "#7f7f7f"


def plot_model_average(ax, bma: np.ndarray, centre: float, sample_mean: float, *, label: str, centre_label: str,
                       ylabel: str, log_when_spread: bool = False) -> None:
    """One panel of a model average of samples (swag, subspace): its metric after
    1..S samples, against the centre's and a single sample's mean as lines.
    ``log_when_spread``: a log axis when the values differ more than 5-fold
    (a poor centre would flatten the rest)."""
    s = np.arange(1, len(bma) + 1)
    ax.plot(s, bma, color=BMA_COLOR, lw=2, marker="o", ms=3, label=label)
    ax.axhline(centre, color=SWA_COLOR, lw=1.5, ls="--", label=centre_label)
    ax.axhline(sample_mean, color=SAMPLE_COLOR, lw=1.5, ls=":", label="single sample (mean)")
    shown = np.append(bma, centre)
    if log_when_spread and np.all(shown > 0) and shown.max() > 5 * shown.min():
        ax.set_yscale("log")
    ax.set_xlabel("samples averaged")
    ax.set_ylabel(ylabel)
    ax.set_xlim(1, max(2, len(s)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def draw_swag_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``swag.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, "swag.npz")
    split = summary.get("eval_split", "test")
    fig, axes = new_figure(1, 2, width=10.0, height=3.8)
    for ax, key, label in ((axes[0], "test_nll", f"{split} NLL"), (axes[1], "test_error", f"{split} error (%)")):
        plot_model_average(ax, arrays[f"bma_{key}"], float(arrays[f"mean_{key}"]),
                           float(np.mean(arrays[f"sample_{key}"])),
                           label=f"{summary.get('method', 'SWAG')} model average", centre_label="SWA (the mean)",
                           ylabel=label)
    axes[0].legend(frameon=True, framealpha=0.9, fontsize=9, loc="best")
    bma = summary["bma"]
    fig.suptitle(f"{summary.get('method', 'SWAG')}, scale {summary.get('scale')}, rank {summary.get('rank')}: "
                 f"{bma['members']} samples, {split} NLL {bma['test_nll']:.4f}, error {bma['test_error']:.2f}%"
                 + ("   [synthetic data]" if summary.get("synthetic") else ""), fontsize=10)
    return save_figure(fig, result_dir / "swag", formats)
