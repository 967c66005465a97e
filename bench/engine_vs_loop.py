"""Engine vs the sequential loop on the digits curve evaluation (61 points).

Trains two digits endpoints and a Bezier curve between them (cached under
--work), then times, in this one process, the evaluation of the curve's 61
points (batch norm re-estimated per point, train and test metrics) by

  - the sequential reference loop (one point at a time: copy weights in,
    re-estimate batch norm, evaluate train and test), and
  - the engine (``evaluate_points``) with each strategy,

at the papers' evaluation batch size (128) and at 1000. Prints seconds and
the ratio loop / engine, and checks that the results agree.

    python bench/engine_vs_loop.py [--work runs/bench] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from landscape.curves.fit import fit_curve, load_curve
from landscape.data import load_dataset
from landscape.evaluate import evaluate_points, evaluate_points_sequential
from landscape.train import train
from protocol import machine, timed


def endpoints_and_curve(work: Path, data):
    for seed in (1, 2):
        if not (work / f"end{seed}" / "model.pt").exists():
            train(out=work / f"end{seed}", data=data, epochs=20, seed=seed, progress=False, resume=True)
    if not (work / "curve" / "model.pt").exists():
        fit_curve(work / "end1" / "model.pt", work / "end2" / "model.pt", work / "curve", data=data, epochs=20,
                  progress=False, resume=True)
    return load_curve(work / "curve" / "model.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points", type=int, default=61)
    args = ap.parse_args()

    data = load_dataset("digits")
    loaded = endpoints_and_curve(args.work, data)
    t = torch.linspace(0, 1, args.points, dtype=torch.float64)
    with torch.no_grad():
        W = loaded.curve.anchors().detach()
        C = loaded.curve.coefficients(t)
    model = loaded.model
    print(f"machine: {machine()}; digits convnet ({sum(p.numel() for p in model.parameters())} params), "
          f"{args.points} curve points, 1437 train / 360 test images, best of {args.repeats}")
    print(f"{'batch':>6} {'method':<22} {'seconds':>9} {'loop / this':>12} {'max rel. diff':>14}")
    for batch in (128, 1000):
        base_s, base = timed(lambda: evaluate_points_sequential(model, W, C, data, wd=5e-4, batch_size=batch),
                             args.repeats)
        print(f"{batch:>6} {'sequential loop':<22} {base_s:>9.2f} {1.0:>12.2f} {'-':>14}")
        for strategy in ("loop", "vmap"):
            s, res = timed(lambda: evaluate_points(model, W, C, data, wd=5e-4, batch_size=batch, strategy=strategy),
                           args.repeats)
            diff = max(float(np.max(np.abs(res[k] - base[k]) / np.maximum(np.abs(base[k]), 1e-6)))
                       for k in ("train_loss", "test_nll"))
            print(f"{batch:>6} {'engine, ' + strategy:<22} {s:>9.2f} {base_s / s:>12.2f} {diff:>14.1e}")


if __name__ == "__main__":
    main()
