"""Curves: coefficient functions by hand, exact endpoints, lengths, free anchors,
and fit_curve on digits (a low-loss path, mismatched endpoints, exact resume,
the arc-length objective)."""

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.curves import Bezier, PolyChain, create_curve
from landscape.curves.fit import fit_curve, load_curve
from landscape.checkpoint import read_jsonl
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import evaluate_points
from landscape.train import train
from landscape.weights import ParamSpace

P = 40
SPACE = ParamSpace(names=("a.weight", "b.bias"), shapes=((5, 6), (10,)))
KINDS = ["bezier", "polychain"]
MANY_T = torch.cat([torch.linspace(0, 1, 101, dtype=torch.float64),
                    torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])


def endpoints(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, generator=g), 2 + torch.randn(P, generator=g)


def test_the_papers_curve_names_are_taken_in_either_case():
    from landscape.curves.fit import ConnectConfig

    a, b = endpoints()
    assert isinstance(create_curve("Bezier", SPACE, a, b), Bezier)
    assert isinstance(create_curve("PolyChain", SPACE, a, b, bends=2), PolyChain)
    cfg = ConnectConfig(start="a.pt", end="b.pt", curve="PolyChain")
    cfg.validate()
    assert cfg.curve == "polychain"  # recorded as the name the rest of the package and a resume compare
    with pytest.raises(UserError, match="unknown curve 'spline'"):
        create_curve("spline", SPACE, a, b)


def perturb(curve, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        curve.free.add_(torch.randn(curve.free.shape, generator=g))


def line(a, b, t):
    t = t.double()[:, None]
    return (1 - t) * a.double() + t * b.double()


# --------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize("bends", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_coefficients_sum_to_one_and_ends_are_exact(kind, bends):
    a, b = endpoints()
    curve = create_curve(kind, SPACE, a, b, bends=bends)
    assert curve.num_anchors == bends + 2
    c = curve.coefficients(MANY_T)
    assert c.shape == (len(MANY_T), bends + 2)
    torch.testing.assert_close(c.sum(dim=1), torch.ones(len(MANY_T), dtype=torch.float64), rtol=0, atol=1e-12)
    assert (c >= -1e-15).all()
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for label in ("initial", "perturbed"):
        phi = curve.points(ends)
        assert torch.equal(phi[0], a), label
        assert torch.equal(phi[1], b), label
        perturb(curve)
    assert not torch.allclose(curve.points(ends[:1] + 0.5), line(a, b, ends[:1] + 0.5).float(), atol=1e-3)


@pytest.mark.parametrize("bends", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_initial_curve_is_the_straight_line(kind, bends):
    a, b = endpoints()
    curve = create_curve(kind, SPACE, a, b, bends=bends)
    got = curve.points(MANY_T).double()
    torch.testing.assert_close(got, line(a, b, MANY_T), rtol=0, atol=1e-6)


def test_bezier_one_bend_matches_the_quadratic_by_hand():
    a, b = endpoints()
    curve = Bezier(SPACE, a, b, bends=1)
    theta = torch.randn(P, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        curve.free[0] = theta
    t = MANY_T[:, None]
    expected = (1 - t) ** 2 * a.double() + 2 * t * (1 - t) * theta.double() + t ** 2 * b.double()
    torch.testing.assert_close(curve.points(MANY_T).double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bends", [1, 3])
def test_bezier_derivative_coefficients_match_finite_differences(bends):
    curve = Bezier(SPACE, *endpoints(), bends=bends)
    t = torch.linspace(0.01, 0.99, 37, dtype=torch.float64)
    h = 1e-6
    fd = (curve.coefficients(t + h) - curve.coefficients(t - h)) / (2 * h)
    torch.testing.assert_close(curve.derivative_coefficients(t), fd, rtol=0, atol=1e-7)


def test_constants_of_a_fit_step_are_made_once_per_device():
    """The Bernstein basis's binomial coefficients and the arc length's Gauss-Legendre rule are built once and
    reused (on a GPU, building them every step copied them from the host, which waits for the GPU), with the
    values of their definitions."""
    from landscape.curves.base import quadrature
    from landscape.curves.bezier import bernstein

    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    for n in (1, 3, 6):
        by_hand = torch.tensor([[math.comb(n, i) * s ** i * (1 - s) ** (n - i) for i in range(n + 1)] for s in t.tolist()],
                               dtype=torch.float64)
        assert torch.equal(bernstein(t, n), by_hand)
    first, again = quadrature([0.0, 0.5, 1.0], 4), quadrature([0.0, 0.5, 1.0], 4)
    assert [a.data_ptr() for a in first] == [a.data_ptr() for a in again]  # the same memory: nothing copied per step
    x, w = np.polynomial.legendre.leggauss(4)
    np.testing.assert_array_equal(first[0].numpy(), np.concatenate([0.25 * x + 0.25, 0.25 * x + 0.75]))
    np.testing.assert_array_equal(first[1].numpy(), np.concatenate([0.25 * w, 0.25 * w]))
    assert float(first[1].sum()) == pytest.approx(1.0, abs=1e-15)
    other = quadrature([0.0, 1.0], 4)
    assert other[0].shape == (4,) and other[0].data_ptr() != first[0].data_ptr()


def test_polychain_is_piecewise_linear_through_its_anchors():
    a, b = endpoints()
    curve = PolyChain(SPACE, a, b, bends=2)
    perturb(curve)
    anchors = curve.anchors().detach().double()  # (4, P)
    assert curve.breaks() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    knots = torch.tensor([0, 1 / 3, 2 / 3, 1], dtype=torch.float64)
    torch.testing.assert_close(curve.points(knots).double(), anchors, rtol=0, atol=1e-6)
    mids = torch.tensor([1 / 6, 1 / 2, 5 / 6], dtype=torch.float64)
    torch.testing.assert_close(curve.points(mids).double(), (anchors[:-1] + anchors[1:]) / 2, rtol=0, atol=1e-6)
    # a quarter of the way along segment 2, by hand
    torch.testing.assert_close(curve.points(torch.tensor([1 / 3 + 1 / 12], dtype=torch.float64)).double()[0],
                               0.75 * anchors[1] + 0.25 * anchors[2], rtol=0, atol=1e-6)
    # derivative coefficients: constant (-3, +3 on the segment's two anchors) inside each segment
    for s in range(3):
        t = torch.linspace(s / 3 + 0.01, (s + 1) / 3 - 0.01, 9, dtype=torch.float64)
        d = curve.derivative_coefficients(t)
        expected = torch.zeros(4, dtype=torch.float64)
        expected[s], expected[s + 1] = -3.0, 3.0
        assert torch.equal(d, expected.expand(9, 4)), s
        fd = (curve.coefficients(t + 1e-6) - curve.coefficients(t - 1e-6)) / 2e-6
        torch.testing.assert_close(d, fd, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("bends", [1, 2, 3])
def test_polychain_length_is_the_sum_of_segment_norms(bends):
    curve = PolyChain(SPACE, *endpoints(), bends=bends)
    perturb(curve)
    anchors = curve.anchors().detach().double()
    expected = float((anchors[1:] - anchors[:-1]).norm(dim=1).sum())
    assert curve.length().item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bends", [1, 3])
def test_bezier_length_matches_a_fine_trapezoid_rule(bends):
    curve = Bezier(SPACE, *endpoints(), bends=bends)
    perturb(curve)
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    with torch.no_grad():
        speed = curve.speed(t).double().numpy()
    expected = np.trapezoid(speed, t.numpy())  # its own error is ~1e-10 relative here
    # 1e-6: the bound fit.py's docstring gives for the Gauss-Legendre length of a Bezier curve
    assert curve.length().item() == pytest.approx(expected, rel=1e-6)
    # and the speed is the norm of a finite difference of points
    t0 = torch.tensor([0.3], dtype=torch.float64)
    with torch.no_grad():
        fd = (curve.points(t0 + 1e-3).double() - curve.points(t0 - 1e-3).double()) / 2e-3
        assert float(curve.speed(t0)) == pytest.approx(float(fd.norm()), rel=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_speed_is_the_derivatives_norm_from_the_gram_of_the_anchors_differences(kind):
    """The speed comes from the (A-1) x (A-1) Gram matrix of the anchors' differences (no K x P matrix: the 128
    nodes of a VGG16's length were 7.7 GB): equal to the norm of phi'(t) written out in float64, and exact where
    the anchors are far from the origin and close to each other (float32 norms of them cancelled)."""
    a, b = endpoints()
    far = 1e4 * torch.ones(P)
    curve = create_curve(kind, SPACE, far + 1e-3 * a, far + 1e-3 * b, bends=3)
    perturb(curve)
    with torch.no_grad():
        curve.free.mul_(1e-3).add_(far)  # bends near the ends, far out
    t = torch.linspace(0, 1, 37, dtype=torch.float64)
    W = curve.anchors().detach().double()
    direct = (curve.derivative_coefficients(t).double() @ (W - W[0])).norm(dim=-1)  # the differences: exact here
    torch.testing.assert_close(curve.speed(t).double(), direct, rtol=1e-6, atol=0)
    assert curve.derivative_coefficients(t).sum(-1).abs().max() < 1e-9  # what the Gram form relies on
    loss = curve.length()
    loss.backward()  # differentiable, as the arc-length objective needs
    assert torch.isfinite(curve.free.grad).all() and curve.free.grad.abs().sum() > 0


@pytest.mark.parametrize("bends", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_straight_curve_length_is_the_endpoint_distance(kind, bends):
    a, b = endpoints()
    curve = create_curve(kind, SPACE, a, b, bends=bends)
    assert curve.length().item() == pytest.approx(float((b.double() - a.double()).norm()), rel=1e-5)


# --------------------------------------------------------------------------- free anchors
@pytest.mark.parametrize("free_start,free_end", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_only_the_free_anchors(kind, free_start, free_end):
    bends = 2
    a, b = endpoints()
    curve = create_curve(kind, SPACE, a, b, bends=bends, fix_start=not free_start, fix_end=not free_end)
    n_free = bends + free_start + free_end
    assert curve.free.shape == (n_free, P)
    assert curve.fixed.shape == (bends + 2 - n_free, P)
    assert [n for n, _ in curve.named_parameters()] == ["free"]
    assert "fixed" in dict(curve.named_buffers()) and not curve.fixed.requires_grad
    t = torch.linspace(0, 1, 13, dtype=torch.float64)
    curve.points(t).sum().backward()
    assert curve.fixed.grad is None
    # d/d anchor_a of sum(phi(t)) = sum_t c_a(t) in every entry
    weight = curve.coefficients(t).sum(dim=0).float()  # (A,)
    free_rows = [a for a, is_free in enumerate([free_start] + [True] * bends + [free_end]) if is_free]
    expected = weight[free_rows][:, None].expand(n_free, P)
    torch.testing.assert_close(curve.free.grad, expected, rtol=1e-6, atol=1e-6)
    # a free end really is anchor 0 / anchor -1
    with torch.no_grad():
        curve.free.add_(1.0)
    ends = curve.points(torch.tensor([0.0, 1.0], dtype=torch.float64)).detach()
    assert torch.equal(ends[0], a + 1.0 if free_start else a)
    assert torch.equal(ends[1], b + 1.0 if free_end else b)
    assert torch.equal(curve.points([0.0, 1.0]).detach(), ends)  # a list, as a notebook passes it
    assert torch.equal(curve.points(1.0).detach(), ends[1:])  # one number: one point


# --------------------------------------------------------------------------- fitting on digits
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small_digits(digits):
    return dataclasses.replace(digits, x_train=digits.x_train[:256], y_train=digits.y_train[:256],
                               x_test=digits.x_test[:100], y_test=digits.y_test[:100])


@pytest.fixture(scope="module")
def narrow(tmp_path_factory, digits):
    """Two convnets of width 8 and one of width 16, one epoch each."""
    root = tmp_path_factory.mktemp("narrow")
    paths = {}
    for name, seed, width in (("a", 1, 8), ("b", 2, 8), ("wide", 3, 16)):
        train(out=root / name, data=digits, epochs=1, seed=seed, progress=False, model_kwargs={"width": width})
        paths[name] = root / name / "model.pt"
    return paths


@pytest.mark.slow
def test_fitted_curve_has_low_loss_where_the_line_has_a_barrier(tmp_path, digits):
    for seed in (1, 2):
        train(out=tmp_path / f"end{seed}", data=digits, epochs=8, seed=seed, progress=False)
    start, end = tmp_path / "end1" / "model.pt", tmp_path / "end2" / "model.pt"
    result = fit_curve(start, end, tmp_path / "curve", data=digits, epochs=8, lr=0.05, progress=False)
    curve, template = result.curve, result.model
    space = ParamSpace.of(template)
    from landscape.checkpoint import load_checkpoint

    flat_a = space.flatten(load_checkpoint(start).state_dict)
    flat_b = space.flatten(load_checkpoint(end).state_dict)
    anchors = curve.anchors().detach()
    assert torch.equal(anchors[0], flat_a) and torch.equal(anchors[-1], flat_b)

    ts = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    coeffs = torch.cat([curve.coefficients(ts), torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)])
    coeffs[-1, 0] = coeffs[-1, -1] = 0.5  # the straight line's midpoint
    m = evaluate_points(template, anchors, coeffs, digits, wd=5e-4)
    on_curve, line_mid = m["train_loss"][:5], m["train_loss"][5]
    assert line_mid - on_curve[2] > 0.3, m["train_loss"]
    assert on_curve.max() - 0.5 * (on_curve[0] + on_curve[-1]) < 0.1, on_curve
    # the summary reports the same midpoint values
    assert result.summary["curve"]["train_loss_at"][1] == pytest.approx(on_curve[2], rel=1e-5)
    assert result.summary["line"]["train_loss_at"][1] == pytest.approx(line_mid, rel=1e-5)
    # Each epoch's record has the midpoint's test metrics, batch norm from the first 5 batches of 1000.
    mid = evaluate_points(template, anchors, curve.coefficients(ts[2:3]), digits, bn_stats="batches", bn_batches=5)
    last = result.metrics[-1]
    assert last["mid_test_nll"] == pytest.approx(mid["test_nll"][0], rel=1e-5)
    assert last["mid_test_error"] == pytest.approx(mid["test_error"][0])

    path = tmp_path / "curve" / "model.pt"
    loaded = load_curve(path)
    assert type(loaded.curve) is type(curve) and loaded.curve.bends == 1
    assert torch.equal(loaded.curve.anchors(), anchors)
    obj = torch.load(path, weights_only=True)
    assert torch.equal(obj["curve"]["anchors"], anchors)


def test_fit_curve_between_different_architectures_names_key_and_shapes(tmp_path, narrow, small_digits):
    with pytest.raises(UserError) as info:
        fit_curve(narrow["a"], narrow["wide"], tmp_path / "c", data=small_digits, epochs=1, progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'features.0.weight'" in msg, msg
    assert "(16, 1, 3, 3)" in msg and "(8, 1, 3, 3)" in msg, msg


class _Interrupt(Exception):
    pass


def test_resumed_fit_gives_identical_anchors(tmp_path, narrow, small_digits):
    kw = dict(data=small_digits, epochs=3, lr=0.05, batch_size=64, progress=False, bends=2, curve="polychain")
    full = fit_curve(narrow["a"], narrow["b"], tmp_path / "full", **kw)

    def stop(epoch, record):
        if epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit_curve(narrow["a"], narrow["b"], tmp_path / "cut", on_epoch_end=stop, **kw)
    assert not (tmp_path / "cut" / "model.pt").exists()
    # The same start checkpoint named another way is the same setting.
    start = narrow["a"].parent / ".." / narrow["a"].parent.name / narrow["a"].name
    with pytest.raises(UserError, match="started with end="):
        fit_curve(start, narrow["wide"], tmp_path / "cut", resume=True, **kw)
    before = [r["time_s"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    began = time.perf_counter()
    resumed = fit_curve(start, narrow["b"], tmp_path / "cut", resume=True, **kw)
    elapsed = time.perf_counter() - began
    assert torch.equal(resumed.curve.anchors(), full.curve.anchors())
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in full.metrics]
    # The clock goes on from the interrupted part: the kept epochs' times stand, and the third
    # epoch's is the second's plus no more than the resumed call took (not its own time from zero).
    times = [r["time_s"] for r in resumed.metrics]
    assert times[:2] == before[:2]
    assert times[1] < times[2] < times[1] + elapsed and resumed.summary["seconds"] >= times[-1]
    # the fit moved the bends (the comparison is not of two untouched curves)
    assert not torch.equal(full.curve.anchors()[1], create_curve(
        "polychain", full.curve.space, full.curve.anchors()[0].detach(), full.curve.anchors()[-1].detach(),
        bends=2).anchors()[1])


def test_endpoints_of_a_model_registered_in_another_process_connect_with_its_factory_named(tmp_path, small_digits,
                                                                                             monkeypatch):
    """Endpoints trained under a name registered from Python record that name,
    which the CLI's process does not know: --model names the factory instead
    (the stored options kept), and the curve records the name it was built by."""
    import landscape.models as models
    from landscape.averaging import run_swa

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("mlp_elsewhere")(models.MODELS["mlp"])
    kw = dict(data=small_digits, epochs=1, progress=False, model_kwargs={"hidden": 16})
    for seed in (1, 2):
        train(out=tmp_path / f"e{seed}", model="mlp_elsewhere", seed=seed, **kw)
    del models.MODELS["mlp_elsewhere"]  # as in another process
    a, b = tmp_path / "e1" / "model.pt", tmp_path / "e2" / "model.pt"
    fit = dict(data=small_digits, epochs=1, progress=False)
    with pytest.raises(UserError, match="'mlp_elsewhere', which is not registered in this process"):
        fit_curve(a, b, tmp_path / "refused", **fit)
    result = fit_curve(a, b, tmp_path / "ab", model="mlp", **fit)
    assert load_curve(tmp_path / "ab" / "model.pt").spec == {"name": "mlp", "kwargs": {
        "hidden": 16, "num_classes": 10, "input_shape": [1, 8, 8]}}
    assert torch.equal(result.curve.anchors()[0], ParamSpace.of(result.model).flatten(
        torch.load(a, weights_only=True)["state_dict"]).to(result.curve.anchors().dtype))
    run_swa(from_ckpt=str(a), out=tmp_path / "swa", model="mlp", epochs=2, swa_start=1, lr=0.05, swa_lr=0.05,
            **{k: v for k, v in fit.items() if k != "epochs"})
    assert torch.load(tmp_path / "swa" / "swa.pt", weights_only=True)["model"]["name"] == "mlp"
    # the sweeps' loader too (plane, rays, ensemble): the factory named, built with the options recorded (hidden 16)
    from landscape.inputs import load_points

    pts = load_points([a, b], model="mlp", data=small_digits)
    assert pts.model(small_digits.x_train[:2]).shape == (2, 10)
    assert [tuple(p.shape) for p in pts.model.parameters()][0] == (16, 64)
    # A name this process can build is never replaced: --model then contradicts the checkpoint.
    with pytest.raises(UserError, match="holds a 'mlp' network .*; --model convnet does not apply to it"):
        fit_curve(tmp_path / "swa" / "swa.pt", b, tmp_path / "no", model="convnet", **fit)


def _frozen_stem(num_classes, input_shape):
    """A fixed first layer (the same weights in every network, not trained: a frozen
    pretrained stem) under a trained head."""
    stem = torch.nn.Linear(64, 24)
    with torch.no_grad():
        g = torch.Generator().manual_seed(123)
        stem.weight.copy_(torch.randn(24, 64, generator=g) / 8)
        stem.bias.copy_(torch.randn(24, generator=g) / 8)
    stem.requires_grad_(False)
    return torch.nn.Sequential(torch.nn.Flatten(), stem, torch.nn.ReLU(), torch.nn.Linear(24, num_classes))


def test_parameters_the_network_does_not_train_stay_put_and_are_not_decayed(tmp_path, small_digits, monkeypatch):
    """train leaves a frozen parameter alone and out of its weight decay; a curve
    and a simplex do the same: its coordinates keep their start on the bends and on
    a new vertex, and the engine's train loss at an end is the endpoint's own."""
    import landscape.models as models
    from landscape.curves.spro import connect_modes
    from landscape.checkpoint import load_checkpoint

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("frozen_stem")(_frozen_stem)
    wd = 5e-3
    runs = [train(out=tmp_path / f"e{seed}", model="frozen_stem", seed=seed, data=small_digits, epochs=2, wd=wd,
                  progress=False) for seed in (1, 2)]
    a, b = tmp_path / "e1" / "model.pt", tmp_path / "e2" / "model.pt"
    space = ParamSpace.of(runs[0].model)
    assert space.frozen == ("1.weight", "1.bias")
    mask = space.trainable_mask()
    assert int((~mask).sum()) == 24 * 64 + 24 and bool(mask[-10:].all())
    ends = [space.flatten(load_checkpoint(p).state_dict) for p in (a, b)]
    assert torch.equal(ends[0][~mask], ends[1][~mask])  # not trained: the stem as built
    # The squared norm of the trained coordinates only, by hand.
    head = sum(float(p.detach().double().pow(2).sum()) for p in runs[0].model[3].parameters())
    assert float(space.squared_norm(ends[0].double())) == pytest.approx(head, rel=1e-12)

    fit = fit_curve(a, b, tmp_path / "ab", data=small_digits, epochs=2, bends=2, curve="polychain", wd=wd,
                    progress=False)
    bends = fit.curve.anchors().detach()[1:-1]
    assert torch.equal(bends[:, ~mask], ends[0][~mask].expand(2, -1))  # kept where they started
    line = torch.stack([(1 - s) * ends[0] + s * ends[1] for s in (1 / 3, 2 / 3)])
    assert not torch.allclose(bends[:, mask], line[:, mask])  # the head's coordinates were fitted
    # The curve's start is the endpoint: the same train loss as train's summary (NLL + the head's decay).
    got = evaluate_points(fit.model, fit.curve.anchors().detach(), [[1, 0, 0, 0]], small_digits, wd=wd)
    assert got["train_loss"][0] == pytest.approx(runs[0].summary["train_loss"], rel=1e-5)
    assert got["train_loss"][0] - got["train_nll"][0] == pytest.approx(0.5 * wd * head, rel=1e-6)

    cx = connect_modes([a, b], tmp_path / "sx", connectors=1, epochs=1, eval_samples=4, dataset="digits",
                       face_resolution=2, progress=False).complex.anchors().detach()  # no data=: the digits named
    assert torch.equal(cx[-1][~mask], ends[0][~mask]) and not torch.equal(cx[-1][mask], (ends[0] + ends[1])[mask] / 2)


def test_arclength_objective_on_a_straight_curve_equals_the_uniform_one(narrow, small_digits):
    """A straight, evenly parametrised curve has constant speed equal to its
    length, so the arc-length weights speed/length are all one and the first
    step's loss is the uniform loss. With one batch per epoch (128 of 100
    samples) the first epoch's train_loss is exactly that first step's loss."""
    one_batch = dataclasses.replace(small_digits, x_train=small_digits.x_train[:100],
                                    y_train=small_digits.y_train[:100])
    kw = dict(data=one_batch, epochs=2, lr=0.05, batch_size=128, t_samples=3, seed=4, progress=False)
    uniform = fit_curve(narrow["a"], narrow["b"], None, objective="uniform", **kw)
    arc = fit_curve(narrow["a"], narrow["b"], None, objective="arclength", **kw)
    for r in uniform.metrics + arc.metrics:
        assert math.isfinite(r["train_loss"])
    for r in uniform.metrics:  # the objective has the weight-decay term at phi(t); train_nll is the NLL alone
        assert r["train_loss"] > r["train_nll"] > 0
    assert arc.metrics[0]["train_loss"] == pytest.approx(uniform.metrics[0]["train_loss"], rel=1e-5)
    # after a step the weights are no longer one, and the two objectives part
    assert not torch.equal(arc.curve.anchors(), uniform.curve.anchors())


def test_connect_refuses_a_model_option_the_endpoints_contradict(tmp_path, narrow, small_digits):
    """--model mlp used to fit a convnet curve and record mlp in config.json."""
    with pytest.raises(UserError, match=r"holds a 'convnet' network \(\{'width': 8\}\); --model mlp does not apply"):
        fit_curve(narrow["a"], narrow["b"], tmp_path / "c", data=small_digits, epochs=1, model="mlp", progress=False)
    with pytest.raises(UserError, match="holds a 'convnet' network .*; --model-kwargs does not apply"):
        fit_curve(narrow["a"], narrow["b"], tmp_path / "c", data=small_digits, epochs=1, model_kwargs={"width": 16},
                  progress=False)
    assert not (tmp_path / "c").exists()
    result = fit_curve(narrow["a"], narrow["b"], tmp_path / "ok", data=small_digits, epochs=1, model="convnet",
                       model_kwargs={"width": 8}, progress=False)  # agreeing options are fine
    config = json.loads((tmp_path / "ok" / "config.json").read_text())["config"]
    assert (config["model"], config["model_kwargs"]) == ("convnet", {"width": 8})
    assert result.curve is not None


def test_connect_refuses_endpoints_that_hold_the_same_network(tmp_path, narrow, small_digits):
    """A copy of A as the end fitted a loop of length 0 at the ends and reported barriers of 0."""
    import shutil

    shutil.copy(narrow["a"], tmp_path / "copy.pt")
    with pytest.raises(UserError, match=r"hold the same weights: a curve between them would join a point to itself"):
        fit_curve(narrow["a"], tmp_path / "copy.pt", tmp_path / "c", data=small_digits, epochs=1, progress=False)
    assert not (tmp_path / "c").exists()


def test_resume_refuses_an_endpoint_file_replaced_since_the_run_began(tmp_path, narrow, small_digits):
    import shutil

    ends = tmp_path / "ends"
    ends.mkdir()
    for name in ("a", "b"):
        shutil.copy(narrow[name], ends / f"{name}.pt")
    kw = dict(data=small_digits, epochs=2, progress=False)

    def stop(epoch, record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        fit_curve(ends / "a.pt", ends / "b.pt", tmp_path / "c", on_epoch_end=stop, **kw)
    train(out=tmp_path / "other", data=small_digits, epochs=1, seed=7, progress=False, model_kwargs={"width": 8})
    shutil.copy(tmp_path / "other" / "model.pt", ends / "b.pt")  # retrained in place
    with pytest.raises(UserError, match=re.escape(f"{ends / 'b.pt'} is not the network this run's curve ends at "
                                                  "(the file changed since it began)")):
        fit_curve(ends / "a.pt", ends / "b.pt", tmp_path / "c", resume=True, **kw)
    assert not (tmp_path / "c" / "model.pt").exists() and (tmp_path / "c" / "last.pt").exists()


def test_a_run_resumes_after_its_folders_moved_or_from_another_folder(tmp_path, narrow, small_digits, monkeypatch):
    """The endpoints named relative to where the run began no longer resolve
    from another working folder, or after the runs were moved: the resume
    was refused ("started with start='ends/a.pt'"). The files the run began
    from are now known by their contents too; other contents stay refused."""
    import shutil

    (tmp_path / "old" / "ends").mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(narrow[name], tmp_path / "old" / "ends" / f"{name}.pt")
    kw = dict(data=small_digits, epochs=3, lr=0.05, batch_size=64, progress=False)
    full = fit_curve(narrow["a"], narrow["b"], tmp_path / "full", **kw)

    def stop(epoch, record):
        if epoch == 1:
            raise _Interrupt

    monkeypatch.chdir(tmp_path / "old")
    with pytest.raises(_Interrupt):
        fit_curve("ends/a.pt", "ends/b.pt", "runs/ab", on_epoch_end=stop, **kw)
    (tmp_path / "old").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=rf"started with start='{re.escape(str(tmp_path / 'old' / 'ends' / 'a.pt'))}', "
                                        rf"now start='{re.escape(str(tmp_path / 'moved' / 'ends' / 'b.pt'))}'"):
        fit_curve("../moved/ends/b.pt", "../moved/ends/a.pt", "../moved/runs/ab", resume=True, **kw)
    resumed = fit_curve("../moved/ends/a.pt", "../moved/ends/b.pt", "../moved/runs/ab", resume=True, **kw)
    assert torch.equal(resumed.curve.anchors(), full.curve.anchors())
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]


def test_a_curve_records_its_ends_by_absolute_paths(tmp_path, monkeypatch, narrow, small_digits):
    """Relative end paths were stored as given, and read later against another working folder: curve quoted an
    unrelated run's test errors as the ends' own."""
    from landscape.checkpoint import load_checkpoint

    monkeypatch.chdir(narrow["a"].parent.parent)
    relative = [Path(os.path.relpath(narrow[k])) for k in ("a", "b")]
    fit_curve(*relative, tmp_path / "c", data=small_digits, epochs=1, progress=False)
    meta = load_checkpoint(tmp_path / "c" / "model.pt").meta
    for stored in (meta, meta["train_config"]):  # the meta's are what curve's note reads
        assert [stored["start"], stored["end"]] == [str(narrow["a"].resolve()), str(narrow["b"].resolve())]
    # resumed by the relative names again: the same files, so the same run
    fit_curve(*relative, tmp_path / "c", data=small_digits, epochs=1, progress=False, resume=True)
