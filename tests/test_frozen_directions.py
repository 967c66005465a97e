"""Parameters a network does not train (requires_grad=False) stay put along
random directions (random planes, rays, random subspaces) and are outside
the Hessian that sharpness measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape.errors import UserError
from landscape.geometry import random_directions, random_plane_basis
from landscape.plane import evaluate_random_plane
from landscape.rays import evaluate_rays
from landscape.sharpness import hessian_spectrum
from landscape.subspace import random_basis
from landscape.weights import ParamSpace
from tests.test_sharpness import bn_net, explicit_hessian, small_data


def frozen_body(seed: int = 0) -> nn.Module:
    """bn_net with its first linear layer frozen."""
    net = bn_net(seed)
    net[0].requires_grad_(False)
    return net


class OnlyFrozenMatters(nn.Module):
    """Every parameter the output depends on is frozen; the one trained
    parameter is not used, so moving what the network trains changes nothing."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        self.body.requires_grad_(False)
        self.unused = nn.Parameter(torch.ones(2, 3))

    def forward(self, x):
        return self.body(x)


def test_trained_space_and_masked_directions():
    net = frozen_body()
    space = ParamSpace.of(net)
    trained = space.trained()
    assert trained.names == ("1.weight", "1.bias", "3.weight", "3.bias")
    mask = space.trainable_mask()
    assert trained.numel == int(mask.sum()) == space.numel - 4 * 5 - 5
    plain = random_directions(space.numel, 3, seed=4)
    masked = random_directions(space.numel, 3, seed=4, mask=mask)
    assert bool((masked[:, ~mask] == 0).all())
    torch.testing.assert_close(masked.norm(dim=1), torch.ones(3))
    # the kept coordinates are the same draws, rescaled to unit norm over them
    kept = plain[:, mask]
    torch.testing.assert_close(masked[:, mask], kept / kept.norm(dim=1, keepdim=True))
    # nothing frozen: the mask changes nothing
    full = ParamSpace.of(bn_net())
    assert full.trained() is full and full.trainable_mask() is None
    with pytest.raises(UserError, match="trains none"):
        random_directions(5, 1, 0, mask=torch.zeros(5, dtype=torch.bool))


@pytest.mark.parametrize("normalize", ["filter", "gaussian"])
def test_random_plane_axes_are_zero_on_frozen_parameters(normalize):
    net = frozen_body()
    space = ParamSpace.of(net)
    basis = random_plane_basis(space.flatten(net).detach(), space, normalize, seed=1)
    mask = space.trainable_mask()
    for axis in (basis.u, basis.v):
        assert bool((axis[~mask] == 0).all()) and float(axis[mask].norm()) > 0


def test_random_subspace_lies_in_the_trained_coordinates():
    net = frozen_body()
    space = ParamSpace.of(net)
    mask = space.trainable_mask()
    q = random_basis(space.numel, 3, 2.0, seed=5, mask=mask)
    assert bool((q[:, ~mask] == 0).all())
    torch.testing.assert_close(q.double() @ q.double().T, 4.0 * torch.eye(3, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


def test_planes_and_rays_do_not_move_what_the_network_does_not_train():
    """The loss depends only on frozen parameters: every point of a random plane
    and of every ray has the centre's loss (moving the frozen layers would change it)."""
    data = small_data()
    torch.manual_seed(0)
    net = OnlyFrozenMatters()
    space = ParamSpace.of(net)
    center = space.flatten(net).detach()
    plane = evaluate_random_plane(net, center, data, grid=3, seed=2, normalize="gaussian", span=5.0,
                                  bn_stats="population")
    loss = plane.arrays["train_loss"]
    np.testing.assert_allclose(loss, loss[1, 1], rtol=1e-6)
    rays = evaluate_rays(net, [center], data, directions=3, steps=2, distance=5.0, bn_stats="population")
    profile = rays.arrays["train_loss"]
    np.testing.assert_allclose(profile, profile[0, 0, 2], rtol=1e-6)


def test_sharpness_is_the_hessian_over_the_trained_parameters():
    """With as many Lanczos steps as trained parameters every eigenvalue of the
    trained block of the explicit Hessian is found; the layer blocks are the
    trained layers alone."""
    data, net = small_data(), frozen_body()
    space = ParamSpace.of(net)
    w = space.flatten(net).detach()
    H = explicit_hessian(net, data, w, None)
    idx = space.trainable_mask().nonzero().squeeze(1)
    block = H[idx][:, idx]
    n = idx.numel()
    spec = hessian_spectrum(net, w, data, top=3, iters=n, trace_samples=4000, bn_stats="population",
                            layer_iters=n)
    want = torch.linalg.eigvalsh(block).flip(0).numpy()
    np.testing.assert_allclose(spec.ritz[:3], want[:3], rtol=1e-4, atol=1e-5)
    assert spec.trace == pytest.approx(float(block.trace()), abs=4 * spec.trace_se)
    assert spec.layer_trace_draws.shape == (4000, 2)  # layers 1 (batch norm) and 3 (the head): not the frozen 0
    # the whole Hessian's largest eigenvalue differs: the frozen block counts there
    assert float(torch.linalg.eigvalsh(H)[-1]) > want[0] * (1 + 1e-3)
