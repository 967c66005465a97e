"""Progress where no bar can redraw itself (a log file, a batch job): a line an
epoch for the training commands, a line a pass for the sweeps, nothing with
--quiet; the lines' numbers checked against the run's stored records and a
hand-computed rate."""

import json
import re
import sys

import pytest
import torch

from landscape import cli
from landscape import progress as prog
from landscape.train import train


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(prog.time, "perf_counter", c)
    return c


def test_progress_argument_is_read_alike_everywhere(monkeypatch):
    assert prog.progress_mode(True) == "bar" and prog.progress_mode(False) == "off"
    assert prog.progress_mode("log") == "log"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert prog.progress_mode(None) == "bar"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert prog.progress_mode(None) == "off"
    with pytest.raises(ValueError, match="'lines'"):
        prog.progress_mode("lines")


def test_durations_read_as_people_read_them():
    assert [prog.clock(s) for s in (0.4, 42, 59.6, 125, 3599, 3600, 11220)] == \
        ["0 s", "42 s", "1 min 00 s", "2 min 05 s", "59 min 59 s", "1 h 00 min", "3 h 07 min"]


def test_time_left_comes_from_this_runs_rate(clock, capsys):
    """8 of 20 units were kept by an earlier run; this run did 4 more in 10 s
    (0.4 a second), so the 8 left take 20 s; a resumed run's kept units do
    not count as fast ones."""
    lines = prog.LogLines("points", 20, initial=8)
    clock.now += 10.0
    lines.at(12, "note")
    assert capsys.readouterr().err == "points 12 of 20 (60 %) after 10 s (this run); about 20 s left; note\n"
    clock.now += 20.0
    lines.at(20)
    assert capsys.readouterr().err == "points 20 of 20 (100 %) after 30 s (this run)\n"  # nothing left
    fast = prog.LogLines("epoch", 10)
    clock.now += 1.0
    fast.at(9)  # 9 a second: the last one in 0.11 s
    assert capsys.readouterr().err == "epoch 9 of 10 (90 %) after 1 s; under 1 s left\n"
    thirds = prog.LogLines("x", 3)
    assert [thirds.line(d).split(" after")[0] for d in (1, 2, 3)] == ["x 1 of 3 (33 %)", "x 2 of 3 (67 %)",
                                                                       "x 3 of 3 (100 %)"]
    assert prog.LogLines("x", 1000).line(999).startswith("x 999 of 1000 (99 %)")  # 100 % only when done


def test_lines_are_spaced_but_the_last_one_always_comes(clock, capsys):
    bar = prog.Progress(10, desc="samples", unit="sample", progress="log", every=10.0)
    for _ in range(10):
        clock.now += 3.0
        bar.update(1)
    said = [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()]
    # lines at 3 s, then the first update at least 10 s after the last line (15 s, 27 s), and the end (30 s)
    assert said == ["samples 1 of 10", "samples 5 of 10", "samples 9 of 10", "samples 10 of 10"]
    assert prog.Progress(10, desc="x", unit="x", progress="log", show=False).log is None  # another rank: nothing
    assert prog.Progress(10, desc="x", unit="x", progress=False).log is None


_EPOCH = re.compile(r"^(\w[\w-]*): epoch (\d+) of (\d+) \((\d+) %\) after [^;]+(; (?:about [^;]+|under 1 s) left)?; (.*)$")


def _epoch_lines(err: str) -> list[re.Match]:
    return [m for m in map(_EPOCH.match, err.splitlines()) if m]


def test_train_logs_a_line_an_epoch_with_its_stored_figures(tmp_path, capsys):
    out = tmp_path / "a"
    code, _, err = run(capsys, "train", "--epochs", 3, "--seed", 1, "--out", out, "--model-kwargs", "width=8")
    assert code == 0, err
    said = _epoch_lines(err)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m[1], int(m[2]), int(m[3])) for m in said] == [("train", 1, 3), ("train", 2, 3), ("train", 3, 3)]
    assert said[0][5] and not said[-1][5]  # the time left, until nothing is
    threads = torch.get_num_threads()
    assert (f"train: 3 epochs of 12 steps (1437 training images, batches of 128) on cpu ({threads} "
            f"thread{'s' if threads != 1 else ''}), fp32 -> {out}") in err  # what, and where, before epoch 1
    assert err.splitlines()[-1] == "train: 3 epochs done; the final evaluation"  # what the wait after is
    for m, r in zip(said, records):
        assert m[6] == (f"train loss {r['train_loss']:.4f}, train error {r['train_error']:.2f} % (over the epoch's "
                        f"batches), test error {r['test_error']:.2f} %")
    code, _, err = run(capsys, "train", "--epochs", 2, "--seed", 1, "--out", tmp_path / "q", "--quiet",
                       "--model-kwargs", "width=8")
    assert code == 0 and not _epoch_lines(err) and "epoch" not in err


def test_a_resumed_run_logs_from_its_next_epoch(tmp_path, small_digits, capsys):
    def stop(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    kw = dict(out=tmp_path / "a", data=small_digits, epochs=4, seed=1, model_kwargs={"width": 8})
    with pytest.raises(KeyboardInterrupt):
        train(**kw, progress="log", on_epoch_end=stop)
    assert [int(m[2]) for m in _epoch_lines(capsys.readouterr().err)] == [1, 2]
    train(**kw, progress="log", resume=True)
    assert [int(m[2]) for m in _epoch_lines(capsys.readouterr().err)] == [3, 4]
    train(out=tmp_path / "b", data=small_digits, epochs=1, seed=1, model_kwargs={"width": 8})  # None: no terminal
    assert not _epoch_lines(capsys.readouterr().err)


@pytest.mark.slow
def test_connect_and_swa_log_their_own_figures(tmp_path, capsys):
    for seed in (1, 2):
        assert run(capsys, "train", "--epochs", 2, "--seed", seed, "--out", tmp_path / str(seed), "--quiet",
                   "--model-kwargs", "width=8")[0] == 0
    a, b = tmp_path / "1" / "model.pt", tmp_path / "2" / "model.pt"
    code, _, err = run(capsys, "connect", "--start", a, "--end", b, "--epochs", 2, "--out", tmp_path / "ab")
    assert code == 0, err
    said = _epoch_lines(err)
    records = [json.loads(line) for line in (tmp_path / "ab" / "metrics.jsonl").read_text().splitlines()]
    assert [(m[1], int(m[2])) for m in said] == [("connect", 1), ("connect", 2)]
    assert said[1][6].endswith(f"test error at t = 0.5 {records[1]['mid_test_error']:.2f} %")
    code, _, err = run(capsys, "swa", "--from", a, "--epochs", 2, "--swa-start", 1, "--eval-every", 1,
                       "--out", tmp_path / "swa")
    assert code == 0, err
    said = _epoch_lines(err)
    records = [json.loads(line) for line in (tmp_path / "swa" / "metrics.jsonl").read_text().splitlines()]
    assert [(m[1], int(m[2])) for m in said] == [("swa", 1), ("swa", 2)]
    assert said[1][6].endswith(f"SWA test error {records[1]['swa_test_error']:.2f} %")


def test_numbers_stay_readable_when_a_run_blows_up():
    assert prog.fixed(0.123456) == "0.1235" and prog.fixed(21.5163, 3) == "21.516"
    assert prog.fixed(999999.0) == "999999.0000"
    assert prog.fixed(1.1750998e28) == "1.175e+28" and prog.fixed(-4.4e16, 3) == "-4.400e+16"
    assert prog.fixed(float("inf")) == "inf" and prog.fixed(float("nan")) == "nan"


def test_a_huge_but_finite_nll_is_divergence(tmp_path, monkeypatch, capsys):
    """A loss of 1e29 is finite, yet no network short of blown-up weights gives it: the run stops
    with the divergence line (here the bound is lowered so that a normal first epoch passes it)."""
    monkeypatch.setattr(sys.modules["landscape.train"], "DIVERGED_NLL", 0.5)
    code = cli.main(["train", "--epochs", "2", "--out", str(tmp_path / "a"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "training diverged: the train NLL reached " in err and "in epoch 1 (lr 0.05), past 0.5: " \
        "the weights blew up; no epoch finished" in err, err
    assert not (tmp_path / "a" / "model.pt").exists()


@pytest.mark.slow
def test_simplex_lines_name_the_vertex_and_the_final_evaluation_is_counted(tmp_path, capsys):
    assert run(capsys, "train", "--epochs", 2, "--out", tmp_path / "a", "--quiet", "--model-kwargs", "width=8")[0] == 0
    code, _, err = run(capsys, "simplex", "--base", tmp_path / "a" / "model.pt", "--vertices", 3, "--epochs", 2,
                       "--eval-samples", 2, "--face-grid", 2, "--out", tmp_path / "sx", "--format", "svg")
    assert code == 0, err
    assert (tmp_path / "sx" / "simplex_face.svg").exists()  # simplex takes --format as the other commands do
    assert [line.split(" (")[0] for line in err.splitlines() if ": epoch" in line] == [
        "simplex, vertex 2 of 3: epoch 1 of 2", "simplex, vertex 2 of 3: epoch 2 of 2",
        "simplex, vertex 3 of 3: epoch 1 of 2", "simplex, vertex 3 of 3: epoch 2 of 2"], err
    assert re.search(r"^\d+ distinct points \(3 vertices, 1 barycentre\(s\), 2 samples, the face's \d+ grid "
                     r"points\), \d+ a pass over the data, on cpu \(\d+ threads?\), fp32, batch norm by \w+$", err,
                     re.M), err
    assert re.search(r"^points (\d+) of \1 \(100 %\)", err, re.M), err


def test_an_epochs_line_names_the_split_it_was_measured_on():
    """With --val-size the epoch line said "test error" for the validation error the summary then called
    "val error"."""
    from landscape.train import _epoch_note

    record = {"train_loss": 0.5, "train_error": 2.0, "test_error": 20.0, "mid_test_error": 3.0}
    assert _epoch_note(record, "val").endswith("val error 20.00 %, val error at t = 0.5 3.00 %")
    assert _epoch_note(record).endswith("test error 20.00 %, test error at t = 0.5 3.00 %")
