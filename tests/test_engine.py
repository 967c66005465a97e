"""The evaluation engine against independent computations.

ParamSpace by name, batch-norm re-estimation against the papers' ``update_bn``,
the batched engine against the sequential reference loop (both strategies,
with and without batch norm, chunked), the weight-decay term by hand, the
caller's model left untouched, and the path metrics on hand-made values.
"""

import copy
import dataclasses
import random

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tests.conftest import papers_update_bn
from landscape.bn import population_bn, reestimate_bn
from landscape.data import load_dataset
from landscape.errors import UserError
import landscape.evaluate as engine_module
from landscape.evaluate import (METRICS, evaluate_model, evaluate_points, evaluate_points_sequential,
                                 resolve_bn_stats)
from landscape.metrics import (arc_length_mean, barrier, ensemble_metrics, expected_calibration_error,
                               reliability)
from landscape.models import create_model
from landscape.weights import ParamSpace

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small(digits):
    """300 training and 100 test digits: several batches of 64, a short last one."""
    return dataclasses.replace(digits, x_train=digits.x_train[:300], y_train=digits.y_train[:300],
                               x_test=digits.x_test[:100], y_test=digits.y_test[:100])


def convnet(seed):
    torch.manual_seed(seed)
    return create_model("convnet", num_classes=10, input_shape=SHAPE, width=8)


def mlp(seed):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, input_shape=SHAPE, hidden=32)


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def displace_bn_stats(model, data):
    """Give the BN layers running statistics of their own (not the defaults)."""
    model.train()
    with torch.no_grad():
        model(data.x_train[:50])


def assert_close(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- ParamSpace
def test_flatten_unflatten_round_trip_gives_the_named_parameters():
    model = convnet(0)
    space = ParamSpace.of(model)
    named = dict(model.named_parameters())
    assert space.names == tuple(named)
    flat = space.flatten(model)
    assert flat.shape == (sum(p.numel() for p in named.values()),) == (space.numel,)
    back = space.unflatten(flat)
    assert list(back) == list(named)
    for name, p in named.items():
        assert torch.equal(back[name], p.detach()), name
    # The vector is the parameters concatenated in named order, by hand.
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in named.values()]))
    # Leading dimensions are carried through: (2, P) -> (2, *shape).
    two = space.unflatten(torch.stack([flat, 2 * flat]))
    for name, p in named.items():
        assert torch.equal(two[name][1], 2 * p.detach())


def test_flatten_matches_by_name_not_position():
    model = convnet(0)
    space = ParamSpace.of(model)
    state = model.state_dict()
    keys = list(state)
    random.Random(0).shuffle(keys)
    assert keys != list(state)
    shuffled = {k: state[k] for k in keys}
    assert torch.equal(space.flatten(shuffled), space.flatten(state))
    assert torch.equal(space.flatten(shuffled), space.flatten(model))


def test_flatten_names_a_missing_or_misshapen_key():
    model = convnet(0)
    space = ParamSpace.of(model)
    state = dict(model.state_dict())
    missing = dict(state)
    del missing["features.3.weight"]
    with pytest.raises(UserError, match=r"'features\.3\.weight' is missing"):
        space.flatten(missing, source="a.pt")
    wrong = dict(state)
    wrong["classifier.weight"] = torch.zeros(10, 31)
    with pytest.raises(UserError, match=r"a\.pt: parameter 'classifier\.weight' has shape \(10, 31\), expected \(10, 32\)"):
        space.flatten(wrong, source="a.pt")


# --------------------------------------------------------------------------- batch norm
def test_reestimate_bn_equals_the_papers_update_bn_and_restores_modes_and_momenta(small):
    batches = list(small.batches("train", 128))
    assert len(batches) == 3
    ours, ref = convnet(1), convnet(1)
    displace_bn_stats(ours, small)
    displace_bn_stats(ref, small)
    ours.eval()
    bn_layers(ours)[1].momentum = 0.3
    used = reestimate_bn(ours, iter(batches))
    papers_update_bn(batches, ref)
    assert used == 3
    ref_state = ref.state_dict()
    checked = 0
    for name, value in ours.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(value, ref_state[name], rtol=1e-5, atol=1e-5, msg=name)
            checked += 1
    assert checked == 2 * len(bn_layers(ours)) == 6
    # modes and momenta as they were
    assert all(not m.training for m in ours.modules())
    assert [m.momentum for m in bn_layers(ours)] == [0.1, 0.3, 0.1]
    # In train mode it stays in train mode.
    ours.train()
    reestimate_bn(ours, iter(batches))
    assert all(m.training for m in ours.modules())


def test_batches_weigh_by_their_size_so_the_first_layers_mean_is_the_training_sets(small):
    """Batches of 128, 128 and a short last one: weighted by size, the first batch-norm layer's mean is the exact
    mean of its input over every image (torch's swa_utils.update_bn, which weighs the batches alike, is not).
    The engine's batch estimator gives the same statistics, so the same numbers as the reference."""
    from torch.optim.swa_utils import update_bn

    batches = list(small.batches("train", 128))
    assert [len(x) for x, _ in batches][-1] < 128
    net, alike = convnet(4), convnet(4)
    reestimate_bn(net, iter(batches))
    update_bn(batches, alike)
    first = bn_layers(net)[0]
    with torch.no_grad():
        into = net.features[0](small.x_train).double()  # the first batch-norm layer's input
    exact = into.mean(dim=(0, 2, 3))
    torch.testing.assert_close(first.running_mean.double(), exact, rtol=1e-5, atol=1e-6)
    assert (bn_layers(alike)[0].running_mean.double() - exact).abs().max() > 1e-4
    anchors = [convnet(4), convnet(5)]
    got = evaluate_points(anchors[0], anchors, LINE, small, batch_size=128, bn_stats="batches")
    ref = evaluate_points_sequential(anchors[0], anchors, LINE, small, batch_size=128, bn_stats="batches")
    for key in METRICS:
        assert_close(got[key], ref[key])


def test_reestimate_bn_max_batches_uses_only_the_first_batches(small):
    batches = list(small.batches("train", 64))
    ours, ref, full = convnet(2), convnet(2), convnet(2)
    assert reestimate_bn(ours, iter(batches), max_batches=2) == 2
    papers_update_bn(batches[:2], ref)
    papers_update_bn(batches, full)
    for (name, a), b, c in zip(ours.state_dict().items(), ref.state_dict().values(), full.state_dict().values()):
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    # and the difference from using every batch is visible
    mean = "features.1.running_mean"
    assert not torch.allclose(ours.state_dict()[mean], full.state_dict()[mean], rtol=1e-3, atol=1e-4)


def test_reestimate_bn_keeps_dropout_off(small):
    """The documented difference from update_bn: dropout stays in eval mode, so the
    statistics are those of the network without dropout."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Dropout(0.5),
                              torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    no_dropout, with_dropout = copy.deepcopy(net), copy.deepcopy(net)
    no_dropout[2].p = 0.0
    batches = list(small.batches("train", 128))
    net.train()
    reestimate_bn(net, iter(batches))
    papers_update_bn(batches, no_dropout)
    torch.manual_seed(0)
    papers_update_bn(batches, with_dropout)
    torch.testing.assert_close(net[3].running_mean, no_dropout[3].running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[3].running_var, no_dropout[3].running_var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(net[3].running_var, with_dropout[3].running_var, rtol=1e-2)
    assert net[2].training  # and its mode is back
    # The engine keeps dropout off too, for the statistics and the evaluation.
    anchors = [copy.deepcopy(net), copy.deepcopy(net)]
    with torch.no_grad():
        anchors[1][1].weight.mul_(-1.5)
    for strategy in ("loop", "vmap"):
        for bn_stats in ("batches", "population"):
            got = evaluate_points(net, anchors, LINE, small, batch_size=64, points_per_pass=2, strategy=strategy,
                                  bn_stats=bn_stats)
            ref = evaluate_points_sequential(net, anchors, LINE, small, batch_size=64, bn_stats=bn_stats)
            for key in METRICS:
                assert_close(got[key], ref[key])


# --------------------------------------------------------------------------- engine vs reference
LINE = np.stack([1 - np.linspace(0, 1, 5), np.linspace(0, 1, 5)], axis=1)  # (5, 2)
COMBO = np.array([[0.5, 0.7, -0.3],
                  [1.2, 0.0, 0.1],
                  [-0.2, 0.4, 0.4],
                  [0.3, 0.3, 0.3]])  # rows not summing to one


@pytest.mark.parametrize("bn_batches,bn_stats", [(None, "batches"), (2, "batches"), (None, "population")])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("make", [convnet, mlp], ids=["convnet", "mlp"])
def test_evaluate_points_agrees_with_the_sequential_loop(small, make, strategy, bn_batches, bn_stats):
    anchors = [make(10), make(11), make(12)]
    model = make(13)
    for coeffs, used in ((LINE, anchors[:2]), (COMBO, anchors)):
        kw = dict(wd=5e-4, batch_size=64, bn_batches=bn_batches, bn_stats=bn_stats, return_probs=True)
        got = evaluate_points(model, used, coeffs, small, points_per_pass=2, strategy=strategy, **kw)
        ref = evaluate_points_sequential(model, used, coeffs, small, **kw)
        assert set(got) == set(ref) == set(METRICS) | {"probs"}
        for key in METRICS:
            assert got[key].shape == (len(coeffs),)
            assert_close(got[key], ref[key])
        assert got["probs"].shape == (len(coeffs), 100, 10)
        assert_close(got["probs"], ref["probs"])
    # The points differ from each other (the comparison is not of one point five times).
    assert np.ptp(got["train_nll"]) > 1e-3


@pytest.mark.parametrize("bn_stats", ["batches", "population"])
def test_a_points_values_do_not_depend_on_its_pass_mates(small, bn_stats):
    """The loop strategy gives every point bit-identical values whether it is
    evaluated alone, with a few others, or with all: a resumed sweep, whose
    passes group the points differently, matches an uninterrupted one exactly.
    (A (K, A) x (A, P) product rounds differently with K, and the one-channel
    first convolution's layout used to follow K.)"""
    anchors = [convnet(10), convnet(11), convnet(12)]
    coeffs = np.concatenate([COMBO, LINE @ np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])])
    kw = dict(wd=5e-4, batch_size=64, bn_stats=bn_stats, strategy="loop", return_probs=True)
    together = evaluate_points(convnet(13), anchors, coeffs, small, points_per_pass=len(coeffs), **kw)
    for k in (1, 3):
        apart = evaluate_points(convnet(13), anchors, coeffs, small, points_per_pass=k, **kw)
        for key, value in together.items():
            assert np.array_equal(apart[key], value), (k, key)


def test_vmap_batches_every_layer_of_the_convnet(small):
    """No layer falls back to one call per point: adaptive average pooling did
    (torch has no batching rule for its as_strided_), and warned about it."""
    import warnings

    for bn_stats in ("batches", "population"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            evaluate_points(convnet(13), [convnet(10), convnet(11)], LINE, small, strategy="vmap", points_per_pass=2,
                            batch_size=64, bn_stats=bn_stats)
        assert not [w for w in seen if "batching rule" in str(w.message)], bn_stats


def test_bn_batches_changes_the_result(small):
    """bn_batches is honoured: two batches of statistics are not the full pass."""
    anchors = [convnet(10), convnet(11)]
    full = evaluate_points(convnet(13), anchors, LINE[1:2], small, batch_size=64, strategy="loop", bn_stats="batches")
    two = evaluate_points(convnet(13), anchors, LINE[1:2], small, batch_size=64, bn_batches=2, strategy="loop")
    assert abs(full["train_nll"][0] - two["train_nll"][0]) > 1e-6


@pytest.mark.parametrize("bn_stats", ["population", "batches"])
def test_stored_statistics_never_reach_a_points_estimate(small, bn_stats):
    """Batch norm is re-estimated from scratch: an inf in the template's stored
    running_var (a corrupt checkpoint) made 0 x inf = NaN under momentum 1,
    and the centre of a rays sweep reported 90 % test error instead of 17.5 %."""
    clean = convnet(30)
    displace_bn_stats(clean, small)
    corrupt = copy.deepcopy(clean)
    with torch.no_grad():
        bn_layers(corrupt)[0].running_var[0] = float("inf")
        bn_layers(corrupt)[-1].running_mean[1] = float("-inf")
    kw = dict(batch_size=64, bn_stats=bn_stats)
    want = evaluate_points(clean, [clean], [[1.0]], small, **kw)
    got = evaluate_points(corrupt, [corrupt], [[1.0]], small, **kw)
    for key in ("train_loss", "train_error", "test_nll", "test_error"):
        assert np.isfinite(got[key][0]) and got[key][0] == want[key][0], key


def test_train_loss_adds_half_wd_times_the_squared_norm(small):
    anchors = [mlp(20), mlp(21), mlp(22)]
    space = ParamSpace.of(anchors[0])
    W = torch.stack([space.flatten(a) for a in anchors]).double()  # (3, P)
    wd = 0.1
    got = evaluate_points(mlp(23), anchors, COMBO, small, wd=wd, batch_size=64, strategy="loop")
    for i, c in enumerate(COMBO):
        point = torch.as_tensor(c) @ W  # (P,)
        sq = float((point * point).sum())
        assert got["train_loss"][i] - got["train_nll"][i] == pytest.approx(0.5 * wd * sq, rel=1e-5)
    zero = evaluate_points(mlp(23), anchors, COMBO, small, wd=0.0, batch_size=64, strategy="loop")
    assert np.array_equal(zero["train_loss"], zero["train_nll"])
    # The anchors as modules, as a list of flat weight vectors, or as one (A, P) matrix: the same points.
    for form in ([row for row in W.float()], W.float()):
        same = evaluate_points(mlp(23), form, COMBO, small, wd=wd, batch_size=64, strategy="loop")
        for key in METRICS:
            assert np.array_equal(same[key], got[key]), key


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_evaluate_points_leaves_the_callers_model_as_it_was(small, strategy, mode):
    model = convnet(30)
    displace_bn_stats(model, small)
    bn_layers(model)[2].momentum = 0.3
    model.train(mode == "train")
    if mode == "mixed":
        model.train()
        model.features[2].eval()  # one ReLU in eval mode, the rest in train mode
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    momenta = [m.momentum for m in bn_layers(model)]
    params = list(model.parameters())
    buffers = list(model.buffers())

    evaluate_points(model, [convnet(31), convnet(32)], LINE, small, batch_size=64, strategy=strategy)

    after = model.state_dict()
    assert list(after) == list(state)
    for k, v in state.items():
        assert torch.equal(after[k], v), k
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in bn_layers(model)] == momenta == [0.1, 0.1, 0.3]
    assert all(p is q for p, q in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    assert all(b is c for b, c in zip(model.buffers(), buffers))


def test_first_anchor_point_equals_evaluate_model_after_reestimate_bn(small):
    a, b = convnet(40), convnet(41)
    got = evaluate_points(convnet(42), [a, b], [[1.0, 0.0]], small, wd=5e-4, batch_size=64, strategy="loop",
                          bn_stats="batches")
    net = copy.deepcopy(a)
    reestimate_bn(net, small.batches("train", 64))
    train_m = evaluate_model(net, small, "train", batch_size=64)
    test_m = evaluate_model(net, small, "test", batch_size=64)
    sq = sum(float(p.detach().double().pow(2).sum()) for p in a.parameters())
    assert_close(got["train_nll"], [train_m["nll"]])
    assert_close(got["train_error"], [train_m["error"]])
    assert_close(got["test_nll"], [test_m["nll"]])
    assert_close(got["test_error"], [test_m["error"]])
    assert_close(got["train_loss"], [train_m["nll"] + 0.5 * 5e-4 * sq])


# --------------------------------------------------------------------------- population statistics
def test_population_statistics_by_hand(small):
    """bn_stats="population": every BN layer's running mean and (population)
    variance are those of its input over the whole training set, with the
    earlier layers normalised by their own such statistics; written out here
    with plain tensor algebra on a two-BN-layer network."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU(),
                              torch.nn.Linear(12, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(), torch.nn.Linear(7, 10))
    x = small.x_train.flatten(1).double()
    lin1, bn1, lin2, bn2, head = (m.double() for m in copy.deepcopy(net)[1:].children() if not isinstance(m, torch.nn.ReLU))
    with torch.no_grad():
        h1 = lin1(x)
        m1, v1 = h1.mean(0), ((h1 - h1.mean(0)) ** 2).mean(0)
        a1 = torch.relu((h1 - m1) / torch.sqrt(v1 + bn1.eps) * bn1.weight + bn1.bias)
        h2 = lin2(a1)
        m2, v2 = h2.mean(0), ((h2 - h2.mean(0)) ** 2).mean(0)
        logits = head(torch.relu((h2 - m2) / torch.sqrt(v2 + bn2.eps) * bn2.weight + bn2.bias))
        y = small.y_train
        nll = float(torch.nn.functional.cross_entropy(logits, y))
        err = 100.0 * float((logits.argmax(1) != y).double().mean())
    got = evaluate_points(net, [net], [[1.0]], small, batch_size=64, bn_stats="population")
    assert got["train_nll"][0] == pytest.approx(nll, rel=1e-5)
    assert got["train_error"][0] == pytest.approx(err)
    # Test metrics use the stored statistics: the variance must be the population one
    # (a (N, C) input has N values per channel; the unbiased variance would be N/(N-1) too big).
    with torch.no_grad():
        xt = small.x_test.flatten(1).double()
        a1t = torch.relu((lin1(xt) - m1) / torch.sqrt(v1 + bn1.eps) * bn1.weight + bn1.bias)
        test_logits = head(torch.relu((lin2(a1t) - m2) / torch.sqrt(v2 + bn2.eps) * bn2.weight + bn2.bias))
        test_nll = float(torch.nn.functional.cross_entropy(test_logits, small.y_test))
        test_err = 100.0 * float((test_logits.argmax(1) != small.y_test).double().mean())
    assert got["test_nll"][0] == pytest.approx(test_nll, rel=1e-5)
    assert got["test_error"][0] == pytest.approx(test_err)
    # The reference writes the statistics into the model: they are the hand-made ones.
    ref = copy.deepcopy(net)
    population_bn(ref, small.x_train)
    torch.testing.assert_close(ref[2].running_mean.double(), m1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref[2].running_var.double(), v1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref[5].running_mean.double(), m2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref[5].running_var.double(), v2, rtol=1e-5, atol=1e-6)
    # Population statistics do not depend on the batch size; update_bn's do.
    other = evaluate_points(net, [net], [[1.0]], small, batch_size=37, bn_stats="population")
    assert other["train_nll"][0] == pytest.approx(got["train_nll"][0], rel=1e-6)
    b64 = evaluate_points(net, [net], [[1.0]], small, batch_size=64, bn_stats="batches")
    assert abs(b64["train_nll"][0] - got["train_nll"][0]) > 1e-6


def test_counts_below_one_are_refused_before_any_work(small, monkeypatch):
    """--bn-batches 0 used to estimate nothing and report losses of 1e6;
    --points-per-pass -3 ended in a traceback. Both, and a batch size of 0,
    are one UserError from the engine and from a sweep, before any forward."""
    import landscape.sweep as sweep_module

    net = convnet(3)
    monkeypatch.setattr(sweep_module, "evaluate_points", lambda *a, **k: pytest.fail("evaluated"))
    for kw, flag in ((dict(bn_batches=0), "--bn-batches"), (dict(points_per_pass=-3), "--points-per-pass"),
                     (dict(points_per_pass=0), "--points-per-pass"), (dict(batch_size=0), "--batch-size"),
                     (dict(points_per_pass=float("nan")), "--points-per-pass"), (dict(bn_batches=2.5), "--bn-batches")):
        with pytest.raises(UserError, match=f"{flag} must be a whole number of at least 1"):
            evaluate_points(net, [net, convnet(4)], LINE, small, **kw)
        with pytest.raises(UserError, match=f"{flag} must be a whole number of at least 1"):
            sweep_module.run_sweep(net, torch.stack([ParamSpace.of(net).flatten(net)] * 2), LINE, small, **kw)
    # a negative or NaN weight decay gave train losses of -170, or NaN in summary.json
    for wd in (-1.0, float("nan")):
        with pytest.raises(UserError, match=f"^--wd must be a finite number >= 0, got {wd}$"):
            evaluate_points(net, [net, convnet(4)], LINE, small, wd=wd)
        with pytest.raises(UserError, match=f"^--wd must be a finite number >= 0, got {wd}$"):
            sweep_module.run_sweep(net, torch.stack([ParamSpace.of(net).flatten(net)] * 2), LINE, small, wd=wd)


def test_bn_stats_auto_and_bad_names(small):
    net = convnet(3)
    assert resolve_bn_stats("auto", net, small) == "population"  # 300 small images fit easily
    assert resolve_bn_stats("auto", net, small, bn_batches=2) == "batches"
    assert resolve_bn_stats("auto", mlp(3), small) == "batches"  # nothing to estimate
    assert resolve_bn_stats("batches", net, small) == "batches"
    with pytest.raises(UserError, match="cannot be combined"):
        resolve_bn_stats("population", net, small, bn_batches=2)
    with pytest.raises(UserError, match="unknown bn-stats 'exact'; choose one of: auto, population, batches"):
        evaluate_points(net, [net], [[1.0]], small, bn_stats="exact")
    auto = evaluate_points(net, [net], [[1.0]], small, batch_size=64)
    pop = evaluate_points(net, [net], [[1.0]], small, batch_size=64, bn_stats="population")
    for key in METRICS:
        assert auto[key][0] == pop[key][0]


class SharedBn(torch.nn.Module):
    """One batch-norm layer applied twice in a forward."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2, self.head = torch.nn.Linear(64, 12), torch.nn.Linear(12, 12), torch.nn.Linear(12, 10)
        self.bn = torch.nn.BatchNorm1d(12)

    def forward(self, x):
        h = torch.relu(self.bn(self.lin1(x.flatten(1))))
        return self.head(torch.relu(self.bn(self.lin2(h))))


def test_a_batch_norm_layer_called_twice_is_estimated_by_batches(small):
    """The statistics pass of population keeps one call's statistics per layer, so
    a shared layer would give train metrics that are not the eval-mode ones:
    auto falls back to batches, an explicit population is refused."""
    nets = []
    for seed in (4, 5):
        torch.manual_seed(seed)
        nets.append(SharedBn())
        displace_bn_stats(nets[-1], small)  # statistics of its own: the engine must reset them
    net = nets[0]
    assert resolve_bn_stats("auto", net, small) == "batches"
    with pytest.raises(UserError, match=r"bn runs more than once; use --bn-stats batches"):
        resolve_bn_stats("population", net, small)
    for bn_batches in (None, 2):
        ref = evaluate_points_sequential(net, nets, LINE, small, batch_size=64, bn_batches=bn_batches)
        for strategy in ("vmap", "loop"):  # vmap cannot average every call: the engine loops
            got = evaluate_points(net, nets, LINE, small, batch_size=64, bn_batches=bn_batches, strategy=strategy,
                                  points_per_pass=2)
            for key in METRICS:
                assert_close(got[key], ref[key])
    assert np.ptp(got["train_nll"]) > 1e-3
    # The train metrics reported are those of the model in eval mode with the stored statistics.
    fixed = copy.deepcopy(net)
    reestimate_bn(fixed, small.batches("train", 64), max_batches=2)
    assert got["train_nll"][0] == pytest.approx(evaluate_model(fixed, small, "train", batch_size=64)["nll"], rel=1e-5)


class InstanceNet(torch.nn.Sequential):
    """Instance norm that keeps running statistics (eval mode reads them), then batch norm."""

    def __init__(self):
        super().__init__(torch.nn.Conv2d(1, 6, 3, padding=1),
                         torch.nn.InstanceNorm2d(6, affine=True, track_running_stats=True), torch.nn.ReLU(),
                         torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                         torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


def instance_net_by_hand(net, x):
    """``net``'s statistics set from the whole of ``x`` by hand: instance norm's, the mean over the images of
    each image's own channel means and unbiased variances; batch norm's, its input's over all of them, with
    each image normalised by itself before it, as in training (where batch norm's statistics are gathered)."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        h = net[0](x)
        net[1].running_mean.copy_(h.mean((2, 3)).mean(0))
        net[1].running_var.copy_(h.var((2, 3), unbiased=True).mean(0))
        each = (h - h.mean((2, 3), keepdim=True)) / (h.var((2, 3), unbiased=False, keepdim=True) + net[1].eps).sqrt()
        h = net[3](net[2](each * net[1].weight[:, None, None] + net[1].bias[:, None, None]))
        net[4].running_mean.copy_(h.mean((0, 2, 3)))
        net[4].running_var.copy_(h.var((0, 2, 3), unbiased=True))
    return net


def test_instance_norm_that_keeps_running_statistics_has_them_estimated_at_every_point(small):
    """Its statistics are re-estimated as batch norm's are (the first network's never reach another point), by
    batches: the one-batch population pass would normalise each image by itself."""
    nets = []
    for seed in (6, 7):
        torch.manual_seed(seed)
        nets.append(InstanceNet())
        with torch.no_grad():
            for p in nets[-1].parameters():
                p.mul_(3)  # logits that tell the points apart
        displace_bn_stats(nets[-1], small)
        nets[-1][1].running_mean.uniform_(-1, 1)
        nets[-1][1].running_var.uniform_(0.5, 2)
    net = nets[0]
    assert resolve_bn_stats("auto", net, small) == "batches"
    with pytest.raises(UserError, match=r"instance norm does not \(layer 1 keeps running statistics\); use --bn-stats batches"):
        resolve_bn_stats("population", net, small)
    ends = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = evaluate_points(net, nets, ends, small, batch_size=len(small.y_train), strategy="loop")
    for i, end in enumerate(nets):
        want = instance_net_by_hand(end, small.x_train)
        for split, x, y in (("train", small.x_train, small.y_train), ("test", small.x_test, small.y_test)):
            with torch.no_grad():
                nll = torch.nn.functional.cross_entropy(want(x), y).item()
            assert got[f"{split}_nll"][i] == pytest.approx(nll, rel=1e-5)
    stale = copy.deepcopy(nets[1]).eval()  # the second network with the first one's stored statistics
    stale[1].load_state_dict(nets[0][1].state_dict())
    with torch.no_grad():
        assert abs(torch.nn.functional.cross_entropy(stale(small.x_test), small.y_test).item()
                   - got["test_nll"][1]) > 1e-3
    # By batches, each batch weighted by its size, as batch norm's: the engine and the sequential reference agree.
    ref = evaluate_points_sequential(net, nets, LINE, small, batch_size=64)
    for strategy in ("auto", "loop"):
        got = evaluate_points(net, nets, LINE, small, batch_size=64, strategy=strategy, points_per_pass=2)
        for key in METRICS:
            assert_close(got[key], ref[key])
    assert np.ptp(got["train_nll"]) > 1e-3


class FrozenStem(torch.nn.Module):
    """A pretrained stem whose batch norm the network keeps in eval mode, by overriding ``train()``."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16)
        self.lin, self.bn, self.head = torch.nn.Linear(16, 12), torch.nn.BatchNorm1d(12), torch.nn.Linear(12, 10)

    def train(self, mode=True):
        super().train(mode)
        self.stem_bn.eval()
        return self

    def forward(self, x):
        h = torch.relu(self.stem_bn(self.stem(x.flatten(1))))
        return self.head(torch.relu(self.bn(self.lin(h))))


def test_a_batch_norm_layer_the_network_keeps_in_eval_mode_keeps_its_statistics(small):
    """Training never moves a frozen stem's statistics, so neither does re-estimation: at each end the
    network is itself, with only the other layer's statistics estimated (by hand here, over the whole set)."""
    nets = []
    for seed in (8, 9):
        torch.manual_seed(seed)
        nets.append(FrozenStem())
        displace_bn_stats(nets[-1], small)
    nets[1].stem.load_state_dict(nets[0].stem.state_dict())  # one pretrained stem, fine-tuned heads
    nets[1].stem_bn.load_state_dict(nets[0].stem_bn.state_dict())
    ends = np.array([[1.0, 0.0], [0.0, 1.0]])
    for bn_stats in ("population", "batches"):
        got = evaluate_points(nets[0], nets, ends, small, bn_stats=bn_stats, batch_size=len(small.y_train))
        for i, net in enumerate(nets):
            want = copy.deepcopy(net).eval()
            with torch.no_grad():
                h = want.lin(torch.relu(want.stem_bn(want.stem(small.x_train.flatten(1)))))
                want.bn.running_mean.copy_(h.mean(0))
                want.bn.running_var.copy_(h.var(0, unbiased=bn_stats == "batches"))
                nll = torch.nn.functional.cross_entropy(want(small.x_test), small.y_test).item()
            assert got["test_nll"][i] == pytest.approx(nll, rel=1e-5), bn_stats
    assert resolve_bn_stats("auto", nets[0], small) == "population"
    fixed = copy.deepcopy(nets[0])
    reestimate_bn(fixed, small.batches("train", 64))
    assert torch.equal(fixed.stem_bn.running_mean, nets[0].stem_bn.running_mean)
    assert not torch.equal(fixed.bn.running_mean, nets[0].bn.running_mean)
    assert fixed.training and not fixed.stem_bn.training  # modes put back


def test_finding_the_batch_norm_layers_leaves_modes_and_trained_parameters_as_they_were():
    """bn_modules asks the network's own train() which layers gather statistics; an override that also freezes
    parameters (or any mode) must leave no trace: ParamSpace reads requires_grad."""
    from landscape.bn import bn_modules

    class Freezing(FrozenStem):
        def train(self, mode=True):
            super().train(mode)
            self.stem.requires_grad_(False)
            return self

    net = Freezing()
    net.head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(12, 10))
    for m in net.modules():  # eval mode, every parameter trained (eval() would call the override)
        m.training = False
    before = ({n: m.training for n, m in net.named_modules()}, {n: p.requires_grad for n, p in net.named_parameters()})
    assert [n for n, _ in bn_modules(net)] == ["bn"]
    assert ({n: m.training for n, m in net.named_modules()}, {n: p.requires_grad for n, p in net.named_parameters()}) \
        == before
    assert not any(before[0].values()) and all(before[1].values())


class Same(torch.nn.Module):
    """An identity parametrization: the same function, the same weights; it makes its layer a module with children."""

    def forward(self, w):
        return w


def test_a_parametrized_batch_norm_layer_called_twice_is_still_found(small):
    """A parametrized weight gives the batch-norm layer child modules: its calls are counted all the same."""
    import torch.nn.utils.parametrize as parametrize

    torch.manual_seed(4)
    plain = SharedBn()
    param = copy.deepcopy(plain)
    parametrize.register_parametrization(param.bn, "weight", Same())
    assert list(param.bn.children())
    assert resolve_bn_stats("auto", param, small) == "batches"
    with pytest.raises(UserError, match=r"bn runs more than once"):
        resolve_bn_stats("population", param, small)
    got = evaluate_points(param, [param], [[1.0]], small, batch_size=64)
    ref = evaluate_points(plain, [plain], [[1.0]], small, batch_size=64)
    for key in METRICS:
        assert_close(got[key], ref[key])


class RowLstm(torch.nn.Module):
    """An LSTM over the image's rows: torch has no vmap batching rule for it."""

    def __init__(self):
        super().__init__()
        self.rnn, self.out = torch.nn.LSTM(8, 16, batch_first=True), torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.rnn(x.reshape(-1, 8, 8))[0][:, -1])


def test_a_network_vmap_cannot_batch_loops_under_auto_and_is_refused_under_vmap(small, monkeypatch):
    torch.manual_seed(0)
    nets = [RowLstm(), RowLstm()]
    with pytest.raises(UserError, match=r"^strategy vmap: torch cannot batch this network's points \(Batching "
                                        r"rule not implemented for aten::lstm.*\); use strategy loop$"):
        evaluate_points(nets[0], nets, LINE, small, strategy="vmap")
    ref = evaluate_points_sequential(nets[0], nets, LINE, small)
    # auto picks vmap on CUDA: there it tries the network on two points first, and loops when vmap fails
    monkeypatch.setattr(engine_module, "resolve_strategy", lambda strategy, device: "vmap")
    got = evaluate_points(nets[0], nets, LINE, small, strategy="auto", points_per_pass=3)
    for key in METRICS:
        assert_close(got[key], ref[key])
    # a network vmap runs is batched as before: the trial is remembered per network and mode
    net = convnet(0)
    got = evaluate_points(net, [net, convnet(1)], LINE, small, strategy="auto", channels_last=False)
    assert list(net.__dict__[engine_module._VMAP_TRIED].values()) == [None, None]  # train mode (statistics), eval


def test_the_vmap_trial_draws_no_random_numbers_of_the_run(small):
    """A dropout network under vmap gives the same draws whether its trial runs first or was run before:
    a seeded or resumed run does not depend on the trial."""
    from landscape.evaluate import forward_points

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Dropout(0.5),
                              torch.nn.Linear(32, 10)).train()
    space = ParamSpace.of(net)
    params = space.unflatten(torch.stack([space.flatten(net)] * 3))
    outs = []
    for _ in range(2):  # the first call tries vmap, the second finds the trial's answer
        torch.manual_seed(1)
        outs.append(forward_points(net, params, {}, small.x_train[:8], strategy="vmap"))
        outs.append(torch.rand(3))  # the generator's state after the call
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert not torch.equal(outs[0][0], outs[0][1])  # each point its own dropout mask: the draws are there

@pytest.mark.parametrize("shared", [False, True], ids=["per-batch", "every-call"])
def test_a_last_batch_of_one_sample_joins_the_one_before(small, shared):
    """129 training samples in batches of 64: the last batch would hold one
    sample, which BatchNorm1d refuses to normalise. Both batch estimators use
    batches of 64 and 65 instead; by hand: the papers' update_bn over those two batches (for a layer called
    twice, each call's statistics weighted by its size)."""
    data = dataclasses.replace(small, x_train=small.x_train[:129], y_train=small.y_train[:129])

    def net(seed):
        torch.manual_seed(seed)
        if shared:
            return SharedBn()
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.BatchNorm1d(12),
                                   torch.nn.ReLU(), torch.nn.Linear(12, 10))

    nets = [net(6), net(7)]
    got = evaluate_points(nets[0], nets, LINE[[0, 2]], data, batch_size=64, bn_stats="batches")
    by_hand = copy.deepcopy(nets[0])
    with torch.no_grad():
        for p, a, b in zip(by_hand.parameters(), nets[0].parameters(), nets[1].parameters()):
            p.copy_(0.5 * a + 0.5 * b)
    batches = [data.x_train[:64], data.x_train[64:]]
    if shared:  # every call a batch of its own, weighted by its size (the papers' code sets one momentum a forward)
        calls = []
        hook = by_hand.bn.register_forward_pre_hook(lambda m, args: calls.append(args[0].detach().double()))
        with torch.no_grad():
            for x in batches:
                by_hand.train()(x)
        hook.remove()
        n = sum(c.shape[0] for c in calls)
        assert [c.shape[0] for c in calls] == [64, 64, 65, 65]
        by_hand.bn.running_mean.copy_(sum(c.shape[0] * c.mean(0) for c in calls) / n)
        by_hand.bn.running_var.copy_(sum(c.shape[0] * c.var(0) for c in calls) / n)
    else:
        papers_update_bn(batches, by_hand)
    want = evaluate_model(by_hand, data, "test", batch_size=64)
    assert got["test_nll"][1] == pytest.approx(want["nll"], rel=1e-5)
    assert got["test_error"][1] == pytest.approx(want["error"])
    assert [len(x) for x, _ in data.statistics_batches(64)] == [64, 65]


def test_auto_takes_batches_when_the_whole_training_set_does_not_fit(small, monkeypatch):
    net = convnet(3)
    assert resolve_bn_stats("auto", net, small) == "population"
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e5)  # 100 kB
    assert resolve_bn_stats("auto", net, small) == "batches"
    assert resolve_bn_stats("population", net, small) == "population"  # asked for: honoured


def test_auto_keeps_every_layer_output_under_2_to_the_31_elements(small, monkeypatch):
    """The largest layer output is read off a probe (by hand: the 64 inputs a
    Flatten passes on); the whole training set through it must stay under
    2^31 elements, however much memory there is."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.BatchNorm1d(12),
                              torch.nn.ReLU(), torch.nn.Linear(12, 10))
    assert engine_module._probe_forward(net, small).largest == 64
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e30)
    n = len(small.y_train)
    below = engine_module._Probe(largest=(2**31 - 1) // n, output_bytes=0.0, reused_bn=[])
    assert resolve_bn_stats("auto", net, small, probe=below) == "population"
    at = engine_module._Probe(largest=-(-2**31 // n), output_bytes=0.0, reused_bn=[])
    assert resolve_bn_stats("auto", net, small, probe=at) == "batches"


def test_vmap_sizes_a_pass_by_the_activations_alive_at_once(small, monkeypatch):
    """vmap's points per pass: each point's weights three times over, and LIVE_COPIES float32 copies of the
    largest layer output (Linear 12 of Flatten 64, Linear 12, ReLU 12, Linear 10 floats per image: 64)
    for every image of the pass; not the sum of every layer's output, which only a backward keeps."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))
    numel = ParamSpace.of(net).numel
    assert engine_module._live_bytes(engine_module._probe_forward(net, small), 1000) == 8 * 4 * 64 * 1000
    per_point = 12 * numel + 8 * 4 * 64 * 1000
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 7.5 * per_point)
    assert engine_module.choose_points_per_pass(net, small, 1000, numel, "vmap") == 7
    assert engine_module.choose_points_per_pass(net, small, 1000, numel, "loop") == 256  # weights only, at most 256
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 0.5 * per_point)
    assert engine_module.choose_points_per_pass(net, small, 1000, numel, "vmap") == 1  # never 0
    # vmap makes the K points' largest outputs one tensor, kept under 2^31 elements whatever the memory:
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e30)
    assert engine_module.choose_points_per_pass(net, small, 2**20, numel, "vmap") == (2**31 - 1) // (64 * 2**20) == 31
    assert engine_module.choose_points_per_pass(net, small, 2**20, numel, "loop") == 256  # one point at a time


def test_a_pass_that_runs_out_of_memory_is_split_until_it_fits(small, monkeypatch, capsys):
    """A pass of more than two points fails as CUDA's allocator would: the engine halves it (5 -> 2),
    gives the same numbers as one pass of every point, and remembers what fit for the next call."""
    nets = [convnet(20), convnet(21), convnet(22)]
    coefficients = np.array([[1 - a - b, a, b] for a in (0.0, 0.3, 0.6) for b in (0.0, 0.4)] + [[0.2, 0.2, 0.6]])
    whole = evaluate_points(nets[0], nets, coefficients, small, points_per_pass=7)
    real, sizes = engine_module._evaluate_chunk, []

    def small_memory(template, space, points, *a, **kw):
        sizes.append(points.shape[0])
        if points.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(template, space, points, *a, **kw)

    monkeypatch.setattr(engine_module, "_evaluate_chunk", small_memory)
    got = evaluate_points(nets[0], nets, coefficients, small, points_per_pass=5)
    assert sizes == [5, 2, 2, 2, 1]
    for key in METRICS:
        np.testing.assert_array_equal(got[key], whole[key])
    err = capsys.readouterr().err
    assert err.splitlines() == ["landscape: out of memory with 5 points per pass; going on with 2"]
    sizes.clear()  # the next call with these settings starts from what fit
    evaluate_points(nets[0], nets, coefficients[:3], small, points_per_pass=5)
    assert sizes == [2, 1] and capsys.readouterr().err == ""
    # failing in the middle of a pass (its third forward: statistics half gathered) gives the same numbers
    monkeypatch.setattr(engine_module, "_evaluate_chunk", real)
    real_forward, forwards = engine_module.forward_points, []

    def mid_pass(model, params, buffers, x, strategy="auto"):
        k = next(iter(params.values())).shape[0]
        forwards.append(k)
        if k > 2 and forwards.count(k) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(model, params, buffers, x, strategy)

    monkeypatch.setattr(engine_module, "forward_points", mid_pass)
    again = evaluate_points(nets[1], nets, coefficients, small, points_per_pass=4, batch_size=100, bn_stats="batches")
    monkeypatch.setattr(engine_module, "forward_points", real_forward)
    by_two = evaluate_points(nets[2], nets, coefficients, small, points_per_pass=2, batch_size=100, bn_stats="batches")
    assert forwards[:3] == [4, 4, 4] and set(forwards[3:]) <= {1, 2}
    for key in METRICS:
        np.testing.assert_array_equal(again[key], by_two[key])
    assert capsys.readouterr().err.splitlines() == ["landscape: out of memory with 4 points per pass; going on with 2"]
    # a single point that does not fit, and any other error, are raised as they are
    monkeypatch.setattr(engine_module, "_evaluate_chunk",
                        lambda *a, **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.OutOfMemoryError):
        evaluate_points(nets[1], nets, coefficients[:1], small)
    monkeypatch.setattr(engine_module, "_evaluate_chunk",
                        lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    with pytest.raises(RuntimeError, match="shapes"):
        evaluate_points(nets[2], nets, coefficients, small, points_per_pass=4)
    assert "out of memory" not in capsys.readouterr().err


def test_the_loop_strategy_takes_at_most_8_points_per_pass_vmap_what_memory_allows(small, monkeypatch):
    """Points run one after another gain nothing from a bigger pass, and a
    sweep stores its progress once per pass; vmap's K follows the memory."""
    net = convnet(3)
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e12)
    assert engine_module.default_points_per_pass(net, small, "population", 64, "loop") == 8
    assert engine_module.default_points_per_pass(net, small, "population", 64, "auto") == 8  # loop on the CPU
    assert engine_module.default_points_per_pass(net, small, "batches", 64, "vmap") == 256
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 12 * ParamSpace.of(net).numel * 3)
    assert engine_module.default_points_per_pass(net, small, "batches", 64, "loop") == 3
    # where one point writes much (many or large images), fewer points a pass, so that progress is stored often
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e12)
    per_image = engine_module._probe_forward(net, small).output_bytes
    images = len(small.y_train) + len(small.y_test)
    for points in (1, 3):
        monkeypatch.setattr(engine_module, "LOOP_PASS_BYTES", points * per_image * images)
        assert engine_module.default_points_per_pass(net, small, "population", 64, "loop") == points
    monkeypatch.setattr(engine_module, "LOOP_PASS_BYTES", per_image * images / 10)
    assert engine_module.default_points_per_pass(net, small, "population", 64, "loop") == 1  # never 0
    # the batches estimator passes the training images twice (statistics, then the train metrics)
    monkeypatch.setattr(engine_module, "LOOP_PASS_BYTES", 2 * per_image * images)
    assert engine_module.default_points_per_pass(net, small, "batches", 64, "loop") == int(
        2 * images // (2 * len(small.y_train) + len(small.y_test)))
    # nor more points than keep their weights (float64 points of a plane's basis, float32 parameters) under
    # LOOP_WEIGHT_BYTES: a 25M-parameter network held 8 points' 350 MB each for no gain
    monkeypatch.setattr(engine_module, "LOOP_PASS_BYTES", 64 * 2 ** 30)
    numel = ParamSpace.of(net).numel
    for points in (1, 2, 5):
        monkeypatch.setattr(engine_module, "LOOP_WEIGHT_BYTES", points * 16 * numel + 1)
        assert engine_module.default_points_per_pass(net, small, "population", 64, "loop") == points
    monkeypatch.setattr(engine_module, "LOOP_WEIGHT_BYTES", numel)
    assert engine_module.default_points_per_pass(net, small, "population", 64, "loop") == 1  # never 0
    assert engine_module.default_points_per_pass(net, small, "batches", 64, "vmap") == 256  # vmap: its own rule


# --------------------------------------------------------------------------- metrics
def test_barrier_on_a_hand_made_profile():
    assert barrier([1.0, 3.0, 2.0, 0.5]) == pytest.approx(3.0 - 0.5 * (1.0 + 0.5))
    assert barrier([2.0, 1.0, 0.0]) == pytest.approx(2.0 - 1.0)  # the max is an endpoint
    assert barrier(np.array([0.5, 0.5])) == 0.0


def test_arc_length_mean_constant_and_varying_speed():
    t = np.array([0.0, 0.1, 0.4, 0.6, 1.0])
    values = np.array([1.0, 4.0, 2.0, 3.0, 0.5])
    plain = sum((t[i + 1] - t[i]) * (values[i] + values[i + 1]) / 2 for i in range(4)) / (t[-1] - t[0])
    assert arc_length_mean(t, values, arc=3.7 * t) == pytest.approx(plain, rel=1e-12)  # a line: the time average
    # t = 0, 1/2, 1; values 1, 2, 3; arc length 0, 1, 4 (the second half three times as long):
    # (1 + 2)/2 * 1 + (2 + 3)/2 * 3 = 9 over the length 4
    got = arc_length_mean(np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0, 3.0]), arc=np.array([0.0, 1.0, 4.0]))
    assert got == pytest.approx(9 / 4, rel=1e-12)
    assert arc_length_mean(t, values, arc=np.zeros(5)) == pytest.approx(plain, rel=1e-12)  # no length: time average
    with pytest.raises(TypeError):  # the speed, as earlier builds took it third, is not taken for the arc length
        arc_length_mean(t, values, np.full(5, 3.7))
    with pytest.raises(ValueError, match="not the speed"):
        arc_length_mean(t, values, arc=np.full(5, 3.7))


def test_arc_lengths_of_a_polychain_are_exact_across_its_bend():
    """A one-bend chain's speed jumps at t = 1/2: the arc length to each t is
    the segments' lengths by hand, whether a t falls on the bend or not (a
    trapezoid of the speed sampled at the bend takes one side's)."""
    from landscape.curves import create_curve
    from landscape.weights import ParamSpace

    space = ParamSpace.of(torch.nn.Linear(3, 2))
    g = torch.Generator().manual_seed(0)
    start, end = torch.randn(space.numel, generator=g), torch.randn(space.numel, generator=g)
    crv = create_curve("polychain", space, start, end, bends=1)
    with torch.no_grad():
        crv.free.copy_(((start + end) / 2 + 3.0 * torch.randn(space.numel, generator=g))[None])
    bend = crv.anchors()[1].double()
    l1, l2 = float((bend - start.double()).norm()), float((end.double() - bend).norm())
    for t, want in (([0.0, 0.5, 1.0], [0, l1, l1 + l2]),
                    ([0.0, 1 / 3, 2 / 3, 1.0], [0, l1 * 2 / 3, l1 + l2 / 3, l1 + l2]),
                    ([0.25, 0.75], [0, (l1 + l2) / 2])):
        assert crv.arc_lengths(t) == pytest.approx(want, rel=1e-6)
    # the arc-length mean of a metric linear in arc length s is its value at half the length
    t = np.linspace(0, 1, 5)
    s = crv.arc_lengths(t)
    assert arc_length_mean(t, 2.0 + 5.0 * s, arc=s) == pytest.approx(2.0 + 5.0 * (l1 + l2) / 2, rel=1e-6)
    assert s[-1] == pytest.approx(float(crv.length()), rel=1e-6)
    bez = create_curve("bezier", space, start, end, bends=2)
    with torch.no_grad():
        bez.free.add_(torch.randn(bez.free.shape, generator=g))
    assert bez.arc_lengths(np.linspace(0, 1, 7))[-1] == pytest.approx(float(bez.length()), rel=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        crv.arc_lengths([0.5, 0.2])


def test_ensemble_metrics_two_members_three_examples():
    probs = np.array([
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]],
        [[0.5, 0.4, 0.1], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]],
    ])  # (2 members, 3 examples, 3 classes)
    labels = np.array([0, 2, 1])
    # mean: [0.6, 0.3, 0.1], [0.3, 0.45, 0.25], [0.2, 0.2, 0.6]
    # p(true) 0.6, 0.25, 0.2; argmax 0, 1, 2 -> wrong on examples 2 and 3
    got = ensemble_metrics(probs, labels)
    assert got["nll"] == pytest.approx(-(np.log(0.6) + np.log(0.25) + np.log(0.2)) / 3, rel=1e-12)
    assert got["error"] == pytest.approx(200.0 / 3)
    assert got["members"] == 2
    # confidences 0.6 (right), 0.45 (wrong), 0.6 (wrong): 20 bins put 0.6 in [0.6, 0.65) and 0.45 in [0.45, 0.5);
    # |1/2 - 0.6| x 2/3 + |0 - 0.45| x 1/3 = 0.0667 + 0.15
    assert got["ece"] == pytest.approx(100 * (0.1 * 2 / 3 + 0.45 / 3), rel=1e-9)
    assert ensemble_metrics(probs[:1], labels)["ece"] == expected_calibration_error(probs[0], labels)


def test_a_model_average_of_far_off_members_keeps_their_nll_by_hand():
    # Members that give the true class e^-30, e^-200 and e^-600: in float32 these probabilities
    # underflow (below ~1e-45) and a 1e-12 floor would report 27.6 nats for each.
    gaps = torch.tensor([30.0, 200.0, 600.0], dtype=torch.float64)
    logits = torch.stack([torch.zeros(3, dtype=torch.float64), gaps], dim=1)  # class 1 wins by the gap
    labels = np.zeros(3, dtype=np.int64)  # ... and class 0 is true
    nll = np.log1p(np.exp(-gaps.numpy())) + gaps.numpy()  # -log softmax(logits)[0] by hand
    probs = engine_module.probs_of(logits).numpy()
    assert probs.dtype == np.float64
    got = ensemble_metrics(probs[None], labels)
    assert got["nll"] == pytest.approx(nll.mean(), rel=1e-12)
    # an average of two equal members is either member; of e^-30 and e^-600, -log((e^-30 + e^-600) / 2)
    assert ensemble_metrics(np.stack([probs, probs]), labels)["nll"] == pytest.approx(nll.mean(), rel=1e-12)
    two = ensemble_metrics(np.stack([probs[:1], probs[2:]]), labels[:1])["nll"]
    assert two == pytest.approx(30.0 + np.log(2.0), rel=1e-12)


def test_a_one_point_average_has_the_engines_nll_at_a_far_off_point(small):
    # 5 x the weights: the logits grow with every layer's scale, far past float32 probabilities
    model = convnet(0)
    res = evaluate_points(model, [model], [[5.0]], small, return_probs=True)
    labels = small.y_test.cpu().numpy()
    p_true = res["probs"][0][np.arange(len(labels)), labels]
    assert p_true.min() < 1e-30  # far below the old floor (1e-12) and float32's reach
    assert ensemble_metrics(res["probs"][:1], labels)["nll"] == pytest.approx(res["test_nll"][0], rel=1e-5)
    seq = evaluate_points_sequential(model, [model], [[5.0]], small, return_probs=True, bn_stats="population")
    assert ensemble_metrics(seq["probs"][:1], labels)["nll"] == pytest.approx(seq["test_nll"][0], rel=1e-5)


def test_the_calibration_error_by_hand_and_of_calibrated_and_overconfident_predictions():
    p = np.array([[0.92, 0.08], [0.91, 0.09], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # 10 bins: [0.9, 1) holds 0.92 (right) and 0.91 (wrong), [0.6, 0.7) 0.6 (right), [0.7, 0.8) 0.7 (right)
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(
        100 * (abs(0.5 - 0.915) * 2 + abs(1 - 0.6) + abs(1 - 0.7)) / 4, rel=1e-12)
    confidence, accuracy, count = reliability(p, y, bins=10)
    assert count.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 2] and accuracy[9] == 0.5 and np.isnan(confidence[0])
    assert reliability(np.array([[1.0, 0.0]]), np.array([0]), bins=10)[2][9] == 1  # a confidence of 1: the last bin
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 40000)  # two classes, each prediction right with its confidence: calibrated
    right = rng.uniform(size=conf.size) < conf
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(right, 0, 1)
    assert expected_calibration_error(probs, labels) < 1.0
    sharp = np.stack([np.full(conf.size, 0.99), np.full(conf.size, 0.01)], 1)  # always 99 % sure, right 75 %
    assert expected_calibration_error(sharp, labels) == pytest.approx(100 * abs(0.99 - right.mean()), rel=1e-9)
    # outputs that overflowed: no calibration to measure, and no crash (their NLL is NaN too)
    broken = np.full((3, 2), np.nan)
    assert np.isnan(expected_calibration_error(broken, np.array([0, 1, 0])))
    assert reliability(broken, np.array([0, 1, 0]))[2].sum() == 0
    got = ensemble_metrics(broken[None], np.array([0, 1, 0]))
    assert np.isnan(got["ece"]) and np.isnan(got["nll"])


def test_unique_rows_keeps_first_appearance_order_and_inverts():
    from landscape.evaluate import unique_rows

    c = np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
    rows, inverse = unique_rows(c)
    assert rows.tolist() == [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]
    assert np.array_equal(rows[inverse], c)


def test_repeated_points_get_the_same_metrics_as_a_single_evaluation(small):
    anchors = [convnet(41), convnet(42)]
    once = evaluate_points(convnet(41), anchors, [[1.0, 0.0], [0.5, 0.5]], small, batch_size=64, return_probs=True)
    twice = evaluate_points(convnet(41), anchors, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]], small, batch_size=64,
                            return_probs=True)
    for key in once:
        assert np.array_equal(twice[key][[1, 0, 2]], once[key][[0, 1, 1]]), key


def test_is_whole_accepts_counts_and_nothing_else():
    from landscape.errors import is_whole

    assert [is_whole(v) for v in (3, np.int64(3), 3.0, np.float32(2.0), 0)] == [True] * 5
    assert [is_whole(v) for v in (True, 2.5, float("nan"), float("inf"), "3", None)] == [False] * 6


def test_sweep_keys_keep_the_data_fingerprint_apart():
    """A key hashes the settings without the data's fingerprint and appends it, so
    that a result stored before fingerprints (the same hash, no suffix) still
    matches, and one of changed files is told apart from one of other settings."""
    from landscape.sweep import compare_keys, request_key

    v = [torch.arange(4.0)]
    data = {"name": "d", "n_train": 3}
    old = request_key(v, {"kind": "plane", "dataset": data})
    new = request_key(v, {"kind": "plane", "dataset": dict(data, fingerprint="0badf00d")})
    assert new == old + ":0badf00d"
    assert compare_keys(old, new) is None and compare_keys(new, new) is None
    assert compare_keys(new, request_key(v, {"kind": "plane", "dataset": dict(data, fingerprint="12345678")})) == "data"
    assert compare_keys(new, request_key(v, {"kind": "rays", "dataset": dict(data, fingerprint="0badf00d")})) == \
        "settings"
    assert compare_keys(new, request_key([torch.arange(5.0)], {"kind": "plane", "dataset": data})) == "settings"


def test_a_finished_result_whose_derived_settings_moved_by_rounding_is_still_its_answer(tmp_path):
    """A subspace's start, derived from the checkpoint, moved by 5e-11 once computed in float64: a demo folder
    of the earlier build was refused ("other settings: start [0.8650496722743196, ...], now [0.865049672328763,
    ...]") though its inputs and options were the same. A real change of a setting, the inputs or the data is
    still refused."""
    from landscape.sweep import begin_result, finish_result, request_key

    v = [torch.arange(4.0)]
    data = {"name": "d", "n_train": 3, "fingerprint": "0badf00d"}
    settings = {"kind": "subspace", "start": [0.8650496722743196, -0.4999999999998878], "dataset": data, "k": 3}
    out = tmp_path / "sub"
    out.mkdir()
    arrays = {"x": np.arange(3.0)}
    finish_result(out, "r.npz", arrays, {"notes": []}, request=request_key(v, settings))
    moved = dict(settings, start=[0.865049672328763, -0.4999999999998684])
    got, summary = begin_result(out, "r.npz", True, "subspace", request=request_key(v, moved))
    assert np.array_equal(got["x"], arrays["x"]) and summary["request_settings"]["start"] == settings["start"]
    for other, said in ((request_key(v, dict(settings, start=[0.8650497, -0.5])), r"other settings: start \[0\.8650496722743196, -0\.4999999999998878\], now \[0\.8650497, -0\.5\]"),
                        (request_key(v, dict(moved, k=4)), "other settings: k 3, now 4"),  # start not named
                        (request_key(v, dict(moved, k=3.0000001)), "other settings: k 3, now 3.0000001"),
                        (request_key(v, dict(moved, flag=True, k=1)), "other settings: flag none, now true; k 3, "
                                                                     "now 1"),
                        (request_key([torch.arange(4.0) + 1], moved), r"other inputs \(the weights given differ\)"),
                        (request_key(v, dict(moved, dataset=dict(data, fingerprint="12345678"))),
                         r"other data \(the data's files changed since\)")):
        with pytest.raises(UserError, match=f"holds a finished subspace result of {said}; choose another --out$"):
            begin_result(out, "r.npz", True, "subspace", request=other)
    from landscape.sweep import _close

    assert not _close(True, 1) and not _close([False], [0]) and _close(True, True) and _close(1, 1.0)
    assert not _close(1e-13, 0.0) and _close(1e-17, 0.0) and not _close(5e-4, 5.0001e-4)


def test_a_stored_point_whose_logits_overflowed_still_resumes(tmp_path):
    """Finite weights whose logits overflow give a NaN NLL and NaN
    probabilities: a real result, which a resume must keep, not call the
    store damaged (its error rate is a number, as every evaluated point's)."""
    from landscape.sweep import run_sweep

    data = load_dataset("synthetic", synthetic_shape=(4,), synthetic_classes=3, synthetic_sizes=(50, 20))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    w = ParamSpace.of(model).flatten(model).detach()
    anchors, coefficients = torch.stack([w, w * 1e37]), np.array([[1.0, 0.0], [0.0, 30.0]])
    store = tmp_path / "sweep.partial.npz"
    first = run_sweep(model, anchors, coefficients, data, store=store, return_probs=True, points_per_pass=1)
    assert np.isnan(first["test_nll"][1]) and np.isnan(first["probs"][1]).any() and np.isfinite(first["test_error"]).all()
    again = run_sweep(model, anchors, coefficients, data, store=store, resume=True, return_probs=True, points_per_pass=1)
    np.testing.assert_array_equal(again["probs"], first["probs"])


@pytest.mark.parametrize("before", ["", "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
                                    "torch.backends.cudnn.conv.fp32_precision = 'tf32'",
                                    "torch.backends.cuda.matmul.allow_tf32 = True"])
def test_full_float32_sets_ieee_and_puts_back_what_the_program_set(before):
    """TF32 off inside, the program's own settings back after, whichever of
    torch's two ways it used (mixing them makes the old flags raise on read).
    In a fresh process: these settings are the process's."""
    import subprocess
    import sys
    script = f"""
import torch
from landscape.evaluate import full_float32
{before}
b = torch.backends
if hasattr(b.cuda.matmul, "fp32_precision"):
    names = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")
    get = lambda: [eval("b." + n + ".fp32_precision") for n in names]
    start = get()
    with full_float32():
        assert get() == ["ieee"] * 3, get()
    assert get() == start, (get(), start)
else:
    start = b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32
    with full_float32():
        assert not b.cuda.matmul.allow_tf32 and not b.cudnn.allow_tf32
    assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == start
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_population_statistics_are_chosen_on_cuda_only_where_the_engines_own_estimate_of_a_point_fits(small,
                                                                                                       monkeypatch):
    """A population pass that does not fit one point fails (there is no
    smaller pass): on CUDA the auto choice counts what the engine sizes a
    lone point's forward at, not fewer copies; the CPU's 2 GiB is a pass
    size, where four copies keep the faster population statistics."""
    net = convnet(3)
    probe = engine_module._probe_forward(net, small)
    n = len(small.y_train)
    cuda = engine_module._whole_set_bytes(probe, n, torch.device("cuda"))
    assert cuda > engine_module._live_bytes(probe, n)
    cpu = engine_module._whole_set_bytes(probe, n, torch.device("cpu"))
    assert cpu == 4 * 4 * probe.largest * n < cuda
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: cpu)
    assert resolve_bn_stats("auto", net, small) == "population"
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: cpu - 1)
    assert resolve_bn_stats("auto", net, small) == "batches"
    # The same choice for data on CUDA (a stand-in: the choice reads the device and the number of images):
    # four copies' budget no longer makes it population there, nine copies' does.
    from types import SimpleNamespace

    on_cuda = SimpleNamespace(device=torch.device("cuda"), y_train=small.y_train)
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: cpu if device.type == "cuda" else 0)
    assert resolve_bn_stats("auto", net, on_cuda, probe=probe) == "batches"
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: cuda if device.type == "cuda" else 0)
    assert resolve_bn_stats("auto", net, on_cuda, probe=probe) == "population"


def test_l2_penalty_is_half_wd_times_the_sum_of_squares_of_the_trained_parameters_in_order():
    from landscape.evaluate import l2_penalty

    net = convnet(5)
    next(net.parameters()).requires_grad_(False)  # a frozen layer is left out
    total = 0.0
    for p in net.parameters():
        if p.requires_grad:
            total += float((p.detach().double() ** 2).sum())
    assert l2_penalty(net, 3e-4) == 0.5 * 3e-4 * total  # the same sums in the same order: bit for bit
    assert l2_penalty(torch.nn.Sequential(torch.nn.ReLU()), 1e-4) == 0.0


def test_batch_norm_without_running_statistics_is_noted_once_as_depending_on_the_batch_size(small_digits, capsys):
    """Such a layer normalises every batch by its own statistics in eval mode too: the numbers change with
    --batch-size, and the network was treated as one without batch norm, without a word."""
    from landscape import errors
    from landscape.bn import bn_modules, per_batch_norms

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16),
                              torch.nn.BatchNorm1d(16, track_running_stats=False), torch.nn.ReLU(),
                              torch.nn.Linear(16, 10))
    assert per_batch_norms(net) == ["2"] and bn_modules(net) == []
    assert per_batch_norms(torch.nn.Sequential(torch.nn.InstanceNorm2d(3))) == []  # each image alone
    errors._NOTES_SAID.clear()
    w = ParamSpace.of(net).flatten(net.state_dict())[None]
    big = evaluate_points(net, w, [[1.0]], small_digits, batch_size=1000)
    small = evaluate_points(net, w, [[1.0]], small_digits, batch_size=50)
    assert abs(big["train_nll"][0] - small["train_nll"][0]) > 1e-4  # what the note says is so
    err = capsys.readouterr().err
    assert err.count("note: 2 normalises each batch by its own statistics") == 1, err
    assert "depend on --batch-size (1000)" in err


def test_reestimate_bn_given_a_dataset_is_one_line_and_leaves_the_statistics(small_digits):
    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UserError, match="not a Dataset: give its training batches, e.g. data.statistics_batches"):
        reestimate_bn(net, small_digits)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert reestimate_bn(net, small_digits.statistics_batches(1000)) == 1  # 400 images: one batch
