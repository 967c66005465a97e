"""Short reprs for the results the Python API returns.

A dataclass's own repr prints every field in full: a trained network's every
layer, every epoch's record, the data's tensors. In a notebook the value of
a cell such as ``train(...)`` was hundreds of lines that buried its summary.
:func:`brief_repr` gives a result class a repr of one line per field, each a
short description of what the field holds.
"""

from __future__ import annotations

import dataclasses
import numbers
from pathlib import PurePath
from typing import Any

__all__ = ["brief_repr", "brief"]

WIDTH = 100  # a field whose own repr is longer than this is described instead


def brief(value: Any) -> str:
    """``value`` in a few words: numbers and strings as they are (where short), paths in full; a
    network by its class and parameter count; arrays and tensors by shape and
    dtype; a dict of numbers by its items where they are few, else by its keys;
    a list by its length (and the first's shape, of tensors); anything else by its repr, or its type when that is long."""
    import numpy as np
    import torch

    if value is None or isinstance(value, (bool, PurePath, torch.device, torch.dtype)):
        return repr(value)  # a path in full, however long: it is what a reader looks for
    if isinstance(value, numbers.Number):
        text = repr(value)
        return text if len(text) <= WIDTH else f"<{type(value).__name__} of {len(text)} digits>"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= WIDTH else f"<str of {len(value)} characters>"
    if isinstance(value, torch.nn.Module):
        count = sum(p.numel() for p in value.parameters())
        return f"<{type(value).__name__}: {count:,} parameters>"
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)} {str(value.dtype).replace('torch.', '')} on {value.device}>"
    if isinstance(value, np.ndarray):
        return f"<array {value.shape} {value.dtype}>"
    if isinstance(value, dict):
        text = repr(value)
        if len(text) <= WIDTH and all(not isinstance(v, (dict, list, tuple)) for v in value.values()):
            return text
        keys = ", ".join(map(str, list(value)[:8])) + (", ..." if len(value) > 8 else "")
        return f"<dict of {len(value)}: {keys}>"
    if isinstance(value, (list, tuple)):
        plain = all(v is None or isinstance(v, (bool, numbers.Number, str, PurePath)) for v in value)
        text = repr(value)
        if plain and len(text) <= WIDTH:
            return text
        first = f", the first {brief(value[0])}" if value and isinstance(value[0], (torch.Tensor, np.ndarray)) else ""
        return f"<{type(value).__name__} of {len(value)}{first}>"
    describe = getattr(value, "describe", None)  # a Dataset: its name and sizes, not its tensors
    if callable(describe) and hasattr(value, "x_train"):
        d = describe()
        return f"<Dataset {d.get('name')!r}: {d.get('n_train')} train / {d.get('n_test')} {d.get('eval_split', 'test')}>"
    text = repr(value)
    return text if len(text) <= WIDTH else f"<{type(value).__name__}>"


def brief_repr(cls: type) -> type:
    """A dataclass ``cls`` given a repr of its fields, each as :func:`brief` puts it."""

    def __repr__(self) -> str:
        parts = [f"    {f.name}={brief(getattr(self, f.name))}," for f in dataclasses.fields(self) if f.repr]
        return f"{type(self).__name__}(\n" + "\n".join(parts) + "\n)"

    cls.__repr__ = __repr__
    return cls
