"""Every file the toolkit reads or writes: checkpoints, JSON, JSON lines.

A landscape checkpoint is a plain ``torch.save`` dict that
``torch.load(weights_only=True)`` reads::

    {"format": "landscape/1", "kind": "model", "model": {"name", "kwargs"},
     "state_dict": {...}, "meta": {...}, "train_state": {...}  # optional}

``model.kwargs`` holds everything ``create_model`` needs (class count, input
shape, user options), so a checkpoint rebuilds its own network. Foreign
checkpoints load too: a bare state_dict, ``{"model_state": ...}`` (the
dnn-mode-connectivity scripts), ``{"state_dict": ...}``, with ``module.``
(DataParallel / DDP) or ``_orig_mod.`` (``torch.compile``) prefixes.

Writes are atomic: a temporary file in the target's folder, then
``os.replace``, so an interrupted write never leaves half a file behind.
Nothing is ever unpickled beyond what ``weights_only=True`` allows.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import sys
import tempfile
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .brief import brief_repr
from .errors import UserError, launch_rank

__all__ = [
    "FORMAT",
    "Checkpoint",
    "atomic_save",
    "clear_temporaries",
    "atomic_write_text",
    "write_json",
    "write_npz",
    "read_result",
    "npz_reason",
    "read_json",
    "append_jsonl",
    "read_jsonl",
    "save_checkpoint",
    "load_checkpoint",
    "extract_state_dict",
    "strip_prefixes",
    "check_state_dict",
    "load_model",
    "require_network",
]

FORMAT = "landscape/1"
_PREFIXES = ("module.", "_orig_mod.")
_STATE_KEYS = ("state_dict", "model_state", "model_state_dict", "model")


# --------------------------------------------------------------------- writing
def remove_file(path: Path) -> None:
    """Remove ``path`` if it is there. ``unlink(missing_ok=True)`` is not
    enough: on a read-only file system the kernel says so (EROFS) before it
    looks the name up, so a file that is not there raised there too; only a
    file that is there and cannot be removed does now."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.lexists(path):
            raise


def atomic_save(write, path: str | os.PathLike) -> Path:
    """Call ``write(tmp_path)`` then move the file onto ``path`` atomically.

    A write that fails for want of room or rights (a full disk, a quota, a
    file size limit, a read-only folder) is an :class:`OSError` that names
    ``path``, not the temporary file; torch.save's own words for a write cut
    short (a RuntimeError from its zip writer) are turned into one too."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is 0600; a result is as readable as any new file
        os.replace(tmp, path)
    except BaseException as e:
        written = 0  # how far the write got, for _why_cut_short
        gone = not os.path.exists(tmp)
        if not gone:
            written = os.path.getsize(tmp)
            os.unlink(tmp)
        if isinstance(e, FileNotFoundError) and gone and path.parent.is_dir():  # the file, not the folder, went:
            # another process cleared it as a stale temporary (a command started on the folder while a writer
            # that took no lock, the Python API's, wrote there)
            raise OSError(errno.ENOENT, f"another process removed the temporary file this write was filling (a "
                          f"command started on {path.parent} meanwhile?); nothing was replaced: run this again",
                          str(path)) from None
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        if isinstance(e, RuntimeError) and isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None  # a stop (Ctrl-C, SIGTERM) inside torch.save's writer: the stop, not a full disk
        if isinstance(e, RuntimeError) and _cut_short(e):
            raise OSError(errno.EIO, _why_cut_short(path, written), str(path)) from None
        raise
    return path


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path`` where it named no file or the temporary one."""
    if e.filename is not None and not Path(e.filename).name.startswith(f".{path.name}."):
        return e
    return type(e)(e.errno, e.strerror or str(e), str(path)) if e.errno is not None else OSError(
        errno.EIO, str(e), str(path))


def _why_cut_short(path: Path, written: int) -> str:
    """Why a write to ``path`` stopped short after ``written`` bytes, as well
    as can be told afterwards: the file had reached the size limit (``ulimit
    -f``), or the disk is full; else a quota, most likely."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and written >= limit - 2 ** 20:
            return f"{os.strerror(errno.EFBIG)} (the file size limit, ulimit -f, is {limit:,} bytes)"
    except (ImportError, OSError, ValueError):
        pass
    import shutil

    try:
        if shutil.disk_usage(path.parent).free < 2 ** 20:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    return "the write stopped short (a full disk or a quota?)"


def _cut_short(e: RuntimeError) -> bool:
    """Whether ``e`` is torch.save's zip writer failing to write (its file
    full or past a size limit): "PytorchStreamWriter failed writing file",
    "[enforce fail at inline_container.cc] unexpected pos", or its stream
    failing on the last bytes, "basic_ios::clear: iostream error"."""
    text = str(e)
    return "PytorchStreamWriter" in text or "inline_container" in text or "basic_ios" in text


def _umask() -> int:
    """The process's umask (reading it means setting it: set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_save(write, path)


def same_file(a: Any, b: Any) -> bool:
    """Whether two settings name one existing file or folder (paths written differently)."""
    try:
        return isinstance(a, str) and isinstance(b, str) and os.path.samefile(a, b)
    except OSError:
        return False


def stored_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A result folder's ``config.json``: None when it has none, {} when it cannot be read."""
    path = Path(folder) / "config.json"
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))  # an editor's byte-order mark too
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def claim_folder(out: str | os.PathLike | None, command: str) -> None:
    """Refuse, before any work, an ``--out`` that is a file or that holds what
    another command wrote (its ``config.json`` names another command, or it
    holds a network with no ``config.json``): writing there would replace
    that run's files. A folder of the same command is left to the command's
    own checks (finished, unfinished, ``--resume``)."""
    if out is None:
        return
    out = Path(out)
    main = launch_rank() == 0  # under torchrun only rank 0 writes, so only it locks and cleans
    refused = None
    try:
        _check_out(out, command)
        if main and _held is not None:
            lock_folder(out)
    except UserError as e:
        refused = e
    except OSError as e:  # a folder that cannot be made or locked (a missing mount, a full disk): for every rank
        refused = UserError(f"{e.filename or out}: {e.strerror or e}")
    refused = _ranks_agree(out, refused)
    if refused is not None:
        raise refused
    if main:
        clear_temporaries(out)


def clear_temporaries(out: Path, figures_only: bool = False) -> None:
    """Remove from ``out`` the temporary files of atomic writes that a process
    killed while writing left (not a file of the user's that happens to end in
    .tmp); ``figures_only``: of figures alone. A command calls it holding
    ``out``'s lock (:func:`lock_folder`), so no other command writes there;
    ``plot``, which takes no lock, may be drawing into a result folder, so a
    figure's temporary file younger than :data:`FRESH_FIGURE_S` is left (and
    ``plot`` clears only those older)."""
    now = time.time()
    for stale in out.glob(".*.tmp") if out.is_dir() else ():
        kind = _TEMPORARY.fullmatch(stale.name)
        if not kind or (figures_only and kind.group(1) not in _FIGURES):
            continue
        try:
            if kind.group(1) in _FIGURES and now - stale.stat().st_mtime < FRESH_FIGURE_S:
                continue
            stale.unlink()
        except OSError:  # gone meanwhile, or a read-only folder: left there, harmless
            pass


FRESH_FIGURE_S = 600  # a figure's temporary file younger than this may be a running plot's
_FIGURES = ("png", "pdf", "svg")


# The name atomic_save's temporary files have: "." + the file's name (a kind the package writes) + "." +
# mkstemp's 8 characters + ".tmp"; a user's ".notes.20240101.tmp" is none.
_TEMPORARY = re.compile(r"\..+\.(pt|json|jsonl|npz|png|pdf|svg)\.[a-z0-9_]{8}\.tmp")


def _check_out(out: Path, command: str) -> None:
    """:func:`claim_folder`'s checks of what ``out`` is and holds."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a link to {os.readlink(out)}, which does not exist; make that folder, or "
                        f"choose another --out")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {out} cannot be made: {above} is a file, not a folder")
    config = stored_config(out)
    if config is not None:
        owner = config.get("command")
        if not config:
            raise UserError(f"{out / 'config.json'}: unreadable (damaged, or not a JSON object), so whose results "
                            f"the folder holds is unknown; choose another --out")
        if owner != command:
            raise UserError(f"{out} holds the results of another command ({owner or 'unknown'}, see its "
                            f"config.json); choose another --out")
    elif (out / "model.pt").exists():
        raise UserError(f"{out} holds a network (model.pt) of another run; choose another --out")
    else:  # results copied without their config.json: another command's would be replaced (its summary.json)
        held = next(((name, owner) for name, owner in RESULT_OWNERS.items()
                     if owner != command and (out / name).exists()), None)
        if held is not None:
            raise UserError(f"{out} holds the results of another command ({held[0]}, {held[1]}'s); choose another "
                            f"--out")


# The result file each sweep command writes (a folder without config.json holding one is that command's).
RESULT_OWNERS = {"plane.npz": "plane", "curve.npz": "curve", "posterior-curve.npz": "curve", "rays.npz": "rays",
                 "swag.npz": "swag", "subspace.npz": "subspace", "variational.npz": "vi-eval",
                 "sharpness.npz": "sharpness", "simplex.npz": "simplex"}


# The files whose presence decides what a command does in its --out: start, resume or return what is finished.
DECIDING = ("config.json", "last.pt", "model.pt", "summary.json", "metrics.jsonl")


def _view(out: Path) -> list[str]:
    """What a process sees in ``out`` that decides what it does there: the files of :data:`DECIDING` and the
    result files and partial stores (``*.npz``) present; figures and other files do not count (a shared file
    system's caches may show one late)."""
    try:
        return sorted(p.name for p in out.iterdir() if p.name in DECIDING or p.name.endswith(".npz"))
    except OSError:  # not there (yet), or not a folder: said by the checks
        return []


def _ranks_agree(out: Path, refused: UserError | None) -> UserError | None:
    """Under torchrun (a process group joined), one refusal for every rank, so
    that all stop alike and it is said once: rank 0's; else another rank's
    own; else, where the ranks see different files in ``out`` (a folder on
    each node's own disk), a refusal naming the first that differs. Each
    rank decides from what it sees whether to resume: seeing different
    things they would wait in different collectives, without a word, until
    the process group's timeout. Without a group: ``refused`` as it is."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return refused
    views: list = [None] * dist.get_world_size()
    dist.all_gather_object(views, (str(refused) if refused is not None else None, _view(out)))
    first = next((i for i, (said, _) in enumerate(views) if said is not None), None)
    if first is not None:
        return UserError(views[first][0] if first == 0 else f"rank {first}: {views[first][0]}")
    other = next((i for i, (_, seen) in enumerate(views) if seen != views[0][1]), None)
    if other is not None:
        def some(names: list[str]) -> str:
            return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "nothing"

        return UserError(f"rank {other} sees {some(views[other][1])} in {out}, but rank 0 sees "
                         f"{some(views[0][1])}: under torchrun every process must see --out alike (a folder on a "
                         f"file system all nodes share)")
    return None


LOCK = ".landscape.lock"
_held: dict[str, tuple[int | None, Path, list[Path]]] | None = None  # in folder_locks(): folder -> (fd, path, made)


@contextmanager
def folder_locks():
    """Within this block every folder a command claims (:func:`claim_folder`)
    is locked to this process, and the locks are let go at its end: the lock
    file is removed, and so is every folder the lock made that is still
    empty (a command refused before writing leaves nothing). The command
    line runs every command inside one; a Python program may too (without
    one, two processes writing one folder is the program's affair)."""
    global _held
    if _held is not None:  # already inside one
        yield
        return
    _held = {}
    try:
        yield
    finally:
        held, _held = _held, None
        for fd, folder, made in held.values():
            if fd is not None:
                try:
                    (folder / LOCK).unlink(missing_ok=True)  # while still held: a taker checks it has the file's lock
                except OSError:
                    pass
                os.close(fd)  # closing the descriptor lets the lock go (and NFS drop the unlinked file)
            try:
                for path in made:  # the deepest first; rmdir removes only an empty folder
                    path.rmdir()
            except OSError:  # not empty: the command wrote there (or another took the folder since)
                pass


def writer_of(folder: Path) -> str | None:
    """The pid (as text; "" if unknown) of another process that holds
    ``folder``'s lock (:func:`lock_folder`) now, or None: it is being written."""
    import fcntl

    if _held is not None and str(Path(folder).resolve()) in _held:  # this process's own
        return None
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # a shared lock taken here goes with it
    return None


def _holder(fd: int) -> str:
    """The pid a lock file holds (as text; "" if none was written)."""
    return os.read(fd, 32).decode("ascii", "replace").strip()


def wrote_into(folder: Path) -> bool:
    """Whether a command wrote anything into ``folder``: a file there or below
    other than lock files (folders holding only those go as the command ends)."""
    return Path(folder).is_dir() and any(p.name != LOCK and not p.is_dir() for p in Path(folder).rglob("*"))


def _replace_stale_lock(lock: Path) -> bool:
    """Remove ``lock``, a lock file this process cannot open to write (another user's), when no process holds
    it: locked exclusively through a read-only descriptor, it is unlinked only while it is still the file at
    that path, so two processes replacing it at once cannot both end up with a lock of their own. False where
    a process holds it (or held it a moment ago: the caller looks again); raises where it cannot be checked."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone already: look again
    except OSError as e:  # not even readable (its owner's umask 077): whether it is held cannot be told
        raise UserError(f"{lock}: another user's lock file, which this process can neither open nor check "
                        f"({e.strerror}); remove it if no landscape process uses {lock.parent}",
                        rank_local=True) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                lock.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UserError(f"{lock}: a stale lock file this process cannot replace ({e.strerror}); remove it if "
                            f"no landscape process uses {lock.parent}", rank_local=True) from None
        return True
    finally:
        os.close(fd)


def lock_folder(out: Path) -> None:
    """Make ``out`` this process's to write: an exclusive lock on its
    ``.landscape.lock`` (``flock``), held to the end of :func:`folder_locks`,
    so that a second command started on the same folder (a rerun with
    --resume while the first still runs, two jobs given one --out) is
    refused in one line instead of both writing into it. Taken again by the
    same process, it is already held. A file system without locks (some
    network mounts) is written without one."""
    import fcntl

    if _held is None:
        return
    made = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    key = str(out.resolve())
    if key in _held:
        return
    tries = 0
    while True:
        try:
            fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM) and os.access(out, os.W_OK | os.X_OK):
                # a lock file another user left (killed), or one another user's process holds: a stale one is
                # replaced, a held one refused as in use
                if _replace_stale_lock(out / LOCK):
                    continue
                tries += 1
                if tries < 4:
                    time.sleep(0.05 * tries)
                    continue
                raise UserError(f"{out} is in use by another landscape process; wait for it to finish (then "
                                f"--resume, if it stopped), or choose another --out", rank_local=True) from None
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # a folder this process cannot write: nothing
                _held[key] = (None, out, made)  # to guard (a finished run, resumed, only reads it)
                return
            raise _naming(e, out / LOCK) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = _holder(fd)
            finally:
                os.close(fd)
            tries += 1
            if tries < 4:  # a reader's moment (writer_of's shared lock) passes: look again before refusing
                time.sleep(0.05 * tries)
                continue
            raise UserError(f"{out} is in use by another landscape process{f' (pid {owner})' if owner else ''}; "
                            f"wait for it to finish (then --resume, if it stopped), or choose another --out",
                            rank_local=True) from None
        except OSError:  # no locks here (ENOLCK, EOPNOTSUPP): as before locks existed
            os.close(fd)
            _held[key] = (None, out, made)
            return
        try:  # the file locked must still be the folder's: its holder removes it before letting go
            if os.stat(out / LOCK).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _held[key] = (fd, out, made)
    try:  # who holds it, for the refusal another process meets
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # an editor's byte-order mark too
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write arrays as one ``.npz`` (``np.load`` reads it as ``np.savez``'s),
    atomically, with no pickled objects; the same arrays give the same bytes
    (``np.savez`` stamps each member with the time of writing)."""
    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, value in arrays.items():
                member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                member.external_attr = 0o600 << 16
                with archive.open(member, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)

    return atomic_save(write, path)


def read_result(folder: str | os.PathLike, arrays_file: str,
                summary_file: str = "summary.json") -> tuple[dict[str, np.ndarray], Any]:
    """The arrays (``allow_pickle=False``) and summary of a result folder;
    refused when the summary names another result file than ``arrays_file``
    (one copied from another folder: the figures would draw without it)."""
    folder = Path(folder)
    try:
        with np.load(folder / arrays_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"{folder / arrays_file}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{folder / arrays_file}: not a readable result ({npz_reason(e)})") from None
    summary = read_json(folder / summary_file)
    if not isinstance(summary, dict):
        raise UserError(f"{folder / summary_file}: not a result summary (a JSON object was expected, found "
                        f"{type(summary).__name__}); rerun the command that made it")
    written_for = summary.get("result")  # None: a summary written before results named their file
    if written_for is not None and written_for != arrays_file:
        raise UserError(f"{folder / summary_file} summarises {written_for}, not the {arrays_file} beside it (copied "
                        f"from another result?); rerun the command that made them")
    return arrays, summary


def npz_reason(e: BaseException) -> str:
    """Why ``np.load(..., allow_pickle=False)`` failed, in words: anything
    that is not a zip archive or an .npy file reads to numpy as a pickle,
    which is refused, and its message would suggest loading it unsafely."""
    if isinstance(e, ValueError) and "pickle" in str(e):
        return "not an .npz archive"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON record as a line (a crash can lose at most this line)."""
    line = json.dumps(record, default=_json_default) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
    except OSError as e:  # a full disk: name the file
        raise _naming(e, Path(path)) from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file of records (JSON objects), skipping a torn last
    line left by a crash. Any other damage (a line that is not UTF-8 text or
    not a JSON object) is one :class:`UserError` line naming the file and the
    line: a resume rewrites the file from what it read, and must not drop
    records silently."""
    path = Path(path)
    try:
        lines = path.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines()  # an editor's byte-order mark
    except FileNotFoundError:
        return []
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == last:  # written halfway when the run stopped
                continue
            record = None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {i + 1} is not a record (a JSON object); the file is damaged: "
                            f"delete that line (its record is then missing), or the file, and rerun")
        records.append(record)
    return records


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


# ----------------------------------------------------------------- checkpoints
@brief_repr
@dataclass
class Checkpoint:
    """A checkpoint read from disk, whatever its format.

    ``model`` is ``{"name", "kwargs"}`` for landscape checkpoints and ``None``
    for foreign ones (the caller then names the architecture).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    model: dict | None = None
    kind: str = "model"
    meta: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def foreign(self) -> bool:
        return self.model is None


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor] | nn.Module,
    model: Mapping[str, Any],
    *,
    kind: str = "model",
    meta: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Save a landscape checkpoint atomically; tensors are moved to the CPU.

    ``model`` is ``{"name": str, "kwargs": dict}``, enough for
    :func:`landscape.models.create_model` to rebuild the network: the kwargs
    hold ``num_classes`` and ``input_shape`` (as
    :func:`~landscape.models.model_spec` writes them); without them the
    file could not be loaded, and nothing is written. Given the
    network itself for ``state_dict``, its state dict is saved with the record
    of the buffers that leaves out, as the network was built
    (``unsaved_buffers``: :func:`~landscape.models.remember_built`), which
    loading checks against the network it builds. ``extra`` entries (e.g. ``train_state``) are stored
    beside the standard keys and must themselves be ``weights_only``-loadable
    (tensors, numbers, strings, lists, dicts).
    """
    kwargs = model.get("kwargs", {}) if isinstance(model, Mapping) else None
    if not (isinstance(model, Mapping) and isinstance(model.get("name"), str) and isinstance(kwargs, Mapping)
            and {"num_classes", "input_shape"} <= set(kwargs)):
        raise UserError(f"{path}: not saved: model must be {{'name': str, 'kwargs': {{..., 'num_classes': N, "
                        f"'input_shape': [C, H, W]}}}} (landscape.models.model_spec(name, num_classes, input_shape) "
                        f"writes it), else the checkpoint could not be loaded")
    if isinstance(state_dict, nn.Module):
        from .models import UNSAVED_KEY, built_record  # local: models import nothing from here

        record = built_record(state_dict)
        if record is not None:  # {} too: every such buffer left out of the comparison (torch.empty's), none to build
            extra = {UNSAVED_KEY: record, **extra}
        state_dict = state_dict.state_dict()
    obj = {
        "format": FORMAT,
        "kind": kind,
        "model": {"name": str(model["name"]), "kwargs": _to_cpu(dict(model.get("kwargs", {})))},
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": _to_cpu(dict(meta or {})),
    }
    obj.update(_to_cpu(extra))
    _refuse_unloadable(obj, path)
    return atomic_save(lambda tmp: _torch_save(obj, tmp), path)


# What torch.load(weights_only=True) reads back, besides tensors and the containers below.
_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device, torch.Size,
          torch.layout)


def _refuse_unloadable(obj: Any, path: str | os.PathLike, where: str = "") -> None:
    """One line, before anything is written, naming the entry of a checkpoint about to be saved that
    ``weights_only`` loading would refuse (an object of another class: a file saved with it could never be
    opened again by anything here)."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _refuse_unloadable(k, path, where)
            _refuse_unloadable(v, path, f"{where}.{k}" if where else str(k))
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            _refuse_unloadable(v, path, f"{where}[{i}]")
        return
    raise UserError(f"{path}: not saved: its entry {where or 'itself'} is a {type(obj).__module__}."
                    f"{type(obj).__qualname__}, which a checkpoint loaded safely (weights_only) cannot hold; "
                    f"give numbers, strings, lists, dicts or tensors")


def _torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through a file object: its archive's folder is then always "archive", not the
    temporary file's random name; and every string interned (:func:`_interned`): so the same checkpoint
    gives the same bytes (and the same digest)."""
    with open(path, "wb") as f:
        torch.save(_interned(obj), f)


def _interned(obj: Any) -> Any:
    """``obj`` with every string in its dicts, lists and tuples (keys too) interned. Pickle writes a string
    met a second time as a reference only where it is the same object: a run's own names often are, the
    same names read back from its ``last.pt`` are not, so a resumed run's files differed from an
    uninterrupted one's by those bytes."""
    if type(obj) is str:  # a subclass (a str Enum) cannot be interned: left as it is
        return sys.intern(obj)
    if type(obj) in (dict, OrderedDict):
        return type(obj)((_interned(k), _interned(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


def _to_cpu(obj: Any) -> Any:
    """Tensors to the CPU; numpy scalars and arrays to Python values and tensors,
    which ``weights_only`` loading accepts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, os.PathLike):  # a path given as a pathlib.Path: its text
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`UserError` with one line for a missing file, a file that
    is not a torch checkpoint, one that would need arbitrary unpickling, or
    one with no recognisable state dict.
    """
    return _recognised(Path(path), read_torch_file(Path(path)))


def read_torch_file(path: Path) -> Any:
    """What ``torch.load(path, weights_only=True)`` gives, on the CPU; one
    line for a missing file, a folder, a damaged archive, a file torch did
    not write, or one that would need arbitrary unpickling."""
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    if path.is_dir():
        hint = path / "model.pt"
        more = f" (did you mean {hint}?)" if hint.exists() else ""
        raise UserError(f"{path}: is a folder, not a checkpoint file{more}")
    damaged = _failed_checksum(path)
    if damaged is not None:
        raise UserError(f"{path}: damaged: its record {damaged} no longer matches the checksum stored when it was "
                        f"written (a disk or copy error); use another copy, or rerun the command that wrote it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise UserError(
                f"{path}: refusing to load: it would unpickle {refused.group(1)}, and only tensors "
                f"and plain containers are allowed (weights_only=True)"
            ) from None
        raise UserError(f"{path}: not a readable torch checkpoint ({_core_message(str(e))})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable torch checkpoint ({_core_message(str(e)) or type(e).__name__})") from None
    except (IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        # what torch's legacy (non-zip) reader raises on text and other garbage
        raise UserError(f"{path}: not a readable torch checkpoint (not a file torch.save wrote)") from None
    return obj


def _recognised(path: Path, obj: Any) -> Checkpoint:
    """:func:`load_checkpoint` of what :func:`read_torch_file` read."""
    stamp = obj.get("format") if isinstance(obj, Mapping) else None
    if isinstance(stamp, str) and stamp.startswith("landscape/") and stamp != FORMAT:
        raise UserError(f"{path}: written by another version of landscape (format {stamp}; this one reads {FORMAT})")
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        sd = obj.get("state_dict")
        if not _is_state_dict(sd):
            raise UserError(f"{path}: landscape checkpoint without a valid 'state_dict'")
        _refuse_nan(path, sd)
        model = obj.get("model")
        if not (isinstance(model, Mapping) and isinstance(model.get("name"), str)
                and isinstance(model.get("kwargs"), Mapping)
                and {"num_classes", "input_shape"} <= set(model["kwargs"])):
            raise UserError(f"{path}: landscape checkpoint without a valid 'model' entry "
                            f"(a name, and kwargs with num_classes and input_shape)")
        extra = {k: v for k, v in obj.items() if k not in ("format", "kind", "model", "state_dict", "meta")}
        return Checkpoint(
            path=path,
            state_dict=strip_prefixes(sd),
            model={"name": model["name"], "kwargs": dict(model.get("kwargs") or {})},
            kind=str(obj.get("kind", "model")),
            meta=dict(obj.get("meta") or {}),
            extra=extra,
        )
    if isinstance(obj, Mapping) and obj.get("swa_state_dict") is not None and obj.get("state_dict") is not None:
        raise UserError(
            f"{path}: a checkpoint of the SWA code (timgaripov/swa) holding two networks, the SGD iterate "
            f"('state_dict') and the SWA average ('swa_state_dict'); take the one you mean with 'landscape import "
            f"{path} --key swa_state_dict --model NAME --dataset DATASET --out swa.pt' (and the other data options it "
            f"was trained with)")
    sd = extract_state_dict(obj, path)
    _refuse_papers_format(path, sd)
    _refuse_nan(path, sd)
    return Checkpoint(path=path, state_dict=sd, model=None, kind="model", meta={"foreign": True})


def refuse_reference_vgg_bn(source: str | os.PathLike, model_name: str, state: Mapping[str, torch.Tensor],
                            imported: bool = False) -> None:
    """One line for dnn-mode-connectivity's VGG16BN / VGG19BN (a network's state dict, or a CurveNet's) read
    as ``vgg16bn`` / ``vgg19bn``: its forward zips a block's layers with one ReLU per conv and never runs the
    rest, whose batch norms keep the statistics they started with (what tells its files from a network that
    ran every layer, whatever wrapper saved it). ``imported``: a checkpoint an earlier build imported so."""
    from .models.vgg import reference_zip_state  # local: the models import nothing from here

    depth = {"vgg16bn": 16, "vgg19bn": 19}.get(model_name)
    if depth is None or reference_zip_state(depth, dict(state)) is not True:
        return
    why = (f"dnn-mode-connectivity's {model_name.upper()}, whose forward runs only part of each block (it zips "
           f"a block's convs and batch norms with one ReLU per conv: conv, ReLU, BN, ReLU, conv, ReLU; its issue "
           f"#2), and the batch norms it never runs still hold their first statistics")
    if imported:
        raise UserError(f"{source}: imported as {model_name} from {why}: results computed from it are of another "
                        f"network; import its source again with --model {model_name}_dnnmc")
    raise UserError(f"{source}: {why}; give --model {model_name}_dnnmc, the network it trained")


def unrun_layers(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike,
                 what: str = "") -> list[str]:
    """The keys of ``state`` (a reference file's tensors, by the model's names) that ``model``, a ``*_dnnmc``
    VGG, does not hold because dnn-mode-connectivity's forward never ran them, said in a note; refused where
    their batch norms hold trained statistics (``what`` a VGG-BN that ran every layer: "a curve of ")."""
    unrun = getattr(model, "unrun_reference_key", None)
    left = [k for k in state if unrun is not None and unrun(k)]
    if not left:
        return left
    from .models.vgg import reference_zip_state  # local: the models import nothing from here

    if reference_zip_state(model.depth, {k: state[k] for k in left}) is False:
        raise UserError(f"{source}: the layers dnn-mode-connectivity's VGG{model.depth}BN never runs hold trained "
                        f"batch-norm statistics here (e.g. {left[0]}): {what}a VGG-BN that ran every layer; give "
                        f"--model vgg{model.depth}bn")
    if launch_rank(strict=False) == 0:  # said once under torchrun
        print(f"note: {source}: {len(left)} tensors of layers dnn-mode-connectivity's forward never runs "
              f"(e.g. {left[0]}) are left out", file=sys.stderr)
    return left


def drop_unrun_layers(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """:func:`unrun_layers` left out of ``state_dict``, in place."""
    for k in unrun_layers(model, state_dict, source):
        del state_dict[k]


def is_papers_curve(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is a dnn-mode-connectivity ``CurveNet``'s."""
    return any(k.startswith("coeff_layer.") for k in state_dict) and any(k.startswith("net.") for k in state_dict)


def _refuse_papers_format(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """One line for the papers' checkpoints that hold more than a network's
    weights (they would otherwise fail later as a network that does not fit
    with a missing key): dnn-mode-connectivity's curves, swa_gaussian's SWAG."""
    if is_papers_curve(state_dict):
        raise UserError(f"{path}: a curve of dnn-mode-connectivity's code (its CurveNet: 'coeff_layer' and the "
                        f"bends' 'net.*_<i>' weights); convert it with 'landscape import {path} --model NAME "
                        f"--dataset DATASET --out curve.pt' (and the other data options it was trained with)")
    if any(k.endswith(("_sq_mean", "_cov_mat_sqrt")) for k in state_dict):
        raise UserError(f"{path}: SWAG moments of swa_gaussian's code ('*_mean', '*_sq_mean', '*_cov_mat_sqrt'); "
                        f"convert them with 'landscape import {path} --model NAME --dataset DATASET --out swag.pt' (and "
                        f"the other data options it was trained with)")


def _failed_checksum(path: Path) -> str | None:
    """The first member of a zip-format checkpoint whose bytes fail the CRC-32
    stored beside them, or None. torch.load reads past a changed bit without
    a word (its reader skips the check), so the weights would silently be
    others. Members written with the checksum turned off (a CRC of 0:
    ``torch.serialization.set_crc32_options(False)``) are not checked; a
    file that is not a readable zip archive is left to torch.load to report."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue
                try:
                    with z.open(info) as f:
                        while f.read(1 << 24):
                            pass
                except zipfile.BadZipFile as e:  # the name without the archive's own folder
                    return info.filename.split("/", 1)[-1] if "CRC" in str(e) else None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError):
        pass
    return None


def _refuse_nan(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """One line for a checkpoint holding NaN weights or statistics (a run that
    diverged): evaluated beside good points it would turn theirs NaN too
    (points are formed as coefficients x anchors, and 0 x NaN is NaN).
    Infinities are refused where the weights are used as points
    (:func:`landscape.evaluate.evaluate_points`): a foreign model may keep
    -inf in a mask buffer."""
    for key, value in state_dict.items():
        if value.is_floating_point() or value.is_complex():
            bad = int(torch.isnan(value).sum())
            if bad:
                raise UserError(f"{path}: {bad} NaN value{'s' if bad > 1 else ''} in '{key}' "
                                f"(the run that wrote it diverged?); refusing to use it")


def _core_message(msg: str) -> str:
    """The informative line of a (verbose) torch.load error."""
    lines = [l.strip() for l in msg.splitlines() if l.strip()]
    line = lines[0] if lines else "unreadable"
    for i, candidate in enumerate(lines):
        if candidate.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            line = lines[i + 1]
            break
    line = line.split(". ")[0].rstrip(".")  # the first sentence: torch appends advice after it
    return line if len(line) <= 200 else line[:197] + "..."


def require_network(ckpt: Checkpoint) -> Checkpoint:
    """Refuse a checkpoint that holds more than one network (a curve, a simplex)
    where a single network is expected; returns ``ckpt``."""
    if ckpt.kind in ("curve", "simplex"):
        raise UserError(f"{ckpt.path}: a {ckpt.kind} checkpoint, where one network is expected "
                        f"(give a checkpoint written by train, swa, fge or snapshots)")
    return ckpt


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any, source: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model's state dict in a foreign checkpoint object.

    Accepts a bare state dict or a dict holding one under ``state_dict``,
    ``model_state``, ``model_state_dict`` or ``model``; strips wrapper
    prefixes.
    """
    if _is_state_dict(obj):
        return strip_prefixes(obj)
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return strip_prefixes(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise UserError(
            f"{source}: no model weights found: expected a state dict or one of the keys "
            f"{', '.join(_STATE_KEYS)}; found keys {keys}"
        )
    raise UserError(f"{source}: no model weights found: the file holds a {type(obj).__name__}, not a dict")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str] = _PREFIXES) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` wrapper prefixes, repeatedly, from every key."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key = key[len(p):]
                    changed = True
        out[key] = value
    return out


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint", model_name: str = "the model") -> None:
    """Raise one clear :class:`UserError` line if ``state_dict`` does not fit ``model``.

    Names the first key whose shape differs (with both shapes), else the first
    key missing from the checkpoint, else the first unexpected one. Keys that
    all carry one more leading name than the model's (a Lightning module's
    ``model.``) lose it first, in ``state_dict`` itself, with a note.
    """
    expected = model.state_dict()
    _strip_wrapper_name(state_dict, expected, source, getattr(model, "unrun_reference_key", None))
    drop_unrun_layers(model, state_dict, source)
    for key, want in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(want.shape):
            raise UserError(
                f"{source} does not fit {model_name}: key '{key}' has shape "
                f"{tuple(state_dict[key].shape)} in the checkpoint but {tuple(want.shape)} in the model"
            )
    for key in expected:
        # num_batches_tracked is absent from state dicts saved before PyTorch 0.4.1; torch loads them
        if key not in state_dict and not key.endswith("num_batches_tracked"):
            raise UserError(f"{source} does not fit {model_name}: key '{key}' is missing from the checkpoint")
    for key in state_dict:
        if key not in expected:
            raise UserError(f"{source} does not fit {model_name}: unexpected key '{key}' in the checkpoint")


def load_model(
    path_or_ckpt: str | os.PathLike | Checkpoint,
    model: str | nn.Module | None = None,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    template: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """Rebuild the network a checkpoint holds and load its weights.

    A landscape checkpoint rebuilds itself. A foreign one needs ``model``: an
    ``nn.Module`` to load into, or a registry name plus ``num_classes`` and
    ``input_shape`` (and any model kwargs). A name the checkpoint itself
    records is the user's word that its factory is trusted: the network is
    built with the checkpoint's stored options (``model_kwargs`` override
    them), and ``num_classes`` / ``input_shape``, if given, must agree with
    them. The model is returned on the CPU in eval mode; torch's global random
    state is as it was. A curve or simplex checkpoint holds several networks:
    refused (it gave its first anchor), unless ``template`` (the network its
    points are evaluated in, with that anchor's weights and buffers).
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, Checkpoint) else load_checkpoint(path_or_ckpt)
    if not template and ckpt.kind in ("curve", "simplex"):
        where = ("landscape.curves.load_curve(path): its .curve.points(t) gives the weights at t" if ckpt.kind ==
                 "curve" else "landscape.curves.spro.load_simplex(path)")
        raise UserError(f"{ckpt.path}: a {ckpt.kind} checkpoint, which holds several networks, not one; load it "
                        f"with {where}")
    # The weights about to be loaded replace the new network's first ones: building it must not move
    # the caller's random stream (a notebook's next draw is the same with or without this call).
    with torch.random.fork_rng(devices=[]):
        net, name = _build_for(ckpt, model, num_classes, input_shape, model_kwargs)
    meta = ckpt.meta or {}
    if meta.get("foreign") or "imported_from" in meta:  # a network trained here ran every layer
        refuse_reference_vgg_bn(ckpt.path, name, ckpt.state_dict, imported="imported_from" in meta)
    check_state_dict(net, ckpt.state_dict, str(ckpt.path), f"model '{name}'")
    from .models import check_unsaved  # local: models import nothing from here

    if not isinstance(model, nn.Module):  # a network built here: its record (or one more build) tells
        check_unsaved(net, [ckpt], name=name,
                      rebuild=lambda: _build_for(ckpt, model, num_classes, input_shape, dict(model_kwargs))[0])
    # Every key was checked above; only num_batches_tracked may be missing (older PyTorch), and keeps its value.
    net.load_state_dict(ckpt.state_dict, strict=False)
    return net.eval()


def _build_for(ckpt: Checkpoint, model: str | nn.Module | None, num_classes: int | None,
               input_shape: tuple[int, ...] | None, model_kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    """The network ``load_model`` loads ``ckpt`` into, and the name its messages give it."""
    from .models import check_spec_fits, create_model, from_spec, materialize  # local: models import nothing from here

    if isinstance(model, nn.Module):
        inner = getattr(model, "_orig_mod", None)  # a torch.compile'd network: the module inside, by its own names
        net = inner if isinstance(inner, nn.Module) else model
        name = type(net).__name__
        shape = input_shape if input_shape is not None else (ckpt.model or {}).get("kwargs", {}).get("input_shape")
        materialize(net, None if shape is None else tuple(shape), f"the network given for {ckpt.path}")
    elif model is not None and ckpt.model is not None and ckpt.model["name"] == model:
        spec = {"name": model, "kwargs": {**ckpt.model["kwargs"], **model_kwargs}}
        if num_classes is not None and input_shape is not None:
            check_spec_fits(spec, num_classes, tuple(input_shape), ckpt.path)
        net, name = from_spec(spec, trusted=True, source=ckpt.path), model
    elif model is not None:
        if num_classes is None or input_shape is None:
            if ckpt.model is None:
                raise UserError(f"{ckpt.path}: a foreign checkpoint needs the dataset (class count and input shape) to build '{model}'")
            kwargs = dict(ckpt.model["kwargs"])
            kwargs.update(model_kwargs)
            num_classes = kwargs.pop("num_classes")
            input_shape = tuple(kwargs.pop("input_shape"))
            model_kwargs = kwargs
        net, name = create_model(model, num_classes=num_classes, input_shape=tuple(input_shape), **model_kwargs), model
    elif ckpt.model is not None:
        net, name = from_spec(ckpt.model, source=ckpt.path), ckpt.model["name"]
    else:
        raise UserError(f"{ckpt.path}: foreign checkpoint without architecture; name it with --model")
    return net, name


def _strip_wrapper_name(state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str,
                        unrun: Callable[[str], bool] | None = None) -> None:
    """Where every key of ``state_dict`` is a model key behind one shared
    leading name (``model.conv1.weight`` for ``conv1.weight``: a Lightning
    module's attribute, a wrapper of the user's own), drop that name in place
    and say so; a dict that fits, or that dropping it would not fit, is left.
    ``unrun``: keys the model does not hold that may be held all the same (a
    ``*_dnnmc`` VGG's :meth:`unrun_reference_key`, left out after)."""
    if not state_dict or set(state_dict) <= set(expected):
        return
    head, stripped = unwrapped(state_dict)
    if head is None:
        return
    needed = {k for k in expected if not k.endswith("num_batches_tracked")}
    held = {k for k in stripped if unrun is None or not unrun(k)}  # a *_dnnmc VGG: less the layers never run
    if needed <= held <= set(expected):
        state_dict.clear()
        state_dict.update(stripped)
        print(f"note: {source}: every key began with '{head}.' (a Lightning module's or a wrapper's attribute); "
              f"read without it", file=sys.stderr)


def unwrapped(state_dict: Mapping[str, torch.Tensor]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The one leading name every key of ``state_dict`` shares (a wrapper's
    attribute: Lightning's ``model.``) and the dict without it; ``(None,
    {})`` when the keys share none."""
    heads = {k.split(".", 1)[0] for k in state_dict}
    if len(heads) != 1 or not all("." in k for k in state_dict):
        return None, {}
    head = heads.pop()
    return head, {k[len(head) + 1:]: v for k, v in state_dict.items()}
