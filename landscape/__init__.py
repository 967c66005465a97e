"""landscape: mode connectivity and loss-landscape analysis for PyTorch models.

The Python API mirrors the CLI::

    import landscape
    run = landscape.train(out="runs/a", dataset="digits", model="convnet", epochs=20, seed=1)
    net = landscape.load_model("runs/a/model.pt")
"""

__version__ = "0.1.0"

from ._startup import guarded_start as _guarded_start  # noqa: E402
from .errors import UserError  # noqa: E402

with _guarded_start():  # the command's first seconds, importing torch: a Ctrl-C there is its one line
    from .checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint  # noqa: E402
    from .data import DATASETS, Dataset, load_dataset  # noqa: E402
    from .device import resolve_device, seed_everything  # noqa: E402
    from .evaluate import evaluate_model  # noqa: E402
    from .models import create_model, list_models, register_model  # noqa: E402
    from .train import TrainConfig, TrainResult, train  # noqa: E402

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
    "import_checkpoint",
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


def __getattr__(name: str):
    """``import_checkpoint`` on first use: its module reads the papers' files and is not needed to start."""
    if name == "import_checkpoint":
        from .importing import import_checkpoint

        return import_checkpoint
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with those :func:`__getattr__` gives on first use (tab completion lists them)."""
    return sorted(set(globals()) | set(__all__))
