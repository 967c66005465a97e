"""SWA, FGE, snapshot ensembles, ensembles: schedules at their documented
iterations, averages equal to independently computed means, resume."""

import dataclasses
import math
import re
import shutil

import numpy as np
import pytest
import torch

from landscape.averaging import (
    AverageConfig,
    fge_learning_rate,
    fge_snapshot_iteration,
    run_fge,
    run_snapshots,
    run_swa,
    snapshot_learning_rate,
    swa_learning_rate,
)
from landscape.bn import population_bn, reestimate_bn
from landscape.checkpoint import load_checkpoint, load_model
from landscape.data import load_dataset
from landscape.ensemble import evaluate_ensemble
from landscape.errors import UserError
from landscape.evaluate import evaluate_model
from landscape.metrics import ensemble_metrics
from landscape.train import steps_per_epoch, train
from landscape.weights import ParamSpace

SMALL = {"width": 4}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, small_digits):
    out = tmp_path_factory.mktemp("end") / "a"
    train(out=out, data=small_digits, epochs=3, seed=1, progress=False, model_kwargs=SMALL)
    return out / "model.pt"


def test_fge_rate_hits_its_bounds_at_the_documented_iterations():
    steps, cycle, hi, lo = 10, 4, 0.05, 0.0005
    rates = [fge_learning_rate(hi, lo, cycle, e, it, steps) for e in range(8) for it in range(steps)]
    per_cycle = cycle * steps
    mid = fge_snapshot_iteration(cycle, steps)
    assert mid == 20
    for c in range(2):
        block = rates[c * per_cycle:(c + 1) * per_cycle]
        assert block[0] == pytest.approx(hi)  # a cycle starts at alpha_1
        assert block[mid] == pytest.approx(lo)  # its middle iteration runs at alpha_2
        assert min(block) == pytest.approx(lo) and max(block) == pytest.approx(hi)
        assert all(a > b for a, b in zip(block[:mid], block[1:mid + 1]))  # down, linearly
        assert all(a < b for a, b in zip(block[mid:-1], block[mid + 1:]))  # and up again
        assert block[5] == pytest.approx(hi + (lo - hi) * 2 * 5 / per_cycle)


def test_swa_rates():
    cfg = AverageConfig(lr=0.1, swa_lr=0.01, swa_start=10, epochs=20, cycle=2, swa_schedule="cyclic", swa_lr_max=0.05)
    steps = 5
    # before swa_start: the SWA paper's schedule from lr down to swa_lr
    assert swa_learning_rate(cfg, 0, 0, steps) == pytest.approx(0.1)
    assert swa_learning_rate(cfg, 7, 0, steps) == pytest.approx(0.1 * (1 - 0.9 * (0.7 - 0.5) / 0.4))
    assert swa_learning_rate(cfg, 9, 3, steps) == pytest.approx(0.01)
    # cyclic: linear from alpha_1 to alpha_2 over 2 epochs x 5 iterations; last iteration at alpha_2
    cycle = [swa_learning_rate(cfg, 10 + i // steps, i % steps, steps) for i in range(2 * steps)]
    expected = [(1 - (i + 1) / 10) * 0.05 + (i + 1) / 10 * 0.01 for i in range(10)]
    assert cycle == pytest.approx(expected)
    assert cycle[-1] == pytest.approx(0.01)
    assert swa_learning_rate(cfg, 12, 0, steps) == pytest.approx(expected[0])  # next cycle restarts
    const = dataclasses.replace(cfg, swa_schedule="constant")
    assert swa_learning_rate(const, 15, 2, steps) == 0.01


def test_snapshot_rate_is_cosine_with_restarts():
    steps, cycle, lr = 4, 3, 0.2
    rates = [snapshot_learning_rate(lr, cycle, e, it, steps) for e in range(6) for it in range(steps)]
    c = cycle * steps
    assert rates[0] == pytest.approx(lr) and rates[c] == pytest.approx(lr)
    assert rates[c // 2] == pytest.approx(lr / 2)
    assert rates[c - 1] == pytest.approx(lr / 2 * (math.cos(math.pi * (c - 1) / c) + 1))


def test_swa_average_equals_the_mean_of_the_collected_snapshots(tmp_path, small_digits, endpoint):
    res = run_swa(None, tmp_path / "swa", from_ckpt=str(endpoint), epochs=4, swa_lr=0.05, cycle=1,
                  keep_snapshots=True, data=small_digits, progress=False)
    snaps = sorted((tmp_path / "swa").glob("snapshot-*.pt"))
    assert [p.name for p in snaps] == [f"snapshot-{e:03d}.pt" for e in (1, 2, 3, 4)]
    space = ParamSpace.of(res.model)
    mean = torch.stack([space.flatten(load_checkpoint(p).state_dict).double() for p in snaps]).mean(0)
    swa = load_model(tmp_path / "swa" / "swa.pt")
    assert torch.allclose(space.flatten(swa).double(), mean, atol=1e-6)
    # the last snapshot is the final SGD iterate, saved as sgd.pt
    sgd = load_model(tmp_path / "swa" / "sgd.pt")
    assert torch.equal(space.flatten(sgd), space.flatten(load_checkpoint(snaps[-1]).state_dict))
    # batch norm of the average was recomputed on the training data
    ref = load_model(tmp_path / "swa" / "swa.pt")
    reestimate_bn(ref, small_digits.batches("train", 1000))
    for (n, a), (_, b) in zip(swa.named_buffers(), ref.named_buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), n
    s = res.summary
    assert s["averaged"] == 4 and {"swa", "sgd"} <= s.keys()
    # SGD is reported twice: with its own running statistics, and recomputed as the average's were
    own = evaluate_model(sgd, small_digits, "train")
    assert s["sgd"]["train_nll"] == pytest.approx(own["nll"], rel=1e-6)
    reestimate_bn(sgd, small_digits.batches("train", 1000))
    recomputed = evaluate_model(sgd, small_digits, "train")
    assert s["sgd_bn_recomputed"]["train_nll"] == pytest.approx(recomputed["nll"], rel=1e-6)
    assert abs(own["nll"] - recomputed["nll"]) > 1e-6  # the two rows do differ
    # Each epoch's record has the SGD iterate's test metrics; the last epoch's iterate is sgd.pt.
    assert [r["epoch"] for r in res.metrics] == [1, 2, 3, 4]
    assert res.metrics[-1]["test_nll"] == pytest.approx(evaluate_model(load_model(tmp_path / "swa" / "sgd.pt"),
                                                                       small_digits, "test")["nll"], rel=1e-6)


def test_swa_evaluated_over_training_is_the_average_of_the_iterates_so_far(tmp_path, small_digits, endpoint,
                                                                           capsys):
    """--eval-every: the records' SWA metrics are those of the mean of the snapshots averaged by then (batch
    norm re-estimated); the last is the summary's; training itself is unchanged, and a resume may change it.
    The stopped run's figure is refused (it would show 3 epochs as the run), the finished one's drawn."""
    kw = dict(from_ckpt=str(endpoint), epochs=5, swa_start=1, lr=0.05, swa_lr=0.05, data=small_digits,
              progress=False)

    def stop(epoch, record):
        if epoch == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run_swa(None, tmp_path / "e", keep_snapshots=True, eval_every=1, on_epoch_end=stop, **kw)
    from landscape import cli

    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "the SWA run there is unfinished (epoch 3 of 5 in last.pt); finish it by rerunning its command with "
        "--resume, then plot")
    assert not (tmp_path / "e" / "swa.png").exists()
    early = tmp_path / "early"  # stopped before its first epoch ended: its config alone (it said to rerun with
    early.mkdir()               # --eval-every N, which it had been given)
    shutil.copy(tmp_path / "e" / "config.json", early / "config.json")
    assert cli.main(["plot", str(early)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "the SWA run there is unfinished; finish it by rerunning its command with --resume, then plot")
    res = run_swa(None, tmp_path / "e", keep_snapshots=True, eval_every=2, resume=True, **kw)  # another N: allowed
    plain = run_swa(None, tmp_path / "plain", **kw)
    # every epoch with an average before the stop, then every 2 epochs and the last
    assert [r["epoch"] for r in res.metrics if "swa_test_error" in r] == [2, 3, 4, 5]
    assert all("swa_test_error" not in r for r in plain.metrics)
    for a, b in zip(res.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)  # the evaluations draw nothing: the same run
    space = ParamSpace.of(res.model)
    for record in res.metrics:
        if "swa_test_error" not in record:
            continue
        snaps = [tmp_path / "e" / f"snapshot-{e:03d}.pt" for e in range(2, record["epoch"] + 1)]
        assert record["swa_n"] == len(snaps)
        mean = torch.stack([space.flatten(load_checkpoint(p).state_dict).double() for p in snaps]).mean(0)
        net = load_model(snaps[0])
        with torch.no_grad():
            for name, value in space.unflatten(mean.float()).items():
                net.get_parameter(name).copy_(value)
        reestimate_bn(net, small_digits.batches("train", 1000))
        m = evaluate_model(net.eval(), small_digits, "test")
        assert record["swa_test_nll"] == pytest.approx(m["nll"], rel=1e-5)
        assert record["swa_test_error"] == pytest.approx(m["error"])
    last = res.metrics[-1]
    assert (last["swa_test_nll"], last["swa_test_error"]) == (res.summary["swa"]["test_nll"],
                                                              res.summary["swa"]["test_error"])
    assert cli.main(["plot", str(tmp_path / "e")]) == 0 and (tmp_path / "e" / "swa.png").exists()
    with pytest.raises(UserError, match=re.escape("--eval-every must be a whole number of epochs >= 0")):
        run_swa(None, None, eval_every=-1, **kw)
    with pytest.raises(UserError, match="eval_every evaluates SWA's running average"):
        run_fge(None, None, from_ckpt=str(endpoint), epochs=2, eval_every=1, data=small_digits, progress=False)


def test_swa_from_scratch_starts_where_train_with_the_same_seed_starts(tmp_path, small_digits):
    """The talk's SGD-vs-SWA comparison runs both from the same initialization: the same --seed gives it."""
    from landscape.averaging import _start_model

    train(out=tmp_path / "sgd", data=small_digits, epochs=1, seed=7, save_every=1, progress=False,
          model_kwargs=SMALL)
    first = load_checkpoint(tmp_path / "sgd" / "checkpoint-000.pt").state_dict
    for seed, same in ((7, True), (8, False)):
        cfg = AverageConfig(model="convnet", model_kwargs=SMALL, seed=seed, epochs=2, swa_start=1)
        start = _start_model(cfg, small_digits)[0].state_dict()
        assert all(torch.equal(start[k], first[k]) for k in first) == same, seed


def test_a_model_option_that_contradicts_the_starting_checkpoint_is_refused(tmp_path, small_digits, endpoint):
    """--from X --model mlp used to train X's convnet and record mlp in config.json."""
    with pytest.raises(UserError, match=r"holds a 'convnet' network \(\{'width': 4\}\); --model mlp does not apply"):
        run_swa(None, tmp_path / "s", from_ckpt=str(endpoint), model="mlp", epochs=1, data=small_digits, progress=False)
    with pytest.raises(UserError, match="--model-kwargs does not apply"):
        run_fge(None, tmp_path / "f", from_ckpt=str(endpoint), model_kwargs={"width": 16}, epochs=1, data=small_digits,
                progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "f").exists()


def test_swa_averages_every_cycle_after_the_start(tmp_path, small_digits, endpoint):
    res = run_swa(None, tmp_path / "s", epochs=6, swa_start=2, cycle=2, swa_lr=0.02, model="convnet",
                  model_kwargs=SMALL, data=small_digits, progress=False)
    assert res.summary["averaged"] == 2  # after epochs 4 and 6
    with pytest.raises(UserError, match="swa-start"):
        run_swa(None, None, epochs=3, swa_start=3, model="convnet", data=small_digits, progress=False)
    for bad, said in (({"swa_lr": float("nan")}, "--swa-lr must be a finite number > 0, got nan"),
                      ({"swa_lr": 0.0}, "--swa-lr must be a finite number > 0, got 0.0"),
                      ({"swa_lr_max": float("inf"), "swa_schedule": "cyclic"},
                       "--swa-lr-max must be a finite number > 0, got inf"),
                      ({"swa_lr_max": 0.001, "swa_schedule": "cyclic"},
                       "--swa-lr-max must be at least --swa-lr, got 0.001 and 0.01"),
                      # the constant schedule has no high end: the option would be silently ignored
                      ({"swa_lr_max": 0.1}, "--swa-lr-max: for --schedule cyclic (the constant schedule runs at "
                                            "--swa-lr)"),
                      ({"swa_lr": 1e38, "swa_schedule": "cyclic"},
                       "--swa-lr-max (by default 10 x --swa-lr) must be a finite number > 0, got 1e+39 (above "
                       "3.4e+38, the float32 limit)")):
        with pytest.raises(UserError, match=re.escape(said)):
            run_swa(None, None, epochs=3, model="convnet", data=small_digits, progress=False, **bad)
    with pytest.raises(UserError, match=re.escape("--lr-max must be a finite number > 0, got 1e+39")):
        run_fge(None, None, from_ckpt=str(endpoint), epochs=2, lr=1e39, data=small_digits, progress=False)
    # refused before training, not after it (the folder could then never be finished)
    with pytest.raises(UserError, match=r"^no iterate would be averaged: --epochs \(2\) must exceed --swa-start "
                                        r"\(0\) by at least --cycle \(5\)$"):
        run_swa(None, tmp_path / "never", epochs=2, cycle=5, model="convnet", data=small_digits, progress=False)
    assert not (tmp_path / "never").exists()


class _Stop(Exception):
    pass


def test_swa_resume_is_exact(tmp_path, small_digits, endpoint):
    kw = dict(from_ckpt=str(endpoint), epochs=4, swa_lr=0.05, data=small_digits, progress=False)
    full = run_swa(None, tmp_path / "full", **kw)

    def stop(epoch, record):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run_swa(None, tmp_path / "cut", on_epoch_end=stop, **kw)
    resumed = run_swa(None, tmp_path / "cut", resume=True, **kw)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fge_snapshots_and_their_ensemble(tmp_path, small_digits, endpoint):
    res = run_fge(None, tmp_path / "fge", from_ckpt=str(endpoint), epochs=4, cycle=2, lr=0.05, lr_min=0.001,
                  data=small_digits, progress=False)
    s = res.summary
    snaps = sorted((tmp_path / "fge").glob("snapshot-*.pt"))
    assert len(snaps) == 2 == s["ensemble"]["members"]
    # the snapshot is taken after the iteration at the rate's minimum
    steps = steps_per_epoch(400, 128)
    assert load_checkpoint(snaps[0]).meta["iteration"] == fge_snapshot_iteration(2, steps) - steps
    # the ensemble equals the mean of the snapshots' predicted probabilities, recomputed here
    probs = []
    for p in snaps:
        net = load_model(p)
        with torch.no_grad():
            probs.append(torch.cat([torch.softmax(net(x), -1) for x, _ in small_digits.batches("test", 1000)]).numpy())
    want = ensemble_metrics(np.stack(probs), small_digits.y_test.numpy())
    assert s["ensemble"]["test_error"] == pytest.approx(want["error"])
    assert s["ensemble"]["test_nll"] == pytest.approx(want["nll"], rel=1e-5)
    with pytest.raises(UserError, match="--from"):
        run_fge(None, None, epochs=2, data=small_digits, progress=False)


def test_divergence_names_each_methods_rate_and_keeps_no_non_finite_weights(tmp_path, small_digits, endpoint,
                                                                             poison_step):
    """FGE's rate is --lr-max, SWA's --swa-lr; an FGE snapshot of NaN weights is
    never taken, and an SWA iterate made NaN by an epoch's last step is never averaged."""
    poison_step(1)  # FGE with cycles of 1 epoch (4 steps) snapshots after its 2nd step: the weights are NaN then
    with pytest.raises(UserError, match=re.escape("the weights became non-finite in epoch 1, before snapshot 1; "
                                                  "no epoch finished; lower --lr-max and run it again")):
        run_fge(None, tmp_path / "f", from_ckpt=str(endpoint), epochs=2, cycle=1, data=small_digits, progress=False)
    assert not list((tmp_path / "f").glob("snapshot-*.pt"))
    steps = steps_per_epoch(400, 128)
    poison_step(2 * steps)  # the last step of epoch 2, the first averaged
    with pytest.raises(UserError, match=re.escape("the weights became non-finite by the end of epoch 2 ")
                       + r".*last\.pt holds epoch 1; lower --swa-lr \(or --lr, before --swa-start\)"):
        run_swa(None, tmp_path / "s", from_ckpt=str(endpoint), epochs=3, swa_start=1, data=small_digits, progress=False)
    kept = load_checkpoint(tmp_path / "s" / "last.pt")
    assert kept.extra["average_state"]["n"] == 0 and all(bool(torch.isfinite(v).all()) for v in kept.state_dict.values())


def test_a_non_finite_swa_average_is_refused_before_its_files(tmp_path, small_digits, endpoint, monkeypatch):
    """swa.pt and sgd.pt were written before the summary's check: a refused run left what looked
    like finished networks."""
    import landscape.averaging as averaging

    real = averaging._metrics_of
    calls = []

    def metrics(model, data, wd):
        calls.append(1)
        m = real(model, data, wd)
        return dict(m, test_nll=float("nan")) if len(calls) == 2 else m  # the average's

    monkeypatch.setattr(averaging, "_metrics_of", metrics)
    with pytest.raises(UserError, match=re.escape("training diverged: the final network's swa.test_nll is nan; ")
                       + ".*last.pt holds epoch 1; lower --swa-lr"):
        run_swa(None, tmp_path / "s", from_ckpt=str(endpoint), epochs=1, data=small_digits, progress=False)
    assert (tmp_path / "s" / "last.pt").exists()
    assert not any((tmp_path / "s" / name).exists() for name in ("swa.pt", "sgd.pt", "model.pt", "summary.json"))


def test_snapshot_ensemble_from_scratch(tmp_path, small_digits, capsys):
    """A trailing partial cycle (5 epochs, cycles of 2) takes no snapshot, and the summary and the CLI say so."""
    from landscape import cli
    res = run_snapshots(None, tmp_path / "snap", epochs=5, cycle=2, lr=0.05, model="convnet", model_kwargs=SMALL,
                        data=small_digits, progress=False)
    assert res.summary["ensemble"]["members"] == 2
    assert [m["epoch"] for m in res.summary["members"]] == [2, 4]
    assert (res.summary["cycle"], res.summary["partial_cycle_epochs"], res.summary["partial_cycle_snapshot"]) == \
        (2, 1, False)
    cli._print_ensemble(res.summary)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: --epochs 5 is not a multiple of --cycle 2: the last 1 epoch formed a partial cycle, which gave no snapshot")


def test_ensemble_of_checkpoints(tmp_path, small_digits, endpoint):
    other = tmp_path / "b"
    train(out=other, data=small_digits, epochs=3, seed=2, progress=False, model_kwargs=SMALL)
    paths = [endpoint, other / "model.pt"]
    s = evaluate_ensemble(paths, tmp_path / "ens", data_overrides={"dataset": "digits"}).summary
    full = load_dataset("digits")  # the checkpoints' own data settings: the whole digits split
    probs = []
    for p in paths:
        net = load_model(p)
        with torch.no_grad():
            probs.append(torch.cat([torch.softmax(net(x), -1) for x, _ in full.batches("test", 1000)]).numpy())
    want = ensemble_metrics(np.stack(probs), full.y_test.numpy())
    assert s["ensemble"]["test_error"] == pytest.approx(want["error"])
    for m, p in zip(s["members"], probs):
        assert m["test_error"] == pytest.approx(ensemble_metrics(p[None], full.y_test.numpy())["error"])
    assert (tmp_path / "ens" / "summary.json").exists()
    stored = (tmp_path / "ens" / "summary.json").read_bytes()
    with pytest.raises(UserError, match=r"already holds an ensemble result \(summary.json\); choose another --out "
                                        r"\(--resume shows it\)"):  # not silently replaced
        evaluate_ensemble(paths[::-1], tmp_path / "ens", data_overrides={"dataset": "digits"})
    assert (tmp_path / "ens" / "summary.json").read_bytes() == stored
    # --resume shows the stored result of the same members on the same data, and refuses other members
    again = evaluate_ensemble(paths, tmp_path / "ens", data_overrides={"dataset": "digits"}, resume=True).summary
    assert again == s and (tmp_path / "ens" / "summary.json").read_bytes() == stored
    with pytest.raises(UserError, match="holds an ensemble result of other members or other data"):
        evaluate_ensemble([paths[0], paths[0]], tmp_path / "ens", data_overrides={"dataset": "digits"}, resume=True)
    with pytest.raises(UserError, match="holds an ensemble result of other members or other data"):
        evaluate_ensemble(paths, tmp_path / "ens", data_overrides={"dataset": "digits", "val_size": 100}, resume=True)
    ck = load_checkpoint(paths[0])  # the same weights with other batch-norm statistics: other members' rows
    moved = {k: v + 3 if k.endswith("running_mean") else v for k, v in ck.state_dict.items()}
    from landscape.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "moved.pt", moved, ck.model, meta=ck.meta)
    with pytest.raises(UserError, match="holds an ensemble result of other members or other data"):
        evaluate_ensemble([tmp_path / "moved.pt", paths[1]], tmp_path / "ens", data_overrides={"dataset": "digits"},
                          resume=True)
    assert {"test_error", "test_nll", "train_loss"} <= s["weight_average"].keys()
    assert s["ensemble"]["test_ece"] == pytest.approx(want["ece"], abs=1e-3)
    # the weight average's own predictions, formed here: the mean of the weights, batch norm re-estimated
    space = ParamSpace.of(load_model(endpoint))
    avg = load_model(endpoint)
    mean = torch.stack([space.flatten(load_checkpoint(p).state_dict) for p in paths]).mean(0)
    with torch.no_grad():
        for name, value in space.unflatten(mean).items():
            avg.get_parameter(name).copy_(value)
    population_bn(avg, full.x_train)  # the engine's estimator: the training set's exact statistics
    with torch.no_grad():
        q = torch.cat([torch.softmax(avg.eval()(x), -1) for x, _ in full.batches("test", 1000)]).double().numpy()
    p_ens = np.stack(probs).mean(0).astype(np.float64)
    kl = float((p_ens * (np.log(p_ens) - np.log(q))).sum(1).mean())
    assert s["agreement"]["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert s["agreement"]["same_prediction"] == pytest.approx(100 * float((p_ens.argmax(1) == q.argmax(1)).mean()))
    assert s["weight_average"]["test_error"] == pytest.approx(100 * float((q.argmax(1) != full.y_test.numpy()).mean()))
    from landscape.ensemble import agreement

    same = agreement(p_ens, p_ens)
    assert same == {"same_prediction": 100.0, "kl": pytest.approx(0.0, abs=1e-12)}
    # the members and their ensemble with batch norm re-estimated as the weight average's is, formed here: the
    # like-for-like rows (a short run's own running statistics lag its weights)
    fresh = []
    for p in paths:
        net = load_model(p)
        population_bn(net, full.x_train)
        with torch.no_grad():
            fresh.append(torch.cat([torch.softmax(net.eval()(x), -1) for x, _ in full.batches("test", 1000)]).numpy())
    r = s["bn_reestimated"]
    for m, p in zip(r["members"], fresh):
        own = ensemble_metrics(p[None].astype(np.float64), full.y_test.numpy())
        assert m["test_error"] == pytest.approx(own["error"]) and m["test_nll"] == pytest.approx(own["nll"], rel=1e-4)
    both = ensemble_metrics(np.stack(fresh).astype(np.float64), full.y_test.numpy())
    assert r["ensemble"]["test_error"] == pytest.approx(both["error"])
    assert r["ensemble"]["test_nll"] == pytest.approx(both["nll"], rel=1e-4)
    assert [m["label"] for m in r["members"]] == [m["label"] for m in s["members"]]
    both_p = np.stack(fresh).mean(0).astype(np.float64)  # the re-estimated ensemble's, against the weight average
    kl_bn = float((both_p * (np.log(both_p) - np.log(q))).sum(1).mean())
    assert r["agreement"]["kl"] == pytest.approx(kl_bn, rel=1e-4, abs=1e-7)
    assert r["members"][0]["test_ece"] == pytest.approx(
        ensemble_metrics(fresh[0][None].astype(np.float64), full.y_test.numpy())["ece"], abs=1e-3)


def test_member_labels_are_told_apart_where_they_collide():
    from landscape.inputs import _labels

    assert _labels(["runs/a/model.pt", "runs/b/model.pt", "fge/snapshot-001.pt"]) == ["a", "b", "snapshot-001"]
    assert _labels(["fge/snapshot-001.pt", "snap/snapshot-001.pt", "runs/a/model.pt", "x/a.pt"]) == [
        "fge/snapshot-001", "snap/snapshot-001", "a/model", "x/a"]
    assert _labels(["r1/x/m.pt", "r2/x/m.pt"]) == ["r1/x/m.pt", "r2/x/m.pt"]


def test_a_network_without_batch_norm_reports_nothing_recomputed(tmp_path, small_digits, capsys):
    """Its 'SGD, BN recomp.' row repeated the SGD row, and the ensemble called its weight average re-estimated."""
    from landscape import cli

    for seed in (1, 2):
        train(out=tmp_path / f"m{seed}", model="mlp", data=small_digits, epochs=1, seed=seed, progress=False)
    res = run_swa(None, tmp_path / "swa", from_ckpt=str(tmp_path / "m1" / "model.pt"), epochs=2, swa_lr=0.05,
                  data=small_digits, progress=False)
    assert {"swa", "sgd"} <= res.summary.keys() and "sgd_bn_recomputed" not in res.summary
    with_bn = run_swa(None, tmp_path / "swa-bn", from_ckpt=str(train(out=tmp_path / "c", data=small_digits, epochs=1,
                                                                     progress=False, model_kwargs=SMALL).out /
                                                                   "model.pt"),
                      epochs=1, swa_lr=0.05, data=small_digits, progress=False)
    assert "sgd_bn_recomputed" in with_bn.summary
    mine = tmp_path / "digits400.npz"  # the same 400 images as a file, so the CLI can read them
    np.savez(mine, x_train=small_digits.x_train.numpy(), y_train=small_digits.y_train.numpy(),
             x_test=small_digits.x_test.numpy(), y_test=small_digits.y_test.numpy())
    s = evaluate_ensemble([tmp_path / "m1" / "model.pt", tmp_path / "m2" / "model.pt"], None,
                          data=small_digits).summary
    assert s["batch_norm"] is False
    capsys.readouterr()
    assert cli.main(["ensemble", str(tmp_path / "m1" / "model.pt"), str(tmp_path / "m2" / "model.pt"), "--dataset",
                     "npz", "--data-path", str(mine)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("weight average")]
    assert len(rows) == 1 and "re-estimated" not in rows[0]


def _wide_logits(num_classes, input_shape, extra=2):
    """A network giving more logits than the data has classes (the README allows it)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                               torch.nn.ReLU(), torch.nn.Linear(16, num_classes + extra))


@pytest.mark.parametrize("method", ["fge", "snapshots"])
def test_fge_and_snapshots_of_a_network_with_more_logits_than_classes(tmp_path, small_digits, monkeypatch, method):
    """Their ensemble's probabilities were sized by the data's classes: a traceback at the first snapshot,
    after the training, and again on --resume."""
    import landscape.models as models

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("wide_logits")(_wide_logits)
    train(out=tmp_path / "e", model="wide_logits", data=small_digits, epochs=1, progress=False)
    kw = dict(epochs=2, cycle=1, lr=0.05, data=small_digits, progress=False)
    if method == "fge":
        res = run_fge(None, tmp_path / method, from_ckpt=str(tmp_path / "e" / "model.pt"), lr_min=0.001, **kw)
    else:
        res = run_snapshots(None, tmp_path / method, model="wide_logits", **kw)
    snaps = sorted((tmp_path / method).glob("snapshot-*.pt"))
    assert len(snaps) == 2 == res.summary["ensemble"]["members"]
    probs = []
    for p in snaps:
        net = load_model(p, "wide_logits")
        with torch.no_grad():
            probs.append(torch.cat([torch.softmax(net.eval()(x), -1) for x, _ in small_digits.batches("test", 1000)]))
    assert probs[0].shape[1] == 12
    want = ensemble_metrics(torch.stack(probs).double().numpy(), small_digits.y_test.numpy())
    assert res.summary["ensemble"]["test_nll"] == pytest.approx(want["nll"], rel=1e-5)


def test_options_given_from_python_are_checked_before_any_training(tmp_path, small_digits, endpoint):
    """The command line parses counts as ints; from Python 4.5, "2", None or NaN trained first and failed
    after (swa_start=0.5: three epochs, then "no iterate was averaged"), or raised a TypeError."""
    kw = dict(from_ckpt=str(endpoint), data=small_digits, progress=False)
    cases = [(run_swa, dict(epochs=3, swa_start=0.5), "--swa-start must be a whole number, got 0.5"),
             (run_fge, dict(epochs=4.5), "--epochs must be a whole number, got 4.5"),
             (run_fge, dict(epochs=2, cycle=2.5), "--cycle must be a whole number, got 2.5"),
             (run_fge, dict(epochs=2, cycle=float("nan")), "--cycle must be a whole number, got nan"),
             (run_fge, dict(epochs=2, lr_min=None), "--lr-min must be a number, got None"),
             (run_snapshots, dict(epochs=2, cycle="2"), "--cycle must be a whole number, got '2'"),
             (run_snapshots, dict(epochs=2, cycle=True), "--cycle must be a whole number, got True"),
             (run_swa, dict(epochs=3, swag_rank=2.5), "--swag-rank must be a whole number, got 2.5"),
             (run_swa, dict(epochs=3, batch_size=None), "--batch-size must be a whole number, got None"),
             (run_swa, dict(epochs=3, lr="0.1"), "must be a number, got '0.1'")]
    for run, options, message in cases:
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        with pytest.raises(UserError, match=re.escape(message)):
            run(None, out, **kw, **options)
        assert not (out / "last.pt").exists(), (options, message)
    res = run_fge(None, None, epochs=2.0, cycle=2.0, **kw)  # whole floats are whole numbers
    assert res.summary["ensemble"]["members"] == 1 and res.summary["cycle"] == 2


def test_settings_a_method_does_not_use_are_refused_not_recorded(tmp_path, small_digits, endpoint):
    """run_fge(swa_lr_max=0.5), the hint lr_max= got, ran at the default rates and recorded 0.5 in its
    config.json; SWA's settings given to FGE or snapshots, lr_min to SWA, and method= were likewise taken
    without a word."""
    from landscape.train import train as train_fn

    kw = dict(from_ckpt=str(endpoint), data=small_digits, progress=False)
    cases = [(run_fge, dict(epochs=2, lr_max=0.5), "takes no keyword 'lr_max' (FGE's --lr-max is lr=; SWA's"),
             (run_fge, dict(epochs=2, swa_lr_max=0.5), "run_fge() does not use swa_lr_max= (its rates are lr= and "
                                                       "lr_min=, the command's --lr-max and --lr-min)"),
             (run_fge, dict(epochs=2, swa_start=1, swa_lr=0.1), "run_fge() does not use swa_start=, swa_lr="),
             (run_snapshots, dict(epochs=2, lr_min=0.001), "run_snapshots() does not use lr_min="),
             (run_snapshots, dict(epochs=2, keep_snapshots=True), "run_snapshots() does not use keep_snapshots="),
             (run_swa, dict(epochs=3, lr_min=0.001), "run_swa() does not use lr_min="),
             (run_fge, dict(epochs=2, method="swa"), "run_fge() runs fge: for 'swa' call run_swa()")]
    for run, options, message in cases:
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        with pytest.raises(UserError, match=re.escape(message)):
            run(None, out, **kw, **options)
        assert not out.exists(), (options, message)
    with pytest.raises(UserError, match=re.escape("takes no keyword 'precision' (training's --precision bf16 is "
                                                  "amp=True)")):
        train_fn(out=None, data=small_digits, epochs=1, precision="bf16")
    # the defaults themselves, and the settings a method uses, are taken
    res = run_fge(None, None, epochs=2, cycle=2, lr=0.04, lr_min=0.001, swa_lr=0.01, keep_snapshots=False, **kw)
    assert res.summary["ensemble"]["members"] == 1


@pytest.mark.parametrize("method", ["fge", "snapshots"])
def test_a_cycle_of_one_step_is_refused(tmp_path, small_digits, endpoint, method):
    """With one step per cycle the rate never leaves its top (cos 0; FGE's t = 0): every snapshot was taken
    at --lr, and --lr-min never used."""
    run = run_fge if method == "fge" else run_snapshots
    with pytest.raises(UserError, match=r"^a cycle of 1 epoch is 1 step \(400 training images in batches of 400\)"):
        run(None, tmp_path / method, from_ckpt=str(endpoint), epochs=2, cycle=1, batch_size=400, data=small_digits,
            progress=False)
    assert not list((tmp_path / method).glob("*.pt"))


def test_model_kwargs_that_contradict_the_checkpoints_network_are_refused_not_ignored(tmp_path, small_digits,
                                                                                     endpoint, capsys):
    """ensemble, rays and width built the checkpoint's own network and dropped --model-kwargs without a word
    (width=16 of a width-8 network, or foo=bar, gave the width-8 network's numbers); its own options pass."""
    from landscape import cli

    own = load_checkpoint(endpoint).model["kwargs"]["width"]
    for argv in (["ensemble", str(endpoint), str(endpoint), "--dataset", "digits", "--out", str(tmp_path / "e")],
                 ["rays", "--center", str(endpoint), "--directions", "1", "--steps", "1", "--dataset", "digits",
                  "--out", str(tmp_path / "r")]):
        for kwargs in (f"width={own + 8}", "foo=bar"):
            assert cli.main([*argv, "--model-kwargs", kwargs, "--quiet"]) == 2
            assert "--model-kwargs does not apply to it (leave it out)" in capsys.readouterr().err
    with pytest.raises(UserError, match="--model-kwargs does not apply to it"):
        evaluate_ensemble([endpoint, endpoint], None, model_kwargs={"width": own + 8}, data=small_digits)
    s = evaluate_ensemble([endpoint, endpoint], None, model_kwargs={"width": own}, data=small_digits).summary
    assert s["ensemble"]["members"] == 2


def test_an_ensemble_members_nll_is_its_own_not_floored(tmp_path, small_digits, endpoint):
    """A member whose last layer is scaled by 1e30 is wrong on some images by ~1e29 nats: its row said about
    2 (each such image counted at the 708-nat floor of averaged probabilities) beside its network's 1e27."""
    ck = load_checkpoint(endpoint)
    state = dict(ck.state_dict)
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = state[last] * 1e30
    torch.save({**torch.load(endpoint, weights_only=True), "state_dict": state}, tmp_path / "huge.pt")
    s = evaluate_ensemble([endpoint, tmp_path / "huge.pt"], None, data=small_digits).summary
    for member, path in zip(s["members"], (endpoint, tmp_path / "huge.pt")):
        own = evaluate_model(load_model(path), small_digits, "test")["nll"]
        assert member["test_nll"] == pytest.approx(own, rel=1e-6)  # float64 log-softmax against its float32
    assert s["members"][1]["test_nll"] > 1e20
