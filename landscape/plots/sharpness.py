"""The figure of a sharpness result: each network's Hessian spectral density
by stochastic Lanczos quadrature (log scale, as Ghorbani et al. 2019 and
PyHessian draw it), its top eigenvalues, its trace with error bars, and
the trace by layer. Drawn from ``sharpness.npz`` and ``summary.json``
alone."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import FixedLocator
import numpy as np

from landscape.checkpoint import read_result
from landscape.sharpness import spectral_density

from .style import drawing, fs, new_figure, result_colors, save_figure

__all__ = ["draw_sharpness_figure", "density_curves"]

# The Gaussian that smooths the quadrature: this fraction of the span of all nodes.
SIGMA_FRACTION = 0.01
# The log axis shows this many decades below the highest density.
DECADES = 6


def density_curves(nodes: np.ndarray, weights: np.ndarray, points: int = 1000):
    """The grid (points,), the smoothing width, and each network's smoothed density
    (networks, points), from ``density_nodes`` / ``density_weights`` (networks, runs, m);
    None where nothing finite is stored."""
    finite = nodes[np.isfinite(nodes) & np.isfinite(weights)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    span = max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1e-12))
    sigma = SIGMA_FRACTION * span
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    return grid, sigma, np.array([spectral_density(n, w, grid, sigma) for n, w in zip(nodes, weights)])


# At most this many layer names label the layer axis (a deep network's are thinned).
LAYER_TICKS = 24


def _draw_layers(ax, summary: dict, colors) -> None:
    """Each layer's trace (its diagonal Hessian block's) per network, ±2 s.e.,
    on a symmetric log axis (an estimate near 0 can be negative)."""
    layers = summary.get("layers") or []
    drawn = [(n, c) for n, c in zip(summary["networks"], colors) if n.get("layer_traces") is not None]
    if not layers or not drawn:
        ax.text(0.5, 0.5, "no trace by layer stored\n(a result from an earlier version)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    x = np.arange(len(layers))
    shift = 0.6 / max(len(drawn), 1)
    largest, lowest = 0.0, 0.0
    tops = False
    for k, (n, color) in enumerate(drawn):
        values, se = np.asarray(n["layer_traces"], float), np.asarray(n["layer_trace_se"], float)
        at = x + (k - (len(drawn) - 1) / 2) * shift
        ax.errorbar(at, values, yerr=2 * se, fmt="o", ms=3.5, capsize=2, color=color, label=n["label"], lw=1)
        largest = max(largest, float(np.nanmax(np.abs(values) + 2 * se)))
        lowest = min(lowest, float(np.nanmin(values - 2 * se)))
        if n.get("layer_top_eigenvalues") is not None:  # --layer-iters: the blocks' largest eigenvalues
            top = np.asarray(n["layer_top_eigenvalues"], float)
            ax.scatter(at, top, marker="x", s=22, color=color, lw=1.2)
            largest, tops = max(largest, float(np.nanmax(np.abs(top)))), True
    linthresh = max(largest, 1e-12) * 1e-3
    ax.set_yscale("symlog", linthresh=linthresh)
    # ticks at 0 and at whole decades from ten times the linear region's edge up: the default's ticks at
    # +-linthresh sit on 0's in the narrow linear band and their labels overlap
    decades = [10.0 ** k for k in range(int(np.ceil(np.log10(10 * linthresh))),
                                        int(np.ceil(np.log10(max(largest, 10 * linthresh)))) + 1)]
    ax.yaxis.set_major_locator(FixedLocator(sorted([-d for d in decades if -d >= lowest] + [0.0] + decades)))
    step = max(1, int(np.ceil(len(layers) / LAYER_TICKS)))
    ax.set_xticks(x[::step], [layer["name"] for layer in layers][::step], rotation=60, ha="right", fontsize=fs(7))
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylabel("trace of the layer's block")
    ax.set_title("trace by layer (same vectors; bars: ±2 s.e.)" + ("; ×: the block's top eigenvalue" if tops else ""),
                 fontsize=fs(9))
    if len(drawn) > 1:
        ax.legend(fontsize=fs(8), loc="best", framealpha=0.9)



def steps_taken(summary: dict) -> str:
    """The Lanczos steps the networks ran: --iters, or fewer where a network has fewer trained parameters
    (results stored before the count was kept: --iters)."""
    steps = sorted({n.get("lanczos_steps", summary["iters"]) for n in summary["networks"]})
    return "/".join(map(str, steps))

@drawing
def draw_sharpness_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``sharpness.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, "sharpness.npz")
    networks = summary["networks"]
    labels = [n["label"] for n in networks]
    colors = result_colors(labels)  # a network named in style.RESULT_COLORS ("SWA", "SGD") as every figure draws it
    fig, axes = new_figure(1, 4, width=19.0, height=4.2)

    ax = axes[0]
    curves = None
    if "density_nodes" in arrays and "density_weights" in arrays:
        curves = density_curves(arrays["density_nodes"], arrays["density_weights"])
    if curves is None:
        ax.text(0.5, 0.5, "no spectral density stored\n(a result from an earlier version)", ha="center",
                va="center", transform=ax.transAxes)
    else:
        grid, sigma, dens = curves
        for label, color, d in zip(labels, colors, dens):
            if np.isfinite(d).any():
                ax.semilogy(grid, np.maximum(d, 1e-300), color=color, lw=1.3, label=label)
        top = np.nanmax(dens)
        ax.set_ylim(top * 10.0 ** -DECADES, top * 3)
        ax.set_xlim(grid[0], grid[-1])
        ax.legend(fontsize=fs(8), loc="best", framealpha=0.9)
        ax.set_title(f"spectral density (SLQ, {summary.get('density_runs', 1)} run(s) of "
                     f"{steps_taken(summary)} steps; σ = {sigma:.2g})", fontsize=fs(9))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)

    x = np.arange(len(networks))
    ax = axes[1]
    for i, (n, color) in enumerate(zip(networks, colors)):
        values = np.asarray(n["top_eigenvalues"], float)
        ax.errorbar(np.full(len(values), i), values, yerr=np.asarray(n["top_residuals"], float), fmt="o",
                    color=color, ms=5, capsize=3)
    ax.set_title(f"top {summary['top']} eigenvalues (bars: residuals)", fontsize=fs(9))
    ax.set_ylabel("eigenvalue")

    ax = axes[2]
    for i, (n, color) in enumerate(zip(networks, colors)):
        ax.errorbar([i], [n["trace"]], yerr=[2 * n["trace_se"]], fmt="s", color=color, ms=6, capsize=4)
    ax.set_title(f"trace (Hutchinson, {summary['trace_samples']} vectors; bars: ±2 s.e.)", fontsize=fs(9))
    ax.set_ylabel("trace")
    for ax in axes[1:3]:
        ax.set_xticks(x, labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center",
                      fontsize=fs(8))
        ax.set_xlim(-0.5, len(networks) - 0.5)
        ax.grid(alpha=0.3, axis="y")
    _draw_layers(axes[3], summary, colors)
    fig.suptitle("Hessian of the mean train NLL" + (f" (batch norm: {summary['bn']})" if summary.get("bn") else "")
                 + ("   [synthetic data]" if summary.get("synthetic") else ""), fontsize=fs(10))
    return save_figure(fig, result_dir / "sharpness", formats)
