"""The command's first moments: the ``landscape`` command spends its first
second or two importing torch, before :func:`landscape.cli.main` can set its
handlers. :func:`guarded_start` wraps the package's imports so that a Ctrl-C
or SIGTERM there gets the command's one line (nothing was written yet), not a
traceback or a silent exit. A Python program importing the package keeps
Python's own handling."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager

from .errors import Terminated, stop_words


def started_as_command() -> bool:
    """Whether this process is the ``landscape`` command (its script, or
    ``python -m landscape`` as torchrun starts it), not a Python program
    importing the package (whose own arguments may well hold ``-m landscape``)."""
    argv, args = list(getattr(sys, "orig_argv", ())), list(sys.argv)
    at = len(argv) - len(args)  # the interpreter's options end here: ... -m landscape | the command's arguments
    by_module = at >= 2 and (argv[at - 1:at + 1] == ["-m", "landscape"] or argv[at - 1] == "-mlandscape")
    return by_module or os.path.basename(args[0] if args else "") in ("landscape", "landscape.exe")


def stopped_while_starting(stop: BaseException) -> int:
    """Say that the command stopped before it began; its exit status."""
    word, status = stop_words(stop)
    print(f"landscape: {word} while starting; nothing was written", file=sys.stderr)
    return status


@contextmanager
def guarded_start():
    """Around the package's imports (and, for the command, ``landscape.cli``'s):
    a stop there ends the command with :func:`stopped_while_starting`. A stop
    met inside a C extension's import reads as an ImportError, so the
    handlers note each stop. The handlers found are put back at the end
    (``cli.main`` sets its own for the command's run)."""
    if not started_as_command():
        yield
        return
    signalled: list[KeyboardInterrupt] = []
    replaced = {}  # signal: the handler it had

    def stop(signum: int, frame: object) -> None:
        signalled.append(KeyboardInterrupt() if signum == signal.SIGINT else Terminated())
        raise signalled[-1]

    try:
        if threading.current_thread() is threading.main_thread():  # where handlers can be set
            for number, usual in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(number) is usual:  # not where it is ignored (nohup, &, a parent's choice)
                    replaced[number] = usual
                    signal.signal(number, stop)
        yield
        importlib.import_module("landscape.cli")  # the command's own module, inside the guard too
    except (KeyboardInterrupt, ImportError) as error:
        if not (isinstance(error, KeyboardInterrupt) or signalled):
            raise
        for number in replaced:  # a second stop while this is said changes nothing
            signal.signal(number, signal.SIG_IGN)
        raise SystemExit(stopped_while_starting(signalled[-1] if signalled else error)) from None
    finally:
        for number, usual in replaced.items():
            if signal.getsignal(number) is stop:
                signal.signal(number, usual)
