"""NUTS with the unit mass against the diagonal mass adapted over the burn-in,
on Gaussian targets whose coordinates' scales differ (pure numpy: the
sampler's own code, no network), in one process.

For each pair of standard deviations and each burn-in: 4 chains from (1, 1),
dual averaging over the burn-in (and, adapted, the mass in Stan's windows),
then 100 kept transitions. Prints the effective samples (Stan's multi-chain
estimate, the smaller coordinate's) per 1000 gradient steps, the mean
acceptance and the divergent transitions, for two seeds.

    python bench/nuts_mass.py [--burn-ins 20 50 100 150] [--floor 50]

``--floor`` sets the shortest burn-in that adapts the mass
(``landscape.nuts.MIN_MASS_BURN_IN``, 50; Stan's is 20).
"""

from __future__ import annotations

import argparse

import numpy as np

import landscape.nuts as nuts_module
from landscape.nuts import DualAveraging, MassAdaptation, initial_step_size, nuts_round, warmup_step
from samplers import effective_size


def run(sd: np.ndarray, burn_in: int, adapt_mass: bool, chains: int = 4, keep: int = 100, seed: int = 0):
    """(min effective samples per 1000 gradient steps, mean acceptance, divergent transitions)."""
    def fn(x):
        return -0.5 * ((x / sd) ** 2).sum(1), -x / sd ** 2

    rng = np.random.default_rng(seed)
    theta = np.ones((chains, 2))
    logp, grad = fn(theta)
    metric = MassAdaptation(burn_in if adapt_mass else 0, 2)
    adapt = DualAveraging(initial_step_size(theta, logp, grad, fn, rng))
    kept, chain, steps, accept, divergent = [], [], 0, [], 0
    for i in range(burn_in + keep):
        r = nuts_round(theta, logp, grad, fn, rng, adapt.step if i < burn_in else adapt.final, 8, metric.inv_mass)
        theta, logp, grad = r.theta, r.logp, r.grad
        if i < burn_in:
            adapt = warmup_step(i, r, adapt, metric, fn, rng)
        else:
            kept.extend(theta.copy())
            chain.extend(range(chains))
            steps += int(r.steps.sum())
            accept.append(float(r.accept.mean()))
            divergent += int(r.divergent.sum())
    ess = effective_size(np.array(kept) / sd, np.array(chain))
    return 1000 * ess.min() / steps, float(np.mean(accept)), divergent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burn-ins", type=int, nargs="+", default=[20, 50, 100, 150])
    ap.add_argument("--floor", type=int, default=nuts_module.MIN_MASS_BURN_IN)
    args = ap.parse_args()
    nuts_module.MIN_MASS_BURN_IN = args.floor
    print(f"mass adapted from a burn-in of {args.floor}")
    for sd in (np.array([0.18, 0.67]), np.array([20.0, 0.05])):
        for burn_in in args.burn_ins:
            unit = [run(sd, burn_in, False, seed=s) for s in (0, 1)]
            mass = [run(sd, burn_in, True, seed=s) for s in (0, 1)]
            print(f"sd {sd[0]:g}, {sd[1]:g}; burn-in {burn_in:3d}: effective / 1000 steps unit mass "
                  f"{unit[0][0]:6.1f} {unit[1][0]:6.1f} (accept {unit[0][1]:.2f}) | adapted "
                  f"{mass[0][0]:6.1f} {mass[1][0]:6.1f} (accept {mass[0][1]:.2f}, divergent {mass[0][2]}, "
                  f"{mass[1][2]})")


if __name__ == "__main__":
    main()
