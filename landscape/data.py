"""Datasets as device-resident tensors, and the one training augmentation.

Every reader turns its files into float32 NCHW images with values in [0, 1]
and int64 labels; :func:`load_dataset` then optionally carves a validation
split out of train, normalises, and moves everything to the device once, so
training never copies from the host per batch.

Readers: ``digits`` (scikit-learn's bundled 8x8 digits), ``mnist`` and
``fashion-mnist`` (idx files, raw or gzipped), ``cifar10`` and ``cifar100``
(the official python pickles, read through a restricted unpickler), ``npz``
(user arrays) and ``synthetic`` (random data for benchmarks only).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import numbers
import pickle
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .brief import brief_repr
from .device import resolve_device
from .errors import UserError, check_seed, is_out_of_memory, note_once

__all__ = ["DATASETS", "INPUT_NORMALIZATIONS", "Dataset", "as_dataset", "load_dataset", "augment_crop_flip"]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "npz", "synthetic")

# The input normalisations load_dataset takes besides "standard" (each dataset's usual constants, or its training
# split's statistics), as (mean, std) per channel: the papers' code's transforms (dnn-mode-connectivity's
# --transform ResNet and VGG, the swa code's PreResNet/WideResNet and VGG models), for their CIFAR networks.
INPUT_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "resnet": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "vgg": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
}
_NORMALIZATION_NAMES = {"standard": "standard", "resnet": "resnet", "vgg": "vgg", "imagenet": "vgg"}


def check_normalization(value: object) -> str:
    """``value`` (``--data-normalization``) as recorded: ``standard``, a name of
    :data:`INPUT_NORMALIZATIONS` (``imagenet`` is ``vgg``), or ``M,M,M/S,S,S`` (a
    mean and a standard deviation, one value for all channels or one a
    channel), its numbers as Python writes them; one line for anything else."""
    text = str(value).strip().lower().replace(" ", "")
    if text in _NORMALIZATION_NAMES:
        return _NORMALIZATION_NAMES[text]
    mean, std = (tuple(v + 0.0 for v in part) for part in _constants(text, value))  # -0 is 0
    named = next((name for name, constants in INPUT_NORMALIZATIONS.items() if constants == (mean, std)), None)
    if named is not None:  # the same inputs are recorded alike, however they were written
        return named
    mean, std = (part[:1] if len(set(part)) == 1 else part for part in (mean, std))
    return f"{','.join(map(repr, mean))}/{','.join(map(repr, std))}"


def _constants(text: str, given: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) of an explicit ``M,M/S,S`` normalisation."""
    how = (f"--data-normalization must be standard, resnet, vgg (imagenet) or MEAN/STD with one value or one a "
           f"channel each (e.g. 0.5,0.5,0.5/0.25,0.25,0.25), got {given!r}")
    parts = text.split("/")
    if len(parts) != 2:
        raise UserError(how)
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in parts)
    except ValueError:
        raise UserError(how) from None
    # in float32, as the inputs are divided: a std of 1e-300 is 0 there, and every input inf
    top = float(np.finfo(np.float32).max)
    tiny = float(np.finfo(np.float32).tiny)  # below it, 1 / std overflows float32
    if not all(abs(v) <= top for v in mean) or not all(tiny <= v <= top for v in std):
        raise UserError(f"--data-normalization: the mean must be finite and the standard deviation finite and "
                        f"positive, in float32 (about 1e-38 to 3e38), got {given!r}")
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise UserError(f"--data-normalization gives {len(mean)} means and {len(std)} standard deviations, got "
                        f"{given!r}")
    return mean, std


def normalization_constants(normalization: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a checked ``normalization`` names; None for ``standard``."""
    if normalization == "standard":
        return None
    return INPUT_NORMALIZATIONS.get(normalization) or _constants(normalization, normalization)
BUILT_IN: tuple[str, ...] = ("digits", "synthetic")  # they read no files


def refuse_data_path(dataset: str | None, data_path: object) -> None:
    """A data path given for a dataset that reads no files: one line (it used to train on the digits and
    record the path). Called where the user's own options are known; a path inherited from a checkpoint
    trained on files, with another dataset named, is simply not read."""
    if str(dataset).strip().lower() in BUILT_IN and data_path is not None and str(data_path) != "":
        raise UserError(f"dataset {dataset} reads no files, but --data-path {data_path} was given (data_path=): "
                        f"name the files' dataset with --dataset npz, mnist, fashion-mnist, cifar10 or cifar100")


def refuse_data_twice(data: object, overrides: dict | None) -> None:
    """One line when a caller passes ``data=`` and names another dataset
    with ``dataset=``: the data given would be used and the other's settings
    recorded with the run, which later commands would then read as its data.
    The settings of the data given (``load_dataset("npz", path)`` with
    ``dataset="npz", data_path=path``) may be passed with it, to be recorded."""
    named = (overrides or {}).get("dataset")
    if data is not None and named is not None and str(getattr(data, "name", "")).strip().lower() != \
            str(named).strip().lower():  # names are read so (load_dataset)
        raise UserError(f"data= is dataset {getattr(data, 'name', None)!r}, but dataset={named!r} was given too: "
                        f"the run would record {named!r}'s settings for it; give the data one way")


def refuse_given_data_path(cfg, *given: dict | None) -> None:
    """:func:`refuse_data_path` for a run's settings ``cfg`` when the caller gave the path (it is in one of
    ``given``: the overrides, a config's fields): a path inherited from a source checkpoint is not read."""
    if any((g or {}).get("data_path") for g in given):
        refuse_data_path(cfg.dataset, cfg.data_path)


def _non_finite(x: Tensor) -> int:
    """How many values of ``x`` are NaN or infinite, counted in slices of samples (no mask the size of x)."""
    if not x.is_floating_point():
        return 0
    return sum(int((~torch.isfinite(x[i:i + 4096])).sum()) for i in range(0, len(x), 4096))


def as_dataset(data: object) -> "Dataset":
    """``data`` when it is a :class:`Dataset`; else one line saying how to make one (a tuple of tensors,
    a torch DataLoader: the package keeps every split as tensors on one device)."""
    if isinstance(data, Dataset):
        return data
    raise UserError(f"data must be a landscape.data.Dataset, got a {type(data).__name__}: wrap your tensors as "
                    f"landscape.data.Dataset(name=..., x_train=..., y_train=..., x_test=..., y_test=..., "
                    f"num_classes=..., mean=..., std=...), or use landscape.data.load_dataset")


@brief_repr
@dataclass
class Dataset:
    """A classification dataset held as tensors on one device.

    ``x_train`` (N, *input_shape) and ``x_test`` (M, *input_shape) are float32
    and already normalised with ``mean``/``std`` (one value per image channel or
    per feature, or a single value); ``y_train`` (N,) and ``y_test`` (M,) are int64 class ids.
    When ``eval_split == "val"``, ``x_test``/``y_test`` hold a validation set
    carved out of the training split, not the real test set.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    synthetic: bool = False
    eval_split: str = "test"
    # Of the files read (:func:`data_fingerprint`), set by load_dataset; None for synthetic data (its settings
    # define it) and for data made or changed in Python: not an argument, so dataclasses.replace drops it.
    fingerprint: str | None = dataclasses.field(default=None, init=False)
    # The seed that carved a validation split out of the training files (load_dataset's data_seed), else None.
    split_seed: int | None = dataclasses.field(default=None, init=False)
    # The load_dataset normalization that gave mean and std (checked, as recorded); "standard" for data made in Python.
    normalization: str = dataclasses.field(default="standard", init=False)

    def __post_init__(self) -> None:
        # Data made in Python fails here in one line, not at a training step deep inside torch.
        for split, want in (("x_train", torch.float32), ("y_train", torch.int64), ("x_test", torch.float32),
                            ("y_test", torch.int64)):
            value = getattr(self, split)
            if not isinstance(value, Tensor):
                raise UserError(f"Dataset {split} must be a torch tensor ({want}), got a {type(value).__name__}: "
                                f"torch.as_tensor(...) makes one")
            if value.dtype != want:
                raise UserError(f"Dataset {split} must be {want}, got {value.dtype}: .to({want}) converts it")
            if value.requires_grad:  # features from a network outside no_grad: data, not a graph to train through
                setattr(self, split, value.detach())
        for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
            if len(getattr(self, x)) != len(getattr(self, y)):
                raise UserError(f"Dataset {x} holds {len(getattr(self, x))} samples but {y} "
                                f"{len(getattr(self, y))} labels")
        self._check_contents()

    def _check_contents(self) -> None:
        """What training and evaluation take for granted: one sample shape, samples in both splits, (N,) class
        ids below ``num_classes``, finite inputs, a mean and a std of one value or one a channel (feature).
        Each fails in one line naming the dataset."""
        where = f"dataset {self.name!r}"
        if any(getattr(self, k).is_meta for k in ("x_train", "y_train", "x_test", "y_test")):
            raise UserError(f"{where}: its tensors are on the meta device, which holds no values")
        for key in ("x_train", "x_test"):
            if getattr(self, key).dim() < 2:
                raise UserError(f"{where}: {key} has shape {tuple(getattr(self, key).shape)}; expected (N, *shape) "
                                f"samples (.view(-1, 1) for one feature a sample)")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UserError(f"{where}: x_train samples are {tuple(self.x_train.shape[1:])} but x_test samples are "
                            f"{tuple(self.x_test.shape[1:])}; both need one sample shape, (N, *shape)")
        classes = self.num_classes
        if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or not 2 <= classes <= MAX_CLASSES:
            raise UserError(f"{where}: num_classes must be a whole number in 2..{MAX_CLASSES} (a classifier needs "
                            f"two classes), got {classes!r}")
        if self.eval_split not in ("test", "val"):
            raise UserError(f"{where}: eval_split must be 'test' or 'val', got {self.eval_split!r}")
        self.num_classes = classes = int(classes)
        if len(self.y_train) == 0 or len(self.y_test) == 0:
            raise UserError(f"{where}: {len(self.y_train)} training and {len(self.y_test)} test samples; training "
                            f"and evaluation need at least one each")
        for key in ("y_train", "y_test"):
            y = getattr(self, key)
            if y.dim() != 1:
                raise UserError(f"{where}: {key} has shape {tuple(y.shape)}; expected (N,) class ids "
                                f"(.view(-1), or .argmax(1) for one-hot labels)")
            low, high = (int(v) for v in torch.aminmax(y))
            if low < 0 or high >= classes:
                raise UserError(f"{where}: {key} has label {low if low < 0 else high}; "
                                f"labels must be class ids 0..{classes - 1} (num_classes {classes})")
        for key in ("x_train", "x_test"):
            bad = _non_finite(getattr(self, key))
            if bad:
                raise UserError(f"{where}: {key} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
        channels = self.x_train.shape[1]
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                setattr(self, key, value := (float(value),))  # one number for every channel
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, numbers.Real) for v in value):
                raise UserError(f"{where}: {key} must be a number or a tuple of numbers, got {value!r}")
            if self.x_train.dim() == 4 and len(value) not in (1, channels):  # images: augmentation pads with it
                raise UserError(f"{where}: {key} has {len(value)} values; expected 1 or one for each of the "
                                f"{channels} channels")
            if not all(math.isfinite(v) and (key == "mean" or v > 0) for v in value):
                raise UserError(f"{where}: {key} must be {'finite' if key == 'mean' else 'finite and positive'}, "
                                f"got {tuple(value)!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (3, 32, 32) or (D,)."""
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> Dataset:
        """A new Dataset with every tensor on ``device`` (this one is unchanged)."""
        device = resolve_device(device)
        moved = dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )
        for f in dataclasses.fields(self):  # the same data: what load_dataset recorded of it (not arguments)
            if not f.init:
                setattr(moved, f.name, getattr(self, f.name))
        return moved

    def describe(self) -> dict:
        """A JSON-able summary for result files and logs."""
        return {
            "name": self.name,
            "synthetic": self.synthetic,
            "eval_split": self.eval_split,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "augment": self.augment,
            "fingerprint": self.fingerprint,
            # only for a validation split, so that other records (and the request keys holding them) stay as they were
            **({"split_seed": self.split_seed} if self.split_seed is not None else {}),
            **({"normalization": self.normalization} if self.normalization != "standard" else {}),
        }

    def train_batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool | None = None,
        *, shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One shuffled epoch of (x (B, *input_shape), y (B,)) training batches.

        The permutation and the augmentation draw from ``generator``, which
        must live on the data's device (None: torch's global RNG), so an epoch
        is reproducible from the generator's seed. ``augment`` None follows
        ``self.augment``. A last partial batch is kept unless it holds a single
        sample, which batch norm cannot train on.

        ``shard=(rank, world)`` yields rank's slice of every batch (for
        DistributedDataParallel): all ranks draw the same permutation and
        augmentation from equally seeded generators, and
        ``torch.tensor_split`` cuts each global batch of ``batch_size`` into
        ``world`` contiguous slices, so the ranks' slices of a step are
        disjoint and together are exactly the one-process batch (sizes differ
        by at most one). A last partial batch is kept only if every slice gets
        two samples.
        """
        _check_batch_size(batch_size)
        rank, world = shard
        if not 0 <= rank < world:
            raise UserError(f"bad shard {shard!r}: expected (rank, world) with 0 <= rank < world")
        augment = self.augment if augment is None else augment
        if augment and self.x_train.dim() != 4:
            raise UserError(f"augmentation needs (N, C, H, W) images; {self.name} has input shape {self.input_shape}")
        if generator is not None and generator.device.type != self.device.type:
            raise UserError(
                f"the batch generator is on {generator.device} but the data is on {self.device}; "
                f"create it with torch.Generator(device=...) on the data's device"
            )
        fill = self._black() if augment else None
        n = len(self.y_train)
        order = torch.randperm(n, generator=generator, device=self.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < min(2, batch_size) * world:  # only a short last batch can be this small
                break
            q, r = divmod(len(idx), world)  # torch.tensor_split's cut: the first r slices get one more
            lo = rank * q + min(rank, r)
            mine = slice(lo, lo + q + (rank < r))
            if augment:  # augment the whole batch, so the generator's draws match one process's
                x = augment_crop_flip(self.x_train[idx], generator, fill=fill)[mine]
            else:
                x = self.x_train[idx[mine]]
            yield x, self.y_train[idx[mine]]

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Every sample of ``split`` ("train" or "test") in order, unaugmented.

        For evaluation and batch-norm re-estimation. The evaluation split is
        also reachable by its own name (``self.eval_split``, e.g. "val").
        """
        _check_batch_size(batch_size)
        if split == "train":
            x, y = self.x_train, self.y_train
        elif split in ("test", self.eval_split):
            x, y = self.x_test, self.y_test
        else:
            raise UserError(f"unknown split {split!r}; choose train or test")
        for start in range(0, len(y), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]

    def statistics_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The training split in order, unaugmented, as :meth:`batches` gives
        it, for batch-norm statistics: a last batch of a single sample is
        joined to the one before, since batch norm cannot normalise one sample
        by itself (``BatchNorm1d`` refuses it)."""
        _check_batch_size(batch_size)
        n = len(self.y_train)
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        for start, stop in zip(starts, starts[1:] + [n]):
            yield self.x_train[start:stop], self.y_train[start:stop]

    def _black(self) -> Tensor:
        """Normalised value of a black pixel per channel, shape (C,)."""
        channels = self.x_train.shape[1]
        black = [-m / s for m, s in zip(self.mean, self.std)]
        fill = torch.tensor(black, dtype=self.x_train.dtype, device=self.device)
        return fill.expand(channels) if len(black) == 1 else fill


_IDENTITY = ("name", "n_train", "n_test", "input_shape", "num_classes", "fingerprint", "split_seed")


def data_differs(recorded: dict, now: dict) -> list[str]:
    """The fields in which two :meth:`Dataset.describe` records differ (none:
    the same data): name, sizes, input shape, class count, or the
    fingerprint of the files read (None for data made in Python, which so
    differs from any files'). A field one record lacks is not compared: records
    from before fingerprints have none."""
    differ = [k for k in _IDENTITY if k in recorded and k in now and recorded[k] != now[k]]  # shapes: lists in both
    # a record without one is of the standard normalisation (the only one before records named it)
    if recorded.get("normalization", "standard") != now.get("normalization", "standard"):
        differ.append("normalization")
    return differ


def described(d: dict) -> str:
    """A :meth:`Dataset.describe` record in a few words, for messages."""
    held = "validation" if d.get("eval_split") == "val" else "test"
    fingerprint = f", files {d['fingerprint']}" if d.get("fingerprint") else ""
    norm = f", normalization {d['normalization']}" if d.get("normalization", "standard") != "standard" else ""
    shape = f", input {tuple(d['input_shape'])}" if d.get("input_shape") else ""  # a summary's record may lack them
    classes = f", {d['num_classes']} classes" if d.get("num_classes") is not None else ""
    return f"'{d.get('name')}' ({d.get('n_train')} train / {d.get('n_test')} {held}{shape}{classes}{fingerprint}{norm})"


def why_data_differs(recorded: dict, now: dict) -> str:
    """What two records that :func:`data_differs` tells apart most likely mean."""
    fields = data_differs(recorded, now)
    if "fingerprint" in recorded and recorded["fingerprint"] is None and now.get("fingerprint") is not None:
        return "the first was passed from Python (or changed there), and a run does not store such data"
    if fields == ["fingerprint"]:
        return "the files' contents changed"
    return f"they differ in {', '.join(f.replace('_', ' ') for f in fields)}"


def data_fingerprint(*tensors: Tensor) -> str:
    """8 hex digits: the CRC-32 of the tensors' dtypes, shapes and bytes (the
    readers' output, before any split or normalisation, so the same files give
    the same fingerprint on any machine). A check that the data did not change
    between a run and its resume or evaluation, not a secure hash; 0.3 s for
    CIFAR-10's 50,000 float32 images."""
    crc = 0
    for t in tensors:
        t = t.detach().cpu().contiguous()
        crc = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")


def augment_crop_flip(x: Tensor, generator: torch.Generator | None, fill: Tensor | None = None, padding: int = 4) -> Tensor:
    """Random-crop-with-padding plus horizontal flip, per sample, vectorised.

    x: (B, C, H, W). Each sample is padded by ``padding`` pixels filled with
    ``fill`` ((C,) per-channel value; default 0), cropped back to H x W at a
    uniformly random offset, and mirrored left-right with probability 1/2.
    All draws come from ``generator`` on x's device (None: global RNG).
    Returns a new (B, C, H, W) tensor; x is not modified.
    """
    if x.dim() != 4:
        raise UserError(f"augment_crop_flip needs (B, C, H, W) images, got shape {tuple(x.shape)}")
    if padding < 0:
        raise UserError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    p = padding
    dev = x.device
    if p > 0:
        padded = x.new_empty(b, c, h + 2 * p, w + 2 * p)
        if fill is None:
            padded.zero_()
        else:
            padded.copy_(fill.to(device=dev, dtype=x.dtype).reshape(1, c, 1, 1).expand_as(padded))
        padded[:, :, p : p + h, p : p + w] = x
    else:
        padded = x
    top = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (b,), generator=generator, device=dev).bool()
    rows = top[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = left[:, None] + torch.arange(w, device=dev)  # (B, W)
    # Flipping the crop is reading its columns right to left.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Two gathers (rows, then columns) select each sample's own window.
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))  # (B, C, H, W+2p)
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)


class _Raw(NamedTuple):
    """A reader's output: CPU tensors, x float32 in [0, 1] (npz: as stored)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None  # None: use the training split's statistics
    std: tuple[float, ...] | None = None
    augment: bool = False
    # (key, text) notes that hold where the inputs reach the network as stored (--data-normalization other
    # than standard: token ids); under standard normalisation ids would not survive anyway
    id_notes: tuple[tuple[tuple[str, str], str], ...] = ()


def load_dataset(
    name: str,
    data_path: str | None = None,
    *,
    val_size: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    synthetic_shape: Sequence[int] = (3, 32, 32),
    synthetic_classes: int = 10,
    synthetic_sizes: Sequence[int] = (5000, 1000),
    normalization: str = "standard",
    data_seed: int | None = None,
    data_normalization: str | None = None,
) -> Dataset:
    """Read dataset ``name`` (one of :data:`DATASETS`) onto ``device``.

    ``data_path`` is the folder (or, for ``npz``, the file) holding the data;
    ``digits`` and ``synthetic`` need none. ``val_size > 0`` moves that many
    training samples, chosen by a permutation seeded with ``seed``, into
    ``x_test``/``y_test`` and sets ``eval_split="val"``. ``seed`` also seeds
    the ``synthetic`` generator; the ``digits`` train/test split is fixed.
    ``normalization``: ``standard`` (MNIST's and CIFAR's usual constants;
    other data by its training split's mean and standard deviation),
    ``resnet`` or ``vgg`` (the papers' code's CIFAR constants,
    :data:`INPUT_NORMALIZATIONS`), or ``"M,M,M/S,S,S"``.
    ``data_seed`` and ``data_normalization`` are ``seed`` and
    ``normalization`` as a run's settings (``config.json``) and ``train()``
    spell them.
    Running out of memory here is marked as such (:data:`READING_DATA`), for
    the advice the command line gives.
    """
    if data_seed is not None:
        if seed != 0 and seed != data_seed:
            raise UserError(f"seed={seed} and data_seed={data_seed} are one setting; give one")
        seed = data_seed
    if data_normalization is not None:
        if normalization != "standard" and normalization != data_normalization:
            raise UserError(f"normalization={normalization!r} and data_normalization={data_normalization!r} are one "
                            f"setting; give one")
        normalization = data_normalization
    seed = check_seed(seed, "--data-seed")
    normalization = check_normalization(normalization)
    try:
        return _load_dataset(name, data_path, val_size, seed, device, synthetic_shape, synthetic_classes,
                             synthetic_sizes, normalization)
    except (MemoryError, RuntimeError) as e:
        if is_out_of_memory(e):
            setattr(e, READING_DATA, True)
        raise


# The attribute load_dataset sets on an out-of-memory error it lets through: a batch size would change nothing.
READING_DATA = "landscape_reading_data"


def _load_dataset(name, data_path, val_size, seed, device, synthetic_shape, synthetic_classes,
                  synthetic_sizes, normalization="standard") -> Dataset:
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    device = resolve_device(device)
    if key == "digits":
        raw = _read_digits()
    elif key == "synthetic":
        raw = _make_synthetic(synthetic_shape, synthetic_classes, synthetic_sizes, seed)
    else:
        path = _data_path(key, data_path)
        if key in ("mnist", "fashion-mnist"):
            raw = _read_mnist(key, path)
        elif key in ("cifar10", "cifar100"):
            raw = _read_cifar(key, path)
        else:
            raw = _read_npz(path)
            if normalization != "standard":
                for note_key, text in raw.id_notes:
                    note_once(note_key, text)
        return _assemble(key, raw, val_size, seed, device, f" in {path}", normalization)
    return _assemble(key, raw, val_size, seed, device, normalization=normalization)


def _data_path(name: str, data_path: str | None) -> Path:
    if data_path is None or str(data_path) == "":
        what = "an .npz file with x_train, y_train, x_test, y_test" if name == "npz" else "the folder holding its files"
        raise UserError(f"dataset {name} needs --data-path (data_path=...) pointing at {what}")
    path = Path(data_path).expanduser()
    if not path.exists():
        raise UserError(f"--data-path {path} does not exist")
    return path


MAX_CLASSES = 100_000  # labels are class ids; a larger one is a mistake, not a class


def _assemble(name: str, raw: _Raw, val_size: int, seed: int, device: torch.device, where: str = "",
              normalization: str = "standard") -> Dataset:
    """The Dataset of a reader's output: the validation split carved out, the
    inputs normalised (by ``normalization``, checked), on ``device``;
    ``where`` (" in PATH") names the files in messages."""
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    fingerprint = None if name == "synthetic" else data_fingerprint(x_train, y_train, x_test, y_test)
    eval_split = "test"
    if val_size:
        n = len(y_train)
        if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 < val_size <= n - 2:
            raise UserError(f"--val-size must be an integer in 0..{max(n - 2, 0)} (the {name} training "
                            f"split{where} has {n} samples, and 2 must remain to train on), got {val_size!r}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val_size = int(val_size)
        val, keep = order[:val_size], order[val_size:].sort().values
        x_test, y_test = x_train[val], y_train[val]
        classes = set(y_train.tolist())
        x_train, y_train = x_train[keep], y_train[keep]
        lost = sorted(classes - set(y_train.tolist()))
        if lost:
            raise UserError(f"--val-size {val_size} leaves the {name} training split{where} without class"
                            f"{'es' if len(lost) > 1 else ''} {_some(lost)}: a class the network would never be "
                            f"trained on; choose a smaller --val-size")
        eval_split = "val"
    if len(y_train) < 2:
        raise UserError(f"the {name} training split{where} has {len(y_train)} sample{'s' if len(y_train) != 1 else ''}"
                        f"{' after --val-size' if eval_split == 'val' else ''}; at least 2 are needed")
    if len(y_test) == 0:
        raise UserError(f"the {name} test split{where} is empty; evaluation needs at least one test sample")
    constants = normalization_constants(normalization)
    if constants is not None:
        mean, std = _fitting(constants, x_train, normalization, name, where)
    else:
        mean, std = (raw.mean, raw.std) if raw.mean is not None else _statistics(x_train)
    x_train, x_test = (_normalise(x.to(device), mean, std) for x in (x_train, x_test))  # the reader's, in place
    data = Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train.to(device),
        x_test=x_test,
        y_test=y_test.to(device),
        num_classes=raw.num_classes,
        mean=mean,
        std=std,
        augment=raw.augment,
        synthetic=name == "synthetic",
        eval_split=eval_split,
    )
    data.fingerprint = fingerprint
    data.split_seed = int(seed) if eval_split == "val" else None
    data.normalization = normalization
    return data


def _fitting(constants: tuple[tuple[float, ...], tuple[float, ...]], x: Tensor, normalization: str, name: str,
             where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``constants`` (mean, std) for inputs like ``x`` (N, C, H, W) or (N, D): one value for all channels
    (features) or one a channel, a single value repeated to the other's length; one line otherwise."""
    channels = x.shape[1] if x.dim() in (2, 3, 4) else 1  # other shapes: one value for all, as their statistics
    mean, std = constants
    if any(len(v) not in (1, channels) for v in constants):
        kind = ("channel" if x.dim() in (3, 4) else "feature") + ("s" if channels > 1 else "")
        what = (f"has {channels} {kind}: give --data-normalization with one value or one for each"
                if x.dim() in (2, 3, 4) else "holds neither images nor feature vectors: give --data-normalization "
                                          "with one value")
        raise UserError(f"--data-normalization {normalization} (given, or recorded with the run) has "
                        f"{max(map(len, constants))} values, but the {name} data{where} {what}")
    width = max(len(mean), len(std))
    return tuple(mean * width if len(mean) == 1 else mean), tuple(std * width if len(std) == 1 else std)


# Sets up to this many values get their statistics in one float64 pass (bit for bit as before slices); larger
# ones in slices of samples of about this many values (at least one sample).
STATISTICS_WHOLE = 1 << 24
STATISTICS_SLICE = 1 << 22


def _statistics(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of (N, C, H, W) images and (N, C, L) signals, per-feature of (N, D)
    feature vectors (standardised column by column: features on other scales
    would otherwise be drowned by the largest); a constant channel or feature
    gets std 1 so normalising never divides by 0."""
    dims = {4: (0, 2, 3), 3: (0, 2), 2: (0,)}.get(x.dim(), tuple(range(x.dim())))
    if x.numel() <= STATISTICS_WHOLE:
        std, mean = torch.std_mean(x.double(), dim=dims, correction=0)  # float64: sums over millions of pixels
    else:  # in slices of samples, each in float64 (not a float64 copy of the set): the mean, then the deviations
        keep = [d for d in range(x.dim()) if d not in dims]
        count = x.numel() // math.prod(x.shape[d] for d in keep)
        rows = max(1, STATISTICS_SLICE // max(1, x[0].numel()))
        mean = sum(part.double().sum(dim=dims) for part in x.split(rows)) / count
        centre = mean.reshape([x.shape[d] if d in keep else 1 for d in range(x.dim())])
        std = (sum((part.double() - centre).square().sum(dim=dims) for part in x.split(rows)) / count).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.reshape(-1).tolist()), tuple(std.reshape(-1).tolist())


def _normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``x`` normalised in place (a reader's own tensor, used for nothing else: no second copy of the set)."""
    shape = {4: (1, -1, 1, 1), 3: (1, -1, 1)}.get(x.dim(), (-1,)) if len(mean) > 1 else (-1,)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return x.sub_(m).div_(s)


# --- digits -------------------------------------------------------------------


def _read_digits() -> _Raw:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # pixel values 0..16
    y = bunch.target.astype(np.int64)
    # A fixed split, independent of the run's seed, so every run sees the same test set.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    return _Raw(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)), num_classes=10)


# --- synthetic ----------------------------------------------------------------


def _make_synthetic(shape: Sequence[int], classes: int, sizes: Sequence[int], seed: int) -> _Raw:
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise UserError(f"synthetic shape must be positive integers, e.g. 3 32 32; got {shape}")
    if classes < 2:
        raise UserError(f"synthetic classes must be >= 2, got {classes}")
    if len(sizes) != 2 or any(int(s) < 1 for s in sizes):
        raise UserError(f"synthetic sizes must be two positive integers (n_train, n_test), got {tuple(sizes)}")
    gen = torch.Generator().manual_seed(seed)
    # A per-class pattern under unit noise: learnable, but not in one step.
    patterns = 0.3 * torch.randn((classes, *shape), generator=gen)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, classes, (n,), generator=gen)
        return torch.randn((n, *shape), generator=gen) + patterns[y], y

    x_tr, y_tr = draw(int(sizes[0]))
    x_te, y_te = draw(int(sizes[1]))
    channels = shape[0] if len(shape) == 3 else 1
    return _Raw(x_tr, y_tr, x_te, y_te, classes, (0.0,) * channels, (1.0,) * channels)


# --- MNIST / Fashion-MNIST (idx files) ------------------------------------------

_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_CONSTANTS = {"mnist": ((0.1307,), (0.3081,), "MNIST"), "fashion-mnist": ((0.2860,), (0.3530,), "FashionMNIST")}


def _read_mnist(name: str, root: Path) -> _Raw:
    mean, std, folder = _MNIST_CONSTANTS[name]
    files = _find_idx_files(root, folder)
    train_x, train_y, test_x, test_y = (_read_idx(f, 3 if "images" in f.name else 1) for f in files)
    for images, labels, fi, fl in ((train_x, train_y, files[0], files[1]), (test_x, test_y, files[2], files[3])):
        if len(images) != len(labels):
            raise UserError(f"{fi} holds {len(images)} images but {fl} holds {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise UserError(f"{fl}: label {labels.max()} out of range; expected 0..9")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{files[0]} images are {train_x.shape[1:]} but {files[2]} images are {test_x.shape[1:]}")

    def images(a: np.ndarray) -> Tensor:
        x = a.astype(np.float32)
        x /= 255.0  # in place: no second copy of the set
        return torch.from_numpy(x[:, None])  # (N, 1, H, W)

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return _Raw(images(train_x), labels(train_y), images(test_x), labels(test_y), 10, mean, std)


def data_location(name: str, data_path: str | None) -> Path | None:
    """The folder (or, for npz, the file) the reader of dataset ``name``
    reads under ``data_path``: ``root`` and ``root/cifar-10-batches-py`` are
    one CIFAR-10, ``root`` and ``root/raw`` one MNIST. None when it cannot
    be found (the reader's own error says why)."""
    if data_path is None or name not in DATASETS or not Path(data_path).expanduser().exists():
        return None
    root = Path(data_path).expanduser()
    try:
        if name in _CIFAR:
            folder = _CIFAR[name][0]
            return (root / folder if (root / folder).is_dir() else root).resolve()
        if name in _MNIST_CONSTANTS:
            return _find_idx_files(root, _MNIST_CONSTANTS[name][2])[0].parent.resolve()
    except UserError:
        return None
    return root.resolve()


def _need_folder(root: Path, what: str) -> None:
    """A --data-path naming a file where a folder is read (an archive, one of the files)."""
    if root.is_file():
        raise UserError(f"--data-path {root} is a file; give {what}")


def _find_idx_files(root: Path, folder: str) -> list[Path]:
    """The four idx files, all from the first candidate folder holding any."""
    _need_folder(root, "the folder that holds the four idx files (train-images-idx3-ubyte[.gz], ...)")
    candidates = [root, root / "raw", root / folder / "raw"]
    for d in candidates:
        found = {stem: _first_existing(d / stem, d / f"{stem}.gz") for stem in _IDX_STEMS}
        if any(found.values()):
            missing = [f"{stem}[.gz]" + (" (a folder of that name is there, not the file: some archives unpack the "
                                         "file into a folder named as it; move the file out)"
                                         if (d / stem).is_dir() or (d / f"{stem}.gz").is_dir() else "")
                       for stem, f in found.items() if f is None]
            if missing:
                raise UserError(f"{d}: idx files incomplete, missing {', '.join(missing)}")
            return [found[stem] for stem in _IDX_STEMS]
    where = ", ".join(str(d) for d in candidates)
    raise UserError(f"no {folder} files in {where}: expected {', '.join(s + '[.gz]' for s in _IDX_STEMS)}")


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


# DEFLATE's largest ratio is about 1032:1: a .gz whose header promises more than this many bytes for each of its
# own cannot hold them (refused as truncated before a buffer of the promised size is made).
GZIP_MAX_RATIO = 1100


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes: magic 00 00 08 <ndim>, big-endian int32 sizes, data. Read into one
    buffer of the size its header gives, no further than that and one byte more: a gzipped one is
    decompressed as it is read (a small .gz can hold gigabytes), and a header promising more than the file
    can hold is refused before the buffer is made."""
    gz = path.suffix == ".gz"
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                raise UserError(f"{path}: not an idx file; expected magic bytes 00 00 08 {ndim:02x}, got "
                                f"{head[:4].hex(' ') or 'nothing'}")
            if head[2] != 0x08:
                raise UserError(f"{path}: idx type code 0x{head[2]:02x}; expected 0x08 (unsigned byte)")
            if head[3] != ndim:
                raise UserError(f"{path}: idx file has {head[3]} dimensions; expected {ndim}")
            sizes = f.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise UserError(f"{path}: truncated idx header ({4 + len(sizes)} bytes, need {4 + 4 * ndim})")
            dims = struct.unpack(f">{ndim}i", sizes)
            if any(d < 0 for d in dims):
                raise UserError(f"{path}: negative size in idx header {dims}")
            want = math.prod(dims)
            if not gz:  # the file's size says it all before it is read
                have = size - 4 - 4 * ndim
                if have == want:
                    data = np.empty(want, dtype=np.uint8)
                    have = _read_into(f, memoryview(data))
            elif want > GZIP_MAX_RATIO * size:
                have = None  # more than a .gz of this size can hold
            else:  # not filled in advance: memory is taken as the data comes (a lying header costs nothing)
                data = np.empty(want + 1, dtype=np.uint8)
                have = _read_into(f, memoryview(data))
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut .gz is an EOFError
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if have != want:
        kind = "truncated" if have is None or have < want else "has trailing bytes"
        holds = ("too few bytes to decompress to them" if have is None else
                 f"more than {want}" if gz and have > want else f"{have}")
        raise UserError(f"{path}: {kind}; header promises {want} data bytes for shape {dims}, file holds {holds}")
    return data[:want].reshape(dims)


def _read_into(f, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``f`` as far as it goes; how many bytes it read."""
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:done + (1 << 24)])
        if not n:
            break
        done += n
    return done


# --- CIFAR (python pickles, restricted) -------------------------------------------

_CIFAR = {
    # name: (folder, train files, test files, label key, mean, std, classes)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}


def _safe_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name, resolved to real numpy objects.

    Files written under numpy 1 name ``numpy.core.*``; numpy 2 moved those to
    ``numpy._core.*``, so both spellings map to the current module's objects.
    """
    import _codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2 without the _core alias
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
        # How Python 3 protocol-2 pickles store non-empty bytes: _codecs.encode(text, "latin1").
        if not isinstance(text, str) or encoding != "latin1":
            raise pickle.UnpicklingError("_codecs.encode is allowed only as latin1 bytes")
        return _codecs.encode(text, "latin1")

    def empty_bytes(*args: object) -> bytes:
        # How they store b'': bytes() with no arguments (bytes(n) could allocate any amount).
        if args:
            raise pickle.UnpicklingError("bytes(...) is allowed only without arguments")
        return b""

    class NdarrayName:
        """Stands for numpy.ndarray, which a pickle names only as _reconstruct's first argument: called itself,
        ndarray(shape) would hand out memory of any size, uninitialised."""

        def __init__(self, *args: object) -> None:
            raise pickle.UnpicklingError("numpy.ndarray is allowed only as numpy pickles an array")

    def reconstruct(cls: object, shape: object, code: object) -> np.ndarray:
        # How an array is pickled: _reconstruct(ndarray, (0,), b'b'), an empty array its state then fills.
        if cls is not NdarrayName or shape != (0,):
            raise pickle.UnpicklingError("_reconstruct is allowed only as numpy pickles an array")
        return multiarray._reconstruct(np.ndarray, (0,), code)

    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): NdarrayName,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): latin1_bytes,
        ("__builtin__", "bytes"): empty_bytes,  # the name as written; find_class sees it before fix_imports
        ("builtins", "bytes"): empty_bytes,
    }
    for pkg in ("numpy.core", "numpy._core"):
        table[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts and strings; refuses every other global,
    since a pickle that names e.g. ``os.system`` runs it on load."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2
        self._path = path
        self._allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> object:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UserError(
                f"{self._path}: refusing to unpickle {module}.{name}; CIFAR batches hold only numpy arrays, lists and strings"
            )
        return obj


def _read_cifar(name: str, root: Path) -> _Raw:
    folder, train_files, test_files, label_key, mean, std, classes = _CIFAR[name]
    _need_folder(root, f"the {folder} folder (or the folder that holds it), extracted from the official archive")
    base = root / folder if (root / folder).is_dir() else root
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise UserError(f"no {name} batches in {root}: missing {', '.join(missing)} (expected {folder}/ or its contents)")

    def split(files: list[str]) -> tuple[Tensor, Tensor]:
        parts = [_read_cifar_batch(base / f, label_key, classes) for f in files]
        data = np.concatenate([d for d, _ in parts])  # uint8 until here: a quarter of the memory
        x = data.reshape(-1, 3, 32, 32).astype(np.float32)  # rows are channel-major RGB
        x /= 255.0  # in place: no second copy of the set
        return torch.from_numpy(x), torch.from_numpy(np.concatenate([lab for _, lab in parts]))

    x_tr, y_tr = split(train_files)
    x_te, y_te = split(test_files)
    return _Raw(x_tr, y_tr, x_te, y_te, classes, mean, std, augment=True)


def _read_cifar_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(data (n, 3072) uint8, labels (n,) int64) from one batch file."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # a corrupt pickle can fail in many ways; all mean "not a CIFAR batch"
        raise UserError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(batch).__name__}")

    def entry(key: str) -> object:
        for k in (key.encode(), key):  # Python 2 str keys arrive as bytes
            if k in batch:
                return batch[k]
        keys = sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in batch)
        raise UserError(f"{path}: no {key!r} entry; its keys are {', '.join(keys) or 'none'}")

    data, labels = entry("data"), entry(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' is a {what}; expected a uint8 array of shape (n, 3072)")
    raw = np.asarray(labels)  # as stored: the official files hold a list of ints
    if raw.dtype == bool or not (np.issubdtype(raw.dtype, np.integer) or raw.size == 0):
        # a float 0.7 would be truncated to class 0, a string "3" parsed: neither is a class id
        raise UserError(f"{path}: {label_key!r} is not a list of integers ({raw.dtype} values)")
    labels = raw.astype(np.int64)
    if labels.shape != (len(data),):
        raise UserError(f"{path}: {len(data)} images but {label_key!r} has shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"{path}: labels must lie in 0..{classes - 1}, found {labels.min()}..{labels.max()}")
    return data, labels


# --- npz ----------------------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> _Raw:
    if not path.is_file():
        raise UserError(f"--data-path {path} is not a file; npz expects an .npz file with {', '.join(_NPZ_KEYS)}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):  # np.load would call anything else a pickle
        raise UserError(f"{path}: not an .npz file (it does not start as a zip archive does)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # a broken zip, not numpy, or pickled: one message for all
        raise UserError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not hasattr(archive, "files"):
        raise UserError(f"{path}: holds a single array; expected an .npz archive with {', '.join(_NPZ_KEYS)}")
    with archive:
        arrays = {}
        for key in _NPZ_KEYS:
            if key not in archive.files:
                raise UserError(f"{path}: missing array {key!r} (found: {_some(archive.files) or 'none'})")
            try:
                arrays[key] = archive[key]
            except ValueError as e:  # object arrays need pickle, which we never allow
                raise UserError(f"{path}: array {key!r} cannot be loaded without pickle ({e})") from None
        layout = _npz_layout(archive, path)
    if (arrays["x_train"].dtype == np.uint8) != (arrays["x_test"].dtype == np.uint8):  # one would be scaled by 1/255
        raise UserError(f"{path}: x_train is {arrays['x_train'].dtype} but x_test is {arrays['x_test'].dtype}: uint8 "
                        f"pixels are read as value / 255, other dtypes as they are; store both with one dtype")
    notes = _refuse_lost_spread(arrays["x_train"], arrays["x_test"], path, layout)  # before float32 loses it
    if arrays["x_train"].dtype == np.uint8 and (arrays["x_train"].ndim == 2 or layout in ("NCL", "NLC")):
        notes.append((("uint8", str(path)), f"{path}: the inputs are uint8, which is read as pixels, value / 255, "
                      f"before --data-normalization; if they are token ids or counts, they become fractions: store "
                      f"them as int16, int32 or int64 to keep them as they are"))
    x_tr, x_te = (_npz_inputs(arrays[k], k, path, layout) for k in ("x_train", "x_test"))
    y_tr, y_te = (_npz_labels(arrays[k], k, path) for k in ("y_train", "y_test"))
    for x, y, kx, ky in ((x_tr, y_tr, "x_train", "y_train"), (x_te, y_te, "x_test", "y_test")):
        if len(x) != len(y):
            raise UserError(f"{path}: {kx} has {len(x)} samples but {ky} has {len(y)}")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(f"{path}: x_train samples are {tuple(x_tr.shape[1:])} but x_test samples are {tuple(x_te.shape[1:])}")
    for y, key in ((y_tr, "x_train"), (y_te, "x_test")):
        if len(y) == 0:
            raise UserError(f"{path}: {key} is empty")
    for x, key in ((x_tr, "x_train"), (x_te, "x_test")):
        bad = _non_finite(x)
        stored = arrays[key]
        if bad and stored.dtype.kind == "f" and (~np.isfinite(stored)).sum() < bad:
            largest = float(np.abs(stored[np.isfinite(stored)]).max())  # finite as stored, infinite in float32
            raise UserError(f"{path}: {key} holds values up to {largest:.3g}, beyond float32's range (3.4e38), in "
                            f"which networks run: rescale them")
        if bad:
            raise UserError(f"{path}: {key} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
    top = max(int(y_tr.max()), int(y_te.max()))
    if top == 0:
        raise UserError(f"{path}: every label is 0: a classifier needs at least two classes")
    trained = set(y_tr.tolist())
    untrained = sorted(set(y_te.tolist()) - trained)
    if untrained:
        raise UserError(f"{path}: y_test has label{'s' if len(untrained) > 1 else ''} {_some(untrained)} that y_train "
                        f"never has: a class the network would never be trained on")
    gaps = sorted(set(range(top + 1)) - trained)
    if gaps:  # the network gets one output per id up to the largest: unused ones would be classes too
        raise UserError(f"{path}: labels must be class ids 0..K-1, each in y_train; {len(gaps)} of 0..{top} "
                        f"({_some(gaps)}) never occur: renumber them, e.g. with np.unique(y, return_inverse=True)")
    return _Raw(x_tr, y_tr, x_te, y_te, top + 1, id_notes=tuple(notes))


def _some(values: Sequence[int], shown: int = 5) -> str:
    """A few values of a list, for a message: 1, 2, 3, 4, 5, ... (86 in all)."""
    head = ", ".join(str(v) for v in values[:shown])
    return head if len(values) <= shown else f"{head}, ... ({len(values)} in all)"


def _npz_layout(archive, path: Path) -> str | None:
    """The optional ``layout`` entry of an npz: "NCHW" or "NHWC" for images, "NCL" or "NLC" for signals
    (None when absent)."""
    if "layout" not in archive.files:
        return None
    try:
        value = archive["layout"].item()
        value = (value.decode("ascii") if isinstance(value, bytes) else str(value)).upper()  # np.bytes_ too
    except (ValueError, TypeError, UnicodeDecodeError):
        value = None
    if value not in ("NCHW", "NHWC", "NCL", "NLC"):
        raise UserError(f"{path}: 'layout' must be the string NCHW or NHWC (images), NCL or NLC (signals)")
    return value


def _npz_inputs(x: np.ndarray, key: str, path: Path, layout: str | None = None) -> Tensor:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W); (N, C, H, W), (N, D) as is; with the
    ``layout`` entry NCL or NLC, a three-dimensional array is signals: (N, C, L) as is, (N, L, C) -> (N, C, L).

    Without the archive's ``layout`` entry, four-dimensional inputs are read the
    one way that gives them a usual channel count (1, 3 or 4): NHWC when the last
    size is one and the second is not, NCHW the other way round. When both or
    neither are (4x4 RGB images or 4-channel 4x3 ones; 2-channel images), the
    ``layout`` entry must say which."""
    if x.dtype.kind not in "biuf":
        raise UserError(f"{path}: {key} has dtype {x.dtype}; expected a numeric array")
    if x.ndim == 4 and layout is None and (x.shape[3] in (1, 3, 4)) == (x.shape[1] in (1, 3, 4)):
        raise UserError(f"{path}: {key} has shape {x.shape}, which may be NCHW ({x.shape[1]} channels of "
                        f"{x.shape[2]}x{x.shape[3]}) or NHWC ({x.shape[3]} channels of {x.shape[1]}x{x.shape[2]}); "
                        f"store layout='NCHW' or layout='NHWC' in the npz (np.savez(..., layout='NHWC'))")
    if layout in ("NCL", "NLC") and x.ndim != 3:
        raise UserError(f"{path}: layout {layout} is for (N, C, L) signals; {key} has shape {x.shape}")
    if x.ndim == 3 and layout in ("NCL", "NLC"):  # signals: channels, then the length
        x = x.transpose(0, 2, 1) if layout == "NLC" else x
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and (layout == "NHWC" or (layout is None and x.shape[3] in (1, 3, 4))):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (2, 4):
        raise UserError(f"{path}: {key} has shape {x.shape}; expected (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C)")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    with np.errstate(over="ignore"):  # values beyond float32's range become inf: _read_npz tells them apart
        out = np.ascontiguousarray(x, dtype=np.float32)
    if scale != 1.0:  # uint8 pixels: out is a copy, scaled in place
        out /= scale
    return torch.from_numpy(out)


def _refuse_lost_spread(x_train: np.ndarray, x_test: np.ndarray, path: Path, layout: str | None
                        ) -> list[tuple[tuple[str, str], str]]:
    """One line for a feature (a signal's channel) whose values float32, what the networks take and what is
    normalised, would lose: stored in float64 or wide integers with a large offset and a small spread (a
    timestamp around 1e9 varying by seconds), it became a constant column without a word. Lost: float32's
    step at the values' size (both splits') above a tenth of the training split's spread, which the inputs
    are normalised by. Summed in slices of samples, without a float64 copy of the set. Returns the note for
    integers above 2**24, which float32 rounds (ids would be altered), for :class:`_Raw`'s ``id_notes``."""
    wide = [x for x in (x_train, x_test) if x.dtype.itemsize >= 4 and x.dtype != np.float32 and x.dtype.kind in "iuf"]
    axis = {2: 1, 3: {"NCL": 1, "NLC": 2}.get(layout or "")}.get(x_train.ndim)
    if not wide or axis is None or not len(x_train) or x_test.shape[1:] != x_train.shape[1:]:
        return []  # (other sample shapes are refused after)
    rest = tuple(a for a in range(x_train.ndim) if a != axis)
    rows = max(1, (1 << 22) // max(1, x_train[0].size))

    def slices(x: np.ndarray):  # one float64 slice at a time
        return (np.asarray(x[i:i + rows], dtype=np.float64) for i in range(0, len(x), rows))

    with np.errstate(all="ignore"):
        total = level = 0.0
        for x, train in ((x_train, True), (x_test, False)):  # the sums and the largest sizes in one pass
            for part in slices(x):
                level = np.maximum(level, np.abs(part).max(axis=rest))
                total = total + part.sum(axis=rest) if train else total
        count = len(x_train) * (x_train[0].size // x_train.shape[axis])
        centre = np.expand_dims(total / count, rest)
        spread = np.sqrt(sum(np.square(part - centre).sum(axis=rest) for part in slices(x_train)) / count)
        step = np.spacing(np.float32(level)).astype(np.float64)  # float32's spacing at that size
    # non-finite values and values beyond float32's range get their own lines later; integers float32 holds
    # exactly (below 2**24) lose nothing
    fits = np.isfinite(level) & (level < np.finfo(np.float32).max)
    exact = all(x.dtype.kind in "iu" for x in wide) & (level <= 2 ** 24)
    lost = np.flatnonzero(fits & ~exact & np.isfinite(spread) & (spread > 0) & (step > spread / 10))
    what = "column" if x_train.ndim == 2 else "channel"
    if len(lost):
        j = int(lost[0])
        raise UserError(f"{path}: {what} {j} of the inputs holds values up to {level[j]:.6g} in size that vary by "
                        f"{spread[j]:.3g} in x_train; float32, which the networks take, steps by {step[j]:.2g} there "
                        f"and would lose them: subtract one constant from that {what} in both splits (its x_train "
                        f"mean, in float64) before saving"
                        + (f" ({len(lost)} such {what}s)" if len(lost) > 1 else ""))
    rounded = np.flatnonzero(fits & (level > 2 ** 24)) if all(x.dtype.kind in "iu" for x in wide) else []
    if not len(rounded):  # kept as features (float32's precision at their size), but ids would be altered
        return []
    j = int(rounded[0])
    return [(("ids", str(path)), f"{path}: {what} {j} of the inputs holds integers up to {level[j]:.0f}, above "
             f"2**24 = 16,777,216, where float32, which the networks take, rounds them (to steps of "
             f"{step[j]:.0f} there): if they are ids (users, items, hashes), they are altered: remap them to "
             f"0..K-1 before saving (np.unique(x, return_inverse=True))")]


def _npz_labels(y: np.ndarray, key: str, path: Path) -> Tensor:
    if y.ndim != 1:
        raise UserError(f"{path}: {key} has shape {y.shape}; expected (N,) class ids")
    whole = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y)))))
    if not whole:
        raise UserError(f"{path}: {key} must hold integer class ids 0..K-1, got dtype {y.dtype} with non-integer values")
    if y.size and y.min() < 0:
        raise UserError(f"{path}: {key} has negative label {y.min()}; expected class ids 0..K-1")
    if y.size and y.max() >= MAX_CLASSES:  # before int64, which a float 1e20 or a uint64 2**63 would overflow
        raise UserError(f"{path}: {key} has label {y.max()}: labels must be class ids 0..{MAX_CLASSES - 1}")
    return torch.from_numpy(y.astype(np.int64))
