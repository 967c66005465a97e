"""Shared figure set-up: a non-interactive backend, sizes, atomic saving."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import Collection, PathCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# TrueType (Type 42) fonts in PDF and PostScript: the Type 3 default is refused by some venues' checks.
matplotlib.rcParams["pdf.fonttype"] = 42
matplotlib.rcParams["ps.fonttype"] = 42

from landscape.checkpoint import atomic_save  # noqa: E402
from landscape.errors import UserError  # noqa: E402

__all__ = ["new_figure", "save_figure", "legend_below", "panel_legend", "paper_width", "compare_color", "fs", "set_figure_width", "note_synthetic",
           "mark_endpoints", "log_scale_when_spread", "train_loss_label", "FORMATS", "SWA_COLOR", "SGD_COLOR", "AVERAGE_COLOR", "SAMPLE_COLOR"]

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


def legend_below(fig, ax, size: float = 9, loc: str = "outside lower center") -> None:
    """One legend of ``ax``'s labelled artists below every panel of ``fig``,
    clear of the data: up to 4 columns, as many as fit the figure's width."""
    handles, names = ax.get_legend_handles_labels()
    size = fs(size)
    entry = (max(map(len, names), default=1) + 5) * 0.58 * size / 72  # inches: the marker, the text, a gap
    columns = max(1, min(len(names), 4, int(0.95 * fig.get_figwidth() / entry)))  # as many as fit the width
    fig.legend(handles, names, loc=loc, ncol=columns, frameon=False, fontsize=size)


def panel_legend(fig, ax, **kwargs) -> None:
    """``ax``'s legend inside it (``kwargs`` as ``ax.legend`` takes them) at
    the figure's own size; at a paper's width, whose narrow panels have no
    room clear of the data, one legend below every panel (:func:`legend_below`)."""
    if paper_width() is None:
        ax.legend(**kwargs)
    else:
        legend_below(fig, ax)


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


def paper_width() -> float | None:
    """The width every figure is drawn to (:func:`set_figure_width`), or None: each its own."""
    return _WIDTH[0]


def fs(points: float) -> float:
    """A text size written for a figure's own size (10-pt text), at the current
    text size: the same, or 8/10 of it when figures are drawn to a paper's width."""
    return points * matplotlib.rcParams["font.size"] / BASE_FONT


def note_synthetic(fig, summaries) -> None:
    """The figure's title says so when any of the results drawn (their
    summaries) came from synthetic data."""
    if any(s.get("synthetic") for s in summaries):
        fig.suptitle("synthetic data — benchmark only", color="gray")


def train_loss_label(*summaries: dict) -> str:
    """The axis label of a train loss: the NLL plus the weight-decay term
    wd/2 ||w||^2 the results were evaluated with (as the papers' train loss),
    which near a minimum can be most of it, so the figure says so."""
    wds = {s.get("wd", s.get("config", {}).get("wd") if isinstance(s.get("config"), dict) else None)
           for s in summaries}
    if wds <= {0, 0.0, None}:
        return "train loss"
    return f"train loss (NLL + L2, wd {wds.pop():g})" if len(wds) == 1 else "train loss (NLL + L2)"


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


# Drawn to a paper's width, a row of panels narrower than this wraps into more rows (a column's 3.25 inches
# stacks them; a page's 6.75 takes two a row), each panel keeping its own shape, the whole at most a page tall.
MIN_PANEL = 3.0
MAX_HEIGHT = 9.0
MIN_PANEL_HEIGHT = 1.6


def new_figure(rows: int = 1, cols: int = 1, *, width: float = 5.0, height: float = 4.0, group: int = 1):
    """A figure of rows x cols panels, ``width`` x ``height`` inches at its own
    size. Drawn to a paper's width (:func:`set_figure_width`) it is scaled to
    that width; a single row of panels that would each be narrower than
    :data:`MIN_PANEL` wraps into rows, and the panels come back as a flat array
    in their order (as a single row's are). ``group``: a wrapped row holds a
    whole number of such runs of panels (one result's pair), where one fits."""
    paper = _WIDTH[0]
    if paper is None or rows != 1 or cols == 1 or paper / cols >= MIN_PANEL:
        if paper is not None:
            width, height = paper, height * paper / width
        return plt.subplots(rows, cols, figsize=(width, height), constrained_layout=True)
    per_row = max(1, int(paper // MIN_PANEL))
    if per_row >= group:
        per_row -= per_row % group
    n_rows = -(-cols // per_row)
    panel_height = (paper / per_row) * height / (width / cols)  # each panel's own shape
    panel_height = max(MIN_PANEL_HEIGHT, min(panel_height, MAX_HEIGHT / n_rows))
    fig, grid = plt.subplots(n_rows, per_row, figsize=(paper, panel_height * n_rows), constrained_layout=True,
                             squeeze=False)
    panels = list(grid.ravel())
    for ax in panels[cols:]:  # the last row's empty places
        fig.delaxes(ax)
    return fig, np.array(panels[:cols], dtype=object)


def _wrapped(text: str, inches: float, points: float) -> str:
    """``text`` broken into lines that fit ``inches`` at ``points`` (an average
    character of the sans-serif font is about 0.58 of its size), between
    words only; a line with mathtext (``$...$``, as ``--labels`` may give) is
    left whole, since a break inside it would show the raw TeX."""
    chars = max(12, int(inches * 72 / (0.58 * points)))
    return "\n".join(textwrap.fill(_glued(line), chars, break_on_hyphens=False, break_long_words=False)
                     .replace(_GLUE, " ") if len(line) > chars and "$" not in line else line
                     for line in text.split("\n"))


_GLUE = "\u00a0"  # a no-break space: textwrap does not break at it, and it is put back as a space


def _glued(line: str) -> str:
    """``line`` with the spaces a break would read badly at made unbreakable:
    before a number or an "=" / "±" and after one ("line 61.2%", "σ = 0.051"),
    inside a short parenthesis ("(NLL + L2, wd 0.0005)") and before a unit's
    ("error (%)")."""
    line = re.sub(r"\((?=[^()]{0,30}\))[^()]*\)", lambda m: m.group(0).replace(" ", _GLUE), line)
    line = re.sub(r" (?=\([^()\s]{1,3}\))", _GLUE, line)
    line = re.sub(r" (?=[-+±=]?\d|[=±])", _GLUE, line)
    return re.sub(r"(?<=[=±]) ", _GLUE, line)


def wrap_titles(fig) -> None:
    """Break the figure's title and every panel's title into lines that fit
    their width: a title written for a figure's own size stays whole when
    the figure is drawn to a column or a page, instead of running off it."""
    width = fig.get_figwidth()
    title = getattr(fig, "_suptitle", None)
    if title is not None and title.get_text():
        title.set_text(_wrapped(title.get_text(), 0.96 * width, title.get_fontsize()))
    for ax in fig.axes:
        inches = 1.1 * ax.get_position().width * width  # before the layout: the default margins, a bit wider after
        for text in (ax.title, ax._left_title, ax._right_title):
            if text.get_text():
                text.set_text(_wrapped(text.get_text(), inches, text.get_fontsize()))


def after_layout(fig, fn) -> None:
    """Run ``fn()`` once ``fig``'s layout is final (:func:`finish_layout`):
    for what depends on the axes' drawn size, such as a plane's stretch."""
    fig.__dict__.setdefault("_landscape_after_layout", []).append(fn)


THINNEST = 0.8  # points: the thinnest line thin_lines draws where it thins one


def thin_lines(fig, factor: float) -> None:
    """Every line width and marker size in ``fig`` (panels and legends)
    times ``factor`` (a scatter's marker area times its square): a figure
    drawn to a paper's width keeps its lines in proportion to its 8-pt text.
    A line is not thinned below :data:`THINNEST` points (one drawn thinner
    stays as it is): thinner, it would vanish in print."""
    if factor == 1.0 or fig.__dict__.get("_landscape_thinned"):
        return
    fig._landscape_thinned = True
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    artists = [a for ax in fig.axes for a in (*ax.get_lines(), *ax.collections)]
    artists += [h for leg in legends if leg is not None for h in leg.legend_handles if h is not None]

    def thinned(width: float) -> float:
        return max(width * factor, min(width, THINNEST))

    for a in artists:
        if isinstance(a, Line2D):
            a.set_linewidth(thinned(a.get_linewidth()))
            a.set_markersize(a.get_markersize() * factor)
            a.set_markeredgewidth(a.get_markeredgewidth() * factor)
        elif isinstance(a, Collection):
            a.set_linewidths([thinned(w) for w in np.atleast_1d(np.asarray(a.get_linewidths(), dtype=float))])
            if isinstance(a, PathCollection):  # scatter markers, sized by area
                a.set_sizes(np.asarray(a.get_sizes(), dtype=float) * factor ** 2)


def finish_layout(fig) -> None:
    """Break the titles to fit (:func:`wrap_titles`) and, at a paper's width,
    thin the lines with the text (:func:`thin_lines`); then, when something
    waits on the layout (:func:`after_layout`), draw the figure once so the
    layout is done and run it; :func:`save_figure` calls this."""
    wrap_titles(fig)
    if paper_width() is not None:
        thin_lines(fig, PAPER_FONT / BASE_FONT)
    waiting = fig.__dict__.pop("_landscape_after_layout", [])
    if waiting:
        fig.canvas.draw()
        for fn in waiting:
            fn()


def save_figure(fig, stem: str | os.PathLike, formats=("png",), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format (atomically) and close
    it, its layout finished first (:func:`finish_layout`)."""
    finish_layout(fig)
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        atomic_save(lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), path)
        written.append(path)
    plt.close(fig)
    return written
