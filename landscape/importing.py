"""Checkpoints of the papers' code made into landscape's (``landscape import``).

A landscape checkpoint names its network (``{"name", "kwargs"}``) and the
data it was trained on, so every later command reads it without ``--model``
or data options. ``import_checkpoint`` writes one from:

- a curve of dnn-mode-connectivity's code (its ``CurveNet``: ``coeff_layer``
  buffers and per-bend ``net.<module>.<param>_<i>`` parameters) as a curve
  checkpoint. Its curve modules register a layer's weights of every bend,
  then its biases, and its ``import_base_parameters`` maps bend ``i``'s
  parameters onto a plain network's by position; this does the same, so
  the curve network's own names (VGG's ``fc1`` for ``classifier.1``,
  PreResNet's ``downsample`` for ``downsample.0``) need not match, while
  every shape must. Its ``num_bends`` counts the ends: ``bends`` here is
  ``num_bends - 2``. Bezier when ``coeff_layer.binom`` is there (its
  Bernstein basis), else a polygonal chain (``coeff_layer.range`` alone).
- any network checkpoint landscape reads (a bare state dict, ``model_state``,
  ``state_dict``, with wrapper prefixes), or the state dict under ``key``
  (the swa code's ``swa_state_dict`` beside its ``state_dict``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (_refuse_nan, _refuse_papers_format, check_state_dict, extract_state_dict,
                         is_papers_curve, read_torch_file, save_checkpoint)
from .errors import UserError
from .inputs import check_data_options, merged_data_settings, resolve_data
from .models import create_model, model_spec
from .weights import ParamSpace

__all__ = ["import_checkpoint"]

_BEND = re.compile(r"(.+)_(\d+)")


def import_checkpoint(source: str | Path, out: str | Path, *, model: str, model_kwargs: dict | None = None,
                      key: str | None = None, **data_options: Any) -> Path:
    """Write ``out``, a landscape checkpoint of ``source`` (a curve or a
    network of the papers' code, above) built as ``model`` (a registered
    name or ``package.module:factory``, with ``model_kwargs``) for the data
    ``data_options`` name (``dataset``, ``data_path``, ...: the data it was
    trained on, which later commands then use by default). Refuses an
    ``out`` that exists. Returns ``out``."""
    source, out = Path(source), Path(out)
    check_data_options(data_options)
    if not str(out).strip() or out.exists():
        raise UserError(f"{out}: already exists; choose another --out (import writes a new file)")
    obj = read_torch_file(source)
    if isinstance(obj, Mapping) and isinstance(obj.get("format"), str) and obj["format"].startswith("landscape/"):
        raise UserError(f"{source}: already a landscape checkpoint ({obj['format']}); every command reads it")
    state = _state(source, obj, key)
    data = resolve_data({}, data_options, torch.device("cpu"), source)
    spec = model_spec(model, data.num_classes, tuple(data.input_shape), **(model_kwargs or {}))
    with torch.random.fork_rng(devices=[]):  # its first weights are replaced: the caller's stream stays
        net = create_model(model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                           **(model_kwargs or {}))
    settings = merged_data_settings({}, data_options)
    if settings.get("data_path"):  # later commands may run from elsewhere
        settings["data_path"] = str(Path(settings["data_path"]).expanduser().resolve())
    meta = {"imported_from": str(source.resolve()), "dataset": data.describe(), "train_config": settings}
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_papers_curve(state):
        return _import_curve(source, out, state, net, spec, meta)
    _refuse_papers_format(source, state)
    check_state_dict(net, state, str(source), f"model '{model}'")
    net.load_state_dict(state, strict=False)
    return save_checkpoint(out, net.state_dict(), spec, kind="model", meta={**meta, "format": "network"})


def _state(source: Path, obj: Any, key: str | None) -> dict[str, torch.Tensor]:
    """The state dict to import: under ``key``, else the one
    :func:`~landscape.checkpoint.extract_state_dict` finds (the swa code's
    two networks need ``key``)."""
    if key is not None:
        held = obj.get(key) if isinstance(obj, Mapping) else None
        if not (isinstance(held, Mapping) and held and all(isinstance(v, torch.Tensor) for v in held.values())):
            keys = ", ".join(repr(k) for k in list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
            raise UserError(f"{source}: no state dict under --key {key!r}; the file holds {keys}")
        state = extract_state_dict(dict(held), source)
    else:
        if isinstance(obj, Mapping) and obj.get("swa_state_dict") is not None and obj.get("state_dict") is not None:
            raise UserError(f"{source}: holds two networks, the SGD iterate ('state_dict') and the SWA average "
                            f"('swa_state_dict'); name the one to import with --key")
        state = extract_state_dict(obj, source)
    _refuse_nan(source, state)
    return state


def _import_curve(source: Path, out: Path, state: Mapping[str, torch.Tensor], net: nn.Module, spec: dict,
                  meta: dict) -> Path:
    """A dnn-mode-connectivity ``CurveNet`` state dict as a curve checkpoint
    of ``net``'s architecture (its parameters and buffers matched by position)."""
    from .curves.base import create_curve
    from .curves.fit import save_curve

    bends: dict[int, list[tuple[str, torch.Tensor]]] = {}
    buffers: list[tuple[str, torch.Tensor]] = []
    for name, value in state.items():
        if not name.startswith("net."):
            continue
        match = _BEND.fullmatch(name[4:])
        if match and value.is_floating_point():
            bends.setdefault(int(match.group(2)), []).append((name, value))
        elif not name.endswith("num_batches_tracked"):
            buffers.append((name, value))
    count = len(bends)
    if sorted(bends) != list(range(count)) or count < 2:
        raise UserError(f"{source}: the curve's bends are numbered {sorted(bends)}; a CurveNet numbers them 0 to "
                        f"num_bends - 1, at least 2")
    if "coeff_layer.range" in state and state["coeff_layer.range"].numel() != count:
        raise UserError(f"{source}: its coeff_layer has {state['coeff_layer.range'].numel()} bends, its network "
                        f"{count}")
    params = list(net.named_parameters())
    for i, held in bends.items():
        if len(held) != len(params):
            raise UserError(f"{source}: bend {i} holds {len(held)} parameters, model '{spec['name']}' has "
                            f"{len(params)}: is --model the curve's architecture (with its --model-kwargs)?")
        for (theirs, value), (ours, p) in zip(held, params):
            if value.shape != p.shape:
                raise UserError(f"{source}: {theirs} has shape {tuple(value.shape)}, and the parameter in its place "
                                f"in model '{spec['name']}', {ours}, {tuple(p.shape)}: is --model the curve's "
                                f"architecture?")
    own = [(n, b) for n, b in net.state_dict().items()
           if n not in dict(params) and not n.endswith("num_batches_tracked")]
    if len(own) != len(buffers) or any(v.shape != b.shape for (_, v), (_, b) in zip(buffers, own)):
        raise UserError(f"{source}: its {len(buffers)} buffers (batch-norm statistics) do not fit the "
                        f"{len(own)} of model '{spec['name']}': is --model the curve's architecture?")
    space = ParamSpace.of(net)
    anchors = torch.stack([space.flatten({ours: value for (_, value), (ours, _) in zip(bends[i], params)},
                                         source=str(source)) for i in range(count)])
    template = net.state_dict()
    template.update({ours: value for (_, value), (ours, _) in zip(bends[0], params)})  # the start, as connect's
    template.update({ours: value for (_, value), (ours, _) in zip(buffers, own)})
    net.load_state_dict(template)
    kind = "bezier" if "coeff_layer.binom" in state else "polychain"
    curve = create_curve(kind, space, anchors[0], anchors[-1], bends=count - 2)
    curve.load_anchors(anchors)
    meta = {**meta, "format": f"dnn-mode-connectivity {kind}, num_bends {count}"}
    return save_curve(out, curve, net, spec, meta=meta)

