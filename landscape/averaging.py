"""Stochastic weight averaging, fast geometric ensembling, snapshot ensembles.

- SWA (Izmailov et al. 2018): an equal-weight running average of the SGD
  iterates, taken every ``cycle`` epochs with a constant rate, or at the end
  of each cycle (the rate's lowest point) with a cyclical rate; batch-norm
  statistics are recomputed for the average. Saves the average and the final
  SGD iterate of the same run.
- FGE (Garipov et al. 2018): from a trained network, a piecewise-linear
  cyclical rate (alpha_1 -> alpha_2 -> alpha_1 over ``cycle`` epochs, updated
  every iteration); a snapshot at each minimum of the rate; the ensemble
  averages the snapshots' predicted probabilities.
- Snapshot ensembles (Huang et al. 2017): cosine annealing with restarts,
  alpha(i) = alpha_0 / 2 (cos(pi * mod(i, I/M) / (I/M)) + 1), a snapshot at
  the end of each of the M cycles.

All three run on the shared training loop (``train.run_training``), so they
have the same files, progress bar and exact ``--resume`` as ``train``, and
under torchrun they train data parallel as it does. Only rank 0 keeps the
ensemble's predictions, writes snapshots and finishes the run (the summary
reaches every rank); the other ranks form the same SWA average and return it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .brief import brief_repr
from .bn import bn_modules, reestimate_bn
from .checkpoint import (Checkpoint, check_state_dict, load_checkpoint, load_model, read_json, require_network,
                         save_checkpoint)
from .data import Dataset, refuse_given_data_path
from .device import seed_everything
from .errors import UserError, check_keywords, check_number, check_whole, is_whole
from .evaluate import evaluate_model, l2_penalty, train_logits, weights_finite
from .inputs import (data_settings, named_model, network_of, note_split_leak, refuse_infinite,
                     require_architecture, run_data)
from .layout import image_layout
from .metrics import ensemble_metrics
from .models import check_spec_fits, check_unsaved, from_spec, model_spec, refuse_random_unsaved, stored_spec
from .swag import SwagMoments
from .sweep import is_main, process_device, rank_and_world
from .train import (Diverged, Task, TrainConfig, check_rate, diverged, epoch_test_metrics, non_finite,
                    prepare_run, run_training, steps_per_epoch)
from .weights import ParamSpace

__all__ = ["AverageConfig", "AverageResult", "swa_learning_rate", "averaging_rate", "fge_learning_rate",
           "snapshot_learning_rate",
           "fge_snapshot_iteration", "run_swa", "run_fge", "run_snapshots", "predict_probs",
           "predict_log_probs", "nll_of"]

METHODS = ("swa", "fge", "snapshots")


@dataclass
class AverageConfig(TrainConfig):
    """Settings of ``landscape swa`` / ``fge`` / ``snapshots`` (saved as ``config.json``).

    ``lr`` is the initial rate (SWA from scratch), alpha_1 (FGE, the high
    end) or alpha_0 (snapshots). ``lr_min`` is alpha_2 of FGE. ``cycle`` is
    in epochs: SWA averages every ``cycle`` epochs, FGE cycles over it,
    snapshots restart every ``cycle`` epochs. ``swag_rank`` K > 0: SWA also
    collects SWAG's moments, keeping the last K deviations (``swag.pt``).
    ``eval_every`` N > 0: SWA also evaluates the running average every N
    epochs and at the last (batch norm re-estimated for it), recording
    ``swa_test_nll`` / ``swa_test_error`` beside the SGD iterate's
    ``test_nll`` / ``test_error`` in metrics.jsonl: the papers' curves of SWA
    against SGD over training. It changes nothing else (no random draws),
    so a resumed run may change it.
    """

    method: str = "swa"
    from_ckpt: str | None = None
    swa_start: int = 0
    swa_lr: float = 0.01
    swa_lr_max: float | None = None
    swa_schedule: str = "constant"
    lr_min: float = 0.0005
    cycle: int = 1
    keep_snapshots: bool = False
    swag_rank: int = 0
    eval_every: int = 0

    resume_free = ("eval_every",)  # only adds records (no random draws): a resumed run may change it

    @property
    def lr_flag(self) -> str:
        return "--lr-max" if self.method == "fge" else "--lr"

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}")
        self.cycle, self.swa_start, self.swag_rank = (
            check_whole(flag, value) for flag, value in (("--cycle", self.cycle), ("--swa-start", self.swa_start),
                                                         ("--swag-rank", self.swag_rank)))
        if self.cycle < 1:
            raise UserError(f"--cycle must be at least 1 epoch, got {self.cycle}")
        if self.method == "swa":
            if self.swa_schedule not in ("constant", "cyclic"):
                raise UserError(f"unknown SWA schedule {self.swa_schedule!r}; choose constant or cyclic")
            if not 0 <= self.swa_start < self.epochs:
                raise UserError(f"--swa-start must be in [0, --epochs), got {self.swa_start} of {self.epochs}")
            if self.epochs - self.swa_start < self.cycle:
                raise UserError(f"no iterate would be averaged: --epochs ({self.epochs}) must exceed --swa-start "
                                f"({self.swa_start}) by at least --cycle ({self.cycle})")
            check_rate("--swa-lr", self.swa_lr)
            if self.swag_rank < 0 or self.swag_rank == 1:
                raise UserError(f"--swag-rank must be 0 (no SWAG moments) or at least 2 deviations, got {self.swag_rank}")
            if self.swag_rank and (self.epochs - self.swa_start) // self.cycle < 2:
                raise UserError(f"SWAG needs at least 2 averaged iterates (one gives a Gaussian of no spread), and "
                                f"--epochs {self.epochs} with --swa-start {self.swa_start} and --cycle {self.cycle} "
                                f"averages {(self.epochs - self.swa_start) // self.cycle}")
            if self.swa_lr_max is not None:
                if self.swa_schedule != "cyclic":
                    raise UserError("--swa-lr-max: for --schedule cyclic (the constant schedule runs at --swa-lr)")
                check_rate("--swa-lr-max", self.swa_lr_max)
                if self.swa_lr_max < self.swa_lr:
                    raise UserError(f"--swa-lr-max must be at least --swa-lr, got {self.swa_lr_max} and {self.swa_lr}")
            elif self.swa_schedule == "cyclic":
                check_rate("--swa-lr-max (by default 10 x --swa-lr)", 10 * self.swa_lr)
        if self.method != "swa" and self.swag_rank:
            raise UserError("SWAG's moments are collected by SWA: swag_rank applies to run_swa only")
        if not is_whole(self.eval_every) or self.eval_every < 0:
            raise UserError(f"--eval-every must be a whole number of epochs >= 0 (0: only at the end), "
                            f"got {self.eval_every}")
        if self.method != "swa" and self.eval_every:
            raise UserError("eval_every evaluates SWA's running average: it applies to run_swa only")
        if self.method == "fge":
            check_number("--lr-min", self.lr_min)
        if self.method == "fge" and not 0 < self.lr_min <= self.lr:
            raise UserError(f"FGE needs 0 < --lr-min <= --lr-max, got {self.lr_min} and {self.lr}")
        if self.method in ("fge", "snapshots") and self.epochs < self.cycle:
            raise UserError(f"--epochs ({self.epochs}) must cover at least one --cycle ({self.cycle})")


@brief_repr
@dataclass
class AverageResult:
    model: nn.Module  # SWA: the average (batch norm recomputed); FGE / snapshots: the final iterate
    sgd: nn.Module  # the final SGD iterate of the run
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    out: Path | None


# ------------------------------------------------------------------ learning rates
def swa_learning_rate(cfg: AverageConfig, epoch: int, it: int, steps: int) -> float:
    """The SWA paper's rate for ``cfg``: :func:`averaging_rate` with alpha_1 =
    ``swa_lr_max`` (default 10 x ``swa_lr``) and alpha_2 = ``swa_lr``."""
    high = cfg.swa_lr_max if cfg.swa_lr_max is not None else 10 * cfg.swa_lr
    return averaging_rate(cfg.lr, cfg.swa_start, cfg.swa_lr, high, cfg.swa_schedule == "cyclic", cfg.cycle,
                          epoch, it, steps)


def averaging_rate(lr: float, start: int, low: float, high: float, cyclic: bool, cycle: int, epoch: int, it: int,
                   steps: int) -> float:
    """The SWA paper's rate (SWA, and HWA's means). Before ``start`` (training
    from scratch): ``lr`` for the first half, then linear to ``low`` by 90%,
    then ``low``. From ``start``: constant ``low``, or ``cyclic``: within each
    cycle of c = ``cycle`` epochs x ``steps`` iterations, alpha(i) = (1 - t_i)
    alpha_1 + t_i alpha_2 with t_i = (i + 1) / c (i = 0..c-1), so the last
    iteration of a cycle runs at alpha_2 = ``low`` (alpha_1 = ``high``)."""
    if epoch < start:
        t = epoch / start
        ratio = low / lr
        factor = 1.0 if t <= 0.5 else (1.0 - (1.0 - ratio) * (t - 0.5) / 0.4 if t <= 0.9 else ratio)
        return lr * factor
    if not cyclic:
        return low
    c = cycle * steps
    i = ((epoch - start) % cycle) * steps + it
    t = (i + 1) / c
    return (1 - t) * high + t * low


def fge_learning_rate(lr_max: float, lr_min: float, cycle: int, epoch: int, it: int, steps: int) -> float:
    """FGE's piecewise-linear cyclical rate (Garipov et al. 2018, eq. 4): with
    t = ((epoch mod cycle) + it / steps) / cycle in [0, 1), alpha_1 (1 - 2t) +
    alpha_2 2t for t < 1/2, alpha_1 (2t - 1) + alpha_2 (2 - 2t) after:
    alpha_1 = ``lr_max`` at a cycle's first iteration, alpha_2 = ``lr_min`` at
    its middle."""
    t = ((epoch % cycle) + it / steps) / cycle
    if t < 0.5:
        return lr_max * (1.0 - 2.0 * t) + lr_min * 2.0 * t
    return lr_max * (2.0 * t - 1.0) + lr_min * (2.0 - 2.0 * t)


def fge_snapshot_iteration(cycle: int, steps: int) -> int:
    """Index, within a cycle of ``cycle * steps`` iterations, of the iteration
    run at the lowest rate (t = 1/2, or the nearest below); the snapshot is
    taken after its step."""
    return (cycle * steps) // 2


def snapshot_learning_rate(lr: float, cycle: int, epoch: int, it: int, steps: int) -> float:
    """Cosine annealing restarted every ``cycle`` epochs (Huang et al. 2017):
    lr / 2 (cos(pi * i / c) + 1), i the iteration within the cycle, c its length."""
    c = cycle * steps
    i = (epoch % cycle) * steps + it
    return lr / 2 * (math.cos(math.pi * i / c) + 1)


# ------------------------------------------------------------------ helpers
@torch.inference_mode()
def predict_log_probs(model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 1000) -> torch.Tensor:
    """Predicted log-probabilities (M, classes, float64) of ``model`` in eval
    mode, on channels-last image batches where it takes them; modes restored.
    Their exp is :func:`predict_probs`; with :func:`nll_of` they give the
    network's own NLL from the same pass (no floor at float64's smallest
    probability, which an average of probabilities has)."""
    from .evaluate import modes_kept

    with modes_kept(model):
        layout = image_layout(model, data.x_train[:2])
        model.eval()
        return torch.cat([torch.log_softmax(model(layout(x)).double(), dim=-1)
                          for x, _ in data.batches(split, batch_size)])


def predict_probs(model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 1000) -> torch.Tensor:
    """Predicted probabilities (M, classes, float64) of ``model`` in eval
    mode: the exp of :func:`predict_log_probs`."""
    return predict_log_probs(model, data, split, batch_size).exp()


def nll_of(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean NLL of log-probabilities (M, classes) at ``labels`` (M,)."""
    return float(-log_probs.gather(1, labels.to(log_probs.device)[:, None]).mean())


def _start_model(cfg: AverageConfig, data: Dataset, user_named: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The network to continue from (``from_ckpt``) or a fresh one (from scratch).
    ``user_named``: the user named the network (``--model``), so a factory the
    checkpoint names is theirs to trust."""
    if cfg.from_ckpt:
        ckpt = require_network(load_checkpoint(cfg.from_ckpt))
        if ckpt.model is not None:
            spec = stored_spec(ckpt.model, cfg.model)  # cfg.model: the user's factory for a name not built here
            model = load_model(ckpt, spec["name"] if user_named else None)
        else:
            spec = model_spec(cfg.model, data.num_classes, data.input_shape, **cfg.model_kwargs)
            model = load_model(ckpt, cfg.model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                               **cfg.model_kwargs)
        check_spec_fits(spec, data.num_classes, data.input_shape, ckpt.path, f"dataset '{data.name}'")
        refuse_infinite(ParamSpace.of(model).flatten(model), ckpt.path)
        return model, spec
    seed_everything(cfg.seed)
    spec = model_spec(cfg.model, data.num_classes, data.input_shape, **cfg.model_kwargs)
    model = from_spec(spec, trusted=True)  # built from the user's own --model
    refuse_random_unsaved(spec["name"], model, lambda: from_spec(spec, trusted=True))  # before any training
    return model, spec


def _config(method: str, config, overrides, named: str | None, cls: type = AverageConfig) -> tuple[Any, Checkpoint | None]:
    """The run's settings (a ``cls``), and the checkpoint it starts from (None:
    from scratch); ``named``: the network the caller named (:func:`named_model`)."""
    caller = {"vi": "run_variational"}.get(method, f"run_{method}")
    check_keywords(cls, overrides, caller)
    _refuse_unused(method, overrides, cls, caller)
    base = asdict(config) if config is not None else {}
    given = {f.name for f in fields(cls)} & set(overrides)
    cfg_from = overrides.get("from_ckpt", base.get("from_ckpt"))
    inherited, fixed = {}, {}
    if cfg_from:
        source = load_checkpoint(cfg_from)
        require_architecture(source, named)
        inherited = {k: v for k, v in data_settings(source).items() if k not in given and k not in base}
        if source.model is not None:  # the network is the checkpoint's, and the config records it
            fixed = network_of(source, named, overrides.get("model_kwargs"))
    named_method = {"method": method} if "method" in {f.name for f in fields(cls)} else {}
    cfg = cls(**{**inherited, **base, **overrides, **fixed, **named_method})
    refuse_given_data_path(cfg, overrides, base)
    cfg.validate()
    return cfg, (source if cfg_from else None)


# The settings each method does not use (SWA's own, FGE's alpha_2): given to it they were taken and recorded in
# config.json, and the run went on with the defaults. (swag_rank and eval_every are refused with their own line.)
_UNUSED = {"swa": ("lr_min",),
           "fge": ("swa_start", "swa_lr", "swa_lr_max", "swa_schedule", "keep_snapshots"),
           "snapshots": ("swa_start", "swa_lr", "swa_lr_max", "swa_schedule", "keep_snapshots", "lr_min")}
_METHOD_FUNCTIONS = {"swa": "run_swa", "fge": "run_fge", "snapshots": "run_snapshots"}


def _refuse_unused(method: str, overrides: dict[str, Any], cls: type, caller: str) -> None:
    """One line for a keyword ``method`` has no use for, given another value than its default: FGE's rates are
    ``lr`` and ``lr_min`` (the CLI's --lr-max / --lr-min), not ``swa_lr_max``; ``method`` is the function's."""
    if "method" in overrides and overrides["method"] != method and method in _METHOD_FUNCTIONS:
        raise UserError(f"{caller}() runs {method}: for {overrides['method']!r} call "
                        f"{_METHOD_FUNCTIONS.get(overrides['method'], 'the function of that method')}()")
    defaults = {f.name: f.default for f in fields(cls)}
    unused = [k for k in _UNUSED.get(method, ()) if k in overrides and overrides[k] != defaults[k]]
    if unused:
        rates = " (its rates are lr= and lr_min=, the command's --lr-max and --lr-min)" if method == "fge" else ""
        raise UserError(f"{caller}() does not use {', '.join(f'{k}=' for k in unused)}{rates}")


def _metrics_of(model: nn.Module, data: Dataset, wd: float) -> dict[str, float]:
    tr, te = evaluate_model(model, data, "train"), evaluate_model(model, data, "test")
    return {"train_loss": tr["nll"] + l2_penalty(model, wd), "train_nll": tr["nll"], "train_error": tr["error"],
            "test_nll": te["nll"], "test_error": te["error"]}


def _run(method: str, config, out, resume, data, progress, on_epoch_end, argv, overrides,
         build: Callable[[AverageConfig, nn.Module, dict, Dataset, Path | None], dict[str, Any]]) -> AverageResult:
    named = named_model(config, overrides)  # before the checkpoint's own name joins the config
    user_named = named is not None
    cfg, source = _config(method, config, overrides, named)
    device = process_device(cfg.device)  # under torchrun: joins the process group
    out = Path(out) if out is not None else None
    start_epoch, state, metrics = prepare_run(out, cfg, resume, method)
    if start_epoch == -1:
        summary = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        final = out / ("swa.pt" if method == "swa" else "model.pt")
        trust = cfg.model if user_named else None
        return AverageResult(load_model(final, trust), load_model(out / "model.pt", trust), summary, metrics, out)
    data = run_data(cfg, device, data, [source], config, overrides)
    if source is not None:  # once the split is accepted; after joining the group, so rank 0 alone says it
        note_split_leak((source.meta or {}).get("train_config"), asdict(cfg), source.path)
    model, spec = _start_model(cfg, data, user_named=user_named)
    model.to(device)
    hooks = build(cfg, model, spec, data, out if is_main() else None)  # under torchrun rank 0 writes
    task = Task(module=model, loss=hooks["loss"], save=hooks["save"], restore=hooks["restore"],
                finish=hooks["finish"], epoch_eval=lambda: epoch_test_metrics(model, data, cfg.amp), weight_decay=cfg.wd, spec=spec, command=method,
                kind="model", lr=hooks["lr"], end_epoch=hooks.get("end_epoch"), after_step=hooks.get("after_step"),
                lr_flag=_SWA_RATES if method == "swa" else cfg.lr_flag)
    seed_everything(cfg.seed)
    summary, metrics = run_training(task, cfg, data, out, start_epoch=start_epoch, state=state, metrics=metrics,
                                    progress=progress, on_epoch_end=on_epoch_end, argv=argv)
    return AverageResult(model=hooks["result"](), sgd=model.eval(), summary=summary, metrics=metrics, out=out)


def _model_hooks(model: nn.Module, spec: dict[str, Any], extra_state: Callable[[], dict], load_extra):
    def loss(x, y):
        logits = train_logits(model(x))
        return F.cross_entropy(logits.float(), y), logits

    def save(path: Path, kind: str, extra: dict[str, Any]) -> None:
        save_checkpoint(path, model, spec, kind=kind, average_state=extra_state(), **extra)

    def restore(ckpt: Checkpoint) -> None:
        check_state_dict(model, ckpt.state_dict, str(ckpt.path), f"model '{spec['name']}'")
        check_unsaved(model, [ckpt])
        model.load_state_dict(ckpt.state_dict)
        load_extra(ckpt.extra.get("average_state") or {})

    return loss, save, restore


# ------------------------------------------------------------------ SWA
def run_swa(config: AverageConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
            data: Dataset | None = None, progress: bool | None = None,
            on_epoch_end=None, argv: Sequence[str] | None = None, **overrides: Any) -> AverageResult:
    """Stochastic weight averaging; writes ``swa.pt`` (the average, batch norm
    recomputed), ``sgd.pt`` (the final SGD iterate) and, with
    ``keep_snapshots``, ``snapshot-NNN.pt`` for every averaged iterate."""

    def build(cfg: AverageConfig, model: nn.Module, spec, data: Dataset, out: Path | None):
        space = ParamSpace.of(model)
        state = {"avg": torch.zeros(space.numel, dtype=torch.float64, device=data.device), "n": 0}
        swag = SwagMoments(space.numel, cfg.swag_rank, data.device) if cfg.swag_rank else None
        average = [None]

        def extra() -> dict:
            return {"avg": state["avg"], "n": state["n"], **(swag.state() if swag is not None else {})}

        def load_extra(d: dict) -> None:
            if "avg" in d:
                state["avg"] = d["avg"].to(device=data.device, dtype=torch.float64)
                state["n"] = int(d["n"])
            if swag is not None:
                swag.load(d)

        loss, save, restore = _model_hooks(model, spec, extra, load_extra)

        def end_epoch(epoch: int) -> dict[str, Any]:
            if epoch > cfg.swa_start and (epoch - cfg.swa_start) % cfg.cycle == 0:
                w = space.flatten(model).double()
                state["n"] += 1
                state["avg"] += (w - state["avg"]) / state["n"]  # equal-weight running mean
                if swag is not None:
                    swag.add(w, state["avg"], state["n"])
                if cfg.keep_snapshots and out is not None:
                    save_checkpoint(out / f"snapshot-{epoch:03d}.pt", model, spec,
                                    meta={"epoch": epoch, "averaged": state["n"]})
            record: dict[str, Any] = {"swa_n": state["n"]}
            if (cfg.eval_every and state["n"] and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
                    and is_main()):  # under torchrun rank 0's record is the one kept: the others skip the work
                swa = _averaged_model(model, space, state["avg"], data, cfg)
                if epoch == cfg.epochs:
                    average[0] = swa  # the final average: finish() takes it rather than forming it again
                m = evaluate_model(swa, data, "test", amp=cfg.amp)
                record.update(swa_test_nll=m["nll"], swa_test_error=m["error"])
            return record

        def finish() -> dict[str, Any]:
            if state["n"] == 0:
                raise UserError("no iterate was averaged: --epochs must exceed --swa-start by at least --cycle")
            swa = average[0] if average[0] is not None else _averaged_model(model, space, state["avg"], data, cfg)
            average[0] = swa
            sgd_m, swa_m = _metrics_of(model, data, cfg.wd), _metrics_of(swa, data, cfg.wd)
            # The SGD iterate with batch norm recomputed as the average's was: the like-for-like comparison
            # (a network without batch norm has nothing to recompute: its row would repeat the SGD one).
            sgd_re = None
            if bn_modules(model):
                sgd_bn = copy.deepcopy(model)
                reestimate_bn(sgd_bn, data.statistics_batches(1000))
                sgd_re = _metrics_of(sgd_bn.eval(), data, cfg.wd)
                del sgd_bn
            bad = non_finite({"swa": swa_m, "sgd": sgd_m})
            if bad is not None:  # refused before swa.pt and sgd.pt would look like finished networks
                raise diverged(f"the final network's {bad[0]} is {bad[1]}", _SWA_RATES, out, cfg.epochs)
            if out is not None:
                meta = {"method": "swa", "averaged": state["n"], "train_config": cfg.to_json(),
                        "dataset": data.describe()}
                save_checkpoint(out / "swa.pt", swa, spec, meta=meta)
                sgd_meta = {k: v for k, v in meta.items() if k != "averaged"}  # one iterate, nothing averaged
                save_checkpoint(out / "sgd.pt", model, spec, meta=dict(sgd_meta, method="sgd"))
                if swag is not None:  # the SWA network again, with the moments around it
                    save_checkpoint(out / "swag.pt", swa, spec, kind="swag", meta=dict(meta, method="swag"),
                                    swag={**swag.state(), "mean": state["avg"], "names": list(space.names),
                                          "averaged": state["n"], "rank": cfg.swag_rank})
            files = {"swa": "swa.pt", "sgd": "sgd.pt", **({"swag": "swag.pt"} if swag is not None else {})}
            return {"swa": swa_m, "sgd": sgd_m, **({"sgd_bn_recomputed": sgd_re} if sgd_re is not None else {}),
                    "averaged": state["n"],
                    **({"swag_deviations": int(swag.deviations.shape[0])} if swag is not None else {}),
                    **_common(cfg, data, spec), "files": files}

        def result() -> nn.Module:  # under torchrun only rank 0 finishes: the others form the same average
            if average[0] is None:
                average[0] = _averaged_model(model, space, state["avg"], data, cfg)
            return average[0]

        return {"loss": loss, "save": save, "restore": restore, "finish": finish, "end_epoch": end_epoch,
                "lr": lambda e, it, steps: swa_learning_rate(cfg, e, it, steps), "result": result}

    return _run("swa", config, out, resume, data, progress, on_epoch_end, argv, overrides, build)


def _averaged_model(model: nn.Module, space: ParamSpace, avg: torch.Tensor, data: Dataset,
                    cfg: AverageConfig) -> nn.Module:
    swa = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in space.unflatten(avg.to(torch.float32)).items():
            swa.get_parameter(name).copy_(value)
    reestimate_bn(swa, data.statistics_batches(1000))
    return swa.eval()


def _common(cfg: AverageConfig, data: Dataset, spec) -> dict[str, Any]:
    return {"eval_split": data.eval_split, "synthetic": data.synthetic, "epochs": cfg.epochs, "model": spec,
            "dataset": data.describe(),
            "notes": "train_loss = train NLL + 0.5 * wd * ||w||^2; errors in percent; eval mode, unaugmented data"}


# The options that set SWA's rates, named when its training diverges (FGE and snapshots: the config's lr_flag).
_SWA_RATES = "--swa-lr (or --lr, before --swa-start)"


# ------------------------------------------------------------------ FGE and snapshot ensembles
def _ensemble_build(method: str, lr_fn, snapshot_when_step=None, snapshot_when_epoch=None):
    """Hooks for FGE / snapshot ensembles: snapshots' test probabilities are
    accumulated as they are taken (no weights kept in memory)."""

    def build(cfg: AverageConfig, model: nn.Module, spec, data: Dataset, out: Path | None):
        steps = steps_per_epoch(len(data.y_train), cfg.batch_size, rank_and_world()[1])
        if 0 < cfg.cycle * steps < 2:  # (no step at all is train's refusal)
            raise UserError(f"a cycle of {cfg.cycle} epoch is 1 step ({len(data.y_train)} training images in batches "
                            f"of {cfg.batch_size}): the rate never anneals and every snapshot is taken at its top; "
                            f"use a longer --cycle or a smaller --batch-size")
        # The members' summed test probabilities, from the first member on: as wide as the network's
        # output (a network may give more logits than the data has classes).
        state = {"probs": None, "members": []}

        def extra() -> dict:
            return {"probs": state["probs"], "members": list(state["members"])}

        def load_extra(d: dict) -> None:
            if d.get("probs") is not None:
                state["probs"] = d["probs"].to(device=data.device, dtype=torch.float64)
                state["members"] = list(d["members"])

        loss, save, restore = _model_hooks(model, spec, extra, load_extra)

        def snapshot(epoch: int, it: int | None = None) -> None:
            """``epoch``: 0-based within an epoch (after step ``it``), 1-based at its end (``it`` None)."""
            number = epoch + (0 if it is None else 1)  # the epoch the snapshot is taken in, from 1
            if not weights_finite(model):  # never a member, never saved
                raise Diverged(f"the weights became non-finite in epoch {number}, before snapshot "
                               f"{len(state['members']) + 1}")
            if not is_main():  # under torchrun rank 0 keeps the ensemble (its batch-norm statistics are saved)
                return
            log_probs = predict_log_probs(model, data)
            probs = log_probs.exp()
            state["probs"] = probs if state["probs"] is None else state["probs"] + probs
            k = len(state["members"]) + 1
            member = {"snapshot": k, "epoch": number,
                      "iteration": it, **{f"test_{a}": b for a, b in
                                          ensemble_metrics(probs[None].cpu().numpy(), data.y_test.cpu().numpy()).items()
                                          if a != "members"}}
            member["test_nll"] = nll_of(log_probs, data.y_test)  # its own: the probabilities' mean floors
            ens = ensemble_metrics((state["probs"] / k)[None].cpu().numpy(), data.y_test.cpu().numpy())
            member.update(ensemble_test_error=ens["error"], ensemble_test_nll=ens["nll"])
            state["members"].append(member)
            if out is not None:
                save_checkpoint(out / f"snapshot-{k:03d}.pt", model, spec,
                                meta={"method": method, **{a: b for a, b in member.items() if b is not None},
                                      "train_config": cfg.to_json(), "dataset": data.describe()})

        hooks = {"loss": loss, "save": save, "restore": restore, "lr": lambda e, it, s: lr_fn(cfg, e, it, s),
                 "result": lambda: model.eval()}
        if snapshot_when_step is not None:
            def after_step(epoch: int, it: int, steps: int) -> None:
                if snapshot_when_step(cfg, epoch, it, steps):
                    snapshot(epoch, it)

            hooks["after_step"] = after_step
        if snapshot_when_epoch is not None:
            def end_epoch(epoch: int) -> dict[str, Any]:
                if snapshot_when_epoch(cfg, epoch):
                    snapshot(epoch)
                return {"snapshots": len(state["members"])}

            hooks["end_epoch"] = end_epoch

        def finish() -> dict[str, Any]:
            members = state["members"]
            if not members:
                raise UserError("no snapshot was taken: --epochs must cover at least one cycle")
            k = len(members)
            ens = ensemble_metrics((state["probs"] / k)[None].cpu().numpy(), data.y_test.cpu().numpy())
            errors = [mm["test_error"] for mm in members]
            partial = cfg.epochs % cfg.cycle
            return {"ensemble": {"test_error": ens["error"], "test_nll": ens["nll"], "test_ece": ens["ece"], "members": k},
                    "cycle": cfg.cycle, "partial_cycle_epochs": partial,
                    "partial_cycle_snapshot": bool(partial) and k > cfg.epochs // cfg.cycle,
                    "members": members, "member_test_error_mean": float(np.mean(errors)),
                    "member_test_error_best": float(np.min(errors)), "final": _metrics_of(model, data, cfg.wd),
                    **_common(cfg, data, spec),
                    "files": [f"snapshot-{i + 1:03d}.pt" for i in range(k)]}

        hooks["finish"] = finish
        return hooks

    return build


def _fge_lr(cfg: AverageConfig, epoch: int, it: int, steps: int) -> float:
    return fge_learning_rate(cfg.lr, cfg.lr_min, cfg.cycle, epoch, it, steps)


def _fge_snapshot(cfg: AverageConfig, epoch: int, it: int, steps: int) -> bool:
    return (epoch % cfg.cycle) * steps + it == fge_snapshot_iteration(cfg.cycle, steps)


def run_fge(config: AverageConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
            data: Dataset | None = None, progress: bool | None = None, on_epoch_end=None,
            argv: Sequence[str] | None = None, **overrides: Any) -> AverageResult:
    """Fast geometric ensembling from ``from_ckpt``: ``lr`` = alpha_1,
    ``lr_min`` = alpha_2, ``cycle`` epochs per cycle; ``snapshot-NNN.pt``
    at each minimum of the rate; the summary has each snapshot's and the
    ensemble's test error and NLL."""
    if not (overrides.get("from_ckpt") or (config is not None and config.from_ckpt)):
        raise UserError("FGE starts from a trained network: give --from CKPT (from_ckpt= in Python)")
    return _run("fge", config, out, resume, data, progress, on_epoch_end, argv, overrides,
                _ensemble_build("fge", _fge_lr, snapshot_when_step=_fge_snapshot))


def run_snapshots(config: AverageConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
                  data: Dataset | None = None, progress: bool | None = None, on_epoch_end=None,
                  argv: Sequence[str] | None = None, **overrides: Any) -> AverageResult:
    """Snapshot ensemble: cosine annealing from ``lr`` restarted every
    ``cycle`` epochs, a snapshot at the end of each cycle."""
    return _run("snapshots", config, out, resume, data, progress, on_epoch_end, argv, overrides,
                _ensemble_build("snapshots",
                                lambda cfg, e, it, s: snapshot_learning_rate(cfg.lr, cfg.cycle, e, it, s),
                                snapshot_when_epoch=lambda cfg, epoch: epoch % cfg.cycle == 0))
