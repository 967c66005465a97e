"""The digits plane (21 x 21) by the papers' protocol and by the engine, in one process.

Trains two digits endpoints and a Bezier curve between them (cached under
--work), then evaluates the plane through the curve's start, end and bend:

  - the papers' protocol (bench/protocol.py): one point at a time, DataLoader
    batch 128, batch-norm pass + train pass + test pass; as their code runs it
    (autograd on) and with ``torch.no_grad``. It is timed on --baseline-points
    grid points spread over the plane (every point costs the same work) and
    its time per point is multiplied up to the whole plane; pass
    --baseline-points 0 to run it on every point;
  - ``evaluate_plane`` on the whole grid (+ the 3 anchors), as
    ``landscape plane`` runs it: default settings (population batch-norm
    statistics), and with ``bn_stats="batches"`` (the papers' estimator);
  - with --bf16 (default: when the CPU has bf16 units or on CUDA) the same in
    bf16, checked against fp32 at every point (1 % relative or 1e-3 absolute).

With --repeats N every method runs N times, in rounds (each round runs them
all once, in the order above), and its best time counts: this shared
machine's other tenants slow single runs by 10-50 %, at times one method's
and not another's.

Prints seconds, the ratio baseline / engine, and how far the engine's metrics
are from the baseline's at the shared points.

    python bench/plane_protocol.py [--work runs/bench] [--grid 21] [--baseline-points 63] [--repeats 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from engine_vs_loop import endpoints_and_curve  # noqa: E402  (same folder)
from landscape.data import load_dataset
from landscape.geometry import plane_basis, plane_coefficients
from landscape.plane import evaluate_plane
from protocol import cpu_has_bf16, machine, max_differences, papers_protocol, timed, within

WD = 5e-4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--baseline-points", type=int, default=63, help="grid points the baseline runs on (0: all)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="also time bf16 (default: when the CPU has bf16 units, or on CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of every method; each method's best time counts")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = load_dataset("digits", device=device)
    loaded = endpoints_and_curve(args.work, load_dataset("digits"))
    model = loaded.model.to(device)
    W = loaded.curve.anchors().detach().to(device)
    points = [W[0], W[-1], W[1]]
    g2 = args.grid ** 2
    total = g2 + 3
    print(f"machine: {machine()}")
    print(f"digits convnet ({sum(p.numel() for p in model.parameters()):,} parameters), plane {args.grid}x{args.grid} "
          f"+ 3 anchors = {total} points; {len(data.y_train)} train / {len(data.y_test)} test images; wd {WD}; "
          f"best of {args.repeats}")

    use_bf16 = args.bf16 if args.bf16 is not None else (device.type == "cuda" or cpu_has_bf16())
    engine = [("engine, default (population BN stats), fp32", {}),
              ("engine, bn_stats=batches, fp32", {"bn_stats": "batches"})]
    if use_bf16:
        engine.append(("engine, default, bf16", {"precision": "bf16"}))
    basis = plane_basis(*[p.double() for p in points]).anchors().to(device)  # (3, P): origin, u, v
    best: dict[str, float] = {}
    arrays: dict[str, dict] = {}
    base_results: dict[bool, dict] = {}
    idx = None
    for _ in range(args.repeats):
        for label, options in engine:
            s, res = timed(lambda: evaluate_plane(model, points, data, None, grid=args.grid, wd=WD, **options))
            best[label], arrays[label] = min(best.get(label, s), s), res.arrays
        if idx is None:
            # The baseline on grid points spread over the plane (row-major order, as the engine's arrays).
            pop = arrays[engine[0][0]]
            coeffs = plane_coefficients(pop["x"], pop["y"])  # (G*G, 3)
            n_base = g2 if args.baseline_points <= 0 else min(args.baseline_points, g2)
            idx = np.unique(np.linspace(0, g2 - 1, n_base).round().astype(int))
        for grad in (True, False):
            s, base_results[grad] = timed(lambda: papers_protocol(model, basis.float(), coeffs[idx], data, wd=WD, grad=grad))
            best[f"base{grad}"] = min(best.get(f"base{grad}", s), s)
    base = {grad: (best[f"base{grad}"] / len(idx), base_results[grad]) for grad in (True, False)}
    rows = [(label, best[label], arrays[label]) for label, _ in engine]
    pop = arrays[engine[0][0]]
    per_point = base[True][0]
    print(f"\n{'method':<48}{'seconds':>10}{'s/point':>10}{'papers / this':>15}")
    for grad, label in ((True, "papers' protocol (autograd on, as their code)"),
                        (False, "papers' protocol with torch.no_grad")):
        sp = base[grad][0]
        print(f"{label:<48}{sp * total:>10.1f}{sp:>10.4f}{per_point / sp:>15.2f}"
              + ("   (timed on %d points)" % len(idx) if len(idx) < g2 else ""))
    for label, s, _ in rows:
        print(f"{label:<48}{s:>10.1f}{s / total:>10.4f}{per_point * total / s:>15.2f}")

    print(f"\nlargest difference from the papers' protocol over its {len(idx)} points "
          f"(train loss abs / rel; test error, points):")
    ref = base[True][1]
    for label, _, metrics in rows:
        got = {m: metrics[m].ravel()[idx] for m in ref}
        d = max_differences(got, ref)
        print(f"  {label:<46} {d['train_loss'][0]:.2e} / {d['train_loss'][1]:.2e};  {d['test_error'][0]:.2f}")
    if use_bf16:
        a, b = pop["train_loss"], arrays[engine[2][0]]["train_loss"]
        rel = np.abs(b - a) / np.abs(a)
        print(f"bf16 vs fp32 train loss at all {g2} grid points: max abs {np.abs(b - a).max():.2e}, "
              f"max rel {rel.max():.2e}; within 1 % or 1e-3 everywhere: {within(b, a)}")
    else:
        print("bf16 not timed: this CPU has no bf16 units (no avx512_bf16 / AMX), where bf16 is emulated; "
              "--bf16 runs it anyway")


if __name__ == "__main__":
    main()
