"""The No-U-Turn Sampler (Hoffman & Gelman 2014, Algorithm 6: the slice
version with dual-averaging step-size adaptation), for a few coordinates
and several chains whose log-density evaluations are made together.

The target is given as ``fn(points) -> (log_density (n,), gradient (n, k))``
for a batch of points (n, k): every chain's pending leapfrog step goes into
one call, which may evaluate them together (one engine pass for C chains).
Each chain's
transition is a generator that yields the point it needs and receives its
value and gradient, which keeps the recursive tree building of the paper as
it is written there.

HMC and NUTS need the gradient only to make proposals: every leapfrog map
(a shear in the momentum, a shear in the position) keeps volume and is
reversible for *any* force that depends on the position alone, and
acceptance uses the exact joint density. So an approximate gradient (finite
differences, or one that holds batch-norm statistics still) leaves the
chain's target exact; only its efficiency suffers.

The mass matrix M is diagonal, given by its inverse ``inv_mass`` (k,):
momenta are drawn from N(0, M), the kinetic energy is r^T M^-1 r / 2, a
position moves by eps M^-1 r, and the U-turn criterion measures the span
against M^-1 r (the paper's criterion in the metric of M). The identity
(``inv_mass=None``) is the paper's sampler, bit for bit.
:class:`MassAdaptation` estimates M^-1 as Stan does: the variances of the
burn-in's draws in doubling windows, regularised towards 1e-3.

One departure from Algorithm 6, as Stan: the acceptance statistic that dual
averaging adapts is the mean of min(1, exp(H0 - H)) over every step of the
transition's trajectory, not over the last doubling's only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

__all__ = ["LogDensityGrad", "DualAveraging", "MassAdaptation", "adaptation_windows", "initial_step_size", "nuts_round",
           "warmup_step", "DELTA_MAX", "TARGET_ACCEPT", "MIN_MASS_BURN_IN"]

LogDensityGrad = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
DELTA_MAX = 1000.0  # an energy error beyond this ends the tree: the trajectory has diverged
TARGET_ACCEPT = 0.8  # dual averaging's target mean acceptance statistic (the paper's delta; Stan's default)
MAX_STEP_SEARCH = 60  # halvings or doublings tried by the initial step-size heuristic
MIN_MASS_BURN_IN = 50  # the shortest burn-in that estimates a mass matrix (:func:`adaptation_windows`)

_Request = Generator[np.ndarray, tuple[float, np.ndarray], object]


@dataclass
class _End:
    """One end of a trajectory: position, momentum, gradient at the position."""

    theta: np.ndarray
    r: np.ndarray
    grad: np.ndarray


@dataclass
class _Tree:
    minus: _End
    plus: _End
    sample: tuple[np.ndarray, float, np.ndarray]  # position, log density, gradient
    n: int  # points of the tree inside the slice
    ok: bool  # no U-turn and no divergence inside it
    alpha: float  # sum over its points of min(1, exp(joint - joint0))
    steps: int
    divergent: bool


def _joint(logp: float, r: np.ndarray, inv_mass: np.ndarray) -> float:
    value = logp - 0.5 * float(r @ (inv_mass * r))
    return value if np.isfinite(value) else -math.inf


def _leapfrog(end: _End, eps: float,
              inv_mass: np.ndarray) -> Generator[np.ndarray, tuple[float, np.ndarray], tuple[_End, float]]:
    """One leapfrog step of signed size ``eps``: yields the new position, receives its value and gradient."""
    r_half = end.r + 0.5 * eps * end.grad
    theta = end.theta + eps * (inv_mass * r_half)
    logp, grad = yield theta
    return _End(theta, r_half + 0.5 * eps * grad, grad), logp


def _no_u_turn(minus: _End, plus: _End, inv_mass: np.ndarray) -> bool:
    span = plus.theta - minus.theta
    return bool(span @ (inv_mass * minus.r) >= 0 and span @ (inv_mass * plus.r) >= 0)


def _build_tree(end: _End, v: int, depth: int, eps: float, log_u: float, joint0: float, rng: np.random.Generator,
                inv_mass: np.ndarray) -> Generator[np.ndarray, tuple[float, np.ndarray], _Tree]:
    """BuildTree of the paper: 2^depth leapfrog steps from ``end`` in direction ``v``."""
    if depth == 0:
        new, logp = yield from _leapfrog(end, v * eps, inv_mass)
        joint = _joint(logp, new.r, inv_mass)
        ok = log_u < joint + DELTA_MAX
        alpha = math.exp(min(0.0, joint - joint0)) if np.isfinite(joint) else 0.0
        return _Tree(new, new, (new.theta, logp, new.grad), int(log_u <= joint), ok, alpha, 1, not ok)
    first = yield from _build_tree(end, v, depth - 1, eps, log_u, joint0, rng, inv_mass)
    if not first.ok:
        return first
    second = yield from _build_tree(first.plus if v > 0 else first.minus, v, depth - 1, eps, log_u, joint0, rng,
                                    inv_mass)
    minus, plus = (first.minus, second.plus) if v > 0 else (second.minus, first.plus)
    sample = first.sample
    n = first.n + second.n
    if second.n > 0 and rng.uniform() < second.n / n:
        sample = second.sample
    return _Tree(minus, plus, sample, n, second.ok and _no_u_turn(minus, plus, inv_mass), first.alpha + second.alpha,
                 first.steps + second.steps, first.divergent or second.divergent)


def _transition(theta: np.ndarray, logp: float, grad: np.ndarray, eps: float, max_depth: int,
                rng: np.random.Generator, inv_mass: np.ndarray) -> _Request:
    """One NUTS transition of one chain (Algorithm 6's inner loop)."""
    r0 = rng.standard_normal(theta.shape) / np.sqrt(inv_mass)  # N(0, M); the identity leaves the draws as they are
    joint0 = _joint(logp, r0, inv_mass)
    log_u = joint0 + math.log1p(-rng.uniform())  # the slice variable u ~ U(0, exp(joint0)), in logs
    minus = plus = _End(theta, r0, grad)
    sample = (theta, logp, grad)
    n, depth, steps, alpha, divergent = 1, 0, 0, 0.0, False
    while depth < max_depth:
        v = 1 if rng.uniform() < 0.5 else -1
        tree = yield from _build_tree(plus if v > 0 else minus, v, depth, eps, log_u, joint0, rng, inv_mass)
        if v > 0:
            plus = tree.plus
        else:
            minus = tree.minus
        steps, alpha, divergent = steps + tree.steps, alpha + tree.alpha, divergent or tree.divergent
        if tree.ok and rng.uniform() < tree.n / n:
            sample = tree.sample
        n += tree.n
        depth += 1
        if not (tree.ok and _no_u_turn(minus, plus, inv_mass)):
            break
    return sample, alpha / max(steps, 1), steps, depth, divergent


def _step_search(theta: np.ndarray, logp: float, grad: np.ndarray, eps: float,
                 rng: np.random.Generator, inv_mass: np.ndarray) -> _Request:
    """Algorithm 4: double or halve ``eps`` until one leapfrog step's
    acceptance probability crosses 1/2."""
    start = _End(theta, rng.standard_normal(theta.shape) / np.sqrt(inv_mass), grad)
    joint0 = _joint(logp, start.r, inv_mass)
    new, logp1 = yield from _leapfrog(start, eps, inv_mass)
    delta = _joint(logp1, new.r, inv_mass) - joint0
    a = 1 if delta > math.log(0.5) else -1
    for _ in range(MAX_STEP_SEARCH):
        if not a * delta > -a * math.log(2.0):
            break
        eps *= 2.0 ** a
        new, logp1 = yield from _leapfrog(start, eps, inv_mass)
        delta = _joint(logp1, new.r, inv_mass) - joint0
    return eps


def _drive(gens: list[_Request], fn: LogDensityGrad) -> list:
    """Run the chains' generators to the end, their pending points evaluated
    together by ``fn`` (a non-finite value makes the point's log density
    -inf; a non-finite gradient at a finite value is taken as zero force,
    which keeps the target as it is). Returns each generator's result."""
    results: list = [None] * len(gens)
    pending: dict[int, np.ndarray] = {}
    for i, g in enumerate(gens):
        try:
            pending[i] = next(g)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        idx = list(pending)
        logp, grad = fn(np.stack([pending[i] for i in idx]))
        logp, grad = np.asarray(logp, dtype=np.float64), np.asarray(grad, dtype=np.float64)
        for j, i in enumerate(idx):
            value, g = float(logp[j]), grad[j]
            if not np.isfinite(value):
                value, g = -math.inf, np.zeros_like(g)
            elif not np.isfinite(g).all():
                g = np.zeros_like(g)
            try:
                pending[i] = gens[i].send((value, g))
            except StopIteration as stop:
                del pending[i]
                results[i] = stop.value
    return results


def _chain_masses(theta: np.ndarray, inv_mass: np.ndarray | None) -> np.ndarray:
    """The inverse mass of each chain (C, k): the identity's ones when None, a (k,) shared by all chains."""
    if inv_mass is None:
        return np.ones_like(theta, dtype=np.float64)
    return np.broadcast_to(np.asarray(inv_mass, dtype=np.float64), theta.shape)


def initial_step_size(theta: np.ndarray, logp: np.ndarray, grad: np.ndarray, fn: LogDensityGrad,
                      rng: np.random.Generator, start: float | np.ndarray = 1.0,
                      inv_mass: np.ndarray | None = None) -> np.ndarray:
    """A reasonable first step size for each chain (rows of ``theta``, (C, k)),
    by the paper's heuristic, from ``start`` (one for all, or (C,)), with the
    diagonal inverse mass ``inv_mass`` ((k,) or (C, k); the identity when
    None)."""
    m = _chain_masses(theta, inv_mass)
    first = np.broadcast_to(np.asarray(start, dtype=np.float64), (len(theta),))
    return np.array(_drive([_step_search(theta[c], float(logp[c]), grad[c], float(first[c]), rng, m[c])
                            for c in range(len(theta))], fn))


@dataclass
class NutsRound:
    theta: np.ndarray  # (C, k) the chains' new positions
    logp: np.ndarray  # (C,) and their log densities
    grad: np.ndarray  # (C, k) and gradients
    accept: np.ndarray  # (C,) mean acceptance statistic of each tree (what dual averaging adapts)
    steps: np.ndarray  # (C,) leapfrog steps, each one evaluation of fn
    depth: np.ndarray  # (C,) tree depth reached
    divergent: np.ndarray  # (C,) bool: the trajectory diverged


def nuts_round(theta: np.ndarray, logp: np.ndarray, grad: np.ndarray, fn: LogDensityGrad,
               rng: np.random.Generator, step_size: np.ndarray, max_depth: int,
               inv_mass: np.ndarray | None = None) -> NutsRound:
    """One NUTS transition of every chain (rows of ``theta``), with step sizes
    ``step_size`` (C,), the diagonal inverse mass ``inv_mass`` ((k,) or
    (C, k); the identity when None) and at most 2^max_depth - 1 leapfrog
    steps each; the chains' pending steps are evaluated together by ``fn``."""
    m = _chain_masses(theta, inv_mass)
    out = _drive([_transition(theta[c], float(logp[c]), grad[c], float(step_size[c]), max_depth, rng, m[c])
                  for c in range(len(theta))], fn)
    return NutsRound(theta=np.stack([o[0][0] for o in out]), logp=np.array([o[0][1] for o in out]),
                     grad=np.stack([o[0][2] for o in out]), accept=np.array([o[1] for o in out]),
                     steps=np.array([o[2] for o in out], dtype=np.int64),
                     depth=np.array([o[3] for o in out], dtype=np.int64),
                     divergent=np.array([o[4] for o in out], dtype=bool))


class DualAveraging:
    """Nesterov dual averaging of log step sizes, one per chain (the paper's
    section 3.2, with gamma 0.05, t0 10, kappa 0.75 and the target mean
    acceptance ``target``). ``step`` is the size to use while adapting;
    ``final`` the averaged size to sample with once warm-up ends."""

    GAMMA, T0, KAPPA = 0.05, 10.0, 0.75

    def __init__(self, first: np.ndarray, target: float = TARGET_ACCEPT):
        first = np.asarray(first, dtype=np.float64)
        self.target = target
        self.mu = np.log(10.0 * first)
        self.log_step = np.log(first)
        self.log_bar = np.zeros_like(first)
        self.h_bar = np.zeros_like(first)
        self.m = 0

    def update(self, accept: np.ndarray) -> None:
        self.m += 1
        eta = 1.0 / (self.m + self.T0)
        self.h_bar = (1.0 - eta) * self.h_bar + eta * (self.target - np.asarray(accept, dtype=np.float64))
        self.log_step = self.mu - math.sqrt(self.m) / self.GAMMA * self.h_bar
        w = self.m ** -self.KAPPA
        self.log_bar = w * self.log_step + (1.0 - w) * self.log_bar

    @property
    def step(self) -> np.ndarray:
        return np.exp(self.log_step)

    @property
    def final(self) -> np.ndarray:
        return np.exp(self.log_bar) if self.m else np.exp(self.log_step)

    def state(self) -> dict[str, np.ndarray]:
        return {"da_mu": self.mu, "da_log_step": self.log_step, "da_log_bar": self.log_bar, "da_h_bar": self.h_bar,
                "da_m": np.array(self.m)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], target: float = TARGET_ACCEPT) -> "DualAveraging":
        da = cls(np.ones_like(np.asarray(state["da_mu"], dtype=np.float64)), target)
        da.mu, da.log_step, da.log_bar, da.h_bar = (np.asarray(state[k], dtype=np.float64).copy() for k in (
            "da_mu", "da_log_step", "da_log_bar", "da_h_bar"))
        da.m = int(state["da_m"])
        return da


def adaptation_windows(burn_in: int) -> list[tuple[int, int]]:
    """Stan's slow adaptation windows of a ``burn_in`` of transitions, as
    (first, end) transition indices: after an initial buffer of 75
    transitions (step size only), windows of 25, 50, 100, ... transitions, the
    last stretched to 50 before the end, where a terminal buffer adapts the
    step size to the final mass. A burn-in shorter than 150 keeps Stan's
    shares (15 % initial, 10 % terminal, one window between); one shorter
    than ``MIN_MASS_BURN_IN`` adapts no mass (Stan's floor is 20, but then
    two transitions are left to fit the step size to the new mass: on
    Gaussians the acceptance fell to 0.44, with divergences)."""
    if burn_in < MIN_MASS_BURN_IN:
        return []
    init, term, base = 75, 50, 25
    if init + term + base > burn_in:
        init, term = int(0.15 * burn_in), int(0.1 * burn_in)
        base = burn_in - init - term
    end_slow, windows, start, size = burn_in - term, [], init, base
    while start < end_slow:
        end = start + size
        if end + 2 * size > end_slow:  # the next window would not fit: this one runs to the terminal buffer
            end = end_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


class MassAdaptation:
    """A diagonal inverse mass matrix estimated over the burn-in, as Stan
    does (:func:`adaptation_windows`): the variance of every chain's draws
    in a window, pooled over the chains, is regularised towards 1e-3,
    (n / (n + 5)) var + 1e-3 (5 / (n + 5)) for n draws, and becomes
    ``inv_mass`` (k,) at the window's end (the step size is then found
    again). Draws are accumulated by Welford's update."""

    def __init__(self, burn_in: int, k: int):
        self.windows = adaptation_windows(burn_in)
        self.inv_mass = np.ones(k)
        self.count, self.mean, self.m2 = 0, np.zeros(k), np.zeros(k)

    def update(self, transition: int, draws: np.ndarray) -> bool:
        """Take the chains' draws (C, k) after burn-in transition ``transition``
        (from 0); True when a window ends there and ``inv_mass`` is new."""
        window = next((w for w in self.windows if w[0] <= transition < w[1]), None)
        if window is None:
            return False
        for x in np.atleast_2d(draws):
            self.count += 1
            delta = x - self.mean
            self.mean = self.mean + delta / self.count
            self.m2 = self.m2 + delta * (x - self.mean)
        if transition != window[1] - 1:
            return False
        n = self.count
        var = self.m2 / max(n - 1, 1)
        self.inv_mass = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
        self.count, self.mean, self.m2 = 0, np.zeros_like(self.mean), np.zeros_like(self.m2)
        return True

    def state(self) -> dict[str, np.ndarray]:
        return {"mass_inv": self.inv_mass, "mass_count": np.array(self.count), "mass_mean": self.mean,
                "mass_m2": self.m2}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], burn_in: int) -> "MassAdaptation":
        inv = np.asarray(state["mass_inv"], dtype=np.float64)
        adapt = cls(burn_in, len(inv))
        adapt.inv_mass, adapt.count = inv.copy(), int(state["mass_count"])
        adapt.mean, adapt.m2 = (np.asarray(state[k], dtype=np.float64).copy() for k in ("mass_mean", "mass_m2"))
        return adapt


def warmup_step(transition: int, r: NutsRound, adapt: DualAveraging, metric: MassAdaptation | None,
                fn: LogDensityGrad, rng: np.random.Generator,
                refresh: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> DualAveraging:
    """The burn-in's adaptation after transition ``transition`` (from 0) gave
    ``r``: dual averaging takes its acceptance; with ``metric``, its draws go
    to the mass's window, and when a window ends the step sizes are found
    again for the new mass (from the current ones) and their adaptation
    restarts. ``refresh(step)`` may return the chains' log densities and
    gradients anew first (a finite-difference gradient that follows the
    step size). Returns the dual averaging to go on with."""
    adapt.update(r.accept)
    if metric is None or not metric.update(transition, r.theta):
        return adapt
    logp, grad = (r.logp, r.grad) if refresh is None else refresh(adapt.step)
    return DualAveraging(initial_step_size(r.theta, logp, grad, fn, rng, adapt.step, metric.inv_mass))
