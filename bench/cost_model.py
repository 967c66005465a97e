"""How the time of a landscape grows: with the grid, the dataset, the model, and the processes.

All on the digits convnet plane (``evaluate_plane``, default settings), one
factor varied at a time, three sizes each:

  - grid size: G x G planes (+ 3 anchors) through the curve's start, end, bend;
  - dataset size: the first n training images (the test split fixed);
  - model size: convnet width w (three fresh networks span the plane), with
    forward FLOPs per image counted by ``torch.utils.flop_counter``;
  - processes: ``landscape plane --ckpt CURVE --grid 21`` as one process with
    one thread, as one process with two, and under ``torchrun
    --nproc-per-node 2`` with one thread each; the whole command is timed
    (start-up, data loading and figures included);
  - training processes: the same three ways for data-parallel training:
    ``landscape train`` (digits convnet, 20 epochs), ``landscape swa`` (20
    epochs from an endpoint) and ``landscape train`` of a PreResNet-8 on
    2000 synthetic CIFAR-shaped images (2 epochs).

For each it prints seconds, seconds per point, and seconds per point per
GFLOP of forward work (images x FLOPs per image), which stays flat when time
is proportional to the arithmetic.

    python bench/cost_model.py [--work runs/bench] [--parts grid,data,model,processes,training]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine_vs_loop import endpoints_and_curve  # noqa: E402  (same folder)
from landscape.data import load_dataset
from landscape.models import create_model
from landscape.plane import evaluate_plane
from landscape.weights import ParamSpace
from protocol import forward_flops, machine, timed

BIN = Path(sys.executable).parent


def report(label: str, seconds: float, points: int, images: int, flops: float) -> None:
    work = points * images * flops / 1e9  # GFLOP of forward passes
    print(f"{label:<34}{seconds:>9.2f}{1000 * seconds / points:>12.1f}{1000 * seconds / work:>16.3f}"
          f"{work / seconds:>10.1f}")


def header(title: str) -> None:
    print(f"\n{title}\n{'':<34}{'seconds':>9}{'ms/point':>12}{'ms/pt/GFLOP':>16}{'GFLOP/s':>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--parts", default="grid,data,model,processes,training",
                    help="comma-separated subset of grid, data, model, processes, training")
    args = ap.parse_args()
    data = load_dataset("digits")
    loaded = endpoints_and_curve(args.work, data)
    model = loaded.model
    W = loaded.curve.anchors().detach()
    points = [W[0], W[-1], W[1]]
    flops = forward_flops(model, data.x_train)
    per_point_images = len(data.y_train) + len(data.y_test)  # population BN: one train pass + one test pass
    print(f"machine: {machine()}")
    print(f"digits convnet: {flops / 1e6:.2f} MFLOP per image forward; work per point = (train + test images) "
          f"x FLOPs (population batch-norm statistics: the statistics pass gives the train metrics)")

    parts = set(args.parts.split(","))
    if "grid" in parts:
        grid_sizes(model, points, data, per_point_images, flops)
    if "data" in parts:
        dataset_sizes(model, points, data, flops)
    if "model" in parts:
        model_sizes(data, per_point_images)
    if "processes" in parts:
        processes(args.work / "curve" / "model.pt", per_point_images, flops)
    if "training" in parts:
        training(args.work / "end1" / "model.pt")


def grid_sizes(model, points, data, per_point_images, flops) -> None:
    header("grid size (1437 train / 360 test images, width 32)")
    for g in (7, 13, 21):
        s, _ = timed(lambda: evaluate_plane(model, points, data, None, grid=g))
        report(f"{g} x {g} + 3 = {g * g + 3} points", s, g * g + 3, per_point_images, flops)



def dataset_sizes(model, points, data, flops) -> None:
    header("dataset size (9 x 9 plane + 3, width 32; test split 360)")
    for n in (360, 720, 1437):
        sub = dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])
        s, _ = timed(lambda: evaluate_plane(model, points, sub, None, grid=9))
        report(f"{n} training images", s, 84, n + len(data.y_test), flops)



def model_sizes(data, per_point_images) -> None:
    header("model size (9 x 9 plane + 3, fresh convnets of width w)")
    for w in (16, 32, 64):
        nets = []
        for seed in (1, 2, 3):
            torch.manual_seed(seed)
            nets.append(create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=w))
        space = ParamSpace.of(nets[0])
        vecs = [space.flatten(n).detach() for n in nets]
        f = forward_flops(nets[0], data.x_train)
        s, _ = timed(lambda: evaluate_plane(nets[0], vecs, data, None, grid=9))
        report(f"width {w} ({space.numel:,} params, {f / 1e6:.1f} MFLOP)", s, 84, per_point_images, f)



def processes(ckpt: Path, per_point_images: int, flops: float) -> None:
    n = 21 * 21 + 3
    header(f"processes (landscape plane --ckpt CURVE --grid 21: {n} points, whole command)")
    with tempfile.TemporaryDirectory() as tmp:
        one = [str(BIN / "landscape"), "plane", "--ckpt", str(ckpt), "--grid", "21", "--quiet", "--out"]
        s11 = run_timed(one + [str(Path(tmp) / "one1")], dict(os.environ, OMP_NUM_THREADS="1"))
        report("1 process, 1 thread", s11, n, per_point_images, flops)
        s12 = run_timed(one + [str(Path(tmp) / "one2")], dict(os.environ, OMP_NUM_THREADS="2"))
        report("1 process, 2 threads", s12, n, per_point_images, flops)
        two = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "--no-python", *one, str(Path(tmp) / "two")]
        s2 = run_timed(two, dict(os.environ, OMP_NUM_THREADS="1"))
        report("torchrun 2 processes, 1 thread each", s2, n, per_point_images, flops)
        print(f"speed-up from 1 to 2 processes (1 thread each): {s11 / s2:.2f}; "
              f"2 processes vs 1 process with 2 threads: {s12 / s2:.2f}")


def training(endpoint: Path) -> None:
    print("\ntraining processes (whole command; speed-up over 1 process with 1 thread)")
    print(f"{'':<44}{'1 proc, 1 thread':>18}{'1 proc, 2 threads':>19}{'2 procs, 1 thread each':>24}")
    synthetic = ["--dataset", "synthetic", "--synthetic-shape", "3,32,32", "--synthetic-size", "2000,200",
                 "--model", "preresnet", "--model-kwargs", "depth=8", "--epochs", "2"]
    jobs = (("train, digits convnet, 20 epochs", ["train", "--epochs", "20", "--seed", "1"]),
            ("swa from an endpoint, digits, 20 epochs", ["swa", "--from", str(endpoint), "--epochs", "20"]),
            ("train, PreResNet-8, 2000 synthetic, 2 epochs", ["train", *synthetic]))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, argv) in enumerate(jobs):
            cmd = [str(BIN / "landscape"), *argv, "--quiet", "--out"]
            s11 = run_timed(cmd + [str(Path(tmp) / f"{i}-11")], dict(os.environ, OMP_NUM_THREADS="1"))
            s12 = run_timed(cmd + [str(Path(tmp) / f"{i}-12")], dict(os.environ, OMP_NUM_THREADS="2"))
            two = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                   "--master-port", str(free_port()), "--no-python", *cmd, str(Path(tmp) / f"{i}-2")]
            s2 = run_timed(two, dict(os.environ, OMP_NUM_THREADS="1"))
            print(f"{label:<44}{s11:>11.1f} s 1.00{s12:>12.1f} s {s11 / s12:.2f}{s2:>17.1f} s {s11 / s2:.2f}")


def run_timed(cmd: list[str], env) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
