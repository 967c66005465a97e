"""Device selection and seeding, shared by every command."""

from __future__ import annotations

import random

import numpy as np
import torch

from collections.abc import Callable

from .errors import UserError, check_seed

__all__ = ["resolve_device", "seed_everything", "total_memory", "check_fits", "device_constant", "host_to_device"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a usable device.

    ``auto`` picks the first CUDA device when one is available, else the CPU.
    Asking for CUDA on a machine without it is a :class:`UserError`.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} asked for, but this machine has no usable CUDA device")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def total_memory(device: torch.device | str) -> int:
    """Bytes of memory the device has in all: the GPU's, or the host's physical memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(nbytes: float, what: str, device: torch.device | str) -> None:
    """One line, before any work, when ``what`` (an option and the array it
    sets) needs more than all of the device's memory: a size asked for by
    mistake should not run until the machine runs out."""
    have = total_memory(device)
    if nbytes > have:
        raise UserError(f"{what} needs {nbytes / 2 ** 30:.3g} GiB, more than the {have / 2 ** 30:.3g} GiB this "
                        f"{torch.device(device).type.upper()} has in all")


def seed_everything(seed: int, *, gpus: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices; the CPU alone where not
    ``gpus``: ``torch.manual_seed`` seeds every GPU, or queues it where CUDA
    has not started); ``seed`` a whole number in 0..2^63 - 1."""
    seed = check_seed(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if gpus:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(key: tuple, device: torch.device | str | None, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``make()`` (built on the CPU from Python numbers), made once
    per ``key`` and kept on ``device``. A training step that built it anew on a
    GPU would copy it from the host every step, and torch makes such a copy
    wait for everything queued on the GPU. Callers must not change it in place."""
    where = torch.device(device) if device is not None else torch.device("cpu")
    found = _CONSTANTS.get((key, str(where)))
    if found is None:
        with torch.inference_mode(False):  # made in an inference-mode call, it could not join a graph later
            found = _CONSTANTS[(key, str(where))] = make().to(where)
    return found


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A fresh CPU tensor (random draws made on the CPU so that every device
    sees the same numbers) moved to ``device``; to a GPU through pinned memory
    without waiting for its queue, where a plain copy would wait."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
