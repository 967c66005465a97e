"""The command line as a user runs it: exit codes, one-line errors, files written."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import cli
from landscape.errors import Terminated
def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_train_writes_the_run_folder_and_prints_errors(tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, _ = run(capsys, "train", "--dataset", "digits", "--model", "convnet", "--epochs", 3,
                          "--seed", 1, "--out", out, "--quiet", "--model-kwargs", "width=16")
    assert code == 0
    assert "test error" in stdout and str(out / "model.pt") in stdout
    for name in ("config.json", "metrics.jsonl", "summary.json", "model.pt", "last.pt"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['test_error']:.2f}%" in stdout
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["model"]["kwargs"]["width"] == 16
    # Same command again without --resume: refused in one line, nothing lost.
    code, _, err = run(capsys, "train", "--epochs", 3, "--seed", 1, "--out", out, "--quiet", "--model-kwargs", "width=16")
    assert code == 2 and "finished run" in _one_line_error(err)
    assert (out / "model.pt").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--model-kwargs", "nosuch=3"], "nosuch"),
        (["--dataset", "mnist"], "--data-path"),
        (["--dataset", "npz", "--data-path", "missing.npz"], "missing.npz"),
        (["--schedule", "steps"], "unknown schedule"),
        (["--epochs", "0"], "--epochs"),
        (["--device", "tpu"], "device"),
        (["--epochs", "two"], "invalid int value"),
        (["--nosuch-option"], "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    try:
        code, _, err = run(capsys, "train", "--out", tmp_path / "r", "--quiet", *argv)
    except SystemExit as e:  # argparse errors exit through SystemExit
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    assert needle in _one_line_error(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_on_a_cpu_machine_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--device", "cuda", "--out", tmp_path / "r", "--quiet")
    assert code == 2 and "CUDA" in _one_line_error(err)


def test_missing_required_out_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train"])
    assert e.value.code == 2
    assert "--out" in _one_line_error(capsys.readouterr().err)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["preresnet20", "vgg16bn"])
def test_cifar_shaped_models_train_one_epoch_on_synthetic_data(tmp_path, capsys, model):
    out = tmp_path / model
    code, stdout, err = run(capsys, "train", "--dataset", "synthetic", "--synthetic-size", "256,64",
                            "--model", model, "--epochs", 1, "--lr", 0.01, "--batch-size", 64, "--out", out, "--quiet")
    assert code == 0, err
    assert "synthetic" in stdout and "synthetic" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is True and summary["dataset"]["synthetic"] is True
    assert summary["model"]["kwargs"]["input_shape"] == [3, 32, 32]


def test_models_lists_the_registry(capsys, monkeypatch):
    code, out, _ = run(capsys, "models")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert code == 0
    for name in ("mlp", "convnet", "lenet5", "vgg16", "vgg16bn", "vgg19", "vgg19bn", "preresnet", "wrn28x10"):
        assert name in rows
    # each with the options --model-kwargs can set, at their defaults
    assert rows["convnet"] == ["width=32"] and rows["preresnet"] == ["depth=20"] and rows["vgg16"] == []
    # under torchrun (it joins no process group) only rank 0 lists them
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, _ = run(capsys, "models")
    assert code == 0 and out == ""


def test_console_script_is_installed_and_reports_errors():
    script = Path(sys.executable).with_name("landscape")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "train", "--dataset", "nosuch", "--out", "/tmp/landscape-never"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown dataset 'nosuch'" in _one_line_error(proc.stderr)


def test_table_cells_keep_their_width_and_value():
    """A loss of 1e25 (swag --scale 1e30, a far plane) stays in its column, in scientific notation."""
    for width, decimals in ((9, 2), (10, 4), (12, 2), (20, 4)):
        for value in (0.15, -3.25, 1234.5, 1.86e25, -1.86e25, 7e-9):
            text = cli._cell(value, width, decimals)
            assert len(text) == width and text[0] == " ", (value, width, text)
            assert float(text) == pytest.approx(value, rel=0.06, abs=10 ** -decimals), (value, width, text)
        assert cli._cell(1.86e25, width, decimals).strip().endswith("e+25")
        assert cli._cell(0.15, width, decimals) == f"{0.15:>{width}.{decimals}f}"  # what fits is unchanged


def test_an_option_the_subcommand_lacks_points_to_the_subcommands_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["curve", "--ckpt", "x.pt", "--out", "y", "--grid", "5"])
    assert e.value.code == 2
    assert _one_line_error(capsys.readouterr().err) == (
        "landscape curve: error: unrecognized arguments: --grid 5 (see landscape curve --help)")


@pytest.mark.parametrize("argv, hint", [
    # the papers' spellings: named before argparse's "--out is required", with what they are called here
    (["connect", "--start", "a.pt", "--end", "b.pt", "--num_bends", "3"], "--num_bends N is --bends N-2"),
    (["connect", "--init_start", "a.pt", "--init_end", "b.pt", "--out", "x"], "the ends are --start and --end"),
    (["train", "--dir", "runs/a"], "--dir: the run's folder is --out"),
    (["train", "--batch_size", "64", "--out", "x"], "did you mean --batch-size?"),
    (["curve", "--ckpt", "c.pt", "--num_points", "61"], "the points along the curve are --points"),
    (["swa", "--from", "a.pt", "--max_num_models", "20"], "SWAG's rank is --swag-rank K"),
    (["plane", "--ckpt", "c.pt", "--amp"], "--amp: evaluations take --precision bf16"),
    (["train", "--transform", "ResNet"], "--transform: the inputs' normalisation is --data-normalization (their "
                                         "--transform ResNet is resnet, VGG is vgg)"),
])
def test_the_papers_option_names_get_the_name_used_here(capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = _one_line_error(capsys.readouterr().err)
    assert err.startswith(f"landscape {argv[0]}: error: unrecognized arguments: --") and hint in err, err


def test_a_papers_hint_naming_options_the_command_lacks_is_not_given(capsys):
    # train has no --free-start: the hint for --fix_start would send the user to an option it lacks
    with pytest.raises(SystemExit):
        cli.main(["train", "--fix_start", "--out", "x"])
    err = _one_line_error(capsys.readouterr().err)
    assert "unrecognized arguments: --fix_start" in err and "--free-start" not in err


@pytest.mark.parametrize("rank, said", [("0", True), ("1", False)])
def test_under_torchrun_rank_0_alone_says_a_usage_error(capsys, monkeypatch, rank, said):
    # every rank parses the same command line; one line from rank 0, as for any other bad input
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--epochs", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (_one_line_error(err).startswith("landscape train: error: argument --epochs: invalid int value: 'x'")
            if said else err == "")


@pytest.mark.parametrize("words", [["--help"], ["plane", "--help"], ["--version"]])
def test_under_torchrun_help_and_version_are_printed_by_rank_0_alone(capsys, monkeypatch, words):
    monkeypatch.setenv("WORLD_SIZE", "2")
    printed = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            cli.main(words)
        assert e.value.code == 0
        out, err = capsys.readouterr()
        printed[rank] = out + err
    assert printed["1"] == "" and ("usage: landscape" in printed["0"] or printed["0"].startswith("landscape "))


@pytest.mark.slow
def test_sigterm_keeps_the_run_says_so_in_one_line_and_resumes(tmp_path):
    """A scheduler's kill (SIGTERM) is met as Ctrl-C is: exit 143, one line, and
    --resume finishes the run to the weights of one that was never stopped."""
    import signal
    import time

    script = Path(sys.executable).with_name("landscape")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    argv = [str(script), "train", "--epochs", "40", "--seed", "3", "--quiet", "--out"]
    proc = subprocess.Popen([*argv, str(tmp_path / "cut")], stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (
            metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    done = metrics.read_text().count("\n")
    assert 2 <= done < 40 and not (tmp_path / "cut" / "model.pt").exists()
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["train_state"]["epoch"]
    assert _one_line_error(err) == (f"landscape: terminated; files written so far are kept (epoch {saved} of 40 in "
                                    f"last.pt) — rerun with --resume to continue")
    for out, extra in (("cut", ["--resume"]), ("whole", [])):
        finished = subprocess.run([*argv, str(tmp_path / out), *extra], capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
    weights = [torch.load(tmp_path / out / "model.pt", weights_only=True)["state_dict"] for out in ("cut", "whole")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


@pytest.mark.parametrize("stop, status, word", [(Terminated, 143, "terminated"), (KeyboardInterrupt, 130,
                                                                                       "interrupted")])
def test_a_signal_while_leaving_the_process_group_is_one_line(monkeypatch, capsys, stop, status, word):
    """Under torchrun a rank that finished waits for the others at a final
    barrier; a SIGTERM or Ctrl-C there is one line and the signal's status,
    not a traceback (the command's own work is done and written)."""
    def interrupted(wait=True):
        raise stop

    monkeypatch.setattr(cli, "_leave_process_group", interrupted)
    code = cli.main(["models"])
    out, err = capsys.readouterr()
    assert code == status and "convnet" in out
    assert _one_line_error(err) == (f"landscape: {word} while waiting for the other processes to finish; files "
                                    f"written so far are kept")


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """Two short digits endpoints trained through the CLI."""
    root = tmp_path_factory.mktemp("ends")
    for seed in (1, 2):
        assert cli.main(["train", "--epochs", "6", "--seed", str(seed), "--out", str(root / str(seed)), "--quiet"]) == 0
    return root / "1" / "model.pt", root / "2" / "model.pt"


@pytest.mark.slow
def test_connect_curve_and_plot_end_to_end(tmp_path, capsys, endpoints):
    a, b = endpoints
    code, out, err = run(capsys, "connect", "--start", a, "--end", b, "--curve", "polychain", "--bends", 1,
                         "--epochs", 6, "--out", tmp_path / "ab", "--quiet")
    assert code == 0, err
    assert "at t = 1/2" in out
    saved = torch.load(tmp_path / "ab" / "model.pt", weights_only=True)
    assert saved["kind"] == "curve" and saved["curve"]["type"] == "polychain"
    config = json.loads((tmp_path / "ab" / "config.json").read_text())
    assert config["config"]["dataset"] == "digits"  # inherited from the endpoints
    code, out, err = run(capsys, "curve", "--ckpt", tmp_path / "ab" / "model.pt", "--points", 11,
                         "--out", tmp_path / "eval", "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for path in ("curve", "line"):
        for key in ("train_loss_barrier", "test_error_barrier", "train_loss_max", "test_error_max", "length"):
            assert key in summary[path]
    # The printed table carries the stored numbers: the train NLL's barrier beside the train loss's (wd 5e-4)
    assert f"{summary['line']['train_loss_barrier']:.4f}" in out
    assert "train-NLL barrier" in out and f"{summary['curve']['train_nll_barrier']:.4f}" in out
    # The endpoints' errors with batch norm re-estimated, beside their own runs' (running statistics) where they differ
    own = [json.loads((p.parent / "summary.json").read_text())["test_error"] for p in (a, b)]
    here = summary["curve"]["metrics"]["test_error"]
    line = next(x for x in out.splitlines() if x.startswith("endpoints' test error"))
    assert line.startswith(f"endpoints' test error: {here['start']:.2f}% and {here['end']:.2f}%")
    differ = any(abs(x - y) >= 0.005 for x, y in zip(own, (here["start"], here["end"])))
    assert (f"their runs' summaries, with the statistics they trained with, say {own[0]:.2f}% and {own[1]:.2f}%"
            in line) == differ, line
    # the runs' figures are kept with the curve: a curve whose runs were moved since still sets them beside its own
    runs = [json.loads((p.parent / "summary.json").read_text()) for p in (a, b)]
    assert saved["meta"]["input_summaries"] == {k: {"test_error": r["test_error"], "eval_split": "test",
                                                    "dataset": r["dataset"]} for k, r in zip(("start", "end"), runs)}
    for key in ("start", "end"):
        saved["meta"][key] = str(tmp_path / "moved" / key / "model.pt")
    (tmp_path / "ab-moved").mkdir()
    torch.save(saved, tmp_path / "ab-moved" / "model.pt")
    code, out, err = run(capsys, "curve", "--ckpt", tmp_path / "ab-moved" / "model.pt", "--points", 3,
                         "--out", tmp_path / "eval-moved", "--quiet")
    assert code == 0, err
    assert next(x for x in out.splitlines() if x.startswith("endpoints' test error")) == line
    with __import__("numpy").load(tmp_path / "eval" / "curve.npz") as z:
        assert z["t"].shape == (11,) and z["curve_train_loss"].shape == (11,) and "line_test_error" in z.files
        # barrier recomputed from the stored per-t values
        tl = z["line_train_loss"]
        assert summary["line"]["train_loss_barrier"] == pytest.approx(tl.max() - (tl[0] + tl[-1]) / 2)
        nll = z["curve_train_nll"]
        assert summary["curve"]["train_nll_barrier"] == pytest.approx(nll.max() - (nll[0] + nll[-1]) / 2)
        assert abs(summary["curve"]["train_nll_barrier"] - summary["curve"]["train_loss_barrier"]) > 1e-6  # wd's term
    assert (tmp_path / "eval" / "curve.png").stat().st_size > 10_000
    code, out, _ = run(capsys, "plot", tmp_path / "eval", "--format", "pdf", "svg")
    assert code == 0 and (tmp_path / "eval" / "curve.pdf").exists() and (tmp_path / "eval" / "curve.svg").exists()
    # A summary copied beside another kind of result was drawn from (a plane without its labels, exit 0): refused
    assert summary["result"] == "curve.npz"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tmp_path / "eval" / "summary.json", mixed / "summary.json")
    shutil.copy(tmp_path / "eval" / "curve.npz", mixed / "plane.npz")
    code, _, err = run(capsys, "plot", mixed)
    assert code == 2 and _one_line_error(err).endswith(
        "summary.json summarises curve.npz, not the plane.npz beside it (copied from another result?); rerun the "
        "command that made them")


@pytest.mark.slow
def test_an_interrupted_curve_evaluation_resumes_to_the_uninterrupted_result(tmp_path, capsys, endpoints,
                                                                             monkeypatch):
    """The points evaluated before an interruption (here Ctrl-C after the first
    chunk) stay in the folder with their probabilities; --resume evaluates only
    the others, and the result — ensembles included — is the fresh run's."""
    import numpy as np

    import landscape.sweep as sweep_module

    a, b = endpoints
    assert cli.main(["connect", "--start", str(a), "--end", str(b), "--epochs", "2", "--out", str(tmp_path / "ab"),
                     "--quiet"]) == 0
    args = ["curve", "--ckpt", tmp_path / "ab" / "model.pt", "--points", 7, "--points-per-pass", 4, "--quiet"]
    real, calls = sweep_module.evaluate_points, []

    def interrupted_after_one_chunk(model, anchors, coefficients, *a, **kw):
        calls.append(len(coefficients))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(model, anchors, coefficients, *a, **kw)

    monkeypatch.setattr(sweep_module, "evaluate_points", interrupted_after_one_chunk)
    out = tmp_path / "eval"
    code, _, err = run(capsys, *args, "--out", out)
    assert code == 130 and "--resume" in _one_line_error(err)
    assert not (out / "curve.npz").exists()
    with np.load(out / "sweep.partial.npz") as z:
        done, probs = z["done"], z["probs"]
    assert done.sum() == 4 and done.shape == (12,)  # 7 + 7 t values, the two shared ends once
    assert np.allclose(probs[done].sum(axis=-1), 1, atol=1e-5) and not probs[~done].any()

    code, _, err = run(capsys, *args, "--out", out)  # without --resume: refused, nothing lost
    assert code == 2 and "--resume" in _one_line_error(err) and (out / "sweep.partial.npz").exists()

    calls.clear()
    monkeypatch.setattr(sweep_module, "evaluate_points", lambda *a, **kw: calls.append(len(a[2])) or real(*a, **kw))
    code, _, err = run(capsys, *args, "--out", out, "--resume")
    assert code == 0, err
    assert "kept 4 of 12" in err and sum(calls) == 8  # only the points not kept
    assert not (out / "sweep.partial.npz").exists()
    code, _, err = run(capsys, *args, "--out", tmp_path / "fresh")
    assert code == 0, err
    with np.load(out / "curve.npz") as got, np.load(tmp_path / "fresh" / "curve.npz") as want:
        assert set(got.files) == set(want.files)
        for key in want.files:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    resumed, fresh = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "fresh"))
    for path in ("curve", "line"):
        for key in ("ensemble_test_nll", "ensemble_test_error", "train_loss_barrier"):
            assert resumed[path][key] == pytest.approx(fresh[path][key], rel=1e-6, abs=1e-7)
    code, _, err = run(capsys, *args, "--out", out)  # a finished folder: refused without --resume
    assert code == 2 and "curve.npz" in _one_line_error(err)

    # Stopped between the summary and the result file: the partial store is still there, and --resume
    # finishes the sweep (it said "no such file" for the summary, whatever was asked, when the order was reverse).
    real_write = sweep_module.write_npz

    def stop_at_the_result(path, arrays):
        if path.name == "curve.npz":
            raise KeyboardInterrupt
        return real_write(path, arrays)

    monkeypatch.setattr(sweep_module, "evaluate_points", real)
    monkeypatch.setattr(sweep_module, "write_npz", stop_at_the_result)
    code, _, err = run(capsys, *args, "--out", tmp_path / "stopped")
    assert code == 130 and (tmp_path / "stopped" / "sweep.partial.npz").exists()
    assert not (tmp_path / "stopped" / "curve.npz").exists()
    monkeypatch.setattr(sweep_module, "write_npz", real_write)
    code, _, err = run(capsys, *args, "--out", tmp_path / "stopped", "--resume")
    assert code == 0, err
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["curve"]["train_loss_barrier"] == \
        pytest.approx(fresh["curve"]["train_loss_barrier"], rel=1e-6, abs=1e-7)
    (tmp_path / "stopped" / "summary.json").unlink()  # a result file alone cannot be finished
    code, _, err = run(capsys, *args, "--out", tmp_path / "stopped", "--resume")
    assert code == 2 and _one_line_error(err).endswith("holds curve.npz but neither summary.json nor the sweep's "
                                                       "partial store to finish it from; choose another --out")


def test_no_command_writes_into_another_commands_folder(tmp_path, capsys, endpoints):
    """--out naming a training run (or any folder whose config.json names another
    command, or a bare model.pt) is refused before any work, and the run's files
    are left as they were; so is an --out that is a file."""
    import shutil

    a, b = endpoints
    run_dir = tmp_path / "a"
    shutil.copytree(a.parent, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for command in (["ensemble", a, b], ["rays", "--center", a, "--directions", 1], ["simplex", "--base", a],
                    ["width", "--swa", a, "--sgd", b], ["fge", "--from", a]):
        code, _, err = run(capsys, *command, "--out", run_dir)
        assert code == 2, (command, err)
        assert _one_line_error(err).endswith(f"{run_dir} holds the results of another command (train, see its "
                                             "config.json); choose another --out"), command
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(a, bare / "model.pt")
    code, _, err = run(capsys, "ensemble", a, b, "--out", bare)
    assert code == 2 and "holds a network (model.pt) of another run" in _one_line_error(err)
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "ensemble", a, b, "--out", tmp_path / "file")
    assert code == 2 and _one_line_error(err).endswith("is a file, not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # was "File exists", naming neither
    code, _, err = run(capsys, "ensemble", a, b, "--out", tmp_path / "dangling")
    assert code == 2 and _one_line_error(err).endswith(f"is a link to {tmp_path / 'nowhere'}, which does not "
                                                       f"exist; make that folder, or choose another --out")


def test_a_corrupt_result_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    (folder / "curve.npz").write_bytes(b"PK\x03\x04 cut short")
    code, _, err = run(capsys, "plot", folder)
    assert code == 2 and "curve.npz: not a readable result" in _one_line_error(err)


@pytest.mark.slow
def test_connect_refuses_mismatched_architectures(tmp_path, capsys, endpoints):
    a, _ = endpoints
    other = tmp_path / "wide"
    assert cli.main(["train", "--epochs", "1", "--model-kwargs", "width=16", "--out", str(other), "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "connect", "--start", a, "--end", other / "model.pt", "--epochs", 1,
                       "--out", tmp_path / "ab", "--quiet")
    line = _one_line_error(err)
    assert code == 2
    assert "key '" in line and "shape" in line and "(32, 1, 3, 3)" in line and "(16, 1, 3, 3)" in line
    assert not (tmp_path / "ab" / "model.pt").exists()


def test_curve_commands_reject_wrong_files(tmp_path, capsys):
    code, _, err = run(capsys, "connect", "--start", tmp_path / "nope.pt", "--end", tmp_path / "nope2.pt",
                       "--out", tmp_path / "x", "--quiet")
    assert code == 2 and "nope.pt" in _one_line_error(err)
    from landscape.checkpoint import save_checkpoint
    from landscape.models import create_model

    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    save_checkpoint(tmp_path / "m.pt", net.state_dict(),
                    {"name": "convnet", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8], "width": 4}})
    code, _, err = run(capsys, "curve", "--ckpt", tmp_path / "m.pt", "--out", tmp_path / "e", "--quiet")
    assert code == 2 and "not a curve" in _one_line_error(err)
    code, _, err = run(capsys, "plot", tmp_path)
    assert code == 2 and "no stored results" in _one_line_error(err)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_finished_steps(tmp_path, capsys):
    argv = ["demo", "--out", tmp_path / "demo", "--epochs", 3, "--grid", 4, "--points", 5, "--directions", 2]
    code, out, err = run(capsys, *argv)  # stderr no terminal: a log
    assert code == 0, err
    # the sweeps and samplers say what they evaluate and how far they are (a step of minutes was silent); the
    # trainings' epoch lines are left to the commands themselves
    assert err.count("distinct points") >= 10 and "points 8 of 8 (100 %)" in err and ": epoch 1 of" not in err
    argv.append("--quiet")
    for needle in ("straight line", "Bezier curve, 1 bend", "polygonal chain, 1 bend", "SWA (from a)",
                   "SGD (continued from a)", "FGE ensemble (4)", "SWAG average (30)", "ESS, SWAG PCA plane (30)",
                   "ESS, curve plane (30)", "VD last, deterministic", "VD HWA avg, ensemble (30)", "median width",
                   "VD posteriors, line", "VD posteriors, Bezier", "train-NLL barrier"):
        assert needle in out, needle
    figures = [line.strip() for line in out.splitlines() if line.strip().endswith(".png")]
    assert len(figures) == 22 and all(Path(f).exists() for f in figures)
    assert str(tmp_path / "demo" / "compare" / "curves.png") in figures  # the Bezier curve and the chain together
    assert str(tmp_path / "demo" / "compare" / "averages.png") in figures  # SWAG, subspaces, VI, HWA together
    assert str(tmp_path / "demo" / "vi-bezier-eval" / "posterior-curve.png") in figures
    assert str(tmp_path / "demo" / "swa" / "swa.png") in figures  # SWA against SGD over its 10 epochs
    for name in ("around-swa", "around-sgd", "trajectory"):  # Li et al.'s planes
        assert str(tmp_path / "demo" / name / "plane_train_loss.png") in figures, name
    trajectory = json.loads((tmp_path / "demo" / "trajectory" / "summary.json").read_text())
    assert trajectory["checkpoints"] == 4 and trajectory["start_label"] == "init"
    # Every number in the line row is the stored summary's.
    line = json.loads((tmp_path / "demo" / "bezier-eval" / "summary.json").read_text())["line"]
    assert f"{line['train_loss_barrier']:.4f}" in out and f"{line['train_nll_barrier']:.4f}" in out
    # A rerun reuses every finished step and prints the same table.
    code, again, _ = run(capsys, *argv)
    assert code == 0
    table = lambda text: [l for l in text.splitlines() if not l.startswith("[") and "total" not in l]
    assert table(again) == table(out)
    # a rerun with other options is told so before any step, with the options it was made with
    code, _, err = run(capsys, *argv[:4], 4, *argv[5:])
    assert code == 2 and _one_line_error(err) == (
        f"landscape: error: {tmp_path / 'demo'} holds a demo run with other options (--epochs 3, now 4); rerun "
        f"it with those to reuse its finished steps, or choose another --out")


def test_demo_json_records_options_only_where_they_are_the_runs(tmp_path):
    """A folder an earlier build began (no demo.json) is not recorded with options its steps may refuse (the
    record then refused its own options); a record whose run never began is replaced; --out a file: one line."""
    import argparse

    from landscape.errors import UserError

    def args(out, epochs):
        return argparse.Namespace(out=out, epochs=epochs, grid=3, points=3, directions=1)

    old = tmp_path / "old"
    (old / "a").mkdir(parents=True)
    (old / "a" / "config.json").write_text(json.dumps({"command": "train", "config": {"epochs": 2}}))  # as train
    cli._check_demo(args(old, 2))
    assert not (old / "demo.json").exists()
    with pytest.raises(UserError, match="holds a demo run with other options \\(--epochs 2, now 5\\)"):
        cli._check_demo(args(old, 5))  # its endpoint's config says which: not its step's "--resume" advice
    fresh = tmp_path / "fresh"
    cli._check_demo(args(fresh, 2))
    cli._check_demo(args(fresh, 3))  # nothing ran yet: the new options stand
    assert json.loads((fresh / "demo.json").read_text())["epochs"] == 3
    (fresh / "a").mkdir()
    with pytest.raises(UserError, match="holds a demo run with other options \\(--epochs 3, now 4\\)"):
        cli._check_demo(args(fresh, 4))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        cli._check_demo(args(tmp_path / "file", 2))
    (tmp_path / "run").mkdir()  # another command's run: the demo's twenty folders went inside it
    (tmp_path / "run" / "config.json").write_text(json.dumps({"command": "train", "config": {"epochs": 2}}))
    with pytest.raises(UserError, match=r"run holds the results of another command \(train, see its config.json\)"):
        cli._check_demo(args(tmp_path / "run", 2))
    assert not (tmp_path / "run" / "demo.json").exists()


@pytest.mark.parametrize("command", ["width", "rays", "demo"])
def test_an_abbreviation_argparse_takes_gets_no_papers_hint(capsys, command):
    import argparse

    # --dir abbreviates --directions in these: it is the user's option, not the papers' --dir
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert cli._option_hint(sub.choices[command], "--dir") == ""
    assert cli._option_hint(sub.choices["train"], "--dir").startswith("--dir: the run's folder is --out")


@pytest.mark.parametrize("option, value, said", [("--grid", 1, "--grid must be at least 2, got 1"),
                                                 ("--directions", 0, "--directions must be at least 1"),
                                                 ("--epochs", 0, "--epochs must be at least 1, got 0"),
                                                 ("--points", 2, "--points must be at least 3")])
def test_demo_options_a_later_step_would_refuse_are_refused_before_training(tmp_path, capsys, option, value, said):
    code, _, err = run(capsys, "demo", "--out", tmp_path / "d", option, value, "--quiet")
    assert code == 2 and said in _one_line_error(err)
    assert not (tmp_path / "d").exists()  # nothing trained, nothing recorded


def test_multi_network_checkpoints_are_refused_where_one_network_is_expected(tmp_path, capsys):
    from landscape.curves.base import create_curve
    from landscape.curves.fit import save_curve
    from landscape.models import create_model
    from landscape.weights import ParamSpace

    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    space = ParamSpace.of(net)
    vec = space.flatten(net)
    spec = {"name": "convnet", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8], "width": 4}}
    save_curve(tmp_path / "curve.pt", create_curve("bezier", space, vec, vec + 1), net, spec)
    for argv in (["ensemble", tmp_path / "curve.pt"],
                 ["rays", "--center", tmp_path / "curve.pt", "--out", tmp_path / "r"],
                 ["connect", "--start", tmp_path / "curve.pt", "--end", tmp_path / "curve.pt", "--out", tmp_path / "c"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "a curve checkpoint, where one network is expected" in _one_line_error(err)


@pytest.mark.parametrize("command", [["ensemble", "a.pt", "b.pt"], ["demo"], ["subspace", "--ckpt", "swag.pt"]])
def test_one_process_commands_refuse_torchrun_and_errors_are_said_once(tmp_path, capsys, monkeypatch, command):
    """Under torchrun (WORLD_SIZE > 1) a command that does not share its work
    out refuses before doing anything (every rank would repeat the whole run
    and write the same files); rank 0 says why, the other ranks stay quiet."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run(capsys, *command, "--out", tmp_path / "x")
    assert code == 2 and f"'{command[0]}' runs on one process; start it without torchrun" in _one_line_error(err)
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("RANK", "1")
    code, out, err = run(capsys, *command, "--out", tmp_path / "x")
    assert code == 2 and out == "" and err == ""


@pytest.mark.parametrize("command", [["plane", "--points", "a.pt", "b.pt", "c.pt"], ["train", "--epochs", "1"]])
def test_a_rank_without_a_gpu_of_its_own_says_so_itself(tmp_path, capsys, monkeypatch, command):
    """torchrun with more processes per node than GPUs: the ranks past the last
    GPU fail before joining the group, each with one line naming its rank (not
    rank 0's job: rank 0 has a GPU and waits for them until torchrun ends it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cli, "_leave_process_group", lambda wait=True: calls.append(wait))
    calls = []
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    code, out, err = run(capsys, *command, "--device", "cuda", "--out", tmp_path / "x")
    assert code == 2 and out == ""
    assert _one_line_error(err) == ("landscape: error: rank 1: local process 1 has no GPU of its own: this node has "
                                    "1 CUDA device(s); start at most 1 per node (torchrun --nproc-per-node) or use "
                                    "--device cpu")
    assert calls == [False]  # it does not wait at the final barrier for ranks that may never come
    assert not (tmp_path / "x").exists()


def test_ctrl_c_advises_resume_only_where_the_command_has_it(tmp_path, capsys, monkeypatch):
    """--resume for the commands that take it; the demo reuses finished steps; others just keep their files;
    an --out not yet made holds nothing to keep or resume."""
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    for folder in ("p", "runs/demo", "e", "locked", "q", "r", "e2"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / ("config.json" if folder != "locked" else ".landscape.lock")).write_text("{}")
    np.savez(tmp_path / "q" / "sweep.partial.npz", done=np.array([True, True, False]), key="k")  # a sweep's store
    (tmp_path / "r" / "metrics.jsonl").write_text("")  # more than its settings, but nothing telling how far
    (tmp_path / "demo-locked" / "a").mkdir(parents=True)  # demo's first step's folder, holding its lock alone
    (tmp_path / "demo-locked" / "a" / ".landscape.lock").write_text("")
    for argv, said in ((["train", "--out", "locked"], "interrupted before anything was written to locked"),
                       (["demo", "--out", "demo-locked"], "interrupted before anything was written to demo-locked"),
                       (["plane", "--points", "a.pt", "b.pt", "c.pt", "--out", "p"],  # its settings alone
                        "interrupted; nothing was computed yet (only config.json was written) — rerun with --resume "
                        "to start it"),
                       (["demo", "--out", "runs/demo"],
                        "interrupted; files written so far are kept — rerun the same command: finished steps are reused"),
                       (["ensemble", "a.pt", "b.pt", "--out", "e"],  # it takes --resume (shows a finished one)
                        "interrupted; nothing was computed yet (only config.json was written) — rerun with --resume "
                        "to start it"),
                       (["plot", "x", "y", "--out", "e2"], "interrupted; files written so far are kept"),
                       (["plane", "--points", "a.pt", "b.pt", "c.pt", "--out", "q"],
                        "interrupted; files written so far are kept (2 of 3 points) — rerun with --resume to "
                        "continue"),
                       (["train", "--out", "r"],
                        "interrupted; files written so far are kept — rerun with --resume to continue"),
                       (["train", "--out", "new"], "interrupted before anything was written to new")):
        args = cli.build_parser().parse_args(argv)
        monkeypatch.setattr(args, "func", interrupted)
        assert cli._run_command(args) == 130
        assert _one_line_error(capsys.readouterr().err) == f"landscape: {said}"
        # under torchrun the signal may have reached this rank alone: it must not wait for the others
        assert args.failed_alone


def test_swa_refuses_an_lr_it_would_not_use(tmp_path, capsys, endpoints):
    """--lr is the rate before --swa-start: with --swa-start 0 (the default) it
    was silently ignored, yet recorded in config.json."""
    code, _, err = run(capsys, "swa", "--from", endpoints[0], "--epochs", 1, "--lr", 5, "--out", tmp_path / "s")
    assert code == 2 and _one_line_error(err) == (
        "landscape: error: --lr sets the rate before --swa-start; with --swa-start 0 the rate is --swa-lr "
        "throughout (leave --lr out, or give --swa-start)")
    assert not (tmp_path / "s").exists()


def test_plot_of_an_unfinished_sweep_says_how_to_finish_it(tmp_path, capsys):
    (tmp_path / "sweep.partial.npz").write_bytes(b"")
    code, _, err = run(capsys, "plot", tmp_path)
    assert code == 2 and _one_line_error(err) == (
        f"landscape: error: {tmp_path}: the sweep there is unfinished (sweep.partial.npz); finish it by rerunning "
        f"its command with --resume, then plot")
    code, _, err = run(capsys, "plot", tmp_path / "sweep.partial.npz")
    assert code == 2 and _one_line_error(err) == (f"landscape: error: {tmp_path / 'sweep.partial.npz'} is a file; "
                                                  f"plot takes the result folder that holds it ({tmp_path})")
    (tmp_path / "sweep.partial.npz").unlink()
    code, _, err = run(capsys, "plot", tmp_path)
    assert code == 2 and _one_line_error(err).endswith("no stored results to draw (expected curve.npz, plane.npz, "
                                                        "rays.npz, sharpness.npz, simplex.npz, swag.npz, "
                                                        "subspace.npz, variational.npz, an SWA run's "
                                                        "metrics.jsonl, or the record of a comparison, curves.json, "
                                                        "planes.json, averages.json)")


def test_damaged_stores_and_summaries_are_one_line(tmp_path, capsys):
    import numpy as np

    from landscape.errors import UserError
    from landscape.evaluate import METRICS
    from landscape.sweep import STORE, _load_store

    store = tmp_path / STORE
    np.savez(store, key=np.array("k"), done=np.zeros(5, dtype=bool), **{m: np.zeros(5) for m in METRICS})
    assert _load_store(store, "k", 5)[0].shape == (5,)
    np.savez(store, key=np.array("k"), done=np.zeros(5, dtype=bool), **{m: np.zeros(3) for m in METRICS})
    with pytest.raises(UserError, match="damaged partial results \\(arrays of other lengths than its 5 points\\)"):
        _load_store(store, "k", 5)
    store.write_text("garbage")
    with pytest.raises(UserError, match="unreadable partial results \\(not an .npz archive\\); delete it"):
        _load_store(store, "k", 5)
    store.unlink()
    np.savez(tmp_path / "plane.npz", x=np.zeros(2))
    for text in ("[]", "null"):
        (tmp_path / "summary.json").write_text(text)
        code, _, err = run(capsys, "plot", tmp_path)
        assert code == 2 and "summary.json: not a result summary (a JSON object was expected" in _one_line_error(err)
    (tmp_path / "plane.npz").write_text("garbage")
    code, _, err = run(capsys, "plot", tmp_path)
    assert code == 2 and _one_line_error(err).endswith("plane.npz: not a readable result (not an .npz archive)")
    from landscape.checkpoint import claim_folder

    (tmp_path / "config.json").write_text("{bad")
    with pytest.raises(UserError, match="config.json: unreadable \\(damaged, or not a JSON object\\), so whose"):
        claim_folder(tmp_path, "plane")


def test_naming_a_checkpoints_factory_with_model_trusts_it(tmp_path, capsys, endpoints):
    """The README's second way to trust your own factory: --model package.module:factory.
    connect and swa refused it unless LANDSCAPE_TRUSTED_FACTORIES was set."""
    from landscape.checkpoint import load_checkpoint, save_checkpoint

    factory = "landscape.models.simple:convnet"
    mine = []
    for i, path in enumerate(endpoints):
        ck = load_checkpoint(path)
        mine.append(tmp_path / f"mine{i}.pt")
        save_checkpoint(mine[-1], ck.state_dict, dict(ck.model, name=factory), meta=ck.meta)
    connect = ["connect", "--start", mine[0], "--end", mine[1], "--epochs", 1, "--quiet"]
    code, _, err = run(capsys, *connect, "--out", tmp_path / "refused")
    assert code == 2 and "set LANDSCAPE_TRUSTED_FACTORIES=landscape.models.simple" in _one_line_error(err)
    code, out, err = run(capsys, *connect, "--model", factory, "--out", tmp_path / "c")
    assert code == 0, err
    # the command it prints to evaluate the curve names the factory, as the curve's reader needs
    assert f"evaluate it with: landscape curve --ckpt {tmp_path / 'c' / 'model.pt'} --model {factory} --out DIR" in out
    swa = ["swa", "--from", mine[0], "--epochs", 1, "--quiet", "--out", tmp_path / "s"]
    code, _, err = run(capsys, *swa)
    assert code == 2 and "set LANDSCAPE_TRUSTED_FACTORIES=landscape.models.simple" in _one_line_error(err)
    code, _, err = run(capsys, *swa, "--model", factory)
    assert code == 0, err
    # Every later use of what they wrote: finished runs resumed, the curve evaluated, its plane, a simplex.
    for argv in (swa + ["--resume"], connect + ["--out", tmp_path / "c", "--resume"],
                 ["curve", "--ckpt", tmp_path / "c" / "model.pt", "--points", 3, "--out", tmp_path / "cv"],
                 ["plane", "--ckpt", tmp_path / "c" / "model.pt", "--grid", 3, "--out", tmp_path / "pl"],
                 ["simplex", "--base", mine[0], "--vertices", 2, "--epochs", 1, "--eval-samples", 2,
                  "--face-grid", 2, "--quiet", "--out", tmp_path / "sx"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "set LANDSCAPE_TRUSTED_FACTORIES=landscape.models.simple" in _one_line_error(err), argv
        code, _, err = run(capsys, *argv, "--model", factory)
        assert code == 0, (argv, err)
    code, _, err = run(capsys, "curve", "--ckpt", tmp_path / "c" / "model.pt", "--model", "mlp", "--out",
                       tmp_path / "cv2")
    assert code == 2 and re.search(rf"holds a '{re.escape(factory)}' network( \(.*\))?; --model mlp does not apply "
                                   rf"to it \(--model {re.escape(factory)}, its own\)$", _one_line_error(err))
    code, _, err = run(capsys, "plane", "--ckpt", tmp_path / "c" / "model.pt", "--model-kwargs", "width=8", "--out",
                       tmp_path / "pl2")
    assert code == 2 and re.search(rf"{re.escape(str(tmp_path / 'c' / 'model.pt'))} holds a '{re.escape(factory)}' "
                                   rf"network( \(.*\))?; --model-kwargs does not apply to it \(leave it out\)$",
                                   _one_line_error(err))


def test_the_rays_table_shows_undefined_asymmetry_as_n_a(tmp_path, capsys):
    """Widths beyond the rays' reach print as "> distance"; their ratio is undefined, not a distance."""
    import argparse

    from tests.test_plots import write_rays

    folder = write_rays(tmp_path / "r", line=False)
    summary = json.loads((folder / "summary.json").read_text())
    summary.update(directions=6, distance=2.0)
    for c, (width, asym) in zip(summary["centers"], ((None, None), (1.5, 0.25))):
        c.update(center_train_loss=0.1, center_test_error=1.0, median_width=width, median_full_width=width,
                 median_asymmetry=asym)
    (folder / "summary.json").write_text(json.dumps(summary))
    cli._report_rays(argparse.Namespace(out=folder, format=["png"]))
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("SGD", "SWA"))]
    assert rows[0][-5:] == [">", "2", ">", "2", "n/a"], rows
    assert rows[1][-3:] == ["1.500", "1.500", "0.25"], rows
    # the line: a result from before the valley prints its line once; a valley narrower than the steps says so
    line = {"length": 2.0, "between_train_loss_max": 0.5, "train_loss_barrier": 0.1, "train_loss_max": 0.9}
    for valley, said in ((None, None), ({"rise": 0.1, "minimum_at": 1.0, "minimum_train_loss": 0.2, "from": 1.0,
                                          "to": 1.0, "points": [
                                              {"label": "SWA", "position": 0.0, "offset_from_middle": None,
                                               "relative_offset": None, "loss_beyond": 3.0, "beyond_at": -1.0},
                                              {"label": "SGD", "position": 2.0, "offset_from_middle": None,
                                               "relative_offset": None, "loss_beyond": 4.0, "beyond_at": 3.0}]},
                                         "narrower than the line's steps")):
        summary["line"] = dict(line, **({"valley": valley} if valley else {}))
        (folder / "summary.json").write_text(json.dumps(summary))
        cli._report_rays(argparse.Namespace(out=folder, format=["png"]))
        out = capsys.readouterr().out
        assert out.count("line through the centres") == 1, out
        assert (said in out) if said else "valley" not in out, out


def test_plane_of_a_curve_without_bends_says_why_not(tmp_path, capsys):
    from landscape.curves import create_curve
    from landscape.curves.fit import save_curve
    from landscape.models import create_model
    from landscape.weights import ParamSpace

    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    space = ParamSpace.of(net)
    vec = space.flatten(net)
    spec = {"name": "convnet", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8], "width": 4}}
    save_curve(tmp_path / "seg.pt", create_curve("polychain", space, vec, vec + 1, bends=0, fix_end=False), net, spec)
    code, _, err = run(capsys, "plane", "--ckpt", tmp_path / "seg.pt", "--grid", 3, "--out", tmp_path / "p")
    assert code == 2 and _one_line_error(err) == (
        f"landscape: error: {tmp_path / 'seg.pt'} is a curve without bends (a straight segment), which spans no "
        f"plane; use --points A.pt B.pt C.pt with a third network")
    assert not (tmp_path / "p").exists()


def test_a_validation_split_the_networks_trained_on_is_noted(tmp_path, capsys, endpoints):
    """--val-size on networks trained on the whole training split reports "validation"
    metrics partly on their own training images; one note says so, and only then."""
    a, b = endpoints
    note = (f"note: {a} was trained on the whole training split; the validation split here (--val-size 100, "
            f"--data-seed 0) overlaps its training data, so validation metrics are optimistic")
    code, _, err = run(capsys, "ensemble", a, b, "--val-size", 100, "--out", tmp_path / "v")
    assert code == 0 and note in err.splitlines()
    code, _, err = run(capsys, "ensemble", a, b, "--out", tmp_path / "t")
    assert code == 0 and "note:" not in err
    # a network that held out this very split gets no note
    code, _, err = run(capsys, "train", "--epochs", 1, "--val-size", 100, "--quiet",
                       "--out", tmp_path / "held")
    assert code == 0
    code, _, err = run(capsys, "ensemble", tmp_path / "held" / "model.pt", "--out", tmp_path / "h")
    assert code == 0 and "note:" not in err
    code, _, err = run(capsys, "ensemble", tmp_path / "held" / "model.pt", "--data-seed", 3, "--out", tmp_path / "h3")
    assert code == 0 and "held out --val-size 100 with --data-seed 0; the validation split here (--val-size 100, " \
                         "--data-seed 3) overlaps" in err
    # every network is checked, not only the first
    code, _, err = run(capsys, "ensemble", tmp_path / "held" / "model.pt", a, "--val-size", 100, "--out", tmp_path / "m")
    assert code == 0 and [line for line in err.splitlines() if line.startswith("note:")] == [note]
    # and commands that train from networks say it too
    code, _, err = run(capsys, "connect", "--start", a, "--end", b, "--val-size", 100, "--epochs", 1, "--quiet",
                       "--out", tmp_path / "c")
    assert code == 0 and note in err.splitlines() and note.replace(str(a), str(b)) in err.splitlines()
    # a split that cannot be made is one line: no note on it comes first
    for argv in (("curve", "--ckpt", tmp_path / "c" / "model.pt"), ("ensemble", a, b), ("swa", "--from", a),
                 ("vi", "--from", a), ("connect", "--start", a, "--end", b)):
        code, _, err = run(capsys, *argv, "--val-size", 1436, "--out", tmp_path / "cut")
        assert code == 2 and "--val-size must be an integer in 0..1435" in _one_line_error(err), argv


def test_swa_eval_every_draws_swa_png_and_plot_redraws_it(tmp_path, capsys, endpoints):
    a, _ = endpoints
    code, out, err = run(capsys, "swa", "--from", a, "--epochs", 3, "--eval-every", 1, "--out", tmp_path / "s",
                         "--quiet")
    assert code == 0 and f"figure: {tmp_path / 's' / 'swa.png'}" in out, err
    (tmp_path / "s" / "swa.png").unlink()
    code, out, err = run(capsys, "plot", tmp_path / "s", "--format", "svg")
    assert code == 0 and (tmp_path / "s" / "swa.svg").stat().st_size > 0, err
    code, out, err = run(capsys, "swa", "--from", a, "--epochs", 2, "--out", tmp_path / "n", "--quiet")
    assert code == 0 and "figure:" not in out
    code, _, err = run(capsys, "plot", tmp_path / "n")
    assert code == 2 and "no evaluation of the SWA average in metrics.jsonl (run 'landscape swa' with --eval-every" \
        in _one_line_error(err)


def test_foreign_and_infinite_checkpoints_are_refused_by_the_training_commands(tmp_path, capsys, endpoints):
    """connect / swa / fge guessed convnet for a foreign checkpoint (its keys happened to fit), and
    trained from infinite weights until 'the loss became nan ... lower --lr' blamed the rate."""
    from landscape.checkpoint import load_checkpoint, save_checkpoint

    a, b = endpoints
    ck = load_checkpoint(a)
    torch.save({"model_state": ck.state_dict}, tmp_path / "foreign.pt")
    sd = dict(ck.state_dict)
    sd["classifier.weight"] = sd["classifier.weight"].clone()
    sd["classifier.weight"][0, :2] = float("inf")
    save_checkpoint(tmp_path / "inf.pt", sd, ck.model, meta=ck.meta)
    foreign, infinite = tmp_path / "foreign.pt", tmp_path / "inf.pt"
    for argv in (["connect", "--start", foreign, "--end", b], ["swa", "--from", foreign], ["fge", "--from", foreign]):
        code, _, err = run(capsys, *argv, "--epochs", 1, "--quiet", "--out", tmp_path / argv[0])
        assert code == 2 and _one_line_error(err) == (f"landscape: error: {foreign}: foreign checkpoint without "
                                                      f"architecture; name it with --model"), argv
        assert not (tmp_path / argv[0]).exists()
    for argv in (["connect", "--start", a, "--end", infinite], ["swa", "--from", infinite]):
        code, _, err = run(capsys, *argv, "--epochs", 1, "--quiet", "--out", tmp_path / argv[0])
        assert code == 2 and _one_line_error(err) == (f"landscape: error: {infinite}: 2 infinite weights; "
                                                      f"refusing to use it"), argv
    code, _, err = run(capsys, "swa", "--from", foreign, "--model", "convnet", "--epochs", 1, "--quiet",
                       "--out", tmp_path / "named")
    assert code == 0, err


def test_plot_of_results_missing_an_entry_is_one_line(tmp_path, capsys):
    """A summary or .npz without an entry a figure needs ended in a KeyError traceback."""
    import numpy as np

    from tests.test_plots import write_rays

    folder = write_rays(tmp_path / "r", line=False)
    with np.load(folder / "rays.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "train_loss"}
    np.savez(folder / "rays.npz", **arrays)
    code, _, err = run(capsys, "plot", folder)
    assert code == 2 and _one_line_error(err) == (f"landscape: error: {folder}: the stored results lack 'train_loss' "
                                                  f"(edited, or written by another version?); rerun the command that "
                                                  f"made them")


def test_plot_of_a_read_only_result_folder_says_how_to_draw_elsewhere(tmp_path, capsys, monkeypatch):
    """Figures are drawn in the result folder: one that cannot be written (a shared, read-only mount) gave the
    error alone. It now says what to do. (Run as root, a chmod would not stop the write: the failure is made.)"""
    import errno

    import landscape.plots.style as style
    from tests.test_plots import write_rays

    folder = write_rays(tmp_path / "r", line=False)

    def refused(obj, path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(style, "atomic_save", refused)
    code, _, err = run(capsys, "plot", folder)
    assert code == 2 and _one_line_error(err) == (
        f"landscape: error: {folder / 'rays_train_loss.png'}: Read-only file system; draw its figures in a folder "
        f"you can write: landscape plot {folder} --out NEW_FOLDER")
    code, _, err = run(capsys, "demo", "--points", 2, "--out", tmp_path / "demo")  # said before any training
    assert code == 2 and "--points must be at least 3" in _one_line_error(err) and not (tmp_path / "demo").exists()


def test_a_figure_being_drawn_is_left_to_its_plot_and_a_killed_plots_is_cleared(tmp_path, capsys):
    """A command started on a result folder cleared every temporary file there as a killed writer's, a
    running `plot`'s too, which then failed with "plane_train_loss.pdf: No such file or directory"; and a
    plot killed while saving left its temporary file for good. A command now leaves a figure's temporary
    file younger than ten minutes (a plot drawing now), and `plot` clears figures' older ones (and no
    other kind: it holds no lock, and a notebook may be writing a sweep's store there)."""
    import time

    from landscape.checkpoint import FRESH_FIGURE_S, claim_folder, folder_locks
    from tests.test_plots import write_rays

    folder = write_rays(tmp_path / "r", line=False)
    old = time.time() - FRESH_FIGURE_S - 60
    drawing = folder / ".rays_train_loss.png.ab12cd34.tmp"
    killed = folder / ".rays_train_loss.pdf.ef56gh78.tmp"
    store = folder / ".sweep.partial.npz.ij90kl12.tmp"
    for f in (drawing, killed, store):
        f.write_bytes(b"half")
    for f in (killed, store):
        os.utime(f, (old, old))
    code, out, _ = run(capsys, "plot", folder)
    assert code == 0 and "rays_train_loss.png" in out
    assert drawing.exists() and not killed.exists() and store.exists()
    with folder_locks():  # a command claiming the folder: the store's stale file goes, the figure being drawn stays
        claim_folder(folder, "rays")
    assert drawing.exists() and not store.exists()
    os.utime(drawing, (old, old))
    with folder_locks():
        claim_folder(folder, "rays")
    assert not drawing.exists()


def test_python_m_landscape_is_the_command_line(tmp_path):
    """`python -m landscape` (and so `torchrun -m landscape`) runs the CLI without the script on PATH,
    from any folder."""
    done = subprocess.run([sys.executable, "-m", "landscape", "models"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[0] == "convnet"
    bad = subprocess.run([sys.executable, "-m", "landscape", "plane", "--grid", "0"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_training_takes_the_evaluation_commands_precision_spelling(capsys):
    """`--precision bf16` on a training command is `--amp`; fp32 is the default; a contradiction is one line."""
    parser = cli.build_parser()
    needs = {"train": [], "connect": ["--start", "a.pt", "--end", "b.pt"], "swa": ["--from-scratch"],
             "fge": ["--from", "a.pt"], "snapshots": ["--from-scratch"], "vi": ["--from-scratch"],
             "simplex": ["--base", "a.pt"], "vi-connect": ["--start", "a.pt", "--end", "b.pt"]}
    for command, required in needs.items():
        base = [command, *required, "--out", "x"]
        assert cli.parse(parser, [*base, "--precision", "bf16"]).amp is True, command
        assert cli.parse(parser, [*base, "--precision", "fp32"]).amp is False, command
        assert cli.parse(parser, base).amp is False and cli.parse(parser, [*base, "--amp"]).amp is True, command
    with pytest.raises(SystemExit) as stop:
        cli.parse(parser, ["train", "--out", "x", "--amp", "--precision", "fp32"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--amp is bf16 autocast; it contradicts --precision fp32" in err[0]
    assert cli.parse(parser, ["plane", "--ckpt", "c.pt", "--out", "x", "--precision", "bf16"]).precision == "bf16"


def test_output_piped_into_a_reader_that_stopped_ends_quietly():
    """`landscape models | head -1` printed 'landscape: error: Broken pipe' when head left first."""
    proc = subprocess.Popen([sys.executable, "-m", "landscape", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


_STOP_AT_IMPORT = '''
import os, signal, sys

class _StopAt:
    """Send this process a signal when the named module starts importing."""
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["STOP_AT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, os.environ["STOP_WITH"]))
        return None

sys.meta_path.insert(0, _StopAt())
'''


@pytest.mark.parametrize("how", ["script", "module"])
@pytest.mark.parametrize("stop_with, status, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
@pytest.mark.parametrize("stop_at", ["torch", "landscape.cli"])
def test_a_signal_while_the_command_starts_is_one_line(tmp_path, how, stop_with, status, word, stop_at):
    """The command's first seconds go to importing torch: Ctrl-C there was a
    KeyboardInterrupt traceback, and SIGTERM ended it without a word. The
    signal is sent from an import hook, at the import named."""
    import os
    from pathlib import Path

    (tmp_path / "sitecustomize.py").write_text(_STOP_AT_IMPORT)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), STOP_AT=stop_at, STOP_WITH=stop_with)
    script = Path(sys.executable).parent / "landscape"
    if how == "script" and not script.exists():
        pytest.skip("no landscape script beside this Python")
    argv = [str(script)] if how == "script" else [sys.executable, "-m", "landscape"]
    done = subprocess.run([*argv, "train", "--out", str(tmp_path / "run"), "--epochs", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    assert _one_line_error(done.stderr) == f"landscape: {word} while starting; nothing was written"
    assert not (tmp_path / "run").exists()


def test_a_program_importing_the_package_keeps_pythons_own_ctrl_c():
    """The start-up guard is the command's: ``import landscape`` in a user's
    program interrupted by Ctrl-C raises KeyboardInterrupt there as usual,
    even when the program's own arguments read ``-m landscape``."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
            f.write(_STOP_AT_IMPORT)
        env = dict(os.environ, PYTHONPATH=folder, STOP_AT="torch", STOP_WITH="SIGINT")
        done = subprocess.run([sys.executable, "-c", "import landscape", "-m", "landscape"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode in (1, -2) and done.stderr.rstrip().endswith("KeyboardInterrupt"), done.stderr
    assert "while starting" not in done.stderr


@pytest.mark.parametrize("argv", [["-m", "landscape", "--version"], ["-c", "import landscape", "-m", "landscape"]])
def test_the_start_up_guard_leaves_the_signal_handlers_as_it_found_them(argv):
    """Once the package is imported, SIGTERM and SIGINT have their usual
    handlers again (the command's ``main`` sets its own for its run): a
    SIGTERM while the interpreter shuts down is not a Python exception."""
    probe = ("import atexit, signal, sys\n"
             "atexit.register(lambda: print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
             "signal.getsignal(signal.SIGINT) is signal.default_int_handler, sys.modules['landscape']._startup.started_as_command()))\n")
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
            f.write(probe)
        done = subprocess.run([sys.executable, *argv], env=dict(os.environ, PYTHONPATH=folder), capture_output=True,
                              text=True, timeout=120)
    command = argv[1] == "landscape"
    assert done.returncode == 0 and done.stdout.split()[-3:] == ["True", "True", str(command)], done


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4242\\n")
print("held", flush=True)
time.sleep(120)
"""


def test_a_folder_another_process_is_writing_is_refused_and_left_alone(tmp_path, capsys):
    """Two commands on one --out (a rerun with --resume while the first still
    runs, two jobs given the same folder) both ran and mixed their files; the
    second is now refused in one line before it touches anything (an atomic
    write's temporary file of the running process included), and `plot`
    says the sweep is still running rather than advising --resume."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.abc.tmp").write_text("being written")
    (out / "sweep.partial.npz").write_text("")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out / ".landscape.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["train", "--out", out, "--epochs", 1], ["train", "--out", out, "--epochs", 1, "--resume"]):
            code, _, err = run(capsys, *argv)
            assert code == 2 and _one_line_error(err) == (
                f"landscape: error: {out} is in use by another landscape process (pid 4242); wait for it to "
                f"finish (then --resume, if it stopped), or choose another --out")
        assert (out / ".last.pt.abc.tmp").read_text() == "being written"
        code, _, err = run(capsys, "plot", out)
        assert code == 2 and _one_line_error(err) == (f"landscape: error: {out}: the sweep there is still running "
                                                      f"(landscape process 4242); plot it when it has finished")
        import numpy as np
        np.savez(out / "sweep.partial.npz", done=np.array([True, True, True, False, False]))
        code, _, err = run(capsys, "plot", out)  # how far it is, which a second terminal could not tell
        assert code == 2 and _one_line_error(err) == (f"landscape: error: {out}: the sweep there is still running "
                                                      f"(landscape process 4242), so far (3 of 5 points); plot it "
                                                      f"when it has finished")
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(capsys, "plot", out)  # the writer gone: the usual advice
    assert code == 2 and "finish it by rerunning its command with --resume" in err


def test_a_command_lets_its_folder_go_when_it_ends(tmp_path, capsys):
    """The lock lasts while the command runs: afterwards (here, in the same
    Python process, as a program calling cli.main would) another process
    takes it at once, and the stale temporary file of a killed write is
    cleaned by the command that holds the folder."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".summary.json.x1_y2z3w.tmp").write_text("left by a kill")
    held = []
    code, _, _ = run(capsys, "train", "--out", out, "--epochs", 1, "--quiet", "--model-kwargs", "width=4")
    assert code == 0 and not (out / ".summary.json.x1_y2z3w.tmp").exists()
    assert not (out / ".landscape.lock").exists()  # let go, and not left among the run's files
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out / ".landscape.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:  # another process takes it at once
        held.append(holder.stdout.readline().strip())
    finally:
        holder.kill()
        holder.wait()
    assert held == ["held"]


def test_suggested_command_lines_can_be_pasted():
    """A path in a command the tool suggests is spelled for the shell: a
    space or quote quoted, a name beginning with '-' written ./-name (argparse
    would take it for an option), a plain path left as it is."""
    import shlex

    from landscape.errors import shell_word

    for path, spelled in (("runs/a/model.pt", "runs/a/model.pt"), ("my runs/c d/model.pt", "'my runs/c d/model.pt'"),
                          ("-conn/model.pt", "./-conn/model.pt"), ("it's/x.pt", "'it'\"'\"'s/x.pt'")):
        assert shell_word(path) == spelled
        assert shlex.split(f"landscape curve --ckpt {shell_word(path)}")[-1].endswith(path)
    code = cli.build_parser().parse_args(["curve", "--ckpt", shlex.split(shell_word("-conn/model.pt"))[0],
                                          "--out", "x"])
    assert str(code.ckpt).endswith("-conn/model.pt")


def test_a_path_option_expands_a_leading_tilde_as_the_shell_would(monkeypatch, tmp_path):
    """``--out=~/runs/a`` or a quoted '~/runs/a' reach the command unexpanded:
    a folder named '~' used to appear in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--out=~/runs/a"]).out == tmp_path / "runs" / "a"
    args = parser.parse_args(["plane", "--points", "~/a.pt", "b.pt", "~/c.pt", "--out", "~/p"])
    assert args.points == [tmp_path / "a.pt", Path("b.pt"), tmp_path / "c.pt"] and args.out == tmp_path / "p"
    assert parser.parse_args(["plot", "~/p", "runs/~x"]).result_dir == [tmp_path / "p", Path("runs/~x")]


def test_world_size_without_torchrun_is_one_line(tmp_path, capsys, monkeypatch):
    """WORLD_SIZE left in the environment (a job script, a shell) without torchrun's other variables ended
    in torch's rendezvous traceback ('environment variable RANK expected, but not set')."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    code, _, err = run(capsys, "train", "--epochs", 1, "--out", tmp_path / "p")
    assert code == 2 and _one_line_error(err) == (
        "landscape: error: rank 0: WORLD_SIZE=2 is set, but RANK, MASTER_ADDR, MASTER_PORT are not: this is no "
        "torchrun worker; start the command with torchrun, or unset WORLD_SIZE")
    assert not (tmp_path / "p").exists()


def test_a_rank_left_set_without_a_world_size_is_rank_0_and_a_bad_one_is_one_line(tmp_path, capsys, monkeypatch):
    """A job script's `export RANK=$SLURM_PROCID`, with no WORLD_SIZE, made the one process take itself for
    rank 1: it printed no error, note or help, and locked no folder (two tasks given one --out both wrote
    there). Such a RANK is no torchrun worker's. A RANK or WORLD_SIZE that is not a whole number was
    int()'s traceback."""
    from landscape.checkpoint import claim_folder, folder_locks
    from landscape.errors import UserError

    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, _, err = run(capsys, "train", "--epochs", 0, "--out", tmp_path / "e")
    assert code == 2 and "landscape: error: --epochs must be at least 1" in err, err
    with folder_locks():
        claim_folder(tmp_path / "held", "train")
        assert (tmp_path / "held" / ".landscape.lock").exists()  # locked, as rank 0 locks
    code, out, _ = run(capsys, "models")
    assert code == 0 and "convnet" in out
    for key, value in (("RANK", "abc"), ("WORLD_SIZE", ""), ("WORLD_SIZE", "-1")):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv(key, value)
        code, _, err = run(capsys, "train", "--epochs", 1, "--out", tmp_path / "bad")
        assert code == 2 and _one_line_error(err) == (
            f"landscape: error: {key}={value!r} is set in the environment, which is not a whole number >= 0 "
            f"(torchrun sets it for each process it starts): unset it, or start the command with torchrun"), err
    assert not (tmp_path / "bad").exists()
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(UserError, match="WORLD_SIZE='x' is set in the environment"):
        claim_folder(tmp_path / "bad", "train")


def test_a_process_waiting_for_its_peers_says_so_and_a_closed_stderr_is_no_failure(tmp_path):
    """A job that set torchrun's variables but started one process waited in silence (torch waits 30
    minutes); `2>&-` ended a command in exit 1 with nothing said or written (sys.stderr None)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = ("import sys, landscape.sweep as s; s.WAIT_NOTE_S = 1.0; from landscape import cli; "
            f"sys.exit(cli.main(['train', '--epochs', '1', '--out', {str(tmp_path / 'w')!r}]))")
    try:
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    else:
        raise AssertionError("the process did not wait for its peer")
    assert "note: still waiting, after 1 s, for the other 1 of WORLD_SIZE=2 processes at 127.0.0.1:" in err, err
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    done = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m landscape train --epochs 1 --out "
                                         f"{shlex.quote(str(tmp_path / 'closed'))} 2>&-"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (tmp_path / "closed" / "model.pt").exists(), done.stdout
    # A SIGTERM in the interpreter's teardown, after the command's work (a job's time running out just then),
    # killed it by the signal without a word: it now ends with the command's own status.
    code = ("import atexit, os, signal, sys, time; sys.argv = ['landscape', 'models']; "
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))); "
            "from landscape import cli; sys.exit(cli.main())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "convnet" in done.stdout, (done.returncode, done.stderr)


def test_a_rank_whose_peer_died_says_so_once(tmp_path, capsys, monkeypatch):
    """A rank killed under torchrun (out of memory, a kill -9) left the other with gloo's 'Connection closed by
    peer'; torchrun's SIGTERM then came while it left the process group, and it said 'terminated while waiting
    for the other processes to finish', with no --resume hint. It now says what happened, once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")

    def peer_gone(args):
        if args.out.name == "a":
            args.out.mkdir()
            (args.out / "metrics.jsonl").write_text("{}\n")  # an epoch done
        raise RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:7392. This is typically caused by a remote worker crashing.")

    def terminated_while_leaving(wait=True):
        raise Terminated()  # torchrun's SIGTERM to the ranks left

    monkeypatch.setattr(cli, "cmd_train", peer_gone)
    monkeypatch.setattr(cli, "_leave_process_group", terminated_while_leaving)
    code, _, err = run(capsys, "train", "--out", tmp_path / "a", "--epochs", 1)
    assert code == 143 and _one_line_error(err) == (
        "landscape: rank 0: another process of this job stopped (connection closed by peer); files written so far "
        "are kept — rerun with --resume to continue")
    code, _, err = run(capsys, "train", "--out", tmp_path / "b", "--epochs", 1)  # gone before anything was written
    assert _one_line_error(err) == ("landscape: rank 0: another process of this job stopped (connection closed by "
                                    "peer); nothing was written")


def test_a_stop_reaches_a_command_blocked_in_a_call_that_does_not_return(tmp_path):
    """Python meets a signal between bytecodes only: a rank blocked in torch's rendezvous (or in a collective
    whose peer is gone) ignored SIGTERM for as long as it waited (30 minutes), and torchrun killed it without a
    word. After STOP_GRACE seconds the watching thread says the line and ends the process."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "landscape", "train", "--out", str(tmp_path / "a"), "--epochs", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # started: rank 0 serves the rendezvous, and waits for rank 1
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.2)
        time.sleep(1)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=cli.STOP_GRACE + 30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and time.monotonic() - start >= cli.STOP_GRACE - 1
    assert _one_line_error(err) == (f"landscape: rank 0: terminated while blocked in a call that did not return within "
                                    f"{cli.STOP_GRACE:g} s (waiting for another process?); files written so far are "
                                    f"kept")


def test_a_stop_the_command_met_is_not_followed_by_the_watchers_line(monkeypatch):
    """The thread that ends a command blocked in a C call must never act on a SIGTERM the main thread met,
    nor after the command is over (it used to count bytes against handler calls, and two signals met as one
    ended the process later with a false line)."""
    import os
    import signal
    import threading
    import time

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "STOP_GRACE", 1.0)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with cli._stops_met():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # (the handler raises at once)
    time.sleep(2)  # past the grace: this process is still here
    assert signal.getsignal(signal.SIGTERM) is before and signal.set_wakeup_fd(-1) == -1
    assert not [t for t in threading.enumerate() if t.name == "landscape-stops"]
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored Ctrl-C stays ignored
    try:
        with cli._stops_met():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_world_size_without_torchrun_is_said_by_any_rank(tmp_path):
    """With RANK=1 (no process group yet, so no rank 0 to say it) the refusal was printed by no one."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "landscape", "train", "--epochs", "1", "--out", str(tmp_path / "a")],
                          env=dict(env, WORLD_SIZE="2", RANK="1"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and _one_line_error(done.stderr) == (
        "landscape: error: rank 1: WORLD_SIZE=2 is set, but MASTER_ADDR, MASTER_PORT are not: this is no torchrun "
        "worker; start the command with torchrun, or unset WORLD_SIZE")


def test_a_run_records_the_command_line_it_was_given(tmp_path, capsys):
    """cli.main(argv) from Python (a notebook, a script, the tests) recorded the process's own sys.argv (the
    notebook kernel's, pytest's) in config.json, not the command it ran."""
    out = tmp_path / "a"
    code, _, err = run(capsys, "train", "--model", "mlp", "--epochs", 1, "--quiet", "--out", out)
    assert code == 0, err
    recorded = json.loads((out / "config.json").read_text())["argv"]
    assert recorded == ["landscape", "train", "--model", "mlp", "--epochs", "1", "--quiet", "--out", str(out)]


def test_out_of_memory_advice_names_connects_t_samples(tmp_path):
    """connect --t-samples 100000 ran out of memory and was told to check --bends."""
    import argparse

    args = argparse.Namespace(t_samples=100000, bends=1, epochs=1, resume=False, out=tmp_path / "h", batch_size=128)
    assert cli._out_of_memory_advice(args) == ("nothing was stored yet: check the sizes asked for (--bends, "
                                               "--t-samples), or rerun with a smaller --batch-size")
    # the population statistics run the whole training set as one batch: a smaller --batch-size does not help
    args = argparse.Namespace(grid=2, resume=False, out=tmp_path / "p", batch_size=1000, bn_stats="population")
    assert cli._out_of_memory_advice(args) == ("nothing was stored yet: check the sizes asked for (--grid), or rerun "
                                               "with --bn-stats batches")
    args.bn_stats = "auto"
    assert cli._out_of_memory_advice(args).endswith("with --bn-stats batches or a smaller --batch-size")


def test_a_free_ends_error_is_not_compared_with_its_runs_summary(tmp_path):
    """connect --free-end trains the end: the curve's end is not b.pt, and its error differing from b's run
    was put down to batch norm."""
    import argparse

    for name, error in (("a", 0.28), ("b", 0.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.pt").write_bytes(b"")
        (tmp_path / name / "summary.json").write_text(json.dumps({"test_error": error}))
    s = {"curve": {"metrics": {"test_error": {"start": 0.28, "end": 0.28}}}}
    meta = {"start": str(tmp_path / "a" / "model.pt"), "end": str(tmp_path / "b" / "model.pt"), "train_config": {}}
    assert "say 0.28% and 0.00%" in cli._ends_as_trained(meta, s)  # both ends fixed: the difference is told
    meta["train_config"] = {"free_end": True}
    assert cli._ends_as_trained(meta, s) == ""  # the start agrees with its run; the end is not b's
    meta["train_config"] = {"free_start": True}  # the end, fixed, is compared alone
    assert cli._ends_as_trained(meta, s) == (" (batch norm re-estimated; the end's run's summary, with the "
                                             "statistics it trained with, says 0.00%; the start was trained with "
                                             "the curve)")
    # the cause said is the network's: batch norm without running statistics, or none at all (a buffer that
    # differs between the ends, noted above the table), was put down to batch norm re-estimated
    for norm, said in (("per batch of 100", " (each batch normalised by its own statistics, batches of 100; the end's "
                                            "run's summary says 0.00%; the start was trained with the curve)"),
                       ("none", " (the end's run's summary says 0.00%; the start was trained with the curve)")):
        assert cli._ends_as_trained(meta, dict(s, normalisation=norm)) == said
    # an end recorded by a path (relative, as an earlier build stored it) that now names another file: its run's
    # summary is not the end's, and is not quoted (curve run from another folder quoted an unrelated run's)
    from landscape.train import input_digests

    digests = input_digests(argparse.Namespace(start=meta["start"], end=meta["end"]), ["start", "end"])
    meta = dict(meta, train_config={}, input_digests=digests)
    assert "say 0.28% and 0.00%" in cli._ends_as_trained(meta, s)  # the files the curve began from
    (tmp_path / "b" / "model.pt").write_bytes(b"another network")
    assert cli._ends_as_trained(meta, s) == ""


def test_labels_before_the_folders_are_told_where_they_go(capsys):
    """--labels takes every word after it: given first, it took the folders too ("RESULT_DIR required")."""
    with pytest.raises(SystemExit):
        cli.main(["plot", "--labels", "a", "b", "x-eval", "y-eval", "--out", "cmp"])
    assert capsys.readouterr().err.strip() == (
        "landscape plot: error: the following arguments are required: RESULT_DIR (give --labels after the result "
        "folders: it takes every word after it) (see landscape plot --help)")
    with pytest.raises(SystemExit):
        cli.main(["plot"])
    assert "--labels" not in capsys.readouterr().err


def test_a_curve_of_an_earlier_build_quotes_its_runs_from_their_summaries(tmp_path):
    """A curve fitted before input_summaries: the summary.json beside each endpoint's model.pt, unless the file
    there is no longer the one it started from (its digest), or the summary is gone."""
    from landscape.train import file_digest

    record = {"name": "digits", "n_train": 1437, "n_test": 360}
    for key, error in (("start", 9.0), ("end", 8.0)):
        (tmp_path / key).mkdir()
        (tmp_path / key / "model.pt").write_bytes(key.encode())
        (tmp_path / key / "summary.json").write_text(json.dumps({"test_error": error, "dataset": record}))
    meta = {k: str(tmp_path / k / "model.pt") for k in ("start", "end")}
    summary = {"curve": {"metrics": {"test_error": {"start": 2.0, "end": 3.0}}}, "dataset": dict(record)}
    said = "their runs' summaries, with the statistics they trained with, say 9.00% and 8.00%"
    assert said in cli._ends_as_trained(meta, summary)
    digests = {k: file_digest(tmp_path / k / "model.pt") for k in ("start", "end")}
    assert said in cli._ends_as_trained(dict(meta, input_digests=digests), summary)
    (tmp_path / "end" / "model.pt").write_bytes(b"another network")
    assert cli._ends_as_trained(dict(meta, input_digests=digests), summary) == ""
    (tmp_path / "start" / "summary.json").unlink()
    assert cli._ends_as_trained(meta, summary) == ""


def test_the_endpoints_runs_errors_are_quoted_only_for_the_data_they_were_measured_on():
    """A curve evaluated with another --data-normalization quoted its runs' own errors beside its own, the
    difference put down to batch norm: the inputs were scaled otherwise."""
    record = {"name": "digits", "n_train": 1437, "n_test": 360, "fingerprint": "0badf00d"}
    meta = {"dataset": record, "input_summaries": {k: {"test_error": 9.0, "eval_split": "test", "dataset": record}
                                                   for k in ("start", "end")}}
    summary = {"curve": {"metrics": {"test_error": {"start": 2.0, "end": 3.0}}}, "dataset": dict(record)}
    assert "their runs' summaries, with the statistics they trained with, say 9.00% and 9.00%" in \
        cli._ends_as_trained(meta, summary)
    assert cli._ends_as_trained(meta, dict(summary, dataset=dict(record, normalization="0.5/0.25"))) == ""
    # the curve fitted and evaluated with a normalisation its runs were not trained with: their figures are not
    # of this data either (the fit's data was compared, not the runs')
    normalised = dict(record, normalization="0.5/0.25")
    assert cli._ends_as_trained(dict(meta, dataset=normalised), dict(summary, dataset=normalised)) == ""


def test_the_stop_line_counts_every_store_and_a_simplex_vertexs_epoch(tmp_path):
    """The stop line gave no count where a command keeps several stores (subspace's sampler and grid) or its
    epochs in a phase's folder (simplex: vertex-<j>/last.pt)."""

    np.savez(tmp_path / "sweep.partial.npz", done=np.array([True, True, False]))
    assert cli._done_so_far(tmp_path, 4) == " (2 of 3 points)"
    np.savez(tmp_path / "grid.partial.npz", done=np.array([True, False, False, False]))
    assert cli._done_so_far(tmp_path, 4) == " (1 of 4 points in grid.partial.npz; 2 of 3 points in sweep.partial.npz)"
    sx = tmp_path / "sx"
    for j, epoch in ((1, 5), (2, 3)):  # vertex 1 done, vertex 2 stopped at epoch 3, written last
        (sx / f"vertex-{j}").mkdir(parents=True)
        torch.save({"train_state": {"epoch": epoch}}, sx / f"vertex-{j}" / "last.pt")
        os.utime(sx / f"vertex-{j}" / "last.pt", (1000.0 * j, 1000.0 * j))
    assert cli._done_so_far(sx, 5) == " (epoch 3 of 5 in vertex-2/last.pt)"
    torch.save({"train_state": {"epoch": 2}}, sx / "last.pt")  # a run's own last.pt comes first
    assert cli._done_so_far(sx, None) == " (epoch 2 in last.pt)"
    assert cli._done_so_far(tmp_path / "nothing", 4) is None
    sub = tmp_path / "sub"  # subspace: its sampler's store holds no points' flags, its grid's does
    sub.mkdir()
    np.savez(sub / "sweep.partial.npz", key=np.array("k"), z=np.zeros((3, 2)))
    assert cli._done_so_far(sub, None) is None
    np.savez(sub / "grid.partial.npz", done=np.array([True, False]))
    assert cli._done_so_far(sub, None) == " (1 of 2 points in grid.partial.npz)"
    espro = tmp_path / "espro" / "component-2" / "vertex-1"
    espro.mkdir(parents=True)
    torch.save({"train_state": {"epoch": 4}}, espro / "last.pt")
    assert cli._done_so_far(tmp_path / "espro", 6) == " (epoch 4 of 6 in component-2/vertex-1/last.pt)"
