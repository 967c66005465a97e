"""Dataset readers, splits, batching and augmentation, on files written here."""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import json
import math
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.data import DATASETS, Dataset, augment_crop_flip, load_dataset
from landscape.errors import UserError


def unnormalise(data: Dataset, x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] pixels: x * std + mean per channel."""
    shape = (1, -1, 1, 1) if x.dim() == 4 else (-1,)
    return x * torch.tensor(data.std).reshape(shape) + torch.tensor(data.mean).reshape(shape)


# --- names and paths ----------------------------------------------------------


def test_unknown_dataset_lists_choices():
    with pytest.raises(UserError, match="unknown dataset 'nosuch'") as err:
        load_dataset("nosuch")
    for name in DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "npz"])
def test_file_datasets_need_data_path(name):
    with pytest.raises(UserError, match="--data-path"):
        load_dataset(name)


def test_missing_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="no MNIST files"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(UserError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path))


# --- digits ---------------------------------------------------------------------


def test_digits_fixed_stratified_split_and_normalised():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=123)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert a.num_classes == 10 and not a.augment and not a.synthetic
    counts = torch.bincount(a.y_test, minlength=10)
    assert (counts - 36).abs().max() <= 1, counts
    # The split does not depend on `seed`.
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert abs(a.x_train.mean().item()) < 1e-4
    assert abs(a.x_train.std(correction=0).item() - 1) < 1e-4
    # Raw values were 0..16, scaled by 1/16.
    raw = unnormalise(a, a.x_train) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-4) and raw.min() > -1e-4 and raw.max() < 16 + 1e-4


# --- MNIST idx --------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def mnist_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(10, dtype=np.uint8) * 3) % 10,
    }


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name, sub", [("mnist", ""), ("mnist", "MNIST/raw"), ("fashion-mnist", "raw")])
def test_idx_round_trip(tmp_path, gz, name, sub):
    arrays = mnist_arrays()
    write_idx(tmp_path / sub if sub else tmp_path, arrays, gz)
    data = load_dataset(name, str(tmp_path))
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.num_classes == 10 and not data.augment
    assert data.mean == ((0.1307,) if name == "mnist" else (0.2860,))
    pixels = (unnormalise(data, data.x_train) * 255).round().to(torch.uint8)
    assert torch.equal(pixels[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    pixels = (unnormalise(data, data.x_test) * 255).round().to(torch.uint8)
    assert torch.equal(pixels[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_idx_corrupt_header(tmp_path):
    write_idx(tmp_path, mnist_arrays(), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[1] = 7  # magic must start 00 00
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="train-images-idx3-ubyte: not an idx file"):
        load_dataset("mnist", str(tmp_path))
    data[1], data[2] = 0, 0x0D  # float type code
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="type code 0x0d"):
        load_dataset("mnist", str(tmp_path))


def test_idx_file_unpacked_into_a_folder_of_its_name_is_told_apart_from_missing(tmp_path):
    """Some archives unpack train-images-idx3-ubyte/train-images-idx3-ubyte: it was 'missing', as if never there."""
    write_idx(tmp_path, mnist_arrays(), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    inner = path.read_bytes()
    path.unlink()
    path.mkdir()
    (path / "train-images-idx3-ubyte").write_bytes(inner)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}: idx files incomplete, missing train-images-idx3-ubyte"
                                                  f"[.gz] (a folder of that name is there, not the file")):
        load_dataset("mnist", str(tmp_path))


def test_idx_truncated_raw_and_gz(tmp_path):
    write_idx(tmp_path, mnist_arrays(), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: truncated"):
        load_dataset("mnist", str(tmp_path))

    gz_dir = tmp_path / "gz"
    write_idx(gz_dir, mnist_arrays(), gz=True)
    path = gz_dir / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", str(gz_dir))


def test_idx_trailing_bytes_raw_and_a_gz_that_holds_far_more_than_its_header_says(tmp_path):
    """A .gz was decompressed whole before its header was read: a 7 MB file holding 1.6 GB of zeros took 3.4 GB
    of memory before its one-line refusal (a larger one, the process)."""
    import gzip
    import tracemalloc

    write_idx(tmp_path, mnist_arrays(), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\0" * 7)
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte: has trailing bytes; header promises 7840 data "
                                        r"bytes for shape \(10, 28, 28\), file holds 7847$"):
        load_dataset("mnist", str(tmp_path))

    gz_dir = tmp_path / "gz"
    write_idx(gz_dir, mnist_arrays(), gz=True)
    with gzip.open(gz_dir / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(mnist_arrays()["train-images-idx3-ubyte"]))  # 20 images promised, then 256 MiB more
        for _ in range(16):
            f.write(bytes(1 << 24))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: has trailing bytes; header promises 15680 "
                                            r"data bytes for shape \(20, 28, 28\), file holds more than 15680$"):
            load_dataset("mnist", str(gz_dir))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak  # not the 256 MiB it holds
    # a header promising more than the file could decompress to: refused before a buffer of that size is made
    with gzip.open(gz_dir / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3i", 1 << 20, 28, 28) + bytes(100))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: truncated; header promises 822083584 data "
                                            r"bytes for shape \(1048576, 28, 28\), file holds too few bytes to "
                                            r"decompress to them$"):
            load_dataset("mnist", str(gz_dir))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def test_idx_count_mismatch_and_missing_file(tmp_path):
    arrays = mnist_arrays()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:19]
    write_idx(tmp_path, arrays, gz=False)
    with pytest.raises(UserError, match="20 images but .*train-labels-idx1-ubyte holds 19 labels"):
        load_dataset("mnist", str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match=r"missing t10k-labels-idx1-ubyte\[.gz\]"):
        load_dataset("mnist", str(tmp_path))


# --- CIFAR pickles ---------------------------------------------------------------


def cifar_batch(rng, n: int, label_key, classes: int, str_keys: bool = False) -> dict:
    keys = ("data", label_key) if str_keys else (b"data", label_key.encode())
    return {
        keys[0]: rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        keys[1]: rng.integers(0, classes, n).tolist(),
        b"batch_label": b"testing batch",
        b"filenames": [b"", b"cat_01.png"],  # protocol 2 stores b'' as bytes() and b'..' as _codecs.encode
    }


def dump(path, obj, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(folder, rng) -> tuple[list[dict], dict]:
    folder.mkdir(parents=True, exist_ok=True)
    train = [cifar_batch(rng, 3, "labels", 10) for _ in range(5)]
    for i, batch in enumerate(train, 1):
        # Batch 2 as numpy 1 wrote it (numpy.core.*); batch 3 in protocol 5 (numpy._core.numeric._frombuffer).
        data = pickle.dumps(batch, protocol=5 if i == 3 else 2)
        if i == 2:
            assert b"numpy._core.multiarray" in data
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / f"data_batch_{i}").write_bytes(data)
    test = cifar_batch(rng, 4, "labels", 10)
    dump(folder / "test_batch", test, 2)
    return train, test


def assert_pixels(data: Dataset, x: torch.Tensor, batches: list[dict], key) -> None:
    expected = np.concatenate([b[key] for b in batches]).reshape(-1, 3, 32, 32)
    pixels = (unnormalise(data, x) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(expected))


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_round_trip(tmp_path, point_at_folder):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    train, test = write_cifar10(folder, rng)
    assert b"_frombuffer" in (folder / "data_batch_3").read_bytes()
    data = load_dataset("cifar10", str(folder if point_at_folder else tmp_path))
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.num_classes == 10 and data.augment
    assert data.mean == (0.4914, 0.4822, 0.4465)
    assert_pixels(data, data.x_train, train, b"data")
    assert_pixels(data, data.x_test, [test], b"data")
    assert data.y_train.tolist() == sum((b[b"labels"] for b in train), [])
    assert data.y_test.tolist() == test[b"labels"]


def test_a_datasets_folder_and_the_folder_holding_it_are_the_same_data(tmp_path):
    """Endpoints trained with --data-path root and root/cifar-10-batches-py read the
    same batches; a curve between them was refused as trained on other data."""
    from landscape.data import data_location
    from landscape.inputs import same_data

    write_cifar10(tmp_path / "c" / "cifar-10-batches-py", np.random.default_rng(3))
    write_idx(tmp_path / "m" / "MNIST" / "raw", mnist_arrays(), gz=True)
    write_cifar10(tmp_path / "other" / "cifar-10-batches-py", np.random.default_rng(4))
    root, inner = str(tmp_path / "c"), str(tmp_path / "c" / "cifar-10-batches-py")
    assert data_location("cifar10", root) == data_location("cifar10", inner) == Path(inner).resolve()
    assert same_data("cifar10", root, inner) and same_data("cifar10", inner + "/", root)
    assert not same_data("cifar10", root, str(tmp_path / "other"))
    assert not same_data("cifar10", root, str(tmp_path / "nowhere"))
    assert same_data("mnist", str(tmp_path / "m"), str(tmp_path / "m" / "MNIST" / "raw"))


def test_cifar100_round_trip_with_str_keys(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = cifar_batch(rng, 6, "fine_labels", 100)
    test = cifar_batch(rng, 5, "fine_labels", 100, str_keys=True)
    dump(folder / "train", train, 2)
    dump(folder / "test", test, 5)
    data = load_dataset("cifar100", str(tmp_path))
    assert data.num_classes == 100 and data.augment and data.mean == (0.5071, 0.4865, 0.4409)
    assert_pixels(data, data.x_train, [train], b"data")
    assert_pixels(data, data.x_test, [test], "data")
    assert data.y_train.tolist() == train[b"fine_labels"]
    assert data.y_test.tolist() == test["fine_labels"]


class Pwn:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle_os_system(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(3))
    marker = tmp_path / "pwned"
    dump(tmp_path / "data_batch_1", {b"data": Pwn(marker), b"labels": []}, 2)
    with pytest.raises(UserError, match=r"data_batch_1: refusing to unpickle (os|posix|nt)\.system"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


def test_cifar_refuses_malicious_pickle_eval(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(4))
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    payload = b"cbuiltins\neval\n(V" + code.encode() + b"\ntR."
    assert pickle.loads(payload) is None and marker.exists()  # the payload does work when unrestricted
    marker.unlink()
    (tmp_path / "data_batch_4").write_bytes(payload)
    with pytest.raises(UserError, match=r"data_batch_4: refusing to unpickle builtins\.eval"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


class Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("obj, refusal", [(Reduce(bytes, 2 * 10**9), "bytes(...) is allowed only without arguments"),
                                          (Reduce(codecs.encode, "x", "rot13"), "_codecs.encode is allowed only as"),
                                          # 4.3 GiB uninitialised (was: "out of memory ... a smaller --batch-size"),
                                          # or small, passing as images
                                          (Reduce(np.ndarray, (1_500_000, 3072)), "numpy.ndarray is allowed only as numpy "),
                                          (Reduce(np.ndarray, (10, 3072)), "numpy.ndarray is allowed only as numpy "),
                                          (Reduce(np.arange(1).__reduce__()[0], np.ndarray, (10, 3072), b"b"),
                                           "_reconstruct is allowed only as numpy pickles an array")])
def test_cifar_allows_bytes_only_as_protocol_2_writes_them(tmp_path, obj, refusal):
    write_cifar10(tmp_path, np.random.default_rng(4))
    dump(tmp_path / "test_batch", {b"data": obj}, 2)
    with pytest.raises(UserError, match=re.escape(f"test_batch: not a readable CIFAR batch (UnpicklingError: {refusal}")):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_corrupt_batch(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(5))
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="test_batch: not a readable CIFAR batch"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_labels_must_be_integers_and_the_path_a_folder(tmp_path):
    """Float labels were truncated (0.7 became class 0) and strings parsed; an archive or
    a batch file given as --data-path was reported as missing batches."""
    rng = np.random.default_rng(7)
    train, _ = write_cifar10(tmp_path, rng)
    for labels, kind in (([0.7] * 3, "float64"), (["1"] * 3, "<U1"), ([True] * 3, "bool")):
        dump(tmp_path / "data_batch_2", {**train[1], b"labels": labels}, 2)
        with pytest.raises(UserError, match=re.escape(f"data_batch_2: 'labels' is not a list of integers ({kind} "
                                                      f"values)")):
            load_dataset("cifar10", str(tmp_path))
    with pytest.raises(UserError, match=re.escape(f"--data-path {tmp_path / 'data_batch_1'} is a file; give the "
                                                  f"cifar-10-batches-py folder")):
        load_dataset("cifar10", str(tmp_path / "data_batch_1"))
    with pytest.raises(UserError, match=re.escape(f"--data-path {tmp_path / 'data_batch_1'} is a file; give the "
                                                  f"folder that holds the four idx files")):
        load_dataset("mnist", str(tmp_path / "data_batch_1"))


# --- npz ----------------------------------------------------------------------


def test_npz_nhwc_uint8(tmp_path):
    rng = np.random.default_rng(6)
    x_train = rng.integers(0, 256, (12, 5, 6, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    y_train, y_test = np.arange(12) % 4, np.array([0, 1, 2, 3])
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = load_dataset("npz", str(path))
    assert data.input_shape == (3, 5, 6) and data.num_classes == 4 and not data.augment
    assert len(data.mean) == 3
    # Per-channel training statistics: each channel has mean 0, std 1.
    assert torch.allclose(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(data.x_train.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    pixels = (unnormalise(data, data.x_test) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(x_test.transpose(0, 3, 1, 2).copy()))
    assert data.y_train.tolist() == y_train.tolist()


def test_npz_ambiguous_image_layout_needs_the_layout_entry(tmp_path):
    # (N, 4, 4, 3): 4x4 RGB images stored NHWC, or 4-channel 4x3 images stored NCHW.
    rng = np.random.default_rng(8)
    x_train, x_test = rng.random((6, 4, 4, 3)), rng.random((2, 4, 4, 3))
    arrays = dict(x_train=x_train, y_train=np.arange(6) % 2, x_test=x_test, y_test=np.array([0, 1]))
    path = tmp_path / "small.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=re.escape("may be NCHW (4 channels of 4x3) or NHWC (3 channels of 4x4); "
                                                  "store layout='NCHW'")):
        load_dataset("npz", str(path))
    np.savez(path, **arrays, layout="NHWC")
    data = load_dataset("npz", str(path))
    assert data.input_shape == (3, 4, 4)
    assert torch.allclose(unnormalise(data, data.x_test), torch.from_numpy(x_test.transpose(0, 3, 1, 2)).float(),
                          atol=1e-5)
    np.savez(path, **arrays, layout="nchw")
    assert load_dataset("npz", str(path)).input_shape == (4, 4, 3)
    np.savez(path, **arrays, layout=b"NHWC")  # stored as bytes, as some writers do
    assert load_dataset("npz", str(path)).input_shape == (3, 4, 4)
    np.savez(path, **arrays, layout="HWC")
    with pytest.raises(UserError, match="'layout' must be the string NCHW or NHWC"):
        load_dataset("npz", str(path))


def test_npz_image_layout_is_guessed_only_where_one_reading_has_usual_channels(tmp_path):
    rng = np.random.default_rng(10)

    def shape_read(x, **extra):
        path = tmp_path / "l.npz"
        np.savez(path, x_train=x, y_train=np.arange(len(x)) % 2, x_test=x[:2], y_test=np.array([0, 1]), **extra)
        return load_dataset("npz", str(path)).input_shape

    assert shape_read(rng.random((4, 5, 6, 3))) == (3, 5, 6)  # NHWC: only the last size is a channel count
    assert shape_read(rng.random((4, 1, 5, 6))) == (1, 5, 6)  # NCHW: only the second is
    # 2-channel images have no usual channel count either way: 16 channels of 16x2 was a silent misreading.
    with pytest.raises(UserError, match=re.escape("may be NCHW (16 channels of 16x2) or NHWC (2 channels of 16x16); "
                                                  "store layout='NCHW' or layout='NHWC'")):
        shape_read(rng.random((4, 16, 16, 2)))
    assert shape_read(rng.random((4, 16, 16, 2)), layout="NHWC") == (2, 16, 16)
    assert shape_read(rng.random((4, 64, 8, 8)), layout="NCHW") == (64, 8, 8)


def test_npz_feature_vectors_float(tmp_path):
    rng = np.random.default_rng(7)
    x_train = rng.normal(3.0, 2.0, (30, 7))
    x_test = rng.normal(3.0, 2.0, (10, 7))
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x_train, y_train=np.arange(30) % 6, x_test=x_test, y_test=np.full(10, 2))
    data = load_dataset("npz", str(path))
    assert data.input_shape == (7,) and data.num_classes == 6  # max label + 1
    # Standardised feature by feature, from the training split's own columns (numpy's mean and std).
    assert np.allclose(data.mean, x_train.mean(axis=0), atol=1e-6) and np.allclose(data.std, x_train.std(axis=0))
    assert torch.allclose(data.x_train.mean(dim=0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(data.x_train.std(dim=0, correction=0), torch.ones(7), atol=1e-5)
    assert torch.allclose(unnormalise(data, data.x_test), torch.from_numpy(x_test).float(), atol=1e-5)


def test_npz_features_on_other_scales_are_each_standardised(tmp_path):
    # One column 1000x the others and shifted: one mean and std for all values would squash the rest
    # to a std of about 1e-3; each column gets its own. A constant column gets std 1, not a division by 0.
    rng = np.random.default_rng(9)
    x_train = rng.normal(0.0, 1.0, (40, 3))
    x_train[:, 1] = x_train[:, 1] * 1000 + 5000
    x_train[:, 2] = 7.0
    path = tmp_path / "scaled.npz"
    np.savez(path, x_train=x_train, y_train=np.arange(40) % 2, x_test=x_train[:4], y_test=np.arange(4) % 2)
    data = load_dataset("npz", str(path))
    assert data.std[2] == 1.0 and abs(data.mean[2] - 7.0) < 1e-9
    spread = data.x_train.std(dim=0, correction=0)
    assert torch.allclose(spread[:2], torch.ones(2), atol=1e-5) and float(spread[2]) == 0.0


def test_npz_bad_inputs(tmp_path):
    good = dict(x_train=np.zeros((4, 3)), y_train=np.arange(4), x_test=np.zeros((2, 3)), y_test=np.arange(2))
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in good.items() if k != "y_test"})
    with pytest.raises(UserError, match="missing array 'y_test'"):
        load_dataset("npz", str(path))
    np.savez(path, **{**good, "y_train": np.array([0.0, 1.5, 2.0, 0.0])})
    with pytest.raises(UserError, match="y_train must hold integer class ids"):
        load_dataset("npz", str(path))
    np.savez(path, **{**good, "y_test": np.array([0, -1])})
    with pytest.raises(UserError, match="y_test has negative label"):
        load_dataset("npz", str(path))
    # Whole-valued float labels are fine.
    np.savez(path, **{**good, "y_train": np.array([0.0, 1.0, 2.0, 0.0])})
    assert load_dataset("npz", str(path)).y_train.tolist() == [0, 1, 2, 0]
    # Data that used to train on nothing, evaluate to NaN, blame the learning rate or build 10^12 classes:
    x = good["x_train"].copy()
    x[1, 2] = np.nan
    for arrays, msg in ((dict(x_train=x), "x_train holds 1 non-finite value (NaN or inf)"),
                        (dict(x_test=np.full((2, 3), np.inf)), "x_test holds 6 non-finite values"),
                        (dict(y_train=np.array([0, 1, 2, 10**12])), "y_train has label 1000000000000: labels must be"),
                        (dict(y_test=np.array([0, 10**6])), "y_test has label 1000000: labels must be"),
                        (dict(x_test=np.zeros((0, 3)), y_test=np.zeros(0, dtype=int)), "bad.npz: x_test is empty"),
                        (dict(y_test=np.array([0, 4])), "bad.npz: y_test has label 4 that y_train never has: a class "
                                                        "the network would never be trained on"),
                        # a class in the middle missing from training, though the largest label is there
                        (dict(y_train=np.array([0, 1, 3, 3]), y_test=np.array([2, 0])), "y_test has label 2 that"),
                        # labels with gaps would give the network outputs no sample ever trains
                        (dict(y_train=np.array([5, 15, 25, 95]), y_test=np.array([5, 15])),
                         "labels must be class ids 0..K-1, each in y_train; 92 of 0..95 (0, 1, 2, 3, 4, ... "
                         "(92 in all)) never occur: renumber them"),
                        (dict(x_train=np.zeros((1, 3)), y_train=np.array([0]), y_test=np.array([0, 0])),
                         "PATH: every label is 0: a classifier needs at least two classes"),  # was trained 'perfectly'
                        (dict(x_train=np.zeros((2, 3), np.uint8), x_test=np.zeros((2, 3), np.float32)),
                         "PATH: x_train is uint8 but x_test is float32: uint8 pixels are read as value / 255"),
                        (dict(y_train=np.array([0, 1e20]), y_test=np.array([0.0, 1.0])),
                         "PATH: y_train has label 1e+20: labels must be class ids 0..99999"),  # was int64's wrap
                        (dict(y_train=np.array([0, 2 ** 63 + 5], np.uint64), y_test=np.array([0, 0])),
                         "PATH: y_train has label 9223372036854775813: labels must be class ids")):
        np.savez(path, **{**good, **arrays})
        with pytest.raises(UserError, match=re.escape(msg.replace("PATH", str(path)))):
            load_dataset("npz", str(path))
    path.write_text("not a zip file at all\n")  # np.load would call it a pickle
    with pytest.raises(UserError, match=re.escape("bad.npz: not an .npz file (it does not start as a zip")):
        load_dataset("npz", str(path))
    np.savez(path, **good)
    with pytest.raises(UserError, match=re.escape(f"--val-size must be an integer in 0..2 (the npz training split "
                                                  f"in {path} has 4 samples, and 2 must remain to train on), got 3")):
        load_dataset("npz", str(path), val_size=3)
    # A validation split that takes every sample of a class leaves a class the network never trains on.
    with pytest.raises(UserError, match=re.escape(f"--val-size 2 leaves the npz training split in {path} without "
                                                  f"classes ")):
        load_dataset("npz", str(path), val_size=2)


# --- synthetic and validation splits --------------------------------------------------


def test_synthetic_shapes_flag_and_reproducible():
    kw = dict(synthetic_shape=(2, 6, 6), synthetic_classes=5, synthetic_sizes=(40, 12))
    a = load_dataset("synthetic", seed=3, **kw)
    b = load_dataset("synthetic", seed=3, **kw)
    c = load_dataset("synthetic", seed=4, **kw)
    assert a.x_train.shape == (40, 2, 6, 6) and a.x_test.shape == (12, 2, 6, 6)
    assert a.num_classes == 5 and int(a.y_train.max()) < 5
    assert a.synthetic and a.describe()["synthetic"] and not a.augment
    assert a.mean == (0.0, 0.0) and a.std == (1.0, 1.0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert not load_dataset("digits").synthetic


def test_val_split_sizes_and_disjoint():
    full = load_dataset("synthetic", synthetic_shape=(4,), synthetic_sizes=(50, 9))
    data = load_dataset("synthetic", synthetic_shape=(4,), synthetic_sizes=(50, 9), val_size=15, seed=0)
    assert data.eval_split == "val" and len(data.y_test) == 15 and len(data.y_train) == 35
    assert data.describe()["eval_split"] == "val" and full.eval_split == "test"
    rows = lambda x: {tuple(r) for r in x.tolist()}  # noqa: E731
    assert rows(data.x_test).isdisjoint(rows(data.x_train))
    assert rows(data.x_test) | rows(data.x_train) == rows(full.x_train)  # the real test set is unused
    other = load_dataset("synthetic", synthetic_shape=(4,), synthetic_sizes=(50, 9), val_size=15, seed=1)
    assert rows(other.x_test) != rows(data.x_test)
    with pytest.raises(UserError, match="--val-size must be an integer in 0..48"):
        load_dataset("synthetic", synthetic_sizes=(50, 9), synthetic_shape=(4,), val_size=50)


# --- batching ------------------------------------------------------------------------


def index_dataset(n: int, augment: bool = False) -> Dataset:
    x = torch.arange(n, dtype=torch.float32)[:, None]  # each sample holds its own index
    y = torch.arange(n) % 3
    return Dataset("index", x, y, x[:2], y[:2], 3, (0.0,), (1.0,), augment=augment)


def epoch(data: Dataset, batch_size: int, seed: int | None) -> list[torch.Tensor]:
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    out = []
    for x, y in data.train_batches(batch_size, gen):
        assert torch.equal(y, x[:, 0].long() % 3)  # samples keep their labels
        out.append(x[:, 0].long())
    return out


def test_train_batches_cover_epoch_and_are_seeded():
    data = index_dataset(38)
    batches = epoch(data, 9, seed=0)
    assert [len(b) for b in batches] == [9, 9, 9, 9, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(38))
    assert torch.equal(torch.cat(batches), torch.cat(epoch(data, 9, seed=0)))
    assert not torch.equal(torch.cat(batches), torch.cat(epoch(data, 9, seed=1)))
    assert torch.cat(batches).tolist() != list(range(38))  # shuffled


def test_train_batches_drop_single_sample_batch():
    batches = epoch(index_dataset(37), 9, seed=0)
    assert [len(b) for b in batches] == [9, 9, 9, 9]
    assert len(set(torch.cat(batches).tolist())) == 36


@pytest.mark.parametrize("n, sizes", [(10, [4, 4, 2]), (9, [4, 5]), (5, [5]), (4, [4]), (3, [3]), (1, [1])])
def test_statistics_batches_never_end_in_one_sample(n, sizes):
    # A last batch of one sample joins the one before (BatchNorm1d cannot normalise one sample);
    # every training sample is used once, in order.
    pairs = list(index_dataset(n).statistics_batches(4))
    xs = [x[:, 0].long() for x, _ in pairs]
    assert [len(x) for x in xs] == sizes and torch.cat(xs).tolist() == list(range(n))
    assert all(torch.equal(y, x % 3) for x, (_, y) in zip(xs, pairs))  # each sample with its own label


def test_batches_in_order_all_samples():
    data = index_dataset(10)
    xs = [x[:, 0].long() for x, _ in data.batches("train", 4)]
    assert [len(x) for x in xs] == [4, 4, 2] and torch.cat(xs).tolist() == list(range(10))
    assert sum(len(y) for _, y in data.batches("test", 4)) == 2
    with pytest.raises(UserError, match="unknown split"):
        next(data.batches("nosuch", 4))


def test_train_batches_augment_pads_with_normalised_black():
    x = torch.full((64, 2, 4, 4), 1.0)
    y = torch.zeros(64, dtype=torch.long)
    data = Dataset("img", x, y, x, y, 2, (0.5, 0.2), (0.25, 0.1), augment=True)
    black = torch.tensor([-2.0, -2.0])  # (0 - mean) / std per channel
    out = torch.cat([b for b, _ in data.train_batches(16, torch.Generator().manual_seed(0))])
    for c in range(2):
        values = set(out[:, c].unique().tolist())
        assert values == {1.0, black[c].item()}
    plain = torch.cat([b for b, _ in data.train_batches(16, torch.Generator().manual_seed(0), augment=False)])
    assert torch.equal(plain, x)


def test_describe_is_json_and_to_copies():
    data = load_dataset("synthetic", synthetic_shape=(3, 4, 4), synthetic_sizes=(6, 3))
    d = json.loads(json.dumps(data.describe()))
    assert d == {
        "name": "synthetic", "synthetic": True, "eval_split": "test", "n_train": 6, "n_test": 3,
        "input_shape": [3, 4, 4], "num_classes": 10, "augment": False,
        "fingerprint": None,  # synthetic data is its settings: torch.randn's bits differ between CPU kinds
    }
    moved = data.to("cpu")
    assert moved is not data and moved.device == torch.device("cpu")


# --- augmentation ---------------------------------------------------------------------


def candidate_crops(image: torch.Tensor, padding: int, fill: float) -> list[torch.Tensor]:
    """Every crop of the padded image and its mirror, by brute force. image (C, H, W)."""
    c, h, w = image.shape
    padded = torch.full((c, h + 2 * padding, w + 2 * padding), fill)
    padded[:, padding : padding + h, padding : padding + w] = image
    crops = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + h, left : left + w]
            crops += [crop, crop.flip(-1)]
    return crops


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_augment_outputs_are_padded_crops_maybe_flipped(padding):
    n, fill = 300, -1.0
    base = torch.arange(1, 17, dtype=torch.float32).reshape(1, 4, 4)
    x = base + 100 * torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)  # distinct per sample
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), fill=torch.tensor([fill]), padding=padding)
    assert out.shape == x.shape
    choices = []
    for i in range(n):
        crops = candidate_crops(x[i], padding, fill)
        matches = [k for k, crop in enumerate(crops) if torch.equal(out[i], crop)]
        assert matches, f"sample {i} is not a crop of its own padded image"
        choices.append(matches[0])
    flipped = [k % 2 == 1 for k in choices]
    assert any(flipped) and not all(flipped)
    if padding:
        assert len({k // 2 for k in choices}) > 1  # offsets vary
        assert (out == fill).any()  # the border shows through
    # Same generator seed, same augmentation; the input is left alone.
    again = augment_crop_flip(x, torch.Generator().manual_seed(0), fill=torch.tensor([fill]), padding=padding)
    assert torch.equal(out, again)
    assert torch.equal(x[0], base)


def test_augment_fill_per_channel():
    x = torch.zeros(200, 3, 4, 4)
    fill = torch.tensor([7.0, 8.0, 9.0])
    out = augment_crop_flip(x, torch.Generator().manual_seed(1), fill=fill, padding=4)
    for c in range(3):
        assert set(out[:, c].unique().tolist()) == {0.0, fill[c].item()}
    default = augment_crop_flip(torch.ones(50, 3, 4, 4), torch.Generator().manual_seed(1), padding=4)
    assert set(default.unique().tolist()) == {0.0, 1.0}  # default fill is 0


def test_the_split_note_speaks_only_of_overlapping_data(tmp_path, capsys):
    """A validation split overlaps a network's training data only when it is carved
    from the same data: another npz file or other synthetic tensors are no overlap."""
    from landscape.inputs import note_split_leak

    def noted(trained, used):
        note_split_leak(trained, used, "net.pt")
        return capsys.readouterr().err

    digits = {"dataset": "digits", "val_size": 0, "data_seed": 0}
    assert "net.pt was trained on the whole training split" in noted(digits, dict(digits, val_size=100))
    assert noted(digits, digits) == "" and noted(dict(digits, val_size=100), dict(digits, val_size=100)) == ""
    synthetic = {"dataset": "synthetic", "val_size": 0, "data_seed": 0, "synthetic_sizes": [64, 16]}
    assert "overlaps" in noted(synthetic, dict(synthetic, val_size=8))
    assert noted(synthetic, dict(synthetic, val_size=8, data_seed=1)) == ""  # other random tensors
    assert noted(synthetic, dict(synthetic, val_size=8, synthetic_sizes=(32, 16))) == ""
    for name in ("a.npz", "b.npz"):
        (tmp_path / name).write_bytes(b"")
    npz = {"dataset": "npz", "val_size": 0, "data_seed": 0, "data_path": str(tmp_path / "a.npz")}
    assert "overlaps" in noted(npz, dict(npz, val_size=8))
    assert noted(npz, dict(npz, val_size=8, data_path=str(tmp_path / "b.npz"))) == ""
    assert noted({}, dict(digits, val_size=100)) == ""  # a foreign checkpoint records nothing


def _npz(path, seed: int, flip: bool = False) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random((60, 12)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    if flip:
        x = 1 - x
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])


def test_the_fingerprint_is_of_the_files_contents():
    from landscape.data import data_differs, data_fingerprint

    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert data_fingerprint(a) == data_fingerprint(a.clone()) != data_fingerprint(a.reshape(4, 3))
    assert data_fingerprint(a) != data_fingerprint(a.double()) and data_fingerprint(a) != data_fingerprint(a + 1e-6)
    digits = load_dataset("digits")
    assert len(digits.fingerprint) == 8
    assert digits.describe()["fingerprint"] == load_dataset("digits", val_size=100, seed=3).fingerprint
    assert not data_differs(digits.describe(), digits.to("cpu").describe())
    # data made or changed in Python has none, so it is not taken for the files' data
    mine = Dataset(name="digits", x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test,
                   y_test=digits.y_test, num_classes=10, mean=digits.mean, std=digits.std)
    relabelled = dataclasses.replace(digits, y_train=digits.y_train.flip(0))
    for other in (mine, relabelled):
        assert other.fingerprint is None and data_differs(digits.describe(), other.describe()) == ["fingerprint"]
    assert data_differs(digits.describe(), dict(digits.describe(), fingerprint="0")) == ["fingerprint"]
    # a record from before fingerprints is not compared on it
    old = {k: v for k, v in digits.describe().items() if k != "fingerprint"}
    assert data_differs(old, mine.describe()) == [] and data_differs(old, dict(old, n_train=5)) == ["n_train"]


def test_resuming_on_changed_data_files_is_refused(tmp_path, capsys):
    """A run or a sweep interrupted, its npz file changed, then resumed: refused in
    one line, where it used to mix the old data's epochs or points with the new."""
    from landscape import cli
    from tests.test_plane_rays import one_line, run_cli

    path = tmp_path / "d.npz"
    _npz(path, 1)
    common = ["--model", "mlp", "--dataset", "npz", "--data-path", path, "--quiet"]
    assert run_cli(capsys, "train", *common, "--epochs", "1", "--out", tmp_path / "a", "--save-every", "1")[0] == 0
    # an unfinished run: stopped after epoch 1 of 2
    from landscape.train import train

    class Stop(Exception):
        pass

    def stop(epoch, record):
        raise Stop

    with pytest.raises(Stop):
        train(out=tmp_path / "b", model="mlp", dataset="npz", data_path=str(path), epochs=2, progress=False,
              on_epoch_end=stop)
    rays = ["rays", "--center", tmp_path / "a" / "model.pt", "--directions", "1", "--steps", "1", "--quiet",
            "--dataset", "npz", "--data-path", path, "--out", tmp_path / "r2"]
    assert run_cli(capsys, *rays)[0] == 0
    _npz(path, 1, flip=True)
    code, _, err = run_cli(capsys, *rays, "--resume")  # the same options, other data: another sweep
    assert code == 2 and "holds a finished rays result of other data (the data's files changed since)" in one_line(
        err)
    code, _, err = run_cli(capsys, "train", *common, "--epochs", "2", "--out", tmp_path / "b", "--resume")
    last = err.splitlines()[-1]
    assert code == 2 and "the run began on 'npz' (40 train / 20 test" in last and "the files' contents changed" in last
    assert "Traceback" not in err
    # evaluating a finished run's network on the changed file without saying so
    code, _, err = run_cli(capsys, "rays", "--center", tmp_path / "a" / "model.pt", "--directions", "1", "--steps",
                           "1", "--out", tmp_path / "r", "--quiet")
    assert code == 2 and "was trained on 'npz'" in one_line(err) and "the files' contents changed" in err
    assert cli  # the command line module, imported by run_cli


def test_a_cifar_run_resumes_with_its_folder_or_the_folder_holding_it(tmp_path, capsys):
    from landscape.train import train
    from tests.test_plane_rays import run_cli

    write_cifar10(tmp_path / "c" / "cifar-10-batches-py", np.random.default_rng(5))

    class Stop(Exception):
        pass

    def stop(epoch, record):
        raise Stop

    with pytest.raises(Stop):
        train(out=tmp_path / "run", model="mlp", dataset="cifar10", data_path=str(tmp_path / "c"), epochs=2,
              batch_size=8, progress=False, on_epoch_end=stop)
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--dataset", "cifar10", "--data-path",
                           tmp_path / "c" / "cifar-10-batches-py", "--epochs", "2", "--batch-size", "8",
                           "--out", tmp_path / "run", "--resume", "--quiet")
    assert code == 0, err
    assert (tmp_path / "run" / "model.pt").exists()


def _mine(**changes) -> dict:
    base = dict(name="mine", x_train=torch.randn(64, 1, 8, 8), y_train=torch.arange(64) % 4,
                x_test=torch.randn(16, 1, 8, 8), y_test=torch.arange(16) % 4, num_classes=4, mean=(0.0,), std=(1.0,))
    return {**base, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"y_train": torch.arange(64) % 6}, r"y_train has label 5; labels must be class ids 0\.\.3 \(num_classes 4\)"),
    ({"y_test": -(torch.arange(16) % 4)}, r"y_test has label -3; labels must be class ids 0\.\.3"),
    ({"y_train": (torch.arange(64) % 4)[:, None]}, r"y_train has shape \(64, 1\); expected \(N,\) class ids"),
    ({"x_train": torch.full((64, 1, 8, 8), float("nan"))}, r"x_train holds 4096 non-finite values \(NaN or inf\)"),
    ({"x_test": torch.randn(16, 1, 6, 6)}, r"x_train samples are \(1, 8, 8\) but x_test samples are \(1, 6, 6\)"),
    ({"num_classes": 0}, r"num_classes must be a whole number in 2\.\.100000 \(a classifier needs two classes\), got 0"),
    ({"num_classes": 1, "y_train": torch.zeros(64, dtype=torch.long), "y_test": torch.zeros(16, dtype=torch.long)},
     r"num_classes must be a whole number in 2\.\.100000 .*got 1"),  # trained to a 'perfect' 0 % error
    ({"num_classes": 10 ** 9}, r"num_classes must be a whole number in 2\.\.100000 .*got 1000000000"),
    ({"std": 0.0}, r"std must be finite and positive, got \(0\.0,\)"),  # augmentation divided by it
    ({"std": (-1.0,)}, r"std must be finite and positive, got \(-1\.0,\)"),
    ({"mean": float("nan")}, r"mean must be finite, got \(nan,\)"),
    ({"eval_split": "banana"}, r"eval_split must be 'test' or 'val', got 'banana'"),
    ({"x_train": torch.randn(64), "x_test": torch.randn(16)},
     r"x_train has shape \(64,\); expected \(N, \*shape\) samples \(\.view\(-1, 1\) for one feature a sample\)"),
    ({"x_train": torch.empty(64, 1, 8, 8, device="meta")}, r"its tensors are on the meta device, which holds no values"),
    ({"mean": (0.0, 0.0, 0.0)}, r"mean has 3 values; expected 1 or one for each of the 1 channels"),
    ({"x_test": torch.randn(0, 1, 8, 8), "y_test": torch.zeros(0, dtype=torch.long)},
     r"64 training and 0 test samples; training and evaluation need at least one each"),
])
def test_data_made_in_python_is_checked_as_the_files_are(changes, message):
    """Each of these used to reach torch deep inside a training step, or to train and report quietly."""
    with pytest.raises(UserError, match=r"^dataset 'mine': " + message):
        Dataset(**_mine(**changes))
    assert Dataset(**_mine(num_classes=np.int64(4))).num_classes == 4  # what a reader computed with numpy


def test_features_with_autograd_history_are_taken_as_data(tmp_path):
    """Features from a network outside no_grad made training fail in torch ("backward through the graph a second
    time"); a leaf that requires grad had its .grad filled by every step."""
    from landscape.train import train

    torch.manual_seed(0)
    backbone = torch.nn.Linear(20, 16)
    x, leaf = torch.randn(80, 20), torch.randn(20, 16).requires_grad_(True)
    y = torch.arange(80) % 4
    data = Dataset(name="feat", x_train=backbone(x[:60]), y_train=y[:60], x_test=x[60:] @ leaf, y_test=y[60:],
                   num_classes=4, mean=0.0, std=1.0)
    assert not data.x_train.requires_grad and not data.x_test.requires_grad
    train(out=tmp_path / "run", data=data, model="mlp", epochs=1, batch_size=16, progress=False)
    assert backbone.weight.grad is None and leaf.grad is None


def test_runs_trained_on_the_same_files_passed_from_python_are_the_same_data(tmp_path):
    """A run trained with data= records the default settings (digits) beside what it read: load_points refused
    two runs on one npz as "trained on other data (dataset digits vs npz)"; runs on other data passed from Python
    are named by what they read."""
    from landscape.inputs import load_points
    from landscape.train import train

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x_train=rng.normal(size=(60, 6)).astype(np.float32),
                 y_train=np.arange(60) % 3, x_test=rng.normal(size=(30, 6)).astype(np.float32), y_test=np.arange(30) % 3)
    data = load_dataset("npz", str(tmp_path / "a.npz"))
    kw = dict(model="mlp", epochs=1, batch_size=20, progress=False)
    train(out=tmp_path / "named", data=data, dataset="npz", data_path=str(tmp_path / "a.npz"), **kw)
    train(out=tmp_path / "given", data=data, seed=1, **kw)
    train(out=tmp_path / "other", data=load_dataset("npz", str(tmp_path / "b.npz")), seed=2, **kw)
    pts = load_points([tmp_path / "named" / "model.pt", tmp_path / "given" / "model.pt"])
    assert pts.data.fingerprint == data.fingerprint
    with pytest.raises(UserError, match=r"other/model.pt was trained on other data than .*named/model.pt \('npz' "
                                        r"\(60 train / 30 test, input \(6,\), 3 classes, files [0-9a-f]{8}\) and 'npz' "):
        load_points([tmp_path / "named" / "model.pt", tmp_path / "other" / "model.pt"])


def test_a_datasets_mean_and_std_may_be_one_number_or_one_a_feature_of_sequences():
    """Only images' channels are counted (augmentation pads with the mean): sequences' features are not."""
    assert Dataset(**_mine(mean=0.5, std=2)).mean == (0.5,)
    seq = Dataset(name="seq", x_train=torch.randn(8, 5, 3), y_train=torch.arange(8) % 2, x_test=torch.randn(4, 5, 3),
                  y_test=torch.arange(4) % 2, num_classes=2, mean=(0.0, 0.1, 0.2), std=(1.0, 1.0, 1.0))
    assert seq.std == (1.0, 1.0, 1.0)
    with pytest.raises(UserError, match=r"mean must be a number or a tuple of numbers, got 'zero'"):
        Dataset(**_mine(mean="zero"))


def test_synthetic_options_for_other_data_are_refused(tmp_path, capsys):
    """--synthetic-shape on the digits trained on the digits without a word."""
    from landscape import cli

    for argv, said in ((["train", "--synthetic-shape", "3,8,8", "--out", str(tmp_path / "a")],
                        "landscape train: error: --synthetic-shape applies to --dataset synthetic only; the digits "
                        "data has its own shape, classes and sizes"),
                       (["plane", "--points", "a.pt", "b.pt", "c.pt", "--dataset", "mnist", "--synthetic-classes=3",
                         "--synthetic-size", "9,9", "--out", str(tmp_path / "p")],
                        "landscape plane: error: --synthetic-classes, --synthetic-size apply to --dataset synthetic "
                        "only; the mnist data")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(said), err
    assert not (tmp_path / "a").exists()


def test_a_builtin_dataset_refuses_a_data_path(tmp_path, capsys):
    """--data-path without --dataset used to train on the digits and record the path."""
    from landscape import cli
    from landscape.train import train

    for argv, said in ((["train", "--data-path", "x.npz", "--epochs", "1", "--out", str(tmp_path / "a")],
                        "landscape train: error: dataset digits reads no files, but --data-path x.npz was given"),
                       (["plane", "--points", "a.pt", "b.pt", "c.pt", "--dataset", "synthetic", "--data-path",
                         "x.npz", "--out", str(tmp_path / "p")],
                        "landscape plane: error: dataset synthetic reads no files")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(said)
    with pytest.raises(UserError, match=r"dataset digits reads no files, but --data-path .*x.npz was given"):
        train(out=tmp_path / "b", data_path="x.npz", epochs=1, progress=False)
    from landscape.averaging import run_swa

    with pytest.raises(UserError, match=r"dataset digits reads no files, but --data-path .*x.npz was given"):
        run_swa(None, tmp_path / "c", data_path="x.npz", model="mlp", epochs=1, progress=False)  # from scratch
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_npz_values_beyond_float32_say_so(tmp_path):
    path = tmp_path / "huge.npz"
    x = np.full((6, 3), 1e300)
    x[0, 0] = np.nan
    np.savez(path, x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.arange(2))
    with pytest.raises(UserError, match=r"x_train holds values up to 1e\+300, beyond float32's range"):
        load_dataset("npz", path)


def test_npz_features_float32_would_lose_are_refused_and_the_others_read(tmp_path):
    """A float64 column around 1e8 varying by 3 (a timestamp, a coordinate) became one constant float32 value
    before it was standardised: the feature was lost without a word (51 % test error where the label was its
    sign). Refused in one line where float32's step there is over a tenth of the training split's spread;
    what float32 keeps well enough (integers below 2**24, a day of Unix seconds) is read, and the test split
    is judged by the training split's spread; a signal's channel is checked as a column is."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 4))
    x[:, 2] = 1e8 + 3.0 * (2 * y - 1) + 0.3 * rng.normal(size=200)
    np.savez(tmp_path / "big.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    with pytest.raises(UserError, match=r"big\.npz: column 2 of the inputs holds values up to 1e\+08 in size that "
                                        r"vary by 3 in x_train; float32, which the networks take, steps by 8 there "
                                        r"and would lose them: subtract one constant from that column in both splits"):
        load_dataset("npz", tmp_path / "big.npz")
    x[:, 2] -= 1e8
    np.savez(tmp_path / "centred.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    data = load_dataset("npz", tmp_path / "centred.npz")
    assert abs(float(torch.corrcoef(torch.stack([data.x_train[:, 2], torch.tensor(y, dtype=torch.float32)]))[0, 1])) > 0.9
    ids = np.stack([np.full(200, 2 ** 40), np.arange(200) % 7], axis=1).astype(np.int64) + (y[:, None] == 1)
    np.savez(tmp_path / "ids.npz", x_train=ids, y_train=y, x_test=ids[:20], y_test=y[:20])
    with pytest.raises(UserError, match="column 0 of the inputs holds values up to"):
        load_dataset("npz", tmp_path / "ids.npz")
    # kept well enough: integers float32 holds exactly, a day of Unix timestamps (steps of 128 s in 2.5e4 s), a test
    # split of one day after a training year (judged by the training spread)
    kept = np.stack([10 ** 7 + rng.integers(-800, 800, 200), 1.7e9 + rng.uniform(0, 86400, 200)], axis=1)
    year = kept.copy()
    year[:, 1] = 1.7e9 + rng.uniform(0, 3.2e7, 200)
    np.savez(tmp_path / "kept.npz", x_train=year, y_train=y, x_test=kept, y_test=y)
    assert load_dataset("npz", tmp_path / "kept.npz").input_shape == (2,)
    # ids float32 holds exactly (below 2**24) however close; a column at 1e6 varying by 1 (float32 steps by 0.0625)
    close = np.stack([16_000_000 + np.arange(200) % 10, 9_000_000 + np.arange(200) % 5], axis=1).astype(np.int64)
    np.savez(tmp_path / "close.npz", x_train=close, y_train=y, x_test=close[:20], y_test=y[:20])
    assert load_dataset("npz", tmp_path / "close.npz").input_shape == (2,)
    near = np.stack([1e6 + rng.normal(size=200), rng.normal(size=200)], axis=1)
    np.savez(tmp_path / "near.npz", x_train=near, y_train=y, x_test=near[:20], y_test=y[:20])
    assert load_dataset("npz", tmp_path / "near.npz").input_shape == (2,)
    inf_test = near[:20].copy()
    inf_test[0, 1] = np.inf  # the non-finite value's own line, not this one's
    np.savez(tmp_path / "inf.npz", x_train=near, y_train=y, x_test=inf_test, y_test=y[:20])
    with pytest.raises(UserError, match="non-finite"):
        load_dataset("npz", tmp_path / "inf.npz")
    signals = rng.normal(size=(200, 2, 8))
    signals[:, 0] += 1e8
    np.savez(tmp_path / "sig.npz", x_train=signals, y_train=y, x_test=signals[:20], y_test=y[:20], layout="NCL")
    with pytest.raises(UserError, match="channel 0 of the inputs holds values up to 1e\\+08"):
        load_dataset("npz", tmp_path / "sig.npz")


def test_npz_signals_with_an_ncl_or_nlc_layout_stay_signals_normalised_per_channel(tmp_path):
    """(N, C, L) arrays were always read as (N, H, W) images: a Conv1d network got (N, 1, C, L) and the error
    showed a shape the user never had, and a multi-channel signal shared one mean. With layout NCL / NLC they
    are (N, C, L) signals, each channel standardised on its own; other layouts are refused in one line."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2, 16)) * np.array([[1.0], [4.0]]) + np.array([[5.0], [-2.0]])
    y = np.arange(50) % 3
    np.savez(tmp_path / "ncl.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:], layout="NCL")
    np.savez(tmp_path / "nlc.npz", x_train=x[:40].transpose(0, 2, 1), y_train=y[:40],
             x_test=x[40:].transpose(0, 2, 1), y_test=y[40:], layout="nlc")
    ncl, nlc = load_dataset("npz", tmp_path / "ncl.npz"), load_dataset("npz", tmp_path / "nlc.npz")
    assert ncl.input_shape == nlc.input_shape == (2, 16) and torch.equal(ncl.x_train, nlc.x_train)
    np.testing.assert_allclose(ncl.mean, x[:40].mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(ncl.std, x[:40].std(axis=(0, 2)), rtol=1e-6)
    by_hand = (x[40:] - x[:40].mean(axis=(0, 2))[:, None]) / x[:40].std(axis=(0, 2))[:, None]
    np.testing.assert_allclose(ncl.x_test.numpy(), by_hand, rtol=1e-5, atol=1e-5)
    explicit = load_dataset("npz", tmp_path / "ncl.npz", normalization="1,2/3,4")  # one value a channel
    np.testing.assert_allclose(explicit.x_test[:, 1].numpy(), (x[40:, 1] - 2) / 4, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="has 2 channels: give --data-normalization with one value or one for each"):
        load_dataset("npz", tmp_path / "ncl.npz", normalization="1,2,3/1,1,1")
    with pytest.raises(UserError, match=r"augmentation needs \(N, C, H, W\) images"):  # signals are not cropped
        next(iter(dataclasses.replace(ncl, augment=True).train_batches(8, torch.Generator().manual_seed(0))))
    np.savez(tmp_path / "bad.npz", x_train=x[:40, 0], y_train=y[:40], x_test=x[40:, 0], y_test=y[40:], layout="NCL")
    with pytest.raises(UserError, match=r"layout NCL is for \(N, C, L\) signals; x_train has shape \(40, 16\)"):
        load_dataset("npz", tmp_path / "bad.npz")
    np.savez(tmp_path / "odd.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:], layout="CL")
    with pytest.raises(UserError, match="'layout' must be the string NCHW or NHWC \\(images\\), NCL or NLC"):
        load_dataset("npz", tmp_path / "odd.npz")
    np.savez(tmp_path / "plain.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    assert load_dataset("npz", tmp_path / "plain.npz").input_shape == (1, 2, 16)  # without it: images, as before


def test_the_same_files_in_another_place_are_the_same_data_and_moved_files_are_named(tmp_path, capsys):
    """Runs trained on copies of one file (a scratch copy) connect; a file moved since gives one line that says
    which run's data is missing, not an option the user never gave."""
    from landscape.inputs import load_points
    from landscape.train import train

    for i, name in enumerate(("home.npz", "scratch.npz")):
        _npz(tmp_path / name, 1)
        train(out=tmp_path / f"r{i}", model="mlp", dataset="npz", data_path=str(tmp_path / name), seed=i,
              epochs=1, progress=False)
    a, b = tmp_path / "r0" / "model.pt", tmp_path / "r1" / "model.pt"
    assert load_points([a, b]).data.describe()["n_train"] == 40
    _npz(tmp_path / "other.npz", 2)  # other contents: still refused
    train(out=tmp_path / "r2", model="mlp", dataset="npz", data_path=str(tmp_path / "other.npz"), epochs=1,
          progress=False)
    with pytest.raises(UserError, match=r"was trained on other data than .* \(data-path "):
        load_points([a, tmp_path / "r2" / "model.pt"])
    (tmp_path / "home.npz").rename(tmp_path / "moved.npz")
    with pytest.raises(UserError, match=rf"^{re.escape(str(a))} was trained on the npz data in "
                                        rf"{re.escape(str(tmp_path / 'home.npz'))}, which is not there any more: "
                                        rf"give its new place with --data-path"):
        load_points([a])
    assert load_points([a], data_overrides={"data_path": str(tmp_path / "moved.npz")}).data.describe()["n_train"] == 40
    from landscape.averaging import run_swa
    from landscape.curves import fit_curve

    for run in (lambda: run_swa(None, tmp_path / "s", from_ckpt=str(a), epochs=1, progress=False),  # runs from it
                lambda: fit_curve(a, b, tmp_path / "ab", epochs=1, progress=False)):
        with pytest.raises(UserError, match=rf"^{re.escape(str(a))} was trained on the npz data in .*home.npz, "
                                            rf"which is not there any more"):
            run()


def test_a_run_resumes_on_its_data_moved_or_copied_and_refuses_other_data(tmp_path, capsys):
    """train --resume compared the data path: data moved (the old path gone) could not be resumed at all, and a
    copy elsewhere was refused, though the run records its files' fingerprint, which decides."""
    from landscape.train import train
    from tests.test_plane_rays import run_cli

    class Stop(Exception):
        pass

    def stop(epoch, record):
        raise Stop

    first, moved = tmp_path / "d.npz", tmp_path / "elsewhere" / "d.npz"
    _npz(first, 1)
    common = ["--model", "mlp", "--dataset", "npz", "--epochs", "2", "--seed", "3", "--quiet"]
    assert run_cli(capsys, "train", *common, "--data-path", first, "--out", tmp_path / "whole")[0] == 0
    with pytest.raises(Stop):
        train(out=tmp_path / "r", model="mlp", dataset="npz", data_path=str(first), epochs=2, seed=3, progress=False,
              on_epoch_end=stop)
    moved.parent.mkdir()
    first.rename(moved)
    code, _, err = run_cli(capsys, "train", *common, "--data-path", moved, "--out", tmp_path / "r", "--resume")
    assert code == 0 and f"{tmp_path / 'r'}: resuming after epoch 1 of 2" in err
    whole, resumed = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("whole", "r"))
    assert all(torch.equal(whole["state_dict"][k], v) for k, v in resumed["state_dict"].items())
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["data_path"] == str(moved)  # found there next
    # other contents at the new place: refused after reading them, naming the difference
    with pytest.raises(Stop):
        train(out=tmp_path / "s", model="mlp", dataset="npz", data_path=str(moved), epochs=2, seed=3, progress=False,
              on_epoch_end=stop)
    _npz(first, 1, flip=True)
    code, _, err = run_cli(capsys, "train", *common, "--data-path", first, "--out", tmp_path / "s", "--resume")
    assert code == 2 and "the run began on 'npz'" in err.splitlines()[-1] and "contents changed" in err
    assert "resuming after" not in err  # said once the data is accepted, not before a refusal


def test_training_with_no_step_or_with_data_given_twice_is_refused(tmp_path, small_digits):
    """One sample trained zero steps and recorded train loss 0; data= with dataset= trained on the first and
    recorded the second, which later commands then read."""
    from landscape.curves.evaluate import evaluate_curve
    from landscape.inputs import load_points
    from landscape.train import train

    one = Dataset(**_mine(x_train=torch.randn(1, 1, 8, 8), y_train=torch.tensor([1])))
    with pytest.raises(UserError, match=r"^'mine' has 1 training sample\(s\): no training step would run \(a batch "
                                        r"needs at least 2 samples, for batch norm\)$"):
        train(out=tmp_path / "one", data=one, model="mlp", epochs=1, progress=False)
    assert not (tmp_path / "one" / "metrics.jsonl").exists()
    with pytest.raises(UserError, match=r"^data= is dataset 'digits', but dataset='npz' was given too: the run would "
                                        r"record 'npz''s settings for it; give the data one way$"):
        train(out=tmp_path / "two", data=small_digits, dataset="npz", data_path="x.npz", epochs=1, progress=False)
    with pytest.raises(UserError, match=r"^data= is dataset 'digits', but dataset='mnist' was given too"):
        load_points(["a.pt"], data=small_digits, data_overrides={"dataset": "mnist"})
    from landscape.curves.spro import espro, grow_simplex
    from landscape.data import refuse_data_twice

    for call in (lambda: grow_simplex("a.pt", tmp_path / "sx", data=small_digits, dataset="mnist"),
                 lambda: espro(["a.pt", "b.pt"], tmp_path / "es", data=small_digits, dataset="mnist")):
        with pytest.raises(UserError, match=r"^data= is dataset 'digits', but dataset='mnist' was given too"):
            call()  # the simplex functions recorded mnist for the digits they ran on
    refuse_data_twice(small_digits, {"dataset": " Digits"})  # the name as load_dataset reads it: the same
    with pytest.raises(UserError, match=r"^unknown keyword 'dataset_' \(did you mean dataset=\?\): the data options "
                                        r"are dataset, data_path, "):
        load_points(["a.pt"], data_overrides={"dataset_": "digits"})
    with pytest.raises(UserError, match=r"^unknown keyword 'grd': the data options are dataset"):
        evaluate_curve(tmp_path / "nothing.pt", grd=21)
    # the function's own keywords are suggested too: only the data options were
    with pytest.raises(UserError, match=r"^unknown keyword 'pionts' \(did you mean points=\?\): the data options"):
        evaluate_curve(tmp_path / "nothing.pt", pionts=21)


def test_a_validation_split_records_its_seed():
    """Two validation splits of one file by other --data-seed are other data: their records were alike, so a
    finished plane on one was handed back for the other on --resume."""
    from landscape.data import data_differs, why_data_differs

    a, b = (load_dataset("digits", val_size=100, seed=s).describe() for s in (1, 2))
    assert (a["split_seed"], b["split_seed"]) == (1, 2) and data_differs(a, b) == ["split_seed"]
    assert why_data_differs(a, b) == "they differ in split seed"
    assert "split_seed" not in load_dataset("digits").describe()  # the test split's record (and keys) unchanged
    moved = load_dataset("digits", val_size=100, seed=1).to("cpu")
    assert moved.describe() == a


def test_running_out_of_memory_while_reading_the_data_says_so(tmp_path, capsys, monkeypatch):
    """The advice named a smaller --batch-size, which changes nothing while the files are read."""
    import landscape.data as data_module
    from tests.test_plane_rays import one_line, run_cli

    path = tmp_path / "d.npz"
    _npz(path, 1)

    def exhausted(x, key, path, layout=None):
        raise MemoryError("Unable to allocate 4.29 GiB for an array with shape (1500000, 3072) and data type uint8")

    monkeypatch.setattr(data_module, "_npz_inputs", exhausted)
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--dataset", "npz", "--data-path", path, "--epochs", 1,
                           "--out", tmp_path / "a", "--quiet")
    assert code == 2 and one_line(err) == ("landscape: error: out of memory (an allocation of 4.29 GiB failed); while "
                                           "reading the dataset, which is held in memory whole: a machine with more "
                                           "memory, or a smaller dataset")


@pytest.mark.parametrize("shape, axes", [((9000, 3, 4, 4), (0, 2, 3)), ((9000, 5), (0,)), ((9000, 5, 3), (0, 2)),
                                         ((9000, 2, 2, 2, 2), (0, 1, 2, 3, 4))])
def test_statistics_of_a_large_set_in_slices_are_its_statistics(monkeypatch, shape, axes):
    """A set's float64 copy for its statistics was twice the set in memory (1.2 GB for CIFAR-10's): large sets
    are summed in slices of samples, to the same values as numpy's in float64."""
    import landscape.data as data_module

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 3 + 1
    monkeypatch.setattr(data_module, "STATISTICS_WHOLE", 0)
    monkeypatch.setattr(data_module, "STATISTICS_SLICE", 1000 * math.prod(shape[1:]))  # 9 slices of 1000 samples
    mean, std = data_module._statistics(x)
    ref = x.numpy().astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=axes).reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=axes).reshape(-1), rtol=1e-12)


def test_the_papers_normalisations_give_their_inputs(tmp_path):
    """normalization="resnet" / "vgg" give the inputs the papers' --transform ResNet / VGG give (ToTensor's
    pixel / 255, then (x - mean) / std per channel), computed here by hand; the explicit form by its own numbers."""
    train, _ = write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(5))
    pixels = torch.from_numpy(np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)).double() / 255
    for given, recorded, mean, std in (("ResNet", "resnet", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                                       ("imagenet", "vgg", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                       ("0.5/0.25,0.5,1", "0.5/0.25,0.5,1.0", (0.5,) * 3, (0.25, 0.5, 1.0))):
        data = load_dataset("cifar10", str(tmp_path), normalization=given)
        m, s = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (mean, std))
        assert torch.allclose(data.x_train.double(), (pixels - m) / s, atol=1e-5, rtol=0)
        assert (data.mean, data.std) == (mean, std) and data.augment
        assert data.normalization == recorded == data.describe()["normalization"]
        assert data.to("cpu").describe()["normalization"] == recorded
    standard = load_dataset("cifar10", str(tmp_path))
    assert standard.normalization == "standard" and "normalization" not in standard.describe()
    assert standard.mean == (0.4914, 0.4822, 0.4465) and standard.std == (0.2470, 0.2435, 0.2616)
    digits, mine = load_dataset("digits"), load_dataset("digits", normalization="0.5/0.25")
    raw = digits.x_train * torch.tensor(digits.std).view(1, -1, 1, 1) + torch.tensor(digits.mean).view(1, -1, 1, 1)
    assert torch.allclose(mine.x_train, (raw - 0.5) / 0.25, atol=1e-5, rtol=0)


def test_a_normalisation_is_refused_in_one_line_where_it_cannot_apply(tmp_path):
    from landscape.data import check_normalization

    assert [check_normalization(v) for v in ("Standard", " imageNet", "VGG", "0.50 / 0.25", "1,2,3/4")] == [
        "standard", "vgg", "vgg", "0.5/0.25", "1.0,2.0,3.0/4.0"]
    # the same inputs written otherwise are recorded alike (else refused as other data on resuming or mixing)
    assert [check_normalization(v) for v in ("0.5,0.5,0.5/0.25,0.25,0.25", "-0/1", "0.4914,0.4822,0.4465/0.2023,"
                                             "0.1994,0.2010", "0.485,0.456,0.406/0.229,0.224,0.225")] == [
        "0.5/0.25", "0.0/1.0", "resnet", "vgg"]
    for bad, said in (("foo", r"must be standard, resnet, vgg \(imagenet\) or MEAN/STD"),
                      ("1/2/3", r"must be standard, resnet"), ("a/1", r"must be standard, resnet"),
                      ("1,2/0", r"the mean must be finite and the standard deviation finite and positive"),
                      ("nan/1", r"the mean must be finite"), ("0/inf", r"finite and positive"),
                      ("1/1e-300", r"finite and positive, in float32"), ("1e39/1", r"the mean must be finite"),
                      ("1/1e-45", r"finite and positive, in float32"),
                      ("1,2/1,2,3", r"gives 2 means and 3 standard deviations")):
        with pytest.raises(UserError, match=r"^--data-normalization" + (": " if "mean must" in said else ".*") + said):
            load_dataset("digits", normalization=bad)
    with pytest.raises(UserError, match=r"^--data-normalization resnet \(given, or recorded with the run\) has 3 "
                                        r"values, but the digits data has 1 channel: give --data-normalization with "
                                        r"one value or one for each$"):
        load_dataset("digits", normalization="resnet")
    np.savez(tmp_path / "f.npz", x_train=np.random.rand(6, 4).astype(np.float32), y_train=np.arange(6) % 2,
             x_test=np.random.rand(3, 4).astype(np.float32), y_test=np.arange(3) % 2)
    with pytest.raises(UserError, match=r"has 3 values, but the npz data in .*f\.npz has 4 features"):
        load_dataset("npz", str(tmp_path / "f.npz"), normalization="resnet")
    data = load_dataset("npz", str(tmp_path / "f.npz"), normalization="0,1,2,3/1")
    assert data.mean == (0.0, 1.0, 2.0, 3.0) and data.std == (1.0,) * 4


def test_runs_normalised_otherwise_are_other_data(tmp_path, capsys):
    """--data-normalization is recorded with the run, used by every later command on it, and tells runs apart:
    a record from before it existed reads as the standard one."""
    from landscape import cli
    from landscape.checkpoint import load_model
    from landscape.data import data_differs, why_data_differs
    from landscape.evaluate import evaluate_model

    from landscape.data import described

    a, b = (load_dataset("digits", normalization=n).describe() for n in ("0.5/0.25", "standard"))
    assert data_differs(a, b) == ["normalization"] and why_data_differs(a, b) == "they differ in normalization"
    assert described(a) == described(b)[:-1] + ", normalization 0.5/0.25)"  # messages tell the two apart
    assert data_differs(b, {k: v for k, v in b.items()}) == []
    for seed, norm in ((0, "0.5/0.25"), (1, "0.5/0.25"), (2, "standard")):
        cli.main(["train", "--out", str(tmp_path / str(seed)), "--epochs", "1", "--seed", str(seed), "--quiet",
                  "--data-normalization", norm])
    config = json.loads((tmp_path / "0" / "config.json").read_text())
    assert config["config"]["data_normalization"] == config["dataset"]["normalization"] == "0.5/0.25"
    assert config["threads"] == torch.get_num_threads()  # training rounds otherwise on another number of threads
    cli.main(["ensemble", str(tmp_path / "0" / "model.pt"), str(tmp_path / "1" / "model.pt"), "--out",
              str(tmp_path / "e"), "--quiet"])
    member = json.loads((tmp_path / "e" / "summary.json").read_text())["members"][0]
    net = load_model(tmp_path / "0" / "model.pt")
    mine = evaluate_model(net, load_dataset("digits", normalization="0.5/0.25"), "test")
    standard = evaluate_model(net, load_dataset("digits"), "test")
    assert member["test_nll"] == pytest.approx(mine["nll"], abs=1e-6) and abs(mine["nll"] - standard["nll"]) > 1e-3
    capsys.readouterr()
    assert cli.main(["ensemble", str(tmp_path / "0" / "model.pt"), str(tmp_path / "2" / "model.pt"), "--out",
                     str(tmp_path / "e2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and not (tmp_path / "e2").exists()
    assert "was trained on other data than" in err and "(data-normalization standard vs 0.5/0.25)" in err
    # a marked network's metrics were reported on the plane's data without a word; a complex's modes were
    # refused with the first mode's settings put down to the second
    for argv in (["plane", "--center", str(tmp_path / "0" / "model.pt"), "--mark", str(tmp_path / "2" / "model.pt"),
                  "--grid", "3", "--out", str(tmp_path / "p"), "--quiet"],
                 ["simplex", "--modes", str(tmp_path / "0" / "model.pt"), str(tmp_path / "2" / "model.pt"),
                  "--connectors", "1", "--epochs", "1", "--out", str(tmp_path / "sx"), "--quiet"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"landscape: error: {tmp_path / '2' / 'model.pt'} was trained on other data than "
                       f"{tmp_path / '0' / 'model.pt'} (data-normalization standard vs 0.5/0.25); give the data "
                       f"options explicitly to use the same data for both\n"), err


def test_ids_the_npz_route_would_alter_get_a_note(tmp_path, capsys):
    """uint8 token ids were divided by 255 (every id below 255 became 0, the padding id, after the network's
    cast to long) and int64 ids above 2**24 rounded by float32, both without a word: 68 % test error where
    int64 ids gave 16 %, and an NLL of other inputs than the file's. Each now gets a note; pixels (uint8
    images) and integers float32 holds exactly get none."""
    import landscape.errors as errors

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2

    def read(name, x, **extra):
        np.savez(tmp_path / name, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10], **extra)
        errors._NOTES_SAID.clear()
        ds = load_dataset("npz", data_path=tmp_path / name, normalization="0/1")
        return ds, capsys.readouterr().err

    ids = rng.integers(1, 200, size=(40, 12))
    ds, err = read("u8.npz", ids.astype(np.uint8))
    assert torch.equal(ds.x_train, torch.from_numpy(ids.astype(np.float32) / 255))  # read as documented
    assert "the inputs are uint8, which is read as pixels, value / 255" in err and "int16, int32 or int64" in err
    ds, err = read("i64.npz", ids.astype(np.int64))
    assert torch.equal(ds.x_train.long(), torch.from_numpy(ids)) and err == ""
    _, err = read("img.npz", rng.integers(0, 256, size=(40, 8, 8)).astype(np.uint8))  # pixels: no note
    assert err == ""
    big = 16_777_216 + rng.integers(0, 60_000_000, size=(40, 3))
    ds, err = read("big.npz", big)
    assert (ds.x_train.double().numpy() != big).any()  # float32 rounds them: what the note is about
    assert "holds integers up to" in err and "above 2**24 = 16,777,216" in err and "np.unique(x, return_inverse=True)" in err
    _, err = read("exact.npz", 16_777_216 - rng.integers(0, 1000, size=(40, 3)))
    assert err == ""
    for name in ("u8.npz", "big.npz"):  # standardised, ids would not survive anyway: features (flattened
        # pixels, timestamps) get no note
        errors._NOTES_SAID.clear()
        load_dataset("npz", data_path=tmp_path / name)
        assert capsys.readouterr().err == ""
