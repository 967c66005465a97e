"""Progress of long work, the same for every command: a bar on a terminal, a
line now and then where stderr is a log file or a pipe (a batch job,
``nohup``, ``tee``), or nothing.

Every function that takes ``progress`` reads it alike (:func:`progress_mode`):
``True`` a bar, ``False`` nothing, ``"log"`` lines, ``None`` a bar when stderr
is a terminal and nothing otherwise (the default of ``train`` and the other
training functions; the evaluation functions default to ``False``). The CLI passes
``"log"`` when stderr is no terminal, so a job's log shows how far it got and
about how long is left; ``--quiet`` passes ``False``.
"""
from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["progress_mode", "clock", "fixed", "LogLines", "Progress"]


def progress_mode(progress: Any) -> str:
    """``"bar"``, ``"log"`` or ``"off"`` for a ``progress`` argument."""
    if isinstance(progress, str):
        if progress != "log":
            raise ValueError(f"progress must be True, False, None or 'log', got {progress!r}")
        return "log"
    if progress is None:
        return "bar" if sys.stderr.isatty() else "off"
    return "bar" if progress else "off"


def clock(seconds: float) -> str:
    """A duration as people read it: '42 s', '2 min 05 s', '3 h 07 min'."""
    seconds = int(round(seconds))
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def fixed(value: float, decimals: int = 4) -> str:
    """``value`` with ``decimals`` decimals, or in scientific notation once it
    is 1e6 or more in size: a diverging run's loss of 1.2e+29 stays readable."""
    return f"{value:.{decimals}f}" if not abs(value) >= 1e6 else f"{value:.{min(decimals, 3)}e}"


class LogLines:
    """Lines such as 'points 16 of 25 (64 %) after 2 min 10 s; about 1 min 13 s
    left', the rate from the units this run did (``initial`` were done by an
    earlier run, kept on disk). A line at most every ``every`` seconds, and
    always the last one."""

    def __init__(self, what: str, total: int, initial: int = 0, every: float = 0.0):
        self.what, self.total, self.initial, self.every = what, total, initial, every
        self.began = time.perf_counter()
        self.said = -float("inf")

    def line(self, done: int, note: str = "") -> str:
        elapsed = time.perf_counter() - self.began
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        left = "" if rate <= 0 or done >= self.total else "; under 1 s left" if (self.total - done) / rate < 0.5 \
            else f"; about {clock((self.total - done) / rate)} left"
        pct = min(round(100 * done / self.total), 99 if done < self.total else 100) if self.total else 100
        this = " (this run)" if self.initial else ""  # a resumed run's clock starts again
        return f"{self.what} {done} of {self.total} ({pct} %) after {clock(elapsed)}{this}{left}" + \
            (f"; {note}" if note else "")

    def at(self, done: int, note: str = "") -> None:
        now = time.perf_counter()
        if done >= self.total or now - self.said >= self.every:
            self.said = now
            print(self.line(done, note), file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar, :class:`LogLines` or nothing, by :func:`progress_mode`,
    with tqdm's ``update``, ``set_postfix`` and ``close``. ``show=False``
    (another rank than 0) shows nothing whatever ``progress`` says; ``leave``
    keeps a bar's last state on the terminal (its count and time)."""

    def __init__(self, total: int, initial: int = 0, *, desc: str, unit: str, progress: Any,
                 every: float = 0.0, show: bool = True, leave: bool = False):
        mode = progress_mode(progress) if show else "off"
        self.done = initial
        self.bar = None
        self.log = LogLines(desc, total, initial, every) if mode == "log" else None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.log is not None:
            self.log.at(self.done, note)

    def set_postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
