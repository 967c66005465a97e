"""Figures of a model average of weight samples: SWAG's (the Bayesian model
average's test NLL and error against the number of samples, the SWA mean and
the samples' own mean as lines; Maddox et al. 2019) and a variational
posterior's three prediction schemes (ensemble, deterministic, stochastic).
Drawn from ``swag.npz`` / ``variational.npz`` and ``summary.json`` alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from landscape.checkpoint import read_result

from .style import (MARKERS, AVERAGE_COLOR, SAMPLE_COLOR, SWA_COLOR, drawing, error_axis_from_zero, fs, legend_below,
                    log_scale_when_spread, new_figure, note_synthetic, precision_note, result_colors, save_figure,
                    whole_number_ticks)

__all__ = ["draw_swag_figure", "draw_variational_figure", "plot_model_average", "compare_averages",
           "average_label", "average_key", "average_colors"]

BMA_COLOR = AVERAGE_COLOR


def plot_model_average(ax, bma: np.ndarray, centre: float, sample_mean: float, *, label: str, centre_label: str,
                       ylabel: str, log_when_spread: bool = False, from_zero: bool = False,
                       color: str = BMA_COLOR, centre_color: str = SWA_COLOR) -> None:
    """One panel of a model average of samples (swag, subspace): its metric after
    1..S samples, against the centre's and a single sample's mean as lines
    (the lines wide and below the average's, so that all show where they
    agree); ``color``, ``centre_color``: the average's and its centre's
    (:func:`average_colors`, as the comparisons draw them).
    ``log_when_spread``: a centre more than 5-fold off the samples'
    values (a poor centre, as a curve subspace's) is left off the axis, its
    value in the legend, so that the average and the samples it exists to
    compare keep the axis; a log axis when those still differ more than
    5-fold; ``from_zero``: the axis starts at 0, a hair below so that a
    line at 0 shows (an error in percent: one image's difference is not
    drawn as a trend)."""
    s = np.arange(1, len(bma) + 1)
    others = np.append(bma, sample_mean)
    positive = others[np.isfinite(others) & (others > 0)]
    off = (log_when_spread and len(positive) and np.isfinite(centre) and centre > 0
           and not positive.min() / 5 <= centre <= 5 * positive.max())
    if off:  # a legend entry alone: the line would squeeze the rest into a sliver
        where = "above" if centre > positive.max() else "below"
        ax.plot([], [], color=centre_color, lw=3, ls="--", alpha=0.8,
                label=f"{centre_label}: {centre:.3g}, {where} the axis")
    else:
        ax.axhline(centre, color=centre_color, lw=3, ls="--", alpha=0.8, label=centre_label, zorder=1)
    ax.axhline(sample_mean, color=SAMPLE_COLOR, lw=3, ls=":", label="single sample (mean)", zorder=1)
    ax.plot(s, bma, color=color, lw=1.5, marker="o", ms=3, label=label, zorder=2)
    shown = bma if off else np.append(bma, centre)
    if log_when_spread:
        log_scale_when_spread(ax, np.append(shown, sample_mean) if off else shown)
    if off and ax.get_yscale() == "linear":  # the single sample's line inside the axis, not on its edge
        lo, hi = float(np.nanmin(others)), float(np.nanmax(others))
        pad = 0.1 * (hi - lo) if hi > lo else 0.05 * abs(hi) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
    if from_zero and ax.get_yscale() == "linear":
        error_axis_from_zero(ax, np.append(shown, sample_mean))
    ax.set_xlabel("samples averaged")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, max(2, len(s)) + 0.5)  # the first and last markers whole
    whole_number_ticks(ax)
    ax.grid(alpha=0.3)


@drawing
def draw_swag_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``swag.<fmt>`` in ``result_dir`` from its stored results; returns the files written."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, "swag.npz")
    method = summary.get("method", "SWAG")
    scale = summary.get("scale")
    title = method + (f", scale {scale:g}" if isinstance(scale, (int, float)) else "")
    if method != "SWAG-Diagonal":  # the diagonal uses no deviations
        title += f", rank {summary.get('rank')}"
    return _draw_average(result_dir / "swag", arrays, summary, summary["swa"], summary["bma"],
                         f"{method} model average", "SWA (the mean)", title, formats, *average_colors([summary])[0])


@drawing
def draw_variational_figure(result_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``variational.<fmt>``: the three prediction schemes of a variational
    posterior (the ensemble after 1..S samples, the deterministic network of
    the means, a single sample), from ``variational.npz`` and ``summary.json``."""
    result_dir = Path(result_dir)
    arrays, summary = read_result(result_dir, "variational.npz")
    title = f"{summary.get('method', 'VI')}, {summary.get('family')} posterior, {summary.get('prior')} prior"
    return _draw_average(result_dir / "variational", arrays, summary, summary["deterministic"], summary["ensemble"],
                         "ensemble", "deterministic (the means)", title, formats, *average_colors([summary])[0],
                         log_when_spread=True)


def plot_reliability(ax, diagrams: dict[str, tuple[np.ndarray, str]], eces: dict[str, float | None]) -> None:
    """A reliability diagram in the SWAG paper's form: accuracy minus mean
    confidence against the confidence, per bin (equal-width bins; the
    paper's code takes equal-mass ones) (a marker's area grows with
    the bin's share of the images), 0 where calibrated; below 0:
    overconfident. ``diagrams``: name -> (bins, colour), the centre first;
    a centre in the colour of the average after it is drawn open and dashed."""
    colors = [color for _, color in diagrams.values()]
    for k, (name, (bins, color)) in enumerate(diagrams.items()):
        confidence, accuracy, count = bins
        filled = count > 0
        ece = eces.get(name)
        gap = (accuracy - confidence)[filled]
        hollow = color in colors[k + 1:]  # a centre in its average's colour (a posterior's means): open, dashed
        ax.plot(confidence[filled], gap, color=color, lw=1, alpha=0.6, ls="--" if hollow else "-")
        ax.scatter(confidence[filled], gap, s=8 + 300 * count[filled] / count.sum(), alpha=0.8,
                   facecolors="none" if hollow else color, edgecolors=color, linewidths=1.2 if hollow else None,
                   label=name + (f", ECE {ece:.2f}%" if ece is not None else ""))
    ax.axhline(0.0, color="gray", lw=1, ls="--")
    ax.margins(x=0.06, y=0.1)  # the largest bin's marker (at confidence 1) whole inside the frame
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy - confidence")
    ax.grid(alpha=0.3)
    ax.legend(frameon=True, framealpha=0.9, fontsize=fs(8), loc="best", markerscale=0.5)


def _draw_average(stem: Path, arrays, summary, centre, average, label: str, centre_label: str, title: str,
                  formats: tuple[str, ...], color: str = BMA_COLOR, centre_color: str = SWA_COLOR,
                  log_when_spread: bool = False) -> list[Path]:
    for key in ("bma_test_nll", "bma_test_error"):  # one value per number of samples averaged
        if np.shape(arrays[key]) != (average["members"],):
            raise ValueError(f"{key} has shape {np.shape(arrays[key])} for {average['members']} samples")
    split = summary.get("eval_split", "test")
    calibrated = "reliability_centre" in arrays and "reliability_bma" in arrays  # none in older results
    fig, axes = new_figure(1, 3 if calibrated else 2, width=15.0 if calibrated else 10.0, height=3.8)
    for ax, key, ylabel in ((axes[0], "test_nll", f"{split} NLL"), (axes[1], "test_error", f"{split} error (%)")):
        plot_model_average(ax, arrays[f"bma_{key}"], float(arrays[f"mean_{key}"]),
                           float(np.mean(arrays[f"sample_{key}"])), label=label, centre_label=centre_label,
                           ylabel=ylabel, log_when_spread=log_when_spread and key == "test_nll",
                           from_zero=key == "test_error", color=color, centre_color=centre_color)
    legend_below(fig, axes[0])  # in the panel it hid the single sample's line (a horizontal line at its top)
    if calibrated:
        plot_reliability(axes[2], {centre_label: (arrays["reliability_centre"], centre_color),
                                   label: (arrays["reliability_bma"], color)},
                         {centre_label: centre.get("test_ece"), label: average.get("test_ece")})
        axes[2].set_title(f"{split} reliability", fontsize=fs(10))
    fig.suptitle(f"{title}: {average['members']} samples, {split} NLL {average['test_nll']:.4f}, "
                 f"error {average['test_error']:.2f}%" + ("   [synthetic data]" if summary.get("synthetic") else "")
                 + "".join(f"   [{note}]" for note in (precision_note([summary]),) if note), fontsize=fs(10))
    return save_figure(fig, stem, formats)


def average_label(summary: dict) -> str:
    """A model average's name in a legend, from its summary: "SWAG (rank 10,
    scale 0.5)", "SWAG-diag (scale 0.5)", "ESS in the pca subspace", "VI
    (weight)"."""
    method = str(summary.get("method", "average"))
    if "basis" in summary:  # subspace inference
        return f"{method.upper()} in the {'PCA' if summary['basis'] == 'pca' else summary['basis']} subspace"
    if "family" in summary:  # a variational posterior's ensemble
        return f"{method} ({summary['family']})"
    if summary.get("diag"):
        return f"{method}-diag (scale {summary.get('scale')})"
    return f"{method} (rank {summary.get('rank')}, scale {summary.get('scale')})"


def average_key(summary: dict) -> str:
    """What names a model average's colour (style.RESULT_COLORS): its method
    ("SWAG", "SWAG-Diagonal", "VI", "HWA"), or for subspace inference its
    subspace ("pca subspace")."""
    if "basis" in summary:
        return f"{summary['basis']} subspace"
    return str(summary.get("method", "average"))


def centred_on_swa(summary: dict) -> bool:
    """Whether a model average's centre is SWA: SWAG's, and a subspace's
    built from SWAG (PCA, random); a variational posterior's is its means,
    a curve subspace's the curve's centre."""
    return "family" not in summary and summary.get("basis", "pca") in ("pca", "random")


def average_colors(summaries: Sequence[dict]) -> list[tuple[str, str]]:
    """Each model average's colour and its centre's, one figure's or a
    comparison's alike: the average by :func:`average_key`; a centre that is
    SWA in SWA's colour (kept from every average), another in its average's."""
    swa = any(centred_on_swa(s) for s in summaries)
    colors = result_colors([average_key(s) for s in summaries], reserved=(SWA_COLOR,) if swa else ())
    return [(c, SWA_COLOR if centred_on_swa(s) else c) for c, s in zip(colors, summaries)]


def centre_name(summary: dict) -> str:
    """What a model average is centred on: SWAG's SWA solution, or a
    variational posterior's means (its deterministic network)."""
    return "the means" if "family" in summary else "SWA"


@drawing
def compare_averages(results: Sequence[tuple[dict[str, np.ndarray], dict]], labels: Sequence[str]):
    """Several model averages (SWAG, subspace inference, a variational
    posterior's ensemble) on one pair of axes per metric: test NLL and error
    after 1..S samples, each in the colour of its own figure
    (:func:`average_colors`) and labelled ``labels[i]``, with its centre
    (:func:`centre_name`: SWA, the posterior's means; subspace results keep
    none) as a dashed line in the centre's colour (SWA's, or the average's). NLL on a log axis when the
    values drawn differ more than 5-fold. One legend below both panels.
    Returns the figure (not saved)."""
    split = results[0][1].get("eval_split", "test")
    fig, axes = new_figure(1, 2, width=10.0, height=3.8)
    colors = average_colors([summary for _, summary in results])  # as each result's own figure draws it
    for ax, key, ylabel in zip(axes, ("test_nll", "test_error"), (f"{split} NLL", f"{split} error (%)")):
        shown = []
        n = len(results)
        for i, ((a, summary), label) in enumerate(zip(results, labels)):
            color, centre_color = colors[i]
            bma = np.asarray(a[f"bma_{key}"], dtype=float)
            # Each result a little narrower than the one before and drawn over it, with its own marker:
            # results that agree (the same test errors) all still show.
            ax.plot(np.arange(1, len(bma) + 1), bma, color=color, lw=1.2 + 0.8 * (n - 1 - i), marker=MARKERS[i % len(MARKERS)],
                    ms=4, label=label, zorder=2 + i)
            shown.append(bma)
            if f"mean_{key}" in a:
                centre = float(a[f"mean_{key}"])
                # over every result's line: a wider line of another result at the same value would hide it
                ax.axhline(centre, color=centre_color, lw=1.2, ls="--", label=f"{label}: {centre_name(summary)}",
                           zorder=2 + n)
                shown.append(np.array([centre]))
        if key == "test_nll":
            log_scale_when_spread(ax, np.concatenate(shown))
        else:
            error_axis_from_zero(ax, np.concatenate(shown))
        ax.set_xlabel("samples averaged")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.5, max(2, max(len(a[f"bma_{key}"]) for a, _ in results)) + 0.5)  # end markers whole
        whole_number_ticks(ax)
        ax.grid(alpha=0.3)
    legend_below(fig, axes[0])
    note_synthetic(fig, [summary for _, summary in results])
    return fig
