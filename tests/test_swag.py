"""SWAG: the moments SWA collects against hand computations from its saved
iterates, the sampler against its closed-form covariance, the model average
against one built by hand with the papers' update_bn, resume, and bad input."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.averaging import predict_probs, run_swa
from landscape.checkpoint import load_checkpoint, load_model
from landscape.errors import UserError
from landscape.metrics import ensemble_metrics
from landscape.swag import SwagPosterior, evaluate_swag, load_swag
from landscape.train import train
from landscape.weights import ParamSpace
from tests.conftest import fail_at_pass, naming_digits, papers_update_bn

LANDSCAPE = Path(sys.executable).with_name("landscape")
SMALL = {"width": 4}


@pytest.fixture(scope="module")
def swag_run(tmp_path_factory, small_digits):
    """SWA at a high constant rate for 5 epochs from an endpoint, every iterate
    kept, SWAG's last 3 deviations collected."""
    root = tmp_path_factory.mktemp("swag")
    train(out=root / "a", data=small_digits, epochs=3, seed=1, progress=False, model_kwargs=SMALL)
    kw = dict(from_ckpt=str(root / "a" / "model.pt"), epochs=5, swa_lr=0.1, swag_rank=3, keep_snapshots=True,
              data=small_digits, progress=False)
    return run_swa(None, root / "swa", **kw), root, kw


def test_swa_collects_swags_moments_of_its_iterates(swag_run):
    res, root, _ = swag_run
    run = root / "swa"
    space = ParamSpace.of(res.model)
    iterates = [space.flatten(load_checkpoint(run / f"snapshot-{i:03d}.pt").state_dict).double() for i in range(1, 6)]
    w = torch.stack(iterates)  # (5, P)
    post, net, ck = load_swag(run / "swag.pt")
    assert ck.kind == "swag" and post.averaged == 5 and res.summary["swag_deviations"] == 3
    assert res.summary["files"]["swag"] == "swag.pt"
    torch.testing.assert_close(post.mean, w.mean(0), rtol=0, atol=1e-12)  # kept in float64
    assert torch.equal(space.flatten(net), post.mean.float())  # the SWA network's own weights, rounded
    torch.testing.assert_close(post.sq_mean, (w * w).mean(0), rtol=1e-12, atol=1e-15)
    # the variance of every weight, also where it is far below its float32 rounding (w * 6e-8)
    torch.testing.assert_close(post.variance(), w.var(0, unbiased=False), rtol=1e-6, atol=1e-14)
    # D_i = w_i - (mean of w_1..w_i); the last three kept, oldest first
    running = torch.cumsum(w, 0) / torch.arange(1, 6, dtype=torch.float64)[:, None]
    torch.testing.assert_close(post.deviations.double(), (w - running)[2:], rtol=0, atol=1e-6)
    assert (post.deviations.abs().max(dim=1).values > 1e-3).all()  # the iterates did move
    # swag.pt is also the SWA network itself (batch norm recomputed): it loads where swa.pt does
    swa = load_model(run / "swa.pt")
    for (name, a), b in zip(net.state_dict().items(), swa.state_dict().values()):
        assert torch.equal(a, b), name


def test_samples_follow_the_formula_and_the_closed_form_covariance():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.04, 0.01, 0.09], dtype=torch.float64)
    dev = torch.tensor([[0.3, -0.1, 0.0], [-0.2, 0.2, 0.1], [0.1, 0.0, -0.3]])
    post = SwagPosterior(mean=mean, sq_mean=var + mean * mean, deviations=dev, averaged=10)
    torch.testing.assert_close(post.variance(), var)
    assert post.sample(0).shape == (0, 3)
    # one draw by hand: z_1 (P numbers) then z_2 (K numbers) from the seeded generator
    gen = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    want = mean + 0.5 ** 0.5 * (var.sqrt() * z1 + dev.double().T @ z2 / 2 ** 0.5)
    torch.testing.assert_close(post.sample(1, seed=7)[0], want.float())
    assert torch.equal(post.sample(4, seed=3), post.sample(4, seed=3))
    assert torch.equal(post.sample(4, seed=np.int64(3)), post.sample(4, seed=3))  # a raw TypeError before
    with pytest.raises(UserError, match="--seed must be a whole number from 0 to 2"):
        post.sample(1, seed=-1)
    # the paper's scales by default: 1/2 for SWAG, 1 for SWAG-Diagonal's N(mean, diag(var))
    assert torch.equal(post.sample(4, seed=3), post.sample(4, seed=3, scale=0.5))
    assert torch.equal(post.sample(4, seed=3, diag=True), post.sample(4, seed=3, scale=1.0, diag=True))
    # moments with fewer than 2 deviations (swa_gaussian without --cov_mat) have no low-rank part: they are
    # SWAG-Diagonal, at its scale 1 (they drew at 0.5, half the variance, as "SWAG-Diagonal")
    for kept in (0, 1):
        thin = SwagPosterior(mean=mean, sq_mean=var + mean * mean, deviations=dev[:kept], averaged=10)
        assert torch.equal(thin.sample(4, seed=3), post.sample(4, seed=3, diag=True))
    gen = torch.Generator().manual_seed(7)
    torch.testing.assert_close(post.sample(1, seed=7, diag=True)[0],
                               (mean + var.sqrt() * torch.randn(3, generator=gen, dtype=torch.float64)).float())
    # many draws: covariance scale (diag(var) + D^T D / (K - 1)), and scale diag(var) without the low-rank term
    for scale, diag in ((0.5, False), (1.0, True)):
        draws = post.sample(40000, seed=1, scale=scale, diag=diag).double()
        want_cov = scale * (torch.diag(var) + (0 if diag else dev.double().T @ dev.double() / 2))
        torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.01)
        torch.testing.assert_close(torch.cov(draws.T), want_cov, rtol=0, atol=0.004)


def test_an_evaluation_resumes_when_its_draws_come_out_a_few_bits_apart(tmp_path, swag_run, small_digits,
                                                                        monkeypatch):
    """The draws are computed from the posterior (a low-rank product whose last bits change with the thread count,
    as under torchrun): the partial store is keyed by the posterior and options asked for, so a resume is not
    refused for them; other options still are."""
    from landscape import sweep as sweep_module

    _, root, _ = swag_run
    kw = dict(samples=3, seed=5, bn_stats="batches", data=small_digits, points_per_pass=1)
    real = sweep_module.evaluate_points
    fail_at_pass(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev", **kw)
    monkeypatch.setattr(sweep_module, "evaluate_points", real)
    whole = evaluate_swag(root / "swa" / "swag.pt", tmp_path / "whole", **kw)
    sample = SwagPosterior.sample
    monkeypatch.setattr(SwagPosterior, "sample", lambda self, *a, **k: sample(self, *a, **k) * (1 + 2.0 ** -20))
    got = evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev", resume=True, **kw)
    np.testing.assert_allclose(got.arrays["bma_test_nll"], whole.arrays["bma_test_nll"], rtol=1e-4)
    fail_at_pass(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev2", **kw)
    monkeypatch.setattr(sweep_module, "evaluate_points", real)
    # the settings that differ named (the unfinished store said "other points or settings; delete it")
    with pytest.raises(UserError, match=r"partial results of a different sweep \(other settings: bn_batches none, "
                                        r"now 1\); rerun with the settings it began with to continue it, or choose "
                                        r"another --out$"):
        evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev2", resume=True, **dict(kw, bn_batches=1))
    with pytest.raises(UserError, match=r"\(other settings: seed 5, now 6\)"):
        evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev2", resume=True, **dict(kw, seed=6))
    assert (tmp_path / "ev2" / "sweep.partial.npz").exists()


def test_the_model_average_is_the_samples_averaged_by_hand(tmp_path, swag_run, small_digits):
    _, root, _ = swag_run
    ev = evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev", samples=3, seed=5, bn_stats="batches",
                       data=small_digits)
    post, net, _ = load_swag(root / "swa" / "swag.pt")
    space = ParamSpace.of(net)
    probs = []
    for w in post.sample(3, seed=5):
        m = copy.deepcopy(net)
        with torch.no_grad():
            for name, value in space.unflatten(w).items():
                m.get_parameter(name).copy_(value)
        papers_update_bn(small_digits.batches("train", 1000), m)
        probs.append(predict_probs(m, small_digits).double())
    labels = small_digits.y_test.numpy()
    for s in (1, 3):
        want = ensemble_metrics(torch.stack(probs[:s]).mean(0)[None].numpy(), labels)
        assert ev.arrays["bma_test_nll"][s - 1] == pytest.approx(want["nll"], rel=1e-4)
        assert ev.arrays["bma_test_error"][s - 1] == pytest.approx(want["error"], abs=1e-9)
    one = ensemble_metrics(probs[0][None].numpy(), labels)
    assert ev.arrays["sample_test_nll"][0] == pytest.approx(one["nll"], rel=1e-4)
    assert ev.summary["bma"] == {"test_error": ev.arrays["bma_test_error"][-1],
                                 "test_nll": ev.arrays["bma_test_nll"][-1], "members": 3,
                                 "test_ece": pytest.approx(want["ece"], abs=1e-3)}  # want: the 3 samples' average
    assert ev.arrays["sample_test_ece"][0] == pytest.approx(one["ece"], abs=1e-3)
    # the reliability diagrams: every test image in one bin, and the summary's ECE read off them
    for name, summary_ece in (("reliability_bma", ev.summary["bma"]["test_ece"]),
                              ("reliability_centre", ev.summary["swa"]["test_ece"])):
        confidence, accuracy, count = ev.arrays[name]
        assert count.sum() == len(labels) and ev.arrays[name].shape == (3, 20)
        filled = count > 0
        assert 100 * (count[filled] * np.abs(accuracy - confidence)[filled]).sum() / len(labels) == pytest.approx(
            summary_ece, rel=1e-12)
    # a result stored before the diagrams draws without their panel
    from landscape.plots.swag import draw_swag_figure

    with np.load(tmp_path / "ev" / "swag.npz") as z:
        older = {k: z[k] for k in z.files if not k.startswith("reliability_")}
    np.savez(tmp_path / "ev" / "swag.npz", **older)
    assert [f.name for f in draw_swag_figure(tmp_path / "ev", ("svg",))] == ["swag.svg"]
    assert ev.summary["method"] == "SWAG" and ev.summary["rank"] == 3
    # the samples are not the mean: their losses differ from it
    assert np.abs(ev.arrays["sample_train_loss"] - ev.arrays["mean_train_loss"]).max() > 1e-4
    stored = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert stored["bma"]["test_nll"] == pytest.approx(ev.summary["bma"]["test_nll"])
    assert (tmp_path / "ev" / "swag.npz").exists() and not (tmp_path / "ev" / "sweep.partial.npz").exists()
    # a finished result is refused without --resume and returned with it
    with pytest.raises(UserError, match="already holds a finished result"):
        evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev", samples=3, seed=5, bn_stats="batches", data=small_digits)
    again = evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev", samples=3, seed=5, bn_stats="batches",
                          data=small_digits, resume=True)
    assert again.summary["bma"] == pytest.approx(ev.summary["bma"])
    with pytest.raises(UserError, match="of other settings: seed 5, now 6; choose"):
        evaluate_swag(root / "swa" / "swag.pt", tmp_path / "ev", samples=3, seed=6, bn_stats="batches",
                      data=small_digits, resume=True)


def test_swa_with_swag_moments_resumes_exactly(tmp_path, swag_run):
    full, _, kw = swag_run
    kw = {k: v for k, v in kw.items() if k != "keep_snapshots"}

    class Stop(Exception):
        pass

    def stop(epoch, record):
        if epoch == 3:
            raise Stop

    with pytest.raises(Stop):
        run_swa(None, tmp_path / "cut", on_epoch_end=stop, **kw)
    run_swa(None, tmp_path / "cut", resume=True, **kw)
    a, b = load_swag(full.out / "swag.pt")[0], load_swag(tmp_path / "cut" / "swag.pt")[0]
    assert torch.equal(a.mean, b.mean) and torch.equal(a.sq_mean, b.sq_mean)
    assert torch.equal(a.deviations, b.deviations)


def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([str(LANDSCAPE), *naming_digits(argv)], capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_swag_from_the_command_line_and_its_bad_input(tmp_path, swag_run):
    _, root, _ = swag_run
    if not LANDSCAPE.exists():
        pytest.skip("console script not installed next to this interpreter")
    done = run_cli("swag", "--ckpt", root / "swa" / "swag.pt", "--samples", 2, "--diag", "--out", tmp_path / "d", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "model average" in done.stdout and "(SWAG-Diagonal: 2 samples, scale 1)" in done.stdout
    assert (tmp_path / "d" / "swag.png").exists()
    # another scale in the same folder (as a run from when --diag took 0.5 by default): which one, said
    other = run_cli("swag", "--ckpt", root / "swa" / "swag.pt", "--samples", 2, "--diag", "--scale", 0.5, "--resume",
                    "--out", tmp_path / "d", "--quiet")
    assert other.returncode == 2 and other.stderr.strip().endswith(
        f"{tmp_path / 'd'} holds a swag run of --scale 1, not 0.5; pass --scale 1 to resume or repeat it, "
        f"or choose another --out"), other.stderr
    (tmp_path / "d" / "swag.png").unlink()
    redrawn = run_cli("plot", tmp_path / "d")
    assert redrawn.returncode == 0 and (tmp_path / "d" / "swag.png").exists(), redrawn.stderr
    # a model-average curve cut short no longer matches the samples the summary counts: refused
    with np.load(tmp_path / "d" / "swag.npz") as z:
        cut = {k: z[k] for k in z.files}
    cut["bma_test_nll"] = cut["bma_test_nll"][:1]
    np.savez(tmp_path / "d" / "swag.npz", **cut)
    refused = run_cli("plot", tmp_path / "d")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"landscape: error: {tmp_path / 'd'}: the stored results do not fit together (ValueError: bma_test_nll has "
        f"shape (1,) for 2 samples; edited, or damaged?); rerun the command that made them")
    for argv, said in (
            (["swag", "--ckpt", root / "swa" / "swa.pt", "--out", tmp_path / "x"],
             f"{root / 'swa' / 'swa.pt'}: holds no SWAG moments; did you mean {root / 'swa' / 'swag.pt'}?"),
            (["swag", "--ckpt", root / "swa" / "swag.pt", "--samples", 0, "--out", tmp_path / "x"],
             "--samples must be at least 1, got 0"),
            (["swag", "--ckpt", root / "swa" / "swag.pt", "--scale", -1, "--out", tmp_path / "x"],
             "--scale must be a finite number >= 0, got -1.0"),
            (["swa", "--from", root / "a" / "model.pt", "--swag-rank", 1, "--out", tmp_path / "x"],
             "--swag-rank must be 0 (no SWAG moments) or at least 2 deviations, got 1"),
            (["swag", "--ckpt", root / "swa" / "swag.pt", "--seed", -5, "--out", tmp_path / "x"],
             "--seed must be a whole number from 0 to 2^63 - 1, got -5"),
            (["swag", "--ckpt", root / "swa" / "swag.pt", "--samples", 10 ** 12, "--out", tmp_path / "x"],
             f"--samples {10 ** 12} (the draws, samples x parameters floats) needs "),
            (["swag", "--ckpt", tmp_path / "nan.pt", "--out", tmp_path / "x"],
             f"{tmp_path / 'nan.pt'}: the SWAG mean has ")):
        if "nan.pt" in str(argv[2]) and not (tmp_path / "nan.pt").exists():
            ck = torch.load(root / "swa" / "swag.pt", weights_only=True)
            ck["swag"]["mean"][:10] = float("nan")
            torch.save(ck, tmp_path / "nan.pt")
        bad = run_cli(*argv)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.strip().startswith(f"landscape: error: {said}"), bad.stderr
    assert not (tmp_path / "x").exists()
    # swag.pt is the SWA network: a plane through both was refused as "collinear"; an ensemble counts it twice
    swa, swag = root / "swa" / "swa.pt", root / "swa" / "swag.pt"
    plane = run_cli("plane", "--points", root / "a" / "model.pt", swa, swag, "--grid", 3, "--out", tmp_path / "p")
    assert plane.returncode == 2 and plane.stderr.strip() == (
        f"landscape: error: {swa} and {swag} hold the same weights: a plane needs three different points (an SWA "
        f"run's swa.pt and swag.pt are one network)"), plane.stderr
    ens = run_cli("ensemble", swa, swag, root / "a" / "model.pt")
    assert ens.returncode == 0 and ens.stderr.count(
        f"note: {swag} holds the same weights as {swa}: that network counts twice in the ensemble") == 1, ens.stderr


def test_a_run_started_before_swag_existed_resumes_with_swag_off(tmp_path, swag_run):
    """Its stored settings have no swag_rank: it had the default (0) then, so a resume
    without SWAG goes on, and one asking for SWAG moments is refused (the
    earlier epochs collected none)."""
    _, root, kw = swag_run
    kw = {k: v for k, v in kw.items() if k not in ("keep_snapshots", "swag_rank")}

    class Stop(Exception):
        pass

    def stop(epoch, record):
        raise Stop

    with pytest.raises(Stop):
        run_swa(None, tmp_path / "old", on_epoch_end=stop, **kw)
    last = tmp_path / "old" / "last.pt"
    obj = torch.load(last, weights_only=True)
    del obj["meta"]["train_config"]["swag_rank"]  # as an earlier build wrote it
    torch.save(obj, last)
    with pytest.raises(UserError, match=r"was started with swag_rank=0, now swag_rank=3"):
        run_swa(None, tmp_path / "old", resume=True, swag_rank=3, **kw)
    done = run_swa(None, tmp_path / "old", resume=True, **kw)
    assert done.summary["averaged"] == 5 and "swag" not in done.summary["files"]


def test_swag_needs_two_averaged_iterates(tmp_path, swag_run, small_digits):
    """One averaged iterate gives a Gaussian of no spread (variance 0, one zero deviation):
    every sample would be the mean. Refused before training."""
    _, root, _ = swag_run
    with pytest.raises(UserError, match=r"^SWAG needs at least 2 averaged iterates .* --epochs 3 with --swa-start 1 "
                                        r"and --cycle 2 averages 1$"):
        run_swa(None, tmp_path / "one", from_ckpt=str(root / "a" / "model.pt"), epochs=3, swa_start=1, cycle=2,
                swag_rank=4, data=small_digits, progress=False)
    assert not (tmp_path / "one").exists()


def test_swa_pt_given_for_its_swag_pt_is_pointed_at_it(tmp_path):
    """"holds no SWAG moments; make them with 'landscape swa --swag-rank K'" to a user who had: swag.pt was beside."""
    from landscape.checkpoint import save_checkpoint
    from landscape.errors import UserError
    from landscape.swag import load_swag

    net = torch.nn.Linear(3, 2)
    spec = {"name": "mlp", "kwargs": {"num_classes": 2, "input_shape": [3]}}
    save_checkpoint(tmp_path / "swa.pt", net.state_dict(), spec)
    with pytest.raises(UserError, match=r"swa\.pt: holds no SWAG moments; make them with 'landscape swa --swag-rank"):
        load_swag(tmp_path / "swa.pt")
    save_checkpoint(tmp_path / "swag.pt", net.state_dict(), spec)
    with pytest.raises(UserError, match=rf"swa\.pt: holds no SWAG moments; did you mean {tmp_path / 'swag.pt'}\?$"):
        load_swag(tmp_path / "swa.pt")
