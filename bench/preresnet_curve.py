"""PreResNet-20 curve evaluation by the papers' protocol and by the engine, fp32 and bf16.

A Bezier curve with one bend between three PreResNet-20 networks (fresh
initialisations: the time does not depend on the weights) on CIFAR-shaped
synthetic data (--train / --test images, 3x32x32, 10 classes). Per point:
batch norm re-estimated, train and test metrics. Timed in this one process:

  - the papers' protocol (bench/protocol.py: one point at a time, DataLoader
    batch 128, batch-norm + train + test passes, autograd on as in their code);
  - the engine (``evaluate_points``, what ``landscape curve`` runs) in fp32,
    with its default (population) batch-norm statistics and with
    ``bn_stats="batches"``;
  - the engine in bf16 (``--precision bf16``), with both kinds of statistics,
    checked against fp32: metrics within 1 % relative or 1e-3 absolute.

    python bench/preresnet_curve.py [--points 5] [--train 5000] [--test 1000] [--no-bf16]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from landscape.curves.bezier import bernstein
from landscape.evaluate import METRICS, evaluate_points
from landscape.models import create_model
from landscape.weights import ParamSpace
from protocol import cpu_has_bf16, machine, max_differences, papers_protocol, synthetic_cifar, timed, within

WD = 3e-4


def preresnet20(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("preresnet", num_classes=10, input_shape=(3, 32, 32), depth=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=5, help="points along the curve")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = synthetic_cifar(args.train, args.test, device)
    nets = [preresnet20(s).to(device) for s in (1, 2, 3)]
    space = ParamSpace.of(nets[0])
    W = torch.stack([space.flatten(n) for n in nets]).detach()  # (3, P): start, bend, end
    t = torch.linspace(0, 1, args.points, dtype=torch.float64)
    C = bernstein(t, 2).numpy()  # (N, 3): degree 2, one bend
    model = nets[0]
    print(f"machine: {machine()}")
    print(f"PreResNet-20 ({space.numel:,} parameters), Bezier curve, {args.points} points; synthetic "
          f"{args.train} train / {args.test} test 3x32x32 images; batch norm re-estimated per point")

    s_base, base = timed(lambda: papers_protocol(model, W, C, data, wd=WD))
    rows = [("papers' protocol (batch 128, autograd on)", s_base, base)]
    s, pop = timed(lambda: evaluate_points(model, W, C, data, wd=WD))
    rows.append(("engine fp32, default (population)", s, pop))
    s, bat = timed(lambda: evaluate_points(model, W, C, data, wd=WD, bn_stats="batches"))
    rows.append(("engine fp32, bn_stats=batches", s, bat))
    if args.bf16:
        s, b16 = timed(lambda: evaluate_points(model, W, C, data, wd=WD, amp=True))
        rows.append(("engine bf16, default (population)", s, b16))
        s, b16b = timed(lambda: evaluate_points(model, W, C, data, wd=WD, amp=True, bn_stats="batches"))
        rows.append(("engine bf16, bn_stats=batches", s, b16b))
    print(f"\n{'method':<44}{'seconds':>10}{'s/point':>10}{'papers / this':>15}{'train-loss diff':>17}")
    for label, s, res in rows:
        d = max_differences(res, base)["train_loss"] if res is not base else (0.0, 0.0)
        print(f"{label:<44}{s:>10.1f}{s / args.points:>10.2f}{s_base / s:>15.2f}{d[1]:>16.1e}r")
    if args.bf16:
        for what, lo, hi in (("population", b16, pop), ("batches", b16b, bat)):
            ok = all(within(lo[m], hi[m]) for m in ("train_loss", "train_nll", "test_nll"))
            worst = max(float(np.max(np.abs(lo[m] - hi[m]) / np.maximum(np.abs(hi[m]), 1e-12)))
                        for m in ("train_loss", "test_nll"))
            print(f"bf16 vs fp32 ({what}): largest relative difference in train loss / test NLL {worst:.1e}; "
                  f"within 1 % or 1e-3: {ok}; test error differs by at most "
                  f"{np.max(np.abs(lo['test_error'] - hi['test_error'])):.2f} points")
        if device.type == "cpu" and not cpu_has_bf16():
            print("note: this CPU has no bf16 units (no avx512_bf16 / AMX); bf16 is emulated here")
    assert set(METRICS) <= set(pop)


if __name__ == "__main__":
    main()
