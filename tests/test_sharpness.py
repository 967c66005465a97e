"""Sharpness: Hessian-vector products against the explicit Hessian, Lanczos
against a full eigendecomposition, Hutchinson against closed forms, and the
command's storing, resuming and refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape.evaluate as engine_module
import landscape.sharpness as sharpness_module
from landscape.data import Dataset
from landscape.errors import UserError
from landscape.checkpoint import load_model
from landscape.sharpness import (TrainLoss, evaluate_sharpness, hessian_bn, hessian_spectrum, hutchinson,
                                 hutchinson_trace, lanczos, layer_blocks, spectral_density)
from landscape.train import train
from landscape.weights import ParamSpace
from tests.test_plane_rays import one_line, run_cli


def small_data(seed: int = 0, n: int = 48) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(name="t", x_train=torch.randn(n, 4, generator=g), y_train=torch.randint(0, 3, (n,), generator=g),
                   x_test=torch.randn(20, 4, generator=g), y_test=torch.randint(0, 3, (20,), generator=g),
                   num_classes=3, mean=(0.0,), std=(1.0,))


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))


def explicit_hessian(net: nn.Module, data: Dataset, w: torch.Tensor, batch: int | None) -> torch.Tensor:
    """The Hessian of the mean train NLL in float64 by torch.autograd.functional.hessian: the whole set as
    one batch normalised by its own statistics, or batches of ``batch`` each by their own."""
    net64 = __import__("copy").deepcopy(net).double().train()
    for m in net64.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # the loss is the network's without dropout
    space = ParamSpace.of(net64)
    x, y = data.x_train.double(), data.y_train
    size = batch or len(y)

    def f(w):
        total = 0.0
        for i in range(0, len(y), size):
            logits = functional_call(net64, space.unflatten(w), (x[i:i + size],))
            total = total + F.cross_entropy(logits, y[i:i + size], reduction="sum")
        return total / len(y)

    return torch.autograd.functional.hessian(f, w.double())


# ------------------------------------------------------------ H v
@pytest.mark.parametrize("bn,batch", [("population", None), ("batches", 16)])
def test_hessian_vector_products_are_the_explicit_hessians(bn, batch):
    data, net = small_data(), bn_net()
    w = ParamSpace.of(net).flatten(net).detach()
    H = explicit_hessian(net, data, w, batch)
    loss = TrainLoss(net, data, bn, batch_size=batch or 1000)
    for seed in range(3):
        v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(loss.hvp(w, v), H @ v, rtol=2e-5, atol=2e-6)
    assert loss.hvps == 3


def test_products_of_a_convnet_on_images_keep_float32s_accuracy():
    """Images would go channels-last, whose batch-norm backward sums lose
    digits on the CPU (an untrained convnet's products: 1.9e-4 - 3.7e-4 from
    float64 against 3e-6 - 5e-6 NCHW): the products run on NCHW batches.
    Against the same double backward in float64."""
    from landscape.data import load_dataset
    from landscape.models import create_model

    data = load_dataset("digits")
    torch.manual_seed(0)
    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=8)
    loss = TrainLoss(net, data, "population")
    w = loss.space.flatten(loss.net).detach()
    v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net64 = __import__("copy").deepcopy(loss.net).double()  # batch norm in train mode, as the loss's
    w64 = w.double().requires_grad_(True)
    nll = F.cross_entropy(functional_call(net64, loss.space.unflatten(w64), (data.x_train.double(),)), data.y_train)
    (g,) = torch.autograd.grad(nll, w64, create_graph=True)
    (want,) = torch.autograd.grad(g @ v, w64)
    got = loss.hvp(w, v)
    assert float((got - want).norm() / want.norm()) < 5e-5


def test_dropout_is_off_and_a_one_sample_last_batch_joins_the_one_before():
    data = small_data()
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3))
    w = ParamSpace.of(net).flatten(net).detach()
    v = torch.randn(w.numel(), dtype=torch.float64)
    # 48 samples in batches of 47: the last one (1 sample) is normalised with the 47 before it, i.e. the whole set
    want = explicit_hessian(net, data, w, None)
    got = TrainLoss(net, data, "batches", batch_size=47).hvp(w, v)
    torch.testing.assert_close(got, want @ v, rtol=2e-5, atol=2e-6)


def test_a_non_finite_product_is_one_line():
    with pytest.raises(UserError, match="Hessian-vector product was not finite"):
        lanczos(lambda v: v * float("nan"), 5, 3)


def test_without_batch_norm_batches_give_the_whole_sets_hessian():
    data = small_data()
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    w = ParamSpace.of(net).flatten(net).detach()
    H = explicit_hessian(net, data, w, None)
    assert hessian_bn(net, data, "auto") == "batches"
    v = torch.randn(w.numel(), dtype=torch.float64)
    torch.testing.assert_close(TrainLoss(net, data, "batches", batch_size=7).hvp(w, v), H @ v, rtol=2e-5, atol=2e-6)


def test_auto_batch_norm_falls_back_to_batches_when_the_double_backward_does_not_fit(monkeypatch):
    data, net = small_data(), bn_net()
    assert hessian_bn(net, data, "auto") == "population"
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1.0)
    assert hessian_bn(net, data, "auto") == "batches"
    assert hessian_bn(net, data, "population") == "population"  # asked for: kept
    with pytest.raises(UserError, match="unknown --bn-stats 'exact'"):
        hessian_bn(net, data, "exact")


class TwiceNormed(nn.Module):
    """One batch-norm layer called twice in a forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.bn, self.out = nn.Linear(4, 5), nn.Linear(5, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.bn(self.b(torch.tanh(self.bn(self.a(x)))))))


class Tempered(nn.Module):
    """A network with a learnable scalar (0-dim) temperature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.temperature = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), \
            nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.body(x) / self.temperature


def test_networks_the_double_backward_must_not_be_trusted_with_and_a_scalar_parameter():
    """A batch-norm layer called twice was differentiated with the whole set as one batch, another function than
    the engine's (it refuses population there); weight_norm's double backward in torch 2.13 is wrong, and its
    curvature was reported, asymmetric and 2-3 % off, with small residuals; a 0-dim parameter failed in
    reshape() with a traceback."""
    data = small_data()
    twice = TwiceNormed()
    assert hessian_bn(twice, data, "auto") == "batches" and hessian_bn(twice, data, "batches") == "batches"
    with pytest.raises(UserError, match=r"^--bn-stats population needs each batch-norm layer to run once per "
                                        r"forward, but bn runs more than once; use --bn-stats batches$"):
        hessian_bn(twice, data, "population")
    torch.manual_seed(0)
    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 6)), nn.Tanh(), nn.Linear(6, 3))
    w = ParamSpace.of(normed).flatten(normed).detach()
    with pytest.raises(UserError, match=r"^the network: its Hessian-vector products are not symmetric \(.* of their "
                                        r"size, where rounding gives 1e-7\): torch's double backward"):
        hessian_spectrum(normed, w, data, top=1, iters=3, trace_samples=2)
    h = hutchinson(lambda v: random_symmetric(8, 0) @ v, 8, 2)
    assert h.asymmetry < 1e-12  # a symmetric matrix's products
    skew = random_symmetric(8, 0) + 0.1 * torch.triu(torch.ones(8, 8, dtype=torch.float64), 1)
    assert hutchinson(lambda v: skew @ v, 8, 2).asymmetry > 1e-3
    net = Tempered()
    w = ParamSpace.of(net).flatten(net).detach()
    s = hessian_spectrum(net, w, data, iters=ParamSpace.of(net).numel, trace_samples=2, seed=1)
    eig = torch.linalg.eigvalsh(explicit_hessian(net, data, w, None)).numpy()
    np.testing.assert_allclose(s.ritz[:3], eig[::-1][:3], rtol=1e-4, atol=1e-5)


def test_instance_norm_that_keeps_running_statistics_is_refused():
    """In train mode (the Hessian's batch norm) it would normalise each image by itself: another function."""
    data = small_data()
    net = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)), nn.InstanceNorm1d(2, track_running_stats=True),
                        nn.Flatten(), nn.Linear(6, 3))
    for bn_stats in ("auto", "batches", "population"):
        with pytest.raises(UserError, match=r"instance norm normalises each image by itself.*\(layer 2\): not supported"):
            hessian_bn(net, data, bn_stats)
    net[2].track_running_stats = False  # normalised by each image in eval mode too: nothing to estimate
    net[2].running_mean = net[2].running_var = net[2].num_batches_tracked = None
    assert hessian_bn(net, data, "auto") == "batches"


# ------------------------------------------------------------ Lanczos, Hutchinson
def random_symmetric(n: int, seed: int) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a + a.T) / 2


def test_lanczos_with_as_many_steps_as_dimensions_finds_every_eigenvalue():
    A = random_symmetric(12, 0)
    ritz, residual, _, _ = lanczos(lambda v: A @ v, 12, 12, seed=3)
    np.testing.assert_allclose(ritz, torch.linalg.eigvalsh(A).flip(0).numpy(), atol=1e-9)
    assert residual.max() < 1e-6


def test_lanczos_ritz_values_lie_within_their_residual_of_an_eigenvalue():
    A = random_symmetric(60, 1)
    A[0, 0] += 30.0  # one well-separated top eigenvalue, which converges first
    eig = torch.linalg.eigvalsh(A).numpy()
    ritz, residual, _, _ = lanczos(lambda v: A @ v, 60, 15, seed=0)
    assert len(ritz) == 15
    for theta, r in zip(ritz, residual):
        assert np.abs(eig - theta).min() <= r + 1e-9
    assert ritz[0] <= eig[-1] + 1e-9 and ritz[0] == pytest.approx(eig[-1], rel=1e-8)  # from below, converged
    assert residual[0] < 1e-3 < residual[1:].max()  # the converged one says so, the others do not
    assert ritz[-1] >= eig[0] - 1e-9  # interlacing: inside the spectrum


def test_lanczos_stops_when_the_krylov_space_closes():
    A = torch.diag(torch.tensor([3.0, 3.0, 1.0, 1.0], dtype=torch.float64))  # two distinct eigenvalues
    ritz, residual, weights, _ = lanczos(lambda v: A @ v, 4, 4, seed=0)
    np.testing.assert_allclose(ritz, [3.0, 1.0], atol=1e-12)
    v = torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # the start: seed 0's first draw
    np.testing.assert_allclose(weights, [float(v[:2] @ v[:2] / (v @ v)), float(v[2:] @ v[2:] / (v @ v))], rtol=1e-10)


def test_lanczos_quadrature_weights_are_the_starts_share_of_each_eigenvector():
    # all the steps: the Ritz pairs are A's eigenpairs, and the weight of each is (u_i . v)^2 for the unit start v
    A = random_symmetric(10, 4)
    lam, U = torch.linalg.eigh(A)
    for run in (0, 2):
        gen = torch.Generator().manual_seed(7)
        v = [torch.randn(10, generator=gen, dtype=torch.float64) for _ in range(run + 1)][-1]
        v = v / v.norm()
        values, _, weights, _ = lanczos(lambda x: A @ x, 10, 10, seed=7, run=run)
        np.testing.assert_allclose(values, lam.flip(0).numpy(), atol=1e-9)
        np.testing.assert_allclose(weights, ((U.T @ v) ** 2).flip(0).numpy(), atol=1e-10)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_lanczos_quadrature_matches_the_starts_moments_up_to_degree_2m_minus_1():
    # Gauss quadrature with m nodes is exact for polynomials of degree < 2m: sum_j w_j theta_j^k = v^T A^k v
    A = random_symmetric(40, 5) / 6
    m = 6
    values, _, weights, _ = lanczos(lambda x: A @ x, 40, m, seed=1)
    v = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = v / v.norm()
    Akv = v.clone()
    for k in range(2 * m + 2):
        exact = float(v @ Akv)
        quadrature = float((weights * values ** k).sum())
        if k < 2 * m:
            assert quadrature == pytest.approx(exact, rel=1e-8, abs=1e-12), k
        elif k == 2 * m:
            assert abs(quadrature - exact) > 1e-6  # degree 2m is no longer exact (the test can tell)
        Akv = A @ Akv


def test_the_spectral_density_averages_runs_and_integrates_to_one():
    nodes = np.array([[1.0, -2.0, np.nan], [0.5, 0.5, 3.0]])
    weights = np.array([[0.25, 0.75, np.nan], [0.5, 0.25, 0.25]])
    grid = np.linspace(-6, 7, 20001)
    sigma = 0.3
    d = spectral_density(nodes, weights, grid, sigma)
    assert np.trapezoid(d, grid) == pytest.approx(1.0, rel=1e-6)
    # by hand at t = 0.5: half of each run's sum of w N(0.5; theta, sigma^2)
    gauss = lambda t, m: np.exp(-0.5 * ((t - m) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))  # noqa: E731
    want = 0.5 * (0.25 * gauss(0.5, 1.0) + 0.75 * gauss(0.5, -2.0)) + 0.5 * (0.75 * gauss(0.5, 0.5) + 0.25 * gauss(0.5, 3.0))
    assert spectral_density(nodes, weights, np.array([0.5]), sigma)[0] == pytest.approx(want, rel=1e-12)
    # the mean of the density is the mean over runs of sum w theta
    assert np.trapezoid(grid * d, grid) == pytest.approx(0.5 * (0.25 - 1.5) + 0.5 * (0.25 + 0.125 + 0.75), rel=1e-6)
    with pytest.raises(UserError, match="width must be positive"):
        spectral_density(nodes, weights, grid, 0.0)


def test_many_density_runs_estimate_the_eigenvalue_distribution():
    # averaged over starts, the quadrature's k-th moment is tr(A^k) / n (Gaussian starts, normalised)
    A = torch.diag(torch.tensor([-1.0] * 5 + [0.0] * 25 + [2.0] * 10, dtype=torch.float64))
    runs = [lanczos(lambda x: A @ x, 40, 8, seed=3, run=r) for r in range(200)]
    for k in (1, 2):
        est = np.mean([(r.weights * r.values ** k).sum() for r in runs])
        assert est == pytest.approx(float((torch.diag(A) ** k).mean()), abs=0.05)
    negative = np.mean([r.weights[r.values < -0.5].sum() for r in runs])
    assert negative == pytest.approx(5 / 40, abs=0.03)


def test_hutchinson_is_exact_for_a_diagonal_and_unbiased_for_any_matrix():
    d = torch.arange(1.0, 9.0, dtype=torch.float64)
    trace, se, draws = hutchinson_trace(lambda v: d * v, 8, 5, seed=0)
    assert trace == pytest.approx(36.0) and se == pytest.approx(0.0, abs=1e-12)  # v_i^2 = 1
    A = random_symmetric(30, 2)
    trace, se, draws = hutchinson_trace(lambda v: A @ v, 30, 400, seed=1)
    assert abs(trace - float(A.trace())) < 4 * se
    assert (trace, se) == (pytest.approx(draws.mean()), pytest.approx(draws.std(ddof=1) / 20))
    # the variance is 2 * sum of squared off-diagonal entries (Hutchinson 1990)
    off = A - torch.diag(torch.diag(A))
    assert draws.var(ddof=1) == pytest.approx(2 * float((off ** 2).sum()), rel=0.25)


def rademacher(numel: int, samples: int, seed: int) -> torch.Tensor:
    """The Rademacher vectors (samples, numel) Hutchinson's estimate draws with ``seed``, drawn again."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.stack([torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8).double() * 2 - 1
                        for _ in range(samples)])


def test_layer_blocks_are_each_modules_run_of_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2))
            self.body = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 2, bias=False))

        def forward(self, x):
            return self.body(x) * self.scale

    space = ParamSpace.of(Net())
    assert layer_blocks(space) == [("(model)", 0, 2), ("body.0", 2, 10), ("body.1", 10, 14), ("body.2", 14, 18)]
    assert layer_blocks(space)[-1][2] == space.numel
    assert layer_blocks(ParamSpace.of(nn.Linear(3, 2))) == [("(model)", 0, 8)]  # the model's own weight and bias
    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 2)), nn.Linear(2, 2))
    assert layer_blocks(ParamSpace.of(normed)) == [("0", 0, 10), ("1", 10, 16)]  # bias, g and v: one layer


def test_hutchinson_by_block_splits_each_draw_and_is_unbiased_for_each_diagonal_block():
    A = random_symmetric(30, 4)
    blocks = [(0, 7), (7, 8), (8, 30)]
    h = hutchinson(lambda v: A @ v, 30, 600, seed=3, blocks=blocks)
    assert (h.trace, h.se) == hutchinson_trace(lambda v: A @ v, 30, 600, seed=3)[:2]  # the same draws
    np.testing.assert_allclose(h.block_draws.sum(1), h.draws, rtol=1e-12, atol=1e-12)
    V = rademacher(30, 600, 3)
    want = torch.stack([(V[:, a:b] * (V @ A)[:, a:b]).sum(1) for a, b in blocks], 1).numpy()  # v_b^T (A v)_b
    np.testing.assert_allclose(h.block_draws, want, rtol=1e-12, atol=1e-12)
    for (a, b), draws in zip(blocks, h.block_draws.T):
        se = draws.std(ddof=1) / np.sqrt(len(draws))
        assert abs(draws.mean() - float(A[a:b, a:b].trace())) < 4 * se + 1e-12
    d = torch.arange(1.0, 31.0, dtype=torch.float64)  # a diagonal matrix: every draw is each block's trace
    exact = hutchinson(lambda v: d * v, 30, 3, seed=0, blocks=blocks).block_draws
    np.testing.assert_allclose(exact, [[float(d[a:b].sum()) for a, b in blocks]] * 3, rtol=1e-15)


def test_the_spectrum_of_a_network_matches_its_explicit_hessian():
    data, net = small_data(3), bn_net(3)
    w = ParamSpace.of(net).flatten(net).detach()
    eig = torch.linalg.eigvalsh(explicit_hessian(net, data, w, None)).numpy()
    s = hessian_spectrum(net, w, data, iters=ParamSpace.of(net).numel, trace_samples=300, seed=2,
                         bn_stats="population")
    np.testing.assert_allclose(s.ritz[:3], eig[::-1][:3], rtol=1e-4, atol=1e-5)
    assert s.ritz[-1] == pytest.approx(eig[0], abs=1e-4)
    assert s.residual[0] < 1e-4  # measured with one more product: converged, up to float32
    # a few steps: not converged, and the measured residuals say so and still bound the distance
    few = hessian_spectrum(net, w, data, top=2, iters=4, trace_samples=2, seed=2, bn_stats="population")
    for i in (0, 1, len(few.ritz) - 1):
        assert np.abs(eig - few.ritz[i]).min() <= few.residual[i] + 1e-5
    assert few.residual[-1] > 1e-3 and few.ritz[-1] > eig[0] + 1e-3  # the lowest Ritz value: only an upper bound
    # the density's runs: the first is the eigenvalues' run, the others Lanczos on H from the seed's later draws
    dens = hessian_spectrum(net, w, data, top=2, iters=4, trace_samples=2, seed=2, bn_stats="population",
                            density_runs=3)
    assert dens.hvps == few.hvps + 2 * 4 and dens.density_nodes.shape == (3, 4)
    np.testing.assert_array_equal(dens.density_nodes[0], few.ritz)
    H = torch.from_numpy(explicit_hessian(net, data, w, None).numpy())
    for r in range(3):
        want = lanczos(lambda v: H @ v, len(w), 4, seed=2, run=r)
        np.testing.assert_allclose(dens.density_nodes[r], want.values, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(dens.density_weights[r], want.weights, rtol=1e-3, atol=1e-5)
    assert not np.allclose(dens.density_nodes[1], dens.density_nodes[2])  # other starts
    assert abs(s.trace - eig.sum()) < 4 * s.trace_se
    # the layers' trace draws are v_b^T (H v)_b for the explicit H and the trace's own Rademacher vectors
    layers = layer_blocks(ParamSpace.of(net))
    assert [name for name, _, _ in layers] == ["0", "1", "3"] and s.layer_trace_draws.shape == (300, 3)
    V, H = rademacher(len(w), 300, 2), torch.from_numpy(explicit_hessian(net, data, w, None).numpy())
    want = torch.stack([(V[:, a:b] * (V @ H)[:, a:b]).sum(1) for _, a, b in layers], 1).numpy()
    np.testing.assert_allclose(s.layer_trace_draws, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.layer_trace_draws.sum(1), s.trace_draws, rtol=1e-12, atol=1e-12)
    assert np.isnan(s.layer_top).all()  # not asked for
    # each layer's top eigenvalue: its diagonal block's, found exactly with as many steps as its parameters
    blocks = hessian_spectrum(net, w, data, top=1, iters=2, trace_samples=2, seed=2, bn_stats="population",
                              layer_iters=25)
    want = [float(torch.linalg.eigvalsh(H[a:b, a:b]).max()) for _, a, b in layers]
    np.testing.assert_allclose(blocks.layer_top, want, rtol=1e-4, atol=1e-6)
    assert (blocks.layer_top <= eig.max() + 1e-6).all()  # Cauchy's interlacing
    assert blocks.hvps <= 2 + 2 + 2 + 25 + 10 + 18  # Lanczos, 2 residuals, the trace, then each block at most its size
    assert s.hvps == len(s.ritz) + 6 + 300  # Lanczos, the residuals of the top 5 and the lowest, the trace; the Krylov space may close early: batch norm leaves flat directions
    with torch.no_grad():
        logits = net.train()(data.x_train)
    assert s.train_nll == pytest.approx(float(F.cross_entropy(logits, data.y_train)), rel=1e-5)


def test_weights_where_the_loss_overflows_are_refused():
    data, net = small_data(), bn_net()
    w = ParamSpace.of(net).flatten(net).detach()
    w[-3:] = 1e38  # the head's bias: logits overflow
    w[-4] = -1e38
    with pytest.raises(UserError, match="train NLL is (nan|inf)"):
        hessian_spectrum(net, w, data, top=1, iters=2, trace_samples=2)


# ------------------------------------------------------------ the result folder
def test_results_are_stored_per_network_and_resume_after_an_interruption(tmp_path, monkeypatch, capsys):
    data = small_data()
    net = bn_net()
    space = ParamSpace.of(net)
    vectors = [space.flatten(bn_net(s)).detach() for s in (0, 1, 2)]
    kw = dict(labels=["a", "b", "c"], iters=6, trace_samples=3, seed=4, wd=0.01)
    whole = evaluate_sharpness(net, vectors, data, tmp_path / "whole", **kw)

    def stop_after_b(label, spectrum):
        if label == "b":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_sharpness(net, vectors, data, tmp_path / "cut", on_network=stop_after_b, **kw)
    assert not (tmp_path / "cut" / "sharpness.npz").exists()
    with pytest.raises(UserError, match="unfinished sweep; pass --resume"):
        evaluate_sharpness(net, vectors, data, tmp_path / "cut", **kw)
    calls = []
    real = sharpness_module.hessian_spectrum
    monkeypatch.setattr(sharpness_module, "hessian_spectrum", lambda *a, **k: calls.append(1) or real(*a, **k))
    capsys.readouterr()
    resumed = evaluate_sharpness(net, vectors, data, tmp_path / "cut", resume=True, **kw)
    assert len(calls) == 1  # only c: a was stored before b, and b's store was written before the interruption
    assert f"{tmp_path / 'cut'}: resuming: kept 2 of 3 networks, 1 to evaluate" in capsys.readouterr().err
    for key in ("ritz", "residual", "trace", "trace_draws", "train_nll", "density_nodes", "density_weights",
                "layer_trace_draws", "layer_names", "layer_sizes"):
        np.testing.assert_array_equal(resumed.arrays[key], whole.arrays[key], err_msg=key)
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert [n["label"] for n in summary["networks"]] == ["a", "b", "c"]
    assert summary["networks"][2]["top_eigenvalues"] == whole.summary["networks"][2]["top_eigenvalues"]
    assert summary["networks"][1]["lowest_ritz_value"] == float(np.nanmin(whole.arrays["ritz"][1]))
    assert not (tmp_path / "cut" / "sweep.partial.npz").exists()
    with pytest.raises(UserError, match="finished sharpness result of other settings: seed 4, now 5; choose"):
        evaluate_sharpness(net, vectors, data, tmp_path / "cut", resume=True, **dict(kw, seed=5))
    # counts given as NumPy numbers (from a loop over np.arange) are the same settings as the ints: they were
    # keyed and stored as the strings "6" and "3", and a resume with 6 and 3 was refused as other settings
    numpy_counts = dict(kw, iters=np.int64(6), trace_samples=np.int64(3), seed=np.int64(4), wd=np.float64(0.01))
    again = evaluate_sharpness(net, vectors, data, tmp_path / "cut", resume=True, **numpy_counts)
    assert again.summary["networks"][2]["top_eigenvalues"] == whole.summary["networks"][2]["top_eigenvalues"]
    evaluate_sharpness(net, vectors, data, tmp_path / "np", **numpy_counts)
    assert json.loads((tmp_path / "np" / "summary.json").read_text())["request_settings"]["iters"] == 6
    evaluate_sharpness(net, vectors, data, tmp_path / "np", resume=True, **kw)


@pytest.mark.parametrize("options,message", [
    (dict(top=7, iters=6), "--top 7 is more than the --iters 6"),
    (dict(iters=0), "--iters must be a whole number of at least 1, got 0"),
    (dict(trace_samples=1), "--trace-samples must be a whole number of at least 2, got 1"),
    (dict(iters=2.5), "--iters must be a whole number of at least 1, got 2.5"),
    (dict(seed=-1), "--seed must be a whole number from 0 to 2^63 - 1, got -1"),
    (dict(seed=2 ** 70), "--seed must be a whole number from 0 to 2^63 - 1"),
    (dict(wd=-1.0), "--wd must be a finite number >= 0, got -1.0"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, monkeypatch, options, message):
    data, net = small_data(), bn_net()
    w = ParamSpace.of(net).flatten(net).detach()
    monkeypatch.setattr(sharpness_module, "lanczos", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate_sharpness(net, [w, w + 1], data, tmp_path / "x", **dict(dict(iters=6, trace_samples=3), **options))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_sharpness_of_two_trained_networks(tmp_path, capsys):
    for seed in (1, 2):
        train(out=tmp_path / f"r{seed}", epochs=2, seed=seed, progress=False, model="convnet",
              model_kwargs={"width": 4}, device="cpu")
    code, out, err = run_cli(capsys, "sharpness", tmp_path / "r1" / "model.pt", tmp_path / "r2" / "model.pt",
                             "--iters", 4, "--trace-samples", 2, "--top", 2, "--out", tmp_path / "s")
    assert code == 0, err
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [n["label"] for n in s["networks"]] == ["r1", "r2"] and s["bn"] == "population"
    for n in s["networks"]:
        assert len(n["top_eigenvalues"]) == 2 and n["top_eigenvalues"][0] >= n["top_eigenvalues"][1]
        assert n["hessian_vector_products"] == 4 + 3 + 2  # Lanczos, the residuals of 2 top and the lowest, trace
        # in a log (stderr no terminal), the products counted as they go, the plan met exactly
        assert f"{n['label']}: Hessian-vector products 9 of 9 (100 %) after " in err, err
        assert f"trace {n['trace']:.4g}" in out
        assert sum(n["layer_traces"]) == pytest.approx(n["trace"], rel=1e-9)  # the layers' shares add up
    assert [(x["name"], x["parameters"]) for x in s["layers"]] == [
        (name, int(size)) for name, size in zip(np.load(tmp_path / "s" / "sharpness.npz")["layer_names"],
                                                np.load(tmp_path / "s" / "sharpness.npz")["layer_sizes"])]
    assert sum(x["parameters"] for x in s["layers"]) == sum(p.numel() for p in load_model(
        tmp_path / "r1" / "model.pt").parameters())
    first = s["networks"][0]
    assert re.search(rf"^features\.0 +{s['layers'][0]['parameters']} +{first['layer_traces'][0]:.4g} ± ", out, re.M)
    assert "r1: top eigenvalue" in err and "r2: top eigenvalue" in err
    assert f"figure: {tmp_path / 's' / 'sharpness.png'}" in out
    (tmp_path / "s" / "sharpness.png").unlink()
    code, out, err = run_cli(capsys, "plot", tmp_path / "s", "--format", "pdf")  # redrawn from the stored files
    assert code == 0, err
    assert (tmp_path / "s" / "sharpness.pdf").stat().st_size > 0
    code, out, err = run_cli(capsys, "sharpness", tmp_path / "r1" / "model.pt", "--iters", 3, "--trace-samples", 2,
                             "--top", 1, "--density-runs", 2, "--layer-iters", 2, "--out", tmp_path / "d")
    assert code == 0, err
    z = np.load(tmp_path / "d" / "sharpness.npz")
    assert z["density_nodes"].shape == (1, 2, 3) and np.allclose(np.nansum(z["density_weights"], -1), 1.0)
    d = json.loads((tmp_path / "d" / "summary.json").read_text())
    layers = len(d["layers"])  # 2 Lanczos steps on each layer's block
    assert d["networks"][0]["hessian_vector_products"] == 3 + 3 + 2 + 2 + 2 * layers and d["layer_iters"] == 2
    tops = d["networks"][0]["layer_top_eigenvalues"]
    assert len(tops) == layers and z["layer_top"].shape == (1, layers)
    assert max(tops) <= d["networks"][0]["top_eigenvalues"][0] * 1.01 + 1e-6  # interlacing, up to 2 steps' slack
    assert re.search(rf"^features\.0 +{d['layers'][0]['parameters']} +[-0-9.e+]+ ± [0-9.e+-]+ +{tops[0]:.4g}$", out, re.M)
    assert s["layer_iters"] == 0 and all(n["layer_top_eigenvalues"] is None for n in s["networks"])
    # the finished result resumed with another --wd: the term beside the NLL's Hessian as given (it was ignored)
    code, out, err = run_cli(capsys, "sharpness", tmp_path / "r1" / "model.pt", "--iters", 3, "--trace-samples", 2,
                             "--top", 1, "--density-runs", 2, "--layer-iters", 2, "--out", tmp_path / "d",
                             "--resume", "--wd", 0.1)
    assert code == 0 and "the weight-decay term adds 0.1 to every eigenvalue" in out, err
    stored = json.loads((tmp_path / "d" / "summary.json").read_text())["wd"]
    assert stored != 0.1  # the stored result is left as it is: reading it writes nothing
    code, out, err = run_cli(capsys, "sharpness", tmp_path / "r1" / "model.pt", "--iters", 3, "--trace-samples", 2,
                             "--top", 1, "--density-runs", 2, "--layer-iters", 2, "--out", tmp_path / "d",
                             "--resume")
    assert code == 0 and f"the weight-decay term adds {stored:g} to every eigenvalue" in out, err
    code, _, err = run_cli(capsys, "sharpness", tmp_path / "nothere.pt", "--out", tmp_path / "t")
    assert code != 0 and "no such checkpoint file" in one_line(err)
    code, _, err = run_cli(capsys, "sharpness", tmp_path / "r1" / "model.pt", "--top", 30, "--out", tmp_path / "u")
    assert code != 0 and "--top 30 is more than the --iters 20" in one_line(err)


def test_the_steps_reported_are_the_steps_taken(tmp_path):
    """--iters beyond a network's trained parameters was reported as taken ("20 Lanczos steps" for 11)."""
    from landscape.plots.sharpness import steps_taken

    data, net = small_data(), nn.Sequential(nn.Linear(4, 2), nn.Tanh(), nn.Linear(2, 3))  # 19 parameters
    w = ParamSpace.of(net).flatten(net).detach()
    r = evaluate_sharpness(net, [w, w * 1.1], data, tmp_path / "s", top=2, iters=40, trace_samples=2)
    steps = [n["lanczos_steps"] for n in r.summary["networks"]]
    assert r.summary["iters"] == 40 and all(s <= 19 for s in steps)
    assert steps_taken(r.summary) == "/".join(map(str, sorted(set(steps))))
    assert steps_taken({"iters": 20, "networks": [{}]}) == "20"  # a result stored before the count was kept
    with pytest.raises(UserError, match="^no networks given: sharpness measures the curvature at one or more$"):
        evaluate_sharpness(net, [], data)


def test_a_partial_store_marked_done_for_a_network_never_measured_is_refused(tmp_path):
    """An edited store whose done flags name a network it holds no result for
    (its train error NaN, as unmeasured networks are stored) used to give a
    result of NaN; it is refused in one line."""
    data, net = small_data(), bn_net()
    space = ParamSpace.of(net)
    vectors = [space.flatten(bn_net(s)).detach() for s in (0, 1)]
    kw = dict(labels=["a", "b"], iters=5, trace_samples=2, seed=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate_sharpness(net, vectors, data, tmp_path / "cut", on_network=lambda *a: (_ for _ in ()).throw(
            KeyboardInterrupt), **kw)
    store = tmp_path / "cut" / "sweep.partial.npz"
    with np.load(store) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["done"].tolist() == [True, False]
    arrays["done"][1] = True
    np.savez(store, **arrays)
    with pytest.raises(UserError, match=r"damaged partial results \(network 1 is marked done but holds no result\)"):
        evaluate_sharpness(net, vectors, data, tmp_path / "cut", resume=True, **kw)


def test_a_partial_store_from_before_the_density_resumes(tmp_path):
    data, net = small_data(), bn_net()
    space = ParamSpace.of(net)
    vectors = [space.flatten(bn_net(s)).detach() for s in (0, 1)]
    kw = dict(labels=["a", "b"], iters=5, trace_samples=2, seed=1)
    whole = evaluate_sharpness(net, vectors, data, tmp_path / "whole", **kw)
    with pytest.raises(KeyboardInterrupt):
        evaluate_sharpness(net, vectors, data, tmp_path / "old", on_network=lambda *a: (_ for _ in ()).throw(
            KeyboardInterrupt), **kw)
    store = tmp_path / "old" / "sweep.partial.npz"
    with np.load(store) as z:  # as the version before the density (and the layers) wrote it
        old = {k: z[k] for k in z.files if not k.startswith(("density_", "layer_"))}
    np.savez(store, **old)
    resumed = evaluate_sharpness(net, vectors, data, tmp_path / "old", resume=True, **kw)
    np.testing.assert_array_equal(resumed.arrays["ritz"], whole.arrays["ritz"])
    assert np.isnan(resumed.arrays["density_nodes"][0]).all()  # a's was not stored: no density for it
    np.testing.assert_array_equal(resumed.arrays["density_nodes"][1], whole.arrays["density_nodes"][1])
    np.testing.assert_array_equal(resumed.arrays["layer_trace_draws"][1], whole.arrays["layer_trace_draws"][1])
    a, b = resumed.summary["networks"]
    assert a["layer_traces"] is None and a["layer_trace_se"] is None  # nor a trace by layer
    assert b["layer_traces"] == whole.summary["networks"][1]["layer_traces"]
    from landscape.plots.sharpness import draw_sharpness_figure

    assert [p.name for p in draw_sharpness_figure(tmp_path / "old")] == ["sharpness.png"]
    summary = json.loads((tmp_path / "old" / "summary.json").read_text())  # as an earlier version wrote it
    del summary["layers"]
    (tmp_path / "old" / "summary.json").write_text(json.dumps(summary))
    assert [p.name for p in draw_sharpness_figure(tmp_path / "old", ("svg",))] == ["sharpness.svg"]
    with pytest.raises(UserError, match="--density-runs must be a whole number of at least 1, got 0"):
        evaluate_sharpness(net, vectors, data, tmp_path / "z", density_runs=0, **kw)


def test_a_lanczos_basis_larger_than_the_machines_memory_is_refused_before_any_work(tmp_path, monkeypatch):
    import landscape.device as device_module

    data, net = small_data(), bn_net()
    w = ParamSpace.of(net).flatten(net).detach()
    numel = w.numel()
    monkeypatch.setattr(device_module, "total_memory", lambda device: 8 * 10 * numel)  # room for 10 steps
    monkeypatch.setattr(sharpness_module, "lanczos", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(UserError, match=re.escape("--iters 11 (the Lanczos basis, steps x parameters float64) "
                                                  "needs ")):
        evaluate_sharpness(net, [w], data, tmp_path / "x", iters=11, trace_samples=2)
    assert not (tmp_path / "x").exists()
    # more steps than parameters cost only as many as there are parameters
    monkeypatch.setattr(device_module, "total_memory", lambda device: 8 * numel * numel)
    with pytest.raises(pytest.fail.Exception, match="work began"):
        evaluate_sharpness(net, [w], data, tmp_path / "y", iters=10 ** 9, trace_samples=2, top=1)


def test_batch_norm_without_running_statistics_is_named_not_none(small_digits):
    """Such a layer normalises each batch by its own statistics: the summary said "batch norm: none"."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(),
                        nn.Linear(8, 10))
    w = ParamSpace.of(net).flatten(net.state_dict())
    s = evaluate_sharpness(net, [w], small_digits, top=2, iters=4, trace_samples=2, batch_size=100).summary
    assert s["bn"] == sharpness_module.PER_BATCH
    assert "track_running_stats=False) normalise each batch of batch_size" in s["notes"]
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    s = evaluate_sharpness(plain, [ParamSpace.of(plain).flatten(plain.state_dict())], small_digits, top=2, iters=4,
                           trace_samples=2).summary
    assert s["bn"] is None and "batch norm: none in this network" in s["notes"]
