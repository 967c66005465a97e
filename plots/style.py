"""Shared figure set-up: a non-interactive backend, sizes, atomic saving."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from landscape.checkpoint import atomic_save  # noqa: E402

__all__ = ["new_figure", "save_figure", "FORMATS"]

FORMATS = ("png", "pdf", "svg")


def new_figure(rows: int = 1, cols: int = 1, *, width: float = 5.0, height: float = 4.0):
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), constrained_layout=True)
    return fig, axes


def save_figure(fig, stem: str | os.PathLike, formats=("png",), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format (atomically) and close it."""
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        atomic_save(lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), path)
        written.append(path)
    plt.close(fig)
    return written
