"""Training of endpoint networks: SGD with momentum and weight decay.

The run folder (``out``) holds::

    config.json         the resolved settings (what to pass to repeat the run)
    metrics.jsonl       one JSON record per epoch
    last.pt             the state after the latest epoch (weights + optimiser), for --resume
    checkpoint-NNN.pt   every ``save_every`` epochs (when set; ``train`` also keeps
                        its initial weights as checkpoint-000.pt)
    model.pt            the final network
    summary.json        final train loss / error and test NLL / error

Resuming is exact on the CPU: every epoch re-seeds the global RNG (dropout)
and the batch-order / augmentation generator from ``(seed, epoch)``, so an
interrupted run continued from ``last.pt`` reaches the same weights as an
uninterrupted one.

Under ``torchrun --nproc-per-node N`` (WORLD_SIZE > 1) training is data
parallel: every rank draws the same batch order and augmentation, takes its
slice of each batch of ``batch_size`` (which stays the global batch size,
``batch_size / N`` samples per rank), and the task's loss runs inside
``torch.nn.parallel.DistributedDataParallel``, which averages the gradients
(gloo on the CPU, NCCL on CUDA; each rank on the GPU of its LOCAL_RANK). Batch
norm uses DDP's default buffer broadcast, not SyncBatchNorm: each rank
normalises with the statistics of its own slice, and rank 0's running
statistics are copied to every rank before each step and after the last
(so every rank ends with, and rank 0 saves, rank 0's). The global RNG
(dropout) is seeded per rank. Only rank 0 writes files and shows progress;
every rank reads the same state on ``--resume`` and returns the same
network, summary and per-epoch records.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .brief import brief_repr
from . import __version__
from .checkpoint import (
    append_jsonl,
    check_state_dict,
    claim_folder,
    load_checkpoint,
    read_jsonl,
    remove_file,
    same_file,
    save_checkpoint,
    write_json,
    atomic_write_text,
)
from .data import Dataset, as_dataset, check_normalization, data_differs, data_location, described, load_dataset, refuse_data_path, refuse_data_twice, why_data_differs
from .device import seed_everything
from .errors import UserError, check_keywords, check_nonnegative, check_number, check_seed, check_whole
from .evaluate import check_network, evaluate_model, keep_freed_memory, l2_penalty, train_logits, weights_finite
from .layout import image_layout, to_channels_last
from .models import check_unsaved, create_model, model_spec, refuse_random_unsaved
from .progress import LogLines, Progress, fixed, progress_mode
from .sweep import barrier, is_main, process_device, rank_and_world
from .weights import refuse_for_gradients

__all__ = ["SCHEDULES", "TrainConfig", "TrainResult", "Task", "schedule_factor", "learning_rate", "load_data",
           "prepare_run", "run_training", "steps_per_epoch", "check_world", "train"]

SCHEDULES = ("paper", "cosine", "constant")
# Settings that may change between a run and its --resume without changing the result.
_RESUME_FREE = ("device", "save_every")
_INPUT_FILES = ("start", "end", "from_ckpt")  # the checkpoints a run starts from (input_digests)
# Settings naming a file or folder: the same one named another way (./a.pt, an absolute path) is the same setting.
_RESUME_PATHS = ("data_path", *_INPUT_FILES)



def schedule_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` = epoch / epochs in [0, 1].

    ``paper`` (Garipov et al. 2018; Izmailov et al. 2018): constant for the
    first half, then linear decay to 1% of the initial rate at 90%, then
    constant at 1%. ``cosine``: 0.5 (1 + cos(pi * progress)). ``constant``: 1.
    """
    if schedule == "paper":
        if progress <= 0.5:
            return 1.0
        if progress <= 0.9:
            return 1.0 - (progress - 0.5) / 0.4 * 0.99
        return 0.01
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


def learning_rate(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate for (0-based) ``epoch`` of ``epochs``, set at the epoch's start."""
    return base_lr * schedule_factor(schedule, epoch / epochs)


# SGD scales float32 weights by the rate: a larger one cannot even be applied.
_MAX_RATE = float(torch.finfo(torch.float32).max)


def check_rate(flag: str, value: float) -> None:
    """One line unless ``value`` is a rate SGD can apply: finite, positive, and one float32 holds."""
    check_number(flag, value)
    if not (math.isfinite(value) and 0 < value <= _MAX_RATE):
        raise UserError(f"{flag} must be a finite number > 0, got {value}"
                        + (f" (above {_MAX_RATE:.3g}, the float32 limit)" if math.isfinite(value) and value > 0 else ""))


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``config.json``)."""

    dataset: str = "digits"
    data_path: str | None = None
    val_size: int = 0
    data_seed: int = 0
    synthetic_shape: tuple[int, ...] = (3, 32, 32)
    synthetic_classes: int = 10
    synthetic_sizes: tuple[int, int] = (5000, 1000)
    data_normalization: str = "standard"
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 128
    schedule: str = "paper"
    seed: int = 0
    save_every: int = 0
    device: str = "auto"
    amp: bool = False

    def __post_init__(self) -> None:
        # Stored absolute, so that later commands run from another folder find the data.
        if self.data_path:
            self.data_path = str(Path(self.data_path).expanduser().absolute())
        for name in _INPUT_FILES:  # a pathlib.Path given from Python: a str, as typed (checkpoints store plain data)
            if isinstance(getattr(self, name, None), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.data_normalization = check_normalization(self.data_normalization)  # as recorded: "ResNet" is resnet

    @property
    def lr_flag(self) -> str:
        """The option that sets ``lr`` (FGE calls it --lr-max)."""
        return "--lr"

    def validate(self) -> None:
        # counts given from Python: whole numbers (4.0 taken as 4), else one line before any work
        self.epochs, self.batch_size, self.save_every = (
            check_whole(flag, value) for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                                                         ("--save-every", self.save_every)))
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UserError(f"--batch-size must be at least 2 (batch norm needs two samples), got {self.batch_size}")
        check_rate(self.lr_flag, self.lr)
        check_nonnegative("--wd", self.wd)
        check_number("--momentum", self.momentum)
        if not 0 <= self.momentum < 1:  # also refuses NaN; momentum 1 or more never forgets a step and diverges
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.save_every < 0:
            raise UserError(f"--save-every must be >= 0, got {self.save_every}")
        schedule_factor(self.schedule, 0.0)
        self.seed, self.data_seed = check_seed(self.seed), check_seed(self.data_seed, "--data-seed")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["synthetic_shape"] = list(self.synthetic_shape)
        d["synthetic_sizes"] = list(self.synthetic_sizes)
        return d


@brief_repr
@dataclass
class TrainResult:
    model: nn.Module
    summary: dict[str, Any]
    out: Path | None
    metrics: list[dict[str, Any]]


def load_data(cfg: TrainConfig, device: torch.device | str = "cpu") -> Dataset:
    """Load the dataset a config names, on ``device``."""
    return load_dataset(
        cfg.dataset,
        cfg.data_path,
        val_size=cfg.val_size,
        seed=cfg.data_seed,
        device=device,
        synthetic_shape=tuple(cfg.synthetic_shape),
        synthetic_classes=cfg.synthetic_classes,
        synthetic_sizes=tuple(cfg.synthetic_sizes),
        normalization=cfg.data_normalization,
    )


def _epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of an epoch's random numbers; ``stream`` (a :class:`Task`'s)
    gives another sequence for the same run seed (0: the runs' own)."""
    if stream:  # tagged 2: no other derived seed (a simplex vertex's start, tagged 1) meets these
        return derived_seed(seed, 2, epoch, stream)
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def derived_seed(*words: int) -> int:
    """A seed drawn from ``words`` (a run's seed, a tag naming what it seeds, indices) by numpy's
    SeedSequence: other words, another seed, in 0..2^63 - 2."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0]) % (2**63 - 1)


def _model_spec(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    return model_spec(cfg.model, data.num_classes, data.input_shape, **cfg.model_kwargs)


def input_digests(cfg: TrainConfig, keys: Sequence[str] = _INPUT_FILES) -> dict[str, str]:
    """A digest of each checkpoint a run starts from (``start``, ``end``,
    ``from_ckpt``, those of ``keys``), stored with its state: a resume that
    names the same file another way (from another folder, or after the runs
    were moved) is known by its contents."""
    digests = {}
    for key in keys:
        value = getattr(cfg, key, None)
        if isinstance(value, str) and os.path.isfile(value):
            digests[key] = file_digest(value)
    return digests


def input_summaries(cfg: TrainConfig, keys: Sequence[str] = _INPUT_FILES) -> dict[str, dict[str, Any]]:
    """The test error (its split and data record) that each run a run starts from reports
    in the summary.json beside its model.pt (those of ``keys`` that have one),
    stored with the run's state as :func:`input_digests` is: a later
    evaluation sets its own figures beside them after the runs were moved."""
    reported = {key: run_reported(getattr(cfg, key)) for key in keys if isinstance(getattr(cfg, key, None), str)}
    return {key: value for key, value in reported.items() if value is not None}


def run_reported(model: str | os.PathLike) -> dict[str, Any] | None:
    """What the run whose network is ``model`` (a ``model.pt``) reports in the summary.json beside it: its
    test error, the split it was measured on and the data's record; None where there is no such summary."""
    from .checkpoint import read_json

    summary = Path(model).parent / "summary.json"
    if Path(model).name != "model.pt" or not summary.is_file():
        return None
    try:
        stored = read_json(summary)
    except UserError:
        return None
    error = stored.get("test_error") if isinstance(stored, dict) else None
    if not isinstance(error, (int, float)) or isinstance(error, bool):
        return None
    return {"test_error": float(error), "eval_split": str(stored.get("eval_split", "test")),
            **({"dataset": stored["dataset"]} if isinstance(stored.get("dataset"), dict) else {})}


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's contents (hex): how a run knows the checkpoints it started from."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _check_resumable(out: Path, cfg: TrainConfig, stored: dict[str, Any],
                     digests: dict[str, str] | None = None, data_record: dict | None = None) -> None:
    """Refuse a resume whose settings differ from the stored ones. A path
    setting is the same when it names the same file, or one with the
    contents the run started from (its ``digests``, by :func:`input_digests`).
    Data read from another ``data_path`` passes here when the run recorded
    its files' fingerprint (``data_record``): the training loop compares the
    data it then reads with that record (moved or copied data continues)."""
    new = cfg.to_json()
    moved = [k for k in (digests or {}) if stored.get(k) != new.get(k) and not same_file(stored.get(k), new.get(k))]
    now = input_digests(cfg, moved)  # only the files named another way are read
    same_contents = {k for k in moved if now.get(k) == digests[k]}
    # A setting added after the run was started (absent from its config) had its default then.
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    for key, value in new.items():
        if key in _RESUME_FREE or key in getattr(cfg, "resume_free", ()):
            continue
        old = stored.get(key, defaults.get(key))
        if key == "data_path" and value is not None and isinstance(data_record, dict) and data_record.get("fingerprint"):
            continue
        if old != value and not (key in _RESUME_PATHS and (same_file(old, value) or key in same_contents)) and not (
                key == "data_path" and old is not None and value is not None
                and data_location(cfg.dataset, old) == data_location(cfg.dataset, value) is not None):
            said = (f"in {'bf16' if old else 'fp32'}, now in {'bf16' if value else 'fp32'} (--amp, or --precision "
                    f"bf16)" if key == "amp" else f"with {key}={old!r}, now {key}={value!r}")
            raise UserError(
                f"{out} was started {said}; "
                f"--resume needs the same settings (or choose another --out)"
            )


def train(
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    data: Dataset | None = None,
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    argv: Sequence[str] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train one endpoint network; write the run folder ``out`` (if given).

    ``train(out="runs/a", dataset="digits", model="convnet", epochs=20, seed=1)``
    or ``train(TrainConfig(...), "runs/a")``. With ``resume=True`` the run in
    ``out`` continues from its last completed epoch (a folder with nothing to
    resume starts fresh). ``data`` may pass an already loaded dataset.
    ``on_epoch_end(epoch, record)`` is called after each epoch's state is saved.
    Returns the trained model (eval mode), the summary, and per-epoch metrics.
    Under torchrun every rank calls this and trains its slice of each batch
    (see the module's docstring); the process group stays open for the caller.
    """
    check_keywords(TrainConfig, overrides, "train")
    refuse_data_twice(data, overrides)
    cfg = TrainConfig(**{**asdict(config), **overrides}) if config is not None else TrainConfig(**overrides)
    refuse_data_path(cfg.dataset, cfg.data_path)
    cfg.validate()
    device = process_device(cfg.device)
    out = Path(out) if out is not None else None
    start_epoch, state, metrics = prepare_run(out, cfg, resume, "train")
    if start_epoch == -1:  # finished before: report and return
        return _finished_result(out, cfg.model)
    data = load_data(cfg, device) if data is None else as_dataset(data).to(device)

    seed_everything(cfg.seed)
    spec = _model_spec(cfg, data)
    def build() -> nn.Module:
        return create_model(cfg.model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                            **cfg.model_kwargs)

    model = build()
    refuse_random_unsaved(cfg.model, model, build)  # before any training, not on loading what it saved
    model.to(device)

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = train_logits(model(x))  # (B, classes)
        return F.cross_entropy(logits.float(), y), logits

    def save(path: Path, kind: str, extra: dict[str, Any]) -> None:
        save_checkpoint(path, model, spec, kind=kind, **extra)

    def restore(ckpt) -> None:
        check_state_dict(model, ckpt.state_dict, str(ckpt.path), f"model '{cfg.model}'")
        check_unsaved(model, [ckpt])
        model.load_state_dict(ckpt.state_dict)

    def finish() -> dict[str, Any]:
        return _final_summary(model, data, cfg)

    task = Task(module=model, loss=loss, save=save, restore=restore, finish=finish,
                epoch_eval=lambda: epoch_test_metrics(model, data, cfg.amp),
                weight_decay=cfg.wd, spec=spec, command="train", kind="model")
    summary, metrics = run_training(task, cfg, data, out, start_epoch=start_epoch, state=state, metrics=metrics,
                                    progress=progress, on_epoch_end=on_epoch_end, argv=argv)
    return TrainResult(model=model.eval(), summary=summary, out=out, metrics=metrics)


@dataclass
class Task:
    """What the shared training loop optimises (an endpoint network, a curve, ...).

    ``loss(x, y)`` returns the scalar loss to minimise and the logits
    ``(..., B, classes)`` used for the running error; it must reach every
    trainable parameter through ``module`` (on many processes
    DistributedDataParallel wraps the two, and ``sync_buffers`` says whether
    rank 0's buffers, e.g. batch-norm statistics, are copied to every rank
    before each step); ``save(path, kind,
    extra)`` writes a checkpoint of the current state with the given extra
    entries (``meta``, ``train_state``); ``restore(checkpoint)`` loads one
    back for ``--resume``; ``epoch_eval()`` (optional) adds metrics to each
epoch's record; ``finish()`` computes the final summary. ``lr(epoch, it,
steps)`` (optional; epoch 0-based, iteration ``it`` of ``steps``) sets the
learning rate before every iteration instead of once per epoch from the
config's schedule; ``after_step(epoch, it, steps)`` runs after every
optimiser step; ``end_epoch(epoch)`` (1-based) runs after each epoch's
updates (averaging, snapshots) and adds to its record. ``optimizer(params)``
(optional) builds the optimiser instead of SGD; a parameter group's
``lr_scale`` (default 1) multiplies the rate the loop sets. ``network``
(default ``module``) is the network the loss runs, which decides whether
image batches come in channels-last layout (:func:`landscape.layout.image_layout`).
    """

    module: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    save: Callable[[Path, str, dict[str, Any]], None]
    restore: Callable[[Any], None]
    finish: Callable[[], dict[str, Any]]
    epoch_eval: Callable[[], dict[str, Any]] | None
    weight_decay: float
    spec: dict[str, Any]
    command: str
    kind: str
    lr: Callable[[int, int, int], float] | None = None
    end_epoch: Callable[[int], dict[str, Any]] | None = None
    after_step: Callable[[int, int, int], None] | None = None
    sync_buffers: bool = True
    lr_flag: str = "--lr"  # the option that sets the rate, named when training diverges
    stage: str = ""  # a part of a longer command, named in its log lines after the command ("vertex 2 of 3")
    # the optimiser of the trainable parameters (default: SGD with the config's momentum and the task's weight decay)
    optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None
    # the network the loss runs (a curve's template; default: module), tried on channels-last images
    network: nn.Module | None = None
    # another sequence of the epochs' random numbers (batch order, augmentation, the global RNG) for the same
    # seed: ESPRO's components, grown with one config, are drawn independently (0: the run's own)
    stream: int = 0


# A mean train NLL above this is divergence though finite: a network that is merely bad (chance, or
# confidently wrong) stays below 100 nats; 1e6 takes logits a million apart.
DIVERGED_NLL = 1e6


class Diverged(Exception):
    """Training met a non-finite loss or weights; ``run_training`` turns it into
    a :class:`UserError` that says what is kept and what to change."""


class _Objective(nn.Module):
    """A task's loss as a module that owns the trainable parameters, so that
    DistributedDataParallel can wrap it and all-reduce their gradients."""

    def __init__(self, owner: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], Any]) -> None:
        super().__init__()
        self.owner = owner
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(x, y)


def _data_parallel(task: Task, device: torch.device, channels_last: bool = False) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """The task's loss; on many processes, run through DistributedDataParallel.

    With ``channels_last`` batches, a conv weight with a size-1 dimension
    (one input channel, a 1x1 kernel) gets its gradient in channels-last
    strides, which describe the same memory as its NCHW ones; DDP compares
    strides, not memory, and would warn on every rank that the gradient does
    not fit its bucket. Such weights are given those strides first."""
    if rank_and_world()[1] == 1:
        return task.loss
    from torch.nn.parallel import DistributedDataParallel

    if channels_last:
        for p in task.module.parameters():
            if p.dim() == 4 and 1 in p.shape[1:]:
                p.data = to_channels_last(p.data)  # the same values and memory order; strides only

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    sync = {}
    if not task.sync_buffers:  # the option's name changed in torch 2.13
        new = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers" if new else "broadcast_buffers": False}
    return DistributedDataParallel(_Objective(task.module, task.loss), device_ids=ids, **sync)


def _from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (itself on one process)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_world(batch_size: int, world: int) -> None:
    if world > 1 and (batch_size % world or batch_size // world < 2):
        raise UserError(f"--batch-size {batch_size} must be a multiple of the {world} processes, "
                        f"with at least 2 samples each (batch norm needs two)")


def run_training(
    task: Task,
    cfg: TrainConfig,
    data: Dataset,
    out: Path | None,
    *,
    start_epoch: int = 0,
    state=None,
    metrics: list[dict[str, Any]] | None = None,
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    argv: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The epoch loop shared by ``train`` and ``connect``: SGD with momentum,
    the schedule, per-epoch metrics, ``last.pt`` / numbered checkpoints /
    ``model.pt``, and ``summary.json``. Returns (summary, per-epoch records).
    On many processes (an initialised process group) it trains data parallel
    and only rank 0 writes; see the module's docstring."""
    device = data.device
    rank, world = rank_and_world()
    check_world(cfg.batch_size, world)
    if steps_per_epoch(len(data.y_train), cfg.batch_size, world) == 0:  # a batch of one sample is skipped
        raise UserError(f"{data.name!r} has {len(data.y_train)} training sample(s): no training step would run "
                        f"(a batch needs at least 2 samples{' per process' if world > 1 else ''}, for batch norm)")
    metrics = list(metrics or [])
    if task.network is not None:
        refuse_for_gradients(task.network, "a curve's (or simplex's) fit")
    else:  # plain SGD without weight decay takes sparse gradients
        plain = not task.weight_decay and task.optimizer is None
        refuse_for_gradients(task.module, "training" if task.optimizer is not None else "training with weight decay "
                             "(--wd 0 takes them)", sparse_ok=plain, computed=False)
    params = [p for p in task.module.parameters() if p.requires_grad]
    if not params:
        raise UserError("the network has no parameters to train" if next(task.module.parameters(), None) is None
                        else "the network trains none of its parameters (all have requires_grad=False)")
    optimizer = (task.optimizer(params) if task.optimizer is not None else
                 torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=task.weight_decay))
    if state is not None:
        recorded = (state.meta or {}).get("dataset")
        if isinstance(recorded, dict) and data_differs(recorded, data.describe()):
            now = data.describe()
            raise UserError(f"{out}: the run began on {described(recorded)}, now {described(now)}: "
                            f"{why_data_differs(recorded, now)}; --resume needs the same data (or choose another "
                            f"--out)")
        _say(f"{out}: resuming after epoch {start_epoch} of {cfg.epochs}")
        task.restore(state)
        optimizer.load_state_dict(state.extra["train_state"]["optimizer"])
    network = task.network if task.network is not None else task.module
    check_network(network, data)  # a network that cannot take the data, or gives too few outputs: one line
    # channels-last batches where the network the loss runs takes them (landscape.layout)
    layout = image_layout(network, data.x_train[:2])
    forward = _data_parallel(task, device, channels_last=layout is to_channels_last)
    if device.type == "cpu":
        keep_freed_memory()  # as the engine: pages of freed activations reused, not mapped afresh
    out = out if rank == 0 else None  # only rank 0 writes

    stored = (state.meta or {}).get("input_digests") if state is not None else None  # checked on resuming
    digests = (stored if isinstance(stored, dict) else input_digests(cfg)) if out is not None else {}
    stored = (state.meta or {}).get("input_summaries") if state is not None else None
    summaries = (stored if isinstance(stored, dict) else input_summaries(cfg)) if out is not None else {}

    threads = torch.get_num_threads()  # training rounds otherwise on another number
    earlier = _earlier_threads(state, threads, device, world) if state is not None and start_epoch > 0 else []

    def save(path: Path, epoch: int, kind: str) -> None:
        meta = {"epoch": epoch, "train_config": cfg.to_json(), "dataset": data.describe(),
                "world_size": world, "landscape_version": __version__, "input_digests": digests,
                "input_summaries": summaries, "threads": threads, **({"threads_before": earlier} if earlier else {})}
        task.save(path, kind, {"meta": meta, "train_state": {"epoch": epoch, "optimizer": optimizer.state_dict()}})

    if world > 1:
        _say(f"{task.command}: data parallel on {world} processes ({dist.get_backend()}), "
             f"{cfg.batch_size // world} samples per process and step")
        rest = len(data.y_train) % cfg.batch_size
        if 2 <= rest < 2 * world:  # one process trains on it; split, a slice would hold under 2 samples
            _say(f"note: each epoch's last batch ({rest} samples) is left out: split across {world} processes "
                 f"it would give a slice under 2 samples (a run on one process trains on it, so the results "
                 f"differ from one)")
    if out is not None:
        write_json(out / "config.json", {
            "command": task.command,
            "argv": list(argv) if argv is not None else None,
            "config": cfg.to_json(),
            "device": str(device),
            "threads": threads,
            **({"threads_before": earlier} if earlier else {}),
            "world_size": world,
            "dataset": data.describe(),
            "model": task.spec,
            "landscape_version": __version__,
            "torch_version": torch.__version__,
        })
        if data.synthetic:
            _say("note: synthetic data (random tensors) — for benchmarks only, not a real result")

    if out is not None and cfg.save_every and start_epoch == 0 and task.command == "train":
        save(out / "checkpoint-000.pt", 0, task.kind)  # the initial weights: where a trajectory starts

    # A resumed run's clock goes on from its last kept epoch, so time_s and seconds cover the whole run.
    t0 = time.perf_counter() - (float(metrics[-1].get("time_s", 0.0)) if metrics else 0.0)
    steps = max(1, math.ceil(len(data.y_train) / cfg.batch_size))
    mode = progress_mode(progress) if rank == 0 else "off"
    bar = Progress(cfg.epochs * steps, start_epoch * steps, desc=task.command, unit="it", progress=mode == "bar")
    name = f"{task.command}, {task.stage}" if task.stage else task.command
    lines = LogLines(f"{name}: epoch", cfg.epochs, start_epoch) if mode == "log" else None
    if lines is not None and start_epoch < cfg.epochs:  # what is trained, and where, before the first epoch's line
        where = f"{device.type}" + (f" ({threads} thread{'s' if threads != 1 else ''})" if device.type == "cpu" else "")
        print(f"{name}: {cfg.epochs - start_epoch} epoch{'s' if cfg.epochs - start_epoch != 1 else ''}"
              f"{f' (from epoch {start_epoch + 1})' if start_epoch else ''} of {steps} step{'s' if steps != 1 else ''}"
              f" ({len(data.y_train)} training images, batches of {cfg.batch_size}"
              f"{f' over {world} processes' if world > 1 else ''}) on {where}, {'bf16' if cfg.amp else 'fp32'}"
              f"{f' -> {out}' if out is not None else ''}", file=sys.stderr, flush=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            record = _train_epoch(task, forward, optimizer, data, cfg, epoch, device, bar, layout)
            if task.end_epoch is not None:
                record.update(task.end_epoch(epoch + 1))
            if task.epoch_eval is not None and rank == 0:
                record.update(task.epoch_eval())
            record["time_s"] = round(time.perf_counter() - t0, 3)
            record = _from_main(record)
            bad = non_finite(record)  # e.g. a test NLL of weights grown huge but finite
            if bad is not None:
                raise Diverged(f"the {bad[0]} became {bad[1]} in epoch {epoch + 1}")
            if out is not None:
                append_jsonl(out / "metrics.jsonl", record)
                # the numbered checkpoint before last.pt: a stop between them resumes from the epoch before and
                # writes it again, where the other order left a trajectory without it
                if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                    save(out / f"checkpoint-{epoch + 1:03d}.pt", epoch + 1, task.kind)
                save(out / "last.pt", epoch + 1, task.kind)
            metrics.append(record)
            test_error = record.get("test_error", record.get("mid_test_error", float("nan")))
            bar.set_postfix(epoch=epoch + 1, loss=f"{record['train_loss']:.4f}",
                            err=f"{record['train_error']:.2f}%", test_err=f"{test_error:.2f}%")
            if lines is not None:
                lines.at(epoch + 1, _epoch_note(record, data.eval_split))
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    except Diverged as e:
        raise diverged(str(e), task.lr_flag, out, epoch) from None
    finally:
        bar.close()

    if lines is not None:  # what the wait before the summary is (for a curve: 4 passes over the data)
        print(f"{name}: {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} done; the final evaluation",
              file=sys.stderr, flush=True)
    if world > 1 and task.sync_buffers:  # every rank ends with rank 0's batch-norm statistics
        for b in task.module.buffers():
            dist.broadcast(b, src=0)
    summary, refused = None, None
    if rank == 0:
        try:
            summary = task.finish()
            summary["seconds"] = round(time.perf_counter() - t0, 3)
            summary.setdefault("precision", "bf16" if cfg.amp else "fp32")  # its final metrics' too
        except UserError as e:  # e.g. SWA's non-finite average: rank 0 alone met it, every rank stops alike
            refused = e
    said = _from_main(str(refused) if refused is not None else None)
    if said is not None:
        raise refused if refused is not None else UserError(said)
    bad = _from_main(non_finite(summary) if rank == 0 else None)  # every rank refuses alike
    if bad is not None:  # the last step can leave finite weights whose loss is not
        raise diverged(f"the final network's {bad[0]} is {bad[1]}", task.lr_flag, out, cfg.epochs)
    if out is not None:
        # The summary first: model.pt marks the run finished, so a run stopped between the two
        # has no model.pt, and --resume finishes it again from last.pt.
        write_json(out / "summary.json", summary)
        save(out / "model.pt", cfg.epochs, task.kind)
    return _from_main(summary), metrics  # the broadcast also holds every rank until rank 0 has written


def diverged(reason: str, lr_flag: str, out: Path | None, kept_epochs: int) -> UserError:
    """The one line for a run that diverged: why, what ``last.pt`` holds (``kept_epochs``
    finished epochs), and the rate option to lower."""
    if kept_epochs == 0:  # nothing was kept that a rerun would replace: the same --out takes it
        return UserError(f"training diverged: {reason}; no epoch finished; lower {lr_flag} and run it again"
                         + ("" if out is None else " (the same --out will do)"))
    kept = "" if out is None else f"{out / 'last.pt'} holds epoch {kept_epochs}; "
    return UserError(f"training diverged: {reason}; {kept}lower {lr_flag} and start again"
                     + ("" if out is None else " with another --out"))


def non_finite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first NaN or infinite number in a record or summary: (its key path, the value)."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return where or "value", float(obj)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _earlier_threads(state, threads: int, device: torch.device, world: int = 1) -> list[int]:
    """The thread counts a resumed run trained its kept epochs on in its earlier sessions, where any
    differs from ``threads`` (from ``state``, the checkpoint it resumes from: each records the number
    of the session that saved it, and the earlier ones'; kept as ``threads_before``); a note where the
    last one differs, on the CPU: the sums round otherwise, so the weights are not those of a run left
    uninterrupted (and, where it ran on another number of processes, ``world`` now, how many it needs too).
    A checkpoint from before these were kept gives none."""
    stored = state.meta or {}
    earlier = [n for n in stored.get("threads_before") or [] if isinstance(n, int)]
    last = stored.get("threads")
    if isinstance(last, int) and not isinstance(last, bool):
        earlier = earlier if earlier and earlier[-1] == last else [*earlier, last]
        if last != threads and device.type == "cpu":
            before = stored.get("world_size", 1)
            processes = (f" on {before} process{'es' if before != 1 else ''}"
                         if isinstance(before, int) and before != world else "")
            _say(f"note: this run trained on {last} thread{'s' if last != 1 else ''} before and on {threads} now: "
                 f"sums over threads round otherwise, so its weights will not be bit for bit those of a run left "
                 f"uninterrupted (OMP_NUM_THREADS={last}{processes} resumes it exactly)")
    return earlier if any(n != threads for n in earlier) else []


def _say(msg: str) -> None:
    if is_main():
        print(msg, file=sys.stderr)


def _epoch_note(record: dict[str, Any], split: str = "test") -> str:
    """An epoch's figures for its log line: 'train loss 0.1234, train error 2.10 %
    (over the epoch's batches), test error 3.61 %' (a curve's test error is its
    midpoint's, so named; "val error" where ``split`` is a validation split,
    as the record's ``test_error`` then is). The train figures are the
    running ones of the epoch's steps, not the final network's (the summary's)."""
    parts = [f"train loss {fixed(record['train_loss'])}",
             f"train error {record['train_error']:.2f} % (over the epoch's batches)"]
    held = "val" if split == "val" else "test"
    for key, name in (("test_error", f"{held} error"), ("mid_test_error", f"{held} error at t = 0.5"),
                      ("swa_test_error", f"SWA {held} error")):
        if key in record:
            parts.append(f"{name} {record[key]:.2f} %")
    return ", ".join(parts)


def prepare_run(out: Path | None, cfg: TrainConfig, resume: bool,
                command: str) -> tuple[int, Any, list[dict[str, Any]]]:
    """Check the run folder against ``resume``; return (start epoch, saved state, kept metrics).

    Start epoch -1 means the run there is already finished. Refuses to
    overwrite a finished or unfinished run without ``resume``, and to resume
    with settings other than the stored ones. On many processes every rank
    checks and reads, then they wait for each other, then rank 0 tidies up.
    """
    if out is None:
        return 0, None, []
    claim_folder(out, command)
    finished, last = out / "model.pt", out / "last.pt"
    done = finished.exists() and (out / "summary.json").exists()
    if finished.exists() and not done:  # stopped between the two (an earlier build wrote model.pt first)
        if not last.exists():
            raise UserError(f"{out} holds model.pt but neither summary.json nor last.pt to finish the run from; "
                            f"choose another --out")
        # last.pt holds the last epoch: the run is finished again from it
    if not resume:
        if done:
            raise UserError(f"{out} already holds a finished run; choose another --out (or pass --resume to use it)")
        if last.exists():
            raise UserError(f"{out} holds an unfinished run; pass --resume to continue it, or choose another --out")
        _refuse_orphaned_records(out)
        barrier()
        if is_main():
            for stale in ("metrics.jsonl", "summary.json"):
                remove_file(out / stale)
        return 0, None, []
    source = finished if done else last
    if not source.exists():  # a new run: refused there too when records without their last.pt remain
        fresh = prepare_run(out, cfg, resume=False, command=command)
        _say(f"{out}: nothing to resume, starting a new run")
        return fresh
    state = load_checkpoint(source)
    stored = (state.meta or {}).get("train_config")
    if not isinstance(stored, dict) or "train_state" not in state.extra:
        raise UserError(f"{source}: not a training state written by landscape; cannot resume from it")
    _check_resumable(out, cfg, stored, (state.meta or {}).get("input_digests"), (state.meta or {}).get("dataset"))
    started_on, world = int((state.meta or {}).get("world_size", 1)), rank_and_world()[1]
    has_bn = any(k.endswith("running_var") for k in state.state_dict)
    if started_on != world and source is last and has_bn:
        # Each process normalises batch norm over its own share of the batch: another count is another model.
        raise UserError(f"{out} was started on {started_on} process(es), now {world}; --resume needs the same "
                        f"number of processes (each normalises batch norm over its share of the batch)")
    if source is finished:
        return -1, None, []
    epoch = int(state.extra["train_state"]["epoch"])
    kept = [r for r in _epoch_records(out / "metrics.jsonl") if r["epoch"] <= epoch]
    lost = sorted(set(range(1, epoch + 1)) - {r["epoch"] for r in kept})
    if lost:  # appended before last.pt is saved, so only a crash that lost written data (or an edit) can drop one
        _say(f"note: {out / 'metrics.jsonl'} has no record of epoch(s) {', '.join(map(str, lost))} (lost in a "
             f"crash, or deleted); the run resumes from last.pt, and its records will miss them")
    barrier()
    if is_main():
        atomic_write_text(out / "metrics.jsonl", "".join(_jsonl_line(r) for r in kept))
    return epoch, state, kept  # "resuming after epoch ..." is said by run_training, once the data is accepted


def _refuse_orphaned_records(out: Path) -> None:
    """One line when ``out`` holds what a run of more than one epoch wrote
    (its records, its numbered checkpoints) but not the ``last.pt`` to go on
    from (deleted or lost): a new run there would overwrite them. A record of
    the first epoch alone is what a run stopped before its first ``last.pt``
    leaves, and is started over (with the first epoch's numbered checkpoint,
    written just before the first ``last.pt``)."""
    epochs = [r["epoch"] for r in _epoch_records(out / "metrics.jsonl")]
    numbered = [p for p in out.glob("checkpoint-*.pt") if p.name != "checkpoint-000.pt"]  # 000: before epoch 1
    if max(epochs, default=0) > 1 or any(p.name != "checkpoint-001.pt" for p in numbered):
        held = [f"records of {max(epochs)} epochs (metrics.jsonl)"] if epochs else []
        held += [f"{len(numbered)} numbered checkpoint(s)"] if numbered else []
        raise UserError(f"{out} holds a run's {' and '.join(held)} but not its last.pt to continue from; choose "
                        f"another --out (or delete them to start over there)")


def _epoch_records(path: Path) -> list[dict[str, Any]]:
    """A run's per-epoch records (:func:`read_jsonl`), each with a whole epoch number."""
    records = read_jsonl(path)
    for i, r in enumerate(records):
        if not isinstance(r.get("epoch"), int) or isinstance(r["epoch"], bool) or r["epoch"] < 1:
            raise UserError(f"{path}: record {i + 1} has no epoch number (epoch {r.get('epoch')!r}); the file is "
                            f"damaged: delete that record, or the file, and rerun")
    return records


def _jsonl_line(record: dict) -> str:
    import json

    return json.dumps(record) + "\n"


def _finished_result(out: Path, model: str) -> TrainResult:
    """The result of a finished run, resumed; ``model`` (the run's own, named
    again by the user) rebuilds the network."""
    from .checkpoint import load_model, read_json

    summary = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
    result = TrainResult(model=load_model(out / "model.pt", model), summary=summary, out=out,
                         metrics=read_jsonl(out / "metrics.jsonl"))
    _say(f"{out}: run already finished; nothing to do")  # once its files are read: a damaged one is the one line
    return result


def _train_epoch(task: Task, forward, optimizer, data: Dataset, cfg: TrainConfig, epoch: int,
                 device: torch.device, bar, layout: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    lr = learning_rate(cfg.lr, cfg.schedule, epoch, cfg.epochs)
    _set_rate(optimizer, lr)
    rank, world = rank_and_world()
    n = len(data.y_train)
    steps = steps_per_epoch(n, cfg.batch_size, world)
    # dropout, t samples, any other global-RNG use; per rank, so ranks drop out differently
    seed = _epoch_seed(cfg.seed, epoch, task.stream)
    torch.manual_seed(seed + rank)
    gen = torch.Generator(device=device)  # batch order and augmentation: the same on every rank
    gen.manual_seed(seed)
    task.module.train()
    # loss * samples, wrong, samples, NLL * samples, the optimiser's weight-decay term * samples
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    decayed = [p for p in task.module.parameters() if p.requires_grad] if task.weight_decay else []
    for it, (x, y) in enumerate(data.train_batches(cfg.batch_size, gen, shard=(rank, world))):
        if task.lr is not None:
            lr = task.lr(epoch, it, steps)
            _set_rate(optimizer, lr)
        x = layout(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss, logits = forward(x, y)  # logits (..., B, classes)
        with torch.no_grad():  # the record's terms, at the weights this step's loss saw
            flat = logits.detach().float().reshape(-1, logits.shape[-1])
            per = flat.shape[0] // y.numel()  # points per sample (connect, simplex: K)
            sums[3] += F.cross_entropy(flat, y.repeat(per), reduction="sum").double() / per
            if decayed:
                norms = torch.stack(torch._foreach_norm([p.detach() for p in decayed])).double()
                sums[4] += 0.5 * task.weight_decay * norms.pow(2).sum() * y.numel()
        optimizer.zero_grad(set_to_none=True)
        batch = min(cfg.batch_size, n - it * cfg.batch_size)  # the global batch of this step
        if len(y) * world != batch:  # uneven slices of a last batch: weight DDP's mean by samples
            (loss * (len(y) * world / batch)).backward()
        else:
            loss.backward()
        optimizer.step()
        if task.after_step is not None:
            task.after_step(epoch, it, steps)
        sums[0] += loss.detach().double() * y.numel()
        sums[1] += (logits.detach().argmax(dim=-1) != y).double().sum() * y.numel() / (logits[..., 0].numel())
        sums[2] += y.numel()
        bar.update(1)
    if world > 1:
        dist.all_reduce(sums)
    loss_sum, wrong, seen, nll_sum, decay_sum = sums.tolist()
    seen = max(seen, 1)
    train_loss = (loss_sum + decay_sum) / seen
    if not math.isfinite(train_loss):
        raise Diverged(f"the loss became {train_loss} in epoch {epoch + 1} (lr {lr:g})")
    # The last step's update came after its loss was seen: weights it made non-finite are caught
    # here, before they are saved to last.pt or averaged (one reduction per epoch, no per-step sync).
    if not weights_finite(task.module):
        raise Diverged(f"the weights became non-finite by the end of epoch {epoch + 1} (lr {lr:g})")
    if nll_sum / seen > DIVERGED_NLL:  # finite, but only weights blown up give outputs this far off
        raise Diverged(f"the train NLL reached {nll_sum / seen:.3g} in epoch {epoch + 1} (lr {lr:g}), past "
                       f"{DIVERGED_NLL:g}: the weights blew up")
    return {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_nll": nll_sum / seen,
            "train_error": 100.0 * wrong / seen}


def _set_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group's rate: ``lr`` times the group's ``lr_scale`` (1
    unless a task's optimiser sets it; 0 holds a group's parameters still)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def epoch_test_metrics(model: nn.Module, data: Dataset, amp: bool = False) -> dict[str, float]:
    """An epoch record's test columns: the model as it stands (its running batch-norm statistics)."""
    m = evaluate_model(model, data, "test", amp=amp)
    return {"test_nll": m["nll"], "test_error": m["error"]}


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Iterations per epoch: full batches plus a last one of two or more
    samples (per process, on ``world`` processes)."""
    return n // batch_size + (1 if n % batch_size >= 2 * world else 0)


def _final_summary(model: nn.Module, data: Dataset, cfg: TrainConfig) -> dict[str, Any]:
    train_m = evaluate_model(model, data, "train", amp=cfg.amp)
    test_m = evaluate_model(model, data, "test", amp=cfg.amp)
    penalty = l2_penalty(model, cfg.wd)
    return {
        "train_loss": train_m["nll"] + penalty,
        "train_nll": train_m["nll"],
        "train_error": train_m["error"],
        "test_nll": test_m["nll"],
        "test_error": test_m["error"],
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "epochs": cfg.epochs,
        "num_params": sum(p.numel() for p in model.parameters()),
        "model": _model_spec(cfg, data),
        "dataset": data.describe(),
        "checkpoint": "model.pt",
        "notes": "train_loss = train NLL + 0.5 * wd * ||w||^2 (as the papers report it); errors in percent; "
                 "all metrics in eval mode on unaugmented data",
    }
