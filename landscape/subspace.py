"""Subspace inference (Izmailov, Maddox, Kirichenko, Garipov, Vetrov, Wilson
2019): Bayesian model averaging in a low-dimensional affine subspace of the
weights,

    w(z) = ŵ + Pᵀ z,   z in R^k,   prior z ~ N(0, σ² I),
    log p(z | D) = -(N / T) x train NLL(w(z)) - |z|² / (2σ²) + const,

N the training-set size, T the temperature. The posterior over z is sampled
by elliptical slice sampling (Murray, Adams & MacKay 2010) or the No-U-Turn
Sampler (``method="nuts"``, :mod:`landscape.nuts`), or approximated by
variational inference (``method="vi"``: q(z) = N(μ, diag σ²) fitted by SGD
on the minibatch ELBO, the reference's VIModel, or with ``vi_family=
"realnvp"`` a RealNVP flow), and the model average averages the test-set
probabilities of the samples.

Subspaces (rows of P):

- ``pca``: ŵ the SWA mean of ``swag.pt``; the top k principal directions of
  its deviations D / sqrt(K - 1), each scaled by its singular value (one
  SWAG standard deviation), as the reference code's PCA subspace;
- ``random``: ŵ the SWA mean; k orthogonal Gaussian directions, each as long
  as the mean length of the top two PCA directions (the reference's scale);
- ``curve`` (made by :func:`landscape.curves.subspace.curve_subspace`): the plane of a
  fitted curve's points at t = 0, 1/2, 1; ŵ their mean, u = (w_1 - w_0) / √3,
  v = the part of w_½ - w_0 orthogonal to u, / 1.5 (the reference's scales).
  Its chains start at the curve's end t = 1, as the reference's; the others'
  at z = 0.

Every likelihood is the engine's: the point ``(1, z) @ (ŵ; P)`` with batch
norm re-estimated (the reference runs the network in train mode, batch
statistics of every batch of 128, instead), so the proposals of several
chains share the passes over the data, and each accepted sample's test
probabilities come from the same evaluation. The sampler's state is saved
after every round, so ``resume`` continues an interrupted run exactly.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .brief import brief_repr
from .bn import bn_modules, instance_norms
from .checkpoint import Checkpoint, write_json, write_npz
from .data import Dataset
from .device import host_to_device
from .errors import UserError, check_seed, is_whole, world_size
from .evaluate import (METRICS, evaluate_points, full_float32, precision_amp, resolve_bn_stats, train_logits,
                       whole_set_fits)
from .inputs import check_data_options, stored_data
from .layout import image_layout
from .metrics import expected_calibration_error, running_ensemble
from . import nuts as nuts_module
from .nuts import (TARGET_ACCEPT, DualAveraging, MassAdaptation, adaptation_windows, initial_step_size, nuts_round,
                   warmup_step)
from .progress import Progress
from .sharpness import TrainLoss
from .sweep import (STORE, begin_result, compare_keys, finish_result, is_main, rank_and_world, request_key, run_sweep,
                    stored_bn_stats)
from .swag import SwagPosterior, load_swag
from .weights import ParamSpace, refuse_for_gradients

__all__ = ["BASES", "METHODS", "VI_FAMILIES", "RealNVP", "flow_kl", "Subspace", "SubspaceResult", "pca_basis",
           "random_basis", "plane_of_points", "swag_subspace", "elliptical_slice_round", "gaussian_kl",
           "sample_subspace", "LogPosterior", "gradient_kind"]

BASES = ("pca", "random", "curve")
METHODS = ("ess", "nuts", "vi")
NUTS_MAX_DEPTH = 8  # the default: at most 255 leapfrog steps a sample
FD_STEP = 1e-3  # central differences' step in z, times the prior's scale (the gradient without autograd)
POINTS_STORE = "points.partial.npz"  # the VI samples' evaluation sweep
GRID_STORE = "grid.partial.npz"  # the grid sweep's partial store, beside the sampler's (sweep.partial.npz)
STORES = (STORE, GRID_STORE, POINTS_STORE)  # every partial store a run may leave


@brief_repr
@dataclass
class Subspace:
    """An affine subspace of ``model``'s weights: ``shift`` (P,) and ``basis``
    (k, P), both float32, in the order of ``ParamSpace.of(model)``."""

    kind: str
    shift: torch.Tensor
    basis: torch.Tensor
    model: nn.Module  # the template network (its buffers, its architecture)
    spec: dict[str, Any]  # the network's {"name", "kwargs"}
    meta: dict[str, Any]  # the checkpoint's metadata (its run's data and weight decay)
    source: Path | None = None
    landmarks: dict[str, list[float]] = field(default_factory=dict)  # named points' coordinates (curve: t=0, ½, 1)
    start: list[float] | None = None  # where the chains start (None: z = 0, the shift)
    # a curve's points projected on the subspace (n, k), and how far off it the curve strays at most,
    # relative to the distance between its ends (0 for one bend, Bezier or polygonal: the plane holds it)
    path: np.ndarray | None = None
    path_off: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    def start_point(self) -> np.ndarray:
        """(k,): the chains' starting z."""
        return np.zeros(self.dim) if self.start is None else np.asarray(self.start, dtype=np.float64)

    def anchors(self) -> torch.Tensor:
        """(1 + k, P): the engine's anchors; a point z has coefficients (1, z)."""
        return torch.cat([self.shift[None], self.basis])

    def weights(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The flat weights w(z) = shift + basisᵀ z of one point z (k,) or of rows (n, k)."""
        z = torch.as_tensor(np.asarray(z, dtype=np.float64)).to(self.shift.device)
        return (self.shift.double() + z @ self.basis.double()).float()


def coefficients(z: np.ndarray) -> np.ndarray:
    """The engine's coefficient rows (1, z) of points z (n, k)."""
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    return np.concatenate([np.ones((len(z), 1)), z], axis=1)


def _deviation_spectrum(post: SwagPosterior) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """D / sqrt(K - 1) (float64), the eigenvalues (descending) and eigenvectors
    of its K x K Gram matrix, and how many directions have spread: a zero
    deviation or iterates that repeat add none, and cannot be scaled."""
    d = post.deviations.double()
    k = d.shape[0]
    d = d / math.sqrt(max(1, k - 1))
    evals, evecs = torch.linalg.eigh(d @ d.T)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    kept = int((evals > evals[0] * 1e-10).sum()) if k and float(evals[0]) > 0 else 0
    return d, evals, evecs, kept


def pca_basis(post: SwagPosterior, rank: int) -> torch.Tensor:
    """The top ``rank`` principal directions of SWAG's deviations D / sqrt(K - 1),
    each scaled by its singular value: the rows S V of D / sqrt(K - 1) = U S V,
    computed as Uᵀ (D / sqrt(K - 1)) from the K x K Gram matrix (float64)."""
    d, _evals, evecs, kept = _deviation_spectrum(post)
    k = d.shape[0]
    if rank > kept and kept == 0:
        raise UserError(f"the SWAG moments hold {'no deviations' if k == 0 else f'{k} deviation(s) spanning nothing'}"
                        f" (collected without a low-rank part: swa --swag-rank 0, or swa_gaussian without "
                        f"--cov_mat): a PCA subspace needs them; collect them with swa --swag-rank K")
    if rank > kept:
        # every iterate averaged kept a deviation: a larger --swag-rank keeps no more, more iterates do
        more = ("more SWA epochs after --swa-start (each average adds one)" if k >= post.averaged else
                "a larger --swag-rank")
        raise UserError(f"--rank {rank}: the SWAG deviations span only {kept} direction(s) "
                        f"({k} deviation(s) kept of the {post.averaged} iterates averaged); use --rank {kept} or "
                        f"collect more with {more}")
    return (evecs[:, :rank].T @ d).float()


def random_basis(numel: int, rank: int, length: float, seed: int, device: torch.device | str = "cpu",
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """``rank`` orthogonal directions, each of norm ``length``, spanning a
    Gaussian random subspace (from a CPU generator seeded with ``seed``);
    with ``mask`` (P,) bool, one of the coordinates it keeps (the trained
    parameters: :meth:`ParamSpace.trainable_mask`)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(numel, rank, generator=gen, dtype=torch.float64)
    keep = None if mask is None else mask.cpu().to(g.dtype)[:, None]
    q, _ = torch.linalg.qr(g if keep is None else g * keep)  # (P, rank), orthonormal columns
    if keep is not None:
        q = q * keep  # exact zeros where the reflections left rounding
    return (length * q.T).float().to(device)


def plane_of_points(w0: torch.Tensor, wm: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    dict[str, list[float]]]:
    """The curve subspace through three points (t = 0, ½, 1): shift, basis (2, P)
    and the three points' coordinates."""
    pts = torch.stack([w0, wm, w1]).double()
    shift = pts.mean(0)
    u = (pts[2] - pts[0])
    if float(u.norm()) == 0:
        raise UserError("the curve's endpoints are the same weights; it spans no plane")
    v = pts[1] - pts[0]
    v = v - u * (u @ v) / (u @ u)
    # float32 weights hold a point on the line only to about 6e-8 of their norm: within 1e-6 of it, no plane
    if float(v.norm()) <= max(1e-9 * float(u.norm()), 1e-6 * float(pts.norm(dim=1).max())):
        raise UserError("the curve's midpoint lies on the line between its endpoints; it spans no plane "
                        "(a straight line: fit a curve with 'landscape connect')")
    basis = torch.stack([u / math.sqrt(3.0), v / 1.5])
    coords = ((pts - shift) @ basis.T) / (basis * basis).sum(1)  # the rows are orthogonal
    names = ("t=0", "t=0.5", "t=1")
    return shift.float(), basis.float(), {n: [float(c) for c in row] for n, row in zip(names, coords)}


def swag_subspace(path: str | Path | Checkpoint, basis: str = "pca", rank: int = 2, seed: int = 0,
                  device: torch.device | str = "auto", model: str | None = None) -> Subspace:
    """The ``pca`` or ``random`` subspace around the SWA mean of ``swag.pt``, on ``device`` (``"auto"``: a
    GPU when there is one, as every evaluation), where :func:`sample_subspace` samples it."""
    if basis not in ("pca", "random"):
        raise UserError(f"swag.pt gives a 'pca' or 'random' subspace, not {basis!r} (the 'curve' subspace "
                        f"needs a curve checkpoint)")
    if not is_whole(rank) or rank < 1:
        raise UserError(f"--rank must be a whole number of at least 1, got {rank}")
    rank = int(rank)  # 2.0 from Python: a slice's bound
    seed = check_seed(seed)
    post, net, ck = load_swag(path, device, model)
    if basis == "pca":
        directions = pca_basis(post, rank)
    else:  # as long as the mean of the top two PCA directions (of the top one when only one is spanned)
        _, evals, _, spanned = _deviation_spectrum(post)
        if spanned == 0:
            raise UserError(f"{ck.path}: the SWAG deviations span no direction, so a random subspace has no scale")
        length = float(evals[:min(2, spanned)].sqrt().mean())  # a PCA direction's length is sqrt(its eigenvalue)
        directions = random_basis(post.mean.numel(), rank, length, seed, post.mean.device,
                                  ParamSpace.of(net).trainable_mask())
    return Subspace(kind=basis, shift=post.mean.float(), basis=directions, model=net, spec=ck.model,
                    meta=ck.meta, source=ck.path)


# ---------------------------------------------------------------- elliptical slice sampling

LogLik = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]

MAX_SHRINKS = 60  # a bracket 2π 2^-60 wide is the current point: ESS's limit, taken as it


def elliptical_slice_round(z: np.ndarray, loglik: np.ndarray, loglik_fn: LogLik, rng: np.random.Generator,
                           prior_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One elliptical slice sampling step of every chain (rows of ``z``, (C, k))
    under the prior N(0, prior_scale² I); ``loglik`` (C,) at ``z``.

    ``loglik_fn(points)`` evaluates the log-likelihood of points (n, k) all
    together (the chains still proposing share one call), returning (n,)
    and per-point extras (arrays of first dimension n). Returns the new
    points, their log-likelihoods, the evaluations each chain made, and the
    extras of the accepted points. After ``MAX_SHRINKS`` rejections the
    bracket has shrunk onto the current point, which ESS then returns: it
    is evaluated once more for its extras and taken."""
    c, _k = z.shape
    nu = rng.normal(0.0, prior_scale, size=z.shape)
    log_y = loglik + np.log(rng.uniform(size=c))
    phi = rng.uniform(0.0, 2.0 * math.pi, size=c)
    lo, hi = phi - 2.0 * math.pi, phi.copy()
    new_z, new_ll = z.copy(), loglik.copy()
    evals = np.zeros(c, dtype=np.int64)
    extras: dict[str, np.ndarray] = {}
    pending = np.ones(c, dtype=bool)
    forced = np.zeros(c, dtype=bool)
    while pending.any():
        idx = np.flatnonzero(pending)
        prop = z[idx] * np.cos(phi[idx])[:, None] + nu[idx] * np.sin(phi[idx])[:, None]
        ll, extra = loglik_fn(prop)
        evals[idx] += 1
        ok = (ll > log_y[idx]) | forced[idx]  # NaN (a diverged point) is rejected
        for j, i in enumerate(idx):
            if ok[j]:
                new_z[i], new_ll[i], pending[i] = prop[j], ll[j], False
                for key, value in extra.items():
                    if key not in extras:
                        extras[key] = np.full((c, *value.shape[1:]), np.nan, dtype=value.dtype)
                    extras[key][i] = value[j]
            elif evals[i] >= MAX_SHRINKS:  # the bracket has shrunk onto the current point
                phi[i], forced[i] = 0.0, True
            else:
                if phi[i] < 0:
                    lo[i] = phi[i]
                else:
                    hi[i] = phi[i]
                phi[i] = rng.uniform(lo[i], hi[i])
    return new_z, new_ll, evals, extras


# ---------------------------------------------------------------- variational inference


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_scale: float) -> torch.Tensor:
    """KL(N(mu, diag sigma²) || N(0, prior_scale² I)), summed over the coordinates."""
    return (math.log(prior_scale) - torch.log(sigma) + (sigma ** 2 + mu ** 2) / (2 * prior_scale ** 2) - 0.5).sum()


VI_EPS = 1e-6  # sigma = softplus(rho) + VI_EPS, as the reference


def vi_sigma(rho: torch.Tensor) -> torch.Tensor:
    return F.softplus(rho) + VI_EPS


VI_FAMILIES = ("gaussian", "realnvp")
FLOW_LAYERS, FLOW_HIDDEN = 4, 32  # RealNVP's affine coupling layers and the width of their conditioners


class RealNVP(nn.Module):
    """A RealNVP flow (Dinh, Sohl-Dickstein & Bengio 2017) on R^k, k >= 2:
    ``layers`` affine couplings, each keeping the coordinates of one parity
    and moving the others, x_b <- x_b exp(s(x_a)) + t(x_a), s and t from an
    MLP (tanh; ``hidden`` units, two hidden layers) of the kept ones, s
    squashed by tanh; the parity alternates. The conditioners' last layers
    start at zero, so the flow starts as the identity. In float64."""

    def __init__(self, k: int, layers: int = FLOW_LAYERS, hidden: int = FLOW_HIDDEN):
        super().__init__()
        if k < 2:
            raise UserError("a RealNVP flow needs at least 2 coordinates (a rank of 2 or more)")
        parity = torch.arange(k) % 2
        self.register_buffer("masks", torch.stack([(parity == i % 2).double() for i in range(layers)]))
        self.nets = nn.ModuleList()
        for _ in range(layers):
            net = nn.Sequential(nn.Linear(k, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                nn.Linear(hidden, 2 * k)).double()
            nn.init.zeros_(net[-1].weight), nn.init.zeros_(net[-1].bias)
            self.nets.append(net)

    def forward(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = g(eps) for eps (B, k), and log |det dg/deps| (B,)."""
        x, log_det = eps, torch.zeros(eps.shape[0], dtype=eps.dtype, device=eps.device)
        for mask, net in zip(self.masks, self.nets):
            s, t = net(x * mask).chunk(2, dim=-1)
            s = torch.tanh(s) * (1 - mask)
            x = x * mask + (1 - mask) * (x * torch.exp(s) + t)
            log_det = log_det + s.sum(-1)
        return x, log_det


def flow_kl(eps: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, flow: RealNVP,
            prior_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + sigma g(eps) for eps (B, k) drawn from N(0, I), and the one-draw
    estimates log q(z) - log prior(z) of KL(q || prior) (B,), by the change
    of variables: log q(z) = log N(eps) - log |det g'(eps)| - sum log sigma."""
    g, log_det = flow(eps)
    z = mu + sigma * g
    log_q = -0.5 * (eps * eps).sum(-1) - log_det - torch.log(sigma).sum()
    log_prior = -0.5 * (z * z).sum(-1) / prior_scale ** 2 - eps.shape[-1] * math.log(prior_scale)
    return z, log_q - log_prior  # the constants -k/2 log 2 pi cancel


def vi_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """The seeds of an epoch's batch order (on the data's device) and of its z noise (on the CPU)."""
    base = (seed * 1_000_003 + epoch * 7_919) % 2 ** 62
    return base, base + 1


def _fit_vi(run: "_Run", state: dict[str, np.ndarray] | None, *, epochs: int, lr: float, batch_size: int,
            init_std: float, seed: int, family: str = "gaussian"
            ) -> tuple[torch.Tensor, torch.Tensor, RealNVP | None, list[dict[str, Any]]]:
    """Fit q(z) = N(mu, diag sigma²) by SGD (momentum 0.9) on the minibatch
    objective mean NLL + T KL(q || prior) / N, one reparametrised z = mu +
    sigma eps per batch, the network in train mode (batch statistics), as the
    reference, in fp32 (``precision`` and the batch-norm options are the
    evaluation's). mu starts at the subspace's start, sigma at ``init_std``;
    ``state`` (a stopped fit's, already checked to be this run's) continues
    one. The state is saved to the run's store after every epoch.
    ``family="realnvp"``: q is z = mu + sigma g(eps), g a :class:`RealNVP`
    flow (starting as the identity) trained with mu and rho, the KL term the
    one-draw estimate log q(z) - log prior(z). Returns mu, sigma (float64,
    CPU), the flow (None for the Gaussian) and the per-epoch records."""
    sub, data = run.subspace, run.data
    k, n, device = sub.dim, len(data.y_train), data.device
    mu = torch.tensor(sub.start_point(), dtype=torch.float64, device=device, requires_grad=True)
    # softplus⁻¹(init_std), written so that a large init_std does not overflow
    rho = torch.full((k,), init_std + math.log(-math.expm1(-init_std)), dtype=torch.float64, device=device,
                     requires_grad=True)
    flow = None
    if family == "realnvp":
        with torch.random.fork_rng(devices=[]):  # the flow's first weights from the seed, the global RNG untouched
            torch.default_generator.manual_seed(seed)
            flow = RealNVP(k).to(device)
    flow_params = list(flow.parameters()) if flow is not None else []
    optimizer = torch.optim.SGD([mu, rho, *flow_params], lr=lr, momentum=0.9)
    records: list[dict[str, Any]] = []
    if state is not None:
        sizes = {"flow": sum(p.numel() for p in flow_params)} if flow is not None else {}
        if flow is not None and "buf_flow" in state:
            sizes["buf_flow"] = sizes["flow"]
        if any(np.asarray(state[name]).size != size for name, size in sizes.items()):
            raise UserError(f"{run.store}: the variational fit's saved state does not fit its flow; delete it to "
                            f"start again")
        with torch.no_grad():
            mu.copy_(torch.as_tensor(state["mu"])), rho.copy_(torch.as_tensor(state["rho"]))
            if flow is not None:
                torch.nn.utils.vector_to_parameters(torch.as_tensor(state["flow"]).to(device), flow_params)
        for p, name in ((mu, "buf_mu"), (rho, "buf_rho")):
            if name in state:
                optimizer.state[p]["momentum_buffer"] = torch.tensor(state[name], device=device)
        if flow is not None and "buf_flow" in state:
            buffers = torch.as_tensor(state["buf_flow"]).to(device).split([p.numel() for p in flow_params])
            for p, b in zip(flow_params, buffers):
                optimizer.state[p]["momentum_buffer"] = b.view_as(p).clone()
        records = list(state["records"])
    shift, basis = sub.shift.double(), sub.basis.double()
    net = copy.deepcopy(run.net).to(device).train()
    refuse_for_gradients(net, "variational inference in the subspace")
    space = ParamSpace.of(net)
    bar = Progress(epochs, len(records), desc="VI epochs", unit="epoch", progress=run.progress, every=10.0)
    layout = image_layout(net, data.x_train[:2])  # channels-last batches where the network takes them
    # each epoch seeds the global generator (below): forked, the caller's is as it was after
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            for epoch in range(len(records), epochs):
                data_seed, noise_seed = vi_seeds(seed, epoch)
                order = torch.Generator(device=device).manual_seed(data_seed)
                noise = torch.Generator().manual_seed(noise_seed)  # on the CPU: the same z on every device
                torch.manual_seed(noise_seed + 1)  # dropout and any other global draw: an epoch resumes exactly
                sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, nll, kl (x samples), samples
                for x, y in data.train_batches(batch_size, order):
                    eps = host_to_device(torch.randn(k, generator=noise, dtype=torch.float64), device)
                    sigma = vi_sigma(rho)
                    if flow is None:
                        z = mu + sigma * eps
                        kl = gaussian_kl(mu, sigma, run.prior_scale)
                    else:
                        zs, kls = flow_kl(eps[None], mu, sigma, flow, run.prior_scale)
                        z, kl = zs[0], kls[0]
                    weights = space.unflatten((shift + z @ basis).float())
                    logits = train_logits(functional_call(net, weights, (layout(x),)))
                    nll = F.cross_entropy(logits.float(), y)
                    loss = nll + run.temperature * kl / n
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():  # summed on the device: no host synchronisation per step
                        sums += torch.stack([loss.double(), nll.double(), kl, torch.ones((), dtype=torch.float64,
                                                                                          device=device)]) * len(y)
                total = sums.tolist()
                with torch.no_grad():
                    record = {"epoch": epoch + 1, "loss": total[0] / total[3], "nll": total[1] / total[3],
                              "kl": total[2] / total[3], "mu": mu.tolist(), "sigma": vi_sigma(rho).tolist()}
                if not all(np.isfinite([record["loss"], *record["mu"], *record["sigma"]])):
                    wide = (f" (or a smaller --vi-init-std than {init_std:g}, the starting spread)"
                            if init_std > 1 else "")
                    raise UserError(f"variational inference diverged in epoch {epoch + 1} (loss {record['loss']}); "
                                    f"start again with a lower --vi-lr than {lr:g}{wide} in another --out")
                records.append(record)
                if run.store is not None:
                    saved = {"key": np.array(run.key), "mu": mu.detach().cpu().numpy(),
                             "rho": rho.detach().cpu().numpy(), "records": np.array(json.dumps(records)),
                             **{name: optimizer.state[p]["momentum_buffer"].cpu().numpy()
                                for p, name in ((mu, "buf_mu"), (rho, "buf_rho"))
                                if "momentum_buffer" in optimizer.state[p]}}
                    if flow is not None:
                        saved["flow"] = torch.nn.utils.parameters_to_vector(flow_params).detach().cpu().numpy()
                        if all("momentum_buffer" in optimizer.state[p] for p in flow_params):
                            saved["buf_flow"] = torch.cat([optimizer.state[p]["momentum_buffer"].reshape(-1)
                                                           for p in flow_params]).cpu().numpy()
                    write_npz(run.store, saved)
                bar.update(1)
        finally:
            bar.close()
    if flow is not None:
        flow = flow.cpu().eval().requires_grad_(False)
    return mu.detach().cpu().clone(), vi_sigma(rho).detach().cpu().clone(), flow, records


# ---------------------------------------------------------------- saved state

_PER_SAMPLE = ("z", "chain", "log_likelihood", "log_posterior", "evaluations", "probs") + METRICS
_ESS_STATE = ("rng", "current", "current_ll", "burned", *(f"shift_{m}" for m in (*METRICS, "probs")), *_PER_SAMPLE)
_VI_STATE = ("mu", "rho", "records")


def _read_state(path: Path, key: str, needed: Sequence[str], what: str) -> dict[str, Any]:
    """A stopped run's saved state (``what`` names it in errors): refused in one
    line when torn, incomplete, or of other inputs or settings than ``key``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            state = {name: f[name] for name in f.files}
        stored = str(state["key"])
        for name in ("rng", "records"):  # the JSON-held parts
            if name in state:
                state[name] = json.loads(str(state[name]))
    except Exception as exc:  # a torn or foreign file
        raise UserError(f"{path}: cannot read {what} ({type(exc).__name__}); delete it to start again") from None
    differs = compare_keys(stored, key)
    if differs:
        what = "on other data (the data's files changed since)" if differs == "data" else \
            "with other inputs or settings"
        raise UserError(f"{path.parent} holds an unfinished subspace run {what}; choose another --out")
    lengths = {len(state[name]) for name in _PER_SAMPLE if name in state}
    if any(name not in state for name in needed) or len(lengths) > 1:
        raise UserError(f"{path}: {what} is incomplete; delete it to start again")
    return state


def _save_sampler(run: "_Run", rng: np.random.Generator, shift_res: dict[str, Any], kept: dict[str, list],
                  burned: int, **chains: np.ndarray) -> None:
    """A sampler's state after a round: its generator, the centre's values, the
    kept samples, the burn-in rounds done and the chains' arrays (``chains``)."""
    if run.store is None:
        return
    arrays: dict[str, Any] = {"key": np.array(run.key), "rng": np.array(json.dumps(rng.bit_generator.state)),
                              "burned": np.array(burned), **chains}
    arrays.update({f"shift_{m}": np.asarray(v) for m, v in shift_res.items()})
    arrays.update({name: np.asarray(values) for name, values in kept.items()})
    write_npz(run.store, arrays)


def _resume_sampler(run: "_Run", needed: Sequence[str], kept_names: Sequence[str], samples: int
                    ) -> tuple[dict[str, Any], np.random.Generator, dict[str, Any], dict[str, list]] | None:
    """A stopped sampler's saved state (None when there is none): the state,
    its generator, the centre's values and the kept samples."""
    if run.store is None or not run.store.exists():
        return None
    state = _read_state(run.store, run.key, needed, "the sampler's saved state")
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    shift_res = {m: state[f"shift_{m}"] for m in (*METRICS, "probs")}
    kept = {name: list(state[name]) for name in kept_names}
    print(f"{run.out}: resuming: kept {len(kept['z'])} of {samples} samples", file=sys.stderr)
    return state, rng, shift_res, kept


def _keep(run: "_Run", kept: dict[str, list], z: np.ndarray, ll: np.ndarray, extra: dict[str, np.ndarray],
          **columns: np.ndarray) -> None:
    """Append the new samples of a round's chains (rows of ``z``), their
    log-likelihoods ``ll``, metrics and test probabilities ``extra`` and the
    sampler's own per-sample ``columns``."""
    for c in range(len(z)):
        for name, value in (("z", z[c]), ("chain", c), ("log_likelihood", ll[c]),
                            ("log_posterior", ll[c] + run.log_prior(z[c])), *((n, v[c]) for n, v in columns.items()),
                            *((m, extra[m][c]) for m in (*METRICS, "probs"))):
            kept[name].append(value)


# ---------------------------------------------------------------- the run


@brief_repr
@dataclass
class SubspaceResult:
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]  # what subspace.npz holds
    out: Path | None


@dataclass
class _Run:
    """What both methods share: the subspace's network and data, the posterior's
    settings, the evaluation options, and where the state is kept."""

    subspace: Subspace
    net: nn.Module
    data: Dataset
    temperature: float
    prior_scale: float
    eval_options: dict[str, Any]  # evaluate_points' wd, batch_size, bn_batches, bn_stats, points_per_pass, amp
    progress: bool
    resume: bool
    out: Path | None
    key: str

    @property
    def store(self) -> Path | None:
        return self.out / STORE if self.out is not None else None

    def log_likelihood(self, train_nll: np.ndarray) -> np.ndarray:
        """-N x train NLL / T; a non-finite NLL (a diverged point) is -inf."""
        ll = -len(self.data.y_train) * np.asarray(train_nll) / self.temperature
        return np.where(np.isfinite(ll), ll, -np.inf)

    def log_prior(self, z: np.ndarray) -> np.ndarray:
        return -0.5 * (z * z).sum(-1) / self.prior_scale ** 2

    def evaluate(self, z: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The log-likelihoods of points z (n, k), evaluated together, and every metric with the test probabilities."""
        res = evaluate_points(self.net, self.subspace.anchors(), coefficients(z), self.data, return_probs=True,
                              **self.eval_options)
        return self.log_likelihood(res["train_nll"]), res

    def sweep(self, z: np.ndarray, store: str, kind: str, probs: bool, what: str) -> dict[str, np.ndarray]:
        """The points z (``what`` they are, for the log) as a resumable sweep, its
        partial store ``store`` beside the sampler's."""
        return run_sweep(self.net, self.subspace.anchors(), coefficients(z), self.data,
                         store=self.out / store if self.out is not None else None, resume=self.resume,
                         settings={"kind": kind, "dataset": self.data.describe()}, progress=self.progress,
                         return_probs=probs, what=what, **self.eval_options)


def _sample_ess(run: _Run, write_config: Callable[[], None], *, samples: int, chains: int, burn_in: int,
                seed: int) -> tuple[dict[str, Any], dict[str, list]]:
    """Elliptical slice sampling: the centre's values and the kept samples' (``_PER_SAMPLE``)."""
    k = run.subspace.dim
    resumed = _resume_sampler(run, _ESS_STATE, _PER_SAMPLE, samples)
    if resumed is not None:
        state, rng, shift_res, kept = resumed
        current, current_ll, burned = state["current"], state["current_ll"], int(state["burned"])
    else:
        rng = np.random.default_rng(seed)
        start = run.subspace.start_point()
        ll0, first = run.evaluate(np.stack([np.zeros(k), start]))  # the centre, for the table; where chains start
        if not np.isfinite(ll0[1]):
            raise UserError(f"{run.subspace.source or 'the subspace'}: the train NLL where the chains start is not "
                            f"finite ({first['train_nll'][1]}); nothing to sample around")
        shift_res = {m: v[0] for m, v in first.items()}
        current, current_ll = np.tile(start, (chains, 1)), np.full(chains, ll0[1])
        kept = {name: [] for name in _PER_SAMPLE}
        burned = 0
        _save_sampler(run, rng, shift_res, kept, burned, current=current, current_ll=current_ll)
    write_config()
    # every chain's steps, the burn-in's (a step of each chain a round) and then the kept samples'
    bar = Progress(burn_in * chains + samples, burned * chains + len(kept["z"]), desc="ESS steps", unit="step",
                   progress=run.progress, every=10.0)
    try:
        while burned < burn_in:  # every chain's first steps, discarded
            current, current_ll, _, _ = elliptical_slice_round(current, current_ll, run.evaluate, rng,
                                                               run.prior_scale)
            burned += 1
            _save_sampler(run, rng, shift_res, kept, burned, current=current, current_ll=current_ll)
            bar.update(chains, note="burn-in")
        while len(kept["z"]) < samples:
            active = min(chains, samples - len(kept["z"]))
            z, ll, evals, extra = elliptical_slice_round(current[:active], current_ll[:active], run.evaluate, rng,
                                                         run.prior_scale)
            _keep(run, kept, z, ll, extra, evaluations=evals)
            current[:active], current_ll[:active] = z, ll
            _save_sampler(run, rng, shift_res, kept, burned, current=current, current_ll=current_ll)
            bar.update(active, note="sampling")
    finally:
        bar.close()
    return shift_res, kept


def gradient_kind(run: "_Run") -> str:
    """How NUTS gets the log-likelihood's gradient: ``"autograd"`` when the
    likelihood is one differentiable function of z that fits a backward
    pass: without batch norm (batch by batch), or with population batch-norm
    statistics (``bn_stats="population"``: the whole training set as one
    batch) when three times the layer outputs of the whole set fit the
    engine's memory budget; else ``"fd"``: central differences of the
    engine's likelihood, the 2k displaced points of every chain in one call."""
    if not bn_modules(run.net):
        return "autograd"
    if run.eval_options["bn_stats"] != "population" or instance_norms(run.net):
        return "fd"
    return "autograd" if whole_set_fits(run.net, run.data, 3) else "fd"


class LogPosterior:
    """NUTS's target: points z (n, k) -> log posterior (n,) and its gradient
    (n, k), -N x train NLL / T - |z|² / (2σ²), in fp32 (TF32 off) whatever the
    evaluation's precision. ``kind`` is :func:`gradient_kind`'s.

    autograd: the engine's likelihood computed directly, the network in eval
    mode but for batch norm, which in the population case normalises the
    whole training set, as one batch, by its own statistics; the points one
    after another. fd: the engine's value at z, and central differences at
    z ± h e_i, all the points of a call in one engine call; ``h`` is set by
    :meth:`set_scale` to a tenth of the smallest step size (the posterior's
    scale, not the prior's), first ``FD_STEP`` x the prior's scale."""

    FD_FRACTION = 0.1

    def __init__(self, run: "_Run"):
        self.run, self.kind = run, gradient_kind(run)
        self.h = FD_STEP * run.prior_scale
        sub, data = run.subspace, run.data
        self.n, self.k = len(data.y_train), sub.dim
        if self.kind == "autograd":  # batch norm (then in population mode) normalises the whole set by itself
            population = run.eval_options["bn_stats"] == "population" and bool(bn_modules(run.net))
            self.loss = TrainLoss(run.net, data, "population" if population else "batches",
                                  run.eval_options["batch_size"], purpose="NUTS's gradients in the subspace")
            self.shift, self.basis = sub.shift.double(), sub.basis.double()

    def set_scale(self, step_sizes: np.ndarray) -> bool:
        """For finite differences: h from the step sizes about to be used. True when h changed."""
        h = self.FD_FRACTION * float(np.min(step_sizes))
        if self.kind != "fd" or h == self.h:
            return False
        self.h = h
        return True

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with full_float32():
            ll, grad = self._fd(points) if self.kind == "fd" else self._autograd(points)
        return ll + self.run.log_prior(points), grad - points / self.run.prior_scale ** 2

    def _fd(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k, h, run = self.k, self.h, self.run
        shifts = np.concatenate([np.zeros((1, k)), h * np.eye(k), -h * np.eye(k)])  # (2k + 1, k)
        at = (points[:, None, :] + shifts[None]).reshape(-1, k)
        res = evaluate_points(run.net, run.subspace.anchors(), coefficients(at), run.data,
                              **dict(run.eval_options, amp=False))
        ll = run.log_likelihood(res["train_nll"]).reshape(len(points), 2 * k + 1)
        return ll[:, 0], (ll[:, 1:k + 1] - ll[:, k + 1:]) / (2 * h)  # a non-finite slope: zero force (nuts._drive)

    def _autograd(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        device = self.run.data.device
        lls, grads = np.empty(len(points)), np.empty((len(points), self.k))
        for i, z in enumerate(points):
            zt = torch.tensor(z, dtype=torch.float64, device=device, requires_grad=True)
            total = torch.zeros((), dtype=torch.float64, device=device)
            for x, y in self.loss.batches():  # one backward per batch: the graph of one batch in memory at a time
                nll = self.loss.nll_sum((self.shift + zt @ self.basis).float(), x, y)
                (nll / self.n).backward()
                total += nll.detach()
            lls[i] = -float(total) / self.run.temperature
            grads[i] = -zt.grad.cpu().numpy() * self.n / self.run.temperature
        return lls, grads


_NUTS_PER_SAMPLE = ("step_size", "accept", "depth", "divergent")
_MASS_STATE = ("mass_inv", "mass_count", "mass_mean", "mass_m2")
_NUTS_STATE = ("rng", "current", "current_lp", "current_grad", "burned", "da_mu", "da_log_step", "da_log_bar",
               "da_h_bar", "da_m", *(f"shift_{m}" for m in (*METRICS, "probs")), *_PER_SAMPLE, *_NUTS_PER_SAMPLE)


def _sample_nuts(run: _Run, write_config: Callable[[], None], *, samples: int, chains: int, burn_in: int,
                 max_depth: int, seed: int, mass: str = "identity"
                 ) -> tuple[dict[str, Any], dict[str, list], dict[str, Any]]:
    """The No-U-Turn Sampler (:mod:`landscape.nuts`): ``chains`` chains from the
    start, their step sizes adapted by dual averaging over the ``burn_in``
    discarded transitions (without one, the first step size found is kept)
    and, with ``mass="diag"``, a diagonal mass matrix shared by the chains
    estimated in Stan's windows (:class:`~landscape.nuts.MassAdaptation`;
    the step sizes found again and their adaptation restarted after each
    window), then transitions kept until ``samples`` are drawn; each
    round's new points evaluated together by the engine for their metrics.
    Returns the centre's values, the samples' (``_PER_SAMPLE`` and
    ``_NUTS_PER_SAMPLE``) and the sampler's summary."""
    k = run.subspace.dim
    fn = LogPosterior(run)
    adapting_mass = mass == "diag"

    def rescale(steps: np.ndarray) -> None:
        """Finite differences' h follows the step sizes of the next round; the
        chains' gradients are recomputed with it, so that each trajectory's
        force is one function of the position."""
        nonlocal current_lp, current_grad
        if fn.set_scale(steps):
            current_lp, current_grad = fn(current)

    def refresh(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The chains' values and gradients for the step search after a mass window: :func:`rescale`'s."""
        rescale(steps)
        return current_lp, current_grad

    def save() -> None:
        _save_sampler(run, rng, shift_res, kept, burned, current=current, current_lp=current_lp,
                      current_grad=current_grad, **adapt.state(), **(metric.state() if adapting_mass else {}))

    metric = MassAdaptation(burn_in if adapting_mass else 0, k)  # the unit mass: no windows, never updated
    resumed = _resume_sampler(run, (*_NUTS_STATE, *(_MASS_STATE if adapting_mass else ())),
                              (*_PER_SAMPLE, *_NUTS_PER_SAMPLE), samples)
    if resumed is not None:
        state, rng, shift_res, kept = resumed
        current, current_lp, current_grad = state["current"], state["current_lp"], state["current_grad"]
        burned, adapt = int(state["burned"]), DualAveraging.from_state(state)
        if adapting_mass:
            metric = MassAdaptation.from_state(state, burn_in)
    else:
        rng = np.random.default_rng(seed)
        start = run.subspace.start_point()
        _, first = run.evaluate(np.zeros((1, k)))  # the centre, for the table
        lp, grad = fn(start[None])  # where the chains start
        if not (np.isfinite(lp[0]) and np.isfinite(grad).all()):
            raise UserError(f"{run.subspace.source or 'the subspace'}: the log posterior where the chains start is "
                            f"not finite ({lp[0]}), or its gradient is not; nothing to sample around")
        shift_res = {m: v[0] for m, v in first.items()}
        current, current_lp, current_grad = np.tile(start, (chains, 1)), np.repeat(lp, chains), np.tile(grad,
                                                                                                         (chains, 1))
        adapt = DualAveraging(initial_step_size(current, current_lp, current_grad, fn, rng, run.prior_scale))
        kept = {name: [] for name in (*_PER_SAMPLE, *_NUTS_PER_SAMPLE)}
        burned = 0
        save()
    write_config()
    bar = Progress(burn_in * chains + samples, burned * chains + len(kept["z"]), desc="NUTS transitions",
                   unit="transition", progress=run.progress, every=10.0)  # each chain's, as ESS's steps
    try:
        while burned < burn_in:  # every chain's first transitions: step-size adaptation, discarded
            rescale(adapt.step)
            r = nuts_round(current, current_lp, current_grad, fn, rng, adapt.step, max_depth, metric.inv_mass)
            current, current_lp, current_grad = r.theta, r.logp, r.grad
            adapt = warmup_step(burned, r, adapt, metric, fn, rng, refresh)
            burned += 1
            save()
            bar.update(chains, note="burn-in")
        step = adapt.final
        rescale(step)
        while len(kept["z"]) < samples:
            active = min(chains, samples - len(kept["z"]))
            r = nuts_round(current[:active], current_lp[:active], current_grad[:active], fn, rng, step[:active],
                           max_depth, metric.inv_mass)
            ll, extra = run.evaluate(r.theta)  # the engine's metrics and test probabilities of the new samples
            _keep(run, kept, r.theta, ll, extra, evaluations=r.steps, step_size=step[:active], accept=r.accept,
                  depth=r.depth, divergent=r.divergent)
            current[:active], current_lp[:active], current_grad[:active] = r.theta, r.logp, r.grad
            save()
            bar.update(active, note="sampling")
    finally:
        bar.close()
    info = {"gradient": fn.kind, "max_depth": max_depth, "target_accept": TARGET_ACCEPT,
            "step_size": [float(x) for x in adapt.final], "accept_mean": float(np.mean(kept["accept"])),
            "divergent": int(np.sum(kept["divergent"])), "depth_mean": float(np.mean(kept["depth"])),
            "max_depth_hits": int(np.sum(np.asarray(kept["depth"]) >= max_depth)),
            "mass": mass, "inverse_mass": [float(x) for x in metric.inv_mass]}
    if 2 * info["divergent"] > len(kept["divergent"]):  # the step size never came down to the posterior's scale
        print(f"note: {info['divergent']} of {len(kept['divergent'])} kept NUTS transitions diverged (mean "
              f"acceptance {info['accept_mean']:.2f}): the step size did not adapt in {burn_in} burn-in "
              f"transitions; the samples are not the posterior's: give a longer burn-in (--burn-in 20 or more)",
              file=sys.stderr)
    return shift_res, kept, info


def _sample_vi(run: _Run, write_config: Callable[[], None], *, samples: int, epochs: int, lr: float,
               batch_size: int, init_std: float, seed: int, family: str = "gaussian"
               ) -> tuple[dict[str, Any], dict[str, list], dict[str, Any], dict[str, np.ndarray]]:
    """VI: the fit, then ``samples`` draws from q evaluated as one sweep; the
    centre's values, the samples', and the fit's summary and arrays."""
    k = run.subspace.dim
    state = None
    if run.store is not None and run.store.exists():  # a stopped fit: its state must be this run's
        needed = (*_VI_STATE, "flow") if family == "realnvp" else _VI_STATE
        state = _read_state(run.store, run.key, needed, "the variational fit's saved state")
    write_config()
    mu, sigma, flow, records = _fit_vi(run, state, epochs=epochs, lr=lr, batch_size=batch_size, init_std=init_std,
                                       seed=seed, family=family)
    eps = np.random.default_rng(seed).standard_normal((samples, k))
    if flow is None:
        z = mu.numpy() + sigma.numpy() * eps
    else:
        with torch.no_grad():
            z = flow_kl(torch.from_numpy(eps), mu, sigma, flow, run.prior_scale)[0].numpy()
    # the centre (the table's row), then the samples
    res = run.sweep(np.concatenate([np.zeros((1, k)), z]), POINTS_STORE, "subspace-vi-samples", probs=True,
                    what=f"the centre and {len(z)} samples of q")
    ll = run.log_likelihood(res["train_nll"][1:])
    kept = {"z": list(z), "chain": [0] * samples, "log_likelihood": list(ll),
            "log_posterior": list(ll + run.log_prior(z)), "evaluations": [1] * samples,
            **{m: list(res[m][1:]) for m in (*METRICS, "probs")}}
    fit = {"family": family, "mu": mu.tolist(), "sigma": sigma.tolist(), "epochs": epochs, "lr": lr,
           "batch_size": batch_size, "init_std": init_std,
           "final": {name: records[-1][name] for name in ("loss", "nll", "kl")}}
    arrays = {"vi_mu": mu.numpy(), "vi_sigma": sigma.numpy(),
              **{f"vi_{name}": np.array([r[name] for r in records]) for name in ("loss", "nll", "kl")},
              "vi_mu_path": np.array([r["mu"] for r in records]),
              "vi_sigma_path": np.array([r["sigma"] for r in records])}
    if flow is not None:
        arrays["vi_flow"] = torch.nn.utils.parameters_to_vector(flow.parameters()).numpy()
        fit["flow"] = {"layers": FLOW_LAYERS, "hidden": FLOW_HIDDEN}
    return {m: v[0] for m, v in res.items()}, kept, fit, arrays


def _grid(run: _Run, z: np.ndarray, grid: int) -> dict[str, np.ndarray]:
    """The log-posterior and metrics on a grid x grid square over z_1, z_2 (the
    others 0) around the samples ``z``, the landmarks and the prior's sd."""
    k = run.subspace.dim
    marks = [np.abs(np.asarray(c[:2])).max() for c in run.subspace.landmarks.values()]
    r = 1.2 * max([float(np.abs(z[:, :2]).max()), run.prior_scale, *marks])
    axis = np.linspace(-r, r, grid)
    gz = np.zeros((grid * grid, k))
    gz[:, 0], gz[:, 1] = np.repeat(axis, grid), np.tile(axis, grid)  # row i * G + j is (axis[i], axis[j])
    res = run.sweep(gz, GRID_STORE, "subspace-grid", probs=False,
                    what=f"the {grid} x {grid} grid of the log-posterior over z1, z2")
    arrays = {"grid_axis": axis,
              "grid_log_posterior": (run.log_likelihood(res["train_nll"]) + run.log_prior(gz)).reshape(grid, grid)}
    arrays.update({f"grid_{m}": res[m].reshape(grid, grid) for m in METRICS})
    return arrays


def sample_subspace(
    subspace: Subspace,
    out: str | Path | None = None,
    *,
    samples: int = 30,
    method: str = "ess",
    chains: int = 1,
    burn_in: int = 0,
    max_depth: int | None = None,
    mass: str | None = None,
    vi_epochs: int = 50,
    vi_lr: float = 0.1,
    vi_batch_size: int = 128,
    vi_init_std: float = 1.0,
    vi_family: str = "gaussian",
    grid: int = 0,
    temperature: float = 1.0,
    prior_scale: float = 1.0,
    seed: int = 0,
    data: Dataset | None = None,
    wd: float | None = None,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    precision: str = "fp32",
    resume: bool = False,
    progress: bool = False,
    argv: Sequence[str] | None = None,
    **data_overrides: Any,
) -> SubspaceResult:
    """Sample the posterior over the subspace's coordinates by elliptical slice
    sampling (``method="ess"``), the No-U-Turn Sampler (``"nuts"``, at most
    2^``max_depth`` - 1 gradient steps a sample, default 8; its burn-in also
    adapts the step sizes and, with ``mass="diag"`` (the default; or
    ``"identity"``), a diagonal mass matrix in Stan's windows when it has
    ``nuts.MIN_MASS_BURN_IN`` (50) transitions or more; see :func:`_sample_nuts`) or from a variational
    fit (``"vi"``; ``vi_family="realnvp"`` for a flow), and average the
    samples' predictions.

    ESS: ``chains`` chains start at ``subspace.start`` (z = 0, the shift, unless
    it says otherwise: a curve's at its end t = 1) and take one step each per
    round, their proposals evaluated together; the first ``burn_in`` steps of
    every chain are discarded, then steps are kept until ``samples`` samples
    are drawn (rounds x chains, the last round's chains cut to fit). VI:
    q(z) = N(mu, diag sigma²) fitted for ``vi_epochs`` epochs (SGD, rate
    ``vi_lr``, momentum 0.9, batches of ``vi_batch_size``, sigma starting at
    ``vi_init_std``; see :func:`_fit_vi`), then ``samples`` independent
    draws from it, evaluated as one sweep. With
    ``grid`` G >= 2 the log-posterior is also evaluated on a G x G grid over
    the first two coordinates (the others 0), a square around the samples,
    the landmarks and the prior's standard deviation. Returns, and
    with ``out`` writes to ``subspace.npz`` and ``summary.json``: every
    sample's z, chain, log-likelihood, log-posterior, evaluations and
    metrics; the shift's metrics; the model average's test NLL and error
    after 1..S samples. ``wd`` (in train_loss only: the prior is on z) and
    the data default to the checkpoint's run."""
    check_data_options(data_overrides)  # a misspelt keyword lands among them
    amp = precision_amp(precision)
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "vi" and (chains != 1 or burn_in != 0):
        raise UserError("--chains and --burn-in are the samplers' (--method ess or nuts); VI draws "
                        "independent samples")
    if max_depth is not None and method != "nuts":
        raise UserError("--max-depth is NUTS's (--method nuts)")
    if mass is not None and method != "nuts":
        raise UserError("--mass is NUTS's (--method nuts)")
    asked_mass, mass = mass, "diag" if mass is None else mass
    if mass not in ("diag", "identity"):
        raise UserError(f"unknown --mass {mass!r}; choose diag or identity")
    if vi_family not in VI_FAMILIES:
        raise UserError(f"unknown --vi-family {vi_family!r}; choose one of: {', '.join(VI_FAMILIES)}")
    if vi_family != "gaussian" and method != "vi":
        raise UserError("--vi-family is VI's (--method vi)")
    if vi_family == "realnvp" and subspace.dim < 2:
        raise UserError(f"--vi-family realnvp needs a subspace of rank 2 or more; this one has {subspace.dim}")
    max_depth = NUTS_MAX_DEPTH if max_depth is None else max_depth
    for flag, value, least in (("--samples", samples, 1), ("--chains", chains, 1), ("--burn-in", burn_in, 0),
                               ("--vi-epochs", vi_epochs, 1), ("--vi-batch-size", vi_batch_size, 2),
                               ("--max-depth", max_depth, 1)):
        if not is_whole(value) or value < least:
            raise UserError(f"{flag} must be a whole number of at least {least}, got {value}")
    if max_depth > 20:
        raise UserError(f"--max-depth {max_depth}: a tree of 2^{max_depth} leapfrog steps; at most 20")
    if not is_whole(grid) or grid < 0 or grid == 1:
        raise UserError(f"--grid must be 0 (none) or a whole number of at least 2, got {grid}")
    if grid and subspace.dim < 2:
        raise UserError(f"--grid draws the first two coordinates; this subspace has {subspace.dim}")
    for flag, value in (("--temperature", temperature), ("--prior-scale", prior_scale), ("--vi-lr", vi_lr),
                        ("--vi-init-std", vi_init_std)):
        if not (np.isfinite(value) and value > 0):
            raise UserError(f"{flag} must be a finite number > 0, got {value}")
    seed = check_seed(seed)
    if rank_and_world()[1] > 1 or world_size() > 1:
        raise UserError("subspace sampling runs in one process (its chains are sequential); run it without torchrun")
    out_path = Path(out) if out is not None else None
    device = subspace.shift.device
    net = subspace.model.to(device)
    data, wd = stored_data(subspace.meta, subspace.spec, subspace.source or "the subspace", data_overrides, device,
                           data, wd)
    settings = {"kind": f"subspace-{subspace.kind}", "method": method, "samples": samples, "grid": grid,
                "start": [float(x) for x in subspace.start_point()], "temperature": temperature,
                "prior_scale": prior_scale, "seed": seed, "wd": wd, "batch_size": batch_size, "bn_batches": bn_batches,
                "bn_stats": bn_stats, "precision": precision, "dataset": data.describe()}
    settings.update({"chains": chains, "burn_in": burn_in} if method != "vi" else {
        "vi_epochs": vi_epochs, "vi_lr": vi_lr, "vi_batch_size": vi_batch_size, "vi_init_std": vi_init_std})
    if vi_family != "gaussian":  # only then: a Gaussian fit keeps the request key of earlier builds
        settings.update(vi_family=vi_family, vi_flow={"layers": FLOW_LAYERS, "hidden": FLOW_HIDDEN})
    if method == "nuts":
        settings["max_depth"] = max_depth
        if not adaptation_windows(burn_in):  # a short burn-in estimates no mass: the identity's run
            if asked_mass == "diag" and is_main():
                print(f"note: --mass diag is estimated from a --burn-in of {nuts_module.MIN_MASS_BURN_IN} or more; "
                      f"this run's {burn_in} leaves the identity", file=sys.stderr)
            mass = "identity"
        if mass == "diag":  # only then: an identity run keeps the request key of earlier builds
            settings["mass"] = mass
    request = request_key([subspace.shift, subspace.basis], settings)
    finished = begin_result(out_path, "subspace.npz", resume, "subspace", request, stores=STORES)
    if finished is not None:
        arrays, summary = finished
        return SubspaceResult(summary=summary, arrays=arrays, out=out_path)

    if resume and out_path is not None and (out_path / STORE).exists() and bn_stats == "auto" and bn_batches is None:
        bn_stats = stored_bn_stats(out_path)  # free memory may have changed since: keep the estimator
    bn_stats = resolve_bn_stats(bn_stats, net, data, bn_batches)
    key = request_key([subspace.shift, subspace.basis], dict(settings, bn_stats=bn_stats))
    run = _Run(subspace=subspace, net=net, data=data, temperature=temperature, prior_scale=prior_scale,
               eval_options=dict(wd=wd, batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats,
                                 points_per_pass=points_per_pass, amp=amp),
               progress=progress, resume=resume, out=out_path, key=key)
    k = subspace.dim

    def write_config() -> None:  # once the saved state, if any, is known to be this run's
        if out_path is not None:
            config = dict(settings, command="subspace", argv=list(argv) if argv is not None else None,
                          checkpoint=str(subspace.source) if subspace.source else None, basis=subspace.kind,
                          rank=k, device=str(device), bn_stats=bn_stats)
            write_json(out_path / "config.json", config)

    fit: dict[str, Any] = {}
    nuts_info: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    if method == "ess":
        shift_res, kept = _sample_ess(run, write_config, samples=samples, chains=chains, burn_in=burn_in, seed=seed)
    elif method == "nuts":
        shift_res, kept, nuts_info = _sample_nuts(run, write_config, samples=samples, chains=chains,
                                                  burn_in=burn_in, max_depth=max_depth, seed=seed, mass=mass)
        arrays.update({f"nuts_{name}": np.asarray(kept[name]) for name in _NUTS_PER_SAMPLE})
    else:
        shift_res, kept, fit, arrays = _sample_vi(run, write_config, samples=samples, epochs=vi_epochs, lr=vi_lr,
                                                  batch_size=vi_batch_size, init_std=vi_init_std, seed=seed,
                                                  family=vi_family)
    z = np.stack(kept["z"]).reshape(samples, k)
    if grid:
        arrays.update(_grid(run, z, grid))
    labels, probs = data.y_test.cpu().numpy(), np.stack(kept["probs"])  # (samples, test images, classes)
    bma_nll, bma_error = running_ensemble(probs, labels)
    sample_ece = np.array([expected_calibration_error(p, labels) for p in probs])
    arrays.update({
        "z": z, "chain": np.asarray(kept["chain"], dtype=np.int64),
        "log_likelihood": np.asarray(kept["log_likelihood"], dtype=np.float64),
        "log_posterior": np.asarray(kept["log_posterior"], dtype=np.float64),
        "evaluations": np.asarray(kept["evaluations"], dtype=np.int64),
        "bma_test_nll": bma_nll, "bma_test_error": bma_error, "sample_test_ece": sample_ece,
    })
    arrays.update({f"sample_{m}": np.asarray(kept[m], dtype=np.float64) for m in METRICS})
    arrays.update({f"shift_{m}": np.asarray(shift_res[m], dtype=np.float64) for m in METRICS})
    arrays.update({f"landmark_{name}": np.asarray(c, dtype=np.float64) for name, c in subspace.landmarks.items()})
    if subspace.path is not None:
        arrays["path_z"] = np.asarray(subspace.path, dtype=np.float64)
    summary: dict[str, Any] = {
        "shift": {**{m: float(shift_res[m]) for m in METRICS},
                  **({"test_ece": expected_calibration_error(np.asarray(shift_res["probs"]), labels)}
                     if "probs" in shift_res else {})},
        "bma": {"test_error": float(bma_error[-1]), "test_nll": float(bma_nll[-1]),
                "test_ece": expected_calibration_error(probs.mean(0), labels), "members": samples},
        "samples": {**{f"{m}_mean": float(arrays[f"sample_{m}"].mean()) for m in METRICS},
                    "test_ece_mean": float(sample_ece.mean())},
        "basis": subspace.kind, "rank": k, "chains": chains, "burn_in": burn_in, "grid": grid,
        **({"path_off_plane": subspace.path_off} if subspace.path is not None else {}),
        "temperature": temperature, "prior_scale": prior_scale, "seed": seed, "wd": wd,
        "train_size": len(data.y_train),
        "z_mean": [float(x) for x in z.mean(0)], "z_std": [float(x) for x in z.std(0)],
        "evaluations_per_sample": float(arrays["evaluations"].mean()),
        "basis_norms": [float(x) for x in subspace.basis.double().norm(dim=1)],
        "landmarks": subspace.landmarks, "start": [float(x) for x in subspace.start_point()], "method": method,
        **({"vi": fit} if fit else {}), **({"nuts": nuts_info} if nuts_info else {}),
        "eval_split": data.eval_split, "synthetic": data.synthetic, "dataset": data.describe(),
        "checkpoint": str(subspace.source) if subspace.source else None, "bn_stats": bn_stats,
        "notes": "w(z) = shift + basis^T z; prior z ~ N(0, prior_scale^2 I); log-likelihood = -N x train NLL / "
                 "temperature with batch norm re-estimated at every point; "
                 + {"ess": "elliptical slice sampling, chains from start",
                    "nuts": "the No-U-Turn Sampler (Hoffman & Gelman 2014), chains from start, step sizes adapted "
                            "by dual averaging during burn-in, gradients by " + (
                                "autograd" if nuts_info.get("gradient") == "autograd" else "central differences"),
                    "vi": ("VI: q = N(mu, diag sigma^2) fitted by SGD on mean NLL + T KL / N (train-mode batch "
                           "norm), independent draws from q" if vi_family == "gaussian" else
                           "VI: q = mu + sigma g(N(0, I)), g a RealNVP flow, fitted by SGD on mean NLL + T KL / N "
                           "(KL by one draw per batch; train-mode batch norm), independent draws from q")}[method]
                 + "; bma = averaged predicted probabilities of the samples; train_loss = NLL + wd/2 ||w||^2; "
                   "errors in percent",
    }
    finish_result(out_path, "subspace.npz", arrays, summary, request, stores=STORES)
    return SubspaceResult(summary=summary, arrays=arrays, out=out_path)
