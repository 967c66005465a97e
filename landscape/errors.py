"""The one exception type for bad user input.

Library code raises :class:`UserError` (a ``ValueError``) when a file, name,
shape or value given by the user is wrong. The CLI prints its message on one
line and exits with status 2; Python callers can catch it like any
``ValueError``.
"""

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable

__all__ = ["note_once", "UserError", "Terminated", "on_terminate", "stop_words", "shell_word", "check_keywords", "check_nonnegative",
           "check_seed", "first_line", "is_whole", "is_out_of_memory"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``, torchrun stopping the
    others after one rank failed), met like Ctrl-C: files already written are
    kept (every write is atomic), one line says so, and the exit status is
    the shell's for the signal, 143."""


def on_terminate(signum: int, frame: object) -> None:
    """The command's SIGTERM handler: raise :class:`Terminated`."""
    raise Terminated


def shell_word(path: object) -> str:
    """``path`` as a command line suggested to the user must spell it: quoted
    where the shell would split or expand it, and with ``./`` before a name
    that would read as an option."""
    import shlex

    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def stop_words(stop: KeyboardInterrupt) -> tuple[str, int]:
    """What a stop is called and the exit status it gives: ("terminated", 143)
    for SIGTERM, ("interrupted", 130) for Ctrl-C."""
    return ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)


_SPELLED_OTHERWISE = {"quiet": "progress=False is --quiet", "out_dir": "the folder is out=",
                      "face_grid": "the simplex functions' --face-grid is face_resolution=",
                      "lr_max": "FGE's --lr-max is lr=; SWA's cyclic high end is swa_lr_max=",
                      "precision": "training's --precision bf16 is amp=True"}


def check_keywords(known: type | Iterable[str], options: dict, caller: str) -> None:
    """One line for a keyword a run's settings (a config dataclass, or the names ``known``) do not have, with the
    nearest name: ``train(quiet=True)`` used to end in a TypeError from the dataclass's __init__."""
    known = {f.name for f in dataclasses.fields(known)} if isinstance(known, type) else set(known)
    unknown = sorted(set(options) - known)
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = _SPELLED_OTHERWISE.get(name) or (f"did you mean {close[0]}=?" if close else "")
    raise UserError(f"{caller}() takes no keyword {name!r}{f' ({hint})' if hint else ''}")


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number (an int, or a finite float with no
    fraction; not a bool, a string or NaN): what a count option must be."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or bool(math.isfinite(value) and int(value) == value)


def check_seed(seed: object, flag: str = "--seed") -> int:
    """``seed`` as an int (1.0 from Python too: generators take ints only), or one line where a generator cannot
    take it: a whole number from 0 to 2^63 - 1 (torch wraps a negative one onto another's draws and fails in a
    traceback beyond 2^64)."""
    if not is_whole(seed) or not 0 <= seed < 2 ** 63:
        raise UserError(f"{flag} must be a whole number from 0 to 2^63 - 1, got {seed}")
    return int(seed)


def check_number(flag: str, value: object) -> None:
    """One line for an option given (from Python) as something other than a number: a string, None, a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{flag} must be a number, got {value!r}")


def check_whole(flag: str, value: object) -> int:
    """``value`` as an int, or one line where it is no whole number (4.5, "2", None, True, NaN): what a count
    option given from Python must be (the command line parses them as ints)."""
    if not is_whole(value):
        raise UserError(f"{flag} must be a whole number, got {value!r}")
    return int(value)


def check_nonnegative(flag: str, value: float) -> None:
    """One line for an option that must be a finite number >= 0 (``--wd``, ``--lam``, ...); NaN fails too."""
    check_number(flag, value)
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{flag} must be a finite number >= 0, got {value}")


class UserError(ValueError):
    """Bad input: a missing or corrupt file, an unknown name, a mismatch.

    Under torchrun bad input is normally the same on every rank, and the CLI
    prints it once (rank 0). ``rank_local=True`` marks an error that only some
    ranks meet (a process with no GPU of its own): each such rank prints it,
    with its rank, and exits without waiting for the others.
    """

    def __init__(self, message: str, *, rank_local: bool = False) -> None:
        super().__init__(message)
        self.rank_local = rank_local


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (its type's name if it has none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says that memory ran out: torch's ``OutOfMemoryError``
    (CUDA's caching allocator), the CPU allocator's failure, numpy's
    ``MemoryError``, and the CUDA libraries' own allocation failures (cuBLAS's
    and cuDNN's ``..._ALLOC_FAILED``, a CUDA call's "out of memory"), which
    torch raises as plain ``RuntimeError``."""
    import torch

    if isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "ALLOC_FAILED" in text
                                            or "CUDA error: out of memory" in text)


def launch_number(name: str, default: int, *, strict: bool = True) -> int:
    """A whole number torchrun (or srun) sets in the environment: ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; ``default`` where it
    is unset. One line (:class:`UserError`) where it is not a whole number >= 0
    (``export RANK=$UNSET``): torch's ``int()`` gave a traceback; ``strict=False``
    (where a message is being printed) takes ``default`` instead."""
    import os

    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
        if value >= 0:
            return value
    except ValueError:
        pass
    if not strict:
        return default
    raise UserError(f"{name}={raw!r} is set in the environment, which is not a whole number >= 0 (torchrun sets "
                    f"it for each process it starts): unset it, or start the command with torchrun")


def world_size(*, strict: bool = True) -> int:
    """The number of processes launched together: ``WORLD_SIZE``, 1 where it is unset (or 0)."""
    return max(1, launch_number("WORLD_SIZE", 1, strict=strict))


def launch_rank(*, strict: bool = True) -> int:
    """This process's rank as launched, before any process group exists:
    ``RANK`` where ``WORLD_SIZE`` > 1, else 0. A ``RANK`` a job script left
    set without ``WORLD_SIZE`` (``export RANK=$SLURM_PROCID``) is no torchrun
    worker's: the process is the only one, and rank 0 (it took the process
    for rank 1, and printed no error, note or help, and locked no folder)."""
    return launch_number("RANK", 0, strict=strict) if world_size(strict=strict) > 1 else 0


_NOTES_SAID: set[tuple[str, str]] = set()


def note_once(key: tuple[str, str], text: str) -> None:
    """``note: text`` on stderr, once a process for ``key`` (a kind of note and
    what it is about), and under torchrun on rank 0 alone (:func:`launch_rank`:
    torchrun sets ``RANK`` before any process group exists; and in a process
    group of the caller's own, started without it, its rank 0)."""
    import sys

    import torch.distributed as dist

    if key in _NOTES_SAID or launch_rank(strict=False) != 0 or (
            dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return
    _NOTES_SAID.add(key)
    print(f"note: {text}", file=sys.stderr)
