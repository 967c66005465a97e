"""One figure from several result folders of one kind, for a paper: curves
(train loss and test error against t, every curve on the same axes),
planes (side by side, as Garipov et al. 2018 show the planes of independent
optima, a Bezier curve and a polygonal chain) or model averages (SWAG,
subspace inference, a variational posterior's ensemble: test NLL and error
against the number of samples, as Maddox et al. 2019 compare them). Drawn
from the stored results alone: ``landscape plot A B ... --out DIR``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from landscape.errors import UserError

from landscape.checkpoint import read_json, read_result, write_json

from .curve import compare_curves, curve_label
from .plane import compare_planes
from .style import save_figure
from .swag import average_label, compare_averages

__all__ = ["draw_comparison", "redraw_comparisons", "COMPARABLE"]

# kind -> (result files, arrays every figure needs, figure name)
COMPARABLE = {
    "curve": (("curve.npz",), ("t", "curve_train_loss", "curve_test_error", "line_train_loss", "line_test_nll",
                               "line_test_error"), "curves"),
    "plane": (("plane.npz",), ("x", "y", "train_loss", "test_error", "anchor_xy"), "planes"),
    "average": (("swag.npz", "subspace.npz", "variational.npz"), ("bma_test_nll", "bma_test_error"), "averages"),
}


def result_kind(folder: Path) -> tuple[str, str]:
    """Which comparable result ``folder`` holds, and its file; one line when none."""
    if (folder / "posterior-curve.npz").exists():
        raise UserError(f"{folder}: a curve between posteriors; only curves between networks (curve.npz), planes "
                        f"and model averages are compared in one figure")
    for kind, (files, _, _) in COMPARABLE.items():
        for file in files:
            if (folder / file).exists():
                return kind, file
    if (folder / "sweep.partial.npz").exists():
        raise UserError(f"{folder}: the sweep there is unfinished (sweep.partial.npz); finish it by rerunning its "
                        f"command with --resume, then plot")
    raise UserError(f"{folder}: no curve.npz, plane.npz or model average (swag.npz, subspace.npz, "
                    f"variational.npz); several folders are compared only as curves, planes or model averages")


def _load(folder: Path, kind: str, file: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    files, needed, _ = COMPARABLE[kind]
    file = file or files[0]
    arrays, summary = read_result(folder, file)
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise UserError(f"{folder / file}: lacks {missing[0]!r} (edited, or written by another version?); rerun the "
                        f"command that made it")
    return arrays, summary


def default_labels(folders: Sequence[Path], summaries: Sequence[dict], kind: str) -> list[str]:
    """A curve's type and bends, a plane's path (its curve) or the folder's
    name; the folders' names (or paths) when those would repeat."""
    if kind == "curve":
        labels = [curve_label(s) for s in summaries]
    elif kind == "average":
        labels = [average_label(s) for s in summaries]
    else:
        labels = [str(s.get("path_label") or f.name) for f, s in zip(folders, summaries)]
    for candidate in (labels, [f.name for f in folders], [str(f) for f in folders]):
        if len(set(candidate)) == len(candidate):
            return list(candidate)
    return [str(f) for f in folders]


def draw_comparison(folders: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                    formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``curves.<fmt>``, ``planes.<fmt>`` or ``averages.<fmt>`` in
    ``out`` from two or more result folders of one kind (all curves, all
    planes, or all model averages: swag, subspace, vi-eval results), measured
    alike (:func:`check_comparable`); ``labels`` name them in the figure
    (default :func:`default_labels`). Returns the files written."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise UserError("a comparison needs two or more result folders")
    seen = set()
    for f in folders:
        key = f.resolve()
        if key in seen:
            raise UserError(f"{f} is given twice")
        seen.add(key)
    if labels is not None:
        check_labels(labels, len(folders))
    found = [result_kind(f) for f in folders]
    kinds = [k for k, _ in found]
    if len(set(kinds)) > 1:
        i = kinds.index(next(k for k in kinds if k != kinds[0]))
        name = {"curve": "curve", "plane": "plane", "average": "model average"}
        raise UserError(f"{folders[0]} holds a {name[kinds[0]]} and {folders[i]} a {name[kinds[i]]}; "
                        f"one figure compares results of one kind")
    kind = kinds[0]
    results = [_load(f, kind, file) for f, (_, file) in zip(folders, found)]
    check_comparable(folders, [s for _, s in results], train_loss=kind != "average")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the figure")
    given = list(labels) if labels is not None else None
    labels = given or default_labels(folders, [s for _, s in results], kind)
    fig = {"curve": compare_curves, "plane": compare_planes, "average": compare_averages}[kind](results, labels)
    out.mkdir(parents=True, exist_ok=True)
    name = COMPARABLE[kind][2]
    written = save_figure(fig, out / name, formats)
    # What the figure was drawn from, so `landscape plot OUT` redraws it: the folders relative to OUT
    # (the tree can move), and the labels given (None: the defaults, found again from the results).
    write_json(out / f"{name}.json", {"kind": kind, "results": [os.path.relpath(f.resolve(), out.resolve())
                                                                  for f in folders], "labels": given})
    return written


def redraw_comparisons(folder: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Redraw every comparison figure ``folder`` holds (``curves.json``,
    ``planes.json``, ``averages.json``, written beside the figures), from the
    result folders they name; [] when it holds none."""
    folder = Path(folder)
    written = []
    for kind, (_, _, name) in COMPARABLE.items():
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        record = read_json(path)
        results = record.get("results") if isinstance(record, dict) else None
        labels = record.get("labels") if isinstance(record, dict) else None
        if (record.get("kind") if isinstance(record, dict) else None) != kind or not isinstance(results, list) or \
                not all(isinstance(r, str) for r in results) or not (
                    labels is None or isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise UserError(f"{path}: not a record of a comparison (edited, or damaged?); draw it again with "
                            f"'landscape plot A B ... --out {folder}'")
        folders = [folder / r for r in results]
        for f in folders:
            if not f.is_dir():
                raise UserError(f"{path} names {os.path.normpath(f)}, which is not a folder (moved or removed?)")
        written += draw_comparison(folders, folder, labels, formats)
    return written


def check_labels(labels: Sequence[str], count: int) -> None:
    """One label per folder, each shown in the legend as written: none empty
    or starting with "_" (matplotlib leaves those out of a legend), no two
    alike, and any $...$ in them valid mathtext (checked here, so a bad one
    is not found only when the figure is saved)."""
    from matplotlib.cbook import is_math_text
    from matplotlib.mathtext import MathTextParser

    if len(labels) != count:
        raise UserError(f"--labels gives {len(labels)} label{'s' if len(labels) != 1 else ''} for {count} result "
                        f"folders (give --labels after the folders)")
    for label in labels:
        if not label.strip() or label.startswith("_"):
            raise UserError(f"--labels {label!r}: a legend leaves out an empty label or one starting with '_'")
        if is_math_text(label):
            try:
                MathTextParser("path").parse(label)
            except ValueError:
                raise UserError(f"--labels {label!r}: its $...$ is not valid mathtext (write a literal $ as \\$)") from None
    if len(set(labels)) < len(labels):
        raise UserError(f"--labels names two results alike ({', '.join(labels)})")


def check_comparable(folders: Sequence[Path], summaries: Sequence[dict], train_loss: bool = True) -> None:
    """Results drawn on one axis must be measured alike: on one split of one
    dataset (as far as their summaries record it) and, when the figure draws
    the train loss (NLL + wd/2 ||w||^2), with one weight decay."""
    splits = [s.get("eval_split", "test") for s in summaries]
    for i, split in enumerate(splits[1:], 1):
        if split != splits[0]:
            raise UserError(f"{folders[0]} was evaluated on the {splits[0]} split and {folders[i]} on the {split} "
                            f"split; compare results on one split")

    def data(s: dict) -> dict | None:
        d = s.get("dataset")
        return {k: v for k, v in d.items() if k != "augment"} if isinstance(d, dict) else None  # training only

    def words(d: dict) -> str:
        return f"{d.get('name')} ({d.get('n_train')} train / {d.get('n_test')} {d.get('eval_split', 'test')} images)"

    first = data(summaries[0])
    for i, s in enumerate(summaries[1:], 1):
        d = data(s)
        if first is not None and d is not None and d != first:
            raise UserError(f"{folders[0]} was evaluated on {words(first)} and {folders[i]} on {words(d)}; "
                            f"compare results on the same data")
        wd0, wd = summaries[0].get("wd"), s.get("wd")
        if train_loss and wd0 is not None and wd is not None and wd != wd0:
            raise UserError(f"{folders[0]}'s train loss has weight decay {wd0:g} and {folders[i]}'s {wd:g}: not "
                            f"comparable (evaluate them with one --wd)")
