"""The papers' evaluation protocol, written plainly: the baseline of the speed benchmarks.

dnn-mode-connectivity's ``plane.py`` and ``eval_curve.py`` (and swa's
``utils.py``) evaluate a landscape one point at a time: copy the point's
weights into the network, ``bn_update`` (one pass over the training loader in
train mode, momentum b / (n + b), i.e. the sample-weighted average of the
per-batch statistics), then ``test`` on the training loader and on the test
loader (eval mode, the weight-decay term added to the loss batch by batch).
The loaders are ``torch.utils.data.DataLoader`` with batch 128, no shuffling.
Their code runs with autograd on (no ``torch.no_grad``); ``grad=False`` is the
same loop with it off, the one change a careful user would make.

This file also holds what the benchmark scripts share: the machine line,
best-of timing, synthetic CIFAR-shaped data and the metric comparison.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.data import load_dataset
from landscape.evaluate import METRICS
from landscape.weights import ParamSpace


def papers_protocol(model: nn.Module, anchors: torch.Tensor, coefficients: np.ndarray, data, *,
                    wd: float = 0.0, batch_size: int = 128, grad: bool = True) -> dict[str, np.ndarray]:
    """Metrics (N,) at the points ``coefficients @ anchors``, one point at a time as the papers do."""
    net = copy.deepcopy(model)
    space = ParamSpace.of(net)
    cpu = [t.cpu() for t in (data.x_train, data.y_train, data.x_test, data.y_test)]
    train_loader = DataLoader(TensorDataset(cpu[0], cpu[1]), batch_size=batch_size, shuffle=False)
    test_loader = DataLoader(TensorDataset(cpu[2], cpu[3]), batch_size=batch_size, shuffle=False)
    device = data.device
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    C = torch.as_tensor(np.asarray(coefficients), dtype=anchors.dtype, device=anchors.device)
    with torch.set_grad_enabled(grad):
        for c in C:
            with torch.no_grad():
                for name, value in space.unflatten(c @ anchors).items():
                    net.get_parameter(name).copy_(value)
            _bn_update(train_loader, net, device)
            train = _test(train_loader, net, device, wd)
            test = _test(test_loader, net, device, wd)
            out["train_loss"].append(train["loss"])
            out["train_nll"].append(train["nll"])
            out["train_error"].append(train["error"])
            out["test_nll"].append(test["nll"])
            out["test_error"].append(test["error"])
    return {m: np.asarray(v) for m, v in out.items()}


def _bn_update(loader: DataLoader, model: nn.Module, device: torch.device) -> None:
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    model.train()
    for m in layers:
        m.reset_running_stats()
    n = 0
    for x, _ in loader:
        x = x.to(device)
        b = x.shape[0]
        for m in layers:
            m.momentum = b / (n + b)
        model(x)
        n += b


def _test(loader: DataLoader, model: nn.Module, device: torch.device, wd: float) -> dict[str, float]:
    model.eval()
    nll_sum = loss_sum = 0.0
    wrong = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        output = model(x)
        nll = F.cross_entropy(output, y)
        loss = nll + 0.5 * wd * sum(p.pow(2).sum() for p in model.parameters())
        nll_sum += nll.item() * x.shape[0]
        loss_sum += loss.item() * x.shape[0]
        wrong += (output.argmax(1) != y).sum().item()
    n = len(loader.dataset)
    return {"nll": nll_sum / n, "loss": loss_sum / n, "error": 100.0 * wrong / n}


# --------------------------------------------------------------------------- shared helpers
def _cpuinfo() -> tuple[str, str]:
    """(model name, flags line) of the first CPU in /proc/cpuinfo; empty where there is none."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    return name, line
    except OSError:
        pass
    return name, flags


def machine() -> str:
    """One line naming the CPU, its vector units, torch and the threads used."""
    name, flags = _cpuinfo()
    if platform.processor() not in ("", "x86_64"):
        name = platform.processor()
    name = name or platform.machine()
    units = [u for u in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {u}" in flags]
    cuda = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{name} ({', '.join(units) or 'no AVX2'}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{cuda}")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (avx512_bf16 or AMX); without, bf16 is emulated and slow."""
    flags = _cpuinfo()[1]
    return " avx512_bf16" in flags or " amx_bf16" in flags


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one eval-mode forward per image (multiply-adds count 2;
    convolutions and linear layers, as ``torch.utils.flop_counter`` counts),
    measured on up to 8 images of ``x``. Modes are restored."""
    from torch.utils.flop_counter import FlopCounterMode

    x = x[:8]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return counter.get_total_flops() / len(x)


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """(best wall-clock seconds over ``repeats`` calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def synthetic_cifar(n_train: int, n_test: int, device: str | torch.device = "cpu"):
    """CIFAR-shaped random data (3x32x32, 10 classes): timings do not depend on the pixels."""
    return load_dataset("synthetic", synthetic_sizes=(n_train, n_test), device=device)


def max_differences(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per metric: (largest absolute, largest relative) difference of ``got`` from ``ref``."""
    out = {}
    for m in METRICS:
        a, b = np.asarray(got[m], dtype=np.float64), np.asarray(ref[m], dtype=np.float64)
        d = np.abs(a - b)
        out[m] = (float(d.max()), float((d / np.maximum(np.abs(b), 1e-12)).max()))
    return out


def within(got: np.ndarray, ref: np.ndarray, rel: float = 0.01, abs_: float = 1e-3) -> bool:
    """Every point within ``rel`` relative or ``abs_`` absolute of ``ref``."""
    d = np.abs(np.asarray(got) - np.asarray(ref))
    return bool(np.all((d <= rel * np.abs(ref)) | (d <= abs_)))
