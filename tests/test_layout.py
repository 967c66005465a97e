"""Channels-last image batches: the layout helper, which networks get them,
and that a network reading its activations as NCHW (``x.view(B, -1)`` after
a convolution, as the papers' VGG does) still evaluates, trains and has its
curvature measured, on NCHW batches."""

import dataclasses
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.data import load_dataset
from landscape.evaluate import evaluate_points, evaluate_points_sequential
from landscape.layout import image_layout, takes_channels_last, to_channels_last
from landscape.models import MODELS, create_model, register_model
from landscape.sharpness import TrainLoss
from landscape.train import train
from landscape.weights import ParamSpace

CHANNELS_LAST_STRIDES = {(5, 1, 8, 8): (64, 1, 8, 1), (5, 3, 4, 4): (48, 1, 12, 3)}


class ViewNet(nn.Module):
    """A convolution, then ``view`` of its output as if NCHW: fails on channels-last strides."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * h * w, num_classes)
        self.seen: list[tuple[int, ...]] = []  # the strides of the images each training forward got

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.stride())
        out = torch.relu(self.bn(self.conv(x)))
        return self.fc(out.view(out.size(0), -1))


class ContiguousOnly(ViewNet):
    """Refuses any input that is not NCHW-contiguous, with an error of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.is_contiguous(), "NCHW only"
        return super().forward(x)


class StridesConvNet(nn.Module):
    """The digits convnet, recording the strides of the images each training forward got."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = create_model("convnet", num_classes=num_classes, input_shape=input_shape, width=4)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.stride())
        return self.net(x)


@pytest.fixture(scope="module")
def cifar_shaped():
    return load_dataset("synthetic", synthetic_shape=(3, 8, 8), synthetic_sizes=(96, 32), seed=3)


@pytest.mark.parametrize("shape", sorted(CHANNELS_LAST_STRIDES))
def test_to_channels_last_gives_channels_last_strides_even_for_one_channel(shape):
    x = torch.randn(shape)
    y = to_channels_last(x)
    assert y.stride() == CHANNELS_LAST_STRIDES[shape]  # contiguous(channels_last) keeps (64, 64, 8, 1) for C = 1
    assert torch.equal(y, x)
    assert to_channels_last(y) is y  # already laid out: no copy
    w = torch.randn(2, 3, 1, 3, 3)  # two points' first-layer weights (O=3, I=1)
    v = to_channels_last(w)
    assert torch.equal(v, w) and all(v[k].stride() == (9, 1, 3, 1) for k in range(2))


def test_which_networks_take_channels_last(cifar_shaped):
    torch.manual_seed(0)
    view = ViewNet(10, (3, 8, 8))
    convnet = create_model("convnet", num_classes=10, input_shape=(3, 8, 8), width=4)
    mlp = create_model("mlp", num_classes=10, input_shape=(3 * 8 * 8,))
    x = cifar_shaped.x_train[:2]
    assert not takes_channels_last(view, x)
    assert not takes_channels_last(ContiguousOnly(10, (3, 8, 8)), x)
    assert takes_channels_last(convnet, x)
    assert not takes_channels_last(mlp, x.flatten(1))  # not images
    assert image_layout(view, x)(x) is x and image_layout(convnet, x)(x).stride() == (192, 1, 24, 3)
    convnet.train()
    before = [b.clone() for b in convnet.buffers()]
    takes_channels_last(convnet, x)
    assert convnet.training and all(torch.equal(a, b) for a, b in zip(before, convnet.buffers()))


def test_a_network_that_views_activations_as_nchw_is_evaluated_on_nchw_batches(cifar_shaped):
    """It used to fail with torch's "view size is not compatible" error."""
    torch.manual_seed(0)
    net = ViewNet(10, (3, 8, 8))
    space = ParamSpace.of(net)
    w0 = space.flatten(net)
    anchors = torch.stack([w0, w0 + 0.05 * torch.randn_like(w0)])
    coeffs = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    got = evaluate_points(net, anchors, coeffs, cifar_shaped, wd=1e-3, batch_size=40, bn_stats="batches")
    ref = evaluate_points_sequential(net, anchors, coeffs, cifar_shaped, wd=1e-3, batch_size=40)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key


def test_ensemble_probabilities_of_either_kind_of_network_by_hand(cifar_shaped):
    from landscape.averaging import predict_probs

    torch.manual_seed(0)
    for net in (ViewNet(10, (3, 8, 8)), create_model("convnet", num_classes=10, input_shape=(3, 8, 8), width=4)):
        net.train()
        got = predict_probs(net, cifar_shaped, batch_size=10)
        assert net.training  # mode restored
        with torch.no_grad():
            want = torch.softmax(net.eval()(cifar_shaped.x_test).double(), dim=-1)
        assert got.dtype == torch.float64  # a far-off member's tiny probabilities survive
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_channels_last_can_be_turned_off(monkeypatch, cifar_shaped):
    import subprocess

    convnet = create_model("convnet", num_classes=10, input_shape=(3, 8, 8), width=4)
    monkeypatch.setattr("landscape.layout.ENABLED", False)
    assert not takes_channels_last(convnet, cifar_shaped.x_train[:2])
    code = "import landscape.layout as l; print(l.ENABLED)"
    for value, want in (("0", "False"), ("1", "True"), (None, "True")):
        env = {k: v for k, v in os.environ.items() if k != "LANDSCAPE_CHANNELS_LAST"}
        if value is not None:
            env["LANDSCAPE_CHANNELS_LAST"] = value
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == want, (value, done.stderr[-500:])


def test_sharpness_of_a_network_that_views_activations_as_nchw(cifar_shaped):
    torch.manual_seed(0)
    net = ViewNet(10, (3, 8, 8))
    loss = TrainLoss(net, cifar_shaped)
    assert not loss.channels_last
    nll, _ = loss.value(ParamSpace.of(net).flatten(net))
    with torch.no_grad():
        by_hand = F.cross_entropy(net(cifar_shaped.x_train), cifar_shaped.y_train).item()
    assert nll == pytest.approx(by_hand, rel=1e-5)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr("landscape.models.MODELS", dict(MODELS))
    made = {}

    def factory(cls):
        def make(num_classes, input_shape):
            made[cls.__name__] = cls(num_classes, tuple(input_shape))
            return made[cls.__name__]
        return make

    register_model("layout_view_net")(factory(ViewNet))
    register_model("layout_strides_convnet")(factory(StridesConvNet))
    return made


def test_training_feeds_channels_last_batches_where_the_network_takes_them(registered, cifar_shaped):
    train(data=cifar_shaped, dataset="synthetic", model="layout_strides_convnet", epochs=1, batch_size=32,
          seed=1, progress=False)
    seen = registered["StridesConvNet"].seen
    assert len(seen) == 3 and all(s == (192, 1, 24, 3) for s in seen)  # channels-last (3, 8, 8) images
    result = train(data=cifar_shaped, dataset="synthetic", model="layout_view_net", epochs=1, batch_size=32,
                   seed=1, progress=False)
    seen = registered["ViewNet"].seen
    assert len(seen) == 3 and all(s == (192, 64, 8, 1) for s in seen)  # NCHW: it could not take the other
    assert math.isfinite(result.metrics[-1]["train_loss"])


def test_channels_last_training_follows_nchw_training(monkeypatch):
    """The same steps in either layout: the weights differ by rounding and by which of several tied
    maxima a max pool's backward picks (blank digit borders give equal activations), amplified by
    the steps; after one epoch of three steps they are about 4e-5 apart in relative norm."""
    data = load_dataset("digits")
    data = dataclasses.replace(data, x_train=data.x_train[:300], y_train=data.y_train[:300])
    runs = {}
    for layout in (True, False):
        monkeypatch.setattr("landscape.layout.ENABLED", layout)
        runs[layout] = train(data=data, model="convnet", epochs=1, seed=1, progress=False)
    a, b = (ParamSpace.of(runs[k].model).flatten(runs[k].model) for k in (True, False))
    assert not torch.equal(a, b)  # the layouts did differ
    assert float((a - b).norm() / b.norm()) <= 1e-3
    for key in ("train_loss", "test_nll"):
        assert runs[True].metrics[-1][key] == pytest.approx(runs[False].metrics[-1][key], rel=1e-4)
