"""Subspace inference: elliptical slice sampling against a closed-form
Gaussian posterior, the PCA basis against numpy's SVD, the curve plane
through the curve's points by hand, every likelihood and the model average
against a sequential evaluation, resume, the command line and bad input."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import cli
import landscape.subspace as subspace_module
from landscape.curves import curve_subspace, fit_curve, load_curve
from landscape.averaging import run_swa
from landscape.errors import UserError
from landscape.evaluate import evaluate_points_sequential
from landscape.metrics import ensemble_metrics
from landscape.subspace import (elliptical_slice_round, gaussian_kl, pca_basis, plane_of_points, random_basis,
                                sample_subspace, swag_subspace)
from landscape.swag import SwagPosterior
from landscape.train import train
from landscape.weights import ParamSpace
from tests.conftest import naming_digits

LANDSCAPE = Path(sys.executable).with_name("landscape")
SMALL = {"width": 4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_digits):
    """Two small endpoints, a one-bend Bezier curve between them, and SWA with
    SWAG's last 4 deviations from the first."""
    root = tmp_path_factory.mktemp("subspace")
    for name, seed in (("a", 1), ("b", 2)):
        train(out=root / name, data=small_digits, epochs=3, seed=seed, progress=False, model_kwargs=SMALL)
    fit_curve(root / "a" / "model.pt", root / "b" / "model.pt", root / "curve", data=small_digits, curve="bezier",
              bends=1, epochs=2, progress=False)
    run_swa(None, root / "swa", from_ckpt=str(root / "a" / "model.pt"), epochs=5, swa_lr=0.1, swag_rank=4,
            data=small_digits, progress=False)
    return root


def gaussian_loglik(mean, sd):
    def f(points):
        ll = -0.5 * ((points - mean) ** 2).sum(1) / sd ** 2
        return ll, {"first": points[:, 0].copy()}
    return f


def test_elliptical_slice_sampling_matches_the_closed_form_gaussian_posterior():
    # prior N(0, s0^2 I), likelihood N(m, s^2 I) in z: posterior N(m s0^2 / (s0^2 + s^2), s0^2 s^2 / (s0^2 + s^2))
    s0, s, m = 1.5, 0.7, np.array([1.0, -2.0])
    rng = np.random.default_rng(3)
    f = gaussian_loglik(m, s)
    z = np.zeros((400, 2))
    ll, _ = f(z)
    kept, evaluations = [], []
    for r in range(150):
        new, new_ll, evals, extra = elliptical_slice_round(z, ll, f, rng, s0)
        assert np.allclose(new_ll, f(new)[0]) and (evals >= 1).all()
        evaluations.append(evals)
        moved = ~np.isnan(extra["first"])
        assert np.array_equal(extra["first"][moved], new[moved, 0])  # the extras are the accepted point's
        z, ll = new, new_ll
        if r >= 30:
            kept.append(z)
    kept = np.concatenate(kept)
    # the bracket shrinks towards the current point: a few evaluations a step, none left at the limit
    assert np.mean(evaluations) < 5 and np.max(evaluations) < subspace_module.MAX_SHRINKS
    want_mean, want_var = m * s0 ** 2 / (s0 ** 2 + s ** 2), s0 ** 2 * s ** 2 / (s0 ** 2 + s ** 2)
    assert kept.mean(0) == pytest.approx(want_mean, abs=0.03)
    assert kept.var(0) == pytest.approx([want_var, want_var], rel=0.05)


def test_a_point_whose_likelihood_is_nan_is_never_accepted():
    def f(points):  # diverges where z_1 > 0.5
        ll = -0.5 * (points ** 2).sum(1)
        return np.where(points[:, 0] > 0.5, np.nan, ll), {}

    rng = np.random.default_rng(0)
    z, ll = np.zeros((50, 2)), np.zeros(50)
    seen = []
    for _ in range(40):
        z, ll, _, _ = elliptical_slice_round(z, ll, f, rng, 1.0)
        seen.append(z.copy())
    seen = np.concatenate(seen)
    assert seen[:, 0].max() <= 0.5 and seen[:, 0].min() < -1.0  # truncated, and still exploring


def test_a_bracket_shrunk_onto_the_current_point_returns_it_evaluated():
    start = np.array([[0.3, -0.2]])

    def f(points):  # only the current point itself has any likelihood
        here = np.all(points == start, axis=1)
        return np.where(here, 0.0, -np.inf), {"first": points[:, 0].copy()}

    z, ll, evals, extra = elliptical_slice_round(start.copy(), np.zeros(1), f, np.random.default_rng(1), 1.0)
    assert np.array_equal(z, start) and ll[0] == 0.0
    assert evals[0] == subspace_module.MAX_SHRINKS + 1 and extra["first"][0] == start[0, 0]


def test_burn_in_discards_each_chains_first_steps(runs, small_digits):
    sub = swag_subspace(runs / "swa" / "swag.pt", "pca", 2.0)  # a whole float from Python: a slice's bound failed
    kw = dict(chains=2, data=small_digits, seed=3, prior_scale=2.0)
    whole = sample_subspace(sub, samples=6, **kw).arrays
    burnt = sample_subspace(sub, samples=4, burn_in=1, **kw).arrays
    assert np.array_equal(burnt["z"], whole["z"][2:]) and np.array_equal(burnt["chain"], whole["chain"][2:])
    assert np.array_equal(burnt["sample_test_nll"], whole["sample_test_nll"][2:])


def test_the_subspaces_are_made_where_the_evaluations_run_by_default(runs):
    """swag_subspace and curve_subspace put their subspace on the CPU by default, where sample_subspace then
    sampled it, on a GPU machine too; and device="auto", every evaluation's default, was refused by torch."""
    import inspect

    from landscape.device import resolve_device

    for fn in (swag_subspace, curve_subspace):
        assert inspect.signature(fn).parameters["device"].default == "auto"
    sub = swag_subspace(runs / "swa" / "swag.pt", "pca", 2, device="auto")
    assert sub.shift.device == resolve_device("auto") and sub.basis.device == sub.shift.device


def test_pca_basis_is_the_svd_of_the_deviations_and_a_rank_they_do_not_span_is_refused():
    gen = torch.Generator().manual_seed(0)
    dev = torch.randn(5, 40, generator=gen)
    post = SwagPosterior(mean=torch.zeros(40, dtype=torch.float64), sq_mean=torch.ones(40, dtype=torch.float64),
                         deviations=dev, averaged=5)
    basis = pca_basis(post, 3).double().numpy()
    _, sv, vt = np.linalg.svd(dev.double().numpy() / np.sqrt(4), full_matrices=False)
    for i in range(3):
        sign = np.sign(basis[i] @ vt[i])
        assert basis[i] == pytest.approx(sign * sv[i] * vt[i], abs=1e-6)
    # a zero deviation (SWAG's first, while few are averaged) and a repeated one add no direction
    post.deviations = torch.stack([torch.zeros(40), dev[0], dev[1], dev[1]])
    assert pca_basis(post, 2).shape == (2, 40)
    with pytest.raises(UserError, match=r"--rank 3: the SWAG deviations span only 2 direction\(s\)"):
        pca_basis(post, 3)
    # every iterate averaged kept its deviation: a larger --swag-rank would keep no more (the advice was that)
    post.averaged = 4
    with pytest.raises(UserError, match=r"\(4 deviation\(s\) kept of the 4 iterates averaged\); use --rank 2 or "
                                        r"collect more with more SWA epochs after --swa-start \(each average adds "
                                        r"one\)$"):
        pca_basis(post, 3)
    # none at all (swa_gaussian without --cov_mat): said so, not "use --rank 1" (which fails the same way)
    post.deviations = torch.zeros(0, 40)
    with pytest.raises(UserError, match=r"the SWAG moments hold no deviations \(collected without a low-rank part"):
        pca_basis(post, 1)


def test_random_basis_is_orthogonal_with_the_given_length_and_seeded():
    b = random_basis(300, 4, 0.25, seed=7).double()
    assert (b @ b.T).numpy() == pytest.approx(0.0625 * np.eye(4), abs=1e-9)
    assert torch.equal(random_basis(300, 4, 0.25, seed=7), random_basis(300, 4, 0.25, seed=7))
    assert not torch.equal(random_basis(300, 4, 0.25, seed=7), random_basis(300, 4, 0.25, seed=8))


def test_a_random_subspace_is_as_long_as_the_top_two_pca_directions(runs):
    pca = swag_subspace(runs / "swa" / "swag.pt", "pca", 2)
    rnd = swag_subspace(runs / "swa" / "swag.pt", "random", 3, seed=1)
    want = float(pca.basis.double().norm(dim=1).mean())
    assert rnd.basis.double().norm(dim=1).numpy() == pytest.approx([want] * 3, rel=1e-5)


def test_the_curve_plane_passes_through_the_curves_points(runs):
    loaded = load_curve(runs / "curve" / "model.pt")
    w = loaded.curve.anchors().detach().double()
    by_hand = {"t=0": w[0], "t=0.5": 0.25 * w[0] + 0.5 * w[1] + 0.25 * w[2], "t=1": w[2]}  # Bezier, one bend
    sub = curve_subspace(runs / "curve" / "model.pt")
    assert sub.kind == "curve" and sub.dim == 2
    assert torch.allclose(sub.shift.double(), sum(by_hand.values()) / 3, atol=1e-5)
    u, v = sub.basis.double()
    assert torch.allclose(u, (w[2] - w[0]) / 3 ** 0.5, atol=1e-5) and abs(float(u @ v)) < 1e-6 * float(u.norm() * v.norm())
    for name, point in by_hand.items():
        assert torch.allclose(sub.weights(sub.landmarks[name]).double(), point, atol=1e-4), name
    # the whole curve, for the figure: in the plane, the quadratic through the three landmarks' coordinates
    z0, zh, z1 = (np.asarray(sub.landmarks[n]) for n in ("t=0", "t=0.5", "t=1"))
    zb = 2 * zh - (z0 + z1) / 2  # the bend's coordinates: zh = (z0 + 2 zb + z1) / 4
    t = np.linspace(0, 1, len(sub.path))[:, None]
    assert sub.path.shape == (61, 2) and sub.path_off < 1e-5
    assert sub.path == pytest.approx((1 - t) ** 2 * z0 + 2 * t * (1 - t) * zb + t ** 2 * z1, abs=1e-4)
    with pytest.raises(UserError, match="midpoint lies on the line"):
        plane_of_points(w[0], (w[0] + w[2]) / 2, w[2])
    # a curve lying on its line (its bend where connect starts it, or an imported line): refused, as plane does;
    # its points in float32 put the midpoint 3e-8 of the length off the line, a "plane" of rounding noise
    import dataclasses

    from landscape.curves import create_curve

    loaded = load_curve(runs / "curve" / "model.pt")
    space, anchors = loaded.curve.space, loaded.curve.anchors().detach()
    straight = create_curve("bezier", space, anchors[0], anchors[-1], bends=1)
    with pytest.raises(UserError, match="midpoint lies on the line"):
        curve_subspace(dataclasses.replace(loaded, curve=straight))


def test_a_curve_off_the_plane_is_projected_as_its_points_would_be(runs):
    """Against another plane (through the ends and a random direction), the curve
    leaves it: its projection and greatest distance, computed from the control
    points alone, equal those of the curve's points one by one."""
    from landscape.curves.subspace import PATH_POINTS, _curve_in_plane

    loaded = load_curve(runs / "curve" / "model.pt")
    w = loaded.curve.anchors().detach().double()
    other = w[0] + torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift, basis, _ = plane_of_points(w[0], other, w[2])
    path, off = _curve_in_plane(loaded, shift, basis)
    pts = loaded.curve.points(torch.linspace(0, 1, PATH_POINTS, dtype=torch.float64)).detach().double()
    b = basis.double()
    coords = ((pts - shift.double()) @ b.T) / (b * b).sum(1)
    distance = (pts - shift.double() - coords @ b).norm(dim=1).max() / (w[2] - w[0]).norm()
    assert path == pytest.approx(coords.numpy(), abs=1e-6)
    assert off == pytest.approx(float(distance), rel=1e-6) and off > 1e-3


def test_sampler_log_lines_count_every_chains_steps_burn_in_included(runs, small_digits, capsys):
    sub = curve_subspace(runs / "curve" / "model.pt")
    capsys.readouterr()
    sample_subspace(sub, samples=3, chains=2, burn_in=2, data=small_digits, seed=0, progress="log")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ESS steps")]
    # 2 chains x 2 burn-in rounds, then 3 kept samples: 7 steps; the first line and the last always come
    assert lines[0].startswith("ESS steps 2 of 7 (29 %) after ") and lines[0].endswith("; burn-in"), lines
    assert lines[-1].startswith("ESS steps 7 of 7 (100 %) after ") and lines[-1].endswith("; sampling"), lines


def test_curve_chains_start_at_the_curves_end(runs, small_digits, monkeypatch):
    sub = curve_subspace(runs / "curve" / "model.pt")
    original, asked = subspace_module.evaluate_points, []

    def recording(model, anchors, coefficients, *args, **kwargs):
        asked.append(np.asarray(coefficients))
        return original(model, anchors, coefficients, *args, **kwargs)

    monkeypatch.setattr(subspace_module, "evaluate_points", recording)
    res = sample_subspace(sub, samples=1, data=small_digits, seed=0)
    t1 = np.asarray(sub.landmarks["t=1"])
    # first the centre (its row of the table) and the start, as the reference's theta = coords[t=1]
    assert asked[0] == pytest.approx(np.array([[1.0, 0.0, 0.0], [1.0, *t1]]))
    assert res.summary["start"] == pytest.approx(t1.tolist())
    # the first proposal lies on the ellipse through the start: start cos(phi) + nu sin(phi)
    assert np.linalg.norm(asked[1][0, 1:]) > 0 and not np.allclose(asked[1][0, 1:], t1)


def test_every_likelihood_and_the_model_average_match_a_sequential_evaluation(tmp_path, runs, small_digits):
    sub = swag_subspace(runs / "swa" / "swag.pt", "pca", 2)
    res = sample_subspace(sub, tmp_path / "s", samples=5, chains=2, temperature=2.0, prior_scale=3.0, seed=1,
                          data=small_digits, bn_stats="batches", grid=3)
    a = res.arrays
    assert a["z"].shape == (5, 2) and a["chain"].tolist() == [0, 1, 0, 1, 0]
    points = np.concatenate([np.zeros((1, 2)), a["z"]])
    want = evaluate_points_sequential(sub.model, sub.anchors(), np.concatenate([np.ones((6, 1)), points], 1), small_digits,
                                      wd=res.summary["wd"], bn_stats="batches", return_probs=True)
    n = len(small_digits.y_train)
    assert a["log_likelihood"] == pytest.approx(-n * want["train_nll"][1:] / 2.0, rel=1e-5)
    assert a["log_posterior"] == pytest.approx(a["log_likelihood"] - 0.5 * (a["z"] ** 2).sum(1) / 9.0, rel=1e-9)
    for m in ("train_loss", "train_error", "test_nll", "test_error"):
        assert a[f"sample_{m}"] == pytest.approx(want[m][1:], rel=1e-4, abs=1e-6), m
        assert float(a[f"shift_{m}"]) == pytest.approx(want[m][0], rel=1e-4, abs=1e-6), m
    labels = small_digits.y_test.numpy()
    for s in (1, 3, 5):
        bma = ensemble_metrics(want["probs"][1:s + 1].astype(np.float64).mean(0)[None], labels)
        assert a["bma_test_nll"][s - 1] == pytest.approx(bma["nll"], rel=1e-4)
        assert a["bma_test_error"][s - 1] == pytest.approx(bma["error"], abs=1e-9)
    from landscape.metrics import expected_calibration_error as ece  # the centre's calibration, as the samples'
    assert res.summary["shift"]["test_ece"] == pytest.approx(ece(want["probs"][0].astype(np.float64), labels),
                                                             abs=1e-4)
    assert res.summary["bma"]["test_ece"] == pytest.approx(ece(want["probs"][1:].astype(np.float64).mean(0), labels),
                                                           abs=1e-4)
    assert np.abs(a["z"]).min() > 0  # every sample moved off the centre
    # the grid: a square around the samples and the prior's sd, row i, column j at (axis[i], axis[j])
    axis = a["grid_axis"]
    assert axis[-1] == pytest.approx(1.2 * max(np.abs(a["z"]).max(), 3.0)) and axis == pytest.approx(-axis[::-1])
    gz = np.array([[x, y] for x in axis for y in axis])
    on_grid = evaluate_points_sequential(sub.model, sub.anchors(), np.concatenate([np.ones((9, 1)), gz], 1), small_digits,
                                         wd=res.summary["wd"], bn_stats="batches")
    want_lp = -n * on_grid["train_nll"] / 2.0 - 0.5 * (gz ** 2).sum(1) / 9.0
    assert a["grid_log_posterior"].ravel() == pytest.approx(want_lp, rel=1e-5)
    assert a["grid_test_error"].ravel() == pytest.approx(on_grid["test_error"], abs=1e-9)
    stored = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert stored["bma"]["test_nll"] == pytest.approx(res.summary["bma"]["test_nll"])
    assert not (tmp_path / "s" / "sweep.partial.npz").exists()


def test_an_interrupted_run_resumes_to_the_same_samples(tmp_path, runs, small_digits, monkeypatch):
    import landscape.sweep as sweep_module

    sub = swag_subspace(runs / "swa" / "swag.pt", "random", 3, seed=2)
    kw = dict(samples=6, chains=2, burn_in=1, grid=3, data=small_digits, seed=4, prior_scale=2.0, points_per_pass=4)
    whole = sample_subspace(sub, tmp_path / "whole", **kw).arrays
    original = subspace_module.evaluate_points
    state, grid_state = tmp_path / "cut" / "sweep.partial.npz", tmp_path / "cut" / "grid.partial.npz"
    stops = []

    class Stop(Exception):
        pass

    def stopping(*args, **kwargs):
        # first in the middle of sampling, once a round's samples are saved; then in the middle of the grid
        if not stops and state.exists():
            with np.load(state) as saved:
                if len(saved["z"]) >= 2:
                    stops.append("sampling")
                    raise Stop
        if len(stops) == 1 and grid_state.exists():
            stops.append("grid")
            raise Stop
        return original(*args, **kwargs)

    monkeypatch.setattr(subspace_module, "evaluate_points", stopping)
    monkeypatch.setattr(sweep_module, "evaluate_points", stopping)
    with pytest.raises(Stop):
        sample_subspace(sub, tmp_path / "cut", **kw)
    assert state.exists() and not grid_state.exists()
    shutil.copytree(tmp_path / "cut", tmp_path / "torn")
    with pytest.raises(UserError, match="pass --resume to continue it"):
        sample_subspace(sub, tmp_path / "cut", **kw)
    with pytest.raises(UserError, match="with other inputs or settings"):
        sample_subspace(sub, tmp_path / "cut", **dict(kw, seed=5), resume=True)
    with pytest.raises(Stop):
        sample_subspace(sub, tmp_path / "cut", **kw, resume=True)
    assert stops == ["sampling", "grid"] and grid_state.exists()
    resumed = sample_subspace(sub, tmp_path / "cut", **kw, resume=True).arrays
    assert set(resumed) == set(whole) and "grid_log_posterior" in whole
    for key in whole:
        assert np.array_equal(resumed[key], whole[key]), key
    assert not state.exists() and not grid_state.exists()
    # a saved state that lacks a field is refused in one line, not a KeyError
    with np.load(tmp_path / "torn" / "sweep.partial.npz") as saved:
        kept = {name: saved[name] for name in saved.files if name != "current"}
    np.savez(tmp_path / "torn" / "sweep.partial.npz", **kept)
    with pytest.raises(UserError, match="the sampler's saved state is incomplete; delete it to start again"):
        sample_subspace(sub, tmp_path / "torn", **kw, resume=True)
    # a finished run is returned by --resume, and refused without it
    again = sample_subspace(sub, tmp_path / "cut", **kw, resume=True).arrays
    assert np.array_equal(again["z"], whole["z"])
    with pytest.raises(UserError, match="already holds a finished result"):
        sample_subspace(sub, tmp_path / "cut", **kw)


def test_the_python_api_refuses_torchrun_too(runs, small_digits, monkeypatch, tmp_path):
    sub = swag_subspace(runs / "swa" / "swag.pt", "pca", 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="subspace sampling runs in one process"):
        sample_subspace(sub, tmp_path / "x", samples=2, data=small_digits)
    assert not (tmp_path / "x").exists()


def test_gaussian_kl_is_torchs():
    mu, sigma = torch.tensor([0.3, -1.2, 0.0], dtype=torch.float64), torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                             torch.distributions.Normal(0.0, 1.5)).sum()
    assert float(gaussian_kl(mu, sigma, 1.5)) == pytest.approx(float(want), rel=1e-12)


def vi_subspace(runs):
    """A random plane of long directions around the SWA mean, the fit starting off its centre: a loss
    with gradients in both mu and sigma."""
    sub = swag_subspace(runs / "swa" / "swag.pt", "random", 2, seed=3)
    sub.basis = random_basis(sub.shift.numel(), 2, 1.0, seed=3)
    sub.start = [0.5, -0.3]
    return sub


def test_one_vi_step_follows_the_elbos_gradient_by_finite_differences(runs, small_digits):
    sub = vi_subspace(runs)
    n, lr, temperature, prior, init = len(small_digits.y_train), 0.05, 20.0, 0.7, 0.4
    res = sample_subspace(sub, method="vi", vi_epochs=1, vi_batch_size=n, vi_lr=lr, vi_init_std=init, samples=2,
                          temperature=temperature, prior_scale=prior, seed=5, data=small_digits)
    eps = torch.randn(2, generator=torch.Generator().manual_seed(subspace_module.vi_seeds(5, 0)[1]),
                      dtype=torch.float64).numpy()
    net = copy.deepcopy(sub.model).train()
    space = ParamSpace.of(net)

    def objective(mu, rho):  # written out: the weights loaded into a copy, train mode, the whole set as one batch
        sigma = np.log1p(np.exp(rho)) + 1e-6
        w = sub.weights(mu + sigma * eps)
        net.load_state_dict(space.unflatten(w), strict=False)
        with torch.no_grad():
            nll = torch.nn.functional.cross_entropy(net(small_digits.x_train), small_digits.y_train).double().item()
        kl = np.sum(np.log(prior / sigma) + (sigma ** 2 + mu ** 2) / (2 * prior ** 2) - 0.5)
        return nll + temperature * kl / n

    mu0, rho0, h = np.array([0.5, -0.3]), np.full(2, np.log(np.expm1(init))), 1e-3
    grad = {}
    for name, base in (("mu", mu0), ("rho", rho0)):
        g = np.zeros(2)
        for i in range(2):
            step = np.zeros(2)
            step[i] = h
            args_plus = (mu0 + step, rho0) if name == "mu" else (mu0, rho0 + step)
            args_minus = (mu0 - step, rho0) if name == "mu" else (mu0, rho0 - step)
            g[i] = (objective(*args_plus) - objective(*args_minus)) / (2 * h)
        grad[name] = g
    assert np.abs(grad["mu"]).min() > 1e-2 and np.abs(grad["rho"]).min() > 1e-3  # a real step to check
    vi = res.summary["vi"]
    assert vi["mu"] == pytest.approx(mu0 - lr * grad["mu"], abs=2e-5)
    sigma1 = np.log1p(np.exp(rho0 - lr * grad["rho"])) + 1e-6
    assert vi["sigma"] == pytest.approx(sigma1, abs=2e-5)
    # the samples are mu + sigma eps, eps from the seed
    want_z = np.asarray(vi["mu"]) + np.asarray(vi["sigma"]) * np.random.default_rng(5).standard_normal((2, 2))
    assert res.arrays["z"] == pytest.approx(want_z, abs=1e-12)


@pytest.mark.parametrize("family, other", [("gaussian", {"vi_lr": 0.06}), ("realnvp", {"vi_family": "gaussian"})])
def test_an_interrupted_vi_fit_resumes_exactly(tmp_path, runs, small_digits, monkeypatch, family, other):
    sub = vi_subspace(runs)
    kw = dict(method="vi", vi_family=family, vi_epochs=3, vi_lr=0.05, samples=3, data=small_digits, seed=2)
    whole = sample_subspace(sub, tmp_path / "whole", **kw)
    original = subspace_module.vi_seeds

    class Stop(Exception):
        pass

    def stopping(seed, epoch):
        if epoch == 2:
            raise Stop
        return original(seed, epoch)

    monkeypatch.setattr(subspace_module, "vi_seeds", stopping)
    with pytest.raises(Stop):
        sample_subspace(sub, tmp_path / "cut", **kw)
    monkeypatch.setattr(subspace_module, "vi_seeds", original)
    with pytest.raises(UserError, match="with other inputs or settings"):
        sample_subspace(sub, tmp_path / "cut", **dict(kw, **other), resume=True)
    resumed = sample_subspace(sub, tmp_path / "cut", **kw, resume=True)
    assert resumed.summary["vi"]["mu"] == whole.summary["vi"]["mu"]
    for key in whole.arrays:
        assert np.array_equal(resumed.arrays[key], whole.arrays[key]), key
    assert len(whole.arrays["vi_loss"]) == 3 and not (tmp_path / "cut" / "sweep.partial.npz").exists()


def test_a_vi_fit_with_dropout_does_not_depend_on_the_global_rng_nor_change_it(runs, small_digits):
    sub = vi_subspace(runs)
    sub.model.register_forward_pre_hook(lambda m, args: (torch.nn.functional.dropout(args[0], 0.3, m.training),))
    fits = []
    for global_seed in (1, 2):  # what an earlier command, or a resumed process, left the global RNG at
        torch.manual_seed(global_seed)
        fits.append(sample_subspace(sub, method="vi", vi_epochs=1, samples=1, data=small_digits).summary["vi"]["mu"])
        after = torch.rand(3)
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(3))  # and leaves the caller's as it found it (each epoch seeded it)
    assert fits[0] == fits[1]


def test_a_large_initial_vi_sigma_is_taken(runs, small_digits):
    sub = vi_subspace(runs)
    res = sample_subspace(sub, method="vi", vi_epochs=1, vi_init_std=1000.0, vi_lr=1e-6, samples=1, data=small_digits)
    assert res.summary["vi"]["sigma"] == pytest.approx([1000.0, 1000.0], rel=1e-3)


def test_a_diverging_vi_fit_is_refused_in_one_line(tmp_path, runs, small_digits):
    sub = vi_subspace(runs)
    with pytest.raises(UserError, match=r"variational inference diverged in epoch 1 \(loss nan\); start again with a "
                                         r"lower --vi-lr than 1e\+09 in another --out"):
        sample_subspace(sub, tmp_path / "d", method="vi", vi_epochs=2, vi_lr=1e9, samples=2, data=small_digits)
    # a wide start names its spread too (1e300 diverged "with a lower --vi-lr")
    with pytest.raises(UserError, match=r"start again with a lower --vi-lr than 0\.1 \(or a smaller --vi-init-std "
                                         r"than 1e\+300, the starting spread\) in another --out"):
        sample_subspace(sub, tmp_path / "w", method="vi", vi_epochs=1, vi_init_std=1e300, samples=1, data=small_digits)


def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([str(LANDSCAPE), *naming_digits(argv)], capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_subspace_from_the_command_line_and_its_bad_input(tmp_path, runs, capsys):
    if not LANDSCAPE.exists():
        pytest.skip("console script not installed next to this interpreter")
    swag, curve = runs / "swa" / "swag.pt", runs / "curve" / "model.pt"
    done = run_cli("subspace", "--ckpt", swag, "--samples", 3, "--chains", 2, "--burn-in", 1, "--out", tmp_path / "p",
                   "--quiet")
    assert done.returncode == 0, done.stderr
    assert "model average" in done.stdout and "pca subspace, rank 2: 3 samples, T 1" in done.stdout
    (tmp_path / "p" / "subspace.png").unlink()
    redrawn = run_cli("plot", tmp_path / "p")
    assert redrawn.returncode == 0 and (tmp_path / "p" / "subspace.png").exists(), redrawn.stderr
    done = run_cli("subspace", "--ckpt", curve, "--samples", 2, "--grid", 3, "--out", tmp_path / "c", "--quiet")
    assert done.returncode == 0 and "curve subspace, rank 2: 2 samples" in done.stdout, done.stderr
    done = run_cli("subspace", "--ckpt", swag, "--method", "vi", "--vi-epochs", 2, "--samples", 2, "--out",
                   tmp_path / "v", "--quiet")
    assert done.returncode == 0 and "pca subspace, rank 2: 2 samples, T 1, VI, sigma" in done.stdout, done.stderr
    done = run_cli("subspace", "--ckpt", swag, "--method", "vi", "--vi-family", "realnvp", "--vi-epochs", 2,
                   "--samples", 2, "--out", tmp_path / "f", "--quiet")
    assert done.returncode == 0 and "T 1, VI with a RealNVP flow, z sd" in done.stdout, done.stderr
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["vi"]["family"] == "realnvp"
    assert (tmp_path / "f" / "subspace.png").exists()
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["command"] == "subspace" and config["basis"] == "curve" and config["grid"] == 3
    assert (tmp_path / "c" / "subspace.png").exists() and not (tmp_path / "c" / "grid.partial.npz").exists()
    model = runs / "a" / "model.pt"
    for argv, said in (
            (["--ckpt", model], f"{model}: holds neither SWAG moments nor a curve; give swag.pt (from 'landscape swa "
                                f"--swag-rank K') or a curve (from 'landscape connect')"),
            (["--ckpt", curve, "--basis", "pca"],
             f"{curve}: a curve checkpoint gives the 'curve' subspace, not 'pca' (pca and random need swag.pt from "
             f"'landscape swa --swag-rank K')"),
            (["--ckpt", curve, "--rank", 3], "--rank 3: the curve subspace is a plane (rank 2)"),
            (["--ckpt", swag, "--basis", "curve"],
             "swag.pt gives a 'pca' or 'random' subspace, not 'curve' (the 'curve' subspace needs a curve checkpoint)"),
            (["--ckpt", swag, "--rank", 9],
             "--rank 9: the SWAG deviations span only 4 direction(s) (4 deviation(s) kept of the 5 iterates "
             "averaged); use --rank 4 or collect more with a larger --swag-rank"),
            (["--ckpt", swag, "--temperature", 0], "--temperature must be a finite number > 0, got 0.0"),
            (["--ckpt", swag, "--chains", 0], "--chains must be a whole number of at least 1, got 0"),
            (["--ckpt", swag, "--burn-in", -1], "--burn-in must be a whole number of at least 0, got -1"),
            (["--ckpt", swag, "--grid", 1], "--grid must be 0 (none) or a whole number of at least 2, got 1"),
            (["--ckpt", swag, "--rank", 0], "--rank must be a whole number of at least 1, got 0"),
            (["--ckpt", swag, "--method", "vi", "--chains", 2],
             "--chains and --burn-in are the samplers' (--method ess or nuts); VI draws independent samples"),
            (["--ckpt", swag, "--method", "vi", "--vi-lr", 0], "--vi-lr must be a finite number > 0, got 0.0"),
            (["--ckpt", swag, "--method", "vi", "--vi-batch-size", 1],
             "--vi-batch-size must be a whole number of at least 2, got 1"),
            (["--ckpt", swag, "--vi-lr", 0.5, "--vi-epochs", 3], "--vi-epochs, --vi-lr: for --method vi"),
            (["--ckpt", swag, "--seed", -1], "--seed must be a whole number from 0 to 2^63 - 1, got -1"),
            (["--ckpt", curve, "--seed", 2 ** 64], f"--seed must be a whole number from 0 to 2^63 - 1, got {2 ** 64}"),
            (["--ckpt", swag, "--rank", 1, "--grid", 5], "--grid draws the first two coordinates; this subspace has 1")):
        code = cli.main(naming_digits(("subspace", *argv, "--out", tmp_path / "x")))  # in process: quicker
        err = capsys.readouterr().err
        assert code == 2 and err.strip() == f"landscape: error: {said}", err
    assert not (tmp_path / "x").exists()


def randomised_flow(k, seed):
    torch.manual_seed(seed)
    flow = subspace_module.RealNVP(k)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.5)  # away from the identity it starts at
    return flow


@pytest.mark.parametrize("k", [2, 3])
def test_realnvp_log_det_is_the_jacobians_and_q_is_the_density_of_its_draws(k):
    flow = randomised_flow(k, k)
    eps = torch.randn(5, k, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x, log_det = flow(eps)
    assert not torch.allclose(x, eps)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda e: flow(e[None])[0][0], eps[i])
        assert float(log_det[i].detach()) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-10)
    # q(z) by the change of variables, at the draws (k = 2): for any region B, E_q[1_B / q] is B's area, so
    # over the draws in each well-filled bin of a grid, the sum of 1 / (n q) is the bin's area
    mu, sigma = torch.tensor([0.2, -0.4, 0.1][:k], dtype=torch.float64), torch.tensor([0.7, 1.3, 0.9][:k],
                                                                                          dtype=torch.float64)
    draws = torch.randn(200_000, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z, est = subspace_module.flow_kl(draws, mu, sigma, flow, 1.0)
    assert float(est.mean()) > 0  # the KL estimate: E_q[log q - log prior] >= 0
    if k == 2:
        # log q = est + log prior; the prior N(0, I) with its constant
        q = np.exp((est - 0.5 * (z * z).sum(1)).numpy() - np.log(2 * np.pi))
        zn = z.numpy()
        box = [np.quantile(zn[:, i], [0.05, 0.95]) for i in range(2)]
        hist, xe, ye = np.histogram2d(zn[:, 0], zn[:, 1], bins=15, range=box)
        ix, iy = np.digitize(zn[:, 0], xe) - 1, np.digitize(zn[:, 1], ye) - 1
        inside = (ix >= 0) & (ix < 15) & (iy >= 0) & (iy < 15)
        inverse = np.zeros((15, 15))
        np.add.at(inverse, (ix[inside], iy[inside]), 1.0 / (len(zn) * q[inside]))
        filled = hist > 2000
        assert filled.sum() >= 10
        assert inverse[filled] == pytest.approx(np.full(filled.sum(), (xe[1] - xe[0]) * (ye[1] - ye[0])), rel=0.05)


def test_a_realnvp_fit_follows_its_elbos_gradient_and_its_draws_go_through_the_flow(runs, small_digits):
    sub = vi_subspace(runs)
    n, lr, temperature, prior, init = len(small_digits.y_train), 0.05, 20.0, 0.7, 0.4
    res = sample_subspace(sub, method="vi", vi_family="realnvp", vi_epochs=1, vi_batch_size=n, vi_lr=lr,
                          vi_init_std=init, samples=3, temperature=temperature, prior_scale=prior, seed=5,
                          data=small_digits)
    eps = torch.randn(2, generator=torch.Generator().manual_seed(subspace_module.vi_seeds(5, 0)[1]),
                      dtype=torch.float64).numpy()
    net = copy.deepcopy(sub.model).train()
    space = ParamSpace.of(net)

    def objective(mu):  # the flow starts as the identity: z = mu + sigma eps, KL by the one draw
        sigma = np.log1p(np.exp(np.log(np.expm1(init)))) + 1e-6
        z = mu + sigma * eps
        net.load_state_dict(space.unflatten(sub.weights(z)), strict=False)
        with torch.no_grad():
            nll = torch.nn.functional.cross_entropy(net(small_digits.x_train), small_digits.y_train).double().item()
        kl = -0.5 * eps @ eps - 2 * np.log(sigma) + 0.5 * z @ z / prior ** 2 + 2 * np.log(prior)
        return nll + temperature * kl / n

    mu0, h = np.array([0.5, -0.3]), 1e-3
    grad = np.array([(objective(mu0 + h * e) - objective(mu0 - h * e)) / (2 * h) for e in np.eye(2)])
    vi = res.summary["vi"]
    assert vi["family"] == "realnvp" and vi["mu"] == pytest.approx(mu0 - lr * grad, abs=2e-5)
    # the flow moved off the identity, and the draws are mu + sigma g(eps), eps from the seed
    flow = subspace_module.RealNVP(2)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(res.arrays["vi_flow"]), flow.parameters())
    assert np.abs(res.arrays["vi_flow"][-8:]).max() > 0
    e = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 2)))
    want = subspace_module.flow_kl(e, torch.tensor(vi["mu"], dtype=torch.float64),
                                   torch.tensor(vi["sigma"], dtype=torch.float64), flow, prior)[0]
    assert res.arrays["z"] == pytest.approx(want.detach().numpy(), abs=1e-12)
    assert not np.allclose(res.arrays["z"], np.asarray(vi["mu"]) + np.asarray(vi["sigma"]) * e.numpy(), atol=1e-9)


def test_the_vi_family_is_checked(tmp_path, runs, small_digits, monkeypatch):
    sub = vi_subspace(runs)
    kw = dict(method="vi", vi_family="realnvp", vi_epochs=3, vi_lr=0.05, samples=3, data=small_digits, seed=2)
    # a stopped fit whose saved flow has another size than this build's flow: one line, not a misaligned load
    original = subspace_module.vi_seeds

    class Stop(Exception):
        pass

    monkeypatch.setattr(subspace_module, "vi_seeds", lambda seed, epoch: (_ for _ in ()).throw(Stop()) if epoch == 1
                        else original(seed, epoch))
    with pytest.raises(Stop):
        sample_subspace(sub, tmp_path / "cut", **kw)
    monkeypatch.setattr(subspace_module, "vi_seeds", original)
    store = tmp_path / "cut" / "sweep.partial.npz"
    with np.load(store) as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["flow"] = np.concatenate([arrays["flow"], [0.0]])
    np.savez(store, **arrays)
    with pytest.raises(UserError, match="saved state does not fit its flow; delete it to start again"):
        sample_subspace(sub, tmp_path / "cut", **kw, resume=True)
    with pytest.raises(UserError, match="unknown --vi-family 'iaf'"):
        sample_subspace(sub, **dict(kw, vi_family="iaf"))
    with pytest.raises(UserError, match="--vi-family is VI's"):
        sample_subspace(sub, samples=2, vi_family="realnvp", data=small_digits)
    line = swag_subspace(runs / "swa" / "swag.pt", "pca", 1)
    with pytest.raises(UserError, match="realnvp needs a subspace of rank 2 or more; this one has 1"):
        sample_subspace(line, **kw)
