"""Hessian-vector products and gradients on channels-last against NCHW image batches, in one process.

``landscape.sharpness.TrainLoss`` differentiates the mean train NLL of a
trained digits convnet (the endpoint cached by bench/plane_protocol.py, at a
minimum, where the gradient's terms cancel), the whole training set as one
batch with batch norm in train mode. For each layout this times a gradient
(NUTS's force) and a Hessian-vector product (a double backward: every
Lanczos and Hutchinson step of ``sharpness``), best of --repeats, and
measures each against the same double backward in float64.

    python bench/hvp_layout.py [--work runs/bench] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from engine_vs_loop import endpoints_and_curve  # noqa: E402  (same folder)
from landscape.data import load_dataset
from landscape.sharpness import TrainLoss
from protocol import machine, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = load_dataset("digits")
    loaded = endpoints_and_curve(args.work, data)
    loss = TrainLoss(loaded.model, data, "population")
    w = loaded.curve.anchors().detach()[0].float()  # the first endpoint
    v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = data.x_train, data.y_train

    net64 = copy.deepcopy(loss.net).double()
    w64 = w.double().requires_grad_(True)
    nll = F.cross_entropy(functional_call(net64, loss.space.unflatten(w64), (x.double(),)), y)
    (g64,) = torch.autograd.grad(nll, w64, create_graph=True)
    (hv64,) = torch.autograd.grad(g64 @ v, w64)
    g64 = g64.detach()

    def gradient(channels_last: bool) -> torch.Tensor:
        wr = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss.nll_sum(wr, x, y, channels_last=channels_last) / loss.n, wr)
        return g.double()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    print(f"machine: {machine()}")
    print(f"digits convnet ({w.numel():,} parameters) at a trained endpoint, {len(y)} training images as one batch; "
          f"best of {args.repeats}\n")
    print(f"{'layout':<15}{'gradient s':>12}{'rel. error':>12}{'H v s':>10}{'rel. error':>12}")
    rows = {}
    for name, cl in (("channels-last", True), ("NCHW", False)):
        gradient(cl), loss.hvp(w, v, channels_last=cl)  # warm-up
        tg, g = timed(lambda: gradient(cl), args.repeats)
        th, hv = timed(lambda: loss.hvp(w, v, channels_last=cl), args.repeats)
        rows[name] = th
        print(f"{name:<15}{tg:>12.3f}{rel(g, g64):>12.1e}{th:>10.3f}{rel(hv, hv64):>12.1e}")
    print(f"\nH v on NCHW is {rows['channels-last'] / rows['NCHW']:.2f}x the speed of channels-last; "
          f"TrainLoss.hvp takes NCHW on the CPU (float64 reference: the same double backward in float64)")


if __name__ == "__main__":
    main()
