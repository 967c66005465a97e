"""Checkpoints of the papers' code made into landscape's (``landscape import``).

A landscape checkpoint names its network (``{"name", "kwargs"}``) and the
data it was trained on, so every later command reads it without ``--model``
or data options. ``import_checkpoint`` writes one from:

- a curve of dnn-mode-connectivity's code (its ``CurveNet``: ``coeff_layer``
  buffers and per-bend ``net.<module>.<param>_<i>`` parameters) as a curve
  checkpoint. Its curve modules register a layer's weights of every bend,
  then its biases, and its ``import_base_parameters`` maps bend ``i``'s
  parameters onto a plain network's by position. So does this where the
  file keeps the network's order (the names it shares with the model come
  in the model's order): the curve network's own names (VGG's ``fc1`` for
  ``classifier.1``, PreResNet's ``downsample`` for ``downsample.0``) need
  not match. A re-ordered file (re-saved with sorted keys) is matched by
  name and, where named otherwise, by the natural order of the names
  (:func:`_pairing`); every count and shape must agree, and a lost order is
  refused. Its ``num_bends`` counts the ends: ``bends`` here is
  ``num_bends - 2``. Bezier when ``coeff_layer.binom`` is there (its
  Bernstein basis), else a polygonal chain (``coeff_layer.range`` alone).
- swa_gaussian's SWAG moments (its ``SWAG`` module's state dict) as a
  ``swag.pt``, the moments ``swa --swag-rank K`` keeps.
- any network checkpoint landscape reads (a bare state dict, ``model_state``,
  ``state_dict``, with wrapper prefixes), or the state dict under ``key``
  (the swa code's ``swa_state_dict`` beside its ``state_dict``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (_refuse_nan, _refuse_papers_format, check_state_dict, extract_state_dict,
                         is_papers_curve, read_torch_file, refuse_reference_vgg_bn, save_checkpoint, unrun_layers,
                         unwrapped)
from .errors import UserError, check_nonnegative
from .inputs import DATA_FIELDS, check_data_options, merged_data_settings, resolve_data
from .models import create_model, model_spec, refuse_random_unsaved
from .sweep import is_main
from .train import TrainConfig
from .weights import ParamSpace

__all__ = ["import_checkpoint"]

_BEND = re.compile(r"(.+)_(\d+)")


def import_checkpoint(source: str | Path, out: str | Path, *, model: str, model_kwargs: dict | None = None,
                      key: str | None = None, wd: float | None = None, **data_options: Any) -> Path:
    """Write ``out``, a landscape checkpoint of ``source`` (a curve or a
    network of the papers' code, above) built as ``model`` (a registered
    name or ``package.module:factory``, with ``model_kwargs``) for the data
    ``data_options`` name (``dataset``, ``data_path``, ...: the data it was
    trained on, which later commands then use by default, recorded as a
    run here records it, defaults included, so that it counts as the same
    data as runs trained here) and the weight decay ``wd`` it was trained
    with (the train loss's term in later evaluations; none if not given).
    Refuses an ``out`` that exists. Returns ``out``."""
    source, out = Path(source), Path(out)
    check_data_options(data_options)
    if not isinstance(model_kwargs, (dict, type(None))):
        raise UserError(f"model_kwargs must be a dict of the model's options, got a {type(model_kwargs).__name__}")
    if not str(out).strip() or out.exists():
        raise UserError(f"{out}: already exists; choose another --out (import writes a new file)")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {out}: {above} is a file, not a folder")
    if wd is not None:
        check_nonnegative("--wd", wd)
    if data_options.get("dataset") is None:  # what later commands evaluate it on: a default would be a guess
        raise UserError("import records the data the network was trained on: give --dataset (and --data-path, "
                        "--val-size ... as it was trained; dataset= in Python)")
    obj = read_torch_file(source)
    if isinstance(obj, Mapping) and isinstance(obj.get("format"), str) and obj["format"].startswith("landscape/"):
        raise UserError(f"{source}: already a landscape checkpoint ({obj['format']}); every command reads it")
    state = _state(source, obj, key)
    refuse_reference_vgg_bn(source, model, state)
    data = resolve_data({}, data_options, torch.device("cpu"), source)
    spec = model_spec(model, data.num_classes, tuple(data.input_shape), **(model_kwargs or {}))
    def build() -> torch.nn.Module:
        return create_model(model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                            **(model_kwargs or {}))

    with torch.random.fork_rng(devices=[]):  # its first weights are replaced: the caller's stream stays
        net = build()
    refuse_random_unsaved(model, net, build)  # the file holds no such buffer: one drawn here would be stamped in
    settings = merged_data_settings({}, data_options)
    if settings.get("data_path"):  # later commands may run from elsewhere
        settings["data_path"] = str(Path(settings["data_path"]).expanduser().resolve())
    recorded = TrainConfig(**settings).to_json()  # as train records it: a missing val_size is not another split
    settings = {k: recorded[k] for k in DATA_FIELDS} | ({"wd": float(wd)} if wd is not None else {})
    meta = {"imported_from": str(source.resolve()), **({"key": key} if key is not None else {}),
            "dataset": data.describe(), "train_config": settings}
    if is_papers_curve(state):
        return _import_curve(source, out, state, net, spec, meta)
    if any(k.endswith("_sq_mean") for k in state):
        return _import_swag(source, out, state, net, spec, meta)
    _refuse_papers_format(source, state)
    try:
        check_state_dict(net, state, str(source), f"model '{model}'")
    except UserError as names_differ:
        state = _network_by_position(source, state, net, model, names_differ)
    net.load_state_dict(state, strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(out, net, spec, kind="model", meta={**meta, "format": "network"})


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
    if not is_papers_curve(state):
        _, inner = unwrapped(state)  # a CurveNet inside a wrapper (Lightning's model.)
        if is_papers_curve(inner):
            state = inner
    if not is_papers_curve(state) and any(_BEND.fullmatch(k) and k.rsplit("_", 1)[0].endswith(("weight", "bias"))
                                          for k in state):
        raise UserError(f"{source}: holds per-bend weights ('*.weight_<i>') without a CurveNet's 'coeff_layer': save "
                        f"the whole CurveNet's state dict (its 'net' alone does not say the curve's type)")
    _refuse_nan(source, state)
    return state


def _network_by_position(source: Path, state: Mapping[str, torch.Tensor], net: nn.Module, model: str,
                         names_differ: UserError) -> dict[str, torch.Tensor]:
    """A network whose tensors are named otherwise than the model's (the swa code's VGG: ``features.<i>`` for
    ``layer_blocks.<block>.<j>``), read by position as a curve's are (:func:`_pairing`: every shape must agree),
    with a note; ``names_differ`` (the names' mismatch) is raised where the counts differ."""
    counted = [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(counted) or not theirs:
        raise names_differ
    paired = _pairing(source, theirs, counted, model, "tensors")
    values = dict(state)
    first = next(((name, key) for name, key in paired.items() if name != key), None)
    if first is None:  # the names fit after all: what check_state_dict refused is still wrong
        raise names_differ
    if is_main():
        print(f"note: {source}: its tensors are named otherwise than in model '{model}' ({first[1]} for "
              f"{first[0]}, ...): matched by their order in the file, every shape agreeing", file=sys.stderr)
    return {name: values[key] for name, key in paired.items()}


def _import_curve(source: Path, out: Path, state: Mapping[str, torch.Tensor], net: nn.Module, spec: dict,
                  meta: dict) -> Path:
    """A dnn-mode-connectivity ``CurveNet`` state dict as a curve checkpoint
    of ``net``'s architecture (its parameters and buffers matched by
    :func:`_matched`)."""
    from .curves.base import create_curve
    from .curves.fit import save_curve

    bends: dict[int, list[tuple[str, str, torch.Tensor]]] = {}
    buffers: list[tuple[str, str, torch.Tensor]] = []
    for name, value in state.items():
        if not name.startswith("net."):
            continue
        match = _BEND.fullmatch(name[4:])
        if match and value.is_floating_point():
            bends.setdefault(int(match.group(2)), []).append((name, match.group(1), value))
        elif not name.endswith("num_batches_tracked"):
            buffers.append((name, name[4:], value))
    # a *_dnnmc VGG: the layers its code never ran are not held (their statistics are the buffers')
    named = {name: value for held in [*bends.values(), buffers] for _, name, value in held}
    left = set(unrun_layers(net, named, source, "a curve of "))
    bends = {i: [b for b in held if b[1] not in left] for i, held in bends.items()}
    buffers = [b for b in buffers if b[1] not in left]
    count = len(bends)
    if sorted(bends) != list(range(count)) or count < 2:
        raise UserError(f"{source}: the curve's bends are numbered {sorted(bends)}; a CurveNet numbers them 0 to "
                        f"num_bends - 1, at least 2")
    if "coeff_layer.range" in state and state["coeff_layer.range"].numel() != count:
        raise UserError(f"{source}: its coeff_layer has {state['coeff_layer.range'].numel()} bends, its network "
                        f"{count}")
    params = list(net.named_parameters())
    own = _buffers(net)
    anchors_by_name = [_matched(source, bends[i], params, spec["name"], f"bend {i}'s parameters", quiet=i > 0)
                       for i in range(count)]
    held_buffers = _matched(source, buffers, own, spec["name"], "buffers (batch-norm statistics)")
    space = ParamSpace.of(net)
    anchors = torch.stack([space.flatten(a, source=str(source)) for a in anchors_by_name])
    template = net.state_dict()
    template.update(anchors_by_name[0])  # the start, as connect's curves hold it
    template.update(held_buffers)
    net.load_state_dict(template)
    kind = "bezier" if "coeff_layer.binom" in state else "polychain"
    free = count == 2  # a line: its ends may not both be held (nothing would train); nothing trains here anyway
    curve = create_curve(kind, space, anchors[0], anchors[-1], bends=count - 2, fix_start=not free, fix_end=not free)
    curve.load_anchors(anchors)
    meta = {**meta, "format": f"dnn-mode-connectivity {kind}, num_bends {count}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_curve(out, curve, net, spec, meta=meta)


def _matched(source: Path, theirs: list[tuple[str, str, torch.Tensor]], ours: list[tuple[str, torch.Tensor]],
             model: str, what: str, quiet: bool = False) -> dict[str, torch.Tensor]:
    """``ours``' names with the values of ``theirs`` ((key, name, value)) that :func:`_pairing` pairs them with."""
    values = {key: value for key, _, value in theirs}
    return {name: values[key] for name, key in _pairing(source, theirs, ours, model, what, quiet).items()}


def _pairing(source: Path, theirs: list[tuple[str, str, torch.Tensor]], ours: list[tuple[str, torch.Tensor]],
             model: str, what: str, quiet: bool = False) -> dict[str, str]:
    """``ours``' names paired with keys of ``theirs`` ((key, name, value)).

    Where the names ``theirs`` shares with the model come in the model's
    order, the file keeps the network's order: every tensor is paired by
    position, as ``import_base_parameters`` does (VGG's ``fc1`` is
    ``classifier.1``, and a name the model has may be another layer's).
    Where they do not (a file re-saved with sorted keys, or partly
    re-ordered), those names are paired by name and the rest by the natural
    order of their names (``fc2`` before ``fc10``, a weight before its bias),
    with a note. The counts and every shape must agree, and an order that
    is lost (sorted keys, nothing named as the model does) is refused."""
    if len(theirs) != len(ours):
        raise UserError(f"{source}: {what}: {len(theirs)} in the file, {len(ours)} in model '{model}': is --model "
                        f"the architecture it was trained with (and its --model-kwargs)?")
    place = {name: i for i, (name, _) in enumerate(ours)}
    common = [place[name] for _, name, _ in theirs if name in place]
    if all(a < b for a, b in zip(common, common[1:])) and _weights_first([name for _, name, _ in theirs]):
        if _resorted([name for _, name, _ in theirs]):
            raise UserError(f"{source}: its {what} are named otherwise than in model '{model}' and stored in "
                            f"alphabetical order (a file re-saved with sorted keys?), so their order, which "
                            f"would match them, is lost; save the state dict in the order the network gives")
        paired = {name: key for (name, _), (key, _, _) in zip(ours, theirs)}
        reordered = False
    else:
        keys = {name: key for key, name, _ in theirs}
        paired = {name: keys[name] for name, _ in ours if name in keys}
        rest = sorted(((key, name) for key, name, _ in theirs if name not in paired), key=lambda kn: _natural(kn[1]))
        paired.update({name: key for (name, _), (key, _) in zip([o for o in ours if o[0] not in paired], rest)})
        reordered = True
    shapes = {key: value.shape for key, _, value in theirs}
    for name, tensor in ours:
        if shapes[paired[name]] != tensor.shape:
            raise UserError(f"{source}: {paired[name]} has shape {tuple(shapes[paired[name]])}, and the tensor it "
                            f"stands for in model '{model}', {name}, {tuple(tensor.shape)}"
                            + (" (its keys are not in the network's order: matched by name and, where named "
                               "otherwise, by the order of their names)" if reordered else "")
                            + ": is --model the architecture it was trained with?")
    if reordered and not quiet and is_main():
        others = len(ours) - sum(1 for _, name, _ in theirs if name in place)
        print(f"note: {source}: its {what} are not in the network's order (a re-saved file?): matched by name"
              + (f", and the {others} named otherwise by the order of their names" if others else ""),
              file=sys.stderr)
    return paired


def _natural(name: str) -> tuple:
    """A sort key of a tensor's name in the order a network registers it:
    its module path with numbers as numbers, then its weight before its bias."""
    owner, _, leaf = name.rpartition(".")
    path = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|[^\d._]+", owner))
    return path, {"weight": 0, "bias": 1}.get(leaf, 2), leaf


def _buffers(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``net``'s state-dict entries that are no parameter (a tied weight's
    second name is one) and no ``num_batches_tracked``: its batch-norm
    statistics, in order."""
    params = {name for name, _ in net.named_parameters(remove_duplicate=False)}
    return [(n, b) for n, b in net.state_dict().items() if n not in params and not n.endswith("num_batches_tracked")]


def _weights_first(names: list[str]) -> bool:
    """Whether every module in ``names`` (in the file's order) has its
    ``weight`` before its ``bias``, as modules register them: a file that
    keeps the network's order does, whatever its layers are called."""
    seen: dict[str, set[str]] = {}
    for name in names:
        owner, _, leaf = name.rpartition(".")
        if leaf == "bias" and "weight" not in seen.get(owner, set()) and f"{owner}.weight" in names:
            return False
        seen.setdefault(owner, set()).add(leaf)
    return True


def _resorted(names: list[str]) -> bool:
    """Whether tensor names are in alphabetical order where a network's own
    order would not be: ``fc10`` before ``fc2``. (A module's bias before its
    weight, the other sign, :func:`_weights_first` tells.)"""
    return names == sorted(names) != sorted(names, key=_natural)


def _import_swag(source: Path, out: Path, state: Mapping[str, torch.Tensor], net: nn.Module, spec: dict,
                 meta: dict) -> Path:
    """swa_gaussian's SWAG moments (its ``SWAG`` module's state dict: per
    parameter ``base.<module>.<param>_mean``, ``_sq_mean`` and, with its
    covariance, ``_cov_mat_sqrt`` (K, numel), the last K deviations from the
    running mean; ``n_models``; the base network's buffers) as a ``swag.pt``
    of ``net``'s architecture, matched as :func:`_pairing` does."""
    stems = [k[:-len("_sq_mean")] for k in state if k.endswith("_sq_mean")]
    if any(f"{stem}_mean" not in state for stem in stems):
        raise UserError(f"{source}: SWAG moments with a '_sq_mean' but no '_mean' of the same parameter")
    plain = lambda key: key[len("base."):] if key.startswith("base.") else key  # noqa: E731
    params = list(net.named_parameters())
    pairs = _pairing(source, [(f"{stem}_mean", plain(stem), state[f"{stem}_mean"]) for stem in stems], params,
                     spec["name"], "parameters (their '_mean')")
    taken = {f"{stem}{end}" for stem in stems for end in ("_mean", "_sq_mean", "_cov_mat_sqrt")} | {"n_models"}
    buffers = [(k, plain(k), v) for k, v in state.items() if k not in taken and not k.endswith("num_batches_tracked")]
    own = _buffers(net)
    held_buffers = _matched(source, buffers, own, spec["name"], "buffers (batch-norm statistics)")
    n = state.get("n_models")
    averaged = int(n.reshape(-1)[0]) if isinstance(n, torch.Tensor) and n.numel() else 0
    space = ParamSpace.of(net)
    mean = space.flatten({name: state[key] for name, key in pairs.items()}, dtype=torch.float64)
    sq_mean = space.flatten({name: state[key[:-len("_mean")] + "_sq_mean"] for name, key in pairs.items()},
                            dtype=torch.float64)
    covs = [state.get(pairs[name][:-len("_mean")] + "_cov_mat_sqrt") for name in space.names]
    if all(c is None for c in covs):
        deviations = torch.zeros(0, space.numel)
    elif any(c is None for c in covs) or len({c.shape[0] for c in covs}) != 1 or any(
            c.dim() != 2 or c.shape[1] != shape.numel() for c, shape in zip(covs, map(torch.Size, space.shapes))):
        raise UserError(f"{source}: its '_cov_mat_sqrt' entries are not K deviations of every parameter (one K, "
                        f"each its parameter's size)")
    else:
        deviations = torch.cat([c.float() for c in covs], dim=1)
    template = net.state_dict()
    template.update({name: state[key].to(template[name].dtype) for name, key in pairs.items()})
    template.update(held_buffers)
    net.load_state_dict(template)
    swag = {"mean": mean, "sq_mean": sq_mean, "deviations": deviations, "names": list(space.names),
            "averaged": averaged, "rank": int(deviations.shape[0])}
    meta = {**meta, "format": f"swa_gaussian SWAG, {averaged} models, rank {deviations.shape[0]}", "method": "swag",
            "averaged": averaged}
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(out, net, spec, kind="swag", meta=meta, swag=swag)
