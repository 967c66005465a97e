"""Contour figures of a plane in weight space (Garipov et al. 2018, figs. 1-2;
Li et al. 2018): train loss and test error over the plane, contour levels
log-spaced so that they crowd near the minimum, the anchors, a projected curve
or training trajectory and further projected points marked. Drawn from ``plane.npz`` and
``summary.json`` alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
from matplotlib.ticker import MaxNLocator
import numpy as np

from landscape.checkpoint import read_result
from landscape.geometry import PATH_OFF_SHARE

from .style import (MIN_PANEL, after_layout, plane_cmap, drawing, fs, new_figure, note_synthetic, outline, paper_width,
                    save_figures, shown_label, train_loss_label)

__all__ = [
    "contour_bands",
    "label_point",
    "OUTLINE",
    "LogOffsetNorm",
    "clip_values",
    "log_levels",
    "plot_plane",
    "plot_plane_points",
    "draw_plane_figures",
    "compare_planes",
    "plot_plane_result",
    "load_plane_result",
]

# Clip values of the papers' plane figures: everything above is one colour.
# log_alpha sets the first level's offset above the minimum, exp(log_alpha):
# the dnn-mode-connectivity plane plots use -5 for loss (unit scale) and -1 for
# error in percent, so that the lowest levels do not all round to one label.
TRAIN_LOSS_VMAX, TRAIN_LOSS_LOG_ALPHA = 5.0, -5.0
TEST_ERROR_VMAX, TEST_ERROR_LOG_ALPHA = 50.0, -1.0
# Far above any clipped value, so the region above the clip is filled too.
TOP_LEVEL = 1e10
CLIPPED_COLOR = "0.75"  # the band of values above the clip: grey, apart from every colour of the map
PATH_COLOR = "black"
OUTLINE = outline(3.0, "white")  # under the path and the labels: thinned with them at a paper's width


def clip_values(values: np.ndarray, vmax: float | None) -> np.ndarray:
    """``values`` with everything above ``vmax`` set to ``vmax`` (NaN stays NaN).

    With ``vmax=None`` the values are returned as floats, unclipped."""
    values = np.asarray(values, dtype=float)
    if vmax is None:
        return values.copy()
    with np.errstate(invalid="ignore"):
        return np.where(values > vmax, vmax, values)


def clip_for(arrays: Sequence[np.ndarray], vmax: float | None) -> float | None:
    """The clip to draw ``arrays`` (one panel's values, or every panel of a comparison) with: ``vmax``, or None
    where no finite value is below it (a test error above 50% everywhere was one grey band under a
    colour bar of levels no value had)."""
    if vmax is None:
        return None
    finite = [a[np.isfinite(a)] for a in (np.asarray(v, dtype=float) for v in arrays)]
    below = any(bool(np.any(f < vmax)) for f in finite)  # a value at the clip itself tells nothing more
    return vmax if below or not any(f.size for f in finite) else None


# A range narrower than this share of its magnitude is float32's rounding (a network that predicts uniformly,
# ln 10 give or take a few ulps), not a surface: it is drawn as one band.
FLAT_SHARE = 1e-5


def is_flat(lo: float, hi: float) -> bool:
    """Whether values from ``lo`` to ``hi`` are one value to float32's precision (:data:`FLAT_SHARE`)."""
    return bool(hi - lo <= FLAT_SHARE * max(abs(lo), abs(hi)))


def _finite_range(clipped: np.ndarray) -> tuple[float, float] | None:
    finite = clipped[np.isfinite(clipped)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


# The first level's offset must lie this far (in log) below the span, or the
# lowest band would swallow most of the range (a simplex face of low loss).
MIN_LOG_SPAN = 3.0


def _effective_range(lo: float, hi: float, log_alpha: float) -> tuple[float, float]:
    """A non-empty range, and a ``log_alpha`` far enough below its log-span.

    Constant data get a span of 1e-6 (relative to |lo| when larger). When the
    span is less than ``exp(MIN_LOG_SPAN)`` times ``exp(log_alpha)`` (a span
    not above it would even give decreasing levels), the first level moves to
    ``exp(-MIN_LOG_SPAN)`` (5%) of the span, so that the levels spread over
    the values there are. Otherwise ``log_alpha`` is kept as given."""
    span = hi - lo
    if not span > 0:
        span = 1e-6 * max(1.0, abs(lo))
    log_alpha = min(log_alpha, float(np.log(span)) - MIN_LOG_SPAN)
    return lo + span, log_alpha


def contour_levels(clipped: np.ndarray, log_alpha: float, n: int) -> tuple[np.ndarray, float]:
    """The levels of :func:`log_levels` and the ``log_alpha`` they used."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = _finite_range(clipped)
    lo, hi = rng if rng is not None else (0.0, 1.0)
    hi, log_alpha = _effective_range(lo, hi, log_alpha)
    step = (np.log(hi - lo) - log_alpha) / n
    levels = lo + np.exp(log_alpha + step * np.arange(n + 1))
    levels[0], levels[-1] = lo, hi
    return np.append(levels, max(TOP_LEVEL, 10.0 * abs(hi))), log_alpha


def log_levels(values: np.ndarray, vmax: float | None = None, log_alpha: float = -5.0, n: int = 7) -> np.ndarray:
    """Contour levels, log-spaced above the minimum (Garipov et al. 2018).

    With ``lo``, ``hi`` the min and max of the clipped finite values:
    ``level_k = lo + exp(log_alpha + k (log(hi - lo) - log_alpha) / n)`` for
    ``k = 0..n``, then ``level_0 = lo``, ``level_n = hi``, and one extra level
    ``TOP_LEVEL`` so that values above the clip are filled with the top colour.
    Returns ``n + 2`` strictly increasing levels. Degenerate data (constant, or
    no finite value) still give increasing levels (around 0 when nothing is
    finite)."""
    return contour_levels(clip_values(values, vmax), log_alpha, n)[0]


class LogOffsetNorm(mcolors.Normalize):
    """Maps ``v`` to ``log(max(v - vmin, exp(log_alpha)))``, linearly onto [0, 1].

    ``exp(log_alpha)`` above ``vmin`` maps to 0 and ``vmax`` to 1; values above
    ``vmax`` map above 1 (the colormap's over colour). This spreads the colours
    over the low values, where the interesting structure of a loss surface is."""

    def __init__(self, vmin: float, vmax: float, log_alpha: float = -5.0):
        if not vmax > vmin:
            raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
        if not np.log(vmax - vmin) > log_alpha:
            raise ValueError(f"log_alpha={log_alpha} must be below log(vmax - vmin)={np.log(vmax - vmin):.3g}")
        super().__init__(vmin=vmin, vmax=vmax, clip=False)
        self.log_alpha = float(log_alpha)

    def _log_span(self) -> float:
        return float(np.log(self.vmax - self.vmin)) - self.log_alpha

    def __call__(self, value, clip=None):
        result, is_scalar = self.process_value(value)
        offset = np.ma.maximum(result - self.vmin, np.exp(self.log_alpha))
        out = (np.ma.log(offset) - self.log_alpha) / self._log_span()
        return out[0] if is_scalar else out

    def inverse(self, value):
        value = np.asarray(value, dtype=float)
        return self.vmin + np.exp(self.log_alpha + value * self._log_span())


# A level's label reads within this share of the gap to its nearest neighbour level (else a value drawn in
# a band could read as outside it: 0.1850 labelled "0.18" beside a node of 0.1835 drawn below it).
LABEL_SLACK = 0.1


def level_names(levels: np.ndarray) -> list[str]:
    """Tick labels for contour levels: each with two significant digits, or as
    many more (up to six) as it takes to read within :data:`LABEL_SLACK` of
    the gap to its nearest neighbour (where two still read the same, all
    get six; where six still do not tell them apart, the lowest and the
    others as offsets from it: "2.30258 + 2.4e-07")."""
    levels = np.asarray(levels, dtype=float)
    names = []
    for i, v in enumerate(levels):
        gaps = np.abs(np.delete(levels, i) - v)
        slack = LABEL_SLACK * gaps.min() if gaps.size else np.inf
        name = next((n for n in (_significant(v, d) for d in range(2, 7)) if abs(float(n) - v) <= slack),
                    _significant(v, 6))
        names.append(name)
    if len(set(names)) < len(names):  # levels closer than six digits can tell apart: all at six
        names = [_significant(v, 6) for v in levels]
    if len(set(names)) < len(names):  # still alike: the lowest, and each other as its offset from it
        base = _significant(levels[0], 6)
        names = [base] + [f"{base} + {_significant(v - levels[0], 2)}" for v in levels[1:]]
    return names


def _significant(v: float, digits: int) -> str:
    """``v`` to ``digits`` significant digits, written out in full below a
    million (3800, not 3.8e+03 beside a 72), in e-notation beyond that."""
    text = f"{v:.{digits}g}"
    if "e+" in text and abs(v) < 1e6:
        return f"{float(text):.0f}"
    return text


def _level_labels(levels: np.ndarray) -> list[str]:
    labels = level_names(levels[:-1])
    return labels + [f"> {labels[-1]}"]


def _stretch(ax) -> tuple[str, str] | None:
    """Which axis of ``ax`` as drawn (its box and limits once the layout is
    done) is stretched against the other, and how much ("vertical", "5.7x"),
    or None within 1.25x."""
    box = ax.get_window_extent()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if box.width <= 0 or box.height <= 0 or x1 == x0 or y1 == y0:
        return None
    stretch = (box.height / abs(y1 - y0)) / (box.width / abs(x1 - x0))  # pixels per unit up over across
    if 0.8 <= stretch <= 1.25:
        return None
    factor = max(stretch, 1 / stretch)
    return ("vertical" if stretch > 1 else "horizontal"), (f"{factor:.0f}x" if factor >= 10 else f"{factor:.1f}x")


def scale_note(ax) -> str:
    """'not to scale: vertical axis stretched 5.7x' for ``ax`` as drawn, or
    nothing within 1.25x (:func:`_stretch`)."""
    stretch = _stretch(ax)
    return "" if stretch is None else f"not to scale: {stretch[0]} axis stretched {stretch[1]}"


# Where a panel's note may go (axes fractions and alignment), in this order: the first clear of the points,
# their labels and the path wins; then the same box slid along the bottom and top edges.
NOTE_PLACES = ((0.99, 0.01, "right", "bottom"), (0.01, 0.01, "left", "bottom"), (0.99, 0.99, "right", "top"),
               (0.01, 0.99, "left", "top"))


def _set_note(note, ax, lines: Sequence[str] = (), scale: bool = True) -> None:
    """``note`` says ``lines`` and (``scale``) :func:`scale_note`, each of its
    sentences in two lines where one would not fit the panel's width, in the
    first corner of :data:`NOTE_PLACES` where it covers no point, label or
    path. Where every place covers one (a small panel at a paper's width),
    the stretch is said on the stretched axis's label instead and what
    remains is placed again; else it goes where it covers least."""
    renderer = ax.figure.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    texts = [t for t in (*lines, scale_note(ax) if scale else "") if t]
    wrapped = []
    for text in texts:
        note.set_text(text)
        wide = note.get_window_extent(renderer).width > 0.9 * width
        wrapped.append(text.replace(": ", ":\n", 1) if wide else text)
    note.set_text("\n".join(wrapped))
    if not wrapped:
        return
    note.set_visible(False)  # not an obstacle of its own
    boxes, paths = _obstacles(ax, renderer)
    note.set_visible(True)

    def put(place) -> float:
        """Put the note at ``place``; what it covers there (:func:`_covered`)."""
        x, y, ha, va = place
        note.set_position((x, y))
        note.set_ha(ha)
        note.set_va(va)
        return _covered(note.get_window_extent(renderer), boxes, paths)

    share = min(1.0, note.get_window_extent(renderer).width / width)  # of the panel's width
    slides = [(0.01 + f * max(0.0, 0.98 - share), y, "left", va) for f in np.linspace(0, 1, SLIDE_STEPS)
              for y, va in ((0.01, "bottom"), (0.99, "top"))]
    covered = []
    for place in (*NOTE_PLACES, *slides):
        covered.append((put(place), place))
        if covered[-1][0] == 0:
            return
    stretch = _stretch(ax) if scale else None
    if stretch is not None:  # on its axis's label, outside the panel: it covers nothing there
        label = ax.yaxis.label if stretch[0] == "vertical" else ax.xaxis.label
        label.set_text(f"{label.get_text()} (stretched {stretch[1]})")
        _set_note(note, ax, lines, scale=False)
        return
    put(min(covered, key=lambda c: c[0])[1])


def contour_bands(values: np.ndarray, clipped: np.ndarray, over: np.ndarray, lev: np.ndarray, norm,
                  cmap: str) -> tuple[np.ndarray, np.ndarray, list, list[str]]:
    """What filled contours draw of ``values`` over :func:`contour_levels`'s
    ``lev``: (the values drawn, the bands' edges, their colours, the colour
    bar's tick labels at the edges). Values above the clip (``over``) get the
    top band, grey, labelled "> clip"; without any, that band is left out.
    They keep their own values (+inf the top band's middle), so that between
    a node above the clip and one below, the bands and lines fall where the
    values interpolated cross them, as everywhere else."""
    clipping = bool(np.any(over))
    shown = np.where(over, np.minimum(values, 0.5 * (lev[-2] + lev[-1])), clipped) if clipping else clipped
    bands = lev if clipping else lev[:-1]
    cm = matplotlib.colormaps[cmap]
    colors = [cm(norm(0.5 * (a + b))) for a, b in zip(bands[:-1], bands[1:])]
    if clipping:
        colors[-1] = CLIPPED_COLOR
    return shown, bands, colors, _level_labels(lev) if clipping else level_names(bands)


def plot_plane(ax, x: np.ndarray, y: np.ndarray, values: np.ndarray, *, vmax: float | None = None,
               log_alpha: float = -5.0, levels: int = 7, cmap: str | None = None, label: str = "",
               colorbar: bool = True, axis_labels: tuple[str, str] = ("distance along u", "distance along v"),
               equal_aspect: bool | None = None, span: tuple[float, float] | None = None):
    """Draw the contour plot of ``values`` over the plane on ``ax``.

    ``x`` (G,), ``y`` (H,): grid coordinates (distance along the plane's axes
    u and v); ``values`` (G, H) with ``values[i, j]`` at ``(x[i], y[j])``.
    Values are clipped at ``vmax`` (5.0 for train loss as in the papers, 50%
    for test error here); ``log_alpha`` is the log of the first level's
    offset above the minimum (-5 suits losses, -1 errors in percent); ``levels + 2`` contour levels come from :func:`log_levels`
    and colours from :class:`LogOffsetNorm` on ``cmap`` (default
    :func:`~landscape.plots.style.plane_cmap`: the papers' ``jet_r`` unless set). Filled contours (alpha 0.55) under
    contour lines (none at the minimum, where a plateau such as 0% error
    would draw its edge), as in Garipov et al. 2018, figs. 1-2. Values above
    ``vmax`` fill a grey top band whose colorbar tick reads ``> <clip>``;
    without any, there is no such band. The colorbar (when ``colorbar``) is
    labelled ``label``.
    NaNs are left blank; data with no finite value draws an empty, annotated
    plane. Where no finite value is at or below ``vmax`` (and no ``span`` is given) nothing is
    clipped; values within float32's rounding of one value (:func:`is_flat`) are one band, their value said
    in a note and on the colorbar. ``axis_labels`` name x and y; ``equal_aspect`` None draws both
    axes to one scale when their extents are within a factor of 3; ``span``
    (lowest, highest) sets the levels' range instead of the data's own, so
    that panels drawn with one span share their levels. Returns
    ``(ax, colorbar)``; the colorbar is None when not drawn."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    values = np.asarray(values, dtype=float)
    if values.shape != (x.size, y.size):
        raise ValueError(f"values has shape {values.shape}, expected (len(x), len(y)) = {(x.size, y.size)}")
    # Equal scales when the two extents are comparable; a plane much longer
    # than wide (a nearly straight curve) would otherwise be a thin strip.
    ratio = np.ptp(y) / max(np.ptp(x), 1e-300) if x.size > 1 and y.size > 1 else 1.0
    equal = bool(equal_aspect or (equal_aspect is None and 1 / 3 <= ratio <= 3))
    if equal:
        ax.set_aspect("equal", adjustable="box")
    if span is None:  # a comparison (span given) decides the clip for all its panels
        vmax = clip_for([values], vmax)
    with np.errstate(invalid="ignore"):
        over = values > vmax if vmax is not None else np.zeros(values.shape, bool)  # +inf too; NaN never
    clipped = clip_values(values, vmax)
    clipped[np.isinf(clipped)] = np.nan  # -inf, or +inf without a clip: unplottable
    rng = _finite_range(clipped)
    # (values above the clip are not part of it: a minimum at the clip with the rest above is no constant)
    flat = rng is not None and not over.any() and is_flat(*(rng if span is None else span))
    # A distance up that is not one across, values left blank and a constant surface are said in a note.
    missing = int(np.sum(~np.isfinite(values) & ~over))
    lines = [f"blank: {missing} of {values.size} points not finite"] if missing else []
    if flat:
        lines.append(("constant" if rng[0] == rng[1] else "constant to within float32 rounding")
                     + f": {_significant(0.5 * (rng[0] + rng[1]), 6)}")
    if lines or (not equal and x.size > 1 and y.size > 1):
        note = ax.text(0.99, 0.01, "", transform=ax.transAxes, ha="right", va="bottom", fontsize=fs(9),
                       color="dimgray", zorder=2.5,  # over the contours, under the paths and points
                       bbox=dict(facecolor="white", alpha=0.6, lw=0, pad=1.5))
        after_layout(ax.figure, lambda: _set_note(note, ax, lines, scale=not equal))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if x.size > 1 and y.size > 1:
        ax.set_xlim(x.min(), x.max())
        ax.set_ylim(y.min(), y.max())
    if rng is None or x.size < 3 or y.size < 3:  # a 2 x 2 grid's contours would be its corners' bilinear blend
        ax.text(0.5, 0.5, "no finite values" if rng is None else f"grid too small to draw ({x.size} x {y.size})",
                transform=ax.transAxes, ha="center", va="center", color="gray", zorder=6,  # over the paths
                bbox=dict(facecolor="white", alpha=0.85, lw=0, pad=2))
        return ax, None

    cmap = cmap or plane_cmap()
    if flat:  # rounding's differences drawn as levels would read as basins and ridges: one band, one tick
        lo, hi = rng
        edge = max(abs(lo), abs(hi), 1e-30) * FLAT_SHARE
        z = np.ma.masked_invalid(clipped.T)
        filled = ax.contourf(x, y, z, levels=[lo - edge, hi + edge], colors=[matplotlib.colormaps[cmap](0.0)],
                             alpha=0.55, zorder=0)
        bands, ticks = [0.5 * (lo + hi)], [_significant(0.5 * (lo + hi), 6)]
    else:
        lev, alpha_eff = contour_levels(clipped if span is None else np.asarray(span, dtype=float), log_alpha, levels)
        norm = LogOffsetNorm(lev[0], lev[-2], alpha_eff)
        shown, bands, colors, ticks = contour_bands(values, clipped, over, lev, norm, cmap)
        z = np.ma.masked_invalid(shown.T)  # contour wants z[row = y, column = x]
        filled = ax.contourf(x, y, z, levels=bands, colors=colors, alpha=0.55, zorder=0)
        if rng[1] > rng[0]:  # constant data has no contour line to draw; none at the minimum (a plateau's edge)
            ax.contour(x, y, z, levels=lev[1:-1], cmap=cmap, norm=norm, linewidths=2.5, zorder=1)
    cbar = None
    if colorbar:
        cbar = ax.figure.colorbar(filled, ax=ax)
        cbar.set_ticks(bands, labels=ticks)
        if label:
            cbar.set_label(label)
    return ax, cbar


def plot_plane_points(ax, anchor_xy: np.ndarray, anchor_labels=None, *, path_xy: np.ndarray | None = None,
                      path_label: str | None = None, mark_xy: np.ndarray | None = None, mark_labels=None,
                      path_start: str | None = None):
    """Mark the plane's points on ``ax``: anchors (k, 2) as white-edged black
    dots, ``path_xy`` (M, 2) as a solid line (in the legend as ``path_label``),
    ``mark_xy`` (k, 2) as stars; anchors and marks labelled beside them.
    With ``path_start`` (a training trajectory) the path's points are
    dotted and its first one labelled so. Adds a legend when any artist is
    labelled. Returns ``ax``."""
    if path_xy is not None and len(path_xy):
        path_xy = np.asarray(path_xy, dtype=float)
        dots = dict(marker="o", ms=4, mfc="white", mec=PATH_COLOR) if path_start is not None else {}
        ax.plot(path_xy[:, 0], path_xy[:, 1], color=PATH_COLOR, lw=2.0, zorder=3,
                path_effects=OUTLINE, label=path_label or None, **dots)
        if path_start is not None:
            label_point(ax, path_start, path_xy[0], (7, 6), "bottom")
    # Anchor labels above right, mark labels below right: an average (SWA)
    # often lies close to an anchor.
    groups = [(anchor_xy, anchor_labels, (7, 6), "bottom",
               dict(marker="o", s=70, c="black", edgecolors="white", linewidths=1.5))]
    if mark_xy is not None and len(mark_xy):
        groups.append((mark_xy, mark_labels, (8, -6), "top",
                       dict(marker="*", s=220, c="white", edgecolors="black", linewidths=1.2)))
    for points, labels, offset, va, style in groups:
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        ax.scatter(points[:, 0], points[:, 1], zorder=4, **style)
        for xy, text in zip(points, labels or []):
            label_point(ax, text, xy, offset, va)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=fs(9), framealpha=0.8)
        after_layout(ax.figure, lambda: place_legend(ax))
    return ax


# Where a plane's legend may go, in this order of preference (the first clear of every label, marker and line
# wins); then the same box slid along the axes' edges (SLIDE_STEPS places an edge); then below the axes.
LEGEND_PLACES = ("upper right", "upper left", "lower left", "lower right", "upper center", "lower center",
                 "center left", "center right", "center")
SLIDE_STEPS = 9


def _obstacles(ax, renderer) -> tuple[list, list]:
    """What a legend on ``ax`` must not cover, in display units: the boxes
    of its texts (the points' labels, a scale note) and of its markers (the
    anchors, marks, a trajectory's dots), two points clear, and the paths of
    its lines (the curve or trajectory)."""
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Bbox

    scale = ax.figure.dpi / 72  # pixels a point
    pad = 2.0 * scale
    boxes = [t.get_window_extent(renderer).padded(pad) for t in ax.texts if t.get_visible() and t.get_text()]
    for c in ax.collections:
        if isinstance(c, PathCollection) and c.get_visible() and len(c.get_offsets()):
            xy = c.get_offset_transform().transform(c.get_offsets())
            sizes = np.resize(np.sqrt(np.asarray(c.get_sizes(), dtype=float)) / 2 * scale, len(xy))
            boxes += [Bbox.from_extents(x - r, y - r, x + r, y + r).padded(pad) for (x, y), r in zip(xy, sizes)]
    paths = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        path = line.get_transform().transform_path(line.get_path())
        paths.append(path)
        if line.get_marker() not in (None, "None", "", " "):
            r = line.get_markersize() / 2 * scale
            boxes += [Bbox.from_extents(x - r, y - r, x + r, y + r).padded(pad) for x, y in path.vertices]
    return boxes, paths


def _overlap(a, b) -> float:
    """The area two boxes share."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _covered(box, boxes, paths) -> float:
    """How much of what must stay visible ``box`` covers: the area it shares
    with ``boxes``, and its whole area for each of ``paths`` crossing it
    (:func:`_obstacles`); 0 when it is clear of them all."""
    return sum(_overlap(box, b) for b in boxes) + sum(
        box.width * box.height for p in paths if p.intersects_bbox(box, filled=False) or box.count_contains(p.vertices))


def _places(legend, frame, renderer):
    """The places tried for ``legend`` inside the axes box ``frame`` (display
    units): matplotlib's named ones, then the lower-left corners (axes
    fractions) of the same box slid along each edge."""
    yield from LEGEND_PLACES
    legend.set_loc("upper right")
    box = legend.get_window_extent(renderer)
    pad = frame.x1 - box.x1  # the legend's own distance from the axes' edge
    w, h = box.width / frame.width, box.height / frame.height
    px, py = pad / frame.width, pad / frame.height
    if w + 2 * px > 1 or h + 2 * py > 1:
        return
    for f in np.linspace(0.0, 1.0, SLIDE_STEPS):
        x, y = px + f * (1 - w - 2 * px), py + f * (1 - h - 2 * py)
        yield from ((x, 1 - py - h), (x, py), (px, y), (1 - px - w, y))


def place_legend(ax) -> str | tuple | None:
    """Put ``ax``'s legend where it covers no label, no marker and no line
    (its anchors, marks and their labels, a scale note, the path), measured
    on the figure as drawn: the first of :data:`LEGEND_PLACES` clear of them,
    else the first clear place along the axes' edges, else (a narrow panel)
    below the axes, under their axis label. Matplotlib's ``loc="best"``
    counts a label as one point of a path's many, and puts the legend on it.
    Returns the place chosen ("below": under the axes; None: no legend)."""
    legend = ax.get_legend()
    if legend is None:
        return None
    renderer = ax.figure.canvas.get_renderer()
    boxes, paths = _obstacles(ax, renderer)
    frame = ax.get_window_extent(renderer)
    for place in _places(legend, frame, renderer):
        legend.set_loc(place)
        box = legend.get_window_extent(renderer)
        inside = _overlap(box, frame) >= box.width * box.height - 1.0
        if inside and _covered(box, boxes, paths) == 0:
            return place
    _legend_below(ax, legend, renderer)
    return "below"


def _legend_below(ax, legend, renderer) -> None:
    """``legend`` under ``ax``'s axis label and tick labels, a fixed distance
    in points below the axes (so that the layout, making room for it, does
    not move it onto them)."""
    from matplotlib.transforms import ScaledTranslation

    legend.set_visible(False)  # not part of what is measured
    axis = ax.xaxis.get_tightbbox(renderer)  # None: an x axis with no tick labels and no label
    under = min(axis.y0 if axis is not None else np.inf, ax.get_window_extent(renderer).y0)
    legend.set_visible(True)
    fig = ax.figure
    drop = (ax.get_window_extent(renderer).y0 - under) / fig.dpi + 2.0 / 72  # inches, and two points clear
    legend.set_bbox_to_anchor((0.5, 0.0), transform=ax.transAxes + ScaledTranslation(0, -drop, fig.dpi_scale_trans))
    legend.set_loc("upper center")


def label_point(ax, text, xy, offset: tuple[float, float], va: str) -> None:
    """``text`` beside the point ``xy``, ``offset`` points away: to its right,
    or to its left in the right third of the axes, where it would run out."""
    lo, hi = ax.get_xlim()
    right_third = hi > lo and (float(xy[0]) - lo) / (hi - lo) > 2 / 3
    ax.annotate(shown_label(text), (float(xy[0]), float(xy[1])),
                xytext=(-offset[0] if right_third else offset[0], offset[1]),
                textcoords="offset points", ha="right" if right_third else "left", va=va, fontsize=fs(10), zorder=5,
                path_effects=OUTLINE)


def load_plane_result(result_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The stored arrays and summary of a plane result."""
    return read_result(result_dir, "plane.npz")


def plane_metrics(summary: dict) -> list[tuple[str, str, float, float]]:
    """The metrics a plane figure draws: (key, label, clip, log_alpha)."""
    split = summary.get("eval_split", "test")
    return [("train_loss", train_loss_label(summary), TRAIN_LOSS_VMAX, TRAIN_LOSS_LOG_ALPHA),
            ("test_error", f"{split} error (%)", TEST_ERROR_VMAX, TEST_ERROR_LOG_ALPHA)]


def plot_plane_result(ax, arrays: dict[str, np.ndarray], summary: dict, metric: str, label: str, vmax: float,
                      log_alpha: float, span: tuple[float, float] | None = None):
    """One metric of a stored plane result on ``ax``: its contours with the
    anchors, path and marks the result records (``span``: as
    :func:`plot_plane`'s). Returns ``ax``."""
    # A trajectory's axes explain very different shares of its variance: each gets its own scale (Li et al.).
    plot_plane(ax, arrays["x"], arrays["y"], arrays[metric], vmax=vmax, log_alpha=log_alpha, label=label, span=span,
               equal_aspect=False if summary.get("plane") == "trajectory" else None,
               **({"axis_labels": tuple(summary["axis_labels"])} if summary.get("axis_labels") else {}))
    path_label, off = summary.get("path_label"), summary.get("path_distance_from_plane_max")
    extent = max(float(np.ptp(arrays["x"])), float(np.ptp(arrays["y"])))
    if path_label and isinstance(off, (int, float)) and off > PATH_OFF_SHARE * extent:  # bends the plane lacks
        path_label = f"{path_label}\n(projected: up to {off:.2g} off the plane)"  # two lines: a column's width
    mark_labels = summary.get("mark_labels")
    marks = summary.get("marks") or []
    if mark_labels and len(marks) == len(mark_labels):  # off the plane: drawn at its projection, not at its loss
        away = [m.get("distance_from_plane") if isinstance(m, dict) else None for m in marks]  # by position:
        mark_labels = [f"{name}\n({d:.3g} off the plane)" if isinstance(d, (int, float))  # labels may repeat
                       and d > PATH_OFF_SHARE * extent else name for name, d in zip(mark_labels, away)]
    plot_plane_points(ax, arrays["anchor_xy"], summary.get("anchor_labels"),
                      path_xy=arrays.get("path_xy"), path_label=path_label,
                      mark_xy=arrays.get("mark_xy"), mark_labels=mark_labels,
                      path_start=summary.get("start_label") if summary.get("plane") == "trajectory" else None)
    return ax


@drawing
def draw_plane_figures(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``plane_train_loss.<fmt>`` and ``plane_test_error.<fmt>`` in
    ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = load_plane_result(result_dir)
    figures = []  # both drawn before either is saved: damaged results leave the old pair, not half a new one
    for metric, label, vmax, log_alpha in plane_metrics(summary):
        fig, ax = new_figure(width=6.0, height=5.0)
        plot_plane_result(ax, arrays, summary, metric, label, vmax, log_alpha)
        ax.set_title(label)
        note_synthetic(fig, [summary])
        figures.append((fig, result_dir / f"plane_{metric}"))
    return save_figures(figures, formats)


@drawing
def compare_planes(results: Sequence[tuple[dict[str, np.ndarray], dict]], labels: Sequence[str]):
    """Several plane results side by side, as Garipov et al. 2018 (fig. 2)
    show the planes of independent optima, a Bezier curve and a polygonal
    chain: one column per result (titled by its label), train loss above
    and test error below. The panels of one metric share their levels (one
    colour is one value in every panel: a flatter optimum shows as wider
    bands), each with its colorbar. At a paper's width too narrow for a
    column per result (:func:`landscape.plots.style.set_figure_width`), each result
    takes a row instead (train loss, test error), or, in a single column,
    two panels one above the other. Returns the figure (not saved)."""
    n = len(results)
    paper = paper_width()
    by_column = paper is None or paper / n >= MIN_PANEL
    if by_column:
        fig, axes = new_figure(2, n, width=5.4 * n, height=9.0)
        axes = np.asarray(axes).reshape(2, n)
    else:  # the panels in reading order, a result's two together: new_figure wraps them into rows
        fig, axes = new_figure(1, 2 * n, width=10.8 * n, height=4.5, group=2)
        axes = np.asarray(axes).reshape(n, 2).T
    fig.get_layout_engine().set(wspace=0.1)  # each colorbar's label clear of the next panel's axis label
    spans, clips = [], []
    for metric, _, vmax, _ in plane_metrics(results[0][1]):
        clips.append(clip_for([arrays[metric] for arrays, _ in results], vmax))  # one clip for every panel
        ranges = [_finite_range(clip_values(arrays[metric], clips[-1])) for arrays, _ in results]
        ranges = [r for r in ranges if r is not None]
        spans.append((min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None)
    for col, ((arrays, summary), label) in enumerate(zip(results, labels)):
        for row, (metric, metric_label, _, log_alpha) in enumerate(plane_metrics(summary)):
            ax = axes[row, col]
            plot_plane_result(ax, arrays, summary, metric, metric_label, clips[row], log_alpha, span=spans[row])
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # narrow panels: tick labels would run together
            ax.set_title(f"{label}: {metric_label}" if row == 0 or not by_column else metric_label)
    note_synthetic(fig, [summary for _, summary in results])
    return fig
