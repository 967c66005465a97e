"""One figure from several result folders of one kind, for a paper: curves
(train loss and test error against t, every curve on the same axes),
planes (side by side, as Garipov et al. 2018 show the planes of independent
optima, a Bezier curve and a polygonal chain) or model averages (SWAG,
subspace inference, a variational posterior's ensemble: test NLL and error
against the number of samples, as Maddox et al. 2019 compare them). Drawn
from the stored results alone: ``landscape plot A B ... --out DIR``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from landscape.errors import UserError, shell_word

from landscape.checkpoint import read_json, read_result, write_json
from landscape.data import described

from landscape.sweep import refuse_unfinished

from .curve import compare_curves, curve_label
from .plane import compare_planes
from .style import bad_mathtext, check_formats, drawing, save_figure, shown_label
from .swag import average_label, compare_averages

__all__ = ["draw_comparison", "redraw_comparisons", "COMPARABLE"]

class _Kind(NamedTuple):
    files: tuple[str, ...]  # the result files that make a folder this kind
    needed: tuple[str, ...]  # arrays every figure of it draws
    figure: str  # the figure's (and its record's) name in --out
    words: str  # the kind in a message
    draw: Callable  # (results, labels) -> the figure


COMPARABLE = {
    "curve": _Kind(("curve.npz",), ("t", "curve_train_loss", "curve_test_error", "line_train_loss", "line_test_nll",
                                    "line_test_error"), "curves", "curve", compare_curves),
    "plane": _Kind(("plane.npz",), ("x", "y", "train_loss", "test_error", "anchor_xy"), "planes", "plane",
                   compare_planes),
    "average": _Kind(("swag.npz", "subspace.npz", "variational.npz"), ("bma_test_nll", "bma_test_error"), "averages",
                     "model average", compare_averages),
}


def result_kind(folder: Path) -> tuple[str, str]:
    """Which comparable result ``folder`` holds, and its file; one line when none."""
    if (folder / "posterior-curve.npz").exists():
        raise UserError(f"{folder}: a curve between posteriors; only curves between networks (curve.npz), planes "
                        f"and model averages are compared in one figure")
    for kind, spec in COMPARABLE.items():
        for file in spec.files:
            if (folder / file).exists():
                return kind, file
    refuse_unfinished(folder)
    raise UserError(f"{folder}: no curve.npz, plane.npz or model average (swag.npz, subspace.npz, "
                    f"variational.npz); several folders are compared only as curves, planes or model averages")


def _load(folder: Path, kind: str, file: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    file = file or COMPARABLE[kind].files[0]
    arrays, summary = read_result(folder, file)
    missing = [k for k in COMPARABLE[kind].needed if k not in arrays]
    if missing:
        raise UserError(f"{folder / file}: lacks {missing[0]!r} (edited, or written by another version?); rerun the "
                        f"command that made it")
    return arrays, summary


def default_labels(folders: Sequence[Path], summaries: Sequence[dict], kind: str) -> list[str]:
    """A curve's type and bends, a plane's path (its curve) or the folder's
    name; where those would repeat, the folders' names, or as many of their
    paths' last parts as tell them apart (``r1/ab``, ``r2/ab``). Names are
    taken without following links (a link's own name) from the absolute
    path, so ``.`` is its folder's name, and the labels do not depend on
    where the command runs: a redraw finds them again."""
    paths = [Path(os.path.abspath(f)) for f in folders]
    if kind == "curve":
        labels = [curve_label(s) for s in summaries]
    elif kind == "average":
        labels = [average_label(s) for s in summaries]
    else:
        labels = [str(s.get("path_label") or _literal(p.name)) for p, s in zip(paths, summaries)]
    if len(set(labels)) == len(labels):
        return list(labels)
    for k in range(1, max(len(p.parts) for p in paths) + 1):
        candidate = [_literal(str(Path(*p.parts[-k:]))) for p in paths]
        if len(set(candidate)) == len(candidate):
            return candidate
    return [_literal(str(p)) for p in paths]


def _literal(name: str) -> str:
    """A folder's name as a legend shows it: a $ written as \\$ (not mathtext), and a leading _ (which a
    legend leaves out) after a zero-width space."""
    return shown_label(name.replace("$", "\\$"))


@drawing
def draw_comparison(folders: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                    formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw ``curves.<fmt>``, ``planes.<fmt>`` or ``averages.<fmt>`` in
    ``out`` from two or more result folders of one kind (all curves, all
    planes, or all model averages: swag, subspace, vi-eval results), measured
    alike (:func:`check_comparable`); ``labels`` name them in the figure
    (default :func:`default_labels`). Returns the files written."""
    from ..inputs import refuse_single_path  # local: the figures' modules load no network code at import

    refuse_single_path(folders, "folders", one=None, what="result folders")
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise UserError("a comparison needs two or more result folders")
    resolved = [f.resolve() for f in folders]
    twice = next((f for i, f in enumerate(folders) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise UserError(f"{twice} is given twice")
    formats = check_formats(formats)
    if isinstance(labels, str):
        raise UserError(f"labels must be a list of labels, one per folder, not one string ({labels!r})")
    if labels is not None:
        check_labels(labels, len(folders))
    found = [result_kind(f) for f in folders]
    kind = found[0][0]
    other = next((i for i, (k, _) in enumerate(found) if k != kind), None)
    if other is not None:
        raise UserError(f"{folders[0]} holds a {COMPARABLE[kind].words} and {folders[other]} a "
                        f"{COMPARABLE[found[other][0]].words}; one figure compares results of one kind")
    results = [_load(f, kind, file) for f, (_, file) in zip(folders, found)]
    check_comparable(folders, [s for _, s in results], train_loss=kind != "average")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the figure")
    if (out / "config.json").exists():  # `plot OUT` redraws a result's own figures, not a comparison beside them
        raise UserError(f"--out {out} holds a result (config.json); give a folder of its own for the comparison")
    fig = COMPARABLE[kind].draw(results, labels or default_labels(folders, [s for _, s in results], kind))
    out.mkdir(parents=True, exist_ok=True)
    name = COMPARABLE[kind].figure
    written = save_figure(fig, out / name, formats)
    # What the figure was drawn from, so `landscape plot OUT` redraws it: the folders relative to OUT
    # (the tree can move) as given ("given": a link stays a link, so a copy that followed the links
    # still finds them, and the default labels are found again) and as resolved ("results", read where
    # the other is not a folder), and the labels given (None: the defaults, found again from the results).
    write_json(out / f"{name}.json", {"kind": kind, "results": [os.path.relpath(r, out.resolve()) for r in resolved],
                                      "given": [os.path.relpath(os.path.abspath(f), os.path.abspath(out))
                                                if Path(os.path.abspath(f)).resolve() == r else None
                                                for f, r in zip(folders, resolved)],
                                      "labels": list(labels) if labels is not None else None})
    return written


def comparison_record(path: Path, kind: str) -> tuple[list[Path], list[str] | None]:
    """The folders and labels (None: the defaults) a comparison's record names; one line when it is not
    such a record. Each folder is the one given, joined to the record's folder without following links,
    where that is a folder, else the resolved one (a record from before "given" was kept has that alone)."""
    record = read_json(path)

    def strings(x: object, count: int | None = None) -> bool:
        return isinstance(x, list) and all(isinstance(s, str) for s in x) and count in (None, len(x))

    if isinstance(record, dict) and record.get("kind") == kind:
        results, labels = record.get("results"), record.get("labels")
        if strings(results) and (labels is None or strings(labels)):
            given = record.get("given")
            if not (isinstance(given, list) and len(given) == len(results) and
                    all(g is None or isinstance(g, str) for g in given)):
                given = [None] * len(results)  # a record from before: the resolved folders
            # (None: a path given through a link and "..", which the kernel resolves otherwise than its text)
            here = os.path.abspath(path.parent)
            folders = [Path(os.path.normpath(os.path.join(here, g))) if g is not None and
                       os.path.isdir(os.path.normpath(os.path.join(here, g))) else path.parent / r
                       for g, r in zip(given, results)]
            return folders, labels
    raise UserError(f"{path}: not a record of a comparison (edited, or damaged?); draw it again with: "
                    f"landscape plot A B ... --out {shell_word(path.parent)}")


def redraw_comparisons(folder: str | Path, formats: tuple[str, ...] = ("png",),
                       out: str | Path | None = None) -> list[Path]:
    """Redraw every comparison figure ``folder`` holds (``curves.json``,
    ``planes.json``, ``averages.json``, written beside the figures), from the
    result folders they name, in ``folder`` or (``out``) another folder, with
    its record; [] when it holds none."""
    folder = Path(folder)
    written = []
    for kind, spec in COMPARABLE.items():
        path = folder / f"{spec.figure}.json"
        if not path.exists():
            continue
        folders, labels = comparison_record(path, kind)
        for f in folders:
            if not f.is_dir():
                raise UserError(f"{path} names {os.path.normpath(f)}, which is not a folder (moved or removed?)")
        written += draw_comparison(folders, folder if out is None else out, labels, formats)
    return written


def check_labels(labels: Sequence[str], count: int) -> None:
    """One label per folder, each shown in the legend as written: none empty
    or starting with "_" (matplotlib leaves those out of a legend), no two
    alike, and any $...$ in them valid mathtext (checked here, so a bad one
    is not found only when the figure is saved)."""
    if len(labels) != count:
        raise UserError(f"--labels gives {len(labels)} label{'s' if len(labels) != 1 else ''} for {count} result "
                        f"folders (give --labels after the folders)")
    for label in labels:
        if not label.strip() or label.startswith("_"):
            raise UserError(f"--labels {label!r}: a legend leaves out an empty label or one starting with '_'")
        if bad_mathtext(label):
            raise UserError(f"--labels {label!r}: its $...$ is not valid mathtext (write a literal $ as \\$)")
    if len(set(labels)) < len(labels):
        raise UserError(f"--labels names two results alike ({', '.join(labels)})")


def check_comparable(folders: Sequence[Path], summaries: Sequence[dict], train_loss: bool = True) -> None:
    """Results drawn on one axis must be measured alike: on one split of one
    dataset (as far as their summaries record it) and, when the figure draws
    the train loss (NLL + wd/2 ||w||^2), with one weight decay."""
    def data(s: dict) -> dict | None:
        d = s.get("dataset")
        return {k: v for k, v in d.items() if k != "augment"} if isinstance(d, dict) else None  # training only

    def words(d: dict) -> str:  # the files' fingerprint and a normalisation too: what tells such data apart
        return described(d)

    first, split0, wd0 = data(summaries[0]), summaries[0].get("eval_split", "test"), summaries[0].get("wd")
    for folder, s in zip(folders[1:], summaries[1:]):
        split, d, wd = s.get("eval_split", "test"), data(s), s.get("wd")
        if split != split0:
            raise UserError(f"{folders[0]} was evaluated on the {split0} split and {folder} on the {split} split; "
                            f"compare results on one split")
        if first is not None and d is not None and d != first:
            raise UserError(f"{folders[0]} was evaluated on {words(first)} and {folder} on {words(d)}; compare "
                            f"results on the same data")
        if train_loss and wd0 is not None and wd is not None and wd != wd0:
            raise UserError(f"{folders[0]}'s train loss has weight decay {wd0:g} and {folder}'s {wd:g}: not "
                            f"comparable (evaluate them with one --wd)")
