"""Fitting a curve of low loss between two endpoints (Garipov et al. 2018).

The papers' objective draws t ~ U(0, 1) for each minibatch and minimises the
loss at phi(t) plus weight decay on phi(t):

    E_t [ NLL(phi(t)) + wd/2 ||phi(t)||^2 ]                         (uniform)

``--t-samples K`` draws K values of t per minibatch and evaluates them
together (the loss is their mean). ``--objective arclength`` minimises the
exact arc-length-weighted objective instead,

    integral L(phi(t)) ||phi'(t)|| dt / integral ||phi'(t)|| dt     (arclength)

which is the loss averaged uniformly over the curve's length. Its estimate
here is  mean_k L(phi(t_k)) ||phi'(t_k)|| / Len  with t_k ~ U(0, 1) and Len
the length by Gauss-Legendre quadrature (exact for a polygonal chain, error
below 1e-6 relative for a Bezier curve); autograd differentiates through
both the speeds and Len. The numerator is an unbiased estimate and Len is
deterministic, so the gradient is unbiased up to the quadrature error: the
only approximation.

Batch norm runs in train mode (batch statistics) at phi(t); the running
statistics are re-estimated when the curve is evaluated.

Under ``torchrun`` the fit is data parallel like ``landscape train``: the
curve's free control points are the module DistributedDataParallel wraps,
each rank evaluates its slice of every batch at the same t (rank 0 draws it
and broadcasts it), and the gradients are averaged. Batch norm sees each
rank's slice; no buffers are broadcast (the curve's only buffers are its
fixed endpoints, the same on every rank).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from landscape.brief import brief_repr
from landscape.checkpoint import (
    Checkpoint,
    check_state_dict,
    load_checkpoint,
    load_model,
    require_network,
    save_checkpoint,
)
from landscape.data import Dataset, refuse_given_data_path
from landscape.device import resolve_device, seed_everything
from landscape.errors import UserError, check_keywords, check_whole
from landscape.bn import reestimate_bn
from landscape.evaluate import copy_network, evaluate_model, evaluate_points, forward_points
from landscape.inputs import (DATA_FIELDS, check_same_data, data_settings,
                              named_model, network_of, note_other_buffers, note_split_leak, own_network,
                              refuse_infinite, refuse_same_weights, require_architecture, run_data)
from landscape.models import check_spec_fits, check_unsaved, from_spec, model_spec, stored_spec
from landscape.sweep import process_device, rank_and_world
from landscape.train import Task, TrainConfig, _say, prepare_run, run_training
from landscape.weights import ParamSpace

from .base import CURVES, Curve, create_curve, frozen_pin

__all__ = ["ConnectConfig", "CurveResult", "LoadedCurve", "fit_curve", "load_curve", "save_curve", "OBJECTIVES"]

OBJECTIVES = ("uniform", "arclength")


@dataclass
class ConnectConfig(TrainConfig):
    """Settings of ``landscape connect`` (saved as ``config.json``)."""

    start: str = ""
    end: str = ""
    curve: str = "bezier"
    bends: int = 1
    free_start: bool = False
    free_end: bool = False
    objective: str = "uniform"
    t_samples: int = 1

    def validate(self) -> None:
        super().validate()
        if isinstance(self.curve, str) and self.curve.lower() in CURVES:  # the papers' code says Bezier, PolyChain
            self.curve = self.curve.lower()
        if self.curve not in CURVES:
            raise UserError(f"unknown curve {self.curve!r}; choose one of: {', '.join(sorted(CURVES))}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        self.t_samples, self.bends = check_whole("--t-samples", self.t_samples), check_whole("--bends", self.bends)
        if self.t_samples < 1:
            raise UserError(f"--t-samples must be at least 1, got {self.t_samples}")
        if self.bends < 0:
            raise UserError(f"--bends must be >= 0, got {self.bends}")


@brief_repr
@dataclass
class LoadedCurve:
    """A curve read back from disk: the anchors and the network they parametrise."""

    curve: Curve
    model: nn.Module  # template: the architecture, with the start endpoint's buffers
    spec: dict[str, Any]
    meta: dict[str, Any]
    path: Path | None = None


@brief_repr
@dataclass
class CurveResult:
    curve: Curve
    model: nn.Module
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    out: Path | None


def _endpoint_model(start: Checkpoint, end: Checkpoint, cfg: ConnectConfig, data: Dataset,
                    user_named: bool = False) -> tuple[nn.Module, dict, list[str]]:
    """Build the architecture of the endpoints and check both fit it, by name;
    also the names of the buffers other than batch-norm statistics in which
    the end differs from the start (noted: every point keeps the start's).
    ``user_named``: the user named the network (``--model``), so a factory the
    checkpoint names is theirs to trust."""
    if start.model is not None:
        spec = stored_spec(start.model, cfg.model)  # cfg.model: the user's factory for a name not built here
    else:
        spec = model_spec(cfg.model, data.num_classes, data.input_shape, **cfg.model_kwargs)
    model = from_spec(spec, trusted=start.model is None or user_named, source=start.path)
    name = f"model '{spec['name']}'" + (f" of {start.path}" if start.model is not None else " (--model)")
    check_state_dict(model, start.state_dict, str(start.path), name)
    check_state_dict(model, end.state_dict, str(end.path), name)
    check_unsaved(model, [start, end], name=spec["name"],
                  rebuild=lambda: from_spec(spec, trusted=start.model is None or user_named, source=start.path))
    if end.model is not None and start.model is not None and end.model["name"] != start.model["name"]:
        raise UserError(f"{start.path} holds a '{start.model['name']}' but {end.path} a '{end.model['name']}'")
    check_spec_fits(spec, data.num_classes, data.input_shape, start.path, f"dataset '{data.name}'")
    kept = note_other_buffers(model, [start, end])
    model.load_state_dict(start.state_dict)
    return model, spec, kept


def connect_config(cls: type[ConnectConfig], start_ckpt: Checkpoint, end_ckpt: Checkpoint, start: str | Path,
                   end: str | Path, config: ConnectConfig | None,
                   overrides: dict[str, Any]) -> tuple[ConnectConfig, bool]:
    """The settings of a fit between two endpoints, validated: ``config``
    and ``overrides`` over the data settings the start endpoint was trained
    with (the same on both ends, or refused), its architecture recorded.
    Also whether the user named the network (``--model``), which makes a
    factory the checkpoints name theirs to trust."""
    check_keywords(cls, overrides, "fit_curve" if cls is ConnectConfig else "fit_posterior_curve")
    named = named_model(config, overrides)  # before the checkpoint's own name joins the overrides
    require_architecture(start_ckpt, named)
    if start_ckpt.model is not None:  # the architecture is the start endpoint's, and the config records it
        overrides = dict(overrides, **network_of(start_ckpt, named, overrides.get("model_kwargs")))
    given = {f.name for f in fields(cls)} & set(overrides)
    base = asdict(config) if config is not None else {}
    check_same_data([start_ckpt, end_ckpt], {**{k: v for k, v in base.items() if k in DATA_FIELDS}, **overrides})
    inherited = {k: v for k, v in data_settings(start_ckpt).items() if k not in given and k not in base}
    # absolute: a later command run from another folder finds the same files (curve's note of the ends' own
    # errors read another run's summary through a relative path)
    cfg = cls(**{**inherited, **base, **overrides, "start": os.path.abspath(start), "end": os.path.abspath(end)})
    refuse_given_data_path(cfg, overrides, base)
    cfg.validate()
    return cfg, named is not None


def start_curve(cfg: ConnectConfig, space: ParamSpace, ends: Sequence[torch.Tensor], ckpts: Sequence[Checkpoint],
                point: str, what: str, device: torch.device) -> Curve:
    """The curve a fit starts from, between the flat ``ends`` read from
    ``ckpts`` (infinite values and two equal ends refused, naming the
    files), on ``device``."""
    for v, ck in zip(ends, ckpts):
        refuse_infinite(v, ck.path)
    refuse_same_weights(ends, [cfg.start, cfg.end], f"a curve between them would join a {point} to itself; give two "
                                                    f"different {what}")
    curve = create_curve(cfg.curve, space, ends[0], ends[1], bends=cfg.bends,
                         fix_start=not cfg.free_start, fix_end=not cfg.free_end)
    return curve.to(device)


def draw_t(k: int, device: torch.device) -> torch.Tensor:
    """K values of t ~ U(0, 1) for a minibatch; under torchrun rank 0's, so
    every rank fits the same points on its slice of the batch."""
    t = torch.rand(k, device=device, dtype=torch.float64)
    if rank_and_world()[1] > 1:
        dist.broadcast(t, src=0)
    return t


def path_objective(cfg: ConnectConfig, curve: Curve, t: torch.Tensor, per_t: torch.Tensor) -> torch.Tensor:
    """The minibatch's objective from the loss at each sampled t: their mean
    (uniform), or weighted by the speed over the length (arclength)."""
    if cfg.objective == "arclength":
        return (per_t * curve.speed(t)).mean() / curve.length()
    return per_t.mean()


def restore_anchors(curve: Curve, ckpt: Checkpoint, space: ParamSpace, cfg: ConnectConfig,
                    what: str = "network") -> None:
    """A resumed fit's control points from its ``last.pt``, after checking
    that each fixed end is still the endpoint file's weights: a file replaced
    since the run began would leave a curve that no longer ends at the
    network (or posterior) the results name."""
    stored = stored_anchors(ckpt, space)
    now = curve.anchors().detach()
    for name, path, i, fixed in (("start", cfg.start, 0, not cfg.free_start), ("end", cfg.end, -1, not cfg.free_end)):
        if fixed and not torch.equal(stored[i].to(now.device, now.dtype), now[i]):
            raise UserError(f"{path} is not the {what} this run's curve {name}s at (the file changed since "
                            f"it began); start again with another --out")
    curve.load_anchors(stored)


def fit_curve(
    start: str | Path,
    end: str | Path,
    out: str | Path | None = None,
    *,
    config: ConnectConfig | None = None,
    resume: bool = False,
    data: Dataset | None = None,
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    argv: Sequence[str] | None = None,
    **overrides: Any,
) -> CurveResult:
    """Fit a Bezier curve or polygonal chain between two endpoint checkpoints.

    ``fit_curve("runs/a/model.pt", "runs/b/model.pt", "runs/ab", curve="bezier",
    bends=1, epochs=30)``. Data settings default to those the start endpoint
    was trained with. Writes the same files as ``train`` (``model.pt`` holds
    the curve) and returns the curve, its template network, the summary (the
    curve and the straight line evaluated at t = 0, 1/2, 1) and per-epoch
    metrics.
    """
    start_ckpt, end_ckpt = require_network(load_checkpoint(start)), require_network(load_checkpoint(end))
    cfg, user_named = connect_config(ConnectConfig, start_ckpt, end_ckpt, start, end, config, overrides)
    device = process_device(cfg.device)  # under torchrun: joins the process group
    if any(ck.kind == "variational" for ck in (start_ckpt, end_ckpt)):
        _say(f"note: {start} or {end} holds a variational posterior; connect joins the networks of its means (to "
             f"join the posteriors, means and variances, use 'landscape vi-connect')")
    out = Path(out) if out is not None else None
    start_epoch, state, metrics = prepare_run(out, cfg, resume, "connect")
    if start_epoch == -1:
        loaded = load_curve(out / "model.pt", model=cfg.model if user_named else None)
        from landscape.checkpoint import read_json, read_jsonl

        summary = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        return CurveResult(loaded.curve, loaded.model, summary, read_jsonl(out / "metrics.jsonl"), out)
    data = run_data(cfg, device, data, [start_ckpt, end_ckpt], config, overrides)
    for ck in (start_ckpt, end_ckpt):  # once the split is accepted; after joining the group: rank 0 alone says it
        note_split_leak((ck.meta or {}).get("train_config"), asdict(cfg), ck.path)

    template, spec, kept = _endpoint_model(start_ckpt, end_ckpt, cfg, data, user_named=user_named)
    space = ParamSpace.of(template)
    seed_everything(cfg.seed)
    # the weights: batch-norm buffers alone make no second point
    ends = [space.flatten(ck.state_dict, source=str(ck.path)) for ck in (start_ckpt, end_ckpt)]
    curve = start_curve(cfg, space, ends, [start_ckpt, end_ckpt], "point", "endpoints", device)
    template.to(device)
    buffers = {n: b.detach() for n, b in template.named_buffers()}
    k = cfg.t_samples

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        template.train()
        t = draw_t(k, device)
        points = curve.points(t)  # (K, P)
        batched = {n: b.unsqueeze(0).repeat(k, *([1] * b.dim())) for n, b in buffers.items()}
        logits = forward_points(template, space.unflatten(points), batched, x)  # (K, B, classes)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(k), reduction="none").view(k, -1).mean(dim=1)
        per_t = nll + 0.5 * cfg.wd * space.squared_norm(points)  # (K,); frozen parameters are not decayed
        return path_objective(cfg, curve, t, per_t), logits

    def save(path: Path, kind: str, extra: dict[str, Any]) -> None:
        extra["meta"] = dict(extra["meta"], start=cfg.start, end=cfg.end,
                             **({"buffers_from_start": kept} if kept else {}))  # the end's, which no point has
        save_curve(path, curve, template, spec, **extra)

    def restore(ckpt: Checkpoint) -> None:
        restore_anchors(curve, ckpt, space, cfg)

    def finish() -> dict[str, Any]:
        return _fit_summary(curve, template, data, cfg)

    midpoint = copy_network(template)

    def epoch_eval() -> dict[str, Any]:
        return _midpoint_test(curve, space, midpoint, data, cfg.amp)

    task = Task(module=curve, loss=loss, save=save, restore=restore, finish=finish, epoch_eval=epoch_eval,
                weight_decay=0.0, spec=spec, command="connect", kind="curve", sync_buffers=False,
                network=template, after_step=frozen_pin(curve.free, space))  # frozen parameters stay on the line
    summary, metrics = run_training(task, cfg, data, out, start_epoch=start_epoch, state=state, metrics=metrics,
                                    progress=progress, on_epoch_end=on_epoch_end, argv=argv)
    return CurveResult(curve=curve, model=template.eval(), summary=summary, metrics=metrics, out=out)


MIDPOINT_BN_BATCHES = 5  # of 1000 training samples: the per-epoch estimate's batch-norm statistics


@torch.no_grad()
def _midpoint_test(curve: Curve, space: ParamSpace, net: nn.Module, data: Dataset, amp: bool) -> dict[str, Any]:
    """The curve's midpoint phi(1/2) on the test set, for each epoch's record:
    batch norm re-estimated from the first 5000 training samples (a tenth of a
    CIFAR epoch's cost; the summary's evaluation uses them all)."""
    t = torch.tensor([0.5], dtype=torch.float64, device=data.device)
    net.load_state_dict(space.unflatten(curve.points(t)[0].detach()), strict=False)
    reestimate_bn(net, data.statistics_batches(1000), max_batches=MIDPOINT_BN_BATCHES)
    m = evaluate_model(net, data, "test", amp=amp)
    return {"mid_test_nll": m["nll"], "mid_test_error": m["error"]}


def _fit_summary(curve: Curve, template: nn.Module, data: Dataset, cfg: ConnectConfig) -> dict[str, Any]:
    """The curve and the straight line at t = 0, 1/2, 1 (batch norm re-estimated)."""
    with torch.no_grad():
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, device=data.device)
        W = curve.anchors().detach()
        coeffs = torch.cat([curve.coefficients(t), curve.line_coefficients(t)])
        m = evaluate_points(template, W, coeffs, data, wd=cfg.wd)
        length = float(curve.length())
        line_length = float((W[-1] - W[0]).double().norm())
    keys = ("train_loss", "train_error", "test_nll", "test_error")
    return {
        "curve": {"type": cfg.curve, "bends": cfg.bends, "length": length,
                  **{f"{key}_at": [float(v) for v in m[key][:3]] for key in keys}},
        "line": {"length": line_length, **{f"{key}_at": [float(v) for v in m[key][3:]] for key in keys}},
        "t": [0.0, 0.5, 1.0],
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "epochs": cfg.epochs,
        "dataset": data.describe(),
        "checkpoint": "model.pt",
        "notes": "the curve and the line between its endpoints at t = 0, 1/2, 1; batch norm re-estimated; "
                 "run 'landscape curve' for the full evaluation",
    }


# ---------------------------------------------------------------------------- files
def save_curve(path: str | Path, curve: Curve, template: nn.Module, spec: dict[str, Any], **extra: Any) -> Path:
    """Write a curve checkpoint: the template network's state dict (the start
    endpoint, so ``load_model`` gives that network), the model spec, and
    ``curve`` = {type, bends, fix_start, fix_end, names, anchors (A, P)}."""
    info = dict(curve.describe(), names=list(curve.space.names), anchors=curve.anchors().detach().cpu().clone())
    return save_checkpoint(path, template, spec, kind="curve", curve=info, **extra)


def is_posterior_curve(ckpt: Checkpoint) -> bool:
    """Whether a curve checkpoint joins two variational posteriors (``landscape vi-connect``)."""
    return ckpt.kind == "curve" and "variational" in ckpt.extra


def stored_anchors(ckpt: Checkpoint, space: ParamSpace) -> torch.Tensor:
    info = ckpt.extra.get("curve")
    if ckpt.kind != "curve" or not isinstance(info, dict) or "anchors" not in info:
        raise UserError(f"{ckpt.path}: not a curve checkpoint (written by 'landscape connect')")
    if list(info.get("names", [])) != list(space.names):
        raise UserError(f"{ckpt.path}: the curve's parameter names do not match its model")
    anchors = info["anchors"]
    if anchors.dim() != 2 or anchors.shape[1] != space.numel:
        raise UserError(f"{ckpt.path}: curve anchors of shape {tuple(anchors.shape)} do not fit {space.numel} parameters")
    return anchors


def load_curve(path: str | Path | Checkpoint, device: str | torch.device = "cpu", model: str | None = None,
               model_kwargs: dict | None = None) -> LoadedCurve:
    """Read a curve checkpoint (or take it already read): the curve (anchors as written) and its template network.
    ``model`` / ``model_kwargs``: the user's ``--model`` / ``--model-kwargs``,
    which may only describe the curve's own network (and so trust a
    ``package.module:factory`` it names)."""
    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    if ckpt.kind != "curve":
        raise UserError(f"{ckpt.path}: a '{ckpt.kind}' checkpoint, not a curve; make one with 'landscape connect'")
    if is_posterior_curve(ckpt):
        raise UserError(f"{ckpt.path}: a curve between variational posteriors (written by 'landscape vi-connect'); "
                        f"'landscape curve' (evaluate_posterior_curve from Python) evaluates it, the planes and subspaces "
                        f"take curves between networks")
    template = load_model(ckpt, own_network(ckpt, model, model_kwargs), template=True)
    space = ParamSpace.of(template)
    anchors = stored_anchors(ckpt, space)
    info = ckpt.extra["curve"]
    curve = create_curve(info["type"], space, anchors[0], anchors[-1], bends=int(info["bends"]),
                         fix_start=bool(info["fix_start"]), fix_end=bool(info["fix_end"]))
    curve.load_anchors(anchors)
    device = resolve_device(device)
    return LoadedCurve(curve=curve.to(device), model=template.to(device).eval(),
                       spec=ckpt.model, meta=ckpt.meta, path=ckpt.path)
