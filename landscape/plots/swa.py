"""The figure of an SWA run evaluated over training (``swa --eval-every N``):
test error and NLL against the epoch for the SGD iterate and for SWA's
running average (batch norm re-estimated for it), the start of averaging
marked, as the SWA paper draws them. Drawn from ``metrics.jsonl`` and
``config.json`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.checkpoint import read_json, read_jsonl
from landscape.errors import UserError

from .style import (SGD_COLOR, SWA_COLOR, drawing, error_axis_from_zero, fs, new_figure, panel_legend, paper_width,
                    save_figure, whole_number_ticks)

__all__ = ["draw_swa_figure", "swa_curves", "has_swa_curve"]



def swa_curves(records: list[dict]) -> dict[str, np.ndarray]:
    """The epochs and the SGD iterate's test metrics of every record, and the
    epochs and metrics of the records that evaluated the average."""
    rows = [r for r in records if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
    averaged = [r for r in rows if "swa_test_error" in r]
    return {"epoch": np.array([r["epoch"] for r in rows]),
            "test_error": np.array([r.get("test_error", np.nan) for r in rows], float),
            "test_nll": np.array([r.get("test_nll", np.nan) for r in rows], float),
            "swa_epoch": np.array([r["epoch"] for r in averaged]),
            "swa_test_error": np.array([r["swa_test_error"] for r in averaged], float),
            "swa_test_nll": np.array([r["swa_test_nll"] for r in averaged], float)}


def has_swa_curve(run_dir: str | Path) -> bool:
    """Whether ``run_dir``'s metrics.jsonl holds an evaluation of the SWA average (``--eval-every``)."""
    return any(isinstance(r, dict) and "swa_test_error" in r for r in read_jsonl(Path(run_dir) / "metrics.jsonl"))


@drawing
def draw_swa_figure(run_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``swa.<fmt>`` in ``run_dir`` (an SWA run with ``--eval-every``); returns the files written."""
    run_dir = Path(run_dir)
    stored = read_json(run_dir / "config.json")
    config = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(config, dict):
        raise UserError(f"{run_dir / 'config.json'}: holds no run settings (written by 'landscape swa')")
    curves = swa_curves(read_jsonl(run_dir / "metrics.jsonl"))
    if not len(curves["swa_epoch"]):
        raise UserError(f"{run_dir}: no evaluation of the SWA average in metrics.jsonl (run 'landscape swa' with "
                        f"--eval-every N to record one)")
    split = "val" if config.get("val_size") else "test"  # the per-epoch records' split
    fig, axes = new_figure(1, 2, width=11.0, height=4.0)
    for ax, metric, label in ((axes[0], "test_error", f"{split} error (%)"), (axes[1], "test_nll", f"{split} NLL")):
        # SWA wide and below, SGD dashed on top: where the two agree (an error of one image) both still show.
        ax.plot(curves["swa_epoch"], curves[f"swa_{metric}"], color=SWA_COLOR, lw=3.5, marker="o", ms=6, alpha=0.8,
                label="SWA average (BN re-estimated)", zorder=2)
        ax.plot(curves["epoch"], curves[metric], color=SGD_COLOR, lw=1.5, ls="--", marker=".", label="SGD iterate",
                zorder=3)
        start = config.get("swa_start")
        if isinstance(start, int) and start > 0:
            ax.axvline(start, color="gray", ls=":", lw=1, label="averaging starts")
        if metric == "test_error":
            error_axis_from_zero(ax, np.append(curves[metric], curves[f"swa_{metric}"]))
        ax.set_xlabel("epoch")
        whole_number_ticks(ax)  # epochs are whole: no tick at 1.5
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes if paper_width() is None else axes[:1]:  # at a paper's width one legend, below both panels
        panel_legend(fig, ax, fontsize=fs(8), framealpha=0.9)
    low, high, cycle = config.get("swa_lr"), config.get("swa_lr_max"), config.get("cycle", 1)
    rate = ("" if not isinstance(low, (int, float)) else f" {high:g}-{low:g}" if isinstance(high, (int, float))
            else f" {low:g}")
    fig.suptitle(f"SWA against SGD over training ({config.get('swa_schedule', 'constant')} rate{rate}, averaging every "
                 f"{'epoch' if cycle == 1 else f'{cycle} epochs'})"
                 + ("   [trained and evaluated in bf16]" if config.get("amp") else ""), fontsize=fs(10))
    return save_figure(fig, run_dir / "swa", formats)
