"""Mode connectivity between Bayesian networks: curves joining two variational
posteriors (the HWA talk's open question, "observe mode connectivity?").

A posterior of ``landscape vi`` is a point theta of its own parameter space:
the means (with the point estimates: biases, batch-norm scales) and the
log-variance parameters (log sigma², or log alpha for variational dropout).
``vi-connect`` fits a Bezier curve or polygonal chain theta(t) between two
posteriors' theta by minimising the negative ELBO per training sample at
theta(t), averaged over t ~ U(0, 1) as Garipov et al. average the loss:

    E_t [ E_{q(w; theta(t))} NLL(w) + T KL(q(.; theta(t)) || prior) / N ]

The first term is sampled as ``landscape vi`` samples it (the local
reparameterisation trick, one draw per minibatch and t), T is the
temperature the posteriors were trained with (``--temperature`` to change
it), and the gradient reaches the curve's control points through
``torch.func.functional_call`` of the posterior network at theta(t). The
straight line is theta(t) = (1 - t) theta_a + t theta_b: the means and
the log-variance parameters (log sigma², or log alpha) interpolate
linearly.

``landscape curve`` evaluates such a curve (:func:`evaluate_posterior_curve`):
at each t of the curve and of the line, the posterior theta(t)'s negative
ELBO per sample (the mean train NLL of S weight draws plus KL / N,
untempered, as ``vi-eval`` reports it), the network of its means (the
deterministic scheme) and the ensemble of the S draws, every draw with batch
norm re-estimated. The draws use the same standard normal noise at every t
and on both paths (common random numbers: w = m(t) + s(t) e_k), so the
differences along t are the posterior's, not the sampling's; the noise is
the one ``vi-eval --seed`` draws, so t = 0 and t = 1 reproduce ``vi-eval``
of the endpoints.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from landscape.bn import reestimate_bn
from landscape.checkpoint import (Checkpoint, load_checkpoint, load_model, read_json, read_jsonl, save_checkpoint)
from landscape.data import Dataset
from landscape.device import check_fits, resolve_device, seed_everything
from landscape.errors import UserError, check_nonnegative, check_whole
from landscape.evaluate import METRICS, evaluate_model, evaluate_points, precision_amp
from landscape.inputs import check_data_options, note_split_leak, own_network, run_data, stored_data
from landscape.metrics import ensemble_metrics, path_stats
from landscape.swag import check_draws
from landscape.sweep import STORE, begin_result, finish_result, process_device, request_key, run_sweep
from landscape.train import Task, _say, prepare_run, run_training
from landscape.variational import (FAMILIES, PRIORS, WD_REFUSED, VariationalNet, posterior_moments, posterior_net,
                                   stochastic_names)
from landscape.weights import ParamSpace

from .base import Curve, create_curve
from .evaluate import CurveEvaluation
from .fit import (ConnectConfig, CurveResult, LoadedCurve, MIDPOINT_BN_BATCHES, _endpoint_model, connect_config,
                  draw_t, is_posterior_curve, path_objective, restore_anchors, start_curve, stored_anchors)

__all__ = ["PosteriorConnectConfig", "fit_posterior_curve", "load_posterior_curve", "evaluate_posterior_curve",
           "RESULT"]

RESULT = "posterior-curve.npz"


@dataclass
class PosteriorConnectConfig(ConnectConfig):
    """Settings of ``landscape vi-connect`` (saved as ``config.json``).
    ``temperature`` None: the start posterior's training temperature (1 when
    it records none). ``optimizer``: adam (as ``vi`` trains) or sgd."""

    lr: float = 0.01
    wd: float = 0.0
    optimizer: str = "adam"
    temperature: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.wd:
            raise UserError(WD_REFUSED)
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.temperature is not None:
            check_nonnegative("--temperature", self.temperature)


def _require_posterior(ck: Checkpoint) -> Checkpoint:
    if ck.kind != "variational":
        raise UserError(f"{ck.path}: a '{ck.kind}' checkpoint, not a variational posterior; vi-connect joins two "
                        f"posteriors written by 'landscape vi' (vi.pt, hwa.pt), 'landscape connect' two networks")
    return ck


def _same_posterior_kind(a: VariationalNet, b: VariationalNet, paths: Sequence[object]) -> None:
    if (a.family, a.prior, a.prior_scale) != (b.family, b.prior, b.prior_scale):
        raise UserError(f"{paths[0]} holds a posterior of family {a.family} with a {a.prior} prior (scale "
                        f"{a.prior_scale:g}), {paths[1]} one of family {b.family} with a {b.prior} prior (scale "
                        f"{b.prior_scale:g}); a curve "
                        f"joins posteriors of one family and prior")
    if a.names != b.names:  # one fitted by a build that gave frozen layers a posterior, one after
        raise UserError(f"{paths[0]} puts a posterior on the weights {', '.join(a.names)}, {paths[1]} on "
                        f"{', '.join(b.names)}; a curve joins posteriors over the same weights")


def _held(vnet: VariationalNet) -> torch.Tensor | None:
    """A mask over ``ParamSpace.of(vnet)`` of the coordinates training never
    moves (a variance network's means, zero), or None."""
    parts = [torch.full((p.numel(),), not p.requires_grad) for p in vnet.parameters()]
    mask = torch.cat(parts)
    return mask if bool(mask.any()) else None


@torch.no_grad()
def _load_point(vnet: VariationalNet, space: ParamSpace, theta: torch.Tensor) -> VariationalNet:
    """``vnet`` (a posterior without hooks) with its parameters set to the flat ``theta``."""
    for name, value in space.unflatten(theta.to(torch.float32)).items():
        owner, _, leaf = name.rpartition(".")
        getattr(vnet.get_submodule(owner), leaf).copy_(value)
    return vnet


def fit_posterior_curve(
    start: str | Path,
    end: str | Path,
    out: str | Path | None = None,
    *,
    config: PosteriorConnectConfig | None = None,
    resume: bool = False,
    data: Dataset | None = None,
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    argv: Sequence[str] | None = None,
    **overrides: Any,
) -> CurveResult:
    """Fit a curve between two variational posteriors (``vi.pt`` / ``hwa.pt``)
    of one family, prior and architecture: ``fit_posterior_curve("a/vi.pt",
    "b/vi.pt", "ab", bends=1, epochs=20)``. Writes the files ``connect``
    writes (``model.pt`` holds the curve over the posterior's parameters);
    the summary has the curve and the line at t = 0, 1/2, 1 (the network of
    the means and KL / N; ``landscape curve`` gives the ELBO and the
    ensembles)."""
    ckpts = [_require_posterior(load_checkpoint(p)) for p in (start, end)]
    cfg, user_named = connect_config(PosteriorConnectConfig, ckpts[0], ckpts[1], start, end, config, overrides)
    if cfg.temperature is None:
        trained = [float(((ck.meta or {}).get("train_config") or {}).get("temperature", 1.0)) for ck in ckpts]
        cfg.temperature = trained[0]
        if trained[0] != trained[1]:
            _say(f"note: {start} was trained at temperature {trained[0]:g}, {end} at {trained[1]:g}; the curve is "
                 f"fitted at {trained[0]:g} (--temperature to choose)")
    device = process_device(cfg.device)
    out = Path(out) if out is not None else None
    start_epoch, state, metrics = prepare_run(out, cfg, resume, "vi-connect")
    named = cfg.model if user_named else None
    if start_epoch == -1:
        loaded = load_posterior_curve(out / "model.pt", model=named)
        summary = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        return CurveResult(loaded.curve, loaded.model, summary, read_jsonl(out / "metrics.jsonl"), out)
    data = run_data(cfg, device, data, ckpts, config, overrides)
    for ck in ckpts:  # once the split is accepted
        note_split_leak((ck.meta or {}).get("train_config"), cfg.to_json(), ck.path)
    posteriors = [posterior_net(ck, device, named) for ck in ckpts]
    _same_posterior_kind(*posteriors, paths=[start, end])
    net, spec, _ = _endpoint_model(ckpts[0], ckpts[1], cfg, data, user_named=user_named)
    a = posteriors[0]
    template = VariationalNet(net, a.family, prior=a.prior, prior_scale=a.prior_scale,  # its hooks sample the noise
                              names=a.names)
    space = ParamSpace.of(template)
    seed_everything(cfg.seed)
    ends = [space.flatten(v, source=str(ck.path)).cpu() for v, ck in zip(posteriors, ckpts)]
    curve = start_curve(cfg, space, ends, ckpts, "posterior", "posteriors", device)
    held = _held(template)
    template.to(device)
    held = held.to(device) if held is not None else None
    n_train, k = len(data.y_train), cfg.t_samples
    # Batch norm in train mode updates the running statistics it is given: copies, as connect's, so that the
    # template keeps the start's (what model.pt holds) and a resumed fit saves what an unbroken one does.
    buffers = {n: b.detach() for n, b in template.named_buffers()}

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        template.train()
        t = draw_t(k, device)
        points = curve.points(t)  # (K, P)
        if held is not None:  # a variance network's means stay zero along the curve, as in training
            points = torch.where(held, points.detach(), points)
        params = space.unflatten(points)
        terms = [functional_call(template, {**{n: p[i] for n, p in params.items()},
                                            **{n: b.clone() for n, b in buffers.items()}}, (x,), {"with_kl": True})
                 for i in range(k)]
        logits = torch.stack([logit for logit, _ in terms])  # (K, B, classes)
        kl = torch.stack([d for _, d in terms]).float()
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(k), reduction="none").view(k, -1).mean(dim=1)
        return path_objective(cfg, curve, t, nll + cfg.temperature * kl / n_train), logits

    def save(path: Path, kind: str, extra: dict[str, Any]) -> None:
        extra["meta"] = dict(extra["meta"], start=cfg.start, end=cfg.end)  # absolute (connect_config)
        _save(path, curve, template, spec, **extra)

    def restore(ckpt: Checkpoint) -> None:
        restore_anchors(curve, ckpt, space, cfg, "posterior")

    probe = copy.deepcopy(template)
    probe.remove_hooks()

    def epoch_eval() -> dict[str, Any]:
        with torch.no_grad():
            point = curve.points(torch.tensor([0.5], dtype=torch.float64, device=device))[0]
            _load_point(probe, space, point)
            kl = float(probe.kl(exact=True))  # as the summary and the evaluation report it
            reestimate_bn(probe.net, data.statistics_batches(1000), max_batches=MIDPOINT_BN_BATCHES)
            m = evaluate_model(probe.net, data, "test", amp=cfg.amp)
        return {"mid_test_nll": m["nll"], "mid_test_error": m["error"], "mid_kl_per_sample": kl / n_train}

    def finish() -> dict[str, Any]:
        return _fit_summary(curve, probe, data, cfg)

    def make_optimizer(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return (torch.optim.Adam(params, lr=cfg.lr) if cfg.optimizer == "adam" else
                torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum))

    task = Task(module=curve, loss=loss, save=save, restore=restore, finish=finish, epoch_eval=epoch_eval,
                weight_decay=0.0, spec=spec, command="vi-connect", kind="curve", sync_buffers=False, network=template,
                optimizer=make_optimizer,
                lr_flag="--lr" + (f" (or --temperature {cfg.temperature:g}, which scales the KL term)"
                                  if cfg.temperature > 1 else ""))
    summary, metrics = run_training(task, cfg, data, out, start_epoch=start_epoch, state=state, metrics=metrics,
                                    progress=progress, on_epoch_end=on_epoch_end, argv=argv)
    template.remove_hooks()
    _load_point(probe, space, curve.anchors()[0].detach())  # the start posterior, as load_posterior_curve gives
    return CurveResult(curve=curve, model=probe.eval(), summary=summary, metrics=metrics, out=out)


def _posterior_rows(vnet: VariationalNet, space: ParamSpace, thetas: torch.Tensor,
                    noise: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """For each theta (N, P_theta): the flat means over the network's
    parameters followed by the draws m + s e_k of ``noise`` (S, P) rows, as
    (N (1 + S), P); and KL(q || prior) at each theta (N,), in float64."""
    net_space = ParamSpace.of(vnet.net)
    rows, kls = [], []
    for theta in thetas:
        _load_point(vnet, space, theta)
        mean, std, kl = posterior_moments(vnet, net_space)
        rows.append(mean[None])
        if noise is not None:
            rows.append(mean + std * noise)
        kls.append(kl)
    return torch.cat(rows), np.array(kls, dtype=np.float64)


def _fit_summary(curve: Curve, probe: VariationalNet, data: Dataset, cfg: PosteriorConnectConfig) -> dict[str, Any]:
    """The curve and the line at t = 0, 1/2, 1: the network of the means
    (batch norm re-estimated) and KL / N."""
    space = ParamSpace.of(probe)
    n_train = len(data.y_train)
    with torch.no_grad():
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, device=data.device)
        W = curve.anchors().detach()
        thetas = torch.cat([curve.coefficients(t), curve.line_coefficients(t)]).to(W.dtype) @ W
        means, kls = _posterior_rows(probe, space, thetas)
        m = evaluate_points(probe.net, means, np.eye(len(means)), data, wd=0.0)
        lengths = (float(curve.length()), float((W[-1] - W[0]).double().norm()))
    keys = ("train_loss", "train_error", "test_nll", "test_error")
    parts = {}
    for name, sl, length in (("curve", slice(0, 3), lengths[0]), ("line", slice(3, 6), lengths[1])):
        parts[name] = {"length": length, **{f"mean_{key}_at": [float(v) for v in m[key][sl]] for key in keys},
                       "kl_per_sample_at": [float(v) / n_train for v in kls[sl]]}
    parts["curve"].update(type=cfg.curve, bends=cfg.bends)
    return {**parts, "t": [0.0, 0.5, 1.0], "temperature": cfg.temperature, "family": probe.family,
            "prior": probe.prior, "eval_split": data.eval_split, "synthetic": data.synthetic, "epochs": cfg.epochs,
            "dataset": data.describe(), "checkpoint": "model.pt",
            "notes": "a curve between two variational posteriors, over their means and log-variance parameters; "
                     "mean_* = the network of the posterior means at t = 0, 1/2, 1 (batch norm re-estimated), "
                     "kl_per_sample = KL(q || prior) / train size; run 'landscape curve' for the ELBO and the "
                     "ensembles along the curve and the line"}


# ---------------------------------------------------------------------------- files
def _save(path: Path, curve: Curve, vnet: VariationalNet, spec: dict[str, Any], **extra: Any) -> Path:
    """A posterior curve checkpoint: the start's network of means (state dict,
    so ``load_model`` gives that network), the curve over ``ParamSpace.of``
    the posterior network, and the posterior's family and prior."""
    info = dict(curve.describe(), names=list(curve.space.names), anchors=curve.anchors().detach().cpu().clone())
    posterior = {"family": vnet.family, "prior": vnet.prior, "prior_scale": vnet.prior_scale,
                 "names": list(vnet.names)}
    return save_checkpoint(path, vnet.net, spec, kind="curve", curve=info, variational=posterior,
                           **extra)


def load_posterior_curve(path: str | Path | Checkpoint, device: str | torch.device = "cpu",
                         model: str | None = None, model_kwargs: dict | None = None) -> LoadedCurve:
    """Read a curve written by ``vi-connect``: the curve and its posterior
    network (a :class:`~landscape.variational.VariationalNet` without hooks,
    the start's means inside) as ``LoadedCurve.model``."""
    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    if not is_posterior_curve(ckpt):
        raise UserError(f"{ckpt.path}: not a curve between variational posteriors; make one with "
                        f"'landscape vi-connect'")
    info = ckpt.extra["variational"]
    if not isinstance(info, dict) or info.get("family") not in FAMILIES or info.get("prior") not in PRIORS:
        raise UserError(f"{ckpt.path}: the posterior's entry is damaged (unknown family or prior)")
    scale = info.get("prior_scale", 1.0)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserError(f"{ckpt.path}: the posterior's prior_scale is {scale!r}, not a finite number > 0")
    net = load_model(ckpt, own_network(ckpt, model, model_kwargs), template=True)
    names = info.get("names")
    if names is not None and list(names) not in (stochastic_names(net), stochastic_names(net, frozen=True)):
        raise UserError(f"{ckpt.path}: the posterior's weights do not match its network's layers")
    vnet = VariationalNet(net, info["family"], prior=info["prior"], prior_scale=float(scale),
                          names=None if names is None else list(names))
    vnet.remove_hooks()
    space = ParamSpace.of(vnet)
    anchors = stored_anchors(ckpt, space)
    c = ckpt.extra["curve"]
    curve = create_curve(c["type"], space, anchors[0], anchors[-1], bends=int(c["bends"]),
                         fix_start=bool(c["fix_start"]), fix_end=bool(c["fix_end"]))
    curve.load_anchors(anchors)
    device = resolve_device(device)
    return LoadedCurve(curve=curve.to(device), model=vnet.to(device).eval(), spec=ckpt.model, meta=ckpt.meta,
                       path=ckpt.path)


# ---------------------------------------------------------------------------- evaluation
def evaluate_posterior_curve(
    curve: str | Path | Checkpoint | LoadedCurve,
    out: str | Path | None = None,
    *,
    points: int = 21,
    samples: int = 10,
    seed: int = 0,
    data: Dataset | None = None,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    precision: str = "fp32",
    device: str = "auto",
    resume: bool = False,
    progress: bool = False,
    argv: Sequence[str] | None = None,
    model: str | None = None,
    **data_overrides: Any,
) -> CurveEvaluation:
    """Evaluate a posterior curve (``vi-connect``'s ``model.pt``) and the
    straight line between its posteriors at ``points`` evenly spaced t, with
    ``samples`` weight draws per point (see the module's docstring). Writes
    ``posterior-curve.npz``, ``summary.json`` and ``config.json`` to ``out``,
    resumable like ``evaluate_curve``. It evaluates (2 x points - 2) x (1 +
    samples) networks (the paths share their ends), each with batch norm
    re-estimated, and holds their weights as rows of P floats on the device
    (440 rows by default: about 170 MB at 0.1M parameters, 26 GB at VGG16's
    15M; fewer ``samples`` or ``points`` for large networks).

    Per path the summary gives barriers (the maximum along it minus the mean
    of its two ends) of the negative ELBO per sample, of the means' and the
    ensemble's test error and of the ensemble's test NLL."""
    check_data_options(data_overrides)  # a misspelt keyword lands among them
    amp = precision_amp(precision)
    points = check_whole("--points", points)
    if points < 3:  # the ends alone have no barrier: nothing between them would be measured
        raise UserError(f"--points must be at least 3 (the ends and a point between them), got {points}")
    samples, seed = check_draws(samples, seed)
    out_path = Path(out) if out is not None else None
    device = process_device(device)
    loaded = curve if isinstance(curve, LoadedCurve) else load_posterior_curve(curve, device, model)
    data, _ = stored_data(loaded.meta, loaded.spec, loaded.path or "the curve", data_overrides, device, data, 0.0)
    vnet, crv = loaded.model.to(device), loaded.curve.to(device)
    net_space = ParamSpace.of(vnet.net)
    networks = 2 * points * (1 + samples)
    check_fits(4.0 * networks * net_space.numel,
               f"--points {points} x --samples {samples} (every network's weights: 2 x points x (1 + samples) x "
               f"parameters floats)", device)
    check_fits(8.0 * networks * len(data.y_test) * data.num_classes,
               f"--points {points} x --samples {samples} (every network's test-set probabilities, float64, kept "
               f"for the ensembles)", "cpu")
    options = {"points": points, "samples": samples, "seed": seed, "batch_size": batch_size,
               "bn_batches": bn_batches, "bn_stats": bn_stats, "precision": precision, "dataset": data.describe()}
    request = request_key([crv.anchors().detach()], {"kind": "posterior-curve", **options})
    finished = begin_result(out_path, RESULT, resume, "curve", request)
    if finished is not None:
        arrays, summary = finished
        return CurveEvaluation(summary=summary, arrays=arrays, out=out_path)

    probe = copy.deepcopy(vnet)
    space = ParamSpace.of(probe)
    t = torch.linspace(0, 1, points, dtype=torch.float64, device=device)
    gen = torch.Generator().manual_seed(seed)  # row by row, as VariationalPosterior.sample draws them
    noise = torch.stack([torch.randn(net_space.numel, generator=gen) for _ in range(samples)]).to(device)
    with torch.no_grad():
        W = crv.anchors().detach()
        thetas = torch.cat([crv.coefficients(t), crv.line_coefficients(t)]).to(W.dtype) @ W  # (2T, P_theta)
        # a point of the line that is the curve's (their ends, when fixed) is evaluated once
        owner = list(range(2 * points))
        for j in range(points):
            if torch.equal(thetas[points + j], thetas[j]):
                owner[points + j] = j
        unique = sorted(set(owner))
        block = np.searchsorted(unique, owner)  # each theta's block of rows among the unique thetas'
        anchors, unique_kls = _posterior_rows(probe, space, thetas[unique], noise)  # (U (1 + S), P)
        kls = unique_kls[block]
        speeds = {"curve": crv.speed(t).double().cpu().numpy(),
                  "line": np.full(points, float((W[-1] - W[0]).double().norm()))}
        arcs = {"curve": crv.arc_lengths(t.cpu().numpy()),  # the arc_mean weights, exact at a chain's bends
                "line": float((W[-1] - W[0]).double().norm()) * t.double().cpu().numpy()}
        lengths = {"curve": float(crv.length()), "line": float((W[-1] - W[0]).double().norm())}
    config = {"command": "curve", "argv": list(argv) if argv is not None else None,
              "checkpoint": str(loaded.path) if loaded.path else None, **options, "points_per_pass": points_per_pass,
              "device": str(device)}
    res = run_sweep(vnet.net, anchors, np.eye(anchors.shape[0]), data,
                    store=out_path / STORE if out_path is not None else None, resume=resume,
                    settings={"kind": "posterior-curve", "dataset": data.describe()}, config=config, wd=0.0,
                    batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats, points_per_pass=points_per_pass,
                    progress=progress, amp=amp, return_probs=True)
    n_train, labels, width = len(data.y_train), data.y_test.cpu().numpy(), 1 + samples
    arrays: dict[str, np.ndarray] = {"t": t.cpu().numpy()}
    summary: dict[str, Any] = {}
    for p, name in enumerate(("curve", "line")):
        rows = block[p * points:(p + 1) * points] * width  # each point's means row; its draws follow
        draws = rows[:, None] + np.arange(1, width)[None]  # (T, S)
        for key in METRICS:
            arrays[f"{name}_mean_{key}"] = res[key][rows]
        for key in ("train_nll", "test_nll", "test_error"):
            arrays[f"{name}_sample_{key}"] = res[key][draws]
        kl = kls[p * points:(p + 1) * points] / n_train
        arrays[f"{name}_kl_per_sample"] = kl
        nll = arrays[f"{name}_sample_train_nll"]
        arrays[f"{name}_expected_train_nll"] = nll.mean(axis=1)
        arrays[f"{name}_expected_train_nll_se"] = (nll.std(axis=1, ddof=1) / np.sqrt(samples) if samples > 1
                                                   else np.full(points, np.nan))  # also -ELBO / N's: KL is exact
        arrays[f"{name}_neg_elbo"] = nll.mean(axis=1) + kl
        ens = [ensemble_metrics(res["probs"][d], labels, calibration=False) for d in draws]
        arrays[f"{name}_ensemble_test_nll"] = np.array([e["nll"] for e in ens])
        arrays[f"{name}_ensemble_test_error"] = np.array([e["error"] for e in ens])
        arrays[f"{name}_speed"] = speeds[name]
        arrays[f"{name}_arc_length"] = arcs[name]
        stats = {key: path_stats(arrays["t"], arrays[f"{name}_{key}"], arcs[name])
                 for key in ("neg_elbo", "expected_train_nll", "kl_per_sample", "mean_train_loss", "mean_test_error", "ensemble_test_nll",
                             "ensemble_test_error")}
        summary[name] = {
            "length": lengths[name],
            "neg_elbo_barrier": stats["neg_elbo"]["barrier"],
            "neg_elbo_max": stats["neg_elbo"]["max"],
            "expected_train_nll_barrier": stats["expected_train_nll"]["barrier"],
            "kl_per_sample_barrier": stats["kl_per_sample"]["barrier"],
            "mean_test_error_barrier": stats["mean_test_error"]["barrier"],
            "ensemble_test_error_barrier": stats["ensemble_test_error"]["barrier"],
            "ensemble_test_error_max": stats["ensemble_test_error"]["max"],
            "ensemble_test_nll_barrier": stats["ensemble_test_nll"]["barrier"],
            "metrics": stats,
        }
    summary.update({
        "points": points, "samples": samples, "seed": seed, "curve_type": crv.name, "bends": crv.bends,
        "family": vnet.family, "prior": vnet.prior, "eval_split": data.eval_split, "synthetic": data.synthetic,
        "dataset": data.describe(), "checkpoint": str(loaded.path) if loaded.path else None,
        "notes": "a curve between two variational posteriors and the straight line between them (means and "
                 "log-variance parameters interpolated); neg_elbo = expected_train_nll (the draws' mean train NLL) "
                 "+ kl_per_sample (KL / train size) "
                 "(nats per sample, untempered; with the log-uniform prior exact up to a constant, which a barrier "
                 "cancels); mean_* = the network of the posterior means; ensemble = the draws' averaged "
                 "probabilities; the draws share their noise across t and paths; batch norm re-estimated at every "
                 "network; barrier = max along the path - mean of its two ends; errors in percent",
    })
    finish_result(out_path, RESULT, arrays, summary, request)
    return CurveEvaluation(summary=summary, arrays=arrays, out=out_path)
