"""Shared figure set-up: figures of their own (not pyplot's: a notebook's
backend and settings are left as they are), sizes, atomic saving."""

from __future__ import annotations

import contextlib
import copy
import difflib
import errno
import functools
import numbers
import os
import re
from pathlib import Path

import matplotlib
import matplotlib.patheffects as patheffects
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection, PathCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D

from landscape.checkpoint import atomic_save
from landscape.errors import UserError, is_whole, note_once

__all__ = ["drawing", "figure_style", "new_figure", "save_figure", "save_figures", "set_figure_dpi", "legend_below",
           "panel_legend", "paper_width", "compare_color", "result_color", "result_colors", "fs", "set_figure_width",
           "note_synthetic", "mark_endpoints", "log_scale_when_spread", "train_loss_label", "outline",
           "percent_signs", "PATH_LOG_FACTOR", "FORMATS", "check_formats", "error_axis_from_zero",
           "whole_number_ticks", "bad_mathtext", "shown_label", "set_plane_cmap", "plane_cmap", "PAPERS_CMAP",
           "RESULT_COLORS", "figures_in", "set_figure_style", "SWA_COLOR", "SGD_COLOR",
           "AVERAGE_COLOR", "SAMPLE_COLOR", "LINE_COLOR", "MARKERS"]

FORMATS = ("png", "pdf", "svg")
# One colour per method or result in every figure, its own and the comparisons (plots/compare.py): SWA (or
# the centre a model average is drawn around) blue and SGD orange, as the first and second centre of a width
# report (tab10's order); SWAG's model average green, a single sample grey; a curve by its type. Red is a
# curve's straight line, and nothing else. Keys are matched without regard to case (result_color).
SWA_COLOR = "#1f77b4"
SGD_COLOR = "#ff7f0e"
AVERAGE_COLOR = "#2ca02c"
SAMPLE_COLOR = "#7f7f7f"
LINE_COLOR = "#d62728"
RESULT_COLORS = {
    # networks, and the model averages of samples around them
    "SWA": SWA_COLOR, "SGD": SGD_COLOR, "SWAG": AVERAGE_COLOR, "SWAG-Diagonal": "#17becf",
    "VI": "#9467bd", "HWA": "#8c564b",
    # subspace inference, by the subspace (its samples are averaged as SWAG's are)
    "PCA subspace": "#e377c2", "curve subspace": "#bcbd22", "random subspace": "#e7ba52",
    "single sample": SAMPLE_COLOR,
    # paths between two networks (never in one figure with the averages)
    "bezier": "#1f77b4", "polychain": "#2ca02c", "straight line": LINE_COLOR,
}
# What is not in the table, and a second result of one kind in a comparison: matplotlib's tab10 in this
# order, without its red.
COMPARE_COLORS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                  "#17becf")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")  # one per result compared: told apart in grey print too


def compare_color(i: int) -> str:
    """The i-th colour of the palette for what :data:`RESULT_COLORS` does not name."""
    return COMPARE_COLORS[i % len(COMPARE_COLORS)]


def result_color(key: str | None) -> str | None:
    """The colour :data:`RESULT_COLORS` gives the method or result ``key``
    (its name, any case), or None when it names none."""
    if not key:
        return None
    folded = {k.casefold(): c for k, c in RESULT_COLORS.items()}
    return folded.get(str(key).casefold())


def result_colors(keys, reserved=()) -> list[str]:
    """One colour per result of a figure, from its key (:func:`result_color`):
    the table's colour where it has one and no earlier result took it, else
    the first colour of the palette that no result of the figure has (nor
    ``reserved``: what else the figure draws, as SWA), so that a result is
    drawn in its own figure's colour in every comparison."""
    keys = list(keys)
    named = [result_color(k) for k in keys]
    colors: list[str | None] = []
    for c in named:
        colors.append(c if c is not None and c not in colors and c not in reserved else None)
    free = [c for c in COMPARE_COLORS if c not in colors and c not in reserved]
    free = [c for c in free if c not in named] + [c for c in free if c in named]  # others' own colours last
    return [c if c is not None else free.pop(0) if free else compare_color(i) for i, c in enumerate(colors)]


def legend_below(fig, ax, size: float = 9, loc: str = "outside lower center", also=()) -> None:
    """One legend of ``ax``'s labelled artists (then those of the axes
    ``also``) below every panel of ``fig``, clear of the data: up to 4
    columns, as many as fit the figure's width."""
    handles, names = ax.get_legend_handles_labels()
    for other in also:
        more, more_names = other.get_legend_handles_labels()
        handles, names = handles + more, names + more_names
    first = {}  # a name once: panels that draw the same lines label them alike
    for handle, name in zip(handles, names):
        first.setdefault(name, handle)
    handles, names = list(first.values()), list(first)
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
MIN_WIDTH = 2.5  # inches: the narrowest figure whose 8-pt labels fit (a 2-inch curve figure clips its axis label)
BASE_FONT = 10.0  # matplotlib's default size, which the sizes written in the figures' code assume
PAPER_FONT = 8.0  # the text size of figures drawn to a paper's width


def set_figure_width(width: float | None) -> None:
    """Draw every later figure ``width`` inches wide (its height scaled with
    it) with text at 8 pt, as it will be printed: 3.25 for a column, 6.75 for
    a page; None puts back each figure's own size and 10-pt text."""
    number = isinstance(width, numbers.Real) and not isinstance(width, bool)  # numpy's floats too
    if width is not None and not (number and MIN_WIDTH <= width <= 20.0):  # also NaN
        raise UserError(f"--width must be between {MIN_WIDTH:g} and 20 inches, got {width!r}"
                        + (" (narrower, 8-pt titles and axis labels no longer fit)" if number and 0 < width < MIN_WIDTH
                           else ""))
    _WIDTH[0] = None if width is None else float(width)


_STYLED = [0]  # how deep in figure_style this process is: the outermost sets the style


@contextlib.contextmanager
def figure_style():
    """matplotlib's default settings and the figures' own, while a figure is
    drawn and saved; the caller's settings (a notebook's, a style sheet's) as
    they were after, and none of them in the figures: the text size (10 pt,
    8 at a paper's width) and TrueType (Type 42) fonts in PDF and PostScript,
    since the Type 3 default is refused by some venues' checks; SVG text as
    text (editable in a drawing program), not glyph outlines. A style set by
    :func:`set_figure_style` comes between matplotlib's defaults and these. Inside one
    already (a figure drawn by a draw_* function), it holds."""
    if _STYLED[0]:
        yield
        return
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # the backend is not among the settings it resets
        if _STYLE[0] is not None:  # the user's, asked for (plot --style): fonts, colours of text and axes
            from matplotlib import style as sheets

            sheets.use(_STYLE[0])
            matplotlib.rcParams["text.usetex"] = False  # the figures' text is mathtext (%, _ in labels), not LaTeX
        matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
                                    "font.size": _font_size()})
        _STYLED[0] += 1
        try:
            yield
        finally:
            _STYLED[0] -= 1


def drawing(fn):
    """``fn`` (a function that draws figures) run in :func:`figure_style`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with figure_style():
            return fn(*args, **kwargs)
    return wrapper


_STYLE: list[str | None] = [None]


def set_figure_style(style: str | os.PathLike | None) -> None:
    """Draw every later figure in the matplotlib style ``style`` (a name of
    ``matplotlib.style.available``, or a style sheet file: ``font.family:
    serif`` to match a paper's text), on top of matplotlib's defaults and
    under the figures' own text size and font embedding (and without LaTeX:
    the figures' labels are written for mathtext); None: none."""
    if style is not None:
        from matplotlib import style as sheets

        text = os.fspath(style)
        if text not in sheets.available and not Path(text).expanduser().is_file():
            close = difflib.get_close_matches(text, sheets.available, n=2)
            raise UserError(f"--style {text!r}: neither a style sheet file nor one of matplotlib's styles"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if Path(text).expanduser().is_file():
            text = str(Path(text).expanduser())
            try:
                matplotlib.rc_params_from_file(text, use_default_template=False)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise UserError(f"--style {text}: not a readable style sheet ({e})") from None
        style = text
    _STYLE[0] = style


PAPERS_CMAP = "jet_r"  # the papers' plane figures' colours (Garipov et al. 2018)
_CMAP: list[str | None] = [None]


def set_plane_cmap(name: str | None) -> None:
    """Draw every later plane and simplex face with the matplotlib colormap
    ``name`` ("viridis_r", "cividis_r": lightness that falls with the value, so
    that the figure reads in grey print and to colour-blind readers); None
    puts back the papers' ``jet_r``."""
    if name is not None:
        known = sorted(matplotlib.colormaps)
        if not isinstance(name, str) or name not in matplotlib.colormaps:
            close = difflib.get_close_matches(str(name), known, n=3)
            raise UserError(f"--cmap: no colormap {name!r} in matplotlib" + (
                f" (did you mean {', '.join(close)}?)" if close else " (viridis_r, cividis_r, jet_r, ...)"))
    _CMAP[0] = name


def plane_cmap() -> str:
    """The colormap planes and simplex faces are drawn with (:func:`set_plane_cmap`)."""
    return _CMAP[0] or PAPERS_CMAP


def _font_size() -> float:
    return BASE_FONT if _WIDTH[0] is None else PAPER_FONT


_DPI: list[int] = [150]
DPI_RANGE = (50, 1200)


def set_figure_dpi(dpi: int | None) -> None:
    """Save every later PNG at ``dpi`` dots per inch (None: 150, the
    default; 300 or 600 for print); PDF and SVG are vector figures."""
    lo, hi = DPI_RANGE
    if dpi is not None and not (is_whole(dpi) and lo <= dpi <= hi):  # 300.0 and numpy's ints are whole too
        raise UserError(f"--dpi must be a whole number from {lo} to {hi}, got {dpi!r}")
    _DPI[0] = 150 if dpi is None else int(dpi)


def paper_width() -> float | None:
    """The width every figure is drawn to (:func:`set_figure_width`), or None: each its own."""
    return _WIDTH[0]


def fs(points: float) -> float:
    """A text size written for a figure's own size (10-pt text), at the current
    text size: the same, or 8/10 of it when figures are drawn to a paper's width."""
    return points * _font_size() / BASE_FONT


def note_synthetic(fig, summaries) -> None:
    """The figure's title says so when any of the results drawn (their
    summaries) came from synthetic data, and when any were evaluated in bf16
    (``--precision bf16``: within about 1e-3 of fp32, but not fp32's
    numbers), below a title the figure has, or as its title."""
    summaries = list(summaries)
    notes = ["synthetic data — benchmark only"] if any(s.get("synthetic") for s in summaries) else []
    notes += [note for note in (precision_note(summaries),) if note]
    if not notes:
        return
    title = getattr(fig, "_suptitle", None)
    if title is not None and title.get_text():
        title.set_text(f"{title.get_text()}\n({'; '.join(notes)})")
    else:
        fig.suptitle("; ".join(notes), color="gray")


def precision_note(summaries) -> str:
    """"evaluated in bf16" when the results drawn (their summaries) were, "2
    of the 3 results evaluated in bf16" when some were, else ""."""
    precisions = [s.get("precision") for s in summaries]
    if "bf16" not in precisions:
        return ""
    return ("evaluated in bf16" if all(p == "bf16" for p in precisions) else
            f"{precisions.count('bf16')} of the {len(precisions)} results evaluated in bf16")


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


# A loss along a path spanning more than this factor is drawn on a log axis: a line rising to 2.3 from 0.002
# flattened a curve's rise to 0.03 into its floor. Below it the papers' linear axes are kept.
PATH_LOG_FACTOR = 100.0


def log_scale_when_spread(ax, values, factor: float = 5.0) -> None:
    """A log y axis when the positive ``values`` drawn differ more than ``factor``-fold (a poor centre or sample
    would flatten the rest on a linear one); NaN and infinite values (left out of the drawing) do not count."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size and np.all(values > 0) and values.max() > factor * values.min():
        ax.set_yscale("log")


# Drawn to a paper's width, a row of panels narrower than this wraps into more rows (a column's 3.25 inches
# stacks them; a page's 6.75 takes two a row), each panel keeping its own shape, the whole at most a page tall.
MIN_PANEL = 3.0
MAX_HEIGHT = 9.0
MIN_PANEL_HEIGHT = 1.6


@drawing
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
        fig = _figure(width, height)
        return fig, fig.subplots(rows, cols)
    per_row = max(1, int(paper // MIN_PANEL))
    if per_row >= group:
        per_row -= per_row % group
    n_rows = -(-cols // per_row)
    panel_height = (paper / per_row) * height / (width / cols)  # each panel's own shape
    panel_height = max(MIN_PANEL_HEIGHT, min(panel_height, MAX_HEIGHT / n_rows))
    fig = _figure(paper, panel_height * n_rows)
    grid = fig.subplots(n_rows, per_row, squeeze=False)
    panels = list(grid.ravel())
    for ax in panels[cols:]:  # the last row's empty places
        fig.delaxes(ax)
    return fig, np.array(panels[:cols], dtype=object)


def _figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (drawn by Agg whatever the process's backend; nothing to close), laid out by
    constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrapped(text: str, inches: float, points: float, font=None, renderer=None) -> str:
    """``text`` broken into lines that fit ``inches`` in ``font`` (a
    ``FontProperties``; matplotlib's default family) at ``points``, each
    line's width measured by ``renderer`` (a figure's; an Agg renderer when
    None): each line takes as many words as fit, breaking between words only
    (:func:`_glued`: not between a number and its word, nor inside a unit's
    parenthesis); a line with mathtext (``$...$``, as ``--labels`` may give)
    is left whole, since a break inside it would show the raw TeX."""
    font = (FontProperties() if font is None else font).copy()
    font.set_size(points)
    renderer = renderer if renderer is not None else _measuring_renderer()
    limit = inches * 72.0

    def width(line: str) -> float:  # points
        pixels = renderer.get_text_width_height_descent(line.replace(_GLUE, " "), font, ismath=False)[0]
        return pixels * 72.0 / renderer.dpi

    out = []
    for line in text.split("\n"):
        if "$" in line or width(line) <= limit:
            out.append(line)
            continue
        words = [w for w in re.split(r" +", _glued(line).strip(" ")) if w]
        current = words[0] if words else ""
        for word in words[1:]:
            if width(f"{current} {word}") <= limit:
                current = f"{current} {word}"
            else:
                out.append(current)
                current = word
        out.append(current)
    return "\n".join(line.replace(_GLUE, " ") for line in out)


def _measuring_renderer():
    """A renderer that measures text for :func:`_wrapped` outside a figure, in points (72 dpi)."""
    if not _RENDERER:
        from matplotlib.backends.backend_agg import RendererAgg

        _RENDERER.append(RendererAgg(1, 1, 72))
    return _RENDERER[0]


_RENDERER: list = []


_GLUE = "\u00a0"  # a no-break space: _wrapped does not break at it, and it is put back as a space


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
    their width (:func:`_wrapped`): a panel's title the width of its axes as
    the layout draws them, measured in the title's own font; the figure's
    title 0.96 of the figure's width. A title written for a figure's own
    size stays whole when the figure is drawn to a column or a page, instead
    of running off it, and is broken only where it does not fit."""
    suptitle = getattr(fig, "_suptitle", None)
    titles = [(ax, t) for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
    if not titles and (suptitle is None or not suptitle.get_text()):
        return
    if titles:  # the axes as the layout makes them without their titles (one wider would narrow them)
        texts = [(t, t.get_text()) for _, t in titles]
        for t, _ in texts:
            t.set_text("")
        try:
            fig.draw_without_rendering()
        finally:
            for t, text in texts:
                t.set_text(text)
    renderer = fig.canvas.get_renderer()
    if suptitle is not None and suptitle.get_text():
        suptitle.set_text(_wrapped(suptitle.get_text(), 0.96 * fig.get_figwidth(), suptitle.get_fontsize(),
                                   suptitle.get_fontproperties(), renderer))
    for ax, text in titles:
        inches = ax.get_window_extent(renderer).width / fig.dpi
        text.set_text(_wrapped(text.get_text(), inches, text.get_fontsize(), text.get_fontproperties(), renderer))


def after_layout(fig, fn) -> None:
    """Run ``fn()`` once ``fig``'s layout is final (:func:`finish_layout`):
    for what depends on the axes' drawn size, such as a plane's stretch."""
    fig.__dict__.setdefault("_landscape_after_layout", []).append(fn)


THINNEST = 0.8  # points: the thinnest line thin_lines draws where it thins one


def outline(width: float = 3.0, color: str = "white") -> list:
    """Path effects that draw an edge ``width`` points wide in ``color``
    under a line or a text, for contrast over contours: a path's (a curve,
    a trajectory) and its labels'. :func:`thin_lines` thins it with the line."""
    return [patheffects.withStroke(linewidth=width, foreground=color)]


def thin_lines(fig, factor: float) -> None:
    """Every line width and marker size in ``fig`` (panels and legends)
    times ``factor`` (a scatter's marker area times its square): a figure
    drawn to a paper's width keeps its lines in proportion to its 8-pt text.
    A line is not thinned below :data:`THINNEST` points (one drawn thinner
    stays as it is): thinner, it would vanish in print. The outlines drawn
    under lines and texts (:func:`outline`, a ``Stroke`` path effect) thin
    by the same rule, an outline staying wider than its line by its share."""
    if factor == 1.0 or fig.__dict__.get("_landscape_thinned"):
        return
    fig._landscape_thinned = True
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    artists = [a for ax in fig.axes for a in (*ax.get_lines(), *ax.collections)]
    artists += [h for leg in legends if leg is not None for h in leg.legend_handles if h is not None]

    def thinned(width: float) -> float:
        return max(width * factor, min(width, THINNEST))

    widths = {}  # each line's width before thinning, for its outline
    for a in artists:
        if isinstance(a, Line2D):
            widths[id(a)] = (a.get_linewidth(), thinned(a.get_linewidth()))
            a.set_linewidth(widths[id(a)][1])
            a.set_markersize(a.get_markersize() * factor)
            a.set_markeredgewidth(a.get_markeredgewidth() * factor)
        elif isinstance(a, Collection):
            a.set_linewidths([thinned(w) for w in np.atleast_1d(np.asarray(a.get_linewidths(), dtype=float))])
            if isinstance(a, PathCollection):  # scatter markers, sized by area
                a.set_sizes(np.asarray(a.get_sizes(), dtype=float) * factor ** 2)
    seen = set()
    for a in fig.findobj(lambda a: bool(getattr(a, "get_path_effects", lambda: [])())):
        if id(a) in seen:
            continue
        seen.add(id(a))
        a.set_path_effects([_thinned_stroke(e, thinned, factor, widths.get(id(a))) for e in a.get_path_effects()])


def _thinned_stroke(effect, thinned, factor: float, line: tuple[float, float] | None):
    """A ``Stroke`` path effect with its width thinned (:func:`thin_lines`);
    ``line``: the width of the line it is drawn under, before and after, so
    that the outline stays wider than the line by its share. Other effects,
    and a stroke of the artist's own width, as they are."""
    if not isinstance(effect, patheffects.Stroke) or "linewidth" not in effect._gc:
        return effect
    width = float(effect._gc["linewidth"])
    new = thinned(width)
    if line is not None and width > line[0]:
        new = max(new, line[1] + (width - line[0]) * factor)
    thin = copy.copy(effect)
    thin._gc = dict(effect._gc, linewidth=new)
    return thin


_SPACED_PERCENT = re.compile(r"(?<=\d)\s+%")


def percent_signs(text: str) -> str:
    """``text`` with a number's percent sign written right after it, as
    every figure writes it ("94.4%", English typesetting; no space or thin
    space between), a unit in parentheses staying "(%)"; mathtext is left
    as written."""
    return text if "$" in text else _SPACED_PERCENT.sub("%", text)


def _percent_signs(fig) -> None:
    """Every text of ``fig`` by :func:`percent_signs`: also what a figure takes from a result (a
    trajectory's axis labels, which give the share of its variance each explains) or a caller
    (``--labels``)."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        written = text.get_text()
        if "%" in written and percent_signs(written) != written:
            text.set_text(percent_signs(written))


def finish_layout(fig) -> None:
    """Break the titles to fit (:func:`wrap_titles`) and, at a paper's width,
    thin the lines with the text (:func:`thin_lines`); then, when something
    waits on the layout (:func:`after_layout`), draw the figure once so the
    layout is done and run it; :func:`save_figure` calls this. Every
    text's percent signs are written one way first (:func:`percent_signs`)."""
    _percent_signs(fig)
    wrap_titles(fig)
    if paper_width() is not None:
        thin_lines(fig, PAPER_FONT / BASE_FONT)
    waiting = fig.__dict__.pop("_landscape_after_layout", [])
    if waiting:
        fig.draw_without_rendering()
        for fn in waiting:
            fn()


def bad_mathtext(text: str) -> bool:
    """Whether ``text`` holds a $...$ that is no valid mathtext: saving a figure that shows it would fail."""
    from matplotlib.cbook import is_math_text
    from matplotlib.mathtext import MathTextParser

    if not is_math_text(text):
        return False
    try:
        MathTextParser("path").parse(text)
    except ValueError:
        return True
    return False


def shown_label(text: object) -> str:
    """A stored label (a checkpoint's or a folder's name, or one given) as a
    figure can show it: after a zero-width space where it starts with "_"
    (which a legend leaves out), and with its $ signs literal where they
    are no valid mathtext (:func:`bad_mathtext`); valid mathtext stays (a
    label may be written as one)."""
    text = str(text)
    if bad_mathtext(text):
        text = text.replace("$", "\\$")
    return "\u200b" + text if text.startswith("_") else text


def whole_number_ticks(ax) -> None:
    """x ticks at whole numbers only (epochs, samples), at most about six of
    them: a narrow panel's ten ticks ran together."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))


def error_axis_from_zero(ax, values) -> None:
    """An error axis (percent) from a hair below 0 to above the largest of
    ``values``, 1 point at the least: one image's difference is not drawn as
    a trend filling the panel, and an error of 0% is a line above the axis."""
    top = float(np.nanmax(np.asarray(values, dtype=float))) if np.size(values) else np.nan
    top = max(1.0, 1.15 * top) if np.isfinite(top) else 1.0
    ax.set_ylim(-0.03 * top, top)


def check_formats(formats) -> tuple[str, ...]:
    """The figure formats asked for, each once, in order: one name (``"pdf"``)
    or several; one line for a format not among :data:`FORMATS`."""
    if isinstance(formats, str):
        formats = (formats,)
    try:
        formats = tuple(dict.fromkeys(formats))
    except TypeError:
        raise UserError(f"formats must be names among {', '.join(FORMATS)}, got {formats!r}") from None
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown figure format {unknown[0]!r}; choose from {', '.join(FORMATS)}" if unknown
                        else f"no figure format given; choose from {', '.join(FORMATS)}")
    return formats


@drawing
def save_figures(figures, formats=("png",)) -> list[Path]:
    """Save ``figures`` [(fig, stem), ...], all drawn before (so that one
    that fails to draw leaves none of them half new), by :func:`save_figure`."""
    return [path for fig, stem in figures for path in save_figure(fig, stem, formats)]


@drawing  # a figure a compare_* function returned, saved by the caller: TrueType fonts in its PDF all the same
def save_figure(fig, stem: str | os.PathLike, formats=("png",), dpi: int | None = None) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format (:func:`check_formats`;
    atomically), its layout finished first (:func:`finish_layout`); ``dpi``
    by default :func:`set_figure_dpi`'s."""
    dpi = _DPI[0] if dpi is None else dpi
    formats = check_formats(formats)
    finish_layout(fig)
    stem = _redirected(Path(stem))
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        try:
            atomic_save(lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), path)
        except OSError as e:
            if not (_KEEP_UNWRITABLE[0] and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and path.exists()):
                raise
            # a finished result resumed where it cannot be written: its figure stays
            note_once(("kept figures", str(path.parent)),
                      f"{path.parent} cannot be written; its figures are left as they were drawn")
        written.append(path)
    return written


_REDIRECT: list[tuple[Path, Path] | None] = [None]  # (source, target) of figures_in


@contextlib.contextmanager
def figures_in(source: str | os.PathLike, target: str | os.PathLike):
    """Within this block a figure that would be saved in the folder ``source``
    (or below it: an ESPRO component's) is saved under ``target`` instead, by
    the same name: a result's figures redrawn elsewhere (``plot DIR --out
    OTHER``: a column's and a poster's versions side by side, or a result
    on a read-only mount)."""
    _REDIRECT[0] = (Path(source).resolve(), Path(target))
    try:
        yield
    finally:
        _REDIRECT[0] = None


def _redirected(stem: Path) -> Path:
    """``stem`` under :func:`figures_in`'s target where it lies under its source (its folders made)."""
    if _REDIRECT[0] is None:
        return stem
    source, target = _REDIRECT[0]
    try:
        moved = target / stem.resolve().relative_to(source)
    except ValueError:  # not under the source: as it is
        return stem
    moved.parent.mkdir(parents=True, exist_ok=True)
    return moved


# Whether a figure that cannot be rewritten in a folder that cannot be written is kept as it is (a command's
# --resume of a finished result there: the stored result is shown) or an error (`plot`, which is asked to redraw).
_KEEP_UNWRITABLE = [True]


def keep_unwritable_figures(keep: bool) -> None:
    """Whether :func:`save_figure` keeps a figure it cannot rewrite in a folder that cannot be written (True,
    the default: a finished result resumed there is shown with its figures as they are), or raises (``plot``)."""
    _KEEP_UNWRITABLE[0] = bool(keep)
