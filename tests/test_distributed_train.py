"""Data-parallel `landscape train`, `connect`, `swa`, `fge` and `snapshots`
under torchrun: each rank's slice of the batches, and 2 gloo ranks on the CPU
against one process that takes the same global batches in two halves and
averages their gradients; `curve` and `swag` shared out over 2 ranks against one process."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.curves import create_curve
from landscape.curves.evaluate import evaluate_curve
from tests.conftest import papers_update_bn
from landscape.averaging import fge_learning_rate, fge_snapshot_iteration, predict_probs, snapshot_learning_rate
from landscape.checkpoint import load_checkpoint, read_jsonl
from landscape.data import load_dataset
from landscape.device import seed_everything
from landscape.errors import UserError
from landscape.evaluate import forward_points
from landscape.layout import to_channels_last
from landscape.metrics import ensemble_metrics
from landscape.models import create_model, from_spec
from landscape.train import check_world, _epoch_seed, learning_rate, steps_per_epoch, train
from landscape.weights import ParamSpace

ROOT = Path(__file__).resolve().parents[1]
LANDSCAPE = Path(sys.executable).with_name("landscape")
WORLD = 2
# Bit-exact on this machine (one thread per rank and for the reference); the
# tolerance leaves room for kernels whose summation order depends on threads.
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def torchrun(*argv, timeout: float = 240, **env_extra: str) -> subprocess.CompletedProcess:
    """``landscape ARGV`` on 2 gloo ranks; --standalone lets torchrun pick a free port itself."""
    if not LANDSCAPE.exists():
        pytest.skip("console script not installed next to this interpreter")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "--no-python", "--", str(LANDSCAPE), *map(str, argv), "--quiet"]  # "--": else --start is torchrun's
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env_extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_thread(fn):
    """Run ``fn()`` on one thread, as every rank does (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def data_parallel_step(params, buffers, loss_of_slice, x, y):
    """One process doing what 2 DDP ranks do: each half of the batch gets its
    own forward (batch norm sees only that half) and backward, the loss of a
    half weighted by its share of the samples; the gradients are averaged;
    the buffers keep rank 0's update only (DDP sends rank 0's to the others)."""
    for r, part in enumerate(torch.tensor_split(torch.arange(len(y)), WORLD)):
        kept = [b.clone() for b in buffers]
        loss = loss_of_slice(x[part], y[part])
        w = len(part) * WORLD / len(y)
        (loss if w == 1 else loss * w).backward()
        if r > 0:
            for b, k in zip(buffers, kept):
                b.copy_(k)
    for p in params:
        p.grad /= WORLD


# ------------------------------------------------------------- in process
def test_shards_of_a_step_are_disjoint_and_make_the_global_batch(digits):
    """Same permutation and augmentation on every rank; slices cut like
    tensor_split; a last batch too small for two samples per rank is dropped."""
    data = dataclasses.replace(digits, x_train=digits.x_train[:103], y_train=digits.y_train[:103])
    for augment in (False, True):
        whole = list(data.train_batches(20, torch.Generator().manual_seed(5), augment=augment))
        parts = [list(data.train_batches(20, torch.Generator().manual_seed(5), augment=augment, shard=(r, 3)))
                 for r in range(3)]
        assert [len(p) for p in parts] == [5, 5, 5] == [steps_per_epoch(103, 20, 3)] * 3  # the last 3 samples: dropped
        assert len(whole) == 6 == steps_per_epoch(103, 20)
        for step, (x, y) in enumerate(whole[:5]):
            assert [len(p[step][1]) for p in parts] == [7, 7, 6]
            assert torch.equal(torch.cat([p[step][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[step][1] for p in parts]), y)
    with pytest.raises(UserError, match="shard"):
        next(data.train_batches(20, shard=(2, 2)))


def test_a_gpu_named_under_torchrun_with_several_processes_a_node_is_refused(monkeypatch):
    """cuda:1 under `torchrun --nproc-per-node 2` would put both processes on one GPU (NCCL then fails on a
    duplicate GPU): one line before the process group is joined. One process a node may name its GPU."""
    from landscape import sweep

    monkeypatch.setattr(sweep, "resolve_device", lambda spec: torch.device("cuda", 1))
    monkeypatch.setattr(sweep, "init_distributed", lambda device: pytest.fail("joined the process group"))
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match=r"^--device cuda:1 under torchrun would put every process of this node on "
                                        r"one GPU; pass --device cuda \(each process takes the GPU of its LOCAL_RANK\)"):
        sweep.process_device("cuda:1")
    chosen, joined = [], []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(sweep, "init_distributed", joined.append)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two nodes, one process each
    assert sweep.process_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)] and joined == [torch.device("cuda", 1)]


def test_batch_size_must_split_evenly_over_the_ranks():
    check_world(128, 1)
    check_world(128, 2)
    with pytest.raises(UserError, match="--batch-size 101 must be a multiple of the 2 processes") as info:
        check_world(101, 2)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="at least 2 samples"):
        check_world(4, 4)


# ------------------------------------------------------------- 2 gloo ranks
def reference_sgd(model, data, *, seed, epochs, batch_size, lr_at, snapshot_after_step=None):
    """SGD of ``model`` at the rate ``lr_at(epoch, it, steps)`` (momentum 0.9,
    weight decay 5e-4), each step data parallel by hand; the state after each
    epoch and after every step where ``snapshot_after_step`` holds, as lists
    of state dicts."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    buffers = list(model.buffers())
    steps = steps_per_epoch(len(data.y_train), batch_size, WORLD)
    state = lambda: {k: v.clone() for k, v in model.state_dict().items()}  # noqa: E731
    at_ends, snapshots = [], []
    for epoch in range(epochs):
        model.train()
        for it, (x, y) in enumerate(data.train_batches(batch_size, torch.Generator().manual_seed(_epoch_seed(seed, epoch)))):
            x = to_channels_last(x)  # as the trainer feeds a network that takes it
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch, it, steps)
            opt.zero_grad()
            data_parallel_step(model.parameters(), buffers, lambda xs, ys: F.cross_entropy(model(xs), ys), x, y)
            opt.step()
            if snapshot_after_step is not None and snapshot_after_step(epoch, it, steps):
                snapshots.append(state())
        at_ends.append(state())
    return at_ends, snapshots


def network_of_checkpoint(path):
    ckpt = load_checkpoint(path)
    model = from_spec(ckpt.model)
    model.load_state_dict(ckpt.state_dict)
    return model


def reference_train(data, *, seed, epochs, batch_size, width):
    """Plain SGD as `landscape train` sets it up (the paper schedule), each step data parallel by hand."""
    seed_everything(seed)
    model = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=width)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    at_ends, _ = reference_sgd(model, data, seed=seed, epochs=epochs, batch_size=batch_size,
                               lr_at=lambda e, it, s: learning_rate(0.05, "paper", e, epochs))
    return init, at_ends[-1]


@pytest.mark.slow
def test_two_rank_train_equals_one_process_averaging_the_halves(tmp_path, digits):
    """2 epochs of 14 batches of 100 and a last one of 37 (19 + 18: the uneven
    slices are weighted by their samples), then a resume from epoch 1."""
    args = ["train", "--epochs", 2, "--batch-size", 100, "--model-kwargs", "width=8", "--seed", 1, "--save-every", 1]
    done = torchrun(*args, "--out", tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("test error") == 1, done.stdout  # only rank 0 reports
    assert done.stderr.count("train: data parallel on 2 processes (gloo), 50 samples per process and step") == 1
    assert "Grad strides do not match" not in done.stderr  # the one-channel conv weight's strides fit DDP's bucket
    run = tmp_path / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-000.pt", "checkpoint-001.pt", "checkpoint-002.pt",
                                                     "config.json",
                                                     "last.pt", "metrics.jsonl", "model.pt", "summary.json"]
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["meta"]["world_size"] == 2
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["train_loss"] < records[0]["train_loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_error"] < 30, summary

    init, want = one_thread(lambda: reference_train(digits, seed=1, epochs=2, batch_size=100, width=8))
    got = ckpt["state_dict"]
    assert got.keys() == want.keys()
    assert any((got[k] - init[k]).abs().max() > 1e-2 for k in got)  # it trained
    for k in want:  # incl. batch-norm running statistics: rank 0's
        torch.testing.assert_close(got[k], want[k], **TOL, msg=k)

    # An interrupted run resumes on both ranks from the same state: drop epoch 2.
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for name in ("model.pt", "summary.json", "checkpoint-002.pt"):
        (cut / name).unlink()
    shutil.copy(cut / "checkpoint-001.pt", cut / "last.pt")
    # One process would normalise batch norm over 100 samples instead of 50: refused, nothing touched.
    before = {p.name: p.read_bytes() for p in cut.iterdir()}
    alone = subprocess.run([str(LANDSCAPE), *map(str, args), "--out", str(cut), "--resume", "--quiet"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2, alone.stderr
    assert alone.stderr.strip() == (f"landscape: error: {cut} was started on 2 process(es), now 1; --resume needs the same number "
                                    f"of processes (each normalises batch norm over its share of the batch)")
    assert {p.name: p.read_bytes() for p in cut.iterdir()} == before
    done = torchrun(*args, "--out", cut, "--resume")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("resuming after epoch 1 of 2") == 1, done.stderr
    resumed = torch.load(cut / "model.pt", weights_only=True)["state_dict"]
    for k in got:  # a rank that started epoch 2 elsewhere would change rank 0's averaged gradients
        assert torch.equal(resumed[k], got[k]), k
    assert [r["train_loss"] for r in read_jsonl(cut / "metrics.jsonl")] == [r["train_loss"] for r in records]


def reference_connect(start, end, data, *, seed, batch_size, k, wd=5e-4):
    """One epoch of the uniform objective on a one-bend Bezier curve, each
    step at rank 0's t values, data parallel by hand."""
    a, b = load_checkpoint(start), load_checkpoint(end)
    template = from_spec(a.model)
    template.load_state_dict(a.state_dict)
    space = ParamSpace.of(template)
    curve = create_curve("bezier", space, space.flatten(a.state_dict), space.flatten(b.state_dict), bends=1)
    opt = torch.optim.SGD([curve.free], lr=0.05, momentum=0.9, weight_decay=0.0)
    buffers = {n: v.detach() for n, v in template.named_buffers()}
    template.train()
    torch.manual_seed(_epoch_seed(seed, 0))

    for x, y in data.train_batches(batch_size, torch.Generator().manual_seed(_epoch_seed(seed, 0))):
        x = to_channels_last(x)  # as the trainer feeds a network that takes it
        t = torch.rand(k, dtype=torch.float64)

        def loss(xs, ys):
            points = curve.points(t)  # (K, P)
            batched = {n: v.unsqueeze(0).repeat(k, *([1] * v.dim())) for n, v in buffers.items()}
            logits = forward_points(template, space.unflatten(points), batched, xs)  # (K, B, classes)
            nll = F.cross_entropy(logits.flatten(0, 1), ys.repeat(k), reduction="none").view(k, -1).mean(dim=1)
            return (nll + 0.5 * wd * points.pow(2).sum(dim=1)).mean()

        opt.zero_grad()
        data_parallel_step([curve.free], [], loss, x, y)
        opt.step()
    return curve.anchors().detach()


@pytest.fixture(scope="module")
def ends(tmp_path_factory, digits):
    """Two digits endpoints (width 8, one epoch), seeds 1 and 2."""
    root = tmp_path_factory.mktemp("ends")
    for seed in (1, 2):
        train(out=root / f"end{seed}", data=digits, epochs=1, seed=seed, progress=False, model_kwargs={"width": 8})
    return root / "end1" / "model.pt", root / "end2" / "model.pt"


@pytest.mark.slow
def test_two_rank_connect_equals_one_process_averaging_the_halves(tmp_path, digits, ends):
    """One epoch of 11 batches of 128 and a last one of 29 (15 + 14), two
    values of t per step, shared by the ranks."""
    start, end = ends
    done = torchrun("connect", "--start", start, "--end", end, "--epochs", 1, "--t-samples", 2, "--seed", 3,
                    "--out", tmp_path / "curve")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("bezier curve with 1 bend(s)") == 1, done.stdout
    assert done.stderr.count("connect: data parallel on 2 processes (gloo), 64 samples per process and step") == 1
    run = tmp_path / "curve"
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["kind"] == "curve" and ckpt["meta"]["world_size"] == 2
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    curve, line = summary["curve"], summary["line"]  # at t = 1/2 the fit has already beaten the line
    assert curve["train_loss_at"][1] < line["train_loss_at"][1], summary
    assert curve["test_error_at"][1] < line["test_error_at"][1] - 10, summary

    got = ckpt["curve"]["anchors"]
    want = one_thread(lambda: reference_connect(start, end, digits, seed=3, batch_size=128, k=2))
    straight = create_curve("bezier", ParamSpace.of(from_spec(ckpt["model"])), got[0], got[-1], bends=1).anchors()
    assert torch.equal(got[0], want[0]) and torch.equal(got[-1], want[-1])  # fixed ends
    assert (got[1] - straight[1]).abs().max() > 1e-2  # the bend moved
    torch.testing.assert_close(got, want, **TOL)


def test_a_last_batch_too_small_to_split_is_left_out_with_a_note(tmp_path):
    """1437 = 3 x 478 + 3: split over 2 ranks the last 3 samples give a slice of 1, so the
    ranks leave them out where one process trains on them; that used to go unsaid."""
    done = torchrun("train", "--epochs", 1, "--batch-size", 478, "--model-kwargs", "width=4", "--out", tmp_path / "r")
    assert done.returncode == 0, done.stderr[-4000:]
    note = ("note: each epoch's last batch (3 samples) is left out: split across 2 processes it would give a slice "
            "under 2 samples (a run on one process trains on it, so the results differ from one)")
    assert done.stderr.count(note) == 1, done.stderr


def assert_same_state(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:  # batch-norm running statistics included: rank 0's
        torch.testing.assert_close(got[k], want[k], **TOL, msg=k)


def test_average_commands_share_out_under_torchrun_by_name():
    """What makes the three commands data parallel: torchrun no longer refuses them."""
    from landscape.cli import DISTRIBUTED

    assert {"swa", "fge", "snapshots", "curve"} <= set(DISTRIBUTED)


@pytest.mark.slow
def test_two_rank_swa_equals_one_process_averaging_the_halves(tmp_path, digits, ends):
    """Two epochs at the constant SWA rate from an endpoint, the iterate averaged
    after each, batch norm recomputed for the average (here by the papers'
    update_bn); then a resume from epoch 1 reaches the same files."""
    args = ["swa", "--from", ends[0], "--epochs", 2, "--swa-lr", 0.02, "--batch-size", 100, "--seed", 4,
            "--save-every", 1, "--keep-snapshots"]
    done = torchrun(*args, "--out", tmp_path / "swa")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("SWA (2 avg)") == 1, done.stdout  # only rank 0 reports
    assert done.stderr.count("swa: data parallel on 2 processes (gloo), 50 samples per process and step") == 1
    run = tmp_path / "swa"
    assert sorted(p.name for p in run.glob("*.pt")) == ["checkpoint-001.pt", "checkpoint-002.pt", "last.pt",
                                                        "model.pt", "sgd.pt", "snapshot-001.pt", "snapshot-002.pt",
                                                        "swa.pt"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["averaged"] == 2 and summary["swa"]["test_error"] < 30, summary

    model = network_of_checkpoint(ends[0])
    at_ends, _ = one_thread(lambda: reference_sgd(model, digits, seed=4, epochs=2, batch_size=100,
                                                  lr_at=lambda e, it, s: 0.02))
    assert_same_state(torch.load(run / "sgd.pt", weights_only=True)["state_dict"], at_ends[-1])
    for i, want in enumerate(at_ends):
        assert_same_state(torch.load(run / f"snapshot-{i + 1:03d}.pt", weights_only=True)["state_dict"], want)
    names = [n for n, _ in model.named_parameters()]
    model.load_state_dict({**at_ends[-1], **{n: (at_ends[0][n].double() + at_ends[1][n].double()).div(2).float()
                                             for n in names}})
    one_thread(lambda: papers_update_bn(digits.batches("train", 1000), model))
    got = torch.load(run / "swa.pt", weights_only=True)["state_dict"]
    assert any((got[n] - at_ends[1][n]).abs().max() > 1e-3 for n in names)  # the average is not the last iterate
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):  # the weights exactly; batch norm's statistics are float32 sums
            # over the training set, in another order in each process (on an AVX-512 EPYC 1.4e-5 apart)
            exact = not k.endswith(("running_mean", "running_var"))
            torch.testing.assert_close(got[k], v, rtol=1e-5 if exact else 1e-4, atol=1e-5 if exact else 5e-5,
                                       msg=k)

    # Stopped after epoch 1: both ranks resume from the average kept in checkpoint-001.pt.
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for name in ("model.pt", "summary.json", "swa.pt", "sgd.pt", "checkpoint-002.pt", "snapshot-002.pt"):
        (cut / name).unlink()
    shutil.copy(cut / "checkpoint-001.pt", cut / "last.pt")
    done = torchrun(*args, "--out", cut, "--resume")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("resuming after epoch 1 of 2") == 1, done.stderr
    for name in ("swa.pt", "sgd.pt"):
        again = torch.load(cut / name, weights_only=True)["state_dict"]
        first = torch.load(run / name, weights_only=True)["state_dict"]
        assert all(torch.equal(again[k], first[k]) for k in first), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fge", "snapshots"])
def test_two_rank_ensembles_equal_one_process_averaging_the_halves(tmp_path, digits, ends, method):
    """FGE's members are taken mid-epoch at the lowest rate, snapshot ensembles'
    at each cosine cycle's end; both on 2 ranks as on one process, and the
    summary's ensemble is that of the members' saved weights."""
    if method == "fge":
        rates = ["--lr-max", 0.05, "--lr-min", 0.001]
        lr_at = lambda e, it, s: fge_learning_rate(0.05, 0.001, 1, e, it, s)  # noqa: E731
        take = lambda e, it, s: it == fge_snapshot_iteration(1, s)  # noqa: E731
    else:
        rates = ["--lr", 0.05]
        lr_at = lambda e, it, s: snapshot_learning_rate(0.05, 1, e, it, s)  # noqa: E731
        take = None
    done = torchrun(method, "--from", ends[1], "--epochs", 2, "--cycle", 1, *rates, "--batch-size", 100,
                    "--seed", 5, "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("ensemble") == 1, done.stdout  # only rank 0 reports
    assert done.stderr.count(f"{method}: data parallel on 2 processes (gloo)") == 1, done.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ensemble"]["members"] == 2 and [m["snapshot"] for m in summary["members"]] == [1, 2]

    model = network_of_checkpoint(ends[1])
    at_ends, snapshots = one_thread(lambda: reference_sgd(model, digits, seed=5, epochs=2, batch_size=100,
                                                          lr_at=lr_at, snapshot_after_step=take))
    members = snapshots if method == "fge" else at_ends
    assert len(members) == 2
    probs = []
    for i, want in enumerate(members):
        assert_same_state(torch.load(run / f"snapshot-{i + 1:03d}.pt", weights_only=True)["state_dict"], want)
        model.load_state_dict(want)
        probs.append(one_thread(lambda: predict_probs(model, digits)).double())
    assert_same_state(torch.load(run / "model.pt", weights_only=True)["state_dict"], at_ends[-1])
    ens = ensemble_metrics(torch.stack(probs).mean(0)[None].numpy(), digits.y_test.numpy())
    assert summary["ensemble"]["test_nll"] == pytest.approx(ens["nll"], rel=1e-5)
    assert summary["ensemble"]["test_error"] == pytest.approx(ens["error"], abs=1e-9)


@pytest.mark.slow
def test_two_rank_curve_evaluation_equals_one_process(tmp_path, digits, ends):
    """`landscape curve` shares its points out over the ranks, as the sweeps do;
    rank 0 writes the same curve.npz and summary as one process does."""
    from landscape.curves.fit import fit_curve

    fit_curve(*ends, tmp_path / "fit", data=digits, epochs=1, progress=False)
    args = ["curve", "--ckpt", tmp_path / "fit" / "model.pt", "--points", 5, "--points-per-pass", 2]
    done = torchrun(*args, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("train-loss barrier") == 1, done.stdout  # only rank 0 reports
    one = one_thread(lambda: evaluate_curve(tmp_path / "fit" / "model.pt", tmp_path / "one", points=5,
                                            points_per_pass=2))
    with np.load(tmp_path / "two" / "curve.npz") as z:
        two = {k: z[k] for k in z.files}
    assert two.keys() == one.arrays.keys()
    for k, v in one.arrays.items():
        np.testing.assert_allclose(two[k], v, rtol=1e-6, atol=1e-9, err_msg=k)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["curve"]["ensemble_test_nll"] == pytest.approx(one.summary["curve"]["ensemble_test_nll"], rel=1e-6)
    assert not (tmp_path / "two" / "sweep.partial.npz").exists()


@pytest.mark.slow
def test_two_rank_simplex_equals_one_process_for_a_network_without_batch_norm(tmp_path, digits):
    """Without batch norm a data-parallel step is the whole batch's step (the
    slices' mean gradients, weighted by their samples, average to the batch's),
    so SPRO on 2 ranks, each fitting rank 0's samples of the simplex, grows
    the simplex one process grows, and evaluates it the same."""
    from landscape.curves.spro import grow_simplex

    train(out=tmp_path / "mode", data=digits, model="mlp", model_kwargs={"hidden": 32}, epochs=1, seed=1,
          progress=False)
    mode = tmp_path / "mode" / "model.pt"
    args = ["simplex", "--base", mode, "--vertices", 3, "--epochs", 1, "--batch-size", 100, "--samples", 3,
            "--eval-samples", 4, "--face-grid", 3, "--seed", 2]
    done = torchrun(*args, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("simplex: 3 vertices") == 1, done.stdout  # only rank 0 reports
    assert done.stderr.count("simplex: data parallel on 2 processes (gloo)") == 2, done.stderr  # one per vertex
    one = one_thread(lambda: grow_simplex(mode, tmp_path / "one", vertices=3, epochs=1, batch_size=100, samples=3,
                                          eval_samples=4, face_resolution=3, seed=2, progress=False))
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["simplex"]["anchors"]
    want = one.complex.anchors().detach()
    assert (want[1:] - want[0]).abs().max() > 1e-2  # the vertices moved off the mode
    torch.testing.assert_close(two, want, rtol=1e-4, atol=1e-5)
    with np.load(tmp_path / "two" / "simplex.npz") as z, np.load(tmp_path / "one" / "simplex.npz") as w:
        assert z.files == w.files
        for k in w.files:
            np.testing.assert_allclose(z[k], w[k], rtol=1e-3, atol=1e-4, err_msg=k)


# A network whose outputs turn NaN only in the final summary's train evaluation (eval mode,
# batches of 1000): every epoch's record is finite, and only rank 0 computes the summary.
NAN_IN_FINAL_EVALUATION = """
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 16),
                               nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        out = self.f(x)
        return out * float("nan") if not self.training and x.shape[0] == 1000 else out

def net(num_classes=10, input_shape=(1, 8, 8)):
    return Net(num_classes, input_shape)
"""


@pytest.mark.slow
def test_a_final_network_refused_on_rank_0_stops_every_rank(tmp_path):
    """SWA refuses a non-finite average in its summary, which rank 0 alone computes:
    the other ranks waited for that summary until gloo's 30-minute timeout."""
    (tmp_path / "nanmodel.py").write_text(NAN_IN_FINAL_EVALUATION)
    done = torchrun("swa", "--from-scratch", "--model", "nanmodel:net", "--epochs", 2, "--swa-start", 1,
                    "--out", tmp_path / "s", timeout=60, PYTHONPATH=str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.count("landscape: error: training diverged: the final network's swa.train_loss is nan") == 1, \
        done.stderr[-3000:]
    assert not (tmp_path / "s" / "swa.pt").exists() and (tmp_path / "s" / "last.pt").exists()


def test_a_batch_size_the_ranks_cannot_share_is_refused_before_simplex_claims_its_folder(tmp_path, ends):
    done = torchrun("simplex", "--base", ends[0], "--vertices", 2, "--epochs", 1, "--batch-size", 127,
                    "--out", tmp_path / "sx")
    assert done.returncode != 0
    assert done.stderr.count("landscape: error: --batch-size 127 must be a multiple of the 2 processes") == 1
    assert not (tmp_path / "sx").exists()


@pytest.mark.slow
def test_two_rank_swag_evaluation_equals_one_process(tmp_path, digits, ends):
    """`landscape swag` is a sweep: the ranks share the samples out, rank 0 writes what one process writes."""
    from landscape.averaging import run_swa
    from landscape.swag import evaluate_swag

    run_swa(None, tmp_path / "swa", from_ckpt=str(ends[0]), epochs=3, swa_lr=0.05, swag_rank=3, data=digits,
            progress=False)
    ckpt = tmp_path / "swa" / "swag.pt"
    done = torchrun("swag", "--ckpt", ckpt, "--samples", 5, "--points-per-pass", 2, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("\nmodel average ") == 1, done.stdout  # only rank 0 reports (its table's row)
    one = one_thread(lambda: evaluate_swag(ckpt, tmp_path / "one", samples=5, points_per_pass=2))
    with np.load(tmp_path / "two" / "swag.npz") as z:
        two = {k: z[k] for k in z.files}
    assert two.keys() == one.arrays.keys()
    for k, v in one.arrays.items():
        np.testing.assert_allclose(two[k], v, rtol=1e-6, atol=1e-9, err_msg=k)
    assert not (tmp_path / "two" / "sweep.partial.npz").exists()


@pytest.mark.slow
def test_two_rank_vi_with_hwa_trains_and_its_schemes_share_out(tmp_path, digits, ends):
    """`vi` data parallel: every trainable parameter, the variances too, stays
    in DDP's reduction through HWA's frozen phase (they are put back after
    each step, never detached); both ranks end with the same posterior, which
    rank 0 saves. `vi-eval` shares the samples out and equals one process."""
    done = torchrun("vi", "--from", ends[0], "--family", "neuron", "--epochs", 3, "--hwa-start", 1,
                    "--batch-size", 100, "--seed", 2, "--save-every", 1, "--out", tmp_path / "vi")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("HWA (2 avg)") == 1, done.stdout
    assert done.stderr.count("vi: data parallel on 2 processes (gloo), 50 samples per process and step") == 1
    at_start = torch.load(tmp_path / "vi" / "checkpoint-001.pt", weights_only=True)["variational"]["scales"]
    hwa = torch.load(tmp_path / "vi" / "hwa.pt", weights_only=True)["variational"]["scales"]
    assert all(torch.equal(at_start[k], hwa[k]) for k in hwa)
    done = torchrun("vi-eval", "--ckpt", tmp_path / "vi" / "hwa.pt", "--samples", 3, "--points-per-pass", 1,
                    "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    from landscape.variational import evaluate_variational

    one = one_thread(lambda: evaluate_variational(tmp_path / "vi" / "hwa.pt", tmp_path / "one", samples=3,
                                                  points_per_pass=1))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    for scheme in ("deterministic", "ensemble"):
        for k, v in one.summary[scheme].items():
            assert two[scheme][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (scheme, k)


@pytest.mark.slow
def test_two_rank_vi_connect_fits_a_curve_between_posteriors_and_curve_shares_it_out(tmp_path, digits, ends):
    """`vi-connect` data parallel (each rank samples its own noise on its
    slice, as `vi` does; rank 0 draws t): both ranks end with one curve,
    rank 0 saves it, and the fit has already pulled its middle below the
    line's. `curve` shares the posterior curve's networks out and equals one
    process."""
    for i, end in enumerate(ends):
        done = torchrun("vi", "--from", end, "--family", "weight", "--epochs", 1, "--out", tmp_path / f"vi{i}")
        assert done.returncode == 0, done.stderr[-4000:]
    done = torchrun("vi-connect", "--start", tmp_path / "vi0" / "vi.pt", "--end", tmp_path / "vi1" / "vi.pt",
                    "--epochs", 2, "--t-samples", 2, "--out", tmp_path / "curve")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("between two weight posteriors") == 1, done.stdout
    assert done.stderr.count("vi-connect: data parallel on 2 processes (gloo), 64 samples per process and step") == 1
    ckpt = torch.load(tmp_path / "curve" / "model.pt", weights_only=True)
    assert ckpt["kind"] == "curve" and ckpt["meta"]["world_size"] == 2 and ckpt["variational"]["family"] == "weight"
    summary = json.loads((tmp_path / "curve" / "summary.json").read_text())
    assert summary["curve"]["mean_train_loss_at"][1] < summary["line"]["mean_train_loss_at"][1], summary
    done = torchrun("curve", "--ckpt", tmp_path / "curve" / "model.pt", "--points", 3, "--samples", 2,
                    "--points-per-pass", 1, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    from landscape.curves.posterior import evaluate_posterior_curve

    one = one_thread(lambda: evaluate_posterior_curve(tmp_path / "curve" / "model.pt", tmp_path / "one", points=3,
                                                      samples=2, points_per_pass=1))
    with np.load(tmp_path / "two" / "posterior-curve.npz") as two:
        for key, value in one.arrays.items():
            np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_folder_in_use_stops_every_rank_in_one_line(tmp_path):
    """Under torchrun rank 0 holds the folder for the job: when another
    process holds it, rank 0's refusal is every rank's, said once, and the
    job ends with it (the other rank used to go on to a barrier rank 0 never
    reached, and end in a gloo traceback)."""
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "os.write(fd, b'4242\\n'); print('held', flush=True); time.sleep(200)",
                               str(out / ".landscape.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = torchrun("train", "--out", out, "--epochs", 1)
    finally:
        holder.kill()
        holder.wait()
    said = [line for line in done.stderr.splitlines() if line.startswith("landscape")]
    assert done.returncode != 0 and "Connection closed" not in done.stderr, done.stderr  # torchrun's own report aside
    assert not re.search(r'File ".*/landscape/', done.stderr), done.stderr  # no rank's own traceback
    assert said == [f"landscape: error: {out} is in use by another landscape process (pid 4242); wait for it to "
                    f"finish (then --resume, if it stopped), or choose another --out"], done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".landscape.lock"]  # the holder's, nothing written


def test_ranks_that_see_their_out_folder_differently_are_refused_alike(tmp_path):
    """Each rank decides from what it sees in --out whether to resume: with a folder on each node's own disk,
    rank 0 found last.pt, rank 1 nothing, and they waited in different collectives, without a word, until the
    process group's timeout (30 minutes). The ranks now compare what they see first."""
    script = tmp_path / "claim.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "import torch.distributed as dist\n"
        "from landscape.checkpoint import claim_folder, folder_locks\n"
        "from landscape.errors import UserError\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "base = Path(sys.argv[1])\n"
        "out = base / f'node{rank}' / 'run'  # each rank's own disk: the same --out, other contents\n"
        "said = 'claimed'\n"
        "try:\n"
        "    with folder_locks():\n"
        "        claim_folder(out if sys.argv[2] == 'apart' else base / 'shared', 'train')\n"
        "except UserError as e:\n"
        "    said = str(e)\n"
        "(base / f'said{rank}').write_text(said)\n"
        "dist.destroy_process_group()\n")
    for node, files in (("node0", ["config.json", "last.pt", "metrics.jsonl"]), ("node1", [])):
        (tmp_path / node / "run").mkdir(parents=True)
        for name in files:
            (tmp_path / node / "run" / name).write_text('{"command": "train"}')
    (tmp_path / "shared").mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    for mode in ("apart", "shared"):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               str(WORLD), str(script), str(tmp_path), mode], env=env, capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr
        said = [(tmp_path / f"said{r}").read_text() for r in range(WORLD)]
        if mode == "shared":
            assert said == ["claimed"] * WORLD
            continue
        for r, text in enumerate(said):  # every rank refuses alike, each naming --out as it was given (one path)
            assert text == (f"rank 1 sees nothing in {tmp_path / f'node{r}' / 'run'}, but rank 0 sees config.json, "
                            f"last.pt, metrics.jsonl: under torchrun every process must see --out alike (a folder on "
                            f"a file system all nodes share)")


ONE_RANK_REFUSES = """
import os

from torch import nn

from landscape.errors import UserError


def net(num_classes=10, input_shape=(1, 8, 8)):
    if os.environ.get("RANK") == "1":
        raise UserError("this network is refused on rank 1 alone")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
"""


@pytest.mark.slow
def test_bad_input_met_by_one_rank_alone_is_said_and_stops_the_job(tmp_path):
    """An error of bad input that only a rank other than 0 met (a check of what its own process built) was
    said by rank 0 alone, which had not met it: nothing was printed, and the job hung until gloo's
    30-minute timeout. Each rank now waits for the others a while; one left alone says its error."""
    (tmp_path / "onerank.py").write_text(ONE_RANK_REFUSES)
    began = time.monotonic()
    done = torchrun("train", "--model", "onerank:net", "--epochs", 1, "--out", tmp_path / "r", timeout=150,
                    PYTHONPATH=str(tmp_path))
    assert done.returncode != 0 and time.monotonic() - began < 120
    assert done.stderr.count("landscape: error: rank 1: this network is refused on rank 1 alone") == 1, \
        done.stderr[-3000:]
