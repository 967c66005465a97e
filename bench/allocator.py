"""What glibc's allocator settings do to the engine on the CPU (Linux only).

The engine calls ``keep_freed_memory()`` once per process; this script
measures it against other settings. mallopt is process-wide and cannot be
undone, so every setting runs in a fresh child process that evaluates the
same 40 random points of a digits plane (default settings: population
batch-norm statistics, the whole training set as one batch); the settings
are run in turn, ``--rounds`` times, and the best time of each is printed
per point, with the ratio against glibc's defaults.

    python bench/allocator.py [--rounds 3] [--points 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2, M_MMAP_THRESHOLD = -3 (malloc.h)
SETTINGS = {
    "glibc defaults": [],
    "engine: mmap 1 GiB + top pad 256 MiB": "engine",
    "mmap threshold 1 GiB only": [(-3, 2**30)],
    "top pad 256 MiB only": [(-2, 2**28)],
    "mmap 1 GiB + trim at 0 + top pad": [(-3, 2**30), (-1, 0), (-2, 2**28)],
    "mmap 1 GiB + never trim + top pad": [(-3, 2**30), (-1, 2**31 - 1), (-2, 2**28)],
}

CHILD = r"""
import ctypes, json, sys, time
import numpy as np, torch
import landscape.evaluate as engine
from landscape.data import load_dataset
from landscape.models import create_model

setting = json.loads(sys.argv[1])
if setting == "engine":
    engine.keep_freed_memory()
else:
    libc = ctypes.CDLL("libc.so.6")
    for option, value in setting:
        assert libc.mallopt(ctypes.c_int(option), ctypes.c_int(value)) == 1, (option, value)
    engine._MALLOC_TUNED = True  # the engine must not apply its own on top
data = load_dataset("digits")
torch.manual_seed(0)
nets = [create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=32) for _ in range(3)]
C = np.random.default_rng(0).random((int(sys.argv[2]), 3))
C /= C.sum(axis=1, keepdims=True)
engine.evaluate_points(nets[0], nets, C[:4], data)  # warm-up
t0 = time.perf_counter()
engine.evaluate_points(nets[0], nets, C, data)
print(json.dumps((time.perf_counter() - t0) / len(C)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--points", type=int, default=40)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from protocol import machine

    print(f"machine: {machine()}")
    best = {name: float("inf") for name in SETTINGS}
    for _ in range(args.rounds):
        for name, setting in SETTINGS.items():
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(setting), str(args.points)],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name}: the child process failed:\n{done.stderr[-2000:]}")
            best[name] = min(best[name], json.loads(done.stdout.strip().splitlines()[-1]))
    base = best["glibc defaults"]
    for name, s in best.items():
        print(f"{name:36s} {1000 * s:7.1f} ms/point  {base / s:5.2f}x")


if __name__ == "__main__":
    main()
