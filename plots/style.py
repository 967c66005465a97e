"""Shared figure set-up: a non-interactive backend, sizes, atomic saving."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# TrueType (Type 42) fonts in PDF and PostScript: the Type 3 default is refused by some venues' checks.
matplotlib.rcParams["pdf.fonttype"] = 42
matplotlib.rcParams["ps.fonttype"] = 42

from landscape.checkpoint import atomic_save  # noqa: E402
from landscape.errors import UserError  # noqa: E402

__all__ = ["new_figure", "save_figure", "legend_below", "compare_color", "fs", "set_figure_width", "note_synthetic",
           "mark_endpoints", "log_scale_when_spread", "FORMATS", "SWA_COLOR", "SGD_COLOR", "AVERAGE_COLOR", "SAMPLE_COLOR"]

FORMATS = ("png", "pdf", "svg")
# One colour per thing in every figure: SWA (or a posterior's centre) blue and SGD orange, as the first and
# second centre of a width report (tab10's order); a model average of samples green, a single sample grey.
# Red is a curve figure's straight line, and nothing else.
SWA_COLOR = "#1f77b4"
SGD_COLOR = "#ff7f0e"
AVERAGE_COLOR = "#2ca02c"
SAMPLE_COLOR = "#7f7f7f"
# Results compared in one figure: matplotlib's tab10 without its red (a curve figure's straight line).
COMPARE_COLORS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                  "#17becf")


def compare_color(i: int) -> str:
    """The colour of the i-th result in a comparison figure."""
    return COMPARE_COLORS[i % len(COMPARE_COLORS)]


def legend_below(fig, ax) -> None:
    """One legend of ``ax``'s labelled artists below every panel of ``fig`` (up to 4 columns), clear of the data."""
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), frameon=False, fontsize=fs(9))


# Every figure's own width (None), or one width in inches for all (set_figure_width: a paper's column or page).
_WIDTH: list[float | None] = [None]
BASE_FONT = 10.0  # matplotlib's default size, which the sizes written in the figures' code assume
PAPER_FONT = 8.0  # the text size of figures drawn to a paper's width


def set_figure_width(width: float | None) -> None:
    """Draw every later figure ``width`` inches wide (its height scaled with
    it) with text at 8 pt, as it will be printed: 3.25 for a column, 6.75 for
    a page; None puts back each figure's own size and 10-pt text."""
    if width is not None and not (isinstance(width, (int, float)) and 1.0 <= width <= 20.0):  # also NaN
        raise UserError(f"--width must be between 1 and 20 inches, got {width}")
    _WIDTH[0] = None if width is None else float(width)
    matplotlib.rcParams["font.size"] = BASE_FONT if width is None else PAPER_FONT


def fs(points: float) -> float:
    """A text size written for a figure's own size (10-pt text), at the current
    text size: the same, or 8/10 of it when figures are drawn to a paper's width."""
    return points * matplotlib.rcParams["font.size"] / BASE_FONT


def note_synthetic(fig, summaries) -> None:
    """The figure's title says so when any of the results drawn (their
    summaries) came from synthetic data."""
    if any(s.get("synthetic") for s in summaries):
        fig.suptitle("synthetic data — benchmark only", color="gray")


def mark_endpoints(ax, t, values, label: str | None = "endpoints", size: float = 60) -> None:
    """A path's two ends (t = 0 and 1) as black dots, whole at the axes' edges."""
    t, values = np.asarray(t), np.asarray(values)
    ax.scatter(t[[0, -1]], values[[0, -1]], s=size, color="black", zorder=5, label=label, clip_on=False)


def log_scale_when_spread(ax, values) -> None:
    """A log y axis when the positive ``values`` drawn differ more than 5-fold (a poor centre or sample would
    flatten the rest on a linear one)."""
    values = np.asarray(values, dtype=float)
    if np.all(values > 0) and values.max() > 5 * values.min():
        ax.set_yscale("log")


def new_figure(rows: int = 1, cols: int = 1, *, width: float = 5.0, height: float = 4.0):
    if _WIDTH[0] is not None:
        width, height = _WIDTH[0], height * _WIDTH[0] / width
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), constrained_layout=True)
    return fig, axes


def save_figure(fig, stem: str | os.PathLike, formats=("png",), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format (atomically) and close it."""
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        atomic_save(lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), path)
        written.append(path)
    plt.close(fig)
    return written
