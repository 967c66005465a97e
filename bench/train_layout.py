"""Training on channels-last image batches against NCHW ones, in one process.

Every pass over image data feeds a network its batches channels-last when
the network takes them (``landscape.layout``): training steps, batch-norm
re-estimation, ``evaluate_model``. This times the same runs with
``landscape.layout.ENABLED`` on and off (as ``LANDSCAPE_CHANNELS_LAST=0``
sets it), alternating the two --rounds times, and prints the best time of
each, their ratio, and how far apart the final train losses are (the
layouts round differently, and a max pool's backward may pick another of
several tied maxima).

    python bench/train_layout.py [--model convnet|preresnet] [--epochs 6] [--rounds 3] [--connect]

``--model convnet`` trains on digits (1437 images, batch 128); ``--model
preresnet`` trains PreResNet-20 on --train CIFAR-shaped synthetic images.
``--connect`` times ``fit_curve`` (a Bezier curve with one bend between two
one-epoch endpoints, trained first and not timed) instead of ``train``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import landscape.layout as layout
from landscape.curves.fit import fit_curve
from landscape.data import load_dataset
from landscape.train import train
from protocol import machine


def alternate(run, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of ``run()`` with channels-last batches off and on in turn, ``rounds`` times each, and the
    last run's final train loss of each; the setting is put back."""
    chosen = layout.ENABLED
    seconds: dict[str, list[float]] = {"NCHW": [], "channels-last": []}
    losses: dict[str, float] = {}
    try:
        for _ in range(rounds):
            for label, on in (("NCHW", False), ("channels-last", True)):
                layout.ENABLED = on
                t0 = time.perf_counter()
                result = run()
                seconds[label].append(time.perf_counter() - t0)
                losses[label] = result.metrics[-1]["train_loss"]
    finally:
        layout.ENABLED = chosen
    return seconds, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convnet", choices=["convnet", "preresnet"])
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 6 convnet, 1 preresnet)")
    ap.add_argument("--train", type=int, default=2000, help="synthetic training images (preresnet)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connect", action="store_true", help="time fit_curve instead of train")
    args = ap.parse_args()
    if args.model == "convnet":
        data = load_dataset("digits")
        common = dict(dataset="digits", model="convnet")
        epochs = args.epochs or 6
    else:
        data = load_dataset("synthetic", synthetic_sizes=(args.train, 200))
        common = dict(dataset="synthetic", model="preresnet", model_kwargs={"depth": 20})
        epochs = args.epochs or 1
    command = "connect (fit_curve)" if args.connect else "train"
    print(f"machine: {machine()}")
    print(f"{command}, {args.model} on {data.name}: {len(data.y_train)} training images, batch 128, {epochs} epochs "
          f"per run, best of {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.connect:
            ends = [Path(tmp) / f"end{s}" for s in (1, 2)]
            for s, out in zip((1, 2), ends):  # not timed
                train(out=out, data=data, epochs=1, seed=s, progress=False, **common)

            def run():
                return fit_curve(ends[0] / "model.pt", ends[1] / "model.pt", None, data=data, epochs=epochs,
                                 seed=3, progress=False)
        else:
            def run():
                return train(data=data, epochs=epochs, seed=3, progress=False, **common)
        seconds, losses = alternate(run, args.rounds)
    base = min(seconds["NCHW"])
    print(f"{'batches':<16}{'seconds':>10}{'NCHW / this':>14}{'final train loss':>20}")
    for label, times in seconds.items():
        print(f"{label:<16}{min(times):>10.2f}{base / min(times):>14.2f}{losses[label]:>20.6f}")
    a, b = losses["channels-last"], losses["NCHW"]
    print(f"final train losses {abs(a - b) / abs(b):.1e} apart (relative)")


if __name__ == "__main__":
    main()
