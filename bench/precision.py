"""bf16 vs fp32 evaluation of the digits plane, in one process.

Trains two digits endpoints and a Bezier curve between them (cached under
--work), then evaluates the plane of the curve on a G x G grid in fp32 and
in bf16 (autocast; batch-norm statistics and sums in fp32), and prints both
times, their ratio, and the largest train-loss difference.

    python bench/precision.py [--work runs/bench] [--grid 15]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from landscape.data import load_dataset
from landscape.plane import evaluate_plane

from engine_vs_loop import endpoints_and_curve  # noqa: E402  (same folder)
from protocol import machine  # noqa: E402  (same folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--grid", type=int, default=15)
    args = ap.parse_args()
    data = load_dataset("digits")
    loaded = endpoints_and_curve(args.work, data)
    W = loaded.curve.anchors().detach()
    print(f"machine: {machine()}; "
          f"digits convnet plane {args.grid}x{args.grid} (+3 anchors), batch norm re-estimated per point")
    res, secs = {}, {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        res[precision] = evaluate_plane(loaded.model, [W[0], W[-1], W[1]], data, None, grid=args.grid, wd=5e-4,
                                        precision=precision).arrays
        secs[precision] = time.perf_counter() - t0
    a, b = res["fp32"]["train_loss"], res["bf16"]["train_loss"]
    rel = np.abs(b - a) / np.abs(a)
    ok = np.all((rel <= 0.01) | (np.abs(b - a) <= 1e-3))
    print(f"fp32 {secs['fp32']:.1f} s, bf16 {secs['bf16']:.1f} s, fp32 / bf16 = {secs['fp32'] / secs['bf16']:.2f}")
    print(f"train loss: max abs diff {np.max(np.abs(b - a)):.2e}, max rel diff {rel.max():.2e}; "
          f"within 1 % or 1e-3 at every point: {ok}")
    err = np.abs(res["bf16"]["test_error"] - res["fp32"]["test_error"])
    print(f"test error: max abs diff {err.max():.2f} points")


if __name__ == "__main__":
    main()
