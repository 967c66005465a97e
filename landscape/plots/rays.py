"""Figures of 1-D loss profiles along random rays through one or more centres
(train loss and test error against signed distance, one panel per centre on a
shared y axis so that the centres' widths compare), and of the line through two
centres. Drawn from ``rays.npz`` and ``summary.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.checkpoint import read_result

from .style import (PATH_LOG_FACTOR, drawing, fs, log_scale_when_spread, new_figure, precision_note, result_colors,
                    save_figures, shown_label, train_loss_label)

__all__ = ["plot_rays", "plot_line_metric", "draw_rays_figures", "load_rays_result", "shared_limits"]

# Upper y limits, as the plane figures' clips: a diverged ray should not
# flatten every other profile.
Y_CAPS = {"train_loss": 5.0, "test_error": 100.0}


def _colors(labels) -> list:
    """The centres' colours: a centre named in style.RESULT_COLORS ("SWA",
    "SGD") in its colour there, as every figure draws it; the rest in turn."""
    return result_colors(labels)


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


def plot_rays(ax, distance: np.ndarray, values: np.ndarray, *, color, label: str | None = None,
              center_value: float | None = None, rise: float | None = None, alpha: float = 0.35,
              linewidth: float = 0.8):
    """Draw one thin, semi-transparent line per ray on ``ax``; returns ``ax``.

    ``distance`` (S,): signed distance along the rays; ``values`` (n_directions,
    S) or (S,). ``label`` goes on the first line only (one legend entry per
    centre). With ``center_value`` and ``rise``, a dashed line at
    ``center_value + rise`` marks the level that defines the width. A dotted
    vertical line marks the centre (distance 0). Non-finite values are gaps."""
    distance = np.asarray(distance, dtype=float)
    values = np.atleast_2d(_finite(values))
    if values.shape[-1] != distance.size:
        raise ValueError(f"values has {values.shape[-1]} points per ray, distance has {distance.size}")
    for k, ray in enumerate(values):
        ax.plot(distance, ray, color=color, alpha=alpha, lw=linewidth, label=label if k == 0 else None)
    if center_value is not None and rise is not None and np.isfinite(center_value):
        ax.axhline(center_value + rise, color=color, ls="--", lw=1.2, label=f"centre + {rise:g}")
    ax.axvline(0.0, color="gray", ls=":", lw=0.8)
    ax.set_xlim(distance.min(), distance.max())
    ax.set_xlabel("distance")
    ax.grid(alpha=0.3)
    return ax


def shared_limits(values: np.ndarray, cap: float | None = None, pad: float = 0.05) -> tuple[float, float]:
    """y limits over all finite ``values``: their min to their max (at most
    ``cap``), padded by ``pad`` of the range; (0, 1) when nothing is finite."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if cap is not None and hi > cap:
        hi = max(cap, lo)
    margin = pad * (hi - lo) if hi > lo else max(abs(lo), 1.0) * pad
    return lo - margin, hi + margin


def _width_text(width, max_distance: float, metric: str) -> str:
    """A centre's median width (always the train loss's), named so on a figure of another metric."""
    name = "median width" if metric == "train_loss" else "median train-loss width"
    if width is None:
        return f"{name} n/a"
    width = float(width)
    if not np.isfinite(width):
        return f"{name}: no rise within ±{max_distance:.3g}"
    return f"{name} {width:.3g}"


def plot_line_metric(ax, distance: np.ndarray, values: np.ndarray, marks: np.ndarray, labels, colors, ylabel: str,
                     log_when_spread: bool = False):
    """Draw a metric along the line through the centres on ``ax``, each centre
    (at ``marks``, its distance on the line) a vertical line, a dot and its
    label; with ``log_when_spread`` (a loss) on a log axis where it spans more
    than :data:`~landscape.plots.style.PATH_LOG_FACTOR`. Returns ``ax``."""
    distance, values = np.asarray(distance, dtype=float), _finite(values)
    ax.plot(distance, values, color="black", lw=2)
    for mark, text, color in zip(np.asarray(marks, dtype=float), labels, colors):
        ax.axvline(mark, color=color, ls="--", lw=1.2)
        ax.scatter([mark], [np.interp(mark, distance, values)], s=60, color=color, edgecolors="black",
                   zorder=5, label=text)
    ax.set_xlim(distance.min(), distance.max())
    ax.set_xlabel("distance")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if log_when_spread:  # a loss spanning decades: the valley around each centre would be flat on a linear axis
        log_scale_when_spread(ax, values, PATH_LOG_FACTOR)
    return ax


def load_rays_result(result_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The stored arrays and summary of a rays result."""
    return read_result(result_dir, "rays.npz")


def _centre_labels(summary: dict, n: int) -> list[str]:
    centres = summary.get("centers") or []
    return [shown_label(centres[i].get("label", f"centre {i}")) if i < len(centres) else f"centre {i}"
            for i in range(n)]


def _draw_metric(arrays: dict, summary: dict, metric: str, ylabel: str):
    values = arrays[metric]  # (n_centres, n_directions, S)
    distance = arrays["distance"]
    n = values.shape[0]
    labels = _centre_labels(summary, n)
    colors = _colors(labels)
    centres = summary.get("centers") or []
    rise = summary.get("rise")
    fig, axes = new_figure(1, n, width=3.6 * n + 0.6, height=3.8)
    axes = np.atleast_1d(axes)
    for i, ax in enumerate(axes):
        first_col = ax.get_subplotspec().is_first_col()  # a row's first panel: one per row once panels wrap
        if i:
            ax.sharey(axes[0])
            if not first_col:
                ax.tick_params(labelleft=False)
        if first_col:
            ax.set_ylabel(ylabel)
        center = arrays["center_train_loss"][i] if metric == "train_loss" and "center_train_loss" in arrays else None
        plot_rays(ax, distance, values[i], color=colors[i], center_value=center, rise=rise)
        ax.set_xlabel(_ray_unit(summary))
        width = centres[i].get("median_width") if i < len(centres) else None
        ax.set_title(f"{labels[i]}\n{_width_text(width, float(np.max(np.abs(distance))), metric)}", fontsize=fs(10))
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(frameon=False, fontsize=fs(9), loc="upper center")
    axes[0].set_ylim(*shared_limits(values, Y_CAPS.get(metric)))
    return fig, axes


def _ray_unit(summary: dict) -> str:
    """The rays' x label: a filter-normalised direction's multiples are no weight-space distance (its norm is
    about the centre's)."""
    return ("distance (multiples of a filter-normalised direction)" if summary.get("normalize") == "filter"
            else "distance (weight space)")


def _suptitle(fig, summary: dict, note: str = "") -> None:
    """The figure's title line: ``note``, and a warning for synthetic data."""
    lines = [note] if note else []
    if summary.get("synthetic"):
        lines.append("synthetic data — benchmark only")
    lines += [note for note in (precision_note([summary]),) if note]
    if lines:
        fig.suptitle("\n".join(lines), color="gray" if summary.get("synthetic") else "black", fontsize=fs(9))


@drawing
def draw_rays_figures(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``rays_train_loss.<fmt>``, ``rays_test_error.<fmt>`` and, when the
    run stored the line through two centres, ``line.<fmt>`` in ``result_dir``
    from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = load_rays_result(result_dir)
    split = summary.get("eval_split", "test")
    ylabels = {"train_loss": train_loss_label(summary), "test_error": f"{split} error (%)"}
    figures = []  # every figure drawn before any is saved: damaged results leave the old set, not part of a new one
    for metric, ylabel in ylabels.items():
        fig, _ = _draw_metric(arrays, summary, metric, ylabel)
        rise = summary.get("rise")
        _suptitle(fig, summary, "" if rise is None else f"width of a ray's side: the distance at which train loss first "
                                                       f"rises {rise:g} above the centre's; median over all sides")
        figures.append((fig, result_dir / f"rays_{metric}"))
    if "line_distance" in arrays:
        marks = arrays["line_marks"]
        labels = _centre_labels(summary, len(marks))
        colors = _colors(labels)
        fig, axes = new_figure(1, 2, width=10.0, height=3.8)
        for ax, (metric, ylabel) in zip(axes, ylabels.items()):
            plot_line_metric(ax, arrays["line_distance"], arrays[f"line_{metric}"], marks, labels, colors, ylabel,
                             log_when_spread=not metric.endswith("error"))
            ax.set_xlabel("distance along the line (weight space)")
        axes[0].legend(frameon=False, fontsize=fs(9))
        _suptitle(fig, summary, "the line through the centres, extended beyond them")  # both panels'
        figures.append((fig, result_dir / "line"))
    return save_figures(figures, formats)
