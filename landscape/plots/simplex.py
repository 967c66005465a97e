"""Figure of a simplex face: train loss and test error over the triangle of
three vertices (Benton et al. 2021, fig. 1 style), drawn from ``simplex.npz``
and ``simplex_summary.json`` alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.tri as mtri
import numpy as np

from landscape.checkpoint import read_result

from .plane import LogOffsetNorm, clip_values, contour_bands, contour_levels, level_names
from .style import drawing, fs, new_figure, note_synthetic, plane_cmap, save_figure, train_loss_label

__all__ = ["face_xy", "plot_face", "draw_simplex_figure"]

CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def face_xy(barycentric: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) -> points (N, 2) of an equilateral triangle."""
    return np.asarray(barycentric) @ CORNERS


def plot_face(ax, barycentric: np.ndarray, values: np.ndarray, labels, *, vmax: float | None = None,
              log_alpha: float = -5.0, label: str = ""):
    """Filled contours of ``values`` over the face, log-spaced levels as for
    planes, vertices marked and labelled. Returns ``ax``."""
    xy = face_xy(barycentric)
    tri = mtri.Triangulation(xy[:, 0], xy[:, 1])
    values = np.asarray(values, dtype=float)
    clipped = clip_values(values, vmax)
    with np.errstate(invalid="ignore"):
        over = values > vmax if vmax is not None else np.zeros(values.shape, bool)  # +inf too; NaN never
    finite = clipped[np.isfinite(clipped)]
    if finite.size and np.ptp(finite) == 0 and finite.size == clipped.size:
        # One value over the whole face: one colour, and the value said, not a colour bar of equal labels.
        ax.fill(*CORNERS.T, color=matplotlib.colormaps[plane_cmap()](0.0), alpha=0.8)
        label = f"{label}: {level_names(finite[:1])[0]} everywhere" if label else f"{finite[0]:.3g} everywhere"
    elif finite.size:
        # A face of low loss varies little: the levels then spread over the range there is.
        # The bands as a plane's: above the clip (5 for train loss, 50% error) one grey band "> clip", only
        # when something is there.
        levels, alpha_eff = contour_levels(clipped, log_alpha, 7)
        norm = LogOffsetNorm(levels[0], levels[-2], alpha_eff)
        shown, bands, colors, ticks = contour_bands(values, clipped, over, levels, norm, plane_cmap())
        # The top edge a hair above the highest value: tricontourf leaves out a triangle lying wholly on its
        # top level (a plateau at the maximum, common for test errors' steps), which would read as no data.
        fill = np.append(bands[:-1], np.nextafter(bands[-1], np.inf))
        cs = ax.tricontourf(tri, shown, levels=fill, colors=colors, alpha=0.8)
        if np.ptp(finite) > 0:  # none at the minimum (a plateau's edge), as on a plane
            ax.tricontour(tri, shown, levels=levels[1:-1], cmap=plane_cmap(), norm=norm, linewidths=1.5)
        bar = ax.figure.colorbar(cs, ax=ax, shrink=0.8)
        bar.set_ticks(bands, labels=ticks)
        bar.set_label(label)
        spread = np.ptp(finite) / max(abs(float(np.mean(finite))), 1e-300)
        if spread < 0.05:  # the colours spread over a narrow range: the reader is told how narrow
            ax.text(0.5, -0.04, f"values within {100 * spread:.2g}% of each other", transform=ax.transAxes,
                    ha="center", va="top", fontsize=fs(8), color="dimgray")
    else:
        ax.text(0.5, 0.4, "no finite values", ha="center", va="center", color="gray")
    ax.plot(*np.vstack([CORNERS, CORNERS[:1]]).T, color="black", lw=1)
    for (x, y), name in zip(CORNERS, labels):
        ax.scatter([x], [y], s=70, color="black", edgecolor="white", zorder=5)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(0, 8 if y > 0 else -16), ha="center")
    ax.set_aspect("equal")
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.12, np.sqrt(3) / 2 + 0.12)
    ax.set_axis_off()
    ax.set_title(label, pad=14)
    return ax


@drawing
def draw_simplex_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write ``simplex_face.<fmt>`` (train loss and test error over the face)."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, "simplex.npz", "simplex_summary.json")
    if "face_barycentric" not in arrays:
        return []
    fig, (a, b) = new_figure(1, 2, width=10.0, height=4.2)
    split = summary.get("eval_split", "test")
    labels = summary.get("face_labels") or ["v0", "v1", "v2"]
    plot_face(a, arrays["face_barycentric"], arrays["face_train_loss"], labels, vmax=5.0,
              label=train_loss_label(summary))
    plot_face(b, arrays["face_barycentric"], arrays["face_test_error"], labels, vmax=50.0, log_alpha=-1.0,
              label=f"{split} error (%)")
    note_synthetic(fig, [summary])
    return save_figure(fig, result_dir / "simplex_face", formats)
