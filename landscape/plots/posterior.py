"""Figure of a curve between two variational posteriors (``vi-connect``,
evaluated by ``curve``): along t, the two terms of the negative ELBO per
sample (the expected train NLL of the weight draws, and KL / N), the test
error of the draws' ensemble and of the network of the means,
the fitted curve beside the straight line. Drawn from
``posterior-curve.npz`` and ``summary.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.checkpoint import read_result

from .curve import curve_color, curve_label
from .style import LINE_COLOR, drawing, fs, legend_below, mark_endpoints, new_figure, note_synthetic, save_figure

__all__ = ["draw_posterior_curve_figure"]

RESULT = "posterior-curve.npz"  # curves.posterior.RESULT (plots does not import curves)


def _paths(ax, t: np.ndarray, arrays: dict[str, np.ndarray], key: str, path_label: str, *,
           secondary: bool = False, band: str | None = None, color: str | None = None) -> None:
    """``key`` along t for the line (dashed) and the curve (solid); a
    ``secondary`` metric thin and dotted, unlabelled; ``band``: +-2 standard
    errors shaded; ``color``: the curve's (:func:`landscape.plots.curve.curve_color`)."""
    for name, shade, label, style in (("line", LINE_COLOR, "straight line", "--"),
                                      ("curve", color or curve_color(None), path_label, "-")):
        values = arrays[f"{name}_{key}"]
        ax.plot(t, values, color=shade, lw=1.2 if secondary else 2, ls=":" if secondary else style,
                label=None if secondary else label)
        if band is not None and np.isfinite(arrays[f"{name}_{band}"]).all():
            se = arrays[f"{name}_{band}"]
            ax.fill_between(t, values - 2 * se, values + 2 * se, color=shade, alpha=0.15, lw=0)


@drawing
def draw_posterior_curve_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``posterior-curve.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, RESULT)
    t = arrays["t"]
    path_label, color = curve_label(summary), curve_color(summary)
    split = summary.get("eval_split", "test")
    samples = summary.get("samples")
    fig, (ax_elbo, ax_err, ax_kl) = new_figure(1, 3, width=14.0, height=3.8)
    _paths(ax_elbo, t, arrays, "expected_train_nll", path_label, band="expected_train_nll_se", color=color)
    ax_elbo.set_ylabel(f"expected train NLL ({samples} draws, ±2 s.e.)")
    _paths(ax_err, t, arrays, "ensemble_test_error", path_label, color=color)
    _paths(ax_err, t, arrays, "mean_test_error", path_label, secondary=True, color=color)
    ax_err.set_ylabel(f"{split} error (%)")
    ax_err.plot([], [], color="gray", ls=":", label="the means' network")  # the dotted lines, in the legend
    ax_err.plot([], [], color="gray", ls="-", label=f"ensemble of {samples}")
    _paths(ax_kl, t, arrays, "kl_per_sample", path_label, color=color)
    ax_kl.set_ylabel("KL(q || prior) / N")
    c, l = summary["curve"], summary["line"]
    # The panel shows the NLL term; the barrier quoted is of the whole -ELBO / N (this panel plus the KL one).
    ax_elbo.set_title(f"-ELBO / N barrier (this panel + the KL one): curve {c['neg_elbo_barrier']:.3g}, "
                      f"line {l['neg_elbo_barrier']:.3g}", fontsize=fs(10))
    ax_err.set_title(f"ensemble's error barrier: curve {c['ensemble_test_error_barrier']:.3g}%, "
                     f"line {l['ensemble_test_error_barrier']:.3g}%", fontsize=fs(10))
    ax_kl.set_title(f"KL of the {summary.get('family', '')} posteriors to the {summary.get('prior', '')} prior",
                    fontsize=fs(10))
    for ax, key in ((ax_elbo, "expected_train_nll"), (ax_err, "ensemble_test_error"), (ax_kl, "kl_per_sample")):
        mark_endpoints(ax, t, arrays[f"curve_{key}"], size=50)
        ax.set_xlabel("t")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    legend_below(fig, ax_elbo, also=[ax_err])  # in a panel it sat on the straight line's rise
    note_synthetic(fig, [summary])
    return save_figure(fig, result_dir / "posterior-curve", formats)
