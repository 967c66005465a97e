"""Sharpness at a solution: the curvature of the train loss.

How wide is an optimum? Along lines and rays (``rays``, ``width``) width is
read off loss profiles; here it is the Hessian H of the mean training NLL
at the network's weights (Keskar et al. 2017; Li et al. 2018; Yao et al.
2020, PyHessian):

- its largest eigenvalues by the Lanczos iteration with full
  reorthogonalisation, ``iters`` Hessian-vector products from a seeded
  start, and the smallest Ritz value, an upper bound on its smallest
  eigenvalue (the most negative curvature once converged); each reported
  Ritz value theta, with Ritz vector y, comes with its residual
  ||H y - theta y||, measured by one more product: an eigenvalue of H lies
  within it of theta (up to the products' own float32 error, about 1e-5 of
  ||H y|| here), and a small one says the value has converged;
- its trace by Hutchinson's estimator, the mean of v^T H v over
  ``trace_samples`` Rademacher vectors v, with its standard error, and
  from the same products each layer's share: the trace of H's diagonal
  block for the layer's parameters, the mean of v_b^T (H v)_b over the
  same v (the other blocks' terms have mean zero), so the layers' traces
  add up to the whole one draw by draw;
- its spectral density by stochastic Lanczos quadrature (Ghorbani et al.
  2019): each Lanczos run's Ritz values are the nodes, and the squared
  first components of the tridiagonal matrix's eigenvectors the weights,
  of a Gauss quadrature of its start's spectral measure; their mean over
  ``density_runs`` starts, smoothed by a Gaussian, estimates the density of
  the eigenvalues. The first run is the one above. An m-step quadrature
  matches the first 2m - 1 moments of its start's measure, so with few
  steps the density is a coarse picture: resolve it with more ``iters``
  (Ghorbani et al. use 90) and average out the start with more runs.

H is over the parameters the network trains: those with
``requires_grad=False`` are held fixed (the block of H over the others),
since no training moves them.

Hessian-vector products are double backward passes through
``functional_call`` on the flat weights. Batch norm is the engine's: with
``bn_stats="population"`` the whole training set goes through the network
as one batch, normalised by its own statistics, so the loss is the one the
planes and curves report and H includes how the statistics move with the
weights; that needs about six times the set's layer outputs in memory
(:func:`hessian_bn`). Otherwise (``"batches"``) each batch of
``batch_size`` is normalised by its own statistics and the loss is their
size-weighted mean: the minibatch loss, a slightly different function.
Without batch norm the two are the same. The weight-decay term wd/2 |w|^2
adds wd to every eigenvalue and wd x P to the trace; the numbers here are
the NLL's alone.
"""

from __future__ import annotations

import copy
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .brief import brief_repr
from .bn import bn_modules, instance_norms, note_per_batch_norms, per_batch_norms
from .checkpoint import npz_reason, write_json, write_npz
from .data import as_dataset
from .device import check_fits
from .errors import UserError, check_nonnegative, check_seed, is_whole
from .evaluate import _probe_forward, full_float32, misclassified, whole_set_fits
from .layout import takes_channels_last, to_channels_last
from .progress import Progress
from .sweep import STORE, begin_result, compare_keys, finish_result, is_main, rank_and_world, request_key
from .weights import ParamSpace, refuse_for_gradients

__all__ = ["TrainLoss", "check_settings", "hessian_bn", "lanczos", "LanczosRun", "spectral_density", "hutchinson_trace",
           "Hutchinson", "hutchinson", "layer_blocks", "hessian_spectrum", "evaluate_sharpness"]

# Memory of a double backward through the whole training set, in its layer outputs (forward, backward,
# and the graph of the gradient kept for the second backward).
HVP_MEMORY_FACTOR = 6
PER_BATCH = "per batch (track_running_stats=False)"  # the summary's bn for batch norm without running statistics


def hessian_bn(model: nn.Module, data, bn_stats: str = "auto") -> str:
    """The batch-norm handling of :class:`TrainLoss`: "population" or
    "batches" as asked; "auto" takes population when the network has
    batch norm and a double backward through the whole training set fits
    the engine's memory budget (``HVP_MEMORY_FACTOR`` times its layer
    outputs), else batches. Without batch norm, "batches" (the same loss,
    in less memory); with a batch-norm layer called twice in a forward,
    "batches" (population refused, as the engine refuses it)."""
    if bn_stats not in ("auto", "population", "batches"):
        raise UserError(f"unknown --bn-stats {bn_stats!r}; choose auto, population or batches")
    instance = instance_norms(model)
    if instance:  # train mode would normalise each image by itself: another function than the evaluated one
        raise UserError(f"sharpness differentiates batch norm in train mode, where instance norm normalises each "
                        f"image by itself, not by the running statistics it keeps (layer {', '.join(instance)}): "
                        f"not supported")
    if not bn_modules(model):
        return "batches"
    reused = _probe_forward(model, data).reused_bn  # a layer called twice: the whole set is no one batch for it
    if reused:
        if bn_stats == "population":
            raise UserError(f"--bn-stats population needs each batch-norm layer to run once per forward, but "
                            f"{', '.join(reused)} runs more than once; use --bn-stats batches")
        return "batches"
    if bn_stats != "auto":
        return bn_stats
    return "population" if whole_set_fits(model, data, HVP_MEMORY_FACTOR) else "batches"


def _summed_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of -log softmax(logits)[y], in float64."""
    return -torch.log_softmax(logits, dim=-1).gather(1, y[:, None]).double().sum()


class TrainLoss:
    """The mean training NLL of ``model`` as a function of its flat weights
    (P,): its value and Hessian-vector products, in fp32 (TF32 off on CUDA)
    with sums in float64. ``bn`` is :func:`hessian_bn`'s; dropout is off.
    NUTS's gradient (``subspace.LogPosterior``) differentiates the same
    :meth:`nll_sum` over the same :meth:`batches`."""

    def __init__(self, model: nn.Module, data, bn: str = "batches", batch_size: int = 1000,
                 purpose: str = "the Hessian's products"):
        if not is_whole(batch_size) or batch_size < 1:
            raise UserError(f"--batch-size must be a positive whole number, got {batch_size}")
        self.data, self.bn, self.batch_size = data, bn, int(batch_size)
        self.net = copy.deepcopy(model).to(data.device).eval()
        for _, m in bn_modules(self.net):
            m.train()  # each pass normalised by its own statistics (the running ones are never read)
        self.space = ParamSpace.of(self.net)
        refuse_for_gradients(self.net, purpose)  # purpose: what the gradients are for, in its one line
        self.n = len(data.y_train)
        self.hvps = 0
        self.channels_last = takes_channels_last(self.net, data.x_train[:2])  # as the engine: faster convolutions

    def batches(self):
        """The training set as one batch ("population"), or in batches of ``batch_size`` (a last one of one
        sample joined to the one before)."""
        if self.bn == "population":
            return [(self.data.x_train, self.data.y_train)]
        return list(self.data.statistics_batches(self.batch_size))

    def _logits(self, w: torch.Tensor, x: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
        """The network's fp32 logits on x at the float32 weights w (P,), differentiable in w;
        ``channels_last`` None: as :func:`takes_channels_last` found."""
        params = self.space.unflatten(w)
        if self.channels_last if channels_last is None else channels_last:
            params = {name: to_channels_last(p) if p.dim() == 4 else p for name, p in params.items()}
            x = to_channels_last(x)
        return functional_call(self.net, params, (x,)).float()

    def nll_sum(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                channels_last: bool | None = None) -> torch.Tensor:
        """The batch's summed NLL (float64), differentiable in the float32 weights w (P,)."""
        return _summed_nll(self._logits(w, x, channels_last), y)

    def value(self, w: torch.Tensor) -> tuple[float, float]:
        """(mean train NLL, train error in %) at w."""
        total, wrong = 0.0, 0
        with torch.no_grad(), full_float32():
            for x, y in self.batches():
                logits = self._logits(w.float(), x)
                total += float(F.cross_entropy(logits, y, reduction="sum"))  # fp32: overflowing logits give inf
                wrong += int(misclassified(logits, y).sum())
        return total / self.n, 100.0 * wrong / self.n

    def hvp(self, w: torch.Tensor, v: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
        """H v (P,) float64 at w (P,), by a double backward per batch.

        The batches' layout: ``channels_last`` if given (``bench/hvp_layout.py``
        compares the two), else NCHW on the CPU, where the channels-last
        backward of batch norm sums in a way that loses digits where the
        terms cancel, as they do at a minimum (a trained digits convnet's
        H v: 1.2e-3 from float64 channels-last, 1.6e-5 NCHW), and the double
        backward runs slower too (1.04 s against 0.66 s); on CUDA
        (unmeasured) the layout :func:`takes_channels_last` chose. A plain
        gradient (:meth:`nll_sum`, NUTS's force) keeps the faster layout: an
        approximate force costs NUTS only efficiency."""
        out = torch.zeros(self.space.numel, dtype=torch.float64, device=self.data.device)
        v32 = v.to(self.data.device, torch.float32)
        layout = channels_last if channels_last is not None else False if self.data.device.type == "cpu" else None
        with full_float32():
            for x, y in self.batches():
                wr = w.detach().to(self.data.device, torch.float32).requires_grad_(True)
                (g,) = torch.autograd.grad(self.nll_sum(wr, x, y, channels_last=layout) / self.n, wr,
                                           create_graph=True)
                (hv,) = torch.autograd.grad(g @ v32, wr)
                out += hv.double()
        self.hvps += 1
        return out


class LanczosRun(NamedTuple):
    """One Lanczos run: the Ritz values (m,), descending; their residuals by
    the recurrence, |beta_m s_m| (m,), which equal ||A y - theta y|| for
    exact products; their Gauss quadrature weights, the squared first
    components s_1^2 of the tridiagonal matrix's eigenvectors (m,), summing
    to 1; and, when asked, a function of i giving the i-th Ritz vector y."""

    values: np.ndarray
    residuals: np.ndarray
    weights: np.ndarray
    vector: Callable[[int], torch.Tensor] | None = None


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], numel: int, iters: int, seed: int = 0,
            device: torch.device | str = "cpu", vectors: bool = False, run: int = 0) -> LanczosRun:
    """The Lanczos iteration for a symmetric operator ``matvec`` on R^numel,
    with full reorthogonalisation (twice, modified Gram-Schmidt): ``iters``
    products (fewer if the Krylov space closes) from a Gaussian start, the
    ``run``-th draw (from 0) of a generator seeded with ``seed``. Keeps the
    m basis vectors (m x P float64); ``vectors`` keeps the Ritz vectors'
    function (:class:`LanczosRun`).

    The nodes and weights are the m-point Gauss quadrature of the start's
    spectral measure: for a unit start v, sum_j w_j theta_j^k = v^T A^k v
    for every k < 2m (stochastic Lanczos quadrature, Golub & Meurant; the
    spectral density of Ghorbani et al. 2019 averages it over starts)."""
    if not is_whole(iters) or iters < 1:
        raise UserError(f"--iters must be a positive whole number, got {iters}")
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(int(run) + 1):
        v = torch.randn(numel, generator=gen, dtype=torch.float64)
    v = v.to(device)
    v = v / v.norm()
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for _ in range(min(int(iters), numel)):
        basis.append(v)
        w = matvec(v).to(torch.float64)
        alpha = float(w @ v)
        if not np.isfinite(alpha):
            raise UserError("a Hessian-vector product was not finite (the loss overflows near these weights)")
        alphas.append(alpha)
        for _ in range(2):
            for u in basis:
                w = w - (w @ u) * u
        beta = float(w.norm())
        betas.append(beta)
        if beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)):
            break
        v = w / beta
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[:m - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(t)  # ascending
    residual = (betas[m - 1] * s[-1, :]).abs()
    order = torch.argsort(theta, descending=True)
    run_result = LanczosRun(theta[order].numpy(), residual[order].numpy(), (s[0, order] ** 2).numpy())
    if not vectors:
        return run_result

    def ritz_vector(i: int) -> torch.Tensor:
        coef = s[:, order[i]].to(basis[0].device)
        return sum(float(coef[j]) * basis[j] for j in range(m))

    return run_result._replace(vector=ritz_vector)


def spectral_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """The smoothed spectral density of stochastic Lanczos quadrature at
    ``grid``: the mean over runs (rows of ``nodes`` / ``weights``, NaN
    padding ignored) of sum_j w_j N(t; theta_j, sigma^2). It integrates to 1
    over the real line, as the eigenvalues' density (1/P) sum_i delta(t -
    lambda_i) does."""
    nodes, weights = np.atleast_2d(np.asarray(nodes, float)), np.atleast_2d(np.asarray(weights, float))
    if sigma <= 0 or not np.isfinite(sigma):
        raise UserError(f"the density's width must be positive, got {sigma}")
    keep = np.isfinite(nodes) & np.isfinite(weights)
    runs = int(np.any(keep, axis=1).sum())
    if runs == 0:
        return np.full(len(grid), np.nan)
    t, w = nodes[keep], weights[keep]
    z = (np.asarray(grid, float)[:, None] - t[None, :]) / sigma
    return (np.exp(-0.5 * z * z) * w[None, :]).sum(1) / (sigma * np.sqrt(2 * np.pi) * runs)


class Hutchinson(NamedTuple):
    """Hutchinson's estimate: the trace, its standard error, the draws
    v^T A v (samples,), and each block's draws v_b^T (A v)_b (samples,
    blocks), whose means estimate the traces of A's diagonal blocks; and
    from the first two draws' products, how far A is from symmetric:
    |v1^T A v2 - v2^T A v1| / (|v1| |A v2| + |v2| |A v1|), rounding's size
    (1e-7) for a Hessian that torch differentiates right."""

    trace: float
    se: float
    draws: np.ndarray
    block_draws: np.ndarray
    asymmetry: float = 0.0


def hutchinson(matvec: Callable[[torch.Tensor], torch.Tensor], numel: int, samples: int, seed: int = 0,
               device: torch.device | str = "cpu", blocks: Sequence[tuple[int, int]] = ()) -> Hutchinson:
    """Hutchinson's estimate of tr(A): the mean of v^T A v over ``samples``
    Rademacher vectors drawn with ``seed``; and, for each ``blocks`` range
    [start, stop) of the coordinates, the draws v_b^T (A v)_b, unbiased for
    the trace of A's diagonal block there (E[v_i v_j] = 0 for i != j), from
    the same products."""
    if not is_whole(samples) or samples < 2:
        raise UserError(f"--trace-samples must be a whole number of at least 2, got {samples}")
    gen = torch.Generator().manual_seed(int(seed) + 1)  # not the Lanczos start's stream
    draws, by_block = np.empty(int(samples)), np.empty((int(samples), len(blocks)))
    # each coordinate's block (a last, dropped bucket for those in none): one segment sum per draw, one transfer
    which = torch.full((numel,), len(blocks), dtype=torch.int64)
    for j, (start, stop) in enumerate(blocks):
        which[start:stop] = j
    which = which.to(device)
    asymmetry = 0.0
    for i in range(int(samples)):
        v = (torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8).double() * 2 - 1).to(device)
        hv = matvec(v).to(torch.float64)
        draws[i] = float(v @ hv)
        sums = torch.zeros(len(blocks) + 1, dtype=torch.float64, device=hv.device).index_add_(0, which, v * hv)
        by_block[i] = sums[:-1].cpu().numpy()
        if i == 0:
            first = (v, hv)
        elif i == 1:
            scale = float(first[0].norm() * hv.norm() + v.norm() * first[1].norm())
            asymmetry = abs(float(first[0] @ hv - v @ first[1])) / scale if scale > 0 else 0.0
            del first
    return Hutchinson(float(draws.mean()), float(draws.std(ddof=1) / np.sqrt(len(draws))), draws, by_block,
                      asymmetry)


# The asymmetry of the products (:class:`Hutchinson`) above which the Hessian is not the network's: float32
# products with float64 sums give 1e-7 to 1e-8; weight_norm's wrong double backward (torch 2.13) 2e-3 and more.
ASYMMETRY_LIMIT = 1e-4


def hutchinson_trace(matvec: Callable[[torch.Tensor], torch.Tensor], numel: int, samples: int, seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[float, float, np.ndarray]:
    """Hutchinson's estimate of tr(A) (:func:`hutchinson`): (estimate, its standard error, the samples)."""
    h = hutchinson(matvec, numel, samples, seed, device)
    return h.trace, h.se, h.draws


def layer_blocks(space: ParamSpace) -> list[tuple[str, int, int]]:
    """The layers of a flat weight vector: (module name, start, stop) for
    each run of consecutive parameters of one module (``features.0.weight``
    and ``features.0.bias`` are ``features.0``; the model's own parameters
    are ``(model)``; a parametrised weight, ``fc.parametrizations.weight
    .original0``, is its module's, ``fc``), in the vector's order."""
    layers: list[tuple[str, int, int]] = []
    start = 0
    for name, size in zip(space.names, space.sizes):
        owner = ("" if name.startswith("parametrizations.") else name.split(".parametrizations.")[0]
                 if ".parametrizations." in name else name.rsplit(".", 1)[0] if "." in name else "")
        module = owner or "(model)"
        if layers and layers[-1][0] == module and layers[-1][2] == start:
            layers[-1] = (module, layers[-1][1], start + size)
        else:
            layers.append((module, start, start + size))
        start += size
    return layers


@dataclass
class Spectrum:
    """The curvature at one point: the Ritz values (descending) and their
    residuals, the trace estimate, its standard error and samples, the
    train NLL and error there, the Hessian-vector products it took."""

    ritz: np.ndarray
    residual: np.ndarray
    trace: float
    trace_se: float
    trace_draws: np.ndarray
    train_nll: float
    train_error: float
    hvps: int
    seconds: float
    density_nodes: np.ndarray  # (runs, m): each Lanczos run's Ritz values (run 0 is ``ritz``), NaN-padded
    density_weights: np.ndarray  # (runs, m): their quadrature weights
    layer_trace_draws: np.ndarray  # (trace samples, layers): each layer's Hutchinson draws (:func:`layer_blocks`)
    layer_top: np.ndarray  # (layers,): each layer's diagonal block's largest Ritz value (NaN: not asked for)
    layer_top_residual: np.ndarray  # (layers,): its residual by the recurrence


def check_settings(top: int, iters: int, trace_samples: int, seed: int, density_runs: int = 1,
                   layer_iters: int = 0) -> None:
    """One line for a setting of the sharpness estimates that cannot be used."""
    for name, v, least in (("--top", top, 1), ("--iters", iters, 1), ("--trace-samples", trace_samples, 2),
                           ("--density-runs", density_runs, 1), ("--layer-iters", layer_iters, 0)):
        if not is_whole(v) or v < least:
            raise UserError(f"{name} must be a whole number of at least {least}, got {v}")
    if top > iters:
        raise UserError(f"--top {top} is more than the --iters {iters} Lanczos steps give")
    check_seed(seed)


def hessian_spectrum(model: nn.Module, weights: torch.Tensor, data, *, top: int = 5, iters: int = 20,
                     trace_samples: int = 20, seed: int = 0, bn_stats: str = "auto", batch_size: int = 1000,
                     density_runs: int = 1, layer_iters: int = 0, label: str = "the network",
                     progress: Any = False) -> Spectrum:
    """The train NLL's Hessian at ``weights`` (P,) for ``model``'s
    architecture: Lanczos' Ritz values (the ``top`` largest and the
    smallest with residuals measured by one more product each, the others
    by the recurrence), Hutchinson's trace (module docstring), and the
    quadrature nodes and weights of ``density_runs`` Lanczos runs for the
    spectral density (the first is the run that gives the Ritz values; each
    further one costs ``iters`` more products), and each layer's trace
    draws from the trace's products (:func:`layer_blocks`). With
    ``layer_iters`` > 0, also each layer's largest eigenvalue of its own
    diagonal block of H (its curvature with the other layers held fixed):
    Lanczos on the block, ``layer_iters`` products per layer (at most its
    parameter count), with the recurrence's residual; by Cauchy's
    interlacing it is at most H's largest. ``progress``: the products as
    :class:`~landscape.progress.Progress` shows them (a line every 10 s or
    so in a log)."""
    check_settings(top, iters, trace_samples, seed, density_runs, layer_iters)
    t0 = time.perf_counter()
    loss = TrainLoss(model, data, hessian_bn(model, data, bn_stats), batch_size)
    w = weights.detach().reshape(-1).to(data.device, torch.float32)
    if w.numel() != loss.space.numel:
        raise UserError(f"{label}: the weights have {w.numel()} values, the model {loss.space.numel} parameters")
    nll, err = loss.value(w)
    if not np.isfinite(nll):
        raise UserError(f"{label}: the train NLL is {nll}: no curvature to measure")
    op, numel = _trained_operator(lambda v: loss.hvp(w, v), loss.space, data.device)
    blocks = [(start, stop) for _, start, stop in layer_blocks(loss.space.trained())]
    steps = min(iters, numel)  # the products planned (Lanczos may stop sooner on a small network)
    planned = (steps * int(density_runs) + len({*range(min(top, steps)), steps - 1}) + trace_samples
               + sum(min(layer_iters, stop - start) for start, stop in blocks))
    bar = Progress(planned, desc=f"{label}: Hessian-vector products", unit="hvp", progress=progress, every=10.0,
                   show=is_main())
    product = op

    def op(v):  # each product counted as it is made
        out = product(v)
        bar.update(1)
        return out

    try:
        # the trace's products first: they tell whether torch differentiates this network twice right
        trace, se, draws, by_layer, asymmetry = hutchinson(op, numel, trace_samples, seed, data.device, blocks)
        if asymmetry > ASYMMETRY_LIMIT:
            raise UserError(f"its Hessian-vector products are not symmetric ({asymmetry:.2g} of their size, where "
                            f"rounding gives 1e-7): torch's double backward through some layer of it is wrong "
                            f"(weight_norm's is, in torch 2.13); its curvature cannot be measured")
        first = lanczos(op, numel, iters, seed, data.device, vectors=True)
        ritz, residual = first.values, first.residuals.copy()
        for i in sorted({*range(min(top, len(ritz))), len(ritz) - 1}):
            y = first.vector(i)
            residual[i] = float((op(y) - float(ritz[i]) * y).norm() / y.norm())
        runs = [first] + [lanczos(op, numel, iters, seed, data.device, run=r)
                          for r in range(1, int(density_runs))]
        layer_top, layer_res = np.full(len(blocks), np.nan), np.full(len(blocks), np.nan)
        for j, (start, stop) in enumerate(blocks if layer_iters else ()):
            run = lanczos(_block_operator(op, numel, start, stop, data.device), stop - start,
                          layer_iters, seed, data.device)
            layer_top[j], layer_res[j] = run.values[0], run.residuals[0]
    except UserError as e:
        raise UserError(f"{label}: {e}") from None
    finally:
        bar.close()
    nodes, weights = _stacked([r.values for r in runs]), _stacked([r.weights for r in runs])
    if not (np.isfinite(ritz).all() and np.isfinite(residual).all() and np.isfinite(trace)):
        raise UserError(f"{label}: a Hessian-vector product was not finite (the loss overflows near these weights)")
    return Spectrum(ritz=ritz, residual=residual, trace=trace, trace_se=se, trace_draws=draws, train_nll=nll,
                    train_error=err, hvps=loss.hvps, seconds=time.perf_counter() - t0, density_nodes=nodes,
                    density_weights=weights, layer_trace_draws=by_layer, layer_top=layer_top,
                    layer_top_residual=layer_res)


def _trained_operator(op: Callable[[torch.Tensor], torch.Tensor], space: ParamSpace,
                      device) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``op`` on R^P restricted to the trained parameters' coordinates (the
    Hessian's block over what the network trains: a frozen parameter is no
    direction training can move), and their number; ``op`` itself when
    every parameter is trained."""
    mask = space.trainable_mask(device)
    if mask is None:
        return op, space.numel
    index = mask.nonzero().squeeze(1)

    def trained(u: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(space.numel, dtype=torch.float64, device=device)
        full[index] = u.to(device, torch.float64)
        return op(full)[index]

    return trained, int(index.numel())


def _block_operator(op: Callable[[torch.Tensor], torch.Tensor], numel: int, start: int, stop: int,
                    device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The diagonal block [start, stop) of the operator ``op`` on R^numel: u -> (op([0, u, 0]))[start:stop]."""
    def block(u: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(numel, dtype=torch.float64, device=device)
        full[start:stop] = u
        return op(full)[start:stop]

    return block


def _stacked(rows: Sequence[np.ndarray | None]) -> np.ndarray:
    """The rows (arrays of one number of dimensions, None for a row not there) as one float array (len(rows),
    *largest shape), each padded with NaN: Ritz values of a Krylov space that closed early, networks not done."""
    shape = tuple(max(sizes) for sizes in zip(*(np.shape(r) for r in rows if r is not None)))
    out = np.full((len(rows), *shape), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            r = np.asarray(r, dtype=float)
            out[(i, *(slice(0, d) for d in r.shape))] = r
    return out


@brief_repr
@dataclass
class SharpnessResult:
    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]
    out: Path | None


_PER_NETWORK = ("ritz", "residual", "trace", "trace_se", "trace_draws", "train_nll", "train_error", "hvps", "seconds",
                "density_nodes", "density_weights", "layer_trace_draws", "layer_top", "layer_top_residual")
# Arrays a store from an earlier version lacks, with the number of dimensions of one network's.
_LATER = {"density_nodes": 2, "density_weights": 2, "layer_trace_draws": 2, "layer_top": 1, "layer_top_residual": 1}


def evaluate_sharpness(model: nn.Module, vectors: Sequence[torch.Tensor], data, out: str | Path | None = None, *,
                       labels: Sequence[str] | None = None, top: int = 5, iters: int = 20, trace_samples: int = 20,
                       seed: int = 0, bn_stats: str = "auto", batch_size: int = 1000, density_runs: int = 1,
                       layer_iters: int = 0, wd: float | None = None, resume: bool = False, config: dict[str, Any] | None = None,
                       on_network: Callable[[str, Spectrum], None] | None = None,
                       progress: Any = False) -> SharpnessResult:
    """:func:`hessian_spectrum` of each flat weight vector in ``vectors``
    (same architecture), the same seed for all (so the same Lanczos start
    and Rademacher draws). With ``out`` each network's result is stored as
    it finishes (``sweep.partial.npz``), ``resume=True`` continues after the
    last one, and ``sharpness.npz`` / ``summary.json`` hold the result.
    ``top`` of the Ritz values are reported as the top eigenvalues;
    ``density_runs`` Lanczos runs give the spectral density's quadrature
    (``density_nodes`` / ``density_weights``, :func:`spectral_density`);
    ``layer_iters`` > 0 gives each layer's top eigenvalue (``layer_top``).
    ``progress`` shows each network's products as they go
    (:func:`~landscape.progress.progress_mode`; "log": a line every 10 s).
    ``wd`` is the weight-decay term reported beside the NLL's Hessian (None:
    0, or a finished result's own when it is resumed)."""
    out = Path(out) if out is not None else None
    data = as_dataset(data)
    if rank_and_world()[1] > 1:
        raise UserError("sharpness runs in one process; run it without torchrun")
    labels = list(labels) if labels is not None else [f"network {i + 1}" for i in range(len(vectors))]
    if not len(vectors):
        raise UserError("no networks given: sharpness measures the curvature at one or more")
    if len(labels) != len(vectors):
        raise UserError(f"give one label per network: {len(labels)} labels for {len(vectors)} networks")
    check_settings(top, iters, trace_samples, seed, density_runs, layer_iters)
    if wd is not None:
        check_nonnegative("--wd", wd)  # the weight-decay term added to every eigenvalue
    trained = ParamSpace.of(model).trained()  # the Hessian is over what the network trains
    numel = trained.numel
    check_fits(8.0 * min(iters, numel) * numel, f"--iters {iters} (the Lanczos basis, steps x parameters float64)",
               data.device)
    largest = max(stop - start for _, start, stop in layer_blocks(trained))
    check_fits(8.0 * min(layer_iters, largest) * largest,
               f"--layer-iters {layer_iters} (the largest layer's Lanczos basis, steps x its parameters float64)",
               data.device)
    bn = hessian_bn(model, data, bn_stats)
    note_per_batch_norms(model, batch_size)  # without running statistics bn is "batches": the batch size is kept
    settings = {"kind": "sharpness", "top": top, "iters": iters, "trace_samples": trace_samples, "seed": seed,
                "bn": bn, "batch_size": batch_size if bn == "batches" else None, "dataset": data.describe()}
    if density_runs > 1:  # only then: a result stored before the density resumes under the default
        settings["density_runs"] = int(density_runs)
    if layer_iters:  # the same for the layers' eigenvalues
        settings["layer_iters"] = int(layer_iters)
    request = request_key(list(vectors), settings)
    finished = begin_result(out, "sharpness.npz", resume, "sharpness", request)
    if finished is not None:
        arrays, summary = finished
        if wd is not None and summary.get("wd") != wd:  # not the Hessian's (the NLL's alone): the term reported
            summary = dict(summary, wd=wd)  # beside it, as given now (the stored result is left as it is)
        return SharpnessResult(arrays, summary, out=out)
    wd = 0.0 if wd is None else wd
    n = len(vectors)
    done, stored = _read_store(out, request, n) if out is not None and (out / STORE).exists() else (
        np.zeros(n, dtype=bool), {})
    if done.any() and is_main():  # as a sweep's resume says
        print(f"{out}: resuming: kept {int(done.sum())} of {n} networks, {n - int(done.sum())} to evaluate",
              file=sys.stderr)
    if out is not None and is_main():
        write_json(out / "config.json", dict(config or {}, command="sharpness", **settings, wd=wd))
    spectra: list[Spectrum | None] = [None] * n
    for i in range(n):
        if done[i]:
            spectra[i] = _stored_spectrum(stored, i)
            continue
        spectra[i] = hessian_spectrum(model, vectors[i], data, top=top, iters=iters, trace_samples=trace_samples,
                                      seed=seed, bn_stats=bn, batch_size=batch_size, density_runs=density_runs,
                                      layer_iters=layer_iters, label=labels[i], progress=progress)
        done[i] = True
        if out is not None:
            _write_store(out, request, done, spectra)
        if on_network is not None:
            on_network(labels[i], spectra[i])
    layers = layer_blocks(trained)
    arrays = dict(_arrays(spectra), layer_names=np.array([name for name, _, _ in layers]),
                  layer_sizes=np.array([stop - start for _, start, stop in layers]))
    has_bn = bool(bn_modules(model))
    summary = _summary(spectra, labels, top, iters, trace_samples, seed,
                       bn if has_bn else PER_BATCH if per_batch_norms(model) else bn, has_bn, wd, data,
                       density_runs, layers, layer_iters)
    finish_result(out, "sharpness.npz", arrays, summary, request)
    return SharpnessResult(arrays=arrays, summary=summary, out=out)


def _arrays(spectra: Sequence[Spectrum | None]) -> dict[str, np.ndarray]:
    """Per-network arrays (a network not done yet is NaN), padded with NaN where a Krylov space closed early."""
    out = {}
    for key in _PER_NETWORK:
        if key in ("ritz", "residual", "trace_draws", *_LATER):
            out[key] = _stacked([getattr(s, key) if s is not None else None for s in spectra])
        else:
            out[key] = np.array([getattr(s, key) if s is not None else np.nan for s in spectra], dtype=float)
    return out


def _write_store(out: Path, request: str, done: np.ndarray, spectra: Sequence[Spectrum | None]) -> None:
    if is_main():
        write_npz(out / STORE, dict(_arrays(spectra), key=np.array(request), done=done))


def _read_store(out: Path, request: str, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    path = out / STORE
    try:
        with np.load(path, allow_pickle=False) as z:
            key, done = str(z["key"]), z["done"].astype(bool)
            stored = {k: z[k] for k in _PER_NETWORK if k not in _LATER}
            for k, dims in _LATER.items():  # a store from before the density or the layers has none: NaN
                stored[k] = z[k] if k in z.files else np.full((len(done),) + (1,) * dims, np.nan)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: unreadable partial results ({npz_reason(e)}); delete it to start over") from None
    differs = compare_keys(key, request)
    if differs == "data":
        raise UserError(f"{path}: partial results on other data (the data's files changed since); delete it or "
                        f"choose another --out")
    if differs or done.shape != (n,):
        raise UserError(f"{path}: partial results of other networks or settings; delete it or choose another --out")
    if any(np.shape(v)[:1] != (n,) for v in stored.values()):
        raise UserError(f"{path}: damaged partial results (arrays of other lengths than its {n} networks); delete "
                        f"it to start over")
    missing = np.flatnonzero(done & ~np.isfinite(stored["train_error"]))
    if len(missing):  # a network measured has a train error, finite whatever its logits; NaN: never measured
        raise UserError(f"{path}: damaged partial results (network {int(missing[0])} is marked done but holds no "
                        f"result); delete it to start over")
    return done, stored


def _stored_spectrum(stored: dict[str, np.ndarray], i: int) -> Spectrum:
    """Network ``i``'s :class:`Spectrum` from the partial store's rows (NaN padding dropped)."""
    ritz = stored["ritz"][i]
    return Spectrum(ritz=ritz[np.isfinite(ritz)], residual=stored["residual"][i][np.isfinite(ritz)],
                    trace=float(stored["trace"][i]), trace_se=float(stored["trace_se"][i]),
                    trace_draws=stored["trace_draws"][i], train_nll=float(stored["train_nll"][i]),
                    train_error=float(stored["train_error"][i]), hvps=int(stored["hvps"][i]),
                    seconds=float(stored["seconds"][i]), density_nodes=stored["density_nodes"][i],
                    density_weights=stored["density_weights"][i], layer_trace_draws=stored["layer_trace_draws"][i],
                    layer_top=stored["layer_top"][i], layer_top_residual=stored["layer_top_residual"][i])


def _layer_traces(draws: np.ndarray, layers: int) -> tuple[list[float] | None, list[float] | None]:
    """Each layer's trace and its standard error from its Hutchinson draws
    (samples, layers); None for a network stored before the layers were."""
    draws = np.asarray(draws, float)
    if draws.ndim != 2 or draws.shape[1] != layers or not np.isfinite(draws).all():
        return None, None
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    return [float(x) for x in draws.mean(axis=0)], [float(x) for x in se]


def _per_layer(values: np.ndarray, layers: int) -> list[float] | None:
    """One number per layer as a list; None when they were not computed (or stored by an earlier version)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    return [float(x) for x in values] if len(values) == layers and np.isfinite(values).all() else None


def _summary(spectra, labels, top, iters, trace_samples, seed, bn, has_bn, wd, data, density_runs,
             layers, layer_iters) -> dict[str, Any]:
    networks = []
    for label, s in zip(labels, spectra):
        k = min(top, len(s.ritz))
        layer_traces, layer_se = _layer_traces(s.layer_trace_draws, len(layers))
        networks.append({
            "label": label,
            "train_nll": float(s.train_nll),
            "train_error": float(s.train_error),
            "top_eigenvalues": [float(x) for x in s.ritz[:k]],
            "top_residuals": [float(x) for x in s.residual[:k]],
            "lowest_ritz_value": float(s.ritz[-1]),
            "lowest_residual": float(s.residual[-1]),
            "trace": float(s.trace),
            "trace_se": float(s.trace_se),
            "layer_traces": layer_traces,
            "layer_trace_se": layer_se,
            "layer_top_eigenvalues": _per_layer(s.layer_top, len(layers)),
            "layer_top_residuals": _per_layer(s.layer_top_residual, len(layers)),
            "lanczos_steps": int(len(s.ritz)),  # fewer than --iters on a network of fewer trained parameters
            "hessian_vector_products": int(s.hvps),
            "seconds": round(float(s.seconds), 2),
        })
    return {
        "networks": networks,
        "top": top,
        "iters": iters,
        "trace_samples": trace_samples,
        "density_runs": density_runs,
        "layer_iters": layer_iters,
        "layers": [{"name": name, "parameters": stop - start} for name, start, stop in layers],
        "seed": seed,
        "bn": bn if has_bn or bn == PER_BATCH else None,
        "wd": wd,
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "notes": "eigenvalues and trace of the Hessian of the mean train NLL (without the weight-decay term, which "
                 "adds wd to every eigenvalue and wd x P to the trace); the top eigenvalues are Lanczos Ritz values "
                 "with their residuals ||H y - theta y|| / ||y|| (an eigenvalue of H lies within the residual, up "
                 "to the float32 products' own error; a small residual means converged); the lowest Ritz value is "
                 "an upper bound on the smallest eigenvalue, equal to it only when its residual is small; trace: "
                 "Hutchinson's estimate with its standard error; spectral density: stochastic Lanczos quadrature "
                 "over density_runs starts (sharpness.npz's density_nodes and density_weights); layer_traces: "
                 "each layer's (module's) share of the trace, the trace of the Hessian's diagonal block for its "
                 "parameters, from the same Rademacher vectors (they add up to the trace; null for a network "
                 "stored by an earlier version); layer_top_eigenvalues: with layer_iters > 0, the largest Ritz "
                 "value of each layer's diagonal block by Lanczos, with the recurrence's residual (at most the "
                 "whole Hessian's largest eigenvalue); batch norm: " +
                 ("the whole training set as one batch (the planes' population statistics)" if bn == "population"
                  else "each batch normalised by its own statistics" if has_bn
                  else "layers without running statistics (track_running_stats=False) normalise each batch of "
                       "batch_size by its own, so the loss and its Hessian depend on the batch size"
                  if bn == PER_BATCH else "none in this network"),
    }
