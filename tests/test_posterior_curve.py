"""Curves between variational posteriors (`landscape vi-connect`, evaluated by
`landscape curve`): the posterior network under functional_call against the
posterior itself, the ends against vi-eval's draws, the line's midpoint
against the averaged parameters by hand, a fitted curve against the line,
a variance network's frozen means, exact resume, and the command line."""

import copy
import math
import shutil

import numpy as np
import pytest
import torch
from torch.func import functional_call

from landscape import cli
from landscape.curves.posterior import evaluate_posterior_curve, fit_posterior_curve, load_posterior_curve
from landscape.checkpoint import load_checkpoint, read_jsonl
from landscape.errors import UserError
from landscape.evaluate import evaluate_points_sequential
from landscape.train import train
from landscape.variational import (VariationalNet, VariationalPosterior, evaluate_variational, load_variational,
                                   posterior_moments, posterior_net, run_variational)
from landscape.weights import ParamSpace
from tests.conftest import naming_digits


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def posteriors(tmp_path_factory, small_digits):
    """Two weight-family posteriors (variational dropout) from two trained
    networks, and an additive one from the first."""
    root = tmp_path_factory.mktemp("vi-curve")
    out = {}
    for seed in (1, 2):
        train(out=root / f"net{seed}", data=small_digits, epochs=4, seed=seed, model_kwargs={"width": 8},
              progress=False)
        run_variational(out=root / f"vi{seed}", data=small_digits, from_ckpt=str(root / f"net{seed}" / "model.pt"),
                        family="weight", epochs=2, progress=False)
        out[seed] = root / f"vi{seed}" / "vi.pt"
    run_variational(out=root / "add", data=small_digits, from_ckpt=str(root / "net1" / "model.pt"),
                    family="additive", epochs=1, progress=False)
    out["additive"], out["net"] = root / "add" / "vi.pt", root / "net1" / "model.pt"
    return out


def test_a_posterior_network_called_at_other_parameters_is_that_posterior(posteriors, small_digits):
    a, b = (posterior_net(load_checkpoint(posteriors[i]), "cpu", None) for i in (1, 2))
    # with hooks, as the fit uses them
    sampler = VariationalNet(copy.deepcopy(a.net), a.family, prior=a.prior)
    reference = VariationalNet(copy.deepcopy(b.net), b.family, prior=b.prior)
    reference.load_scales(b.posterior_state()["scales"])
    params = dict(b.named_parameters())
    x = small_digits.x_train[:64]
    sampler.train(), reference.train()
    torch.manual_seed(3)
    logits, kl = functional_call(sampler, params, (x,), {"with_kl": True})
    torch.manual_seed(3)
    want = reference(x)
    assert torch.allclose(logits, want, atol=1e-5)
    assert torch.allclose(kl, reference.kl(), rtol=1e-6)
    assert not torch.allclose(logits, sampler(x), atol=1e-3)  # its own parameters give other outputs
    # the noise is there: two draws at one point differ
    again, _ = functional_call(sampler, params, (x,), {"with_kl": True})
    assert not torch.allclose(again, logits)


@pytest.fixture(scope="module")
def fitted(posteriors, small_digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("vi-connect") / "ab"
    result = fit_posterior_curve(posteriors[1], posteriors[2], out, data=small_digits, epochs=4, batch_size=64,
                                 progress=False)
    return out, result


def assert_ends_are_vi_evals(ev, starts, data):
    """Both paths of a posterior curve evaluation begin and end at the
    posteriors ``starts`` (two files), with vi-eval's draws and metrics."""
    n = len(data.y_train)
    samples, seed = ev.summary["samples"], ev.summary["seed"]
    for i, path_of in ((0, starts[0]), (-1, starts[1])):
        ref = evaluate_variational(path_of, samples=samples, seed=seed, data=data)
        post, _, _ = load_variational(path_of)
        for path in ("curve", "line"):  # both paths end at the posteriors: the same draws, the same metrics
            np.testing.assert_allclose(ev.arrays[f"{path}_sample_train_nll"][i], ref.arrays["sample_train_nll"],
                                       rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(ev.arrays[f"{path}_sample_test_error"][i], ref.arrays["sample_test_error"])
            np.testing.assert_allclose(ev.arrays[f"{path}_mean_test_nll"][i], ref.summary["deterministic"]["test_nll"],
                                       rtol=1e-5)
            assert ev.arrays[f"{path}_kl_per_sample"][i] == pytest.approx(post.kl / n, rel=1e-9)
            # the ensemble of the draws, and the ELBO vi-eval reports
            assert ev.arrays[f"{path}_ensemble_test_nll"][i] == pytest.approx(ref.arrays["bma_test_nll"][-1], rel=1e-5)
            assert -ev.arrays[f"{path}_neg_elbo"][i] == pytest.approx(ref.summary["elbo"]["elbo_per_sample"], rel=1e-6)


def test_the_ends_of_the_paths_are_the_posteriors_vi_eval_evaluates(fitted, posteriors, small_digits, tmp_path):
    out, _ = fitted
    ev = evaluate_posterior_curve(out / "model.pt", tmp_path / "ev", points=3, samples=3, seed=5, data=small_digits)
    assert_ends_are_vi_evals(ev, [posteriors[1], posteriors[2]], small_digits)
    s = ev.summary
    assert s["line"]["neg_elbo_barrier"] == pytest.approx(
        ev.arrays["line_neg_elbo"].max() - ev.arrays["line_neg_elbo"][[0, -1]].mean())


@pytest.mark.parametrize("family", ["additive", "neuron", "layer", "variance"])
def test_every_family_fits_and_its_ends_are_vi_evals(family, posteriors, small_digits, tmp_path):
    for seed in (1, 2):
        run_variational(out=tmp_path / f"v{seed}", data=small_digits,
                        from_ckpt=str(posteriors[seed].parent.parent / f"net{seed}" / "model.pt"), family=family,
                        epochs=1, progress=False)
    starts = [tmp_path / "v1" / "vi.pt", tmp_path / "v2" / "vi.pt"]
    fit_posterior_curve(*starts, tmp_path / "c", data=small_digits, epochs=1, progress=False)
    ev = evaluate_posterior_curve(tmp_path / "c" / "model.pt", points=3, samples=2, seed=1, data=small_digits)
    assert_ends_are_vi_evals(ev, starts, small_digits)
    assert np.isfinite(ev.arrays["curve_neg_elbo"]).all()


def test_the_line_midpoint_is_the_posterior_of_the_averaged_parameters(fitted, posteriors, small_digits, tmp_path):
    out, _ = fitted
    ev = evaluate_posterior_curve(out / "model.pt", tmp_path / "ev", points=3, samples=2, data=small_digits)
    a, b = (posterior_net(load_checkpoint(posteriors[i]), "cpu", None) for i in (1, 2))
    mid = copy.deepcopy(a)
    with torch.no_grad():  # by hand: the average of the means and of the log alphas
        for (name, p), q in zip(mid.named_parameters(), b.parameters()):
            p.copy_((dict(a.named_parameters())[name] + q) / 2)
    n = len(small_digits.y_train)
    assert ev.arrays["line_kl_per_sample"][1] == pytest.approx(float(copy.deepcopy(mid).double().kl(exact=True)) / n, rel=1e-6)
    # the network of the midpoint's means and its two draws, by the written-out sequential loop
    mean, std, _ = posterior_moments(mid)
    draws = VariationalPosterior(mid.family, mid.prior, mean, std, {}).sample(2, seed=0)
    ref = evaluate_points_sequential(mid.net, torch.cat([mean[None], draws]), np.eye(3), small_digits)
    assert ev.arrays["line_mean_test_nll"][1] == pytest.approx(ref["test_nll"][0], rel=1e-4)
    assert ev.arrays["line_mean_train_error"][1] == pytest.approx(ref["train_error"][0])
    np.testing.assert_allclose(ev.arrays["line_sample_train_nll"][1], ref["train_nll"][1:], rtol=1e-4)
    np.testing.assert_allclose(ev.arrays["line_sample_test_error"][1], ref["test_error"][1:])
    assert ev.arrays["line_neg_elbo"][1] == pytest.approx(ref["train_nll"][1:].mean() + ev.arrays[
        "line_kl_per_sample"][1], rel=1e-5)


def test_a_fitted_curve_has_a_lower_barrier_than_the_line(fitted, small_digits, tmp_path):
    out, result = fitted
    ev = evaluate_posterior_curve(out / "model.pt", tmp_path / "ev", points=5, samples=2, data=small_digits)
    c, l = ev.summary["curve"], ev.summary["line"]
    assert l["expected_train_nll_barrier"] > 0.1  # the line between two modes leaves the low-loss region
    assert c["expected_train_nll_barrier"] < l["expected_train_nll_barrier"] / 3
    assert c["neg_elbo_barrier"] < l["neg_elbo_barrier"]
    assert c["mean_test_error_barrier"] < l["mean_test_error_barrier"]
    # the fit's summary: the ends are the posteriors, the middle moved off the line
    assert result.summary["curve"]["kl_per_sample_at"][0] == pytest.approx(result.summary["line"]["kl_per_sample_at"][0])
    assert result.summary["curve"]["length"] > result.summary["line"]["length"]
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and all("mid_kl_per_sample" in r for r in records)
    # the objective is the tempered ELBO: the recorded loss is the NLL plus KL / N
    assert records[-1]["train_loss"] > records[-1]["train_nll"] + 0.5 * records[-1]["mid_kl_per_sample"]


def test_a_variance_networks_means_stay_zero_along_its_curve(posteriors, small_digits, tmp_path):
    for seed in (1, 2):
        run_variational(out=tmp_path / f"v{seed}", data=small_digits,
                        from_ckpt=str(posteriors[seed].parent.parent / f"net{seed}" / "model.pt"), family="variance",
                        epochs=1, progress=False)
    fit_posterior_curve(tmp_path / "v1" / "vi.pt", tmp_path / "v2" / "vi.pt", tmp_path / "c", data=small_digits,
                        epochs=1, progress=False)
    loaded = load_posterior_curve(tmp_path / "c" / "model.pt")
    vnet, anchors = loaded.model, loaded.curve.anchors().detach()
    space = ParamSpace.of(vnet)
    bend = space.unflatten(anchors[1])
    for name in vnet.names[:-1]:  # the hidden layers' means: zero, and held there
        assert torch.count_nonzero(bend[f"net.{name}"]) == 0
    out_layer = f"net.{vnet.names[-1]}"  # the additive output layer's means do move
    assert not torch.equal(bend[out_layer], (space.unflatten(anchors[0])[out_layer] + space.unflatten(anchors[-1])[
        out_layer]) / 2)


def test_a_resumed_fit_gives_identical_anchors(posteriors, small_digits, tmp_path):
    kw = dict(data=small_digits, epochs=2, batch_size=64, progress=False)
    full = fit_posterior_curve(posteriors[1], posteriors[2], tmp_path / "full", **kw)

    def stop(epoch, record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        fit_posterior_curve(posteriors[1], posteriors[2], tmp_path / "cut", on_epoch_end=stop, **kw)
    resumed = fit_posterior_curve(posteriors[1], posteriors[2], tmp_path / "cut", resume=True, **kw)
    assert torch.equal(resumed.curve.anchors(), full.curve.anchors())
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in full.metrics]
    # the saved batch-norm buffers too: the fit's steps used to pile their statistics on the network itself,
    # so a resumed fit saved other ones (fewer batches tracked) than an unbroken one
    saved = [torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (tmp_path / "full", tmp_path / "cut")]
    buffers = [k for k in saved[0] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert buffers and all(torch.equal(saved[0][k], saved[1][k]) for k in buffers)
    start = torch.load(posteriors[1], weights_only=True)["state_dict"]  # the start's, as connect keeps them
    assert all(torch.equal(saved[0][k], start[k.removeprefix("net.")] if k.removeprefix("net.") in start else start[k])
               for k in buffers)
    with pytest.raises(UserError, match="started with"):  # another temperature is another run
        fit_posterior_curve(posteriors[1], posteriors[2], tmp_path / "cut", resume=True, temperature=0.5, **kw)
    # a posterior replaced since the run began, here in its variances alone, is not resumed from
    end = tmp_path / "b.pt"
    shutil.copy(posteriors[2], end)
    with pytest.raises(_Interrupt):
        fit_posterior_curve(posteriors[1], end, tmp_path / "cut2", on_epoch_end=stop, **kw)
    ck = torch.load(end, weights_only=True)
    ck["variational"]["scales"] = {k: v + 0.5 for k, v in ck["variational"]["scales"].items()}
    torch.save(ck, end)
    with pytest.raises(UserError, match="is not the posterior this run's curve ends at"):
        fit_posterior_curve(posteriors[1], end, tmp_path / "cut2", resume=True, **kw)


def test_posterior_curves_from_the_command_line_and_their_bad_input(fitted, posteriors, tmp_path, capsys):
    out, _ = fitted

    def run(*argv):
        code = cli.main(naming_digits(argv))
        o, e = capsys.readouterr()
        return code, o, e

    code, o, e = run("curve", "--ckpt", out / "model.pt", "--out", tmp_path / "ev", "--points", 3, "--samples", 2,
                     "--quiet")
    assert code == 0, e
    assert "-ELBO/N barrier" in o and (tmp_path / "ev" / "posterior-curve.png").exists()
    (tmp_path / "ev" / "posterior-curve.png").unlink()
    code, o, e = run("plot", tmp_path / "ev")
    assert code == 0 and (tmp_path / "ev" / "posterior-curve.png").exists()

    def refused(*argv) -> str:
        code, _, e = run(*argv)
        lines = [line for line in e.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in e, e
        return lines[0]

    assert "one family and prior" in refused("vi-connect", "--start", posteriors[1], "--end", posteriors["additive"],
                                             "--out", tmp_path / "mixed", "--epochs", 1, "--quiet")
    assert "not a variational posterior" in refused("vi-connect", "--start", posteriors["net"], "--end",
                                                    posteriors[2], "--out", tmp_path / "net", "--quiet")
    assert "curves between networks" in refused("plane", "--ckpt", out / "model.pt", "--out", tmp_path / "plane")
    assert "--wd does not apply" in refused("curve", "--ckpt", out / "model.pt", "--out", tmp_path / "wd", "--wd",
                                            1e-4)
    assert "-1" in refused("curve", "--ckpt", out / "model.pt", "--out", tmp_path / "s", "--samples", -1)
    assert "--samples must be at least 1, got 0" in refused("curve", "--ckpt", out / "model.pt", "--out",
                                                            tmp_path / "s0", "--samples", 0)
    assert "--points must be at least 3 (the ends and a point between them), got 2" in refused(
        "curve", "--ckpt", out / "model.pt", "--out", tmp_path / "p2", "--points", 2)  # the ends alone: no barrier
    huge = refused("curve", "--ckpt", out / "model.pt", "--out", tmp_path / "huge", "--points", 10 ** 6,
                   "--samples", 10 ** 4)
    assert huge.startswith("landscape: error: --points 1000000 x --samples 10000 (every network's weights") and \
        "GiB, more than the" in huge and not (tmp_path / "huge").exists()
    # connect takes the posteriors' means, and says so
    code, o, e = run("connect", "--start", posteriors[1], "--end", posteriors[2], "--out", tmp_path / "means",
                     "--epochs", 1, "--quiet")
    assert code == 0 and "landscape vi-connect" in e
    assert "applies to a curve between variational posteriors" in refused(
        "curve", "--ckpt", tmp_path / "means" / "model.pt", "--out", tmp_path / "m", "--samples", 3)
    assert "--points must be at least 3 (the ends and a point between them), got 2" in refused(
        "curve", "--ckpt", tmp_path / "means" / "model.pt", "--out", tmp_path / "m2", "--points", 2)
    huge = refused("curve", "--ckpt", tmp_path / "means" / "model.pt", "--out", tmp_path / "mhuge", "--points",
                   10 ** 9)  # sized before any work, not when the probabilities outgrow the memory
    assert huge.startswith("landscape: error: --points 1000000000 (the test-set probabilities of every point") and \
        "GiB, more than the" in huge and not (tmp_path / "mhuge").exists()
    assert not math.isnan(float(np.load(tmp_path / "ev" / "posterior-curve.npz")["curve_neg_elbo"][0]))
