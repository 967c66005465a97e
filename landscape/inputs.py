"""Checkpoints given on the command line -> a template model, flat weight
vectors, the dataset they were trained on, and their weight decay."""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .brief import brief_repr
from .bn import bn_buffer_names
from .checkpoint import Checkpoint, check_state_dict, load_checkpoint, load_model, require_network, writer_of
from .data import Dataset, as_dataset, data_differs, data_location, described, refuse_data_twice, why_data_differs
from .device import resolve_device
from .errors import UserError, note_once
from .geometry import MIN_TRAJECTORY
from .models import check_spec_fits, check_unsaved, model_options, stored_spec
from .sweep import is_main
from .train import TrainConfig, load_data, same_file
from .weights import ParamSpace

__all__ = ["DATA_FIELDS", "data_settings", "network_of", "check_same_data", "resolve_data", "note_split_leak",
           "refuse_infinite", "refuse_same_weights", "require_architecture", "own_network", "merged_data_settings", "named_model", "Points",
           "load_points", "load_trajectory", "stored_data", "trajectory_files"]

DATA_FIELDS = ("dataset", "data_path", "val_size", "data_seed", "synthetic_shape", "synthetic_classes",
               "synthetic_sizes", "data_normalization")


def data_settings(ckpt: Checkpoint) -> dict[str, Any]:
    """The data settings a checkpoint's run was trained with (empty for foreign checkpoints)."""
    stored = (ckpt.meta or {}).get("train_config") or {}
    return {k: stored[k] for k in DATA_FIELDS if k in stored}


def resolve_data(stored: dict[str, Any] | None, overrides: dict[str, Any] | None,
                 device: torch.device | str = "cpu", source: object = "the checkpoint") -> Dataset:
    """Load the dataset of ``stored`` settings (a run's train_config), with
    ``overrides`` (those not None) taking precedence; digits when neither says."""
    settings = merged_data_settings(stored, overrides)
    if not (overrides or {}).get("data_path"):
        refuse_moved_data(settings.get("dataset"), settings.get("data_path"), source)
    data = load_data(TrainConfig(**settings), resolve_device(device))
    note_split_leak(stored, settings, source)  # after the split itself was accepted
    return data


def refuse_moved_data(dataset: str | None, path: object, source: object) -> None:
    """One line when the files a checkpoint's run read (its stored data path, not one the user gave) are no
    longer there: it names the run and asks for their new place, where the reader would name an option the
    user never gave."""
    if path and _applies("data_path", dataset) and not Path(str(path)).expanduser().exists():
        raise UserError(f"{source} was trained on the {dataset} data in {path}, which is not there any more: give "
                        f"its new place with --data-path (data_path= in Python)")


def asks_for_data(config: object, overrides: dict[str, Any] | None) -> bool:
    """Whether a run's caller chose its data (a config object, or a data
    option not None) rather than inheriting its source checkpoints'."""
    return config is not None or any((overrides or {}).get(k) is not None for k in DATA_FIELDS)


def joined_data_options(data_overrides: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any] | None:
    """The data options given as ``data_overrides={...}`` and as keywords (``dataset="digits"``) together;
    one given both ways is refused."""
    twice = sorted(set(data_overrides or {}) & set(options))
    if twice:
        raise UserError(f"{twice[0]} is given twice, as a keyword and in data_overrides; give it once")
    joined = {**(data_overrides or {}), **options}
    return joined if joined or data_overrides is not None else None


def check_data_options(overrides: dict[str, Any] | None) -> None:
    """One line for a keyword among a call's data options that is none
    (``evaluate_curve(..., grd=21)``, ``data_overrides={"dataset_": ...}``):
    it would be dropped without a word."""
    unknown = sorted(set(overrides or {}) - set(DATA_FIELDS))
    if unknown:
        # the nearest of the calling function's own keywords and the data options: evaluate_curve(pionts=3)
        frame = inspect.currentframe()
        code = frame.f_back.f_code if frame is not None and frame.f_back is not None else None
        own = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount] if code is not None else ()
        close = difflib.get_close_matches(unknown[0], [*own, *DATA_FIELDS], n=1)
        raise UserError(f"unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                        f"{f' (did you mean {close[0]}=?)' if close else ''}: the data options are "
                        f"{', '.join(DATA_FIELDS)}")


def run_data(cfg: TrainConfig, device: torch.device, data: Dataset | None, sources: Sequence[Checkpoint | None],
             config: object, overrides: dict[str, Any]) -> Dataset:
    """The data a run that starts from ``sources`` trains on, on ``device``:
    ``data`` when given, else what ``cfg``'s data settings load, checked
    against what the sources record (:func:`check_sources_data`) unless the
    caller chose them (a ``config`` object, or data ``overrides``)."""
    refuse_data_twice(data, overrides)
    asked = asks_for_data(config, overrides)
    if data is None:
        source = next((ck for ck in sources if ck is not None), None)
        if not asked and source is not None:  # the path is the source's, not the user's
            refuse_moved_data(cfg.dataset, cfg.data_path, source.path)
        data = load_data(cfg, device)
        check_sources_data(sources, data, asked)
    else:
        data = as_dataset(data)
        note_given_data(data, recorded_data(sources))
    return data.to(device)


def check_sources_data(ckpts: Sequence[Checkpoint | None], data: Dataset, asked: bool = False) -> None:
    """:func:`check_recorded_data` for each checkpoint a run starts from, once
    ``data`` was loaded by the settings the run inherited from them; nothing
    when the caller ``asked`` for data of its own (a data option given)."""
    if asked:
        return
    for ck in ckpts:
        if ck is not None:
            check_recorded_data((ck.meta or {}).get("dataset"), data, ck.path)


def check_recorded_data(recorded: dict[str, Any] | None, data: Dataset, source: object) -> None:
    """One line when the data a run's own stored settings load is not what it
    records having been trained on (``recorded``, ``Dataset.describe()`` in
    its checkpoint's meta): data passed from Python (``data=``) is not
    stored with a run, and a file may have changed since."""
    if not isinstance(recorded, dict):
        return  # a foreign checkpoint, or one from before runs recorded their data
    now = data.describe()
    if not data_differs(recorded, now):
        return

    raise UserError(f"{source} was trained on {described(recorded)}, but its stored data settings now give "
                    f"{described(now)}: {why_data_differs(recorded, now)}; pass the same data (data= in Python), or "
                    f"give the data options to choose the data")


def recorded_data(ckpts: Sequence[Checkpoint | None]) -> list[tuple[Any, object]]:
    """(the data each checkpoint records having been trained on, its path), for :func:`note_given_data`."""
    return [((ck.meta or {}).get("dataset"), ck.path) for ck in ckpts if ck is not None]


def note_given_data(data: Dataset, records: Sequence[tuple[Any, object]]) -> None:
    """A note on stderr when ``data`` passed from Python is not what one of
    ``records`` (``Dataset.describe()`` a checkpoint's meta holds, the
    checkpoint; :func:`recorded_data`) says it was trained on (the first that
    differs is named): taken as given (another test set
    is a fair question), but rarely meant. Name, sizes, input shape and
    classes are compared, and the files' fingerprint where the data given has
    one: a copy made in Python (``dataclasses.replace``) has none, and may
    well be the same data."""
    now = data.describe()
    if now.get("fingerprint") is None:
        del now["fingerprint"]  # not compared (data_differs skips a field one record lacks)
    for recorded, source in records:
        if not isinstance(recorded, dict):
            continue  # a foreign checkpoint, or one from before runs recorded their data
        if data_differs(recorded, now):
            note = (f"{source} was trained on {described(recorded)}; the data given is {described(now)} "
                    f"({why_data_differs(recorded, now)})")
            note_once(("given data", note), note)  # each once: ESPRO loads per component
            return


def stored_data(meta: dict[str, Any] | None, spec: dict[str, Any], source: object, overrides: dict[str, Any] | None,
                device: torch.device | str, data: Dataset | None = None,
                wd: float | None = None) -> tuple[Dataset, float]:
    """The data and weight decay to evaluate a checkpoint that holds its own
    network (a curve, swag.pt) with: its run's stored settings (``meta``'s
    train_config) unless ``overrides`` / ``data`` / ``wd`` say otherwise; data
    that does not fit the network ``spec`` is refused naming ``source``."""
    stored = (meta or {}).get("train_config") or {}
    check_data_options(overrides)
    refuse_data_twice(data, overrides)
    if data is None:
        data = resolve_data(stored, overrides, device, source)
        if not asks_for_data(None, overrides):  # the stored settings: they should give the data it was trained on
            check_recorded_data((meta or {}).get("dataset"), data, source)
    else:
        data = as_dataset(data)
        note_given_data(data, [((meta or {}).get("dataset"), source)])
    data = data.to(device)
    check_spec_fits(spec, data.num_classes, data.input_shape, source, f"dataset '{data.name}'")
    return data, float(stored.get("wd", 0.0)) if wd is None else wd


def merged_data_settings(stored: dict[str, Any] | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The data settings a command uses: the stored ones, with ``overrides`` (those not None) taking precedence."""
    settings = {k: v for k, v in (stored or {}).items() if k in DATA_FIELDS}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None and k in DATA_FIELDS})
    return settings


def named_model(config: TrainConfig | None, overrides: dict[str, Any]) -> str | None:
    """The network the caller named: ``model=`` given, or a config object's
    ``model`` when it is not the default (which a config holds unasked)."""
    if overrides.get("model") is not None:
        return overrides["model"]
    if config is not None and config.model != TrainConfig.model:
        return config.model
    return None


def _plain(value: Any) -> Any:
    """A setting as JSON stores it (tuples as lists), for comparing stored with given."""
    return list(value) if isinstance(value, tuple) else value


def refuse_infinite(weights: torch.Tensor, source: object) -> None:
    """One line when a network's flat weights hold inf (NaN was refused on loading;
    inf is let through there, as a foreign buffer may be a -inf mask)."""
    bad = int((~torch.isfinite(weights)).sum())
    if bad:
        raise UserError(f"{source}: {bad} infinite weight{'s' if bad > 1 else ''}; refusing to use it")


def note_split_leak(trained: dict[str, Any] | None, used: dict[str, Any], source: object) -> None:
    """A note on stderr when results are reported on a validation split that is
    not the one the network at ``source`` held out (``--val-size`` given for
    a network trained on the full training split, or another size or data
    seed): some of its "validation" images were its training data."""
    if not trained or "val_size" not in trained:
        return  # a foreign checkpoint records nothing
    size, seed = int(used.get("val_size") or 0), int(used.get("data_seed") or 0)
    dataset = used.get("dataset", "digits")
    if size <= 0 or trained.get("dataset", "digits") != dataset:
        return
    # Other data altogether (another file; synthetic tensors drawn with another shape, size or seed) is no overlap.
    path, used_path = trained.get("data_path"), used.get("data_path")
    if _applies("data_path", dataset) and path != used_path and not same_file(path, used_path):
        return
    if dataset == "synthetic" and (int(trained.get("data_seed") or 0) != seed or any(
            _plain(trained.get(k)) != _plain(used.get(k)) for k in DATA_FIELDS if k.startswith("synthetic_"))):
        return
    if (int(trained.get("val_size") or 0), int(trained.get("data_seed") or 0)) == (size, seed):
        return
    held = (f"held out --val-size {trained['val_size']} with --data-seed {trained.get('data_seed', 0)}"
            if trained.get("val_size") else "was trained on the whole training split")
    if is_main():
        print(f"note: {source} {held}; the validation split here (--val-size {size}, --data-seed {seed}) "
              f"overlaps its training data, so validation metrics are optimistic", file=sys.stderr)


def require_architecture(ckpt: Checkpoint, model: str | None) -> None:
    """A foreign checkpoint records no architecture: the user must name it
    (a default network that happened to fit its keys would be a guess)."""
    if ckpt.model is None and model is None:
        raise UserError(f"{ckpt.path}: foreign checkpoint without architecture; name it with --model")


def own_network(ckpt: Checkpoint, model: str | None, model_kwargs: dict | None = None) -> str | None:
    """The user's ``--model`` for a checkpoint whose network is its own (a
    curve, a simplex): with ``model_kwargs`` it may only describe that network
    (:func:`network_of` refuses otherwise), and then trusts a
    ``package.module:factory`` it names; None leaves it to the checkpoint."""
    if ckpt.model is not None and (model is not None or model_kwargs):
        network_of(ckpt, model, model_kwargs)
    return model


def _repeats(vectors: Sequence[torch.Tensor], paths: Sequence[object]) -> Iterator[tuple[object, object]]:
    """``(first, again)`` for every network (flat weights, in the order of
    ``paths``) whose weights an earlier one holds: the earliest such path, its own."""
    for i in range(len(vectors)):
        first = next((paths[j] for j in range(i) if torch.equal(vectors[i], vectors[j])), None)
        if first is not None:
            yield first, paths[i]


def refuse_same_weights(vectors: Sequence[torch.Tensor], paths: Sequence[object], why: str) -> None:
    """One line when two of the networks (flat weights, in the order of ``paths``)
    are the same point; ``why`` says why the command needs them apart."""
    for first, again in _repeats(vectors, paths):
        raise UserError(f"{first} and {again} hold the same weights: {why}")


def note_same_weights(vectors: Sequence[torch.Tensor], paths: Sequence[object], what: str) -> None:
    """A note on stderr for every network whose weights an earlier one holds:
    allowed (it counts twice), but rarely meant; ``what`` says what it counts
    in. Weights of other shapes are never the same."""
    for first, again in _repeats(vectors, paths):
        print(f"note: {again} holds the same weights as {first}: {what}", file=sys.stderr)


def note_other_buffers(model: nn.Module, ckpts: Sequence[Checkpoint]) -> list[str]:
    """A note on stderr when the checkpoints' buffers other than batch-norm
    statistics differ (a fixed random projection drawn per seed, a mask):
    points between the networks move their parameters alone, so they all
    keep the first network's buffers (the engine's template). Returns the
    names of the buffers that differ (sorted; none: an empty list)."""
    bn = bn_buffer_names(model)
    first = ckpts[0]
    names = [name for name, _ in model.named_buffers() if name not in bn and name in first.state_dict]
    differ = [(name, ck) for name in names for ck in ckpts[1:]
              if name in ck.state_dict and not torch.equal(first.state_dict[name], ck.state_dict[name])]
    shown = sorted({name for name, _ in differ})
    if differ and is_main():
        last = {n.rpartition(".")[2] for n in shown}
        if last <= {"running_mean", "running_var", "num_batches_tracked"}:
            advice = ("statistics of batch-norm layers the network keeps in eval mode while it trains, which no "
                      "point re-estimates")
        elif last <= {"_u", "_v"} and all(".parametrizations." in f".{n}" for n in shown):
            advice = "spectral norm's power-iteration vectors: a point between networks divides by u^T W v with these"
        else:
            advice = "to move one, make it a parameter with requires_grad=False"
        print(f"note: {buffers_named(shown)} differ{'' if len(shown) > 1 else 's'} between {first.path} and "
              f"{differ[0][1].path}: only parameters move between networks, so every point keeps {first.path}'s "
              f"({advice})", file=sys.stderr)
    return shown


def buffers_named(names: Sequence[str]) -> str:
    """'buffer proj', or 'buffers a, b, c, ...' (the first three), for a note."""
    return f"buffer{'s' if len(names) > 1 else ''} {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def network_of(ckpt: Checkpoint, model: str | None = None, model_kwargs: dict | None = None) -> dict[str, Any]:
    """``{"model", "model_kwargs"}`` of the network a landscape checkpoint holds,
    for a run that continues from it (swa, fge, snapshots, connect): the
    network is the checkpoint's, so a ``model`` or ``model_kwargs`` that says
    otherwise would be ignored yet recorded in the run's config; it is refused.
    One exception: a name this process cannot build (registered from Python by
    the process that trained it) may be given its factory by ``model``."""
    kwargs = model_options(ckpt.model)
    name = stored_spec(ckpt.model, model)["name"]  # the user's factory for a name this process cannot build
    if (model is not None and model != name) or any(kwargs.get(k) != v for k, v in (model_kwargs or {}).items()):
        shown = f"--model {model}" if model is not None and model != name else "--model-kwargs"
        described = f"'{name}' network" + (f" ({kwargs})" if kwargs else "")
        fix = (f"--model {name}, its own" if ":" in name and model is not None and model != name
               else "leave it out")  # a factory the checkpoint names is imported only when the user names it
        raise UserError(f"{ckpt.path} holds a {described}; {shown} does not apply to it ({fix})")
    return {"model": name, "model_kwargs": kwargs}


def check_same_data(ckpts: Sequence[Checkpoint], overrides: dict[str, Any] | None = None) -> None:
    """One line when two landscape checkpoints were trained on different data
    (another dataset, validation split or data seed) and the data options not
    given on the command line would silently be the first one's: a validation
    split of one run may be training data of the other."""
    given = {k for k, v in (overrides or {}).items() if v is not None}
    first = ckpts[0]
    defaults = TrainConfig().to_json()

    def settings(ck: Checkpoint) -> dict[str, Any]:  # a setting a run's record leaves out: the default it read
        recorded = (ck.meta or {}).get("train_config")  # none at all (a checkpoint saved from Python): unknown
        return ({k: defaults[k] for k in DATA_FIELDS} if recorded else {}) | data_settings(ck)

    ref = settings(first)
    for ck in ckpts[1:]:
        if ck.model is None or first.model is None:
            continue  # foreign checkpoints record no data
        mine = settings(ck)
        # a run trained on data= records settings that do not say what it read (the default digits): its record
        # of the data does; the same files read and split alike are the same data
        records = [(c.meta or {}).get("dataset") for c in (ck, first)]
        passed = all(isinstance(r, dict) for r in records) and any(
            r.get("name") != settings.get("dataset", "digits") for r, settings in zip(records, (mine, ref)))
        if passed and records[0].get("fingerprint") is not None and not data_differs(*records):
            continue
        dataset = (overrides or {}).get("dataset") or ref.get("dataset")
        for key in DATA_FIELDS:
            if key in given or not _applies(key, dataset):
                continue
            if mine.get(key) != ref.get(key) and not (key == "data_path" and (
                    same_data(dataset, mine.get(key), ref.get(key)) or _same_files_read(ck, first))):
                which = (f"{described(records[0])} and {described(records[1])}" if passed else
                         f"{key.replace('_', '-')} {mine.get(key)} vs {ref.get(key)}")
                raise UserError(f"{ck.path} was trained on other data than {first.path} ({which}); give the data "
                                f"options explicitly to use the same data for both")


def _same_files_read(a: Checkpoint, b: Checkpoint) -> bool:
    """Whether two runs recorded reading files of the same contents (their data's fingerprint): the same data
    in another place, a copy on scratch space."""
    prints = [((ck.meta or {}).get("dataset") or {}).get("fingerprint") for ck in (a, b)]
    return prints[0] is not None and prints[0] == prints[1]


def same_data(dataset: str | None, a: Any, b: Any) -> bool:
    """Whether two ``data_path`` settings read the same files of ``dataset``
    (one written differently, or a dataset's folder and the folder holding it)."""
    if same_file(a, b):
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    where = [data_location(dataset or "", p) for p in (a, b)]
    return where[0] is not None and where[0] == where[1]


def _applies(key: str, dataset: str | None) -> bool:
    """Whether a data setting means anything for ``dataset``: digits and synthetic
    data read no path; only synthetic data has a shape, classes and sizes."""
    if key == "data_path":
        return dataset not in ("digits", "synthetic")
    if key.startswith("synthetic_"):
        return dataset == "synthetic"
    return True


@brief_repr
@dataclass
class Points:
    model: nn.Module  # the architecture, with the first checkpoint's weights and buffers
    vectors: list[torch.Tensor]  # flat parameter vectors (P,), in the order given
    data: Dataset
    wd: float
    labels: list[str]
    checkpoints: list[Checkpoint]  # as read, in the order given (for their own buffers and specs)


def refuse_single_path(value: object, name: str, one: str | None = "[path]", what: str = "checkpoints") -> None:
    """One line for a str or Path given where a list of ``what`` (checkpoints, folders) is expected: its
    characters were read as checkpoints ("r: no such checkpoint file"); ``one`` says how to give one, where one
    will do."""
    if isinstance(value, (str, os.PathLike)):
        raise UserError(f"{name} is a list of {what}, got the single path {os.fspath(value)!r}"
                        + (f" (one: {one})" if one else ""))


def load_points(paths: Sequence[str | Path], *, model: str | None = None, model_kwargs: dict | None = None,
                data_overrides: dict[str, Any] | None = None, device: str | torch.device = "auto",
                data: Dataset | None = None, **data_options: Any) -> Points:
    """Read checkpoints of one architecture (matched by parameter name).

    The first rebuilds the model (a foreign one needs ``model``); every other
    one must fit it, else one line names the first mismatched key. Data and
    weight decay default to what the first was trained with; ``data`` (a
    :class:`~landscape.data.Dataset` made in Python, as the networks were
    trained on with ``data=``) is taken as given, and ``data_overrides`` are
    then not read (one naming another dataset is refused). The data options
    may also be given as keywords (``dataset="digits"``), as
    :func:`~landscape.curves.evaluate_curve` takes them.
    """
    refuse_single_path(paths, "paths")
    if not paths:
        raise UserError("no checkpoints given")
    check_data_options(data_options)
    data_overrides = joined_data_options(data_overrides, data_options)
    device = resolve_device(device)
    check_data_options(data_overrides)
    refuse_data_twice(data, data_overrides)
    ckpts = [require_network(load_checkpoint(p)) for p in paths]
    first = ckpts[0]
    stored = (first.meta or {}).get("train_config") or {}
    if data is not None:
        data = as_dataset(data).to(device)
        note_given_data(data, recorded_data(ckpts))
    else:
        check_same_data(ckpts, data_overrides)
        data = resolve_data(stored, data_overrides, device, first.path)
        check_sources_data(ckpts, data, asked=asks_for_data(None, data_overrides))
        for ck in ckpts[1:]:  # the first was noted on loading
            note_split_leak((ck.meta or {}).get("train_config"), merged_data_settings(stored, data_overrides), ck.path)
    require_architecture(first, model)
    if model is None:
        if model_kwargs:  # the checkpoint's network is built with its own options: others given are refused
            network_of(first, None, model_kwargs)
        check_spec_fits(first.model, data.num_classes, data.input_shape, first.path, f"dataset '{data.name}'")
        net = load_model(first)
    else:  # a foreign checkpoint, or a name this process cannot build: the stored options stand, as on loading one
        recorded = model_options(first.model) if first.model is not None else {}
        net = load_model(first, model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                         **{**recorded, **(model_kwargs or {})})
    name = f"model '{first.model['name']}' of {first.path}" if first.model is not None else f"model '{model}' (--model)"
    for ck in ckpts[1:]:
        check_state_dict(net, ck.state_dict, str(ck.path), name)
    check_unsaved(net, ckpts[1:])  # the first was checked on loading
    note_other_buffers(net, ckpts)
    space = ParamSpace.of(net)
    vectors = [space.flatten(ck.state_dict, source=str(ck.path)).to(device) for ck in ckpts]
    for ck, v in zip(ckpts, vectors):
        refuse_infinite(v, ck.path)
    return Points(model=net.to(device), vectors=vectors, data=data, wd=float(stored.get("wd", 0.0)),
                  labels=_labels(paths), checkpoints=ckpts)


def trajectory_files(paths: Sequence[str | Path]) -> list[Path]:
    """The checkpoints of a training trajectory, in order: a run folder gives
    its ``checkpoint-NNN.pt`` (saved every ``--save-every`` epochs) by
    epoch, then its ``model.pt`` when there is one; a file is itself."""
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)  # a missing file is named when it is read
            continue
        writer = writer_of(path)
        if writer is not None:  # its checkpoints so far would be drawn as the whole run, ending where it is now
            raise UserError(f"{path}: its run is still training (landscape process{f' {writer}' if writer else ''}); "
                            f"draw its trajectory when it has finished, or list the checkpoints written so far")
        saved = sorted(path.glob("checkpoint-*.pt"), key=lambda p: (len(p.stem), p.stem))
        if not saved:
            raise UserError(f"{path} holds no checkpoint-NNN.pt: train with --save-every N to keep a trajectory, "
                            f"or list its checkpoints")
        finished = (path / "model.pt").exists()
        if not finished and (path / "config.json").exists() and is_main():
            print(f"note: {path} has no model.pt: its run stopped before its last epoch (--resume finishes it); "
                  f"the trajectory drawn ends at {saved[-1].name}", file=sys.stderr)
        files += saved + ([path / "model.pt"] if finished else [])
    return files


def load_trajectory(paths: Sequence[str | Path], **options: Any) -> Points:
    """:func:`load_points` of a training trajectory's checkpoints
    (:func:`trajectory_files`). A checkpoint with the weights of the one
    before it (a run's ``model.pt`` after its last ``checkpoint-NNN.pt``)
    is dropped, with a note when it was not a folder's ``model.pt``; the
    checkpoints of one folder must come in the order of the epochs they
    record. ``options`` are :func:`load_points`'."""
    refuse_single_path(paths, "paths", what="checkpoints or run folders")
    files = trajectory_files(paths)
    pts = load_points(files, **options)
    last: dict[Path, tuple[int, Path]] = {}
    for path, ck in zip(files, pts.checkpoints):
        epoch = (ck.meta or {}).get("epoch")
        folder = Path(path).resolve().parent
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            if folder in last and epoch < last[folder][0]:
                raise UserError(f"the trajectory's checkpoints are not in training order: {path} (epoch {epoch}) "
                                f"comes after {last[folder][1]} (epoch {last[folder][0]})")
            last[folder] = (epoch, Path(path))
    keep = [i for i, v in enumerate(pts.vectors) if i == 0 or not torch.equal(v, pts.vectors[i - 1])]
    dropped = [str(files[i]) for i in range(len(files)) if i not in keep and Path(files[i]).name != "model.pt"]
    why = f"left out {', '.join(dropped)}: the same weights as the checkpoint before"
    if len(keep) < MIN_TRAJECTORY:  # one line, which names what was left out
        raise UserError(f"a trajectory's plane needs at least {MIN_TRAJECTORY} checkpoints with distinct weights, "
                        f"got {len(keep)}" + (f" ({why})" if dropped else "")
                        + "; a run keeps more with a smaller --save-every")
    if dropped and is_main():
        print(f"note: {why}", file=sys.stderr)
    return replace(pts, vectors=[pts.vectors[i] for i in keep],
                   labels=_epoch_labels([files[i] for i in keep], [pts.checkpoints[i] for i in keep],
                                        [pts.labels[i] for i in keep]),
                   checkpoints=[pts.checkpoints[i] for i in keep])


def _epoch_labels(files: Sequence[Path], ckpts: Sequence[Checkpoint], names: Sequence[str]) -> list[str]:
    """A trajectory's points named by the epoch they record ("init", "epoch 10"),
    led by their run folder when there are several; a checkpoint that records
    no epoch (another tool's) keeps its file's name."""
    folders = {Path(f).resolve().parent for f in files}
    labels = []
    for f, ck, name in zip(files, ckpts, names):
        epoch = (ck.meta or {}).get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            labels.append(name)
            continue
        label = "init" if epoch == 0 else f"epoch {epoch}"
        labels.append(f"{Path(f).parent.name}: {label}" if len(folders) > 1 else label)
    return labels if len(set(labels)) == len(labels) else list(names)  # told apart, or the files' names


def _label(path: str | Path) -> str:
    """A short name for a checkpoint: its run folder for run/model.pt, else the file stem."""
    p = Path(path)
    return p.parent.name if p.stem in ("model", "last") and p.parent.name else p.stem


def _labels(paths: Sequence[str | Path]) -> list[str]:
    """Short names, told apart where they collide (fge/snapshot-001.pt and
    snap/snapshot-001.pt: folder/stem; the path itself if that collides too)."""
    labels = [_label(p) for p in paths]
    for named in (lambda p: f"{Path(p).parent.name}/{Path(p).stem}", str):
        labels = [named(p) if labels.count(label) > 1 else label for p, label in zip(paths, labels)]
    return labels
