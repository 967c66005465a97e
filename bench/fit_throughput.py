"""Curve-fitting throughput against training the plain model, in one process.

Times epochs of ``train`` (the plain network) and of ``fit_curve`` (a Bezier
curve with one bend between two endpoints of the same network) on the same
data, batch size and device, and prints training images per second for each
and their ratio. An epoch's time is taken between ``on_epoch_end`` calls;
the first epoch (warm-up) is dropped and the median of the rest is used.
``train``'s epochs include its per-epoch test evaluation (the test split is
a fifth of the training split or less); ``fit_curve``'s include its
per-epoch evaluation of the curve's midpoint (batch norm re-estimated from
up to 5000 training images, then the test split), which on digits costs
about half a training epoch.

    python bench/fit_throughput.py [--model convnet|preresnet] [--epochs 6] [--t-samples 1]

``--model convnet`` runs on digits (1437 training images); ``--model
preresnet`` runs PreResNet-20 on CIFAR-shaped synthetic data (--train images).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from landscape.curves.fit import fit_curve
from landscape.data import load_dataset
from landscape.train import train
from protocol import machine


def epoch_seconds(run) -> float:
    stamps = [time.perf_counter()]
    run(lambda epoch, record: stamps.append(time.perf_counter()))
    per_epoch = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convnet", choices=["convnet", "preresnet"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train", type=int, default=5000, help="synthetic training images (preresnet)")
    ap.add_argument("--t-samples", type=int, default=1, help="curve points per batch in the fit")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    if args.model == "convnet":
        data = load_dataset("digits")
        common = dict(dataset="digits", model="convnet")
    else:
        data = load_dataset("synthetic", synthetic_sizes=(args.train, 500))
        common = dict(dataset="synthetic", model="preresnet", model_kwargs={"depth": 20})
    n = len(data.y_train)
    print(f"machine: {machine()}")
    print(f"{args.model} on {data.name}: {n} training images, batch {args.batch_size}, {args.epochs} epochs each")
    with tempfile.TemporaryDirectory() as tmp:
        ends = [Path(tmp) / f"end{s}" for s in (1, 2)]
        for s, out in zip((1, 2), ends):  # endpoints (not timed): one epoch is enough for a timing
            train(out=out, data=data, epochs=1, seed=s, progress=False, batch_size=args.batch_size, **common)
        s_train = epoch_seconds(lambda cb: train(data=data, epochs=args.epochs, seed=3, progress=False,
                                                 batch_size=args.batch_size, on_epoch_end=cb, **common))
        s_fit = epoch_seconds(lambda cb: fit_curve(ends[0] / "model.pt", ends[1] / "model.pt", data=data,
                                                   epochs=args.epochs, progress=False, batch_size=args.batch_size,
                                                   t_samples=args.t_samples, on_epoch_end=cb))
    print(f"\n{'':<34}{'s/epoch':>9}{'images/s':>10}")
    print(f"{'train (plain network)':<34}{s_train:>9.2f}{n / s_train:>10.0f}")
    print(f"{f'fit_curve (bezier, t-samples {args.t_samples})':<34}{s_fit:>9.2f}{n / s_fit:>10.0f}")
    print(f"curve fitting / plain training throughput: {s_train / s_fit:.2f}")


if __name__ == "__main__":
    main()
