"""Subspace samplers side by side, in one process: elliptical slice sampling
(the subspace paper's sampler, the baseline) against the No-U-Turn Sampler,
with the unit mass and with the diagonal mass adapted over the burn-in.

Trains a digits endpoint and SWA with SWAG from it (cached under --work),
then samples the rank-k PCA subspace around the SWA mean (or, with
--subspace curve, the plane of a Bezier curve between two endpoints, as
bench/engine_vs_loop.py caches it) with each sampler, with the same
chains, burn-in and number of kept samples. Prints, for each:
seconds, evaluations per sample (ESS: likelihood evaluations; NUTS: gradient
steps), the effective sample size of every coordinate (from the chains'
autocorrelations, Geyer's initial positive sequence), effective samples per
minute and its ratio NUTS / ESS, and the model average's test NLL and error.
The diagonal mass is estimated only from a burn-in of 50 or more.

    python bench/samplers.py [--work runs/bench] [--subspace pca|curve] [--rank 2] [--samples 120] [--chains 4]
                             [--burn-in 20]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from landscape.curves import curve_subspace
from engine_vs_loop import endpoints_and_curve
from landscape.averaging import run_swa
from landscape.data import load_dataset
from landscape.subspace import sample_subspace, swag_subspace
from landscape.train import train
from protocol import machine


def effective_size(z: np.ndarray, chain: np.ndarray) -> np.ndarray:
    """Effective sample size of each coordinate of samples z (n, k) kept
    round-robin from the chains ``chain`` (n,), as Stan's multi-chain
    estimate: the autocorrelation at lag t is 1 - (W - mean autocovariance_t)
    / var+, where W is the mean within-chain variance and var+ = (n - 1) / n
    W + B / n adds the variance between the chains' means (so chains stuck in
    different places count as few samples); the autocorrelations are summed
    over Geyer's initial positive sequence of pair sums, and the
    autocorrelation time is at least 1 / log10(C n)."""
    chains = [z[chain == c] for c in np.unique(chain)]
    n = min(len(c) for c in chains)
    x = np.stack([c[:n] for c in chains])  # (C, n, k)
    count = x.shape[0]
    centred = x - x.mean(1, keepdims=True)
    within = (centred ** 2).sum(1).mean(0) / (n - 1)  # W
    between = n * x.mean(1).var(0, ddof=1) if count > 1 else np.zeros(x.shape[2])  # B
    var_plus = (n - 1) / n * within + between / n
    out = []
    for i in range(x.shape[2]):
        acov = np.array([(centred[:, :n - t, i] * centred[:, t:, i]).sum(1).mean() / n for t in range(n)])
        rho = 1.0 - (within[i] - acov) / var_plus[i]
        total = 0.0
        for m in range(0, n - 1, 2):
            pair = rho[m] + rho[m + 1]
            if pair <= 0:
                break
            total += pair
        tau = max(2.0 * total - 1.0, 1.0 / math.log10(count * n))  # -1: rho_0 counted once
        out.append(count * n / tau)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--subspace", choices=["pca", "curve"], default="pca")
    ap.add_argument("--rank", type=int, default=2, help="of the PCA subspace")
    ap.add_argument("--samples", type=int, default=120)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burn-in", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = load_dataset("digits")
    end, swa = args.work / "end1", args.work / "swag"
    if not (end / "model.pt").exists():
        train(out=end, data=data, epochs=20, seed=1, progress=False, resume=True)
    if not (swa / "swag.pt").exists():
        run_swa(None, swa, from_ckpt=str(end / "model.pt"), epochs=10, swa_lr=0.05, swag_rank=10, data=data,
                progress=False, resume=True)
    if args.subspace == "pca":
        sub = swag_subspace(swa / "swag.pt", "pca", args.rank)
        what = f"PCA subspace of rank {args.rank} around the SWA mean"
    else:
        endpoints_and_curve(args.work, data)
        sub = curve_subspace(args.work / "curve" / "model.pt")
        what = "plane of the Bezier curve's points at t = 0, 1/2, 1 (chains from t = 1)"
    print(f"machine: {machine()}")
    print(f"digits convnet, {what}; {args.samples} samples kept from "
          f"{args.chains} chains after {args.burn_in} burn-in transitions each; T 1, prior N(0, 1)")
    rows = {}
    for name, method, mass in (("ess", "ess", None), ("nuts", "nuts", "identity"), ("nuts+mass", "nuts", "diag")):
        start = time.perf_counter()
        res = sample_subspace(sub, samples=args.samples, method=method, chains=args.chains, burn_in=args.burn_in,
                              data=data, seed=args.seed, mass=mass)
        seconds = time.perf_counter() - start
        a, s = res.arrays, res.summary
        n_eff = effective_size(a["z"], a["chain"])
        rows[name] = (seconds, n_eff)
        extra = (f"; {s['nuts']['gradient']} gradients, step sizes "
                 f"{', '.join(f'{x:.3g}' for x in s['nuts']['step_size'])}, mean accept "
                 f"{s['nuts']['accept_mean']:.2f}, {s['nuts']['divergent']} divergent, mean depth "
                 f"{s['nuts']['depth_mean']:.2f}, inverse mass "
                 f"{', '.join(f'{x:.3g}' for x in s['nuts']['inverse_mass'])}" if method == "nuts" else "")
        print(f"{name:>9}: {seconds:7.1f} s, {s['evaluations_per_sample']:.2f} evaluations per sample; effective "
              f"samples {', '.join(f'{x:.0f}' for x in n_eff)} of {args.samples} (min {n_eff.min():.0f}, "
              f"{60 * n_eff.min() / seconds:.1f} a minute); z sd {', '.join(f'{x:.3f}' for x in s['z_std'])}; "
              f"model average test NLL {s['bma']['test_nll']:.4f}, error {s['bma']['test_error']:.2f}%{extra}")
    t_ess, e_ess = rows["ess"]
    for name in ("nuts", "nuts+mass"):
        t_nuts, e_nuts = rows[name]
        print(f"{name.upper()} / ESS: time {t_nuts / t_ess:.2f}x, effective samples (min) "
              f"{e_nuts.min() / e_ess.min():.2f}x, effective samples per second "
              f"{(e_nuts.min() / t_nuts) / (e_ess.min() / t_ess):.2f}x")


if __name__ == "__main__":
    main()
