"""Figure of a subspace-inference run (Izmailov et al. 2019): the posterior
samples in the subspace's first two coordinates, with the prior's 1 and 2
standard-deviation circles and the curve's points for a curve subspace,
over the contours of the log-posterior when a grid was evaluated; and
the model average's test NLL against the number of samples, with the
subspace's centre as a line. Drawn from ``subspace.npz`` and
``summary.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.checkpoint import read_result

from .plane import OUTLINE, plot_plane
from .style import (COMPARE_COLORS, drawing, fs, legend_below, new_figure, paper_width, precision_note, save_figure,
                    whole_number_ticks)
from .swag import average_colors, plot_model_average

__all__ = ["draw_subspace_figure"]

PRIOR_COLOR = "0.3"  # the prior's circles: no result's colour (style.RESULT_COLORS)


@drawing
def draw_subspace_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``subspace.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, "subspace.npz")
    split = summary.get("eval_split", "test")
    z, chain = arrays["z"], arrays["chain"]
    fig, axes = new_figure(1, 2, width=10.5, height=4.2)
    fig.get_layout_engine().set(wspace=0.12)  # the colorbar's label clear of the second panel's axis label
    ax = axes[0]
    # the average and its centre as every figure draws them (the centre also marked in the plane), the
    # posterior q whose draws are averaged in the average's colour, the chains in the others
    color, centre_color = average_colors([summary])[0]
    chain_colors = [c for c in COMPARE_COLORS if c not in (centre_color, color)]
    prior = float(summary.get("prior_scale", 1.0))
    if "grid_log_posterior" in arrays:  # the posterior's log-density over the plane, from its maximum down
        axis, lp = arrays["grid_axis"], arrays["grid_log_posterior"]
        top = float(lp[np.isfinite(lp)].max()) if np.isfinite(lp).any() else 0.0
        plot_plane(ax, axis, axis, top - lp, log_alpha=-1.0,
                   label="log posterior: max - value", cmap="viridis")
    k = z.shape[1]
    # every chain's path from where it started (after a burn-in, from its first kept sample)
    start = np.asarray(summary.get("start") or np.zeros(k), dtype=float)[None]
    first = start if not summary.get("burn_in") else np.zeros((0, k))
    paths = {c: np.concatenate([first, z[chain == c]]) for c in np.unique(chain)}
    if k >= 2:
        angle = np.linspace(0, 2 * np.pi, 200)
        for r, ls in ((1, "-"), (2, "--")):
            ax.plot(r * prior * np.cos(angle), r * prior * np.sin(angle), color=PRIOR_COLOR, lw=1, ls=ls, alpha=0.6,
                    label=f"prior {r} sd")
        vi = summary.get("method") == "vi"
        if vi and summary["vi"].get("family", "gaussian") == "gaussian":  # q = N(mu, diag sigma^2): 1, 2 sd ellipses
            mu, sd = np.asarray(summary["vi"]["mu"]), np.asarray(summary["vi"]["sigma"])
            for r, ls in ((1, "-"), (2, "--")):
                ax.plot(mu[0] + r * sd[0] * np.cos(angle), mu[1] + r * sd[1] * np.sin(angle), color=color, lw=1.2,
                        ls=ls, label=f"q {r} sd")
        for c, zc in paths.items():
            if not vi:  # a chain's steps in order
                ax.plot(zc[:, 0], zc[:, 1], lw=0.6, alpha=0.5, color=chain_colors[c % len(chain_colors)])
            ax.scatter(z[chain == c, 0], z[chain == c, 1], s=14, color=chain_colors[c % len(chain_colors)], zorder=3,
                       label="samples" if c == 0 else None)
        ax.scatter([0], [0], marker="X", s=70, color=centre_color, edgecolors="black", linewidths=0.6, zorder=4,
                   label="centre")
        if "path_z" in arrays and k == 2:  # the curve itself: in its plane, or projected on it
            projected = float(summary.get("path_off_plane", 0.0)) > 1e-3
            ax.plot(arrays["path_z"][:, 0], arrays["path_z"][:, 1], color="black", lw=1.2, zorder=4,
                    label="curve (projected)" if projected else "curve")
        for name in summary.get("landmarks", {}):
            p = arrays[f"landmark_{name}"]
            ax.scatter([p[0]], [p[1]], marker="*", s=120, color="black", zorder=5)
            # centred above its star, short (the legend says "curve"), outlined over the samples and
            # contours: "curve t=1" to the right of its star ran past a narrow panel's edge
            ax.annotate(str(name), (float(p[0]), float(p[1])), xytext=(0, 7), textcoords="offset points",
                        ha="center", va="bottom", fontsize=fs(9), zorder=5, path_effects=OUTLINE)
        of = f" (of {k})" if k > 2 else ""
        ax.set_xlabel(f"z1{of}")
        ax.set_ylabel(f"z2{of}")
        if "grid_log_posterior" not in arrays:  # else the grid's square sets the axes
            ax.set_aspect("equal", adjustable="datalim")
    elif summary.get("method") == "vi":  # one coordinate, independent draws: their histogram, q and the prior
        ax.hist(z[:, 0], bins=max(5, len(z) // 3), color=chain_colors[0], alpha=0.7, density=True, label="samples")
        mu, sd = float(summary["vi"]["mu"][0]), float(summary["vi"]["sigma"][0])
        lo, hi = min(mu - 3 * sd, -2 * prior, z.min()), max(mu + 3 * sd, 2 * prior, z.max())
        grid = np.linspace(lo, hi, 300)
        for m, s_, shade, label in ((mu, sd, color, "q"), (0.0, prior, PRIOR_COLOR, "prior")):
            ax.plot(grid, np.exp(-0.5 * ((grid - m) / s_) ** 2) / (s_ * np.sqrt(2 * np.pi)), color=shade, lw=1.5,
                    label=label)
        ax.set_xlabel("z1")
        ax.set_ylabel("density")
    else:  # one coordinate: each chain's trace
        for c, zc in paths.items():
            steps = np.arange(len(zc)) + (1 - len(first))  # step 0 is the start
            ax.plot(steps, zc[:, 0], marker="o", ms=3, lw=1, color=chain_colors[c % len(chain_colors)],
                    label=f"chain {c + 1}")
        ax.axhline(0.0, color=centre_color, lw=1, ls="--", label="centre")
        ax.set_xlabel("step of the chain (after burn-in)" if summary.get("burn_in") else "step of the chain")
        ax.set_ylabel("z1")
        whole_number_ticks(ax)
    ax.grid(alpha=0.3)
    plot_model_average(axes[1], arrays["bma_test_nll"], float(arrays["shift_test_nll"]),
                       float(np.mean(arrays["sample_test_nll"])), label="model average",
                       centre_label="centre of the subspace", ylabel=f"{split} NLL", log_when_spread=True,
                       color=color, centre_color=centre_color)
    if paper_width() is not None:  # narrow panels, no room clear of the data: one legend below both
        legend_below(fig, axes[0], size=8, also=axes[1:])
    else:
        if k >= 2:  # below the panels (the plane is full of samples, ellipses and contours), clear of the axis labels
            legend_below(fig, axes[0], size=8, loc="outside lower left")
        else:
            axes[0].legend(frameon=True, framealpha=0.9, fontsize=fs(8), loc="best")
        axes[1].legend(frameon=True, framealpha=0.9, fontsize=fs(9), loc="best")
    bma = summary["bma"]
    method = {"vi": "VI", "nuts": "NUTS"}.get(summary.get("method"), "ESS")
    if summary.get("method") == "vi" and summary["vi"].get("family") == "realnvp":
        method = "VI (RealNVP flow)"
    fig.suptitle(f"{summary.get('basis')} subspace, rank {summary.get('rank')}, {method}, "
                 f"T = {summary.get('temperature'):g}: "
                 f"{bma['members']} samples, {split} NLL {bma['test_nll']:.4f}, error {bma['test_error']:.2f}%"
                 + ("   [synthetic data]" if summary.get("synthetic") else "")
                 + "".join(f"   [{note}]" for note in (precision_note([summary]),) if note), fontsize=fs(10))
    return save_figure(fig, result_dir / "subspace", formats)
