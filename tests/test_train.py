"""Endpoint training: schedule, accuracy on digits, exact resume, bad input."""

import json
import re

import pytest
import torch

from landscape.checkpoint import load_checkpoint, load_model, read_jsonl
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import evaluate_model, l2_penalty
from landscape.models import create_model
from landscape.train import TrainConfig, learning_rate, schedule_factor, seed_everything, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_paper_schedule_matches_its_definition():
    # constant for the first half, linear to 1% at 90%, then 1%
    assert schedule_factor("paper", 0.0) == 1.0
    assert schedule_factor("paper", 0.5) == 1.0
    assert schedule_factor("paper", 0.7) == pytest.approx(1 - 0.2 / 0.4 * 0.99)
    assert schedule_factor("paper", 0.9) == pytest.approx(0.01)
    assert schedule_factor("paper", 0.95) == 0.01
    # per epoch, as the papers set it at the start of each epoch: 10 epochs, base 0.1
    lrs = [learning_rate(0.1, "paper", e, 10) for e in range(10)]
    assert lrs[:6] == [0.1] * 6
    assert lrs[6] == pytest.approx(0.1 * (1 - 0.1 / 0.4 * 0.99))
    assert lrs[9] == pytest.approx(0.001)
    assert schedule_factor("cosine", 0.5) == pytest.approx(0.5)
    assert schedule_factor("constant", 0.9) == 1.0
    with pytest.raises(UserError, match="unknown schedule 'steps'"):
        schedule_factor("steps", 0.1)


@pytest.mark.slow
def test_short_digits_run_reaches_low_test_error(tmp_path, digits):
    result = train(out=tmp_path / "run", data=digits, epochs=8, seed=1, progress=False)
    s = result.summary
    assert s["test_error"] <= 5.0, s
    # The summary agrees with the saved checkpoint evaluated independently.
    net = load_model(tmp_path / "run" / "model.pt")
    test = evaluate_model(net, digits, "test")
    train_m = evaluate_model(net, digits, "train")
    assert test["error"] == pytest.approx(s["test_error"])
    assert s["train_loss"] == pytest.approx(train_m["nll"] + l2_penalty(net, 5e-4), rel=1e-6)
    assert set(["train_loss", "train_error", "test_nll", "test_error"]) <= s.keys()
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["epochs"] == 8 and cfg["config"]["seed"] == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_error"] == s["test_error"]
    torch.load(tmp_path / "run" / "model.pt", weights_only=True)


class _Interrupt(Exception):
    pass


def _interrupt_at(epoch):
    def hook(e, record):
        if e == epoch:
            raise _Interrupt

    return hook


@pytest.mark.slow
def test_resume_after_interruption_gives_identical_weights(tmp_path, digits):
    kw = dict(data=digits, epochs=4, seed=3, progress=False, model_kwargs={"width": 8}, save_every=2)
    full = train(out=tmp_path / "full", **kw)
    with pytest.raises(_Interrupt):
        train(out=tmp_path / "cut", on_epoch_end=_interrupt_at(3), **kw)
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert load_checkpoint(tmp_path / "cut" / "last.pt").meta["epoch"] == 3
    # Without --resume the unfinished run is protected.
    with pytest.raises(UserError, match="--resume"):
        train(out=tmp_path / "cut", **kw)
    resumed = train(out=tmp_path / "cut", resume=True, **kw)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("model.pt", "checkpoint-004.pt"):  # byte for byte: the names read back from last.pt are
        # pickled as the uninterrupted run's (a sha256 check of a resumed run's files failed)
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert [r["epoch"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (tmp_path / "cut" / "checkpoint-002.pt").exists() and (tmp_path / "cut" / "checkpoint-004.pt").exists()
    # checkpoint-000.pt: the initial weights, as the seed makes them (a trajectory's start), kept by a resumed run
    init = load_checkpoint(tmp_path / "cut" / "checkpoint-000.pt")
    assert init.meta["epoch"] == 0
    seed_everything(3)
    fresh = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=8).state_dict()
    assert all(torch.equal(init.state_dict[k], fresh[k]) for k in fresh)
    # Resuming with other settings is refused, naming the setting.
    with pytest.raises(UserError, match="lr="):
        train(out=tmp_path / "cut", resume=True, **{**kw, "lr": 0.1})


def test_a_resume_on_another_number_of_threads_says_it_will_not_be_bit_for_bit(tmp_path, digits, capsys):
    """A requeued job on a node with another CPU allocation resumed on another number of threads: its
    weights were not the uninterrupted run's, without a word, and config.json's threads was overwritten."""
    kw = dict(data=digits, epochs=3, seed=3, model_kwargs={"width": 8}, progress=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(_Interrupt):
            train(out=tmp_path / "cut", on_epoch_end=_interrupt_at(1), **kw)
        with pytest.raises(_Interrupt):
            train(out=tmp_path / "cut", on_epoch_end=_interrupt_at(2), resume=True, **kw)
        assert "threads_before" not in json.loads((tmp_path / "cut" / "config.json").read_text())
        capsys.readouterr()
        torch.set_num_threads(2)
        train(out=tmp_path / "cut", resume=True, **kw)
    finally:
        torch.set_num_threads(threads)
    assert ("note: this run trained on 1 thread before and on 2 now: sums over threads round otherwise, so its "
            "weights will not be bit for bit those of a run left uninterrupted (OMP_NUM_THREADS=1 resumes it "
            "exactly)") in capsys.readouterr().err
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["threads"] == 2 and config["threads_before"] == [1]
    # a run begun under torchrun and resumed in one process (a network without batch norm may be): the note
    # said OMP_NUM_THREADS alone resumes it exactly
    from types import SimpleNamespace

    from landscape.train import _earlier_threads

    state = SimpleNamespace(meta={"threads": 1, "world_size": 2})
    assert _earlier_threads(state, 2, torch.device("cpu"), world=1) == [1]
    assert "(OMP_NUM_THREADS=1 on 2 processes resumes it exactly)" in capsys.readouterr().err


def test_a_resume_says_when_a_kept_epochs_record_was_lost(tmp_path, digits, capsys):
    """A record is appended before last.pt is saved, so only a crash that lost
    written data drops one; the resume then says which, instead of silently
    finishing with a record short."""
    kw = dict(data=digits, epochs=3, seed=3, model_kwargs={"width": 8})
    with pytest.raises(_Interrupt):
        train(out=tmp_path / "cut", on_epoch_end=_interrupt_at(2), progress=False, **kw)
    path = tmp_path / "cut" / "metrics.jsonl"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if '"epoch": 1,' not in line))
    capsys.readouterr()
    train(out=tmp_path / "cut", resume=True, progress=False, **kw)
    assert f"note: {path} has no record of epoch(s) 1 (lost in a crash, or deleted)" in capsys.readouterr().err
    assert [r["epoch"] for r in read_jsonl(path)] == [2, 3]


def test_a_damaged_record_stops_a_resume_in_one_line_and_changes_nothing(tmp_path, digits):
    """A record whose epoch is not a whole number (an edit, a damaged disk)
    used to crash the resume with a TypeError; it is now a UserError naming
    the file, and the file is left as it was for the user to mend."""
    kw = dict(data=digits, epochs=3, seed=3, model_kwargs={"width": 8}, progress=False)
    with pytest.raises(_Interrupt):
        train(out=tmp_path / "cut", on_epoch_end=_interrupt_at(2), **kw)
    path = tmp_path / "cut" / "metrics.jsonl"
    for damaged in ('"2"', "null", "true", "0"):
        lines = path.read_text().splitlines(keepends=True)
        text = lines[0] + re.sub(r'"epoch": [^,]+,', f'"epoch": {damaged},', lines[1])
        path.write_text(text)
        with pytest.raises(UserError, match=r"metrics\.jsonl: record 2 has no epoch number"):
            train(out=tmp_path / "cut", resume=True, **kw)
        assert path.read_text() == text
        path.write_text(lines[0] + re.sub(r'"epoch": [^,]+,', '"epoch": 2,', lines[1]))
    assert train(out=tmp_path / "cut", resume=True, **kw).summary


def test_records_without_their_last_pt_are_not_overwritten(tmp_path, digits, capsys):
    """A run folder whose last.pt was deleted but whose records and numbered
    checkpoints remain used to start a new run ("nothing to resume") over
    them; it is now refused, with --resume or without. A record of the first
    epoch alone (a run stopped before its first last.pt) is started over."""
    kw = dict(data=digits, epochs=3, seed=3, model_kwargs={"width": 8}, progress=False, save_every=1)
    with pytest.raises(_Interrupt):
        train(out=tmp_path / "cut", on_epoch_end=_interrupt_at(2), **kw)
    (tmp_path / "cut" / "last.pt").unlink()
    before = (tmp_path / "cut" / "metrics.jsonl").read_text()
    for resume in (True, False):
        with pytest.raises(UserError, match=r"holds a run's records of 2 epochs \(metrics\.jsonl\) and 2 numbered "
                                            r"checkpoint\(s\) but not its last\.pt"):
            train(out=tmp_path / "cut", resume=resume, **kw)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == before
    with pytest.raises(_Interrupt):
        train(out=tmp_path / "first", on_epoch_end=_interrupt_at(1), **{**kw, "save_every": 0})
    (tmp_path / "first" / "last.pt").unlink()
    capsys.readouterr()
    run = train(out=tmp_path / "first", resume=True, **{**kw, "save_every": 0})
    assert "nothing to resume, starting a new run" in capsys.readouterr().err
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3]


def test_epoch_records_train_loss_is_the_nll_plus_the_weight_decay_term(tmp_path, digits):
    """As summary.json defines it (there on the whole set in eval mode; here the
    minibatch mean). With one batch per epoch, epoch 2's terms are those of the
    weights epoch 1 ended with: checkpoint-001.pt, in train mode."""
    wd = 0.01
    train(out=tmp_path / "run", data=digits, epochs=2, batch_size=2000, wd=wd, save_every=1, seed=2,
          progress=False, model_kwargs={"width": 8})
    second = read_jsonl(tmp_path / "run" / "metrics.jsonl")[1]
    net = load_model(tmp_path / "run" / "checkpoint-001.pt").train()
    with torch.no_grad():
        nll = float(torch.nn.functional.cross_entropy(net(digits.x_train), digits.y_train))
    assert second["train_nll"] == pytest.approx(nll, rel=1e-5)
    assert second["train_loss"] - second["train_nll"] == pytest.approx(l2_penalty(net, wd), rel=1e-5)


def test_seeded_runs_are_reproducible_and_seeds_differ(digits):
    kw = dict(data=digits, epochs=1, progress=False, model_kwargs={"width": 8})
    a = train(seed=5, **kw).model.state_dict()
    b = train(seed=5, **kw).model.state_dict()
    c = train(seed=6, **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_divergence_is_reported_and_keeps_earlier_files(tmp_path, digits):
    with pytest.raises(UserError, match=r"diverged.*no epoch finished; lower --lr and run it again \(the same --out "
                                        r"will do\)"):
        train(out=tmp_path / "run", data=digits, epochs=3, lr=1e6, seed=0, progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()
    # as the message says: nothing was kept that a rerun would replace
    assert train(out=tmp_path / "run", data=digits, epochs=1, lr=0.05, seed=0, progress=False).summary["epochs"] == 1


def test_weights_made_non_finite_by_an_epochs_last_step_are_never_saved(tmp_path, digits, poison_step):
    """The loss of a step is seen before its update: NaN weights from the last
    step of an epoch used to be written to last.pt and reported as a finished epoch."""
    kw = dict(data=digits, epochs=3, batch_size=1000, progress=False, model_kwargs={"width": 4})  # 2 steps an epoch
    poison_step(4)  # the last step of epoch 2
    with pytest.raises(UserError, match=re.escape("training diverged: the weights became non-finite by the end "
                                                  "of epoch 2 (lr 0.05); ") + ".*last.pt holds epoch 1; lower --lr"):
        train(out=tmp_path / "run", **kw)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept.meta["epoch"] == 1 and all(bool(torch.isfinite(v).all()) for v in kept.state_dict.values())


def test_non_finite_metrics_of_finite_weights_are_divergence_too(tmp_path, digits, monkeypatch):
    """lr 1e38 leaves finite but huge weights after the only step: the run finished with exit 0,
    a NaN test NLL, and bare NaN (not JSON) in metrics.jsonl and summary.json."""
    with pytest.raises(UserError, match=r"training diverged: the test_nll became (nan|inf) in epoch 1; no epoch "
                                        r"finished; lower --lr"):
        train(out=tmp_path / "run", data=digits, model="mlp", epochs=1, batch_size=2000, lr=1e38, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()
    # The final summary is checked as well, before model.pt would mark the run finished.
    import sys

    train_module = sys.modules["landscape.train"]  # the package's attribute 'train' is the function
    real = train_module._final_summary
    monkeypatch.setattr(train_module, "_final_summary", lambda *a: dict(real(*a), test_nll=float("inf")))
    with pytest.raises(UserError, match=re.escape("training diverged: the final network's test_nll is inf; ")):
        train(out=tmp_path / "fin", data=digits, epochs=1, progress=False, model_kwargs={"width": 4})
    assert (tmp_path / "fin" / "last.pt").exists() and not (tmp_path / "fin" / "model.pt").exists()


def test_a_run_stopped_while_finishing_is_finished_by_resume(tmp_path, digits):
    """model.pt without summary.json (stopped between the two writes; earlier builds wrote model.pt
    first) made --resume say "already finished" and then fail on the missing summary."""
    kw = dict(data=digits, epochs=2, progress=False, model_kwargs={"width": 4})
    first = train(out=tmp_path / "run", **kw)
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(UserError, match="holds an unfinished run; pass --resume"):
        train(out=tmp_path / "run", **kw)
    again = train(out=tmp_path / "run", resume=True, **kw)
    assert again.summary["test_error"] == first.summary["test_error"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["train_loss"] == first.summary["train_loss"]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    (tmp_path / "run" / "summary.json").unlink()
    (tmp_path / "run" / "last.pt").unlink()
    with pytest.raises(UserError, match="holds model.pt but neither summary.json nor last.pt"):
        train(out=tmp_path / "run", resume=True, **kw)


def test_a_rate_float32_cannot_hold_is_refused_before_training(tmp_path, digits):
    """SGD applies the rate to float32 weights: 1e39 crashed with a traceback in the first step."""
    with pytest.raises(UserError, match=re.escape("--lr must be a finite number > 0, got 1e+39 (above 3.4e+38, "
                                                  "the float32 limit)")):
        train(out=tmp_path / "run", data=digits, lr=1e39, progress=False)
    assert not (tmp_path / "run").exists()


def test_finished_run_is_protected(tmp_path, digits, capsys):
    kw = dict(data=digits, epochs=1, progress=False, model_kwargs={"width": 8})
    first = train(out=tmp_path / "run", **kw)
    with pytest.raises(UserError, match="finished run"):
        train(out=tmp_path / "run", **kw)
    capsys.readouterr()
    again = train(out=tmp_path / "run", resume=True, **kw)  # nothing to do, returns the stored result
    assert again.summary["test_error"] == first.summary["test_error"]
    assert "run already finished; nothing to do" in capsys.readouterr().err
    (tmp_path / "run" / "summary.json").write_text('{"test_error": ')  # damaged: its error alone, no "finished"
    with pytest.raises(UserError, match=r"summary\.json: not valid JSON"):
        train(out=tmp_path / "run", resume=True, **kw)
    assert "already finished" not in capsys.readouterr().err


def test_bad_settings_are_user_errors(digits):
    for bad in ({"epochs": 0}, {"batch_size": 1}, {"lr": float("nan")}, {"wd": -1.0}, {"schedule": "steps"}):
        with pytest.raises(UserError):
            train(data=digits, progress=False, **bad)
    for lr in (0.0, -1.0, float("inf")):  # one wording for every learning rate that cannot train
        with pytest.raises(UserError, match=re.escape(f"--lr must be a finite number > 0, got {lr}")):
            train(data=digits, progress=False, lr=lr)
    for momentum in (1.0, 1.5, -0.1, float("nan")):  # momentum 1 or more never forgets a step: it diverges
        with pytest.raises(UserError, match=re.escape(f"--momentum must be in [0, 1), got {momentum}")):
            train(data=digits, progress=False, momentum=momentum)
    with pytest.raises(UserError, match="unknown model"):
        train(data=digits, model="nosuch", progress=False)
    with pytest.raises(TypeError):
        TrainConfig(nosuch=1)


def test_a_network_that_does_not_fit_its_data_stops_before_training_in_one_line(tmp_path, digits, monkeypatch):
    """A user's own network with too few outputs, a tuple for logits, or a
    first layer for other inputs used to end in the loss function's traceback."""
    import landscape.models as models
    from torch import nn

    class Pair(nn.Module):
        def __init__(self, num_classes, input_shape):
            super().__init__()
            self.lin = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.lin(x.flatten(1)), None

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("seven_outputs")(lambda num_classes, input_shape: nn.Sequential(nn.Flatten(), nn.Linear(64, 7)))
    models.register_model("pair_of_outputs")(Pair)
    models.register_model("other_inputs")(lambda num_classes, input_shape: nn.Sequential(nn.Flatten(),
                                                                                          nn.Linear(10, num_classes)))
    for name, message in (("seven_outputs", "the network gives 7 outputs, but the data has 10 classes"),
                          ("pair_of_outputs", "the network should give (batch, classes) logits, but gave tuple: "
                                              "return the logits tensor from forward()"),
                          ("other_inputs", "the network does not accept this data's inputs of shape (1, 8, 8): "
                                           "mat1 and mat2 shapes cannot be multiplied")):
        with pytest.raises(UserError, match=re.escape(message)):
            train(out=tmp_path / name, data=digits, model=name, epochs=1, progress=False)
        assert not (tmp_path / name / "config.json").exists()


def test_a_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    """Later commands, run from another folder, read the path from the checkpoint."""
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(dataset="npz", data_path="data/d.npz").data_path == str(tmp_path / "data" / "d.npz")
    assert TrainConfig().data_path is None


def test_a_numbered_checkpoint_is_written_before_last_pt(tmp_path, monkeypatch, digits):
    """last.pt came first: a stop between the two resumed after the epoch and never wrote its numbered checkpoint,
    leaving a trajectory with a silent gap."""
    import sys

    train_module = sys.modules["landscape.train"]  # the package's train is the function
    real, written = train_module.save_checkpoint, []

    def recording(path, *args, **kwargs):
        written.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    train(out=tmp_path / "r", data=digits, epochs=2, save_every=1, model_kwargs={"width": 4}, progress=False)
    assert written[:5] == ["checkpoint-000.pt", "checkpoint-001.pt", "last.pt", "checkpoint-002.pt", "last.pt"]


def test_an_empty_path_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys):
    """--out "$UNSET" trained into the current folder."""
    from landscape import cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        cli.main(["train", "--out", "", "--epochs", "1"])
    assert stop.value.code == 2
    assert "argument --out: an empty path (an unset shell variable?); give a file or folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_resume_in_another_precision_says_so_in_words_the_user_typed(tmp_path):
    """A bf16 run resumed without it said "was started with amp=True, now amp=False" to a user who typed
    --precision bf16."""
    from landscape.errors import UserError
    from landscape.train import TrainConfig, _check_resumable

    started = TrainConfig(amp=True).to_json()
    with pytest.raises(UserError, match=r"was started in bf16, now in fp32 \(--amp, or --precision bf16\); "
                                        r"--resume needs the same settings"):
        _check_resumable(tmp_path, TrainConfig(amp=False), started)
    with pytest.raises(UserError, match="was started with epochs=20, now epochs=3"):  # other settings as before
        _check_resumable(tmp_path, TrainConfig(amp=True, epochs=3), started)
