"""The No-U-Turn Sampler: against closed-form targets (a correlated Gaussian,
a truncated one, with a force that is not the gradient), its tree limits and
step-size adaptation; in a subspace, its target and gradient against the
engine's likelihood, its samples against a sequential evaluation, resume and
the command line."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import landscape.evaluate as engine_module
import landscape.nuts as nuts_module
import landscape.subspace as subspace_module
from landscape.errors import UserError
from landscape.evaluate import evaluate_points, evaluate_points_sequential
from landscape.nuts import (DualAveraging, MassAdaptation, adaptation_windows, initial_step_size, nuts_round,
                            warmup_step)
from landscape.subspace import LogPosterior, _Run, gradient_kind, sample_subspace, swag_subspace
from landscape.averaging import run_swa
from landscape.train import train

LANDSCAPE = Path(sys.executable).with_name("landscape")
COV = np.array([[4.0, 1.8], [1.8, 1.0]])
MEAN = np.array([1.0, -2.0])


def gaussian(force=None):
    precision = np.linalg.inv(COV)

    def fn(x):
        d = x - MEAN
        grad = -(d @ precision)
        return -0.5 * np.einsum("ni,ij,nj->n", d, precision, d), grad if force is None else force(x, grad)
    return fn


def run_chains(fn, chains, warmup, rounds, seed=0, start=None, max_depth=10, dim=2, metric=None):
    """Warm-up (dual averaging; with ``metric``, a MassAdaptation, the mass too), then ``rounds`` kept
    transitions: the kept points, acceptance statistics, the adaptation and each kept transition's steps."""
    rng = np.random.default_rng(seed)
    theta = np.zeros((chains, dim)) if start is None else np.tile(start, (chains, 1))
    logp, grad = fn(theta)
    adapt = DualAveraging(initial_step_size(theta, logp, grad, fn, rng))
    kept, accept, steps = [], [], []
    for i in range(warmup + rounds):
        r = nuts_round(theta, logp, grad, fn, rng, adapt.step if i < warmup else adapt.final, max_depth,
                       None if metric is None else metric.inv_mass)
        assert np.allclose(fn(r.theta)[0], r.logp) and np.allclose(fn(r.theta)[1], r.grad)
        theta, logp, grad = r.theta, r.logp, r.grad
        if i < warmup:
            adapt = warmup_step(i, r, adapt, metric, fn, rng)
        else:
            kept.append(theta.copy())
            accept.append(r.accept)
            steps.append(r.steps)
    return np.stack(kept), np.concatenate(accept), adapt, np.stack(steps)


def check_moments(kept, mean, cov):
    """The mean and the covariance (about the true mean) of ``kept`` (rounds,
    chains, d) each within 4 standard errors, estimated from the spread of the
    chains' own estimates (the chains are independent), and the covariance
    within 20 % besides. A fixed relative bound alone fails by chance for
    some seeds: the wide target's variance from 2000 correlated draws has a
    standard error near 4 %, and numpy does not promise the same draws
    across versions."""
    per_chain = kept.mean(0)
    chains = len(per_chain)
    se = per_chain.std(0, ddof=1) / math.sqrt(chains)
    flat = kept.reshape(-1, kept.shape[-1])
    assert np.all(np.abs(flat.mean(0) - mean) < 4 * se + 1e-12), (flat.mean(0), se)
    dev = kept - mean
    chain_cov = np.einsum("rci,rcj->cij", dev, dev) / kept.shape[0]  # (chains, d, d)
    estimate, cov_se = chain_cov.mean(0), chain_cov.std(0, ddof=1) / math.sqrt(chains)
    assert np.all(np.abs(estimate - cov) < 4 * cov_se + 1e-12), (estimate, cov_se)
    assert estimate == pytest.approx(cov, rel=0.2, abs=0.08)


def test_nuts_samples_a_correlated_gaussian_and_adapts_to_the_target_acceptance():
    kept, accept, adapt, _ = run_chains(gaussian(), chains=100, warmup=40, rounds=120)
    check_moments(kept, MEAN, COV)
    assert 0.7 < accept.mean() < 0.95  # dual averaging aims at 0.8
    assert np.all(np.isfinite(adapt.final)) and np.all(adapt.final > 0)


def test_any_position_only_force_leaves_the_target_exact():
    # leapfrog maps keep volume and are reversible whatever the force: only acceptance sees the density
    kept, _, _, _ = run_chains(gaussian(lambda x, g: 0.8 * g + 0.2 * np.sin(3 * x)), chains=100, warmup=30, rounds=100,
                            seed=1)
    check_moments(kept, MEAN, COV)


def test_a_region_of_minus_infinity_is_never_entered():
    def half_normal(x):  # a standard normal truncated to x_1 >= 0 (NaN beyond): x_1's mean is sqrt(2 / pi)
        logp = -0.5 * (x ** 2).sum(1)
        return np.where(x[:, 0] >= 0, logp, np.nan), -x

    kept, _, _, _ = run_chains(half_normal, chains=100, warmup=30, rounds=100, seed=2, start=np.array([0.5, 0.0]))
    flat = kept.reshape(-1, 2)
    assert flat[:, 0].min() >= 0
    assert flat.mean(0) == pytest.approx([math.sqrt(2 / math.pi), 0.0], abs=0.06)


def test_trees_stop_at_the_maximum_depth_and_count_their_steps():
    fn = gaussian()
    calls = []

    def counting(x):
        calls.append(len(x))
        return fn(x)

    rng = np.random.default_rng(3)
    theta = np.zeros((5, 2))
    logp, grad = fn(theta)
    for depth in (1, 3):
        calls.clear()
        r = nuts_round(theta, logp, grad, counting, rng, np.full(5, 0.01), depth)  # tiny steps never U-turn
        assert r.depth.tolist() == [depth] * 5 and r.steps.tolist() == [2 ** depth - 1] * 5
        # the chains' steps are evaluated together: one call per leapfrog step, five points in each
        assert calls == [5] * (2 ** depth - 1)
        assert not r.divergent.any()


def test_an_exploding_trajectory_is_divergent_and_the_chain_stays():
    fn = gaussian()
    theta = np.zeros((3, 2))
    logp, grad = fn(theta)
    r = nuts_round(theta, logp, grad, fn, np.random.default_rng(4), np.full(3, 50.0), 8)
    assert r.divergent.all() and np.array_equal(r.theta, theta) and (r.accept < 1e-6).all()


def test_dual_averaging_moves_the_step_towards_the_target():
    da = DualAveraging(np.array([1.0, 1.0]))
    for _ in range(30):
        da.update(np.array([0.2, 1.0]))  # too low an acceptance: smaller steps; too high: larger
    assert da.final[0] < 1.0 < da.final[1]
    copy = DualAveraging.from_state(da.state())
    assert np.array_equal(copy.step, da.step) and np.array_equal(copy.final, da.final)  # exactly, before and after
    copy.update(np.array([0.5, 0.5]))
    da.update(np.array([0.5, 0.5]))
    assert np.array_equal(copy.final, da.final) and np.array_equal(copy.step, da.step)


def test_one_dimension_and_the_first_step_size_follows_the_targets_scale():
    def normal(sd):
        return lambda x: (-0.5 * (x[:, 0] / sd) ** 2, -x / sd ** 2)

    kept, _, _, _ = run_chains(normal(0.3), chains=100, warmup=30, rounds=100, seed=6, dim=1)
    assert kept.std() == pytest.approx(0.3, rel=0.06) and abs(kept.mean()) < 0.03
    rng = np.random.default_rng(5)
    wide, narrow = (initial_step_size(np.zeros((20, 1)), np.zeros(20), np.zeros((20, 1)), normal(sd), rng)
                    for sd in (1.0, 0.01))
    # Algorithm 4 doubles or halves from 1: powers of two, about as large as the target is wide
    assert np.allclose(np.log2(wide), np.round(np.log2(wide))) and np.allclose(np.log2(narrow), np.round(np.log2(narrow)))
    assert 0.25 <= np.median(wide) <= 4 and 0.0025 <= np.median(narrow) <= 0.04


def test_a_non_finite_gradient_at_a_finite_value_is_zero_force_not_a_rejection():
    seen = []

    def fn(x):
        seen.append(x.copy())
        return -0.5 * (x ** 2).sum(1), np.full_like(x, np.nan)

    r = nuts_round(np.zeros((4, 2)), np.zeros(4), np.zeros((4, 2)), fn, np.random.default_rng(7), np.full(4, 0.5), 3)
    assert np.isfinite(r.logp).all() and not r.divergent.any() and (r.grad == 0).all()
    assert not np.array_equal(r.theta, np.zeros((4, 2)))  # straight lines through the density, still accepted


def test_any_diagonal_mass_leaves_the_target_exact_and_the_identity_is_the_unit_mass():
    fn = gaussian()
    rng = np.random.default_rng(8)
    theta = np.zeros((100, 2))
    logp, grad = fn(theta)
    inv = np.array([3.0, 0.5])
    adapt = DualAveraging(initial_step_size(theta, logp, grad, fn, rng, inv_mass=inv))
    kept = []
    for i in range(130):
        r = nuts_round(theta, logp, grad, fn, rng, adapt.step if i < 30 else adapt.final, 10, inv)
        theta, logp, grad = r.theta, r.logp, r.grad
        adapt.update(r.accept) if i < 30 else kept.append(theta.copy())
    check_moments(np.stack(kept), MEAN, COV)
    # no mass and a mass of ones draw the same chains, number for number
    a, b = (nuts_round(np.zeros((3, 2)), *fn(np.zeros((3, 2))), fn, np.random.default_rng(9), np.full(3, 0.4), 5, m)
            for m in (None, np.ones(2)))
    assert np.array_equal(a.theta, b.theta) and np.array_equal(a.accept, b.accept)


def test_adaptation_windows_are_stans():
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]  # Stan's default
    assert adaptation_windows(200) == [(75, 100), (100, 150)]
    assert adaptation_windows(100) == [(15, 90)]  # 15 % initial, 10 % terminal buffer
    assert adaptation_windows(49) == [] and adaptation_windows(0) == [] and adaptation_windows(50) == [(7, 45)]
    for n in range(50, 400, 7):
        w = adaptation_windows(n)
        assert all(a < b for a, b in w) and all(w[i][1] == w[i + 1][0] for i in range(len(w) - 1))
        assert w[-1][1] == n - (50 if n >= 150 else int(0.1 * n))


def test_the_mass_is_the_pooled_windows_regularised_variance_and_survives_a_restart():
    g = np.random.default_rng(0)
    draws = g.normal(size=(60, 3, 2)) * [5.0, 0.2]  # 60 transitions of 3 chains
    m = MassAdaptation(60, 2)
    (first, end), = m.windows  # (9, 54)
    changed = []
    for t in range(60):
        if t == 20:
            m = MassAdaptation.from_state(m.state(), 60)
        changed.append(m.update(t, draws[t]))
    assert changed.index(True) == end - 1 and sum(changed) == 1
    pooled = draws[first:end].reshape(-1, 2)
    n = len(pooled)
    want = n / (n + 5) * pooled.var(0, ddof=1) + 1e-3 * 5 / (n + 5)
    np.testing.assert_allclose(m.inv_mass, want, rtol=1e-12)


def test_adapting_the_mass_samples_a_badly_scaled_target_with_fewer_steps():
    sd = np.array([20.0, 0.05])
    fn = lambda x: (-0.5 * ((x / sd) ** 2).sum(1), -x / sd ** 2)  # noqa: E731
    metric = MassAdaptation(150, 2)
    kept, _, _, steps = run_chains(fn, chains=20, warmup=150, rounds=100, seed=10, max_depth=8, metric=metric)
    # the first step size, before any adaptation: about the narrow scale, what the unit mass must step by
    identity_step = initial_step_size(np.zeros((20, 2)), *fn(np.zeros((20, 2))), fn, np.random.default_rng(10))
    check_moments(kept, np.zeros(2), np.diag(sd ** 2))
    assert metric.inv_mass == pytest.approx(sd ** 2, rel=0.3)  # the mass learnt the scales
    assert np.mean(steps) < 8 and np.abs(kept[:, :, 0]).max() > 2 * sd[0]
    # with the unit mass, a step stable in the narrow direction (the heuristic's: at most a few times its 0.05
    # scale) would need hundreds of steps to cross the wide one; the adapted chains cross it in a few
    assert np.median(identity_step) < 0.1 and np.mean(steps) * np.median(identity_step) < 0.05 * sd[0]


# ---------------------------------------------------------------- in a subspace


@pytest.fixture(scope="module")
def swag(tmp_path_factory, small_digits):
    root = tmp_path_factory.mktemp("nuts")
    train(out=root / "a", data=small_digits, epochs=3, seed=1, progress=False, model_kwargs={"width": 4})
    run_swa(None, root / "swa", from_ckpt=str(root / "a" / "model.pt"), epochs=5, swa_lr=0.1, swag_rank=4,
            data=small_digits, progress=False)
    return root / "swa" / "swag.pt"


def make_run(sub, data, bn_stats, temperature=2.0, prior_scale=3.0):
    return _Run(subspace=sub, net=sub.model, data=data, temperature=temperature, prior_scale=prior_scale,
                eval_options=dict(wd=0.0, batch_size=128, bn_batches=None, bn_stats=bn_stats, points_per_pass=None,
                                  amp=False), progress=False, resume=False, out=None, key="")


def engine_log_posterior(sub, data, z, bn_stats, temperature=2.0, prior_scale=3.0):
    res = evaluate_points(sub.model, sub.anchors(), np.concatenate([np.ones((len(z), 1)), z], 1), data,
                          bn_stats=bn_stats, batch_size=128)
    return -len(data.y_train) * res["train_nll"] / temperature - 0.5 * (z ** 2).sum(1) / prior_scale ** 2


@pytest.mark.parametrize("bn_stats", ["population", "batches"])
def test_the_target_is_the_engines_posterior_and_its_gradient_its_slope(swag, small_digits, bn_stats):
    sub = swag_subspace(swag, "pca", 2)
    run = make_run(sub, small_digits, bn_stats)
    assert gradient_kind(run) == ("autograd" if bn_stats == "population" else "fd")
    z = np.array([[0.0, 0.0], [0.7, -1.1], [-1.5, 0.4]])
    lp, grad = LogPosterior(run)(z)
    assert lp == pytest.approx(engine_log_posterior(sub, small_digits, z, bn_stats), rel=1e-5)
    h = 1e-2  # the engine's own central differences, on a wider step than the sampler's
    for i in range(2):
        e = np.zeros(2)
        e[i] = h
        slope = (engine_log_posterior(sub, small_digits, z + e, bn_stats)
                 - engine_log_posterior(sub, small_digits, z - e, bn_stats)) / (2 * h)
        assert grad[:, i] == pytest.approx(slope, rel=0.02, abs=0.02 * np.abs(slope).max())


def test_nuts_samples_match_a_sequential_evaluation_and_burn_in_is_discarded(tmp_path, swag, small_digits):
    sub = swag_subspace(swag, "pca", 2)
    kw = dict(method="nuts", chains=2, temperature=2.0, prior_scale=3.0, seed=1, data=small_digits, max_depth=4)
    res = sample_subspace(sub, tmp_path / "s", samples=5, burn_in=2, **kw)
    a = res.arrays
    assert a["z"].shape == (5, 2) and a["chain"].tolist() == [0, 1, 0, 1, 0]
    want = evaluate_points_sequential(sub.model, sub.anchors(), np.concatenate([np.ones((5, 1)), a["z"]], 1),
                                      small_digits, wd=res.summary["wd"], bn_stats="population")
    n = len(small_digits.y_train)
    assert a["log_likelihood"] == pytest.approx(-n * want["train_nll"] / 2.0, rel=1e-5)
    for m in ("train_loss", "test_nll", "test_error"):
        assert a[f"sample_{m}"] == pytest.approx(want[m], rel=1e-4, abs=1e-6), m
    assert (a["evaluations"] <= 2 ** a["nuts_depth"] - 1).all() and (a["nuts_depth"] <= 4).all()
    s = res.summary["nuts"]
    assert s["gradient"] == "autograd" and s["max_depth"] == 4 and len(s["step_size"]) == 2
    assert np.allclose(a["nuts_step_size"], np.array(s["step_size"])[a["chain"]])  # the adapted size, fixed
    stored = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert stored["method"] == "nuts" and "No-U-Turn" in stored["notes"]


def test_burn_in_discards_each_chains_first_transitions(swag, small_digits, monkeypatch):
    sub = swag_subspace(swag, "pca", 2)
    monkeypatch.setattr(DualAveraging, "update", lambda self, accept: None)  # one step size throughout
    kw = dict(method="nuts", chains=2, seed=3, data=small_digits, max_depth=3)
    whole = sample_subspace(sub, samples=8, **kw).arrays
    burnt = sample_subspace(sub, samples=4, burn_in=2, **kw).arrays
    assert np.array_equal(burnt["z"], whole["z"][4:]) and np.array_equal(burnt["chain"], whole["chain"][4:])
    assert np.array_equal(burnt["sample_test_nll"], whole["sample_test_nll"][4:])


def test_the_gradient_falls_back_to_finite_differences_when_a_backward_pass_would_not_fit(swag, small_digits,
                                                                                         monkeypatch):
    sub = swag_subspace(swag, "pca", 2)
    run = make_run(sub, small_digits, "population")
    assert gradient_kind(run) == "autograd"
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e3)
    assert gradient_kind(run) == "fd"


def test_without_batch_norm_the_gradient_is_autograd_batch_by_batch(tmp_path, small_digits):
    train(out=tmp_path / "m", data=small_digits, model="mlp", epochs=2, seed=1, progress=False)
    run_swa(None, tmp_path / "swa", from_ckpt=str(tmp_path / "m" / "model.pt"), epochs=3, swa_lr=0.05, swag_rank=3,
            data=small_digits, progress=False)
    sub = swag_subspace(tmp_path / "swa" / "swag.pt", "pca", 2)
    run = make_run(sub, small_digits, "batches")
    assert gradient_kind(run) == "autograd"
    z = np.array([[0.3, -0.2], [-1.0, 0.8]])
    lp, grad = LogPosterior(run)(z)
    assert lp == pytest.approx(engine_log_posterior(sub, small_digits, z, "batches"), rel=1e-6)
    h = 1e-2  # float32 NLLs: a narrower step's difference is rounding
    for i in range(2):
        e = np.zeros(2)
        e[i] = h
        slope = (engine_log_posterior(sub, small_digits, z + e, "batches")
                 - engine_log_posterior(sub, small_digits, z - e, "batches")) / (2 * h)
        assert grad[:, i] == pytest.approx(slope, rel=0.01, abs=0.01 * np.abs(slope).max())


@pytest.mark.parametrize("bn_stats", ["population", "batches"])
def test_an_interrupted_nuts_run_resumes_to_the_same_samples(bn_stats, tmp_path, swag, small_digits, monkeypatch):
    sub = swag_subspace(swag, "random", 3, seed=2)
    kw = dict(method="nuts", samples=6, chains=2, burn_in=2, data=small_digits, seed=4, max_depth=3,
              bn_stats=bn_stats)
    whole = sample_subspace(sub, tmp_path / "whole", **kw)
    assert whole.summary["nuts"]["gradient"] == ("autograd" if bn_stats == "population" else "fd")
    whole = whole.arrays
    original_round = subspace_module.nuts_round
    state = tmp_path / "cut" / "sweep.partial.npz"

    class Stop(Exception):
        pass

    def stopping(*args, **kwargs):  # in the middle of the second burn-in round, then of the second sampling round
        with np.load(state) as saved:
            if (int(saved["burned"]) == 1 and not stops) or (len(saved["z"]) >= 2 and len(stops) == 1):
                stops.append(int(saved["burned"]))
                raise Stop
        return original_round(*args, **kwargs)

    stops = []
    monkeypatch.setattr(subspace_module, "nuts_round", stopping)
    for _ in range(2):
        with pytest.raises(Stop):
            sample_subspace(sub, tmp_path / "cut", **kw, resume=(tmp_path / "cut").exists())
    assert stops == [1, 2]
    monkeypatch.setattr(subspace_module, "nuts_round", original_round)
    shutil.copytree(tmp_path / "cut", tmp_path / "torn")
    with pytest.raises(UserError, match="with other inputs or settings"):
        sample_subspace(sub, tmp_path / "cut", **dict(kw, max_depth=4), resume=True)
    resumed = sample_subspace(sub, tmp_path / "cut", **kw, resume=True).arrays
    assert set(resumed) == set(whole)
    for key in whole:
        assert np.array_equal(resumed[key], whole[key]), key
    with np.load(tmp_path / "torn" / "sweep.partial.npz") as saved:
        kept = {name: saved[name] for name in saved.files if name != "da_h_bar"}
    np.savez(tmp_path / "torn" / "sweep.partial.npz", **kept)
    with pytest.raises(UserError, match="the sampler's saved state is incomplete; delete it to start again"):
        sample_subspace(sub, tmp_path / "torn", **kw, resume=True)


def test_the_mass_adapted_in_the_burn_in_resumes_and_a_short_burn_in_keeps_the_unit_mass(tmp_path, swag, small_digits,
                                                                                         monkeypatch, capsys):
    monkeypatch.setattr(nuts_module, "MIN_MASS_BURN_IN", 20)  # Stan's floor: a shorter test, the same code
    sub = swag_subspace(swag, "random", 2, seed=2)
    kw = dict(method="nuts", samples=2, chains=2, burn_in=20, data=small_digits, seed=4, max_depth=3)
    whole = sample_subspace(sub, tmp_path / "whole", **kw)
    inv = whole.summary["nuts"]["inverse_mass"]
    assert whole.summary["nuts"]["mass"] == "diag" and len(inv) == 2 and not np.allclose(inv, 1.0)
    state = tmp_path / "cut" / "sweep.partial.npz"
    original_round = subspace_module.nuts_round
    stops = []

    class Stop(Exception):
        pass

    def stopping(*args, **kwargs):  # inside the window (3, 18), then in the terminal buffer after it
        if state.exists():
            with np.load(state) as saved:
                burned = int(saved["burned"])
            if burned in (10, 19) and burned not in stops:
                stops.append(burned)
                raise Stop
        return original_round(*args, **kwargs)

    monkeypatch.setattr(subspace_module, "nuts_round", stopping)
    for _ in range(2):
        with pytest.raises(Stop):
            sample_subspace(sub, tmp_path / "cut", **kw, resume=(tmp_path / "cut").exists())
    monkeypatch.setattr(subspace_module, "nuts_round", original_round)
    assert stops == [10, 19]
    resumed = sample_subspace(sub, tmp_path / "cut", **kw, resume=True)
    for key in whole.arrays:
        assert np.array_equal(resumed.arrays[key], whole.arrays[key]), key
    assert resumed.summary["nuts"]["inverse_mass"] == inv
    # a burn-in under MIN_MASS_BURN_IN estimates no mass: the run, and its request, are the unit mass's
    short = dict(kw, burn_in=2)
    capsys.readouterr()
    sample_subspace(sub, tmp_path / "short", **short)
    assert "--mass diag" not in capsys.readouterr().err  # the default: no word
    again = sample_subspace(sub, tmp_path / "short", **short, mass="diag", resume=True)  # the finished result
    assert capsys.readouterr().err.count("note: --mass diag is estimated from a --burn-in of 20 or more; this run's "
                                         "2 leaves the identity") == 1
    assert again.summary["nuts"]["mass"] == "identity" and again.summary["nuts"]["inverse_mass"] == [1.0, 1.0]
    with pytest.raises(UserError, match="--mass is NUTS's"):
        sample_subspace(sub, samples=2, mass="diag", data=small_digits)
    with pytest.raises(UserError, match="unknown --mass 'full'"):
        sample_subspace(sub, samples=2, method="nuts", mass="full", data=small_digits)


def test_nuts_options_are_checked(swag, small_digits):
    sub = swag_subspace(swag, "pca", 2)
    with pytest.raises(UserError, match="--max-depth is NUTS's"):
        sample_subspace(sub, samples=2, max_depth=3, data=small_digits)
    for depth in (0, 21, 2.5, float("nan"), float("inf"), "3"):
        with pytest.raises(UserError, match="--max-depth"):
            sample_subspace(sub, samples=2, method="nuts", max_depth=depth, data=small_digits)


def test_nuts_from_the_command_line(tmp_path, swag):
    out = tmp_path / "cli"
    cmd = [str(LANDSCAPE), "subspace", "--ckpt", str(swag), "--method", "nuts", "--samples", "4", "--chains", "2",
           "--burn-in", "2", "--max-depth", "3", "--quiet", "--out", str(out), "--dataset", "digits"]
    # --dataset: the SWAG run trained on the first 400 digits passed from Python, which no option names
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "NUTS" in done.stdout and "gradient steps per sample (autograd)" in done.stdout
    assert (out / "subspace.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nuts"]["max_depth"] == 3 and summary["bma"]["members"] == 4
    # most transitions divergent (a burn-in too short to adapt the step size): said, not the table's count alone
    noted = "kept NUTS transitions diverged (mean acceptance"
    assert summary["nuts"]["divergent"] == 4 and noted in done.stderr, done.stderr  # (a burn-in of 2, seeded)
    bad = subprocess.run(cmd[:-2] + ["--method", "ess", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["landscape: error: --max-depth is NUTS's (--method nuts)"]
