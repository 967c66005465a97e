"""Bayesian networks by variational inference over the weights: mean-field
Gaussian posteriors, variational dropout, variance networks (Molchanov's
talk, Kingma et al. 2015, Molchanov et al. 2017, Neklyudov et al. 2018),
HWA (averaging the variational means along a cyclical rate), and the three
prediction schemes.

The stochastic weights are the ``weight`` tensors of the network's linear
and convolution layers; every other parameter (biases, batch-norm scales) is
a point estimate trained with them. Each stochastic weight has the Gaussian
posterior q(w_ij) = N(m_ij, s_ij²), parameterised by a ``family``:

    additive   m = mu, s² = sigma²            (one sigma per weight)
    weight     m = mu, s² = alpha_ij mu²      (variational dropout, one alpha per weight)
    neuron     m = mu, s² = alpha_j mu²       (one alpha per output unit)
    layer      m = mu, s² = alpha mu²         (one alpha per layer)
    variance   m = 0,  s² = sigma²            (a variance network: the means are zero and stay so;
                                               its output layer is additive, since logits of zero
                                               mean, symmetric in sign, could not favour a class)

The prior is ``log-uniform`` (p(w) ∝ 1 / |w|; the KL divergence is the
approximation of Molchanov et al. 2017, -KL = k1 sigmoid(k2 + k3 log alpha) -
0.5 log(1 + 1/alpha) - k1 with alpha = s² / m², which is 0 for a variance
network; the ELBO an evaluation reports uses the exact KL, ``log_uniform_kl_exact``)
or ``gaussian`` N(0, prior_scale²) (closed form). Training maximises
the ELBO per sample, -(mean NLL + T x KL / N), T the ``temperature`` (ramped
up from 0 over ``kl_warmup`` epochs), by Adam (or SGD) on the means, the log-variance
parameters and the point estimates, with the local reparameterisation trick:
a layer's pre-activations are sampled, b = x mu + sqrt(x² s²) e, e ~ N(0, 1)
per example and output, through forward hooks on the layers, so any module
built from ``nn.Linear`` and ``nn.Conv*d`` trains unchanged.

HWA (the talk's Algorithm 1): from ``hwa_start`` the variance parameters
(log sigma², or log alpha: s² = alpha mu² still follows the means) are frozen,
the means continue under a cyclical rate (``hwa_lr_max`` -> ``hwa_lr``
within each ``cycle`` epochs) and are averaged at each cycle's end (with the
point estimates); ``hwa.pt`` is the posterior with the averaged means.

Prediction (``evaluate_variational``): the deterministic network (the
posterior mean E w), single weight samples (the stochastic scheme: the mean
of their metrics), and the ensemble of S samples (their averaged predicted
probabilities, after 1..S samples). The mean and every sample are points of
the engine, with batch norm re-estimated for each.
"""

from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .brief import brief_repr
from .bn import reestimate_bn
from .checkpoint import (Checkpoint, check_state_dict, load_checkpoint, load_model, read_json, read_jsonl,
                         save_checkpoint)
from .data import Dataset
from .errors import UserError, check_nonnegative, check_seed, check_whole, shell_word
from .evaluate import evaluate_model, precision_amp, train_logits, weights_finite
from .inputs import check_data_options, named_model, note_split_leak, own_network, run_data, stored_data
from .models import check_unsaved
from .sweep import begin_result, finish_result, process_device, request_key
from .train import Task, TrainConfig, _say, check_rate, learning_rate, prepare_run, run_training
from .weights import ParamSpace

__all__ = ["FAMILIES", "PRIORS", "VariationalConfig", "VariationalNet", "VariationalPosterior", "VariationalResult",
           "VariationalEvaluation", "stochastic_names", "gaussian_kl", "log_uniform_kl", "log_uniform_kl_exact", "run_variational",
           "load_variational", "posterior_net", "posterior_moments", "evaluate_variational", "WD_REFUSED"]

FAMILIES = ("additive", "weight", "neuron", "layer", "variance")
PRIORS = ("log-uniform", "gaussian")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Molchanov et al. 2017, eq. 14: the fitted approximation of -KL(q || log-uniform).
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695
_LOG_ALPHA_RANGE = (-20.0, 20.0)  # exp() of the log-variance parameters stays finite
# Fitting, evaluating or joining posteriors: a weight decay would be a second prior.
WD_REFUSED = ("--wd does not apply to a variational posterior: its prior regularises the weights (the KL term), "
              "and the ELBO has no weight-decay term")
_VAR_FLOOR = 1e-16  # sqrt() of a pre-activation variance of 0 (an input of zeros) keeps a finite gradient


def stochastic_names(model: nn.Module, frozen: bool = False) -> list[str]:
    """The parameters that get a posterior: the ``weight`` of every linear and
    (1-3 d) convolution layer the network trains, in the model's order (with
    ``frozen``, those it does not train too: what builds before this rule
    gave them). A weight the network does not train (``requires_grad=False``,
    a frozen pretrained layer) stays a point, as everywhere else. A weight
    tied between layers is refused (one tensor, two posteriors)."""
    names, seen = [], {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, _LAYERS) and isinstance(w, nn.Parameter):
            full = f"{name}.weight" if name else "weight"
            if id(w) in seen:
                raise UserError(f"the layers {seen[id(w)]} and {full} share one weight tensor; variational "
                                f"inference here gives each weight tensor one posterior, so tied weights are "
                                f"not supported")
            seen[id(w)] = full
            if w.requires_grad or frozen:
                names.append(full)
    return names


def _in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread
    (where ``torch.utils.checkpoint`` recomputes a forward)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def gaussian_kl(mean: torch.Tensor, var: torch.Tensor, prior_scale: float) -> torch.Tensor:
    """Sum over the entries of KL(N(mean, var) || N(0, prior_scale²))."""
    ratio = var / prior_scale ** 2
    return 0.5 * (ratio + mean * mean / prior_scale ** 2 - 1.0 - torch.log(ratio)).sum()


def log_uniform_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Sum over the entries of KL(N(m, alpha m²) || log-uniform), Molchanov et
    al.'s approximation (0 as alpha -> infinity)."""
    return (_K1 - _K1 * torch.sigmoid(_K2 + _K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)).sum()


# The exact KL(N(m, alpha m²) || log-uniform), normalised as the approximation is (0 as alpha -> infinity):
# with e = w / m ~ N(1, alpha), KL = -0.5 log alpha + E log|e| + (gamma + ln 2) / 2. Since e² / alpha is
# noncentral chi-squared with one degree of freedom, a Poisson(lambda = 1 / (2 alpha)) mixture of chi-squared
# with 1 + 2J degrees of freedom, and E log chi²_k = ln 2 + digamma(k / 2), this is exactly
# KL = E_J [sum_{k<J} 1 / (2k + 1)] = sum_k P(J > k) / (2k + 1). Tabulated over log alpha in
# [-8, 8] in steps of 1e-3 (linear interpolation: within 3.2e-8 nats per weight, above the exact value); beyond,
# the expansions -0.5 log alpha + (gamma + ln 2) / 2 - alpha / 2 - 3 alpha² / 4 (alpha -> 0) and
# lambda - lambda² / 3 (lambda -> 0), each within 1e-10 there.
_EXACT_RANGE, _EXACT_STEP = (-8.0, 8.0), 1e-3


@functools.lru_cache(maxsize=1)
def _exact_kl_table() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gammainc
    grid = np.arange(_EXACT_RANGE[0], _EXACT_RANGE[1] + _EXACT_STEP / 2, _EXACT_STEP)
    values = np.empty_like(grid)
    for i, lam in enumerate(0.5 * np.exp(-grid)):
        k = np.arange(int(lam + 12 * math.sqrt(lam) + 40))
        values[i] = (gammainc(k + 1, lam) / (2 * k + 1)).sum()  # P(J > k) = the regularised lower gamma
    return grid, values


def log_uniform_kl_exact(log_alpha: torch.Tensor) -> float:
    """Sum over the entries of the exact KL(N(m, alpha m²) || log-uniform),
    with the constant of Molchanov et al.'s approximation (0 as alpha ->
    infinity), in float64; not differentiable (the fit uses the approximation,
    within 0.01 nats per weight of it)."""
    la = log_alpha.detach().double().cpu().numpy().ravel()
    grid, values = _exact_kl_table()
    low, high = la < _EXACT_RANGE[0], la > _EXACT_RANGE[1]
    mid = ~(low | high)
    alpha, lam = np.exp(la[low]), 0.5 * np.exp(-la[high])
    return float(np.interp(la[mid], grid, values).sum()
                 + (-0.5 * la[low] + 0.5 * (np.euler_gamma + math.log(2)) - alpha / 2 - 0.75 * alpha ** 2).sum()
                 + (lam - lam ** 2 / 3).sum())


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold dots


class VariationalNet(nn.Module):
    """A network whose linear / convolution weights have a Gaussian posterior.

    ``net``'s own weights are the means mu (zero, and frozen, for a variance
    network); ``scales`` holds one log-variance tensor per stochastic weight:
    log sigma² (additive, variance) or log alpha (weight, neuron, layer).
    While ``noisy`` (the default) and in train mode, forward hooks sample
    each layer's pre-activations (the local reparameterisation trick); in
    eval mode, or with ``noisy`` False, ``net`` is the deterministic network
    of the means.
    """

    def __init__(self, net: nn.Module, family: str, *, prior: str = "log-uniform", prior_scale: float = 1.0,
                 init_alpha: float = 0.01, names: Sequence[str] | None = None) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise UserError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
        if prior not in PRIORS:
            raise UserError(f"unknown prior {prior!r}; choose one of: {', '.join(PRIORS)}")
        self.net, self.family, self.prior, self.prior_scale = net, family, prior, float(prior_scale)
        # ``names``: a posterior's own (a copy of its means, where a variance network's are frozen by it)
        self.names = list(names) if names is not None else stochastic_names(net)
        if not self.names:
            raise UserError("the network has no linear or convolution weights to put a posterior on"
                            + (" that it trains" if stochastic_names(net, frozen=True) else ""))
        if family == "variance" and len(self.names) < 2:
            raise UserError("a variance network needs a hidden linear or convolution layer: its output layer keeps "
                            "its means (zero-mean logits would carry no class)")
        self.scales = nn.ParameterDict()
        with torch.no_grad():
            for name in self.names:
                mu = net.get_parameter(name)
                # inside the clamp's range, where the gradient passes (a tiny mean would give log s² < -20)
                start = self._initial(name, mu, init_alpha).clamp(_LOG_ALPHA_RANGE[0] + 1, _LOG_ALPHA_RANGE[1] - 1)
                self.scales[_key(name)] = nn.Parameter(start)
                if self.family_of(name) == "variance":
                    mu.zero_()
                    mu.requires_grad_(False)
        self.noisy = True
        self._drawn: set[str] = set()  # the layers whose noise this forward of the network has drawn
        self._handles = [net.get_submodule(name.rpartition(".")[0]).register_forward_hook(self._hook(name))
                         for name in self.names]
        self._handles.append(net.register_forward_pre_hook(lambda *_: self._drawn.clear()))

    def family_of(self, name: str) -> str:
        """The parameterisation of stochastic weight ``name``: the network's
        family, except the output layer of a variance network (the last
        linear / convolution layer), which is ``additive``: its means stay."""
        return "additive" if self.family == "variance" and name == self.names[-1] else self.family

    def _initial(self, name: str, mu: torch.Tensor, init_alpha: float) -> torch.Tensor:
        """The first log-variance parameters: s² = init_alpha mu² (a variance
        network's hidden layers: sigma² = mu², the starting weights' squares)."""
        log_a = math.log(init_alpha)
        family = self.family_of(name)
        if family == "additive":
            return log_a + torch.log(mu.detach() ** 2 + 1e-16)
        if family == "weight":
            return torch.full_like(mu, log_a)
        if family == "neuron":
            return torch.full((mu.shape[0],) + (1,) * (mu.dim() - 1), log_a, dtype=mu.dtype, device=mu.device)
        if family == "layer":
            return torch.full((1,) * mu.dim(), log_a, dtype=mu.dtype, device=mu.device)
        # variance: sigma² = mu², the starting weights' own squares (a constant per layer would make every
        # unit's variance the same function of its input, a symmetry only the noise could break)
        return torch.log(mu.detach() ** 2 + 1e-16)

    def _scale(self, name: str) -> torch.Tensor:
        return self.scales[_key(name)].clamp(*_LOG_ALPHA_RANGE)

    def _mean(self, name: str) -> torch.Tensor:
        """The means of stochastic weight ``name``: looked up by attribute, so
        that under ``torch.func.functional_call`` (a curve's point) it is the
        tensor swapped in, which ``get_parameter`` would refuse."""
        owner, _, leaf = name.rpartition(".")
        return getattr(self.net.get_submodule(owner), leaf)

    def mean_and_var(self, name: str, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior mean and variance of stochastic weight ``name`` (its
        shape), computed in ``dtype`` (default: the parameters')."""
        mu = self._mean(name).to(dtype)
        s = self._scale(name).to(dtype)
        if self.family_of(name) in ("additive", "variance"):
            return mu, torch.exp(s).expand_as(mu)
        return mu, torch.exp(s) * mu * mu

    def kl(self, exact: bool = False) -> torch.Tensor:
        """KL(q || prior), summed over the stochastic weights: with the
        log-uniform prior Molchanov et al.'s approximation (what training
        minimises), or with ``exact`` the exact value, computed in float64
        (float32 would round a sum over every weight by ~1e-7 relative; not
        differentiable; for the KL and the ELBO a posterior reports)."""
        dtype = torch.float64 if exact else None
        total = torch.zeros((), device=self._mean(self.names[0]).device, dtype=dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not exact):
            for name in self.names:
                mu, var = self.mean_and_var(name, dtype)
                family = self.family_of(name)
                if self.prior == "gaussian":  # floored: s² = alpha mu² is 0 where a mean is exactly 0
                    total = total + gaussian_kl(mu, var + _VAR_FLOOR, self.prior_scale)
                elif family == "variance":
                    continue  # KL(N(0, sigma²) || log-uniform) is a constant
                elif exact:
                    total = total + log_uniform_kl_exact(self.log_alpha(name, clamp=False, dtype=dtype))
                else:
                    total = total + log_uniform_kl(self.log_alpha(name))
        return total

    def log_alpha(self, name: str, clamp: bool = True, dtype: torch.dtype | None = None) -> torch.Tensor:
        """log alpha = log(s² / m²) of stochastic weight ``name`` (its shape),
        as the log-uniform prior's KL takes it: the parameter itself for the
        weight / neuron / layer families; for additive noise log sigma² -
        log m², floored and clamped to +-20 (a mean of 0 is all noise), or
        without ``clamp`` as it is (+inf where a mean is 0); in ``dtype``
        (default: the parameters')."""
        mu, s = self._mean(name).to(dtype), self._scale(name).to(dtype)
        if self.family_of(name) in ("additive", "variance"):
            if not clamp:
                return s - torch.log(mu * mu)
            return (s - torch.log(mu * mu + 1e-16)).clamp(*_LOG_ALPHA_RANGE)
        return s.expand_as(mu)

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not (self.noisy and module.training):
                return None
            # A second call would draw a second, independent sample of the same weight; one made while a
            # backward pass runs is activation checkpointing's recomputation (the same draw: it replays the RNG).
            if name in self._drawn and not _in_backward():
                owner = name.rpartition(".")[0] or "the network"
                raise UserError(f"the layer {owner} runs more than once in one forward pass; the local "
                                f"reparameterisation draws its noise per call, so its uses would get independent "
                                f"weight samples (and evaluation one shared draw): a layer used twice is not "
                                f"supported, as tied weights are not")
            self._drawn.add(name)
            x = inputs[0]
            _, var = self.mean_and_var(name)
            var = var.to(x.dtype)
            if isinstance(module, nn.Linear):
                out_var = F.linear(x * x, var)
            else:
                out_var = module._conv_forward(x * x, var, None)
            return output + torch.sqrt(out_var + _VAR_FLOOR) * torch.randn_like(output)

        return hook

    def forward(self, x: torch.Tensor, with_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The logits; with ``with_kl`` also KL(q || prior), so that one
        ``functional_call`` gives both terms of the ELBO at a point."""
        logits = self.net(x)
        return (logits, self.kl()) if with_kl else logits

    def mean_network(self) -> nn.Module:
        """A copy of ``net`` (the means) without this posterior's hooks."""
        net = copy.deepcopy(self.net)
        ids = {h.id for h in self._handles}
        for m in net.modules():
            for hooks in (m._forward_hooks, m._forward_pre_hooks):
                for i in ids & set(hooks):
                    del hooks[i]
        return net

    def like(self, net: nn.Module) -> "VariationalNet":
        """The posterior with this one's variances around the means of ``net``, without hooks."""
        other = VariationalNet(net, self.family, prior=self.prior, prior_scale=self.prior_scale, names=self.names)
        other.load_scales(self.posterior_state()["scales"])
        other.remove_hooks()
        return other

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def deterministic(self) -> Iterator[None]:
        """``net`` computes with the means alone, in any mode."""
        noisy, self.noisy = self.noisy, False
        try:
            yield
        finally:
            self.noisy = noisy

    def posterior_state(self) -> dict[str, Any]:
        """What a checkpoint stores beside the means."""
        return {"family": self.family, "prior": self.prior, "prior_scale": self.prior_scale,
                "names": list(self.names), "scales": {n: self.scales[_key(n)].detach().clone() for n in self.names}}

    def load_scales(self, scales: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n in self.names:
                self.scales[_key(n)].copy_(scales[n])


# ------------------------------------------------------------------ training
@dataclass
class VariationalConfig(TrainConfig):
    """Settings of ``landscape vi`` (saved as ``config.json``).

    ``prior`` "auto" is ``gaussian`` for the additive family (the HWA talk's
    N(0, I)) and ``log-uniform`` for the others (variational dropout's).
    ``init_alpha``: the first s² / mu² of every weight. ``optimizer``: adam
    (as the variational dropout papers; ``momentum`` is then unused) or sgd.
    ``hwa_start`` (None: no HWA): the epoch from which the variances are
    frozen and the means averaged every ``cycle`` epochs, at the low end of a
    cyclical rate ``hwa_lr_max`` (default 10 x ``hwa_lr``) -> ``hwa_lr``;
    before it the rate decays from ``lr`` to ``hwa_lr`` as SWA's does."""

    epochs: int = 50
    lr: float = 0.01
    wd: float = 0.0
    family: str = "additive"
    prior: str = "auto"
    prior_scale: float = 1.0
    temperature: float = 1.0
    init_alpha: float = 0.01
    kl_warmup: int = 0
    optimizer: str = "adam"
    from_ckpt: str | None = None
    hwa_start: int | None = None
    hwa_lr: float = 0.001
    hwa_lr_max: float | None = None
    cycle: int = 1

    def resolved_prior(self) -> str:
        return ("gaussian" if self.family == "additive" else "log-uniform") if self.prior == "auto" else self.prior

    def validate(self) -> None:
        super().validate()
        if self.family not in FAMILIES:
            raise UserError(f"unknown family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        if self.prior != "auto" and self.prior not in PRIORS:
            raise UserError(f"unknown prior {self.prior!r}; choose one of: auto, {', '.join(PRIORS)}")
        if not (math.isfinite(self.prior_scale) and self.prior_scale > 0):
            raise UserError(f"--prior-scale must be a finite number > 0, got {self.prior_scale}")
        check_nonnegative("--temperature", self.temperature)
        if not (math.isfinite(self.init_alpha) and 0 < self.init_alpha <= 1e6):
            raise UserError(f"--init-alpha must be a number in (0, 1e6], got {self.init_alpha}")
        self.kl_warmup, self.cycle = check_whole("--kl-warmup", self.kl_warmup), check_whole("--cycle", self.cycle)
        if self.hwa_start is not None:
            self.hwa_start = check_whole("--hwa-start", self.hwa_start)
        if self.kl_warmup < 0:
            raise UserError(f"--kl-warmup must be >= 0 epochs, got {self.kl_warmup}")
        if self.kl_warmup > self.epochs:  # the ramp would end below the full weight the posterior is fitted at
            raise UserError(f"--kl-warmup {self.kl_warmup} is longer than --epochs {self.epochs}: the KL term would "
                            f"never come near its full weight (it would end at {self.epochs / self.kl_warmup:.2g} of "
                            f"it); a warm-up of at most --epochs (--epochs - 1 or less leaves an epoch or more at full "
                            f"weight)")
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.wd:
            raise UserError(WD_REFUSED)
        if self.hwa_start is not None:
            if not 0 <= self.hwa_start < self.epochs:
                raise UserError(f"--hwa-start must be in [0, --epochs), got {self.hwa_start} of {self.epochs}")
            if self.cycle < 1:
                raise UserError(f"--cycle must be at least 1 epoch, got {self.cycle}")
            if self.epochs - self.hwa_start < self.cycle:
                raise UserError(f"no mean would be averaged: --epochs ({self.epochs}) must exceed --hwa-start "
                                f"({self.hwa_start}) by at least --cycle ({self.cycle})")
            check_rate("--hwa-lr", self.hwa_lr)
            high = self.hwa_lr_max if self.hwa_lr_max is not None else 10 * self.hwa_lr
            check_rate("--hwa-lr-max" + ("" if self.hwa_lr_max is not None else " (by default 10 x --hwa-lr)"), high)
            if high < self.hwa_lr:
                raise UserError(f"--hwa-lr-max must be at least --hwa-lr, got {high} and {self.hwa_lr}")

    def rate(self, epoch: int, it: int, steps: int) -> float:
        """The learning rate of iteration ``it`` of (0-based) ``epoch``."""
        if self.hwa_start is None:
            return learning_rate(self.lr, self.schedule, epoch, self.epochs)
        from .averaging import averaging_rate

        high = self.hwa_lr_max if self.hwa_lr_max is not None else 10 * self.hwa_lr
        return averaging_rate(self.lr, self.hwa_start, self.hwa_lr, high, True, self.cycle, epoch, it, steps)

    def kl_factor(self, epoch: int, it: int, steps: int) -> float:
        """T, ramped linearly from 0 over the first ``kl_warmup`` epochs."""
        if not self.kl_warmup:
            return self.temperature
        return self.temperature * min(1.0, (epoch + it / steps) / self.kl_warmup)


@brief_repr
@dataclass
class VariationalResult:
    posterior: VariationalNet  # the final posterior (the network of its means inside)
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    out: Path | None


def _mean_network(vnet: VariationalNet, data: Dataset) -> nn.Module:
    """The deterministic network of ``vnet``'s means, batch norm recomputed for them (training's running
    statistics came from noisy weights), in eval mode: what vi.pt / hwa.pt hold and the summary measures."""
    net = vnet.mean_network()
    reestimate_bn(net, data.statistics_batches(1000))
    return net.eval()


def _posterior_metrics(vnet: VariationalNet, net: nn.Module, data: Dataset, temperature: float) -> dict[str, float]:
    """The metrics of ``net``, the deterministic network (:func:`_mean_network`), and the KL."""
    tr, te = evaluate_model(net, data, "train"), evaluate_model(net, data, "test")
    kl = float(vnet.kl(exact=True))  # the posterior's, as vi-eval reports it
    return {"train_nll": tr["nll"], "train_error": tr["error"], "test_nll": te["nll"], "test_error": te["error"],
            "kl": kl, "kl_per_sample": kl / len(data.y_train), "kl_fit": float(vnet.kl().detach()),
            "temperature": temperature,
            "noise_share": log_alpha_stats(vnet)["noise_share"]}


def log_alpha_stats(vnet: VariationalNet) -> dict[str, float | None]:
    """The stochastic weights' log alpha = log(s² / m²), the inverse of the
    signal-to-noise ratio m² / s² the talk follows as information flows from
    the means to the variances: its median and 10th / 90th percentiles, and
    the share above 3 (Molchanov et al. 2017's threshold: weights that are
    mostly noise, which sparse variational dropout prunes). None for a
    variance network, whose means are zero."""
    if vnet.family == "variance":
        return {"noise_share": None, "log_alpha_median": None, "log_alpha_p10": None, "log_alpha_p90": None}
    with torch.no_grad():
        log_alpha = torch.cat([vnet.log_alpha(name).reshape(-1).float().cpu() for name in vnet.names]).numpy()
    p10, median, p90 = np.percentile(log_alpha, [10, 50, 90])
    return {"noise_share": float((log_alpha > 3).mean()), "log_alpha_median": float(median),
            "log_alpha_p10": float(p10), "log_alpha_p90": float(p90)}


def run_variational(config: VariationalConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
                    data: Dataset | None = None, progress: bool | None = None, on_epoch_end=None,
                    argv: Sequence[str] | None = None, **overrides: Any) -> VariationalResult:
    """Fit a variational posterior over the network's weights (and, with
    ``hwa_start``, average its means: HWA); writes ``vi.pt`` (and ``hwa.pt``)
    beside the training run's files. ``from_ckpt``: the trained network whose
    weights become the first means; without it a fresh ``model``."""
    from .averaging import _config, _start_model

    named = named_model(config, overrides)
    cfg, source = _config("vi", config, overrides, named, cls=VariationalConfig)
    device = process_device(cfg.device)
    out = Path(out) if out is not None else None
    begun = resume and out is not None and any((out / f).exists() for f in ("last.pt", "vi.pt"))
    if cfg.prior_scale != 1.0 and cfg.resolved_prior() != "gaussian" and not begun:  # read by nothing, yet recorded
        # (a run an earlier build began with it resumes: its settings are its own)
        raise UserError(f"--prior-scale is the Gaussian prior's standard deviation; the {cfg.family} family's "
                        f"prior here is {cfg.resolved_prior()} (give --prior gaussian to use it)")
    start_epoch, state, metrics = prepare_run(out, cfg, resume, "vi")
    if start_epoch == -1:
        summary = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        vnet = posterior_net(load_checkpoint(out / "vi.pt"), "cpu", cfg.model if named is not None else None)
        result = VariationalResult(vnet, summary, read_jsonl(out / "metrics.jsonl"), out)
        _say(f"{out}: run already finished; nothing to do")  # once its files are read
        return result
    data = run_data(cfg, device, data, [source], config, overrides)
    if source is not None:  # once the split is accepted
        note_split_leak((source.meta or {}).get("train_config"), asdict(cfg), source.path)
    model, spec = _start_model(cfg, data, user_named=named is not None)
    model.to(device)
    vnet = VariationalNet(model, cfg.family, prior=cfg.resolved_prior(), prior_scale=cfg.prior_scale,
                          init_alpha=cfg.init_alpha)
    if source is not None and source.kind == "variational":  # a warm start: its variances too
        earlier = posterior_net(source, device, cfg.model if named is not None else None)
        if (earlier.family, earlier.prior) != (vnet.family, vnet.prior):
            raise UserError(f"{source.path} holds a posterior of family {earlier.family} with a {earlier.prior} prior; "
                            f"continuing it needs the same --family and --prior (or start from a network)")
        vnet.load_scales(earlier.posterior_state()["scales"])
    n_train = len(data.y_train)
    space = ParamSpace.of(model)
    hwa = {"avg": torch.zeros(space.numel, dtype=torch.float64, device=device), "n": 0}
    beta = [cfg.kl_factor(start_epoch, 0, 1)]
    optimizer: list[torch.optim.Optimizer] = []  # its second group holds the variance parameters

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = train_logits(vnet(x))
        return F.cross_entropy(logits.float(), y) + beta[0] * vnet.kl() / n_train, logits

    def rate(epoch: int, it: int, steps: int) -> float:
        beta[0] = cfg.kl_factor(epoch, it, steps)
        # HWA: the variances stay where it found them. Their group's rate is 0 (they keep their gradients,
        # which DDP needs of every parameter; a rate of 0 also stops the optimiser's momentum moving them).
        # (Looked up here: a resume's load_state_dict replaces the optimiser's group dicts.)
        in_hwa = cfg.hwa_start is not None and epoch >= cfg.hwa_start
        optimizer[0].param_groups[1]["lr_scale"] = 0.0 if in_hwa else 1.0
        return cfg.rate(epoch, it, steps)

    def save(path: Path, kind: str, extra: dict[str, Any]) -> None:
        save_checkpoint(path, model, spec, kind="variational", variational=vnet.posterior_state(),
                        average_state={"avg": hwa["avg"], "n": hwa["n"]}, **extra)

    def restore(ckpt: Checkpoint) -> None:
        check_state_dict(model, ckpt.state_dict, str(ckpt.path), f"model '{spec['name']}'")
        check_unsaved(model, [ckpt])
        model.load_state_dict(ckpt.state_dict)
        vnet.load_scales(ckpt.extra["variational"]["scales"])
        avg = ckpt.extra.get("average_state") or {}
        if "avg" in avg:
            hwa["avg"], hwa["n"] = avg["avg"].to(device=device, dtype=torch.float64), int(avg["n"])

    def end_epoch(epoch: int) -> dict[str, Any]:
        stats = log_alpha_stats(vnet)  # per epoch: the talk's information flow from the means to the variances
        record: dict[str, Any] = {"kl_per_sample": float(vnet.kl().detach()) / n_train,
                                  **({} if stats["noise_share"] is None else
                                     {"log_alpha_median": stats["log_alpha_median"],
                                      "noise_share": stats["noise_share"]})}
        if cfg.hwa_start is not None:
            if epoch > cfg.hwa_start and (epoch - cfg.hwa_start) % cfg.cycle == 0:
                hwa["n"] += 1
                hwa["avg"] += (space.flatten(model).double() - hwa["avg"]) / hwa["n"]
            record["hwa_n"] = hwa["n"]
        return record

    def epoch_eval() -> dict[str, Any]:
        m = evaluate_model(model, data, "test")  # the means, with the running statistics of training
        return {"test_nll": m["nll"], "test_error": m["error"]}

    def finish() -> dict[str, Any]:
        means = _mean_network(vnet, data)
        summary: dict[str, Any] = {"vi": _posterior_metrics(vnet, means, data, cfg.temperature)}
        files = {"vi": "vi.pt"}
        meta = {"train_config": cfg.to_json(), "dataset": data.describe(), "epochs": cfg.epochs}
        if out is not None:
            save_checkpoint(out / "vi.pt", means, spec, kind="variational",
                            variational=vnet.posterior_state(), meta=dict(meta, method="vi"))
        if cfg.hwa_start is not None:
            if hwa["n"] == 0:
                raise UserError("no mean was averaged: --epochs must exceed --hwa-start by at least --cycle")
            averaged = vnet.like(vnet.mean_network())
            with torch.no_grad():
                for name, value in space.unflatten(hwa["avg"].float()).items():
                    averaged.net.get_parameter(name).copy_(value)
            if not weights_finite(averaged.net):
                raise UserError("the HWA average of the means is not finite; lower --hwa-lr-max and start again")
            averaged_means = _mean_network(averaged, data)
            summary["hwa"] = dict(_posterior_metrics(averaged, averaged_means, data, cfg.temperature),
                                  averaged=hwa["n"])
            if out is not None:
                save_checkpoint(out / "hwa.pt", averaged_means, spec, kind="variational",
                                variational=averaged.posterior_state(), meta=dict(meta, method="hwa",
                                                                                  averaged=hwa["n"]))
            files["hwa"] = "hwa.pt"
        summary.update({"family": cfg.family, "prior": cfg.resolved_prior(), "prior_scale": cfg.prior_scale,
                        "stochastic_parameters": sum(model.get_parameter(n).numel() for n in vnet.names),
                        "eval_split": data.eval_split, "synthetic": data.synthetic, "epochs": cfg.epochs,
                        "model": spec, "dataset": data.describe(), "files": files,
                        "notes": "the deterministic network (the posterior means), batch norm recomputed; kl = "
                                 "KL(q || prior) in nats; errors in percent. The stochastic and ensemble schemes: "
                                 "landscape vi-eval; noise_share = the share of stochastic weights with "
                                 "log(s^2 / m^2) > 3"})
        return summary

    def make_optimizer(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        scales = {id(p) for p in vnet.scales.parameters()}
        groups = [{"params": [p for p in params if id(p) not in scales]},
                  {"params": [p for p in params if id(p) in scales], "lr_scale": 1.0}]
        opt = (torch.optim.Adam(groups, lr=cfg.lr) if cfg.optimizer == "adam" else
               torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum))
        optimizer[:] = [opt]
        return opt

    task = Task(module=vnet, loss=loss, save=save, restore=restore, finish=finish, epoch_eval=epoch_eval,
                weight_decay=0.0, spec=spec, command="vi", kind="variational", lr=rate, end_epoch=end_epoch,
                lr_flag=("--lr" if cfg.hwa_start is None else "--lr (or --hwa-lr-max, after --hwa-start)")
                + (f" (or --temperature {cfg.temperature:g}, which scales the KL term)" if cfg.temperature > 1 else ""),
                optimizer=make_optimizer)
    summary, metrics = run_training(task, cfg, data, out, start_epoch=start_epoch, state=state, metrics=metrics,
                                    progress=progress, on_epoch_end=on_epoch_end, argv=argv)
    vnet.remove_hooks()
    return VariationalResult(vnet, summary, metrics, out)


# ------------------------------------------------------------------ the posterior and its predictions
@brief_repr
@dataclass
class VariationalPosterior:
    """A fitted posterior over the flat weights of ``ParamSpace.of(net)``: each
    weight w_i ~ N(mean_i, std_i²) independently (std 0 for the point estimates)."""

    family: str
    prior: str
    mean: torch.Tensor  # (P,) float32
    std: torch.Tensor  # (P,) float32
    state: dict[str, Any]  # the checkpoint's posterior entry
    kl: float | None = None  # KL(q || prior), exact (the log-uniform prior's up to its constant, as in elbo())

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` draws (count, P), float32, on the mean's device; the normal
        draws come from a CPU generator seeded with ``seed``, so a seed gives
        the same samples on every device."""
        gen = torch.Generator().manual_seed(check_seed(seed))
        rows = [self.mean + self.std * torch.randn(self.mean.numel(), generator=gen).to(self.mean.device)
                for _ in range(count)]  # one at a time: each draw is P numbers
        return torch.stack(rows) if rows else self.mean.new_zeros(0, self.mean.numel())


def posterior_net(ck: Checkpoint, device: torch.device | str, model: str | None) -> VariationalNet:
    """The posterior a ``variational`` checkpoint holds, around the network of its means (no hooks)."""
    info = ck.extra.get("variational")
    if ck.kind != "variational" or not isinstance(info, dict) or not {"family", "prior", "names", "scales"} <= set(info):
        if ck.kind == "curve":  # vi-connect's: its points are posteriors, evaluated along it by curve
            raise UserError(f"{ck.path}: a curve (between posteriors, from vi-connect, or between networks), not "
                            f"one posterior; evaluate it with landscape curve --ckpt {shell_word(ck.path)}")
        raise UserError(f"{ck.path}: holds no variational posterior; make one with 'landscape vi' (it writes vi.pt)")
    if info["family"] not in FAMILIES or info["prior"] not in PRIORS:
        raise UserError(f"{ck.path}: unknown posterior family {info['family']!r} or prior {info['prior']!r}")
    scale = info.get("prior_scale", 1.0)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserError(f"{ck.path}: the posterior's prior_scale is {scale!r}, not a finite number > 0")
    if not isinstance(info["names"], (list, tuple)) or not isinstance(info["scales"], dict):
        raise UserError(f"{ck.path}: the posterior's entry is damaged (names or scales of the wrong type)")
    net = load_model(ck, own_network(ck, model)).to(device)
    names = list(info["names"])
    if names not in (stochastic_names(net), stochastic_names(net, frozen=True)) or set(info["scales"]) != set(names):
        raise UserError(f"{ck.path}: the posterior's weights do not match its network's layers")
    # frozen layers' posteriors, from a build that gave them one, are kept: the posterior as it was fitted
    vnet = VariationalNet(net, info["family"], prior=info["prior"], prior_scale=float(scale), names=names)
    vnet.remove_hooks()
    for name in vnet.names:
        value, want = info["scales"][name], vnet.scales[_key(name)]
        if not isinstance(value, torch.Tensor) or value.shape != want.shape:
            raise UserError(f"{ck.path}: the posterior's variances of {name} have shape "
                            f"{tuple(getattr(value, 'shape', ()))}, its layer needs {tuple(want.shape)}")
        if not torch.isfinite(value).all():
            raise UserError(f"{ck.path}: the posterior's variances of {name} are not finite")
    vnet.load_scales({n: v.to(device) for n, v in info["scales"].items()})
    return vnet


def load_variational(path: str | Path | Checkpoint, device: torch.device | str = "cpu",
                     model: str | None = None) -> tuple[VariationalPosterior, nn.Module, Checkpoint]:
    """Read ``vi.pt`` / ``hwa.pt`` (written by ``landscape vi``; or take it
    already read): the posterior and the network of its means."""
    ck = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    vnet = posterior_net(ck, device, model)
    mean, std, kl = posterior_moments(vnet)
    post = VariationalPosterior(family=vnet.family, prior=vnet.prior, mean=mean, std=std,
                                state=ck.extra["variational"], kl=kl)
    return post, vnet.net, ck


@torch.no_grad()
def posterior_moments(vnet: VariationalNet, space: ParamSpace | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The posterior's means and standard deviations as flat float32 vectors
    over ``space`` (default ``ParamSpace.of(vnet.net)``; std 0 for the point
    estimates), and the exact KL(q || prior) in float64 (:meth:`VariationalNet.kl`)."""
    net = vnet.net
    space = space or ParamSpace.of(net)
    stds = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for name in vnet.names:
        stds[name] = vnet.mean_and_var(name)[1].sqrt()
    kl = float(vnet.kl(exact=True))
    return space.flatten(net).float(), space.flatten(stds).float(), kl


@brief_repr
@dataclass
class VariationalEvaluation:
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]  # what variational.npz holds
    out: Path | None


def evaluate_variational(
    ckpt: str | Path,
    out: str | Path | None = None,
    *,
    samples: int = 30,
    seed: int = 0,
    data: Dataset | None = None,
    wd: float | None = None,
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
) -> VariationalEvaluation:
    """The three prediction schemes of a variational posterior (``vi.pt`` or
    ``hwa.pt``): the deterministic network of its means, single weight
    samples (their metrics' mean: the stochastic scheme), and the ensemble of
    ``samples`` draws (averaged probabilities, after 1..S draws). The mean and
    every draw are evaluated with batch norm re-estimated. With ``out``:
    ``variational.npz``, ``summary.json``, ``config.json`` and the sweep's
    partial store for ``resume``. Under torchrun the draws are shared out."""
    from .swag import average_of_draws, check_draws, check_draws_fit

    check_data_options(data_overrides)  # a misspelt keyword lands among them
    amp = precision_amp(precision)
    samples, seed = check_draws(samples, seed)
    if wd:
        raise UserError(WD_REFUSED)
    out_path = Path(out) if out is not None else None
    device = process_device(device)
    post, net, ck = load_variational(ckpt, device, model)
    check_draws_fit(samples, post.mean.numel(), device)  # drawn at once, as SWAG's are
    data, wd = stored_data(ck.meta, ck.model, ck.path, data_overrides, device, data, wd)
    options = {"samples": samples, "seed": seed, "wd": wd, "batch_size": batch_size, "bn_batches": bn_batches,
               "bn_stats": bn_stats, "precision": precision, "dataset": data.describe()}
    request = request_key([post.mean, post.std], {"kind": "variational", **options})
    finished = begin_result(out_path, "variational.npz", resume, "vi-eval", request)
    if finished is not None:
        arrays, summary = finished
        return VariationalEvaluation(summary=summary, arrays=arrays, out=out_path)
    config = {"command": "vi-eval", "argv": list(argv) if argv is not None else None, "checkpoint": str(ck.path),
              **options, "points_per_pass": points_per_pass, "device": str(device)}
    arrays, summary = average_of_draws(net, post.mean, post.sample(samples, seed), data, out_path, "variational",
                                       config, resume=resume, wd=wd, batch_size=batch_size, bn_batches=bn_batches,
                                       bn_stats=bn_stats, points_per_pass=points_per_pass, progress=progress,
                                       amp=amp, identity=request)
    train_cfg = (ck.meta or {}).get("train_config") or {}
    summary.update({
        "method": {"hwa": "HWA"}.get((ck.meta or {}).get("method"), "VI"),
        "family": post.family, "prior": post.prior, "seed": seed, "wd": wd,
        "temperature": train_cfg.get("temperature"), "stochastic_parameters": int((post.std > 0).sum()),
        "relative_std": _relative_std(post),
        "eval_split": data.eval_split, "synthetic": data.synthetic, "dataset": data.describe(),
        "checkpoint": str(ck.path),
        "notes": "deterministic = the network of the posterior means (E w); stochastic = one weight sample "
                 "(the mean of the samples' metrics); ensemble = averaged predicted probabilities of the samples; "
                 "batch norm re-estimated at the mean and at every sample; relative_std = the median of s / |m| "
                 "over the stochastic weights; train_loss = NLL + wd/2 ||w||^2; errors in percent; elbo = "
                 "-train_size x expected_train_nll - kl (the draws' mean train NLL, untempered; the exact KL: with the "
                 "log-uniform prior up to a constant per weight, 0 as alpha -> infinity, where training minimised "
                 "Molchanov et al.'s approximation of it, within 0.01 nats per weight)"})
    summary["deterministic"] = summary.pop("centre")
    summary["ensemble"] = summary.pop("bma")
    summary["elbo"] = elbo(arrays["sample_train_nll"], post.kl, len(data.y_train))
    finish_result(out_path, "variational.npz", arrays, summary, request)
    return VariationalEvaluation(summary=summary, arrays=arrays, out=out_path)


def elbo(sample_train_nll: np.ndarray, kl: float, n: int) -> dict[str, Any]:
    """The evidence lower bound E_q[log p(D | w)] - KL(q || prior), estimated
    from the draws' mean train NLLs (S,) over the ``n`` training samples:
    -n x their mean - KL, with its standard error over the draws (None for
    one draw), and per training sample. Untempered (T = 1) whatever the
    training's temperature; batch norm as the draws were evaluated
    (re-estimated at each). ``kl`` is the exact KL (``posterior_moments``):
    with the log-uniform prior, which is improper, up to one constant per
    stochastic weight, so posteriors of the same network compare exactly
    (Molchanov et al.'s approximation, which training minimises, is off by
    up to 0.0094 nats per weight, by an amount that depends on alpha)."""
    nll = np.asarray(sample_train_nll, dtype=float)
    mean = float(nll.mean())
    se = float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else None
    return {"elbo": -n * mean - kl, "elbo_se": n * se if se is not None else None, "elbo_per_sample": -mean - kl / n,
            "expected_train_nll": mean, "expected_train_nll_se": se, "kl": kl, "kl_exact": True, "train_size": n,
            "draws": len(nll)}


def _relative_std(post: VariationalPosterior) -> float | None:
    """The median of s / |m| over the stochastic weights (None where the means are zero)."""
    on = post.std > 0
    if not on.any():
        return 0.0
    value = float(torch.median(post.std[on] / post.mean[on].abs()).cpu())
    return value if math.isfinite(value) else None
