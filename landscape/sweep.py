"""Sweeps: the engine over many points, in chunks, resumable and sharded.

A sweep evaluates ``coefficients @ anchors`` (N points) chunk by chunk. After
every chunk the results so far are written atomically to a partial store
(``sweep.partial.npz``) tagged with a fingerprint of the sweep (anchors,
coefficients, settings); ``resume=True`` keeps the finished points of a store
with the same fingerprint and evaluates the rest.

Under ``torchrun --nproc-per-node N`` the ranks take turns over the chunks
(chunk c goes to rank c mod N), gather each round's results, and rank 0
writes the store; every rank returns the merged results. The process group
uses gloo on the CPU and NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (claim_folder, npz_reason, read_json, read_result, remove_file, same_file, stored_config,
                         write_json, write_npz, writer_of)
from .device import check_fits, resolve_device
from .errors import UserError, launch_number, shell_word, world_size
from .evaluate import (METRICS, check_eval_options, default_points_per_pass, evaluate_points, resolve_bn_stats,
                       unique_rows)
from .progress import Progress

__all__ = ["STORE", "check_sweep_fits", "refuse_unfinished", "init_distributed", "process_device", "rank_and_world", "is_main", "barrier", "fingerprint", "run_sweep",
           "begin_result", "finish_result", "request_key"]

STORE = "sweep.partial.npz"


def init_distributed(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun; (rank, world size)."""
    world = world_size()
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:  # torch would stop in a traceback at its rendezvous
            raise UserError(f"WORLD_SIZE={world} is set, but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not: this is no torchrun worker; start the "
                            f"command with torchrun, or unset WORLD_SIZE", rank_local=True)  # no group: each says it
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        waiting = threading.Timer(WAIT_NOTE_S, _say_waiting, (world,))  # a process missing: said, not silent
        waiting.daemon = True
        waiting.start()
        try:
            dist.init_process_group(backend=backend)
        finally:
            waiting.cancel()
    return rank_and_world()


WAIT_NOTE_S = 20.0  # torchrun's processes meet within seconds; torch itself waits up to 30 minutes


def _say_waiting(world: int) -> None:
    """Rank 0's line while it waits to meet the others, which torch does in silence for up to 30 minutes: a
    job script that set WORLD_SIZE (or an srun that started fewer processes) would burn its allocation
    without a word."""
    if launch_number("RANK", 0, strict=False) == 0:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        print(f"note: still waiting, after {WAIT_NOTE_S:g} s, for the other {world - 1} of WORLD_SIZE={world} "
              f"processes at {where} (torch waits up to 30 minutes): started without torchrun, or did another "
              f"process fail to start?", file=sys.stderr, flush=True)


def process_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device of this process (``resolve_device``). Under torchrun
    (WORLD_SIZE > 1) this also joins the process group (gloo on the CPU, NCCL
    on CUDA), and on CUDA each rank takes the GPU of its LOCAL_RANK; ``spec``
    may name one (``cuda:N``) only where one process runs per node."""
    device = resolve_device(spec)
    if world_size() > 1:
        if device.type == "cuda" and device.index is not None and launch_number("LOCAL_WORLD_SIZE", 1) > 1:
            raise UserError(f"--device {device} under torchrun would put every process of this node on one GPU; "
                            f"pass --device cuda (each process takes the GPU of its LOCAL_RANK), and choose the "
                            f"GPUs with CUDA_VISIBLE_DEVICES")
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # one process on this node: the GPU named
        elif device.type == "cuda" and "LOCAL_RANK" in os.environ:
            local, count = launch_number("LOCAL_RANK", 0), torch.cuda.device_count()
            if local >= count:
                raise UserError(f"local process {local} has no GPU of its own: this node has {count} CUDA "
                                f"device(s); start at most {count} per node (torchrun --nproc-per-node) "
                                f"or use --device cpu", rank_local=True)
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        init_distributed(device)
    return device


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def _digest(arrays: Sequence[np.ndarray], settings: dict[str, Any]) -> str:
    """SHA-256 of the arrays' bytes, in order, then of ``settings`` as sorted
    JSON; then, after a colon, the data's fingerprint when ``settings`` hold
    one (a ``Dataset.describe()`` record's), and after another the seed of
    its validation split where it has one. Both are kept out of the hash, so
    that keys stored before data records held them still match
    (:func:`compare_keys`)."""
    return _keyed(_hashed(arrays), *_data_apart(settings))


def _hashed(arrays: Sequence[np.ndarray]) -> Any:
    """A SHA-256 object fed the arrays' bytes, in order (``.copy()`` it to key several settings)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h


def _as_json(obj: Any) -> Any:
    """A setting JSON has no type for, as keys and records write it: a NumPy number as the number it is
    (``samples=np.int64(4)`` was the string "4", which the same setting given as 4 later did not match),
    anything else as its text."""
    return obj.item() if isinstance(obj, np.generic) else str(obj)


def _keyed(h: Any, plain: dict[str, Any], data: str | None, seed: int | None) -> str:
    """:func:`_digest`'s key from an array hash ``h`` (fed on) and settings taken apart by :func:`_data_apart`."""
    h.update(json.dumps(plain, sort_keys=True, default=_as_json).encode())
    parts = [h.hexdigest()]
    if data or seed is not None:
        parts.append(data or "")
    if seed is not None:
        parts.append(str(seed))
    return ":".join(parts)


def _data_apart(settings: dict[str, Any]) -> tuple[dict[str, Any], str | None, int | None]:
    """``settings`` without the ``fingerprint`` and ``split_seed`` of the data
    records among its values, and those two (None when there are none)."""
    found, seed = None, None
    plain = {}
    for k, v in settings.items():
        if isinstance(v, dict) and "fingerprint" in v:
            found = found or v["fingerprint"]
            seed = seed if seed is not None else v.get("split_seed")
            v = {kk: vv for kk, vv in v.items() if kk not in ("fingerprint", "split_seed")}
        plain[k] = v
    return plain, found, seed


def compare_keys(stored: str, key: str, same_settings: bool = False) -> str | None:
    """None when a stored sweep or result key answers the same request as
    ``key``; "settings" when its inputs or settings differ (unless the caller
    knows them the same: ``same_settings``), "data" when the
    data's fingerprint does, "split" when the seed of its validation split
    does (a key without one or the other, from an earlier build or of data
    made in Python, is not compared on it)."""
    old, old_data, old_seed = (stored.split(":", 2) + ["", ""])[:3]
    new, new_data, new_seed = (key.split(":", 2) + ["", ""])[:3]
    if old != new and not same_settings:
        return "settings"
    if old_data and new_data and old_data != new_data:
        return "data"
    return "split" if old_seed and new_seed and old_seed != new_seed else None


def _float32(v: torch.Tensor) -> np.ndarray:
    return v.detach().float().cpu().numpy()


def fingerprint(anchors: torch.Tensor, coefficients: np.ndarray, settings: dict[str, Any]) -> str:
    """A hash of everything that determines a sweep's results."""
    return _digest([_float32(anchors), np.asarray(coefficients, dtype=np.float64)], settings)


def _load_store(path: Path, key: str, n: int, probs: bool = False, also: str | None = None,
                config: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A partial store's done flags and values, when its key answers ``key``
    (or ``also``: the same sweep keyed as an earlier build keyed it); a store
    of another sweep is refused naming the settings that differ from those the
    folder's config.json recorded when it began (``config``: this run's, as
    JSON holds it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored_key = str(z["key"])
            done = z["done"].astype(bool)
            values = {m: z[m].astype(np.float64) for m in METRICS}
            if probs and "probs" in z.files:
                values["probs"] = z["probs"].astype(np.float64)  # float32 in runs of earlier builds
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: unreadable partial results ({npz_reason(e)}); delete it to start over") from None
    differs = compare_keys(stored_key, key)
    if differs and also is not None:
        closeness = {None: 0, "data": 1, "split": 1, "settings": 2}
        differs = min(differs, compare_keys(stored_key, also), key=closeness.get)
    if differs in ("data", "split"):
        why = ("the data's files changed since the sweep began" if differs == "data" else
               "another validation split, by --data-seed")
        raise UserError(f"{path}: partial results on other data ({why}); delete it or choose another --out")
    if differs or done.shape != (n,) or (probs and done.any() and "probs" not in values):
        raise UserError(f"{path}: partial results of a different sweep ({_config_changes(path.parent, config)}); "
                        f"rerun with the settings it began with to continue it, or choose another --out")
    if any(len(v) != n for v in values.values()) or any(v.ndim != 1 for m, v in values.items() if m != "probs"):
        raise UserError(f"{path}: damaged partial results (arrays of other lengths than its {n} points); delete it "
                        f"to start over")
    bad = _impossible(done, values)
    if bad is not None:
        raise UserError(f"{path}: damaged partial results (point {bad} is marked done but holds no result, or an "
                        f"impossible one); delete it to start over")
    return done, values


def _impossible(done: np.ndarray, values: dict[str, np.ndarray]) -> int | None:
    """The first point marked done whose stored values no evaluation gives,
    or None: an error rate that is not a number in [0, 100] (every evaluated
    point has one, finite whatever its logits: the NaN an unevaluated point
    is stored with fails), a negative loss or NLL, a probability outside
    [0, 1]. A NaN NLL or probability stays possible (logits that overflowed)."""
    wrong = np.zeros(len(done), dtype=bool)
    for m, v in values.items():
        if m == "probs":
            flat = v.reshape(len(v), -1)
            wrong |= ~np.all(np.isnan(flat) | ((flat >= 0) & (flat <= 1 + 1e-6)), axis=1)
        elif m.endswith("_error"):
            wrong |= ~((v >= 0) & (v <= 100))  # False for NaN
        else:
            wrong |= v < 0
    found = np.flatnonzero(done & wrong)
    return int(found[0]) if len(found) else None


def stored_bn_stats(folder: Path) -> str:
    """The estimator an unfinished sweep in ``folder`` was started with ("auto" if unknown)."""
    stored = (stored_config(folder) or {}).get("bn_stats")
    return stored if stored in ("population", "batches") else "auto"


def _write_store(path: Path, key: str, done: np.ndarray, values: dict[str, np.ndarray]) -> None:
    write_npz(path, dict(values, key=np.array(key), done=done))


class Request(str):
    """A request key (:func:`request_key`) that also carries what it hashes in
    a readable form: ``settings`` (as JSON stores them, without the data's
    fingerprint) and ``inputs`` (a hash of the input vectors alone), which
    :func:`finish_result` stores so that a later ``--resume`` with other
    settings can name them."""

    settings: dict[str, Any]
    inputs: str


def request_key(vectors: Sequence[torch.Tensor], settings: dict[str, Any]) -> Request:
    """A hash of what a sweep command was asked: its input weight vectors and
    the settings that determine its values (not how they are computed: the
    points per pass and the strategy change nothing)."""
    h = _hashed([_float32(v) for v in vectors])  # hashed once: the vectors may be large
    plain, data, seed = _data_apart(settings)
    key = Request(_keyed(h.copy(), plain, data, seed))
    key.settings = json.loads(json.dumps(plain, sort_keys=True, default=_as_json))
    key.inputs = _keyed(h, {}, None, None)
    return key


def _rounding_apart(summary: dict[str, Any], request: str) -> bool:
    """Whether a finished result's request differs from ``request`` only in
    numbers derived from the same inputs that another build's arithmetic
    moved by rounding (a subspace's start, 1e-11 apart once it was computed
    in float64): the same inputs, every setting equal but floats within
    1e-9 relative."""
    stored = summary.get("request_settings")
    return (isinstance(stored, dict) and isinstance(request, Request) and summary.get("request_inputs") is not None
            and summary.get("request_inputs") == request.inputs and _close(stored, request.settings))


def _close(a: Any, b: Any) -> bool:
    """Two settings as JSON holds them equal, floats within 1e-9 relative (1e-15 absolute near 0: a coordinate
    computed as 1e-17 where it was 0); a bool equals only a bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return (all(isinstance(v, (int, float)) for v in (a, b))
                and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def _what_differs(summary: dict[str, Any], request: str) -> str:
    """How a finished result's request differs from ``request``, in words:
    the settings by name (stored, now), else "other inputs" (the weights
    given); "other inputs or settings" for a result stored without them."""
    stored = summary.get("request_settings")
    if not isinstance(stored, dict) or not isinstance(request, Request):
        return "other inputs or settings"
    now = request.settings
    changed = [k for k in sorted(set(stored) | set(now)) if not _close(stored.get(k), now.get(k))]  # not rounding
    if changed:
        return "other settings: " + "; ".join(f"{k} {_brief(stored.get(k))}, now {_brief(now.get(k))}"
                                              for k in changed)
    return "other inputs (the weights given differ)" if summary.get("request_inputs") != request.inputs else \
        "other inputs or settings"


# Settings of a sweep's config.json that do not decide its results (how it runs), or that name it.
_HOW = ("argv", "command", "device", "points_per_pass", "progress", "device_used", "threads", "processes")


def _config_changes(folder: Path, config: dict[str, Any] | None) -> str:
    """How ``config`` differs from the one ``folder``'s config.json recorded, in words ("seed 1, now 0"), else
    "other points or settings" (none recorded, or the points themselves differ)."""
    try:
        stored = read_json(folder / "config.json")
    except UserError:
        stored = None
    if not isinstance(stored, dict) or not isinstance(config, dict):
        return "other points or settings"
    changed = [k for k in sorted(set(stored) & set(config))
               if k not in _HOW and stored[k] != config[k] and not _same_files(stored[k], config[k])]
    if not changed:
        return "other points or settings"
    return "other settings: " + "; ".join(f"{k} {_brief(stored[k])}, now {_brief(config[k])}" for k in changed)


def _same_files(a: Any, b: Any) -> bool:
    """Whether two settings name the same existing files (one path, or lists of them), written differently."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_files(x, y) for x, y in zip(a, b))
    return same_file(a, b)


def _brief(value: Any) -> str:
    """A setting for a message: a data record by its name and sizes, others as JSON writes them."""
    if value is None:
        return "none"
    if isinstance(value, dict) and "n_train" in value:
        seed = f", split seed {value['split_seed']}" if "split_seed" in value else ""
        norm = f", normalization {value['normalization']}" if "normalization" in value else ""
        return f"{value.get('name')!r} ({value.get('n_train')} train / {value.get('n_test')} test{seed}{norm})"
    text = json.dumps(value, default=_as_json)
    return text if len(text) <= 60 else text[:57] + "..."


def begin_result(out: Path | None, result_file: str, resume: bool, command: str,
                 request: str | None = None, stores: Sequence[str] = (STORE,)) -> tuple[dict[str, np.ndarray], Any] | None:
    """Check a sweep's result folder before any work: one holding another
    command's results is refused (:func:`claim_folder`); a finished result is
    refused without ``resume`` and returned (arrays, summary) with it, when
    it answered the same ``request`` (:func:`request_key`; results stored
    without one, by builds before requests were stored, are taken as they
    are, but a summary that is not one, holding neither a request nor notes,
    is refused); a partial store needs ``resume``.
    Every rank checks, then they wait for each other so that rank 0 writes
    only after all have looked."""
    if out is not None:
        claim_folder(out, command)
        done = (out / result_file).exists() and (out / "summary.json").exists()
        if (out / result_file).exists() and not done and not (out / STORE).exists():
            raise UserError(f"{out} holds {result_file} but neither summary.json nor the sweep's partial store to "
                            f"finish it from; choose another --out")
        if done and not resume:
            raise UserError(f"{out} already holds a finished result ({result_file}); choose another --out (to "
                            f"redraw its figures: landscape plot {shell_word(out)})")
        if (out / STORE).exists() and not resume:
            raise UserError(f"{out} holds an unfinished sweep; pass --resume to continue it, or choose another --out")
        if done:  # finished before: nothing to resume
            if is_main():  # stores left by a stop just after the result was written
                for name in stores:
                    with contextlib.suppress(OSError):  # a read-only copy: left there, harmless
                        remove_file(out / name)
            arrays, summary = read_result(out, result_file)
            stored = summary.get("request") if isinstance(summary, dict) else None
            differs = compare_keys(str(stored), request) if request is not None and stored is not None else None
            if differs == "settings" and _rounding_apart(summary, request):  # the data still compared
                differs = compare_keys(str(stored), request, same_settings=True)
            if request is not None and stored is None and not (isinstance(summary, dict) and "notes" in summary):
                raise UserError(f"{out}/summary.json is damaged (it records neither the request it answers nor "
                                f"notes); choose another --out (to redraw its figures: landscape plot "
                                f"{shell_word(out)})")
            if differs:
                what = {"data": "other data (the data's files changed since)",
                        "split": "another validation split (--data-seed)"}.get(differs) or \
                    _what_differs(summary, request)
                raise UserError(f"{out} holds a finished {command} result of {what}; choose another --out")
            return arrays, summary
    barrier()
    _BEGAN[str(out)] = time.monotonic()  # the summary's seconds: this command's work on it
    return None


_BEGAN: dict[str, float] = {}  # begin_result's time for each folder (None: a result kept in memory), by its text


def finish_result(out: Path | None, result_file: str, arrays: dict[str, np.ndarray], summary: dict[str, Any],
                  request: str | None = None, stores: Sequence[str] = (STORE,)) -> None:
    """Rank 0 writes the result and the summary (with the ``request`` it
    answers, for a later ``--resume`` to check, the name of the result
    file it goes with, for :func:`~landscape.checkpoint.read_result`, and
    ``seconds`` since :func:`begin_result`: a resumed sweep's last session), then drops the partial
    ``stores`` (a command with several sweeps names them all)."""
    if request is not None:
        summary["request"] = str(request)
        if isinstance(request, Request):  # readable, for naming what a later --resume changed
            summary["request_settings"], summary["request_inputs"] = request.settings, request.inputs
    summary["result"] = result_file  # which results it summarises: a summary copied beside others is told apart
    began = _BEGAN.pop(str(out), None)
    if began is not None:  # the time this command took (resumed: the session that finished it)
        summary.setdefault("seconds", round(time.monotonic() - began, 3))
    if out is not None and is_main():
        # The summary first: the result file marks the sweep finished, so one stopped between the
        # two still has its partial store, and --resume finishes it again.
        write_json(out / "summary.json", summary)
        write_npz(out / result_file, arrays)
        for name in stores:
            remove_file(out / name)


def refuse_unfinished(folder: Path) -> None:
    """One line when ``folder`` holds an unfinished sweep (its partial store,
    :data:`STORE`, or another command's ``*.partial.npz``: a simplex's
    evaluation, a subspace's samples) where finished results were expected,
    as by ``plot``."""
    stores = sorted(p.name for p in Path(folder).glob("*.partial.npz"))
    if stores:
        counts = "; ".join(stores_done(Path(folder)))
        refuse_stopped(folder, "sweep", f" ({counts or ', '.join(stores)})", f" ({counts})" if counts else "")


def stores_done(folder: Path, unit: str = "points") -> list[str]:
    """How far each partial store in ``folder`` got: ["7 of 9 points"], each named where there are several
    ("... in grid.partial.npz"); a sampler's state (no ``done``), or a store being written or torn, is left
    out (never raises: it is said while stopping)."""
    stores = sorted(Path(folder).glob("*.partial.npz"))
    counts = []
    for store in stores:  # several where a command keeps one a sweep (subspace: its sampler's and grid's)
        try:
            with np.load(store, allow_pickle=False) as z:
                if "done" not in z.files:  # a sampler's state (subspace), not a sweep's points
                    continue
                done = z["done"]
        except Exception:  # noqa: BLE001 - being written, or torn: said without it
            continue
        counts.append(f"{int(done.sum())} of {done.size} {unit}" + (f" in {store.name}" if len(stores) > 1 else ""))
    return counts


def refuse_stopped(folder: Path, what: str, detail: str = "", so_far: str | None = None) -> None:
    """One line for ``folder``, whose ``what`` (a sweep, an SWA run) has not
    finished: still being written by a landscape process (``so_far``, by
    default ``detail``: how far it is), or stopped (``detail``: how far it
    got); its figures would show it as done."""
    writer = writer_of(Path(folder))
    so_far = detail if so_far is None else so_far
    if writer is not None:
        raise UserError(f"{folder}: the {what} there is still running (landscape process"
                        f"{f' {writer}' if writer else ''}){f', so far{so_far}' if so_far else ''}; plot it when it "
                        f"has finished")
    raise UserError(f"{folder}: the {what} there is unfinished{detail}; finish it by rerunning its command with "
                    f"--resume, then plot")


def check_sweep_fits(points: int, anchors: int, what: str) -> None:
    """One line before any work when a sweep of ``points`` points over
    ``anchors`` anchors (a size asked for by mistake: ``--grid 100000``)
    would need more than all of the host's memory: its coefficients (a few
    float64 copies of points x anchors) and its metrics (float64 per point)."""
    nbytes = 8.0 * points * (3 * anchors + 2 * len(METRICS) + 2)
    check_fits(nbytes, f"{what} ({points:,} points)", "cpu")


def run_sweep(
    model: torch.nn.Module,
    anchors: torch.Tensor,
    coefficients: np.ndarray,
    data,
    *,
    store: Path | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    wd: float = 0.0,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    strategy: str = "auto",
    amp: bool = False,
    progress: bool | str | None = False,
    replace_other: str | None = None,
    return_probs: bool = False,
    what: str | None = None,
    identity: str | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate every point of ``coefficients @ anchors``; returns per-point metric arrays (N,)
    (and with ``return_probs`` the test-set probabilities ``probs`` (N, M, classes), stored too).

    ``store`` is the partial-results file (None: keep nothing on disk).
    ``replace_other``: a store there of other points, settings or data is
    dropped with a note giving this reason (a folder's own cache, as a
    simplex's evaluation after ``--eval-samples`` changed), not refused.
    ``settings`` (JSON-able) joins the fingerprint, so a store is only
    resumed by the same sweep. ``progress``: a bar (True), nothing (False),
    ``"log"``: a line on stderr after a pass, at most one every 10 s and
    always the last, for a log file or a batch
    job, where a bar cannot redraw itself, or None: a bar on a terminal
    (:func:`~landscape.progress.progress_mode`); the lines begin with the
    number of distinct points and ``what`` they are ("the 21 x 21 grid and
    3 anchors"). ``config`` (JSON-able) is written to
    ``config.json`` beside ``store`` once the store is known to belong to this
    sweep (a refused resume leaves the folder as it was). ``bn_stats`` is resolved once
    (:func:`~landscape.evaluate.resolve_bn_stats`) and the resolved name
    joins the fingerprint too. ``identity``: the :func:`request_key` of the
    inputs the anchors and coefficients were computed from (a plane's basis and
    grid), which then stands for them in the fingerprint: their last bits
    change with the number of threads (torchrun runs one a process) and the
    device, and a resume must not be refused for that.
    """
    check_eval_options(batch_size, bn_batches, points_per_pass, wd)
    coefficients, expand = unique_rows(np.asarray(coefficients, dtype=np.float64))  # identical points once
    n = coefficients.shape[0]
    rank, world = rank_and_world()
    # "auto" choices read free memory, which ranks may see differently: rank 0 decides for all,
    # or the ranks would build different chunk lists and wait on each other forever.
    if bn_stats == "auto" and bn_batches is None and resume and store is not None and store.exists():
        bn_stats = stored_bn_stats(store.parent)  # free memory may have changed since: keep the estimator
    bn_stats = resolve_bn_stats(bn_stats, model, data, bn_batches)
    k = points_per_pass or default_points_per_pass(model, data, bn_stats, batch_size, strategy)
    if world > 1:
        decided = [bn_stats, k]
        dist.broadcast_object_list(decided, src=0)
        bn_stats, k = decided
    decided = dict(settings or {}, wd=wd, batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats, amp=amp)
    if identity is not None:  # the inputs' key stands for anchors and coefficients computed from them
        key = _digest([], dict(decided, inputs=identity.partition(":")[0]))
    else:
        key = fingerprint(anchors, coefficients, decided)
    done = np.zeros(n, dtype=bool)
    device = anchors.device if isinstance(anchors, torch.Tensor) else torch.device("cpu")
    threads = torch.get_num_threads() if device.type == "cpu" else None
    # the sweep's config.json: where it ran too (--device auto says nothing of what it chose)
    recorded = None if config is None else dict(config, bn_stats=bn_stats, device_used=str(device), threads=threads,
                                                processes=world)
    values = {m: np.full(n, np.nan) for m in METRICS}
    if store is not None and store.exists():
        if not resume:
            raise UserError(f"{store.parent} holds an unfinished sweep; pass --resume to continue it")
        legacy = fingerprint(anchors, coefficients, decided) if identity is not None else None  # as stored before
        now = None if recorded is None else json.loads(json.dumps(recorded, default=_as_json))  # as config.json holds it
        try:
            done, values = _load_store(store, key, n, probs=return_probs, also=legacy, config=now)
            if rank == 0:
                print(f"{store.parent}: resuming: kept {int(done.sum())} of {n} points, "
                      f"{n - int(done.sum())} to evaluate", file=sys.stderr)
        except UserError:
            if not replace_other:
                raise
            barrier()  # every rank has read it before rank 0 removes it
            if rank == 0:
                print(f"note: {store.parent}: the points {store.name} kept are of another evaluation "
                      f"({replace_other}); they are dropped, and the {n} points evaluated", file=sys.stderr)
                remove_file(store)
    if store is not None and recorded is not None and rank == 0:
        write_json(store.parent / "config.json", recorded)

    todo = np.flatnonzero(~done)
    chunks = [todo[i:i + k] for i in range(0, len(todo), k)]
    bar = Progress(n, int(done.sum()), desc="points", unit="pt", progress=progress, show=rank == 0, every=10.0,
                   leave=True)  # a bar's last state stays: how long the sweep took
    if (bar.log is not None or bar.bar is not None) and not done.all():  # what is evaluated, and where, once
        where = device.type if not threads else f"{device.type} ({threads} thread{'s' if threads != 1 else ''})"
        print(f"{n} distinct points{f' ({what})' if what else ''}, {k} a pass over the data"
              + (f" on each of {world} processes" if world > 1 else "")
              + f", on {where}, {'bf16' if amp else 'fp32'}, batch norm by {bn_stats}", file=sys.stderr, flush=True)
    # A store is written after a pass unless its last write took more than a tenth of the time since: a large
    # one (a curve's probabilities over many classes) was rewritten whole after every pass. A stop (Ctrl-C,
    # a signal) writes what is unsaved on its way out, and so does the end. Under torchrun after every pass:
    # a stop may find rank 0 waiting for the others, and end it before it could write.
    written_at, write_took, unsaved = time.monotonic(), 0.0, False
    try:
        for start in range(0, len(chunks), world):
            mine = chunks[start + rank] if start + rank < len(chunks) else np.zeros(0, dtype=np.int64)
            result = {}
            if len(mine):
                result = evaluate_points(model, anchors, coefficients[mine], data, wd=wd, batch_size=batch_size,
                                         bn_batches=bn_batches, bn_stats=bn_stats, points_per_pass=len(mine),
                                         strategy=strategy, amp=amp, return_probs=return_probs)
            gathered = [(mine, result)]
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, (mine, result))
            for idx, res in gathered:
                if len(idx):
                    if return_probs and "probs" not in values:
                        values["probs"] = np.zeros((n, *res["probs"].shape[1:]), dtype=np.float64)
                    for m, v in res.items():
                        values[m][idx] = v
                    done[idx] = True
            if store is not None and rank == 0:
                unsaved = True
                if world > 1 or time.monotonic() - written_at >= 10 * write_took:
                    began = time.monotonic()
                    _write_store(store, key, done, values)
                    written_at, unsaved = time.monotonic(), False
                    write_took = written_at - began
            bar.update(int(done.sum()) - bar.done)
        if unsaved:  # the caller's work on the result may still be stopped
            _write_store(store, key, done, values)
    except BaseException:
        if unsaved:  # stopped between writes: keep what is done (the points' values are set before done)
            try:
                _write_store(store, key, done, values)
            except Exception:  # noqa: BLE001 - the stop's own cause is what is said (a full disk fails again)
                pass
        raise
    finally:
        bar.close()
    return {m: v[expand] for m, v in values.items()}  # metrics (and probs) in the caller's order
