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
    importing the package (whose own arguments may well hold ``-m landscape``)."""
    argv, args = list(getattr(_sys, "orig_argv", ())), list(_sys.argv)
    at = len(argv) - len(args)  # the interpreter's options end here: ... -m landscape | the command's arguments
    by_module = at >= 2 and (argv[at - 1:at + 1] == ["-m", "landscape"] or argv[at - 1] == "-mlandscape")
    return by_module or _os.path.basename(args[0] if args else "") in ("landscape", "landscape.exe")


# The command's first seconds go to importing torch: a Ctrl-C or SIGTERM then gets the command's one line
# (nothing was written yet), not a traceback or a silent exit. A Python program keeps Python's own handling.
_command = _started_as_command()
_signalled: list[KeyboardInterrupt] = []  # a stop met inside a C extension's import reads as an ImportError
_replaced: dict = {}  # signal: the handler it had, put back once the imports are done


def _stop(signum: int, frame: object) -> None:
    _signalled.append(KeyboardInterrupt() if signum == _signal.SIGINT else _Terminated())
    raise _signalled[-1]


try:
    if _command:
        import signal as _signal
        import threading as _threading

        if _threading.current_thread() is _threading.main_thread():  # where handlers can be set
            for _number, _usual in ((_signal.SIGINT, _signal.default_int_handler), (_signal.SIGTERM, _signal.SIG_DFL)):
                if _signal.getsignal(_number) is _usual:  # not where it is ignored (nohup, &, a parent's choice)
                    _replaced[_number] = _usual
                    _signal.signal(_number, _stop)
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
    for _number in _replaced:  # a second stop while this is said changes nothing
        _signal.signal(_number, _signal.SIG_IGN)
    _word, _status = _stop_words(_signalled[-1] if _signalled else _error)
    print(f"landscape: {_word} while starting; nothing was written", file=_sys.stderr)
    raise SystemExit(_status) from None
finally:
    for _number, _usual in _replaced.items():  # cli.main sets its own for the command's run
        if _signal.getsignal(_number) is _stop:
            _signal.signal(_number, _usual)

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
