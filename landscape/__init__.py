"""landscape: mode connectivity and loss-landscape analysis for PyTorch models.

The Python API mirrors the CLI::

    import landscape
    run = landscape.train(out="runs/a", dataset="digits", model="convnet", epochs=20, seed=1)
    net = landscape.load_model("runs/a/model.pt")
"""

__version__ = "0.1.0"

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

from .errors import Terminated as _Terminated, UserError, stop_words as _stop_words  # noqa: E402


def _started_as_command() -> bool:
    """Whether this process is the ``landscape`` command (its script, or
    ``python -m landscape`` as torchrun starts it), not a Python program
    importing the package."""
    argv = list(getattr(_sys, "orig_argv", ()))
    by_module = any(a == "-m" and b == "landscape" for a, b in zip(argv, argv[1:]))
    return by_module or _os.path.basename(_sys.argv[0] if _sys.argv else "") in ("landscape", "landscape.exe")


# The command's first seconds go to importing torch: a Ctrl-C or SIGTERM then gets the command's one line
# (nothing was written yet), not a traceback or a silent exit. A Python program keeps Python's own handling.
_command = _started_as_command()
_signalled: list[KeyboardInterrupt] = []  # a stop met inside a C extension's import reads as an ImportError


def _stop(signum: int, frame: object) -> None:
    _signalled.append(KeyboardInterrupt() if signum == _signal.SIGINT else _Terminated())
    raise _signalled[-1]


if _command:
    import signal as _signal

    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not where SIGINT is ignored (nohup, &)
        _signal.signal(_signal.SIGINT, _stop)
    _signal.signal(_signal.SIGTERM, _stop)
try:
    from .checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint  # noqa: E402
    from .data import DATASETS, Dataset, load_dataset  # noqa: E402
    from .device import resolve_device, seed_everything  # noqa: E402
    from .evaluate import evaluate_model  # noqa: E402
    from .models import create_model, list_models, register_model  # noqa: E402
    from .train import TrainConfig, TrainResult, train  # noqa: E402

    if _command:
        from . import cli as _cli  # noqa: E402,F401  (the command's own module, inside this guard too)
except (KeyboardInterrupt, ImportError) as _error:
    if not _command or not (isinstance(_error, KeyboardInterrupt) or _signalled):
        raise
    _word, _status = _stop_words(_signalled[-1] if _signalled else _error)
    print(f"landscape: {_word} while starting; nothing was written", file=_sys.stderr)
    raise SystemExit(_status) from None
finally:
    if _command and _signal.getsignal(_signal.SIGINT) is _stop:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)

__all__ = [
    "__version__",
    "Checkpoint",
    "DATASETS",
    "Dataset",
    "TrainConfig",
    "TrainResult",
    "UserError",
    "create_model",
    "evaluate_model",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "register_model",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "train",
]
