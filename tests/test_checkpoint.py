"""Checkpoints: round trip, atomic writes, foreign formats, clear errors."""

import math
import re
import io
import os
import pickle

import pytest
import torch
from torch import nn

from landscape.checkpoint import (
    FORMAT,
    atomic_save,
    load_checkpoint,
    load_model,
    read_jsonl,
    save_checkpoint,
    strip_prefixes,
)
from landscape.errors import UserError
from landscape.models import create_model

SPEC = {"name": "convnet", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8], "width": 8}}


def _net():
    torch.manual_seed(0)
    return create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=8)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_rebuilds_model_and_loads_weights_only(tmp_path):
    net = _net()
    path = save_checkpoint(tmp_path / "m.pt", net.state_dict(), SPEC, meta={"epoch": 3})
    raw = torch.load(path, weights_only=True)  # what a user would do
    assert raw["format"] == FORMAT and raw["model"]["name"] == "convnet" and raw["meta"]["epoch"] == 3
    ckpt = load_checkpoint(path)
    assert ckpt.model == SPEC and not ckpt.foreign
    rebuilt = load_model(path)
    assert _same(rebuilt.state_dict(), net.state_dict())
    x = torch.randn(4, 1, 8, 8)
    net.eval()
    assert torch.equal(rebuilt(x), net(x))


def test_load_model_leaves_the_callers_random_stream_alone(tmp_path):
    # Building the network initialises weights that the checkpoint's then replace; a notebook's
    # next draw must be the same whether or not it loaded a network first (every way of naming it).
    path = save_checkpoint(tmp_path / "m.pt", _net().state_dict(), SPEC)
    torch.save(_net().state_dict(), tmp_path / "bare.pt")
    torch.manual_seed(7)
    expected = torch.rand(5)
    for load in (lambda: load_model(path), lambda: load_model(path, "convnet"),
                 lambda: load_model(tmp_path / "bare.pt", "convnet", num_classes=10, input_shape=(1, 8, 8), width=8)):
        torch.manual_seed(7)
        net = load()
        assert torch.equal(torch.rand(5), expected)
        assert _same(net.state_dict(), _net().state_dict())


def test_a_lightning_checkpoint_loses_its_modules_attribute_name(tmp_path, capsys):
    sd = _net().state_dict()
    torch.save({"pytorch-lightning_version": "2.1.0", "epoch": 4,
                "state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "l.ckpt")
    net = load_model(tmp_path / "l.ckpt", "convnet", num_classes=10, input_shape=(1, 8, 8), width=8)
    assert _same(net.state_dict(), sd)
    assert "every key began with 'model.'" in capsys.readouterr().err
    # a dict whose keys would not all fit without the shared name is still refused, naming the key
    torch.save({"model.conv.weight": torch.zeros(1), **{f"model.{k}": v for k, v in sd.items()}}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="key '.*' is missing"):
        load_model(tmp_path / "x.pt", "convnet", num_classes=10, input_shape=(1, 8, 8), width=8)


def test_the_papers_checkpoints_that_are_not_one_network_are_named(tmp_path):
    sd = _net().state_dict()
    torch.save({"epoch": 10, "state_dict": sd, "swa_state_dict": sd, "swa_n": 3}, tmp_path / "swa.pt")
    with pytest.raises(UserError, match=r"SWA code .* two networks.*landscape import .* --key swa_state_dict"):
        load_checkpoint(tmp_path / "swa.pt")
    torch.save({"epoch": 10, "state_dict": sd, "swa_state_dict": None}, tmp_path / "sgd.pt")  # a run without --swa
    assert _same(load_checkpoint(tmp_path / "sgd.pt").state_dict, sd)
    curve = {"coeff_layer.binom": torch.ones(3), **{f"net.{k}_{i}": v for k, v in sd.items() for i in range(3)}}
    torch.save({"epoch": 600, "model_state": curve}, tmp_path / "curve.pt")
    with pytest.raises(UserError, match="a curve of dnn-mode-connectivity's code"):
        load_checkpoint(tmp_path / "curve.pt")
    swag = {f"base.{k}{s}": v for k, v in sd.items() for s in ("_mean", "_sq_mean")}
    torch.save({"state_dict": {**swag, "n_models": torch.tensor(5)}}, tmp_path / "swag.pt")
    with pytest.raises(UserError, match="SWAG moments of swa_gaussian's code"):
        load_checkpoint(tmp_path / "swag.pt")


def test_atomic_save_leaves_old_file_when_write_fails(tmp_path):
    target = tmp_path / "m.pt"
    target.write_text("old")

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save(failing, target)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind


def test_a_stop_inside_torch_save_is_the_stop_not_a_full_disk(tmp_path):
    """A SIGTERM met inside torch.save's zip writer came out as its RuntimeError ("unexpected pos"), which
    was read as a write cut short: "the write stopped short (a full disk or a quota?)", exit 2, not 143."""
    from landscape.errors import Terminated

    target = tmp_path / "last.pt"
    target.write_text("old")

    class Stopping(io.FileIO):
        writes = 0

        def write(self, b):  # the signal met a few records into the archive
            Stopping.writes += 1
            if Stopping.writes == 3:
                raise Terminated()
            return super().write(b)

    def write(tmp):
        with Stopping(tmp, "wb") as f:
            torch.save({"a": torch.zeros(1000)}, f)

    with pytest.raises(Terminated):
        atomic_save(write, target)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["last.pt"]


def test_a_temporary_file_another_process_cleared_is_said_so(tmp_path):
    """A writer without the folder's lock whose temporary file a command starting there cleared as stale
    failed with "<figure>: No such file or directory", as if the figure were the missing file."""
    target = tmp_path / "fig.png"
    target.write_text("old")

    def cleared(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        os.unlink(tmp)  # what claim_folder's clean-up did to it

    with pytest.raises(OSError, match="another process removed the temporary file this write was filling") as e:
        atomic_save(cleared, target)
    assert e.value.filename == str(target) and target.read_text() == "old"

    def missing(tmp):
        open(tmp_path / "no" / "such", "rb")  # a file of the write's own that is missing: said as it is

    with pytest.raises(FileNotFoundError, match="No such file or directory") as e:
        atomic_save(missing, target)
    assert e.value.filename == str(tmp_path / "no" / "such") and os.listdir(tmp_path) == ["fig.png"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_are_as_readable_as_the_umask_makes_new_files(tmp_path, umask):
    # mkstemp makes its temporary file 0600: moved into place as it is, a checkpoint on a shared
    # machine would be unreadable to the group whatever the user's umask says.
    before = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "m.pt", _net().state_dict(), SPEC)
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # a file made the ordinary way
    finally:
        os.umask(before)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask == os.stat(plain).st_mode & 0o777


@pytest.mark.parametrize("wrap", ["bare", "model_state", "state_dict", "module_prefix", "compile_prefix", "ddp_compile"])
def test_foreign_formats_load(tmp_path, wrap):
    net = _net()
    sd = net.state_dict()
    if wrap == "bare":
        obj = sd
    elif wrap == "model_state":  # dnn-mode-connectivity: {'epoch', 'model_state', 'optimizer_state'}
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        obj = {"epoch": 5, "model_state": sd, "optimizer_state": opt.state_dict()}
    elif wrap == "state_dict":
        obj = {"state_dict": sd, "epoch": 1}
    elif wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "compile_prefix":
        obj = {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}
    else:
        obj = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    torch.save(obj, tmp_path / "f.pt")
    ckpt = load_checkpoint(tmp_path / "f.pt")
    assert ckpt.foreign
    assert _same(ckpt.state_dict, sd)
    loaded = load_model(ckpt, "convnet", num_classes=10, input_shape=(1, 8, 8), width=8)
    assert _same(loaded.state_dict(), sd)


def test_strip_prefixes_only_strips_leading_wrappers():
    sd = {"module.features.module.x": torch.zeros(1)}
    assert list(strip_prefixes(sd)) == ["features.module.x"]


def test_mismatch_names_first_key_and_both_shapes(tmp_path):
    save_checkpoint(tmp_path / "w8.pt", _net().state_dict(), SPEC)
    other = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=16)
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "w8.pt", other)
    msg = str(err.value)
    assert "\n" not in msg
    first_key = next(iter(other.state_dict()))
    assert f"'{first_key}'" in msg
    assert str(tuple(_net().state_dict()[first_key].shape)) in msg
    assert str(tuple(other.state_dict()[first_key].shape)) in msg


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = _net().state_dict()
    missing = dict(sd)
    key = sorted(missing)[0]
    del missing[key]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(UserError, match=f"'{key}' is missing"):
        load_model(tmp_path / "missing.pt", _net())
    extra = dict(sd, **{"head.extra": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="unexpected key 'head.extra'"):
        load_model(tmp_path / "extra.pt", _net())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


# The payload is a protocol-4 pickle, which torch.load warns about before refusing it.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_refuses_arbitrary_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(UserError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    # The same through torch.save's zip format.
    torch.save({"model_state": {"w": torch.zeros(1)}, "extra": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(UserError, match="refusing"):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not (tmp_path / "PWNED").exists()


def test_missing_corrupt_and_weightless_files(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    # Text read by torch's legacy reader raises IndexError / KeyError inside torch; a truncated
    # zip, its "central directory" error (the first sentence only, not torch's advice after it).
    for name, content in (("text.pt", b"text\n"), ("hello.pt", b"hello world"), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match="not a readable torch checkpoint") as caught:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(caught.value)
    torch.save(_net().state_dict(), tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:100])
    with pytest.raises(UserError) as caught:
        load_checkpoint(tmp_path / "cut.pt")
    assert str(caught.value).endswith("failed finding central directory)"), str(caught.value)
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "noweights.pt")
    with pytest.raises(UserError, match="no model weights found"):
        load_checkpoint(tmp_path / "noweights.pt")
    with pytest.raises(UserError, match="folder"):
        load_checkpoint(tmp_path)
    # A later format is not mistaken for a foreign checkpoint.
    torch.save({"format": "landscape/9", "state_dict": _net().state_dict()}, tmp_path / "later.pt")
    with pytest.raises(UserError, match=r"later.pt: written by another version of landscape \(format landscape/9; "
                                        r"this one reads landscape/1\)$"):
        load_checkpoint(tmp_path / "later.pt")


def test_nan_weights_are_refused_naming_the_file_and_key(tmp_path):
    """A diverged run's weights would turn every point they are combined with
    NaN (0 x NaN); landscape and foreign checkpoints alike are refused."""
    sd = _net().state_dict()
    sd["classifier.weight"][3, 1] = float("nan")
    save_checkpoint(tmp_path / "mine.pt", sd, SPEC)
    torch.save(sd, tmp_path / "foreign.pt")
    for name in ("mine.pt", "foreign.pt"):
        with pytest.raises(UserError, match=r"mine|foreign") as caught:
            load_checkpoint(tmp_path / name)
        assert str(caught.value) == (f"{tmp_path / name}: 1 NaN value in 'classifier.weight' "
                                     f"(the run that wrote it diverged?); refusing to use it")
    sd["classifier.weight"][3, 1] = float("inf")  # not refused here: a foreign buffer may hold a -inf mask
    save_checkpoint(tmp_path / "inf.pt", sd, SPEC)
    assert torch.isinf(load_checkpoint(tmp_path / "inf.pt").state_dict["classifier.weight"]).sum() == 1


def test_foreign_checkpoint_needs_a_model_name(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(UserError, match="--model"):
        load_model(tmp_path / "bare.pt")


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_jsonl(p) == [{"epoch": 1}, {"epoch": 2}]


def test_any_module_round_trips_through_load_model(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    torch.save({"model_state": net.state_dict()}, tmp_path / "seq.pt")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    loaded = load_model(tmp_path / "seq.pt", fresh)
    assert _same(loaded.state_dict(), net.state_dict())


def test_a_checkpoint_naming_a_factory_does_not_run_it_unless_trusted(tmp_path, monkeypatch):
    """The stored model name is data: 'os:system' must not be called on loading."""
    marker = tmp_path / "ran"
    spec = {"name": "os:system", "kwargs": {"command": f"touch {marker}", "num_classes": 10, "input_shape": [1, 8, 8]}}
    save_checkpoint(tmp_path / "evil.pt", _net().state_dict(), spec)
    with pytest.raises(UserError, match=r"names the model factory 'os:system'; a checkpoint may name only a "
                                        r"registered model, so it is not imported: if you trust it, name it "
                                        r"yourself \(--model os:system; model= in Python\) or set "
                                        r"LANDSCAPE_TRUSTED_FACTORIES=os$"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()
    # A factory the user trusts (by module or a parent package) is built as before.
    factory = dict(SPEC, name="landscape.models.simple:convnet")
    save_checkpoint(tmp_path / "mine.pt", _net().state_dict(), factory)
    with pytest.raises(UserError, match="LANDSCAPE_TRUSTED_FACTORIES=landscape.models.simple"):
        load_model(tmp_path / "mine.pt")
    # Naming the checkpoint's own factory (--model) trusts it, and keeps its stored options (width 8, not
    # the factory's default), as a caller that passes the dataset's shape does (plane, rays, ensemble).
    for shape in ({}, {"num_classes": 10, "input_shape": (1, 8, 8)}):
        assert _same(load_model(tmp_path / "mine.pt", factory["name"], **shape).state_dict(), _net().state_dict())
    with pytest.raises(UserError, match=r"was built for input \(1, 8, 8\) and 10 classes, but the dataset has "
                                        r"\(3, 8, 8\) and 10"):
        load_model(tmp_path / "mine.pt", factory["name"], num_classes=10, input_shape=(3, 8, 8))
    monkeypatch.setenv("LANDSCAPE_TRUSTED_FACTORIES", "mypkg, landscape.models")
    assert _same(load_model(tmp_path / "mine.pt").state_dict(), _net().state_dict())


def test_foreign_state_dicts_from_before_num_batches_tracked_load(tmp_path):
    """PyTorch < 0.4.1 saved batch norm without num_batches_tracked; torch loads such dicts, so do we."""
    sd = {k: v for k, v in _net().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"model_state": sd}, tmp_path / "old.pt")
    net = load_model(tmp_path / "old.pt", "convnet", num_classes=10, input_shape=(1, 8, 8), width=8)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    # any other missing key is still refused
    del sd["classifier.bias"]
    torch.save(sd, tmp_path / "cut.pt")
    with pytest.raises(UserError, match="key 'classifier.bias' is missing"):
        load_model(tmp_path / "cut.pt", "convnet", num_classes=10, input_shape=(1, 8, 8), width=8)


def test_a_model_entry_without_its_data_shape_is_one_line(tmp_path):
    from landscape.checkpoint import FORMAT

    # save_checkpoint refuses to write such a file (it did, and the file then failed to load)...
    with pytest.raises(UserError, match=r"m\.pt: not saved: model must be \{'name': str, 'kwargs': \{\.\.\., "
                                        r"'num_classes': N, 'input_shape': \[C, H, W\]\}\}"):
        save_checkpoint(tmp_path / "m.pt", _net().state_dict(), {"name": "convnet", "kwargs": {"width": 8}})
    assert not (tmp_path / "m.pt").exists()
    # ...and one written otherwise is one line on loading
    torch.save({"format": FORMAT, "kind": "model", "model": {"name": "convnet", "kwargs": {"width": 8}},
                "state_dict": _net().state_dict(), "meta": {}}, tmp_path / "m.pt")
    with pytest.raises(UserError, match="without a valid 'model' entry"):
        load_checkpoint(tmp_path / "m.pt")


def test_claiming_a_folder_removes_temporary_files_a_killed_write_left(tmp_path, monkeypatch):
    from landscape.checkpoint import claim_folder

    out = tmp_path / "run"
    out.mkdir()
    import time

    from landscape.checkpoint import FRESH_FIGURE_S

    (out / ".curve.png.dz4q03_f.tmp").write_bytes(b"half a figure")  # a process killed inside atomic_save
    old = time.time() - FRESH_FIGURE_S - 1  # a figure's younger one may be a plot's drawing now (no lock)
    os.utime(out / ".curve.png.dz4q03_f.tmp", (old, old))
    (out / ".last.pt.k1ll3d0a.tmp").write_bytes(b"half a checkpoint")  # any age: only lock holders write those
    (out / "curve.npz").write_bytes(b"kept")
    (out / "notes.tmp").write_text("the user's own file: not one of ours (no leading dot)")
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 writes, so another rank must not clean
    monkeypatch.setenv("WORLD_SIZE", "2")
    claim_folder(out, "curve")
    assert (out / ".curve.png.dz4q03_f.tmp").exists() and (out / ".last.pt.k1ll3d0a.tmp").exists()
    monkeypatch.delenv("WORLD_SIZE")  # a RANK left without WORLD_SIZE is no torchrun worker's: rank 0
    claim_folder(out, "curve")
    assert sorted(p.name for p in out.iterdir()) == ["curve.npz", "notes.tmp"]


def test_an_out_below_a_file_is_one_line(tmp_path):
    from landscape.checkpoint import claim_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=f"^--out {tmp_path}/file/sub/run cannot be made: {tmp_path}/file is a "
                                        f"file, not a folder$"):
        claim_folder(tmp_path / "file" / "sub" / "run", "train")


def _flip_a_weight_byte(path) -> None:
    """Change one bit inside the first tensor record of a torch zip checkpoint."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 0)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(raw))


def test_a_changed_bit_in_a_checkpoint_is_refused_not_read_as_other_weights(tmp_path):
    """torch.load reads past a flipped bit (its zip reader skips the CRC): the
    checksum stored in the file is checked first."""
    path = save_checkpoint(tmp_path / "m.pt", _net().state_dict(), SPEC)
    assert load_checkpoint(path).state_dict  # intact: reads
    _flip_a_weight_byte(path)
    assert torch.load(path, weights_only=True)["state_dict"]  # what torch alone does: reads other weights
    with pytest.raises(UserError, match=r"m\.pt: damaged: its record data/\d+ no longer matches the checksum"):
        load_checkpoint(path)


def test_a_checkpoint_written_without_checksums_still_loads(tmp_path):
    """torch.save can be told to skip the CRC (it then stores 0): such a file is not called damaged."""
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"model_state": _net().state_dict()}, tmp_path / "fast.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert _same(load_checkpoint(tmp_path / "fast.pt").state_dict, _net().state_dict())


def test_a_write_that_fails_names_the_file_not_its_temporary(tmp_path):
    import errno

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as f.write raises it: no file named

    def torch_cut_short(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3904 vs 3792")

    with pytest.raises(OSError) as raised:
        atomic_save(full, tmp_path / "a.npz")
    assert raised.value.filename == str(tmp_path / "a.npz") and raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as raised:
        atomic_save(torch_cut_short, tmp_path / "last.pt")
    assert raised.value.filename == str(tmp_path / "last.pt") and "inline_container" not in str(raised.value)
    def read_only(tmp):  # as a folder without write rights refuses the temporary file
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), tmp)

    with pytest.raises(PermissionError) as raised:
        atomic_save(read_only, tmp_path / "summary.json")
    assert raised.value.filename == str(tmp_path / "summary.json")
    with pytest.raises(RuntimeError, match="something else"):  # any other error of the writer is its own
        atomic_save(lambda tmp: (_ for _ in ()).throw(RuntimeError("something else")), tmp_path / "b.pt")
    assert sorted(os.listdir(tmp_path)) == []


def test_a_checkpoint_cut_short_by_a_file_size_limit_is_one_line(tmp_path):
    """A full disk, a quota or ``ulimit -f`` stops torch.save halfway: its
    zip writer's RuntimeError (a 47-line traceback) becomes one line naming
    the file, and the run goes on with --resume once there is room."""
    import resource
    import subprocess
    import sys

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, resource.RLIM_INFINITY))

    argv = [sys.executable, "-m", "landscape", "train", "--out", str(tmp_path / "run"), "--epochs", "2", "--quiet"]
    cut = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=limited)
    assert cut.returncode == 2 and cut.stderr.count("\n") == 1, cut.stderr
    assert cut.stderr.startswith(f"landscape: error: {tmp_path / 'run' / 'last.pt'}: File too large"), cut.stderr
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written temporary left
    again = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "run" / "model.pt").exists(), again.stderr


def test_read_jsonl_refuses_a_damaged_line_that_is_not_the_last(tmp_path):
    """A resume rewrites metrics.jsonl from what it read: a damaged record in
    the middle is one line naming the file and the line, not a crash
    (UnicodeDecodeError, AttributeError) or a record silently dropped."""
    p = tmp_path / "metrics.jsonl"
    for middle in (b'\xff\xfe{"epoch": 2}', b'[2, 3]', b'"text"', b'{"epoch": 2'):
        p.write_bytes(b'{"epoch": 1}\n' + middle + b'\n{"epoch": 3}\n')
        with pytest.raises(UserError, match=r"metrics\.jsonl: line 2 is not a record"):
            read_jsonl(p)
    p.write_bytes(b'{"epoch": 1}\n\n{"epoch": 2}\n{"epoch": 3, "x": "\xc3')  # torn inside a character
    assert read_jsonl(p) == [{"epoch": 1}, {"epoch": 2}]
    assert read_jsonl(tmp_path / "none.jsonl") == []


def test_folder_locks_refuse_a_second_holder_and_leave_no_trace(tmp_path):
    """Inside folder_locks() a claimed folder is this process's: another
    process's claim is refused (here, a second descriptor on the same lock,
    as flock counts it); at the end the lock file goes, and so do the
    folders the claim made if nothing was written in them."""
    import fcntl

    from landscape.checkpoint import LOCK, claim_folder, folder_locks, writer_of

    deep = tmp_path / "a" / "b" / "c"
    kept = tmp_path / "kept"
    with pytest.raises(UserError, match="refused later"):
        with folder_locks():
            claim_folder(deep, "train")
            claim_folder(deep, "train")  # the same process again: already held
            claim_folder(kept, "train")
            (kept / "config.json").write_text("{}")
            assert writer_of(deep) is None  # not another process's
            other = os.open(deep / LOCK, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):  # what a second process meets
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(other)
            raise UserError("refused later")
    assert not (tmp_path / "a").exists()  # made by the claim, nothing written: gone
    assert sorted(p.name for p in kept.iterdir()) == ["config.json"]  # written: kept, without the lock file
    claim_folder(tmp_path / "free", "train")  # outside folder_locks: no lock taken
    assert not (tmp_path / "free").exists()


def test_a_folders_files_the_package_did_not_write_are_left_and_a_stale_lock_of_another_user_replaced(
        tmp_path, monkeypatch):
    """Any .*.tmp in --out was deleted (a user's own .notes.tmp, even when the command was then refused); a lock
    file this process could not open (another user's, left by a kill) made it write unlocked beside a second
    run; a folder of another command's results without its config.json was taken over; a byte-order mark made
    config.json 'damaged'."""
    import errno
    import fcntl
    import json

    import landscape.checkpoint as checkpoint_module
    from landscape.checkpoint import LOCK, claim_folder, folder_locks, read_json, stored_config

    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes.tmp").write_text("mine")
    (out / ".notes.20240101.tmp").write_text("mine too")
    (out / ".model.pt.k2x_9abq.tmp").write_bytes(b"half")  # what atomic_save leaves when killed
    claim_folder(out, "train")
    assert sorted(p.name for p in out.iterdir()) == [".notes.20240101.tmp", ".notes.tmp"]

    real_open = os.open
    denied = []

    def open_denied_once(path, flags, *args):  # the lock file is another user's, mode 644: not ours to write
        if str(path).endswith(LOCK) and flags & os.O_RDWR and not denied:
            denied.append(path)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(checkpoint_module.os, "open", open_denied_once)
    (out / LOCK).write_text("4242\n")  # stale: nobody holds it
    with folder_locks():
        claim_folder(out, "train")
        assert denied and (out / LOCK).read_text().strip() == str(os.getpid())  # replaced, and held by us
    denied.clear()
    (out / LOCK).write_text("4242\n")
    holder = real_open(out / LOCK, os.O_RDWR)  # held, as another user's running process holds it
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(UserError, match=r"is in use by another landscape process"):
            with folder_locks():
                claim_folder(out, "train")
    finally:
        os.close(holder)

    def open_denied(path, flags, *args):  # not even readable (its owner's umask 077): whether held is unknown
        if str(path).endswith(LOCK):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(checkpoint_module.os, "open", open_denied)
    with pytest.raises(UserError, match=r"another user's lock file, which this process can neither open nor check "
                                        r"\(Permission denied\); remove it if no landscape process uses"):
        with folder_locks():
            claim_folder(out, "train")
    assert (out / LOCK).exists()  # not removed: it may be held
    monkeypatch.undo()

    copied = tmp_path / "copied"  # a plane's results copied without their config.json
    copied.mkdir()
    (copied / "plane.npz").write_bytes(b"x")
    (copied / "summary.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds the results of another command \(plane.npz, plane's\)"):
        claim_folder(copied, "curve")
    claim_folder(copied, "plane")  # its own command's: left to its checks

    (out / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"command": "train"}).encode())
    assert stored_config(out) == {"command": "train"} and read_json(out / "config.json") == {"command": "train"}


def test_a_checkpoint_write_that_torch_cuts_short_on_its_last_bytes_is_a_full_disk():
    from landscape.checkpoint import _cut_short

    assert _cut_short(RuntimeError("basic_ios::clear: iostream error"))  # a traceback, where the others were one line
    assert not _cut_short(RuntimeError("CUDA error: out of memory"))


def _convnets(count: int) -> list[nn.Module]:
    """``count`` width-4 digits convnets from seeds 1, 2, ...: a curve's start, bends and end."""
    nets = []
    for seed in range(1, count + 1):
        torch.manual_seed(seed)
        nets.append(create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4))
    return nets


def _papers_curve(anchors: list[dict], net: nn.Module, bezier: bool, own_names: bool = False) -> dict:
    """A dnn-mode-connectivity CurveNet state dict of ``net``'s architecture with bends ``anchors``: per module
    its weights of every bend, then its biases, then its buffers (their curve modules' order), under names of
    its own (``block<k>``: VGG's curve network names its classifier fc1, fc2, fc3)."""
    n = len(anchors)
    state = {"coeff_layer.range": torch.arange(0.0, n)}
    if bezier:
        state = {"coeff_layer.binom": torch.tensor([math.comb(n - 1, k) for k in range(n)], dtype=torch.float32),
                 **state, "coeff_layer.rev_range": torch.arange(n - 1.0, -1, -1)}
    for k, (name, module) in enumerate(net.named_modules()):
        own = dict(module.named_parameters(recurse=False))
        called = name if own_names else f"block{k}"
        for p in own:
            for i, anchor in enumerate(anchors):
                state[f"net.{called}.{p}_{i}"] = anchor[f"{name}.{p}" if name else p].clone()
        for b, value in module.named_buffers(recurse=False):
            state[f"net.{called}.{b}"] = value.clone() + (1.0 if value.is_floating_point() else 0)
    return state


@pytest.mark.parametrize("bezier", [True, False])
def test_import_makes_a_papers_curve_a_curve_checkpoint_matched_by_position(tmp_path, bezier):
    from landscape.curves.fit import load_curve
    from landscape.importing import import_checkpoint
    from landscape.weights import ParamSpace

    nets = _convnets(4)
    anchors = [n.state_dict() for n in nets]  # start, two bends, end: their num_bends 4
    torch.save({"epoch": 600, "model_state": _papers_curve(anchors, nets[0], bezier)}, tmp_path / "curve-600.pt")
    with pytest.raises(UserError, match="a curve of dnn-mode-connectivity's code.*landscape import"):
        load_checkpoint(tmp_path / "curve-600.pt")
    out = import_checkpoint(tmp_path / "curve-600.pt", tmp_path / "c.pt", model="convnet", model_kwargs={"width": 4},
                            dataset="digits")
    loaded = load_curve(out)
    space = ParamSpace.of(loaded.model)
    assert loaded.curve.name == ("bezier" if bezier else "polychain") and loaded.curve.bends == 2
    expected = torch.stack([space.flatten(a) for a in anchors])
    assert torch.equal(loaded.curve.anchors().detach(), expected)  # every bend where the file had it
    t = torch.tensor([0.3], dtype=torch.float64)
    if bezier:  # their Bernstein basis, written out
        c = [math.comb(3, k) * 0.3 ** k * 0.7 ** (3 - k) for k in range(4)]
    else:  # their polygonal chain: t = 0.3 lies between the bends at 0 and 1/3
        c = [0.1, 0.9, 0.0, 0.0]
    point = sum(ci * a.double() for ci, a in zip(c, expected))
    torch.testing.assert_close(loaded.curve.points(t)[0].double(), point, rtol=0, atol=1e-6)
    bn = next(k for k in anchors[0] if k.endswith("running_mean"))
    assert torch.equal(loaded.model.state_dict()[bn], anchors[0][bn] + 1)  # buffers by position too
    from landscape.inputs import DATA_FIELDS, check_same_data
    from landscape.train import TrainConfig

    trained_here = {k: TrainConfig().to_json()[k] for k in DATA_FIELDS}  # as train records digits
    assert load_checkpoint(out).meta["train_config"] == trained_here  # later commands' data
    # the same data as a network trained here on digits (val-size 0 against None refused them as other data)
    run = save_checkpoint(tmp_path / "run.pt", nets[0].state_dict(), SPEC | {"kwargs": {**SPEC["kwargs"], "width": 4}},
                          meta={"train_config": TrainConfig().to_json()})
    check_same_data([load_checkpoint(out), load_checkpoint(run)])
    check_same_data([load_checkpoint(run), load_checkpoint(out)])
    # another architecture: one line, before anything is written; an existing --out is not overwritten
    with pytest.raises(UserError, match="bend 0's parameters: 11 in the file, 6 in model 'mlp': is --model the architecture"):
        import_checkpoint(tmp_path / "curve-600.pt", tmp_path / "x.pt", model="mlp", dataset="digits")
    with pytest.raises(UserError, match=r"net.block2.weight_0 has shape \(4, 1, 3, 3\), and the tensor it stands for in model 'convnet', "
                       r"features.0.weight, \(8, 1, 3, 3\)"):
        import_checkpoint(tmp_path / "curve-600.pt", tmp_path / "x.pt", model="convnet", model_kwargs={"width": 8},
                          dataset="digits")
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(UserError, match="already exists"):
        import_checkpoint(tmp_path / "curve-600.pt", out, model="convnet", model_kwargs={"width": 4}, dataset="digits")


def test_import_takes_the_network_under_key_and_records_its_model(tmp_path):
    from landscape.importing import import_checkpoint

    sgd, swa = _net().state_dict(), {k: v + 1 if v.is_floating_point() else v for k, v in _net().state_dict().items()}
    torch.save({"epoch": 10, "state_dict": sgd, "swa_state_dict": swa, "swa_n": 3}, tmp_path / "checkpoint-10.pt")
    with pytest.raises(UserError, match="two networks.*name the one to import with --key"):
        import_checkpoint(tmp_path / "checkpoint-10.pt", tmp_path / "a.pt", model="convnet", model_kwargs={"width": 8},
                          dataset="digits")
    with pytest.raises(UserError, match="no state dict under --key 'swa'; the file holds 'epoch', 'state_dict'"):
        import_checkpoint(tmp_path / "checkpoint-10.pt", tmp_path / "a.pt", model="convnet", key="swa", dataset="digits")
    with pytest.raises(UserError, match="import records the data the network was trained on: give --dataset"):
        import_checkpoint(tmp_path / "checkpoint-10.pt", tmp_path / "a.pt", model="convnet", key="swa_state_dict")
    out = import_checkpoint(tmp_path / "checkpoint-10.pt", tmp_path / "a.pt", model="convnet",
                            model_kwargs={"width": 8}, key="swa_state_dict", dataset="digits")
    assert load_checkpoint(out).meta["key"] == "swa_state_dict" and "wd" not in load_checkpoint(out).meta["train_config"]
    weighed = import_checkpoint(tmp_path / "checkpoint-10.pt", tmp_path / "w.pt", model="convnet",
                                model_kwargs={"width": 8}, key="swa_state_dict", dataset="digits", wd=3e-4)
    assert load_checkpoint(weighed).meta["train_config"]["wd"] == 3e-4  # the train loss's term in evaluations
    assert _same(load_model(out).state_dict(), swa)  # rebuilt without naming the model
    with pytest.raises(UserError, match="already a landscape checkpoint"):
        import_checkpoint(out, tmp_path / "b.pt", model="convnet", dataset="digits")


def test_import_from_the_command_line_then_curve_reads_it_alone(tmp_path, capsys):
    from landscape import cli

    nets = _convnets(3)
    torch.save({"model_state": _papers_curve([n.state_dict() for n in nets], nets[0], True)}, tmp_path / "c.pt")
    assert cli.main(["import", str(tmp_path / "c.pt"), "--model", "convnet", "--model-kwargs", "width=4",
                     "--out", str(tmp_path / "mine.pt")]) == 2  # the data it was trained on is not guessed
    assert "give --dataset" in capsys.readouterr().err
    assert cli.main(["import", str(tmp_path / "c.pt"), "--model", "convnet", "--model-kwargs", "width=4",
                     "--dataset", "digits", "--data-normalization", "0.5/0.25", "--out",
                     str(tmp_path / "mine.pt")]) == 0
    assert "a bezier curve with 1 bend (evaluate it: landscape curve --ckpt" in capsys.readouterr().out
    assert not (tmp_path / "nowhere").exists()
    assert cli.main(["curve", "--ckpt", str(tmp_path / "mine.pt"), "--points", "3", "--out", str(tmp_path / "ev"),
                     "--quiet"]) == 0  # no --model, no data options: the import recorded them
    import json

    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["bends"] == 1 and s["dataset"]["name"] == "digits" and s["points"] == 3
    assert s["dataset"]["normalization"] == "0.5/0.25"  # as it was trained: recorded by the import
    # a curve in a notebook's load_model gave its start network without a word
    with pytest.raises(UserError, match=r"mine\.pt: a curve checkpoint, which holds several networks, not one; load "
                                        r"it with landscape\.curves\.load_curve\(path\)"):
        load_model(tmp_path / "mine.pt")
    from landscape.variational import posterior_net  # vi-eval's: a curve was "no posterior; make one with vi"

    with pytest.raises(UserError, match=r"mine\.pt: a curve \(between posteriors, from vi-connect, or between "
                                        r"networks\), not one posterior; evaluate it with landscape curve --ckpt "):
        posterior_net(load_checkpoint(tmp_path / "mine.pt"), "cpu", None)


def test_import_matches_by_name_first_so_a_file_resaved_with_sorted_keys_is_read_right(tmp_path):
    """Keys sorted alphabetically put a batch-norm layer's bias before its weight (the same shape): matched by
    position alone they were swapped without a word."""
    from landscape.curves.fit import load_curve
    from landscape.importing import import_checkpoint
    from landscape.weights import ParamSpace

    nets = _convnets(3)
    anchors = [n.state_dict() for n in nets]
    state = _papers_curve(anchors, nets[0], True, own_names=True)
    torch.save({"model_state": dict(sorted(state.items()))}, tmp_path / "sorted.pt")
    loaded = load_curve(import_checkpoint(tmp_path / "sorted.pt", tmp_path / "c.pt", model="convnet",
                                          model_kwargs={"width": 4}, dataset="digits"))
    space = ParamSpace.of(loaded.model)
    assert torch.equal(loaded.curve.anchors().detach(), torch.stack([space.flatten(a) for a in anchors]))
    # named otherwise and sorted: the order that would match them is lost, and said so
    renamed = _papers_curve(anchors, nets[0], True)
    torch.save({"model_state": dict(sorted(renamed.items()))}, tmp_path / "renamed-sorted.pt")
    with pytest.raises(UserError, match="named otherwise than in model 'convnet' and stored in alphabetical order"):
        import_checkpoint(tmp_path / "renamed-sorted.pt", tmp_path / "d.pt", model="convnet", model_kwargs={"width": 4},
                          dataset="digits")
    # some names the same as the model's but of other layers (indices shifted): the file's order decides, as in
    # the papers' import_base_parameters (a name taken first refused this curve, or could swap layers)
    shifted = {k.replace("net.block", "net.features."): v for k, v in renamed.items()}
    torch.save({"model_state": shifted}, tmp_path / "shifted.pt")
    loaded = load_curve(import_checkpoint(tmp_path / "shifted.pt", tmp_path / "e.pt", model="convnet",
                                          model_kwargs={"width": 4}, dataset="digits"))
    assert torch.equal(loaded.curve.anchors().detach(), torch.stack([space.flatten(a) for a in anchors]))
    # partly re-ordered (each batch-norm layer's biases before its weights, of one shape), named otherwise in
    # places: matched by name where named alike, the rest by the order of their names (positions swapped them)
    mixed = {k.replace("net.block1.", "net.features.1."): v for k, v in state.items()}  # one layer renamed
    order = sorted(mixed, key=lambda k: (k.rsplit(".", 1)[0], "weight" in k))  # biases first, per module
    torch.save({"model_state": {k: mixed[k] for k in order}}, tmp_path / "partly.pt")
    loaded = load_curve(import_checkpoint(tmp_path / "partly.pt", tmp_path / "f.pt", model="convnet",
                                          model_kwargs={"width": 4}, dataset="digits"))
    assert torch.equal(loaded.curve.anchors().detach(), torch.stack([space.flatten(a) for a in anchors]))
    # a CurveNet inside a wrapper (a Lightning module's model.), and one of two bends (a line)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    loaded = load_curve(import_checkpoint(tmp_path / "wrapped.pt", tmp_path / "g.pt", model="convnet",
                                          model_kwargs={"width": 4}, dataset="digits"))
    assert torch.equal(loaded.curve.anchors().detach(), torch.stack([space.flatten(a) for a in anchors]))
    line = _papers_curve([anchors[0], anchors[-1]], nets[0], False, own_names=True)
    torch.save({"model_state": line}, tmp_path / "line.pt")
    loaded = load_curve(import_checkpoint(tmp_path / "line.pt", tmp_path / "h.pt", model="convnet",
                                          model_kwargs={"width": 4}, dataset="digits"))
    assert loaded.curve.bends == 0 and loaded.curve.anchors().shape[0] == 2


def test_import_makes_swa_gaussians_swag_moments_a_swag_checkpoint(tmp_path):
    """Its SWAG module's state dict, written out here by its collect_model's recipe (running means, the
    deviation from the mean just updated, the last K kept), read back as the moments swa --swag-rank keeps."""
    from landscape.importing import import_checkpoint
    from landscape.swag import load_swag
    from landscape.weights import ParamSpace

    torch.manual_seed(0)
    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    space = ParamSpace.of(net)
    iterates = [space.flatten(net.state_dict()).double() + 0.1 * torch.randn(space.numel, dtype=torch.float64)
                for _ in range(6)]
    mean, sq, devs, k = torch.zeros(space.numel, dtype=torch.float64), torch.zeros(space.numel, dtype=torch.float64), [], 4
    for n, w in enumerate(iterates):
        mean = mean * n / (n + 1) + w / (n + 1)
        sq = sq * n / (n + 1) + w ** 2 / (n + 1)
        devs = (devs + [w - mean])[-k:]
    state, at = {"n_models": torch.tensor([6])}, 0
    for name, shape in zip(space.names, space.shapes):
        size = int(torch.Size(shape).numel())
        state[f"base.{name}_mean"] = mean[at:at + size].float().reshape(shape)
        state[f"base.{name}_sq_mean"] = sq[at:at + size].float().reshape(shape)
        state[f"base.{name}_cov_mat_sqrt"] = torch.stack([d[at:at + size] for d in devs]).float()
        at += size
    for name, value in net.named_buffers():
        state[f"base.{name}"] = value.clone()
    torch.save({"epoch": 300, "state_dict": state}, tmp_path / "swag-300.pt")
    with pytest.raises(UserError, match="SWAG moments of swa_gaussian's code.*landscape import"):
        load_checkpoint(tmp_path / "swag-300.pt")
    out = import_checkpoint(tmp_path / "swag-300.pt", tmp_path / "swag.pt", model="convnet", model_kwargs={"width": 4},
                            dataset="digits")
    post, swa_net, _ = load_swag(out)
    assert post.averaged == 6 and post.deviations.shape == (4, space.numel)
    torch.testing.assert_close(post.mean, mean.float().double(), rtol=0, atol=0)
    torch.testing.assert_close(post.sq_mean, sq.float().double(), rtol=0, atol=0)
    torch.testing.assert_close(post.deviations, torch.stack(devs).float(), rtol=0, atol=0)
    torch.testing.assert_close(space.flatten(swa_net.state_dict()), mean.float(), rtol=0, atol=0)  # the SWA network


def test_import_reads_a_file_whose_batch_norm_layers_are_renamed_and_keep_biases_first(tmp_path):
    """The names shared with the model (bias-free convolutions) came in the model's order, so the file was
    taken as in order and paired by position, while every renamed batch-norm layer held its biases before
    its weights (one shape): swapped without a word. A module's bias before its weight means re-ordered."""
    from landscape.curves.fit import load_curve
    from landscape.importing import import_checkpoint
    from landscape.weights import ParamSpace

    nets = _convnets(3)
    anchors = [n.state_dict() for n in nets]
    state = _papers_curve(anchors, nets[0], True, own_names=True)
    bns = {k.split(".")[2] for k in state if k.startswith("net.features.") and "running_mean" in k}
    renamed = {}
    for k, v in state.items():
        parts = k.split(".")
        renamed[f"net.bn{parts[2]}.{'.'.join(parts[3:])}" if parts[1:2] == ["features"] and parts[2] in bns
                else k] = v
    by_module: dict[str, list[str]] = {}
    for k in renamed:
        by_module.setdefault(k.rsplit(".", 1)[0], []).append(k)
    keys = [k for m, ks in by_module.items() for k in (sorted(ks) if m.startswith("net.bn") else ks)]  # bias_ first
    torch.save({"model_state": {k: renamed[k] for k in keys}}, tmp_path / "bn-renamed.pt")
    loaded = load_curve(import_checkpoint(tmp_path / "bn-renamed.pt", tmp_path / "c.pt", model="convnet",
                                          model_kwargs={"width": 4}, dataset="digits"))
    space = ParamSpace.of(loaded.model)
    assert torch.equal(loaded.curve.anchors().detach(), torch.stack([space.flatten(a) for a in anchors]))


def test_a_checkpoint_recording_no_settings_is_not_taken_as_trained_on_the_defaults(tmp_path):
    """Settings a run's record leaves out are read as their defaults (an import's, or an older build's), but a
    checkpoint with no train_config at all (saved from Python) is unknown data, not digits. (A run trained
    with data= records the defaults and its data's own record: check_sources_data names that one, with the
    data it records, once the data is loaded.)"""
    from landscape.data import load_dataset
    from landscape.inputs import check_same_data
    from landscape.train import TrainConfig

    digits = load_dataset("digits").describe()
    mine = dict(digits, name="mine", n_train=200, n_test=50, fingerprint=None)
    a = save_checkpoint(tmp_path / "a.pt", _net().state_dict(), SPEC,
                        meta={"train_config": TrainConfig().to_json(), "dataset": mine})
    b = save_checkpoint(tmp_path / "b.pt", _net().state_dict(), SPEC,
                        meta={"train_config": TrainConfig().to_json(), "dataset": digits})
    bare = save_checkpoint(tmp_path / "c.pt", _net().state_dict(), SPEC, meta={"dataset": dict(digits, name="cifar10")})
    with pytest.raises(UserError, match="c.pt was trained on other data than .*b.pt"):
        check_same_data([load_checkpoint(b), load_checkpoint(bare)])
    partial = save_checkpoint(tmp_path / "d.pt", _net().state_dict(), SPEC,
                              meta={"train_config": {"dataset": "digits"}, "dataset": digits})
    check_same_data([load_checkpoint(b), load_checkpoint(partial)])  # val-size 0 left out: the default
    check_same_data([load_checkpoint(a), load_checkpoint(a)])


def test_the_same_checkpoint_and_results_give_the_same_bytes(tmp_path, monkeypatch):
    """A rerun with the same seed gave equal tensors but other bytes (torch.save named its archive's folder
    after the temporary file; np.savez stamped the time), so sha256sum, and the digests runs record of the
    checkpoints they start from, told identical results apart."""
    import hashlib
    import time

    import numpy as np

    from landscape.checkpoint import write_npz

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    net = torch.nn.Linear(3, 2)
    for name in ("a", "b"):
        save_checkpoint(tmp_path / name / "model.pt", net.state_dict(),
                        {"name": "mlp", "kwargs": {"num_classes": 2, "input_shape": [3]}}, meta={"epoch": 1})
    assert digest(tmp_path / "a" / "model.pt") == digest(tmp_path / "b" / "model.pt")
    assert _same(load_checkpoint(tmp_path / "a" / "model.pt").state_dict, net.state_dict())
    arrays = {"t": np.linspace(0, 1, 5), "key": np.array("k"), "done": np.array([True, False])}
    for name, now in (("a", 1.7e9), ("b", 1.7e9 + 3600)):
        monkeypatch.setattr(time, "time", lambda now=now: now)  # np.savez's stamp: the zip member's time
        write_npz(tmp_path / name / "r.npz", arrays)
    monkeypatch.undo()
    assert digest(tmp_path / "a" / "r.npz") == digest(tmp_path / "b" / "r.npz")
    with np.load(tmp_path / "a" / "r.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(arrays) and all(
            np.array_equal(z[k], v) and z[k].dtype == v.dtype for k, v in arrays.items())


def _their_vgg_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """dnn-mode-connectivity's VGGBase.forward written out over a full ``vgg16bn``'s modules: each block's
    layers zipped with its activations, one per conv, so with batch norm the first half of the layers run."""
    for layers, activations, pooling in zip(net.layer_blocks, net.activation_blocks, net.poolings):
        for layer, activation in zip(layers, activations):
            x = activation(layer(x))
        if x.shape[-1] >= 2:
            x = pooling(x)
    return net.classifier(x.flatten(1))


def _vgg16bn(seed: int, theirs: bool = False) -> nn.Module:
    """A vgg16bn whose every batch norm has statistics and affine parameters of its own, so that every tensor
    matters; ``theirs``: as dnn-mode-connectivity's code leaves one, the batch norms it never runs untouched."""
    from landscape.models.vgg import never_run_by_reference

    torch.manual_seed(seed)
    net = create_model("vgg16bn", num_classes=10, input_shape=(1, 8, 8))
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
            if not (theirs and never_run_by_reference(16, f"{name}.running_mean")):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_a_dnnmc_vgg_bn_is_read_as_the_network_their_forward_runs(tmp_path, capsys):
    """dnn-mode-connectivity's VGG16BN zips a block's convs and batch norms with one ReLU per conv: it trains
    conv, ReLU, BN, ReLU, conv, ReLU and never runs the rest. Its files loaded into vgg16bn, which runs every
    layer, were another network without a word; vgg16bn_dnnmc is theirs, and vgg16bn refuses their files."""
    from landscape.curves.fit import load_curve
    from landscape.importing import import_checkpoint
    from landscape.weights import ParamSpace

    full = _vgg16bn(1, theirs=True)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        want = _their_vgg_forward(full, x)
        assert not torch.allclose(full(x), want, atol=1e-3)  # every layer run: another function
    torch.save({"epoch": 200, "model_state": full.state_dict(), "optimizer_state": {}}, tmp_path / "checkpoint-200.pt")
    with pytest.raises(UserError, match=r"checkpoint-200\.pt: dnn-mode-connectivity's VGG16BN, whose forward runs only "
                                        r"part of each block .* the batch norms it never runs still hold their first "
                                        r"statistics; give --model vgg16bn_dnnmc, the network it trained"):
        load_model(tmp_path / "checkpoint-200.pt", "vgg16bn", num_classes=10, input_shape=(1, 8, 8))
    theirs = load_model(tmp_path / "checkpoint-200.pt", "vgg16bn_dnnmc", num_classes=10, input_shape=(1, 8, 8))
    assert "50 tensors of layers dnn-mode-connectivity's forward never runs" in capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), want, rtol=0, atol=1e-6)
    assert sum(isinstance(m, nn.Conv2d) for m in theirs.modules()) == 8  # of VGG16's 13
    # told apart by contents, not by the file's wrapper: the same file saved bare is refused as vgg16bn too
    torch.save(full.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(UserError, match="give --model vgg16bn_dnnmc"):
        load_model(tmp_path / "bare.pt", "vgg16bn", num_classes=10, input_shape=(1, 8, 8))
    # a VGG-BN that ran every layer (this tool's own, the swa code's) loads as vgg16bn, in their wrapper too, and
    # is refused as vgg16bn_dnnmc, which would drop trained layers
    mine = _vgg16bn(5)
    torch.save({"epoch": 5, "model_state": mine.state_dict()}, tmp_path / "mine.pt")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "mine.pt", "vgg16bn", num_classes=10, input_shape=(1, 8, 8))(x), mine(x))
    with pytest.raises(UserError, match=r"mine\.pt: the layers dnn-mode-connectivity's VGG16BN never runs hold trained "
                                        r"batch-norm statistics here .* give --model vgg16bn$"):
        load_model(tmp_path / "mine.pt", "vgg16bn_dnnmc", num_classes=10, input_shape=(1, 8, 8))
    # a vgg16bn never trained (every batch norm as it started) cannot be told by contents: read as named
    fresh = create_model("vgg16bn", num_classes=10, input_shape=(1, 8, 8)).eval()
    torch.save({"epoch": 0, "model_state": fresh.state_dict()}, tmp_path / "fresh.pt")
    load_model(tmp_path / "fresh.pt", "vgg16bn", num_classes=10, input_shape=(1, 8, 8))
    # behind a wrapper's leading name (Lightning's model.): told and read alike
    torch.save({"state_dict": {f"model.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "wrapped.pt")
    with pytest.raises(UserError, match="give --model vgg16bn_dnnmc"):
        load_model(tmp_path / "wrapped.pt", "vgg16bn", num_classes=10, input_shape=(1, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "wrapped.pt", "vgg16bn_dnnmc", num_classes=10,
                                              input_shape=(1, 8, 8))(x), want, rtol=0, atol=1e-6)
    # their VGG16 without batch norm is not this case: the ordinary mismatch, not a pointer to vgg16bn_dnnmc
    plain = create_model("vgg16", num_classes=10, input_shape=(1, 8, 8))
    torch.save({"epoch": 5, "model_state": plain.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="does not fit model 'vgg16bn'"):
        load_model(tmp_path / "plain.pt", "vgg16bn", num_classes=10, input_shape=(1, 8, 8))
    # a checkpoint an earlier build imported from their file as vgg16bn: another network, said so
    spec = {"name": "vgg16bn", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8]}}
    save_checkpoint(tmp_path / "old-import.pt", full.state_dict(), spec,
                    meta={"imported_from": str(tmp_path / "checkpoint-200.pt")})
    with pytest.raises(UserError, match=r"old-import\.pt: imported as vgg16bn from dnn-mode-connectivity's VGG16BN.*"
                                        r"results computed from it are of another network; import its source again "
                                        r"with --model vgg16bn_dnnmc"):
        load_model(tmp_path / "old-import.pt")
    # their curves: refused as vgg16bn, read as vgg16bn_dnnmc, every bend the network their CurveNet runs at it
    ends = [_vgg16bn(s, theirs=True).state_dict() for s in (1, 2, 3)]
    curve = _papers_curve(ends, full, True, own_names=True)
    from landscape.models.vgg import never_run_by_reference

    for key in curve:  # _papers_curve moves every buffer by 1; their CurveNet never touches these
        if key.endswith(("running_mean", "running_var")) and never_run_by_reference(16, key[4:]):
            curve[key].fill_(0.0 if key.endswith("running_mean") else 1.0)
    torch.save({"epoch": 600, "model_state": curve}, tmp_path / "curve.pt")
    ran_all = _papers_curve([_vgg16bn(s).state_dict() for s in (1, 2, 3)], full, True, own_names=True)
    torch.save({"epoch": 600, "model_state": ran_all}, tmp_path / "full-curve.pt")
    with pytest.raises(UserError, match="a curve of a VGG-BN that ran every layer; give --model vgg16bn$"):
        import_checkpoint(tmp_path / "full-curve.pt", tmp_path / "f.pt", model="vgg16bn_dnnmc", dataset="digits")
    with pytest.raises(UserError, match="give --model vgg16bn_dnnmc"):
        import_checkpoint(tmp_path / "curve.pt", tmp_path / "c.pt", model="vgg16bn", dataset="digits")
    out = import_checkpoint(tmp_path / "curve.pt", tmp_path / "c.pt", model="vgg16bn_dnnmc", dataset="digits")
    assert re.search(r"note: .*curve\.pt: \d+ tensors of layers dnn-mode-connectivity's forward never runs \(e\.g\. "
                     r"layer_blocks\.0\.2\.weight\) are left out", capsys.readouterr().err)
    loaded = load_curve(out)
    space = ParamSpace.of(loaded.model)
    kept = [{k: v for k, v in e.items() if k in loaded.model.state_dict()} for e in ends]
    assert torch.equal(loaded.curve.anchors().detach(), torch.stack([space.flatten(a) for a in kept]))
    with pytest.raises(UserError, match="give --model vgg16bn_dnnmc"):
        import_checkpoint(tmp_path / "checkpoint-200.pt", tmp_path / "n.pt", model="vgg16bn", dataset="digits")


def test_the_swa_codes_vgg_named_features_imports_by_position(tmp_path, capsys):
    """The swa and swa_gaussian code's VGG16BN is an nn.Sequential 'features' (conv, BN, ReLU, ..., pools) and a
    'classifier': the network vgg16bn is, under other names. Its files were refused ("key
    'layer_blocks.0.0.weight' is missing"); they are read by position, every shape agreeing, with a note."""
    import copy

    from landscape.importing import import_checkpoint

    full = _vgg16bn(4)
    layers: list[nn.Module] = []
    for block in full.layer_blocks:
        for j in range(0, len(block), 2):
            layers += [copy.deepcopy(block[j]), copy.deepcopy(block[j + 1]), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
    theirs = nn.Module()
    theirs.features = nn.Sequential(*layers)
    theirs.classifier = copy.deepcopy(full.classifier)
    sgd = {k: v + 1 if v.is_floating_point() else v for k, v in theirs.state_dict().items()}
    assert "features.1.running_var" in sgd and "layer_blocks.0.1.running_var" not in sgd
    torch.save({"epoch": 300, "state_dict": sgd, "swa_state_dict": theirs.state_dict(), "swa_n": 3},
               tmp_path / "checkpoint-300.pt")
    out = import_checkpoint(tmp_path / "checkpoint-300.pt", tmp_path / "swa.pt", model="vgg16bn",
                            key="swa_state_dict", dataset="digits")
    assert ("its tensors are named otherwise than in model 'vgg16bn' (features.0.weight for layer_blocks.0.0.weight"
            in capsys.readouterr().err)
    assert _same(load_model(out).state_dict(), full.state_dict())
    # another architecture, with other counts: the names' mismatch, as before
    with pytest.raises(UserError, match="does not fit model 'vgg19bn': key 'layer_blocks.0.0.weight' is missing"):
        import_checkpoint(tmp_path / "checkpoint-300.pt", tmp_path / "x.pt", model="vgg19bn", key="swa_state_dict",
                          dataset="digits")
    five = {k: v[:5] if k.startswith("classifier.6") else v for k, v in theirs.state_dict().items()}  # 5 classes
    torch.save({"epoch": 300, "state_dict": five}, tmp_path / "five.pt")
    with pytest.raises(UserError, match=r"five\.pt: classifier\.6\.weight has shape \(5, 512\), and the tensor it "
                                        r"stands for in model 'vgg16bn', classifier\.6\.weight, \(10, 512\)"):
        import_checkpoint(tmp_path / "five.pt", tmp_path / "x.pt", model="vgg16bn", dataset="digits")
    assert not (tmp_path / "x.pt").exists()
