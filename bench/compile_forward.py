"""What torch.compile would buy the engine on this machine (it does not use it).

Times one eval-mode forward of the digits convnet on the whole training set
(1437 images, channels-last, the engine's allocator setting) through
``functional_call`` — the call the engine makes per point — eagerly and
compiled with ``torch.compile`` (inductor), and the one-off compile time;
then the engine itself (``evaluate_points``, 40 points, default settings)
with its ``functional_call`` swapped for the compiled one.

    python bench/compile_forward.py [--width 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import functional_call

import landscape.evaluate as engine
from landscape.data import load_dataset
from landscape.evaluate import evaluate_points, keep_freed_memory
from landscape.models import create_model
from protocol import machine, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    keep_freed_memory()
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=args.width).eval()
    model = model.to(memory_format=torch.channels_last)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x = data.x_train.contiguous(memory_format=torch.channels_last)

    def forward(p, b, x):
        return functional_call(model, (p, b), (x,))

    print(f"machine: {machine()}")
    with torch.inference_mode():
        forward(params, buffers, x)
        eager, want = timed(lambda: forward(params, buffers, x), args.repeats)
        compiled = torch.compile(forward)
        t0 = time.perf_counter()
        compiled(params, buffers, x)
        compile_s = time.perf_counter() - t0
        fast, got = timed(lambda: compiled(params, buffers, x), args.repeats)
    print(f"convnet width {args.width}, eval forward of {len(x)} images: eager {1000 * eager:.1f} ms, "
          f"compiled {1000 * fast:.1f} ms ({eager / fast:.2f}x), first compiled call {compile_s:.1f} s, "
          f"max difference {float((got - want).abs().max()):.1e}")

    # The engine: 40 random points of the plane of three such networks.
    nets = [create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=args.width) for _ in range(3)]
    C = torch.rand(40, 3, dtype=torch.float64)
    C = C / C.sum(dim=1, keepdim=True)
    run = lambda: evaluate_points(nets[0], nets, C, data)  # noqa: E731
    run()
    s_eager, _ = timed(run, 2)
    plain = engine.functional_call
    engine.functional_call = torch.compile(plain, dynamic=False)
    try:
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        s_comp, _ = timed(run, 2)
    finally:
        engine.functional_call = plain
    print(f"engine, 40 points: eager {1000 * s_eager / 40:.1f} ms/point, compiled {1000 * s_comp / 40:.1f} ms/point "
          f"({s_eager / s_comp:.2f}x), first run with compilation {first:.1f} s")


if __name__ == "__main__":
    main()
