"""The command line as a user runs it: exit codes, one-line errors, files written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli


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


def test_models_lists_the_registry(capsys):
    code, out, _ = run(capsys, "models")
    names = out.split()
    assert code == 0
    for name in ("mlp", "convnet", "lenet5", "vgg16", "vgg16bn", "vgg19", "vgg19bn", "preresnet", "wrn28x10"):
        assert name in names


def test_console_script_is_installed_and_reports_errors():
    script = Path(sys.executable).with_name("landscape")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "train", "--dataset", "nosuch", "--out", "/tmp/landscape-never"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown dataset 'nosuch'" in _one_line_error(proc.stderr)
