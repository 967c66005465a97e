"""A VGG16-BN plane on CIFAR-sized synthetic data: time, achieved FLOP/s and fraction of peak.

The speed issue's GPU target: a 21 x 21 plane (plus its 3 anchors) through
three VGG16-BN networks (fresh initialisations: the time does not depend on
the weights) on 50,000 train / 10,000 test synthetic 3x32x32 images, batch
norm re-estimated at every point, by ``landscape.plane.evaluate_plane`` (what
``landscape plane`` runs) with the data resident on the device, in bf16 by
default (``--precision fp32`` for the other). Prints the wall time, the
points per second, the forward FLOPs the engine did (convolutions and linear
layers, counted by ``torch.utils.flop_counter`` on one image), the achieved
FLOP/s and its fraction of the device's peak, and two lower bounds at that
peak: for the engine's passes and for the papers' three passes per point
(the issue's "about 31 s" on an H100 in bf16).

    python bench/vgg_plane.py                         # --grid 21 --train 50000 --test 10000 --precision bf16
    python bench/vgg_plane.py --grid 2 --train 64 --test 32 --device cpu --precision fp32   # a smoke run
    python bench/vgg_plane.py --strategy loop         # K points one after another instead of one vmap call

On CUDA the engine's default batches the K points of a pass with vmap, which
turns every convolution after the first into a grouped one (K groups); with
VGG16-BN's large per-point convolutions one point at a time may fill the
GPU as well, so ``bash bench/gpu.sh vgg-small`` times both.

``--peak-tflops`` overrides the peak table (dense tensor-core figures from
NVIDIA's data sheets: bf16, and TF32 for fp32 since cuDNN runs fp32
convolutions in TF32 by default).
"""

from __future__ import annotations

import argparse
import copy

import torch

from landscape.evaluate import default_points_per_pass, resolve_bn_stats, resolve_strategy
from landscape.models import create_model
from landscape.plane import evaluate_plane
from landscape.sweep import process_device
from landscape.weights import ParamSpace
from protocol import forward_flops, machine, synthetic_cifar, timed

# Dense peak TFLOP/s by device name fragment, the first match wins: (bf16, tf32).
PEAKS = {"H100 PCIe": (756.0, 378.0), "H100 NVL": (835.0, 418.0), "H100": (989.4, 494.7),
         "H200 NVL": (835.0, 418.0), "H200": (989.4, 494.7), "A100": (312.0, 156.0)}


def si(x: float, unit: str) -> str:
    """``x`` with an SI prefix: si(2.5e12, "FLOP/s") == "2.50 TFLOP/s"."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for ``precision``, or None when unknown (e.g. a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, tf32) in PEAKS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else tf32
    return None


def vgg16bn(seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("vgg16bn", num_classes=10, input_shape=(3, 32, 32)).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--bn-stats", choices=["auto", "population", "batches"], default="auto")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--points-per-pass", type=int, default=None, help="default: from the free memory")
    ap.add_argument("--strategy", choices=["auto", "vmap", "loop"], default="auto",
                    help="the engine's: K points as one vmap call, or one after another (auto: vmap on CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--progress", action="store_true", help="a progress bar on stderr")
    args = ap.parse_args()
    device = process_device(args.device)
    data = synthetic_cifar(args.train, args.test, device)
    nets = [vgg16bn(seed, device) for seed in (1, 2, 3)]
    space = ParamSpace.of(nets[0])
    points = [space.flatten(n).detach() for n in nets]
    bn_stats = resolve_bn_stats(args.bn_stats, nets[0], data)
    strategy = resolve_strategy(args.strategy, device)
    n_points = args.grid ** 2 + 3
    per_image = forward_flops(nets[0], data.x_train)
    images = (1 if bn_stats == "population" else 2) * args.train + args.test  # per point
    papers_images = 2 * args.train + args.test  # batch-norm pass, train pass, test pass
    print(f"machine: {machine()}")
    print(f"VGG16-BN ({space.numel:,} parameters, {per_image / 1e9:.3f} GFLOP per image forward), plane "
          f"{args.grid}x{args.grid} + 3 anchors = {n_points} points; synthetic {args.train} train / {args.test} "
          f"test 3x32x32; {args.precision}, bn-stats {bn_stats}, batch {args.batch_size}, device {device}, strategy "
          f"{strategy}")
    # The number the sweep will take (the same call), printed: it decides how well the device is filled.
    k = args.points_per_pass or default_points_per_pass(nets[0], data, bn_stats, args.batch_size, strategy)
    print(f"points per pass: {k}{'' if args.points_per_pass else ' (from the free memory)'}")

    # Not timed: a 2x2 plane of a copy of the network on one batch of images loads the device's
    # libraries and kernels (a first call's seconds are no part of a plane's cost); the copy keeps the
    # timed run's own vmap trial and memory sizing in its time.
    small = synthetic_cifar(min(args.train, args.batch_size), min(args.test, args.batch_size), device)
    warm, _ = timed(lambda: evaluate_plane(copy.deepcopy(nets[0]), points, small, grid=2, precision=args.precision,
                                           bn_stats=bn_stats, batch_size=args.batch_size, strategy=args.strategy))
    print(f"warm-up (not counted): {warm:.1f} s")
    seconds, result = timed(lambda: evaluate_plane(nets[0], points, data, grid=args.grid, precision=args.precision,
                                                   bn_stats=bn_stats, batch_size=args.batch_size,
                                                   points_per_pass=args.points_per_pass, strategy=args.strategy,
                                                   progress=args.progress))
    done = float(n_points) * images * per_image
    print(f"time: {seconds:.1f} s, {n_points / seconds:.2f} points/s, {seconds / n_points * 1e3:.1f} ms/point")
    print(f"forward FLOPs: {si(done, 'FLOP')} ({images} images per point), achieved {si(done / seconds, 'FLOP/s')}")
    peak = args.peak_tflops or peak_tflops(device, args.precision)
    if peak:
        print(f"peak {peak:.0f} TFLOP/s ({args.precision}): {done / seconds / 1e12 / peak:.1%} of peak; lower bound "
              f"at peak {done / peak / 1e12:.1f} s for this work, {n_points * papers_images * per_image / peak / 1e12:.1f} s "
              f"for the papers' three passes per point")
    else:
        print("peak: unknown for this device (pass --peak-tflops)")
    # What the engine did, not what was asked: a vmap trial that failed means the loop ran; a pass that ran
    # out of memory was split (evaluate_points remembers both on the network).
    failed = [why for why in nets[0].__dict__.get("_landscape_vmap_tried", {}).values() if why]
    if strategy == "vmap":
        print("vmap ran every pass" if not failed else f"vmap could not run, the loop ran instead: {failed[0]}")
    split = nets[0].__dict__.get("_landscape_points_fit", {})
    if split:
        print(f"a pass ran out of memory: split to {min(split.values())} points per pass")
    finite = bool(torch.isfinite(torch.as_tensor(result.arrays["train_loss"])).all())
    print(f"train loss finite at every point: {finite}")


if __name__ == "__main__":
    main()
