"""Variational inference over the weights (`landscape vi`, `vi-eval`): the KL
terms against closed forms and quadrature, the local reparameterisation
trick against explicit weight sampling, the families' parameterisations, HWA
against averaging the means by hand, exact resume, the three prediction
schemes against the sequential reference, and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from scipy import integrate, special, stats
from torch import nn

from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.errors import UserError
from landscape.evaluate import evaluate_points_sequential
from landscape.train import train
from landscape.variational import (VariationalNet, evaluate_variational, gaussian_kl, load_variational,
                                   log_uniform_kl, log_uniform_kl_exact, run_variational, stochastic_names, WD_REFUSED)
from landscape.weights import ParamSpace
from tests.conftest import naming_digits

LANDSCAPE = Path(sys.executable).with_name("landscape")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, small_digits):
    out = tmp_path_factory.mktemp("vi-end") / "a"
    train(out=out, data=small_digits, epochs=3, seed=1, model_kwargs={"width": 8}, progress=False)
    return out / "model.pt"


def test_a_temperature_that_makes_the_loss_overflow_is_named_when_training_diverges(tmp_path, small_digits,
                                                                                    endpoint):
    with pytest.raises(UserError, match=r"training diverged: .*lower --lr \(or --temperature 1e\+300, which scales "
                                        r"the KL term\) and run it again"):
        run_variational(out=tmp_path / "hot", data=small_digits, from_ckpt=str(endpoint), family="weight",
                        epochs=1, temperature=1e300, progress=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_digits, endpoint):
    """A weight-family posterior with HWA: 4 epochs, the means averaged after
    epochs 3 and 4; every epoch's state kept (checkpoint-NNN.pt)."""
    out = tmp_path_factory.mktemp("vi") / "run"
    result = run_variational(out=out, data=small_digits, from_ckpt=str(endpoint), family="weight", epochs=4,
                             hwa_start=2, hwa_lr=0.002, cycle=1, lr=0.01, save_every=1, progress=False)
    return out, result


def means_after(out, epoch, net):
    return ParamSpace.of(net).flatten(load_checkpoint(out / f"checkpoint-{epoch:03d}.pt").state_dict)


def test_gaussian_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    mean, var = torch.randn(50, generator=g), torch.rand(50, generator=g) + 0.01
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mean, var.sqrt()),
                                             torch.distributions.Normal(0.0, 0.7)).sum()
    assert float(gaussian_kl(mean, var, 0.7)) == pytest.approx(float(want), rel=1e-5)


def test_log_uniform_kl_follows_the_integral_up_to_its_constant():
    """-KL(N(m, alpha m²) || 1/|w|) = 0.5 log alpha - E_{e ~ N(1, alpha)} log|e| + C (Kingma et al. 2015):
    the approximation differs from it by one constant, within Molchanov et al.'s fit (about 0.01 nats)."""
    gaps = []
    for log_alpha in np.linspace(-4, 4, 17):
        alpha = float(np.exp(log_alpha))
        sd = alpha ** 0.5

        def f(e):
            return np.log(abs(e)) * np.exp(-0.5 * ((e - 1) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))

        lo, hi = 1 - 12 * sd, 1 + 12 * sd
        pieces = [(lo, 0.0), (0.0, hi)] if lo < 0 else [(lo, hi)]
        e_log = sum(integrate.quad(f, a, b, limit=200, points=None)[0] for a, b in pieces)
        exact_neg_kl = 0.5 * log_alpha - e_log
        gaps.append(float(log_uniform_kl(torch.tensor([log_alpha]))) + exact_neg_kl)
    assert np.ptp(gaps) < 0.03
    assert float(log_uniform_kl(torch.tensor([20.0]))) < 1e-4  # a weight of pure noise costs nothing


def _kl_by_quadrature(log_alpha: float) -> float:
    """KL(N(m, alpha m²) || 1/|w|) = -0.5 log alpha + E_{e ~ N(1, alpha)} log|e| + (gamma + ln 2) / 2, the
    constant making it 0 as alpha -> infinity (there E log|e| -> 0.5 log alpha + E log|N(0, 1)|)."""
    sd = float(np.exp(0.5 * log_alpha))
    s = -1 / sd  # log|1 + sd z| = log sd + log|z - s|: quadrature weighted by the log at s, for z ~ N(0, 1)

    def phi(z):
        return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)

    def f(z):
        return np.log(abs(z - s)) * phi(z)

    near = (integrate.quad(phi, s - 1, s, weight="alg-logb", wvar=(0, 0))[0]
            + integrate.quad(phi, s, s + 1, weight="alg-loga", wvar=(0, 0))[0])
    far = sum(integrate.quad(f, a, b, limit=200, points=[p for p in (0.0,) if a < p < b] or None)[0]
              for a, b in ((-40.0, s - 1), (s + 1, 40.0)) if a < b)  # N(0, 1) holds nothing beyond 40
    e_log = np.log(sd) + near + far
    return -0.5 * log_alpha + e_log + 0.5 * (np.euler_gamma + np.log(2))


def test_the_exact_log_uniform_kl_matches_the_integral_and_its_limits():
    """The ELBO's KL: the integral at log alpha across [-7, 12] (the table and the expansion beyond it), its
    two limits, the sum over entries, and the approximation within Molchanov et al.'s 0.01 nats of it."""
    for log_alpha in [-7.0, -5.5, -3.6, -2.0, -0.7, 0.0, 0.3, 1.9, 4.0, 7.99, 8.01, 12.0,  # nodes of the table
                      -6.2345, -3.5005, -0.0005, 0.7775, 2.3333, 5.0505]:  # midway between nodes: interpolated
        want = _kl_by_quadrature(log_alpha)
        got = log_uniform_kl_exact(torch.tensor([log_alpha], dtype=torch.float64))
        assert got == pytest.approx(want, rel=0, abs=4e-8), log_alpha  # the table's step: within 3.2e-8
    for log_alpha in (-20.0, -9.0):  # small alpha: -0.5 log alpha + (gamma + ln 2) / 2 - alpha / 2, quadrature-free
        want = -0.5 * log_alpha + 0.5 * (np.euler_gamma + np.log(2)) - 0.5 * np.exp(log_alpha)
        assert log_uniform_kl_exact(torch.tensor([log_alpha])) == pytest.approx(want, rel=1e-8)
    assert log_uniform_kl_exact(torch.tensor([20.0])) == pytest.approx(0.5 * np.exp(-20.0), rel=1e-6)  # 1 / (2 alpha)
    for edge in (-8.0, 8.0):  # no step where the table meets the expansions
        a, b = (log_uniform_kl_exact(torch.tensor([edge + d], dtype=torch.float64)) for d in (-1e-9, 1e-9))
        assert abs(a - b) < 1e-8
    grid = torch.linspace(-6, 6, 240, dtype=torch.float64)
    assert log_uniform_kl_exact(grid.reshape(3, -1)) == pytest.approx(
        sum(log_uniform_kl_exact(v[None]) for v in grid), rel=1e-12)
    gaps = [float(log_uniform_kl(v[None])) - log_uniform_kl_exact(v[None]) for v in grid]
    assert 0.005 < max(abs(g) for g in gaps) < 0.01  # the fit's approximation: off, but within its 0.01 nats


@pytest.mark.parametrize("layer", [nn.Linear(6, 4), nn.Conv2d(2, 3, 3, stride=2, padding=1)])
def test_local_reparameterisation_has_the_moments_of_weight_sampling(layer):
    torch.manual_seed(0)
    net = nn.Sequential(layer, nn.Flatten(), nn.Linear(3 * 3 * 3 if isinstance(layer, nn.Conv2d) else 4, 2))
    v = VariationalNet(net, "weight", init_alpha=0.3).train()
    x = torch.randn(1, 6) if isinstance(layer, nn.Linear) else torch.randn(1, 2, 5, 5)
    draws = 20000
    with torch.no_grad():
        noisy = layer(x.expand(draws, *x.shape[1:]))[:, None]  # the hook samples each example's pre-activations
        mu, var = v.mean_and_var("0.weight")
        w = mu + var.sqrt() * torch.randn(draws, *mu.shape)
        if isinstance(layer, nn.Linear):
            sampled = (torch.einsum("i,noi->no", x[0], w) + layer.bias)[:, None]
        else:
            sampled = F.conv2d(x, w.reshape(draws * 3, 2, 3, 3), layer.bias.repeat(draws), stride=2, padding=1)
            sampled = sampled.reshape(draws, 1, 3, 3, 3)
        with v.deterministic():
            mean = layer(x)
    for got in (noisy, sampled):
        assert torch.allclose(got.mean(0), mean, atol=0.05 * float(mean.abs().max()) + 0.02)
        closed = (F.linear(x * x, var) if isinstance(layer, nn.Linear)
                  else F.conv2d(x * x, var, None, stride=2, padding=1))
        assert torch.allclose(got.var(0), closed, rtol=0.06, atol=1e-4)


def test_families_parameterise_the_variance_as_documented():
    torch.manual_seed(0)

    def build(family, **k):
        return VariationalNet(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3)), family, **k)

    for family in ("additive", "weight", "neuron", "layer"):
        v = build(family, init_alpha=0.05)
        mu, var = v.mean_and_var("0.weight")
        assert torch.allclose(var / mu ** 2, torch.full_like(mu, 0.05), rtol=1e-4)  # s² = init_alpha mu² at the start
    shapes = {f: tuple(build(f).scales["0__weight"].shape) for f in ("additive", "weight", "neuron", "layer")}
    assert shapes == {"additive": (4, 1, 3, 3), "weight": (4, 1, 3, 3), "neuron": (4, 1, 1, 1), "layer": (1, 1, 1, 1)}
    v = build("neuron")
    with torch.no_grad():
        v.scales["0__weight"].copy_(torch.arange(4.0).reshape(4, 1, 1, 1))
    mu, var = v.mean_and_var("0.weight")
    assert torch.allclose(var, torch.arange(4.0).exp().reshape(4, 1, 1, 1) * mu ** 2)
    # a variance network: zero, frozen means in its hidden layers, free KL there; its output layer keeps its means
    v = build("variance")
    assert not v.net[0].weight.requires_grad and float(v.net[0].weight.abs().sum()) == 0
    assert v.net[2].weight.requires_grad and float(v.net[2].weight.detach().abs().sum()) > 0
    assert v.family_of("2.weight") == "additive"
    mu, var = v.mean_and_var("2.weight")
    log_alpha = (torch.log(var) - torch.log(mu ** 2 + 1e-16)).clamp(-20, 20)
    assert float(v.kl().detach()) == pytest.approx(float(log_uniform_kl(log_alpha.detach())), rel=1e-5)
    with pytest.raises(UserError, match="hidden"):
        VariationalNet(nn.Linear(3, 2), "variance")
    assert stochastic_names(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))) == ["0.weight",
                                                                                                        "2.weight"]


def test_additive_variance_does_not_follow_the_mean():
    torch.manual_seed(0)
    v = VariationalNet(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), "additive")
    before = v.mean_and_var("0.weight")[1].clone()
    with torch.no_grad():
        v.net[0].weight.mul_(3)
    assert torch.equal(v.mean_and_var("0.weight")[1], before)
    w = VariationalNet(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), "weight")
    before = w.mean_and_var("0.weight")[1].clone()
    with torch.no_grad():
        w.net[0].weight.mul_(3)
    assert torch.allclose(w.mean_and_var("0.weight")[1], 9 * before)


def test_hwa_averages_the_means_at_cycle_ends_with_the_variances_frozen(fitted):
    out, result = fitted
    post_vi, net_vi, _ = load_variational(out / "vi.pt")
    post_hwa, net_hwa, _ = load_variational(out / "hwa.pt")
    space = ParamSpace.of(net_vi)
    # averaged after epochs 3 and 4 (hwa_start 2, cycle 1); the means of hwa.pt are their average
    want = (means_after(out, 3, net_vi).double() + means_after(out, 4, net_vi).double()) / 2
    assert torch.allclose(space.flatten(net_hwa).double(), want, atol=1e-6)
    assert torch.equal(space.flatten(net_vi), means_after(out, 4, net_vi))
    assert not torch.equal(means_after(out, 3, net_vi), means_after(out, 4, net_vi))
    assert result.summary["hwa"]["averaged"] == 2
    # the variances stayed where HWA found them: the log alpha of every epoch after the start are equal
    at_start = load_checkpoint(out / "checkpoint-002.pt").extra["variational"]["scales"]
    before = load_checkpoint(out / "checkpoint-001.pt").extra["variational"]["scales"]
    for name, value in at_start.items():
        assert torch.equal(value, post_vi.state["scales"][name])
        assert torch.equal(value, post_hwa.state["scales"][name])
        assert not torch.equal(value, before[name])  # they trained before HWA
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["hwa_n"] for r in records] == [0, 0, 1, 2]
    assert records[2]["kl_per_sample"] == records[3]["kl_per_sample"] != records[0]["kl_per_sample"]
    assert [r["lr"] for r in records][:2] == [0.01, 0.01]
    # each epoch records the talk's signal-to-noise ratio: log alpha's median and the share above 3, here (one
    # log alpha per weight) the stored parameters' own
    for epoch, record in enumerate(records, 1):
        scales = load_checkpoint(out / f"checkpoint-{epoch:03d}.pt").extra["variational"]["scales"]
        flat = torch.cat([v.reshape(-1) for v in scales.values()]).clamp(-20, 20).numpy()
        assert record["log_alpha_median"] == pytest.approx(float(np.median(flat)), rel=1e-6)
        assert record["noise_share"] == pytest.approx(float((flat > 3).mean()))
    assert records[0]["log_alpha_median"] != records[1]["log_alpha_median"] == records[3]["log_alpha_median"]


def test_resume_after_an_interruption_is_exact(tmp_path, small_digits, endpoint, fitted):
    out, _ = fitted
    kw = dict(data=small_digits, from_ckpt=str(endpoint), family="weight", epochs=4, hwa_start=2, hwa_lr=0.002,
              cycle=1, lr=0.01, save_every=1, progress=False)

    def stop(epoch, record):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_variational(out=tmp_path / "cut", on_epoch_end=stop, **kw)
    run_variational(out=tmp_path / "cut", resume=True, **kw)
    for name in ("vi.pt", "hwa.pt"):
        a, b = load_checkpoint(out / name), load_checkpoint(tmp_path / "cut" / name)
        for key in a.state_dict:
            assert torch.equal(a.state_dict[key], b.state_dict[key]), (name, key)
        for key, value in a.extra["variational"]["scales"].items():
            assert torch.equal(value, b.extra["variational"]["scales"][key])


def test_the_loss_weighs_the_kl_by_temperature_over_n(tmp_path, small_digits, endpoint):
    """A rate too small to move anything: each epoch's loss minus its NLL is T KL / N."""
    for t in (0.0, 0.25):
        run = run_variational(out=tmp_path / f"t{t}", data=small_digits, from_ckpt=str(endpoint), family="layer",
                              epochs=1, lr=1e-9, temperature=t, progress=False)
        r = run.metrics[0]
        assert r["train_loss"] - r["train_nll"] == pytest.approx(t * r["kl_per_sample"], rel=1e-4, abs=1e-7)


def test_three_schemes_match_the_sequential_reference(tmp_path, small_digits, fitted):
    out, run = fitted
    ev = evaluate_variational(out / "vi.pt", tmp_path / "ev", samples=4, seed=3, data=small_digits)
    post, net, _ = load_variational(out / "vi.pt")
    draws = post.sample(4, 3)
    anchors = torch.cat([post.mean[None], draws])
    ref = evaluate_points_sequential(net, anchors, np.eye(5), small_digits, wd=0.0, return_probs=True,
                                     bn_stats="population")
    for m in ("train_loss", "train_nll", "train_error", "test_nll", "test_error"):
        np.testing.assert_allclose(ev.arrays[f"sample_{m}"], ref[m][1:], rtol=2e-5, atol=1e-6)
        assert ev.summary["deterministic"][m] == pytest.approx(float(ref[m][0]), rel=2e-5, abs=1e-6)
    probs = ref["probs"][1:].mean(0)
    labels = small_digits.y_test.numpy()
    from landscape.metrics import expected_calibration_error as ece  # each scheme's calibration, from its probabilities

    assert ev.summary["deterministic"]["test_ece"] == pytest.approx(ece(ref["probs"][0], labels), abs=1e-3)
    assert ev.summary["ensemble"]["test_ece"] == pytest.approx(ece(probs, labels), abs=1e-3)
    assert ev.summary["samples"]["test_ece_mean"] == pytest.approx(
        np.mean([ece(q, labels) for q in ref["probs"][1:]]), abs=1e-3)
    assert ev.summary["ensemble"]["test_error"] == pytest.approx(100 * float((probs.argmax(1) != labels).mean()))
    assert ev.summary["ensemble"]["test_nll"] == pytest.approx(
        float(-np.log(probs[np.arange(len(labels)), labels]).mean()), rel=1e-4)
    # the draws: the point estimates exactly, the stochastic weights standardised to N(0, 1)
    on = post.std > 0
    assert torch.equal(draws[:, ~on], post.mean[~on].expand(4, -1))
    z = (draws[:, on] - post.mean[on]) / post.std[on]
    assert abs(float(z.mean())) < 0.02 and float(z.std()) == pytest.approx(1.0, abs=0.02)
    alpha = post.state["scales"]["classifier.weight"].exp()  # weight family: s = sqrt(alpha) |mu|
    std = ParamSpace.of(net).unflatten(post.std)["classifier.weight"]
    assert torch.allclose(std, (alpha * net.classifier.weight.detach() ** 2).sqrt())
    again = evaluate_variational(out / "vi.pt", tmp_path / "ev", samples=4, seed=3, data=small_digits, resume=True)
    assert again.summary == ev.summary
    # the ELBO: -N x the draws' mean train NLL - KL, the exact KL summed here by the noncentral chi-squared's
    # Poisson mixture: E log|e| = 0.5 (log alpha + E_J[ln 2 + digamma(J + 1/2)]), J ~ Poisson(1 / (2 alpha))
    log_alpha = torch.log(post.std[on].double() ** 2 / post.mean[on].double() ** 2).numpy()
    lam = 0.5 * np.exp(-log_alpha)
    assert lam.max() < 500  # the sum below reaches far enough
    j = np.arange(2000)[None]
    e_log = 0.5 * (log_alpha + np.log(2) + (stats.poisson.pmf(j, lam[:, None]) * special.digamma(j + 0.5)).sum(1))
    kl = float((-0.5 * log_alpha + e_log + 0.5 * (np.euler_gamma + np.log(2))).sum())
    n, nll = len(small_digits.y_train), ref["train_nll"][1:]
    e = ev.summary["elbo"]
    assert e["kl"] == pytest.approx(kl, rel=1e-6) and e["train_size"] == n and e["draws"] == 4 and e["kl_exact"]
    assert e["kl"] != pytest.approx(float(log_uniform_kl(torch.from_numpy(log_alpha))), rel=1e-4)  # not the fit's
    assert e["kl"] != float(np.float32(e["kl"]))  # summed in float64, not rounded to float32 on the way
    # vi's own summary reports the same KL for the posterior it wrote (the approximation, the fit's, apart)
    assert run.summary["vi"]["kl"] == pytest.approx(kl, rel=1e-6)
    assert run.summary["vi"]["kl_fit"] == pytest.approx(float(log_uniform_kl(torch.from_numpy(log_alpha))), rel=1e-5)
    assert e["elbo"] == pytest.approx(-n * float(np.mean(nll)) - kl, rel=1e-4)
    assert e["elbo_per_sample"] == pytest.approx(e["elbo"] / n, rel=1e-9)
    assert e["elbo_se"] == pytest.approx(n * float(np.std(nll, ddof=1)) / 2, rel=1e-3)


def test_a_variance_network_predicts_one_class_from_its_means(tmp_path, small_digits):
    """The talk's warning: the deterministic network of a variance network's means
    (zero hidden weights) gives every image the same prediction."""
    run_variational(out=tmp_path / "v", data=small_digits, family="variance", epochs=1, model="convnet",
                    model_kwargs={"width": 4}, progress=False)
    post, net, _ = load_variational(tmp_path / "v" / "vi.pt")
    ev = evaluate_variational(tmp_path / "v" / "vi.pt", None, samples=2, data=small_digits)
    labels = small_digits.y_test.numpy()
    shares = 100 * (1 - np.bincount(labels, minlength=10) / len(labels))
    assert any(ev.summary["deterministic"]["test_error"] == pytest.approx(s) for s in shares)
    assert ev.summary["relative_std"] is None  # zero means
    assert ev.summary["samples"]["test_error_mean"] != ev.summary["deterministic"]["test_error"]


def test_a_posterior_whose_variances_do_not_fit_is_refused(tmp_path, fitted):
    out, _ = fitted
    ck = load_checkpoint(out / "vi.pt")
    info = dict(ck.extra["variational"])
    info["scales"] = dict(info["scales"], **{"classifier.weight": torch.zeros(2, 2)})
    save_checkpoint(tmp_path / "bad.pt", ck.state_dict, ck.model, kind="variational", variational=info,
                    meta=ck.meta)
    with pytest.raises(UserError, match="shape"):
        load_variational(tmp_path / "bad.pt")
    info["scales"] = dict(ck.extra["variational"]["scales"])
    info["scales"]["classifier.weight"] = torch.full_like(info["scales"]["classifier.weight"], float("nan"))
    save_checkpoint(tmp_path / "nan.pt", ck.state_dict, ck.model, kind="variational", variational=info, meta=ck.meta)
    with pytest.raises(UserError, match="not finite"):
        load_variational(tmp_path / "nan.pt")


def run_cli(*argv):
    return subprocess.run([str(LANDSCAPE), *naming_digits(argv)], capture_output=True, text=True, timeout=300)


def test_cli_trains_evaluates_and_redraws(tmp_path, endpoint):
    if not LANDSCAPE.exists():
        pytest.skip("console script not installed next to this interpreter")
    done = run_cli("vi", "--from", endpoint, "--family", "neuron", "--epochs", 3, "--hwa-start", 1, "--out",
                   tmp_path / "vi", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "HWA (2 avg)" in done.stdout and (tmp_path / "vi" / "hwa.pt").exists()
    refused = run_cli("vi-eval", "--ckpt", tmp_path / "vi" / "hwa.pt", "--wd", "5e-4", "--out", tmp_path / "ev")
    assert refused.returncode == 2 and refused.stderr.strip() == f"landscape: error: {WD_REFUSED}", refused.stderr
    assert not (tmp_path / "ev").exists()
    done = run_cli("vi-eval", "--ckpt", tmp_path / "vi" / "hwa.pt", "--samples", 3, "--out", tmp_path / "ev")
    assert done.returncode == 0, done.stderr
    assert "ensemble" in done.stdout and "HWA, neuron posterior: 3 samples" in done.stdout
    again = run_cli("vi", "--from", endpoint, "--family", "neuron", "--epochs", 3, "--hwa-start", 1, "--out",
                    tmp_path / "vi", "--quiet", "--resume")
    assert again.returncode == 0 and "already finished" in again.stderr and "HWA (2 avg)" in again.stdout, again.stderr
    png = tmp_path / "ev" / "variational.png"
    png.unlink()
    assert run_cli("plot", tmp_path / "ev").returncode == 0 and png.exists()
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(summary) >= {"deterministic", "samples", "ensemble", "elbo"}
    e = summary["elbo"]
    assert (f"ELBO {e['elbo']:.7g} ± {e['elbo_se']:.3g} = -{e['train_size']} x E_q[train NLL] "
            f"{e['expected_train_nll']:.4g} - KL {e['kl']:.7g} (3 draws; per training sample") in done.stdout


@pytest.mark.parametrize("argv, says", [
    (["--family", "gauss"], "invalid choice"),
    (["--hwa-start", "5"], "--hwa-start must be in [0, --epochs)"),
    (["--temperature", "-1"], "--temperature must be"),
    (["--init-alpha", "0"], "--init-alpha must be"),
    (["--prior-scale", "0"], "--prior-scale must be"),
    (["--family", "weight", "--prior-scale", "5"], "--prior-scale is the Gaussian prior's standard deviation; the weight family's prior "
                             "here is log-uniform (give --prior gaussian to use it)"),  # was recorded, read by nothing
    (["--kl-warmup", "-2"], "--kl-warmup must be"),
    (["--hwa-start", "1", "--hwa-lr", "0.1", "--hwa-lr-max", "0.01"], "--hwa-lr-max must be at least"),
    (["--hwa-start", "0", "--lr", "0.1"], "with --hwa-start 0 the rate is HWA's"),
    (["--hwa-start", "1", "--schedule", "cosine"], "--schedule applies without HWA"),
])
def test_cli_refuses_bad_options_in_one_line(tmp_path, endpoint, argv, says):
    if not LANDSCAPE.exists():
        pytest.skip("console script not installed next to this interpreter")
    done = run_cli("vi", "--from", endpoint, "--epochs", 2, "--out", tmp_path / "r", *argv)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "r" / "last.pt").exists()


def test_vi_eval_refuses_a_network_without_a_posterior(tmp_path, endpoint):
    if not LANDSCAPE.exists():
        pytest.skip("console script not installed next to this interpreter")
    done = run_cli("vi-eval", "--ckpt", endpoint, "--out", tmp_path / "e")
    assert done.returncode == 2 and "holds no variational posterior" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = run_cli("vi-eval", "--ckpt", tmp_path / "missing.pt", "--out", tmp_path / "e")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_vi_pt_loads_as_the_network_its_summary_measured(fitted, small_digits):
    """vi.pt's batch-norm statistics are recomputed for the means (training's came from noisy weights)."""
    from landscape.checkpoint import load_model
    from landscape.evaluate import evaluate_model

    out, result = fitted
    for name, key in (("vi.pt", "vi"), ("hwa.pt", "hwa")):
        m = evaluate_model(load_model(out / name).eval(), small_digits, "test")
        assert m["nll"] == pytest.approx(result.summary[key]["test_nll"], rel=1e-5)


def test_a_weight_decay_is_refused_for_a_posterior(fitted, small_digits):
    """The prior is the posterior's regulariser: a weight decay is refused when fitting and when
    evaluating, in the Python API as on the command line, before anything is written."""
    out, _ = fitted
    with pytest.raises(UserError, match="--wd does not apply to a variational posterior"):
        evaluate_variational(out / "vi.pt", out / "wd-eval", data=small_digits, wd=5e-4)
    assert not (out / "wd-eval").exists()
    with pytest.raises(UserError, match="--wd does not apply to a variational posterior"):
        run_variational(out=out / "wd-fit", data=small_digits, from_ckpt=str(out / "vi.pt"), wd=5e-4, epochs=1)
    assert not (out / "wd-fit").exists()


def test_draws_that_cannot_fit_are_refused_before_any_is_drawn(tmp_path, fitted, small_digits):
    """vi-eval drew --samples 100000 until memory ran out, then advised --bn-stats; swag refused such a count."""
    out, _ = fitted
    with pytest.raises(UserError, match=r"^--samples 1000000000 \(the draws, samples x parameters floats\) needs "):
        evaluate_variational(out / "vi.pt", tmp_path / "huge", data=small_digits, samples=10 ** 9)
    assert not (tmp_path / "huge").exists()


def test_a_finished_run_resumed_returns_it(fitted, small_digits, endpoint):
    out, result = fitted
    again = run_variational(out=out, resume=True, data=small_digits, from_ckpt=str(endpoint), family="weight",
                            epochs=4, hwa_start=2, hwa_lr=0.002, cycle=1, lr=0.01, save_every=1, progress=False)
    assert again.summary == json.loads((out / "summary.json").read_text())
    assert [r["epoch"] for r in again.metrics] == [1, 2, 3, 4]
    assert again.posterior.family == "weight" and again.posterior.names == result.posterior.names


def test_starting_from_a_posterior_continues_its_variances(tmp_path, fitted, small_digits):
    out, _ = fitted
    warm = run_variational(out=tmp_path / "w", data=small_digits, from_ckpt=str(out / "vi.pt"), family="weight",
                           epochs=1, lr=1e-9, progress=False)
    before = load_checkpoint(out / "vi.pt").extra["variational"]["scales"]
    for name, value in warm.posterior.posterior_state()["scales"].items():
        torch.testing.assert_close(value, before[name], atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="same --family"):
        run_variational(out=tmp_path / "x", data=small_digits, from_ckpt=str(out / "vi.pt"), family="layer",
                        epochs=1, progress=False)


def test_edge_cases_of_the_parameterisation():
    # tied weights: one tensor cannot hold two posteriors
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = a.weight
    with pytest.raises(UserError, match="share one weight"):
        stochastic_names(nn.Sequential(a, b))
    # a frozen layer (a pretrained projection) stays a point: no posterior, no noise, no KL term
    frozen = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    frozen[0].weight.requires_grad_(False)
    assert stochastic_names(frozen) == ["2.weight"]
    assert stochastic_names(frozen, frozen=True) == ["0.weight", "2.weight"]  # what an earlier build gave
    v = VariationalNet(frozen, "weight").train()
    x = torch.randn(64, 3)
    h = frozen[1](frozen[0](x))  # the hidden units, the same draw after draw: the noise is after them only
    assert torch.equal(frozen[0](x), frozen[0](x)) and "0__weight" not in v.scales
    alone = VariationalNet(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), frozen[2]), "weight", names=["2.weight"])
    alone.remove_hooks()  # it shares the output layer: its hooks would act on v's forwards too
    assert torch.equal(v.kl(), alone.kl())
    assert h.shape == (64, 4)
    # a layer run twice in one forward would get two independent samples of one weight: refused
    block = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.out = block, nn.Linear(3, 2)

        def forward(self, x):
            return self.out(self.block(torch.relu(self.block(x))))

    twice = VariationalNet(Twice(), "weight").train()
    with pytest.raises(UserError, match="the layer block runs more than once in one forward pass"):
        twice(x)
    twice.eval()
    assert twice(x).shape == (64, 2)  # the means: one network, used as it is
    v(x), v(x)  # two forwards, each drawing once: no refusal

    class Checkpointed(nn.Module):  # activation checkpointing runs the layer again in backward: the same draw
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.utils.checkpoint.checkpoint(lambda t: torch.relu(self.a(t)), x, use_reentrant=False))

    saved = VariationalNet(Checkpointed(), "weight").train()
    saved(x).sum().backward()
    assert saved.scales["a__weight"].grad is not None
    # a tiny mean starts inside the clamp, where its variance still gets a gradient
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.zero_()
    v = VariationalNet(net, "additive", prior="log-uniform")
    v.kl().backward()
    assert float(v.scales["0__weight"].detach().max()) <= 19 and float(v.scales["0__weight"].grad.abs().sum()) > 0
    # a Gaussian prior over s² = alpha m² with a mean of exactly 0 stays finite
    w = VariationalNet(net, "weight", prior="gaussian")
    assert torch.isfinite(w.kl().detach())


def test_a_damaged_posterior_entry_is_one_line(tmp_path, fitted):
    out, _ = fitted
    ck = load_checkpoint(out / "vi.pt")
    for change, says in (({"prior_scale": "abc"}, "prior_scale"), ({"prior_scale": -1.0}, "prior_scale"),
                         ({"names": 5}, "damaged")):
        save_checkpoint(tmp_path / "d.pt", ck.state_dict, ck.model, kind="variational",
                        variational={**ck.extra["variational"], **change}, meta=ck.meta)
        with pytest.raises(UserError, match=says):
            load_variational(tmp_path / "d.pt")


def test_an_ensemble_member_that_is_a_posterior_is_said_to_be_its_means(small_digits, endpoint, fitted, capsys):
    """ensemble took a posterior's means network without a word (connect says it)."""
    from landscape.ensemble import evaluate_ensemble

    out, _ = fitted
    capsys.readouterr()
    evaluate_ensemble([endpoint, out / "vi.pt"], data=small_digits)
    assert (f"note: {out / 'vi.pt'} holds a variational posterior; the ensemble takes the network of its means "
            f"(its model average: landscape vi-eval)") in capsys.readouterr().err
    evaluate_ensemble([endpoint, endpoint], data=small_digits)
    assert "variational posterior" not in capsys.readouterr().err
