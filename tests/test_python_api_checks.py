"""What the Python API checks for a researcher's own networks and data: a
module of another architecture given as an anchor, a network that does not
fit the data in evaluate_model, data passed from Python that a later call
would silently replace, and buffers that differ between networks."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from torch import nn

import landscape.models as models
from landscape.curves import evaluate_curve, fit_curve
from landscape.curves.spro import espro, grow_simplex
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import evaluate_model, evaluate_points
from landscape.inputs import load_points
from landscape.train import train
from landscape.weights import ParamSpace


def mlp(norm: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(64, 16)] + ([nn.LayerNorm(16)] if norm else []) + [nn.ReLU(), nn.Linear(16, 10)]
    return nn.Sequential(*layers)


def test_an_anchor_module_of_another_architecture_is_refused(small_digits):
    plain, normed = mlp(False), mlp(True)
    # normed's first Linear is "1", its head "4"; plain's head is "3": give them the same names but one more layer
    extra = nn.Sequential(*plain, nn.Identity())
    extra.add_module("5", nn.Linear(10, 10))
    with pytest.raises(UserError, match="parameter '5.weight' is not one of the model's"):
        ParamSpace.of(plain).flatten(extra, source="anchor 1")
    with pytest.raises(UserError, match="anchor 1: parameter '5.weight'"):
        evaluate_points(plain, [plain, extra], [[0.5, 0.5]], small_digits)
    with pytest.raises(UserError):  # another shape under the same name
        evaluate_points(plain, [plain, normed], [[0.5, 0.5]], small_digits)


def test_evaluate_model_says_why_a_network_does_not_fit_its_data(small_digits):
    few = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(UserError, match="gives 5 outputs, but the data has 10 classes"):
        evaluate_model(few, small_digits)
    with pytest.raises(UserError, match="does not accept this data's inputs"):
        evaluate_model(nn.Linear(10, 10), small_digits)
    with pytest.raises(UserError, match=r"parameters are torch.float64; .*model.float\(\)"):
        evaluate_model(mlp(False).double(), small_digits)
    # a network that fits: the hand-written loop's numbers
    net = mlp(False).eval()
    got = evaluate_model(net, small_digits, "test")
    with torch.no_grad():
        logits = net(small_digits.x_test)
    assert got["nll"] == pytest.approx(float(nn.functional.cross_entropy(logits, small_digits.y_test)), rel=1e-5)
    assert got["error"] == pytest.approx(100.0 * float((logits.argmax(1) != small_digits.y_test).float().mean()))


def _projection(num_classes, input_shape):
    """A fixed random projection kept as a buffer: each seed draws its own."""

    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("proj", torch.randn(64, 64) / 8)
            self.head = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.head(x.flatten(1) @ self.proj)

    return Projected()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("projected")(_projection)
    models.register_model("plain_mlp")(lambda num_classes, input_shape: mlp(False))


def test_data_passed_from_python_is_not_silently_replaced(tmp_path, small_digits, registered):
    """A run trained on data= records its description; a later call that would load
    the run's stored settings (the digits' full training set here) is refused."""
    mine = dataclasses.replace(small_digits, name="mydigits", x_train=small_digits.x_train[:300],
                               y_train=small_digits.y_train[:300])
    for seed in (1, 2):
        train(out=tmp_path / f"e{seed}", model="plain_mlp", seed=seed, data=mine, epochs=1, progress=False)
    a, b = tmp_path / "e1" / "model.pt", tmp_path / "e2" / "model.pt"
    with pytest.raises(UserError, match=r"was trained on 'mydigits' \(300 train / 360 test.* now give 'digits' "
                                        r"\(1437 train.*the first was passed from Python.*pass the same data"):
        fit_curve(a, b, tmp_path / "ab", epochs=1, progress=False)
    with pytest.raises(UserError, match="was trained on 'mydigits'"):
        load_points([a, b])
    # every checkpoint is checked, not the first alone
    train(out=tmp_path / "files", model="plain_mlp", seed=3, epochs=1, progress=False)
    with pytest.raises(UserError, match=f"{b} was trained on 'mydigits'"):
        load_points([tmp_path / "files" / "model.pt", b])
    with pytest.raises(UserError, match=f"{a} was trained on 'mydigits'"):
        grow_simplex(a, tmp_path / "sx", vertices=2, epochs=1, progress=False)
    # the same sizes, changed in Python: no longer taken for the files' data
    relabelled = dataclasses.replace(load_dataset("digits"))
    train(out=tmp_path / "relabelled", model="plain_mlp", seed=4, epochs=1, data=relabelled, progress=False)
    with pytest.raises(UserError, match="the first was passed from Python"):
        load_points([tmp_path / "relabelled" / "model.pt"])
    fit_curve(a, b, tmp_path / "ab", epochs=1, data=mine, progress=False)
    with pytest.raises(UserError, match="was trained on 'mydigits'"):
        evaluate_curve(tmp_path / "ab" / "model.pt", None, points=3)
    ev = evaluate_curve(tmp_path / "ab" / "model.pt", None, points=3, data=mine)
    assert ev.summary["dataset"]["n_train"] == 300
    # asking for other data explicitly is the user's choice
    assert load_points([a, b], data_overrides={"dataset": "digits"}).data.describe()["n_train"] == 1437
    # the same data given again goes on, through load_points and the simplex functions too
    pts = load_points([a, b], data=mine)
    assert pts.data.describe()["n_train"] == 300
    sx = grow_simplex(a, tmp_path / "sx", vertices=2, epochs=1, eval_samples=2, face_resolution=2, data=mine,
                      progress=False)
    assert sx.summary["dataset"]["n_train"] == 300 and sx.summary["dataset"]["name"] == "mydigits"
    mode = evaluate_points(pts.model, [pts.vectors[0]], [[1.0]], mine, wd=pts.wd)  # the mode, on the data given
    assert sx.summary["vertices"][0]["test_error"] == pytest.approx(float(mode["test_error"][0]))
    assert sx.summary["vertices"][0]["train_loss"] == pytest.approx(float(mode["train_loss"][0]), rel=1e-5)
    with pytest.raises(UserError, match="was trained on 'mydigits'"):  # refused before its folder is made
        espro([a, b], tmp_path / "espro", vertices=2, epochs=1, eval_samples=2, face_resolution=2, progress=False)
    assert not (tmp_path / "espro").exists()  # so the same --out takes the rerun
    ens = espro([a, b], tmp_path / "espro", vertices=2, epochs=1, eval_samples=2, face_resolution=2, data=mine,
                progress=False)
    assert ens["components"] == 2 and ens["dataset"]["n_train"] == 300
    # the ensemble and the width report take it too; without it they are refused
    from landscape.ensemble import evaluate_ensemble
    from landscape.rays import width_report

    with pytest.raises(UserError, match="was trained on 'mydigits'"):
        evaluate_ensemble([a, b])
    with pytest.raises(UserError, match="was trained on 'mydigits'"):
        width_report(a, b, None, directions=1, steps=3)
    together = evaluate_ensemble([a, b], data=mine)
    assert together.summary["dataset"]["n_train"] == 300
    assert together.summary["weight_average"]["test_error"] == pytest.approx(
        float(evaluate_points(pts.model, pts.vectors, [[0.5, 0.5]], mine)["test_error"][0]))
    width = width_report(a, b, None, directions=1, steps=3, data=mine)
    assert width.summary["dataset"]["n_train"] == 300


def test_buffers_that_differ_between_networks_are_noted(tmp_path, small_digits, registered, capsys):
    for seed in (1, 2):
        train(out=tmp_path / f"p{seed}", model="projected", seed=seed, data=small_digits, epochs=1,
              progress=False)
    a, b = tmp_path / "p1" / "model.pt", tmp_path / "p2" / "model.pt"
    capsys.readouterr()
    pts = load_points([a, a], data_overrides={"dataset": "digits"})
    assert "buffer" not in capsys.readouterr().err  # the same network twice: nothing to say
    pts = load_points([a, b], data_overrides={"dataset": "digits"})
    err = capsys.readouterr().err
    assert f"note: buffer proj differs between {a} and {b}" in err and "requires_grad=False" in err
    assert torch.equal(pts.model.proj, torch.load(a, weights_only=True)["state_dict"]["proj"])
    fit_curve(a, b, tmp_path / "ab", epochs=1, data=small_digits, progress=False)
    assert "note: buffer proj differs" in capsys.readouterr().err
    # the curve's evaluation says it too (its t = 1 is not network b): it printed nothing, and recorded nothing
    ev = evaluate_curve(tmp_path / "ab" / "model.pt", None, points=3, data=small_digits)
    said = ("buffer proj of the end network differs from the start's, and every point, t = 1 included, keeps the "
            "start's: only parameters move along a path")
    assert f"note: {said}" in capsys.readouterr().err and ev.summary["notes"].endswith(said)
    for seed in (1, 2):  # networks without such buffers: nothing to say
        train(out=tmp_path / f"m{seed}", model="plain_mlp", seed=seed, data=small_digits, epochs=1, progress=False)
    fit_curve(tmp_path / "m1" / "model.pt", tmp_path / "m2" / "model.pt", tmp_path / "mm", epochs=1,
              data=small_digits, progress=False)
    ev = evaluate_curve(tmp_path / "mm" / "model.pt", None, points=3, data=small_digits)
    assert "buffer" not in capsys.readouterr().err and "buffer" not in ev.summary["notes"]


def _lazy(num_classes, input_shape):
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, num_classes))


class _Aux(nn.Module):
    """Inception's pattern: (logits, auxiliary logits) in train mode, logits in eval mode."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.body, self.out, self.aux = nn.Linear(64, 16), nn.Linear(16, num_classes), nn.Linear(16, num_classes)

    def forward(self, x):
        h = self.body(x.flatten(1)).relu()
        return (self.out(h), self.aux(h)) if self.training else self.out(h)


def _frozen(num_classes, input_shape):
    net = mlp(False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class _Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x, mask):
        return self.lin(x.flatten(1) * mask)


def test_lazy_layers_take_their_shapes_from_the_data(tmp_path, small_digits, monkeypatch):
    import landscape

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("lazy")(_lazy)
    built = models.create_model("lazy", num_classes=10, input_shape=(1, 8, 8))
    assert not models.has_lazy(built) and built[4].weight.shape == (16, 256) and built.training
    run = train(out=tmp_path / "lazy", model="lazy", data=small_digits, epochs=1, progress=False)
    net = landscape.load_model(tmp_path / "lazy" / "model.pt")
    assert evaluate_model(net, small_digits, "test")["error"] == pytest.approx(run.summary["test_error"])
    given = landscape.load_model(tmp_path / "lazy" / "model.pt", _lazy(10, (1, 8, 8)))  # an instance not yet shaped
    for (name, a), (_, b) in zip(net.state_dict().items(), given.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match=r"lazy layers, and a forward of zeros of shape \(3, 8, 8\) .*failed"):
        models.materialize(_lazy(10, (1, 8, 8)), (3, 8, 8), "the network")


def test_networks_training_cannot_use_are_refused_in_one_line(tmp_path, small_digits, monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("aux")(_Aux)
    models.register_model("frozen")(_frozen)
    with pytest.raises(UserError, match=r"^the network gave a tuple in train mode; .*return the main output only"):
        train(out=tmp_path / "aux", model="aux", data=small_digits, epochs=1, progress=False)
    with pytest.raises(UserError, match=r"^the network trains none of its parameters"):
        train(out=tmp_path / "frozen", model="frozen", data=small_digits, epochs=1, progress=False)
    with pytest.raises(UserError, match=r"does not accept this data's inputs of shape \(1, 8, 8\): .*mask"):
        evaluate_model(_Masked(), small_digits)


def test_a_dataset_made_in_python_is_checked_when_made(small_digits):
    import landscape

    d = small_digits
    parts = dict(name="mine", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test, num_classes=10,
                 mean=d.mean, std=d.std)
    assert landscape.Dataset(**parts).input_shape == (1, 8, 8)
    for key, value, message in (
            ("x_train", d.x_train.numpy(), r"x_train must be a torch tensor \(torch.float32\), got a ndarray"),
            ("x_test", d.x_test.double(), r"x_test must be torch.float32, got torch.float64"),
            ("y_train", d.y_train.int(), r"y_train must be torch.int64, got torch.int32"),
            ("y_test", d.y_test[:5], r"x_test holds 360 samples but y_test 5 labels")):
        with pytest.raises(UserError, match=f"^Dataset {message}"):
            landscape.Dataset(**{**parts, key: value})


def test_a_network_torch_cannot_copy_is_refused_in_one_line():
    import warnings

    from landscape.evaluate import copy_network

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        net = nn.Sequential(nn.Flatten(), nn.utils.weight_norm(nn.Linear(64, 10)))
    net(torch.zeros(2, 1, 8, 8)).sum().backward()  # its weight now a non-leaf tensor of the graph
    with pytest.raises(UserError, match=r"^the network cannot be copied: .*parametrizations.weight_norm$"):
        copy_network(net)
    plain = mlp(False)
    assert torch.equal(copy_network(plain)[1].weight, plain[1].weight)


def test_a_keyword_the_settings_lack_is_one_line_with_the_nearest_name(tmp_path, small_digits):
    """train(quiet=True) ended in a TypeError from the settings' dataclass; the CLI's words differ here and there."""
    from landscape.averaging import AverageConfig
    from landscape.curves.fit import ConnectConfig
    from landscape.curves.spro import SimplexConfig
    from landscape.errors import check_keywords

    with pytest.raises(UserError, match=r"^train\(\) takes no keyword 'quiet' \(progress=False is --quiet\)$"):
        train(out=tmp_path / "a", quiet=True)
    with pytest.raises(UserError, match=r"^train\(\) takes no keyword 'epoch' \(did you mean epochs=\?\)$"):
        train(out=tmp_path / "a", epoch=3)
    assert not (tmp_path / "a").exists()
    with pytest.raises(UserError, match=r"^fit_curve\(\) takes no keyword 'bend' \(did you mean bends=\?\)$"):
        check_keywords(ConnectConfig, {"bends": 2, "bend": 3}, "fit_curve")
    with pytest.raises(UserError, match=r"^grow_simplex\(\) takes no keyword 'vertex_lr'$"):
        check_keywords(SimplexConfig, {"vertex_lr": 0.1}, "grow_simplex")
    check_keywords(AverageConfig, {"swa_lr": 0.05, "epochs": 3}, "run_swa")  # known keywords pass
    # each function checks them before any work, under its own name
    from landscape.averaging import run_swa
    from landscape.curves import fit_curve
    from landscape.curves.spro import grow_simplex
    from landscape.variational import run_variational

    a = train(out=tmp_path / "e", model="mlp", epochs=1, progress=False, data=small_digits).out / "model.pt"
    for call, said in ((lambda: run_swa(None, tmp_path / "s", from_ckpt=str(a), swa_lrr=0.1), "run_swa() takes no "
                        "keyword 'swa_lrr' (did you mean swa_lr=?)"),
                       (lambda: run_variational(None, tmp_path / "v", from_ckpt=str(a), epoch=3),
                        "run_variational() takes no keyword 'epoch' (did you mean epochs=?)"),
                       (lambda: fit_curve(a, a, tmp_path / "c", bend=3), "fit_curve() takes no keyword 'bend' "
                        "(did you mean bends=?)"),
                       (lambda: grow_simplex(a, tmp_path / "x", vertex_lr=0.1), "grow_simplex() takes no keyword "
                        "'vertex_lr'")):
        with pytest.raises(UserError, match="^" + re.escape(said)):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_the_note_on_differing_frozen_statistics_gives_no_advice_that_cannot_apply(capsys):
    """Statistics of a batch-norm layer kept in eval mode are buffers no point re-estimates; making them parameters
    (the advice for other buffers) is no way to move them."""
    from types import SimpleNamespace

    from landscape.inputs import note_other_buffers

    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)
            self.register_buffer("mask", torch.ones(4))

        def train(self, mode=True):
            super().train(mode)
            self.bn.eval()
            return self

    net = Frozen()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    other = dict(state, **{"bn.running_mean": state["bn.running_mean"] + 1})
    note_other_buffers(net, [SimpleNamespace(path="a.pt", state_dict=state), SimpleNamespace(path="b.pt",
                                                                                              state_dict=other)])
    said = capsys.readouterr().err
    assert "bn.running_mean differs between a.pt and b.pt" in said and "which no point re-estimates" in said
    assert "requires_grad" not in said
    other["mask"] = state["mask"] * 2
    note_other_buffers(net, [SimpleNamespace(path="a.pt", state_dict=state), SimpleNamespace(path="b.pt",
                                                                                              state_dict=other)])
    assert "make it a parameter with requires_grad=False" in capsys.readouterr().err
    from torch.nn.utils.parametrizations import spectral_norm

    sn = nn.Sequential(spectral_norm(nn.Linear(4, 3)), nn.ReLU(), nn.Linear(3, 2))
    state = {k: v.clone() for k, v in sn.state_dict().items()}
    other = {k: v + 1 if k.endswith(("_u", "_v")) else v for k, v in state.items()}
    note_other_buffers(sn, [SimpleNamespace(path="a.pt", state_dict=state), SimpleNamespace(path="b.pt",
                                                                                             state_dict=other)])
    said = capsys.readouterr().err
    assert "0.parametrizations.weight.0._u, 0.parametrizations.weight.0._v differ" in said
    assert "spectral norm's power-iteration vectors" in said and "requires_grad" not in said


def test_a_lazy_network_evaluated_first_can_still_be_trained(small_digits):
    """evaluate_model ran in inference mode, so a lazy layer's first forward made its weights inference
    tensors: the user's next training step failed in torch ('Inference tensors cannot be saved for backward')."""
    net = _lazy(10, (1, 8, 8))
    assert models.has_lazy(net)
    got = evaluate_model(net, small_digits)
    assert not models.has_lazy(net) and not any(p.is_inference() for p in net.parameters())
    with torch.no_grad():
        logits = net.eval()(small_digits.x_test)
    assert got["error"] == pytest.approx(100.0 * float((logits.argmax(1) != small_digits.y_test).float().mean()))
    net.train()
    loss = nn.functional.cross_entropy(net(small_digits.x_train[:32]), small_digits.y_train[:32])
    loss.backward()  # trainable as before
    assert all(p.grad is not None for p in net.parameters())
    inside = _lazy(10, (1, 8, 8))  # called inside the user's own inference mode: still trainable afterwards
    with torch.inference_mode():
        evaluate_model(inside, small_digits)
    assert not any(p.is_inference() for p in inside.parameters())
    from landscape.evaluate import evaluate_points_sequential

    seq = _lazy(10, (1, 8, 8))  # the sequential reference shapes it as the engine does
    assert evaluate_points_sequential(seq, [seq], [[1.0]], small_digits)["test_error"].shape == (1,)
    with pytest.raises(UserError, match=r"parameters are torch.float64; .*model.float\(\)"):  # said before shaping
        evaluate_model(_lazy(10, (1, 8, 8)).double(), small_digits)
    fresh = _lazy(10, (1, 8, 8))  # evaluate_points shapes it too, rather than failing on a lazy weight's shape
    out = evaluate_points(fresh, [fresh], [[1.0]], small_digits)
    assert not any(p.is_inference() for p in fresh.parameters()) and out["test_error"].shape == (1,)
    with pytest.raises(UserError, match=r"lazy layer 1 has no shape yet"):
        ParamSpace.of(_lazy(10, (1, 8, 8)))


def test_a_notebook_cell_run_again_registers_its_model_again(monkeypatch):
    """Running a cell that registers a model a second time was refused ('already registered to
    __main__.bnmlp'): a factory of the same module and name now replaces the first."""
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    namespace: dict = {"__name__": "__main__", "nn": nn, "register_model": models.register_model}
    cell = ("@register_model('cellnet')\ndef cellnet(num_classes, input_shape):\n"
            "    return nn.Sequential(nn.Flatten(), nn.Linear({width}, num_classes))\n")
    exec(cell.format(width=64), namespace)
    first = models.MODELS["cellnet"]
    exec(cell.format(width=64), namespace)  # the same cell again, then edited
    assert models.MODELS["cellnet"] is not first and models.MODELS["cellnet"] is namespace["cellnet"]
    with pytest.raises(UserError, match="model name 'cellnet' is already registered to __main__.cellnet"):
        models.register_model("cellnet")(lambda num_classes, input_shape: mlp(False))  # another factory
    import functools

    made = functools.partial(_projection)  # no __qualname__: registered twice as before, refused beside another
    assert models.register_model("part")(made) is made and models.register_model("part")(made) is made
    with pytest.raises(UserError, match="already registered"):
        models.register_model("part")(functools.partial(_projection))

    def maker(width):
        def factory(num_classes, input_shape):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Linear(width, num_classes))
        return factory

    models.register_model("closure")(maker(4))
    with pytest.raises(UserError, match="already registered"):  # two closures of one maker share a name only
        models.register_model("closure")(maker(16))


def test_networks_are_float32_whatever_the_sessions_default_dtype(tmp_path, small_digits):
    """After torch.set_default_dtype(torch.float64) the package built float64 networks, then refused
    them ('call model.float()'), even inside train, where the user holds no network to convert."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = models.create_model("convnet", num_classes=10, input_shape=(1, 8, 8))
        assert {p.dtype for p in net.parameters()} == {torch.float32}
        assert torch.get_default_dtype() == torch.float64  # the session's default is put back
        run = train(out=tmp_path / "a", model="convnet", data=small_digits, epochs=1, progress=False)
        assert run.summary["test_error"] >= 0
    finally:
        torch.set_default_dtype(default)


def test_a_sample_whose_logits_hold_a_nan_counts_as_an_error(small_digits):
    """argmax reads a NaN as the top class: a network whose logits overflowed was credited with every
    sample of class 0 (an error of 90 % reported beside a NaN loss)."""
    from landscape.evaluate import misclassified
    from landscape.metrics import ensemble_metrics

    logits = torch.tensor([[0.0, 5.0, 1.0], [float("nan"), 0.0, 0.0], [float("inf"), 0.0, 1.0], [1.0, 2.0, 0.5]])
    y = torch.tensor([1, 0, 0, 0])
    # a NaN, or an overflow to +inf (whose softmax is NaN too, as its probabilities are): no prediction
    assert misclassified(logits, y).tolist() == [False, True, True, True]
    nan = float("nan")
    probs = np.array([[[0.1, 0.8, 0.1], [nan, nan, nan], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]])  # a member's
    assert ensemble_metrics(probs, y.numpy(), calibration=False)["error"] == pytest.approx(50.0)
    broken = mlp(False)
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"parameter 1.weight holds a NaN or infinite value"):
        evaluate_model(broken, small_digits)
    # weights finite, logits not (0/0 here, an overflow's inf - inf in practice): every sample is wrong
    class Ratio(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.gain = nn.Linear(64, 10), nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return self.lin(x.flatten(1)) * (self.gain / self.gain)

    net = Ratio()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    zero_gain = torch.cat([torch.zeros(1), flat[1:]])  # the module's own parameter (gain) comes first
    out = evaluate_points(net, [flat, zero_gain], [[1.0, 0.0], [0.0, 1.0]], small_digits)
    assert float(out["test_error"][0]) == pytest.approx(
        100.0 * float((net(small_digits.x_test).argmax(1) != small_digits.y_test).float().mean()))
    assert np.isnan(out["test_nll"][1]) and out["test_error"][1] == 100.0 and out["train_error"][1] == 100.0
    assert (small_digits.y_test != 0).float().mean() < 0.95  # argmax alone would have said about 90 %


def test_malformed_input_from_python_is_one_line(small_digits):
    """A tuple for data, flat anchors of unequal length, no anchors, no points, coefficients of the wrong
    shape, and batch-norm data of one image were torch's or numpy's errors (AttributeError, RuntimeError)."""
    net = mlp(False)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    xy = (small_digits.x_train, small_digits.y_train)
    for call in (lambda: evaluate_model(net, xy), lambda: evaluate_points(net, [net], [[1.0]], xy),
                 lambda: train(out=None, model="convnet", data=xy, epochs=1, progress=False)):
        with pytest.raises(UserError, match=r"^data must be a landscape.data.Dataset, got a tuple: wrap your tensors"):
            call()
    cases = [
        (([flat, torch.cat([flat, flat[:1]])], [[0.5, 0.5]]), rf"^anchor 1 is a flat vector of {flat.numel() + 1} "),
        (([], [[]]), r"^no anchors given"),
        (([net, net], torch.zeros(0, 2)), r"^coefficients has no rows"),
        (([net, net], [0.5, 0.5]), r"^coefficients must be \(N, 2\): a row of 2 per point, one per anchor; got \(2,\)"),
        ((flat[None, :10], [[1.0]]), rf"^anchors must be \(A, {flat.numel()}\)"),
    ]
    for (anchors, coefficients), message in cases:
        with pytest.raises(UserError, match=message):
            evaluate_points(net, anchors, coefficients, small_digits)
    with pytest.raises(UserError, match=r"^no anchors given: the anchor matrix has no rows"):
        evaluate_points(net, torch.zeros(0, flat.numel()), [[]], small_digits)
    from landscape.plane import evaluate_random_plane
    from landscape.rays import evaluate_rays

    for call in (lambda: evaluate_random_plane(net, flat, xy, grid=3),
                 lambda: evaluate_rays(net, [flat], xy, directions=1, steps=1)):
        with pytest.raises(UserError, match=r"^data must be a landscape.data.Dataset, got a tuple"):
            call()
    one = dataclasses.replace(small_digits, x_train=small_digits.x_train[:1], y_train=small_digits.y_train[:1])
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(UserError, match=r"^batch norm cannot estimate statistics from one value per channel: "
                                        r"Expected more than 1 value per channel .*\(the data has 1 training images\)"):
        evaluate_points(bn, [bn], [[1.0]], one)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    assert evaluate_points(conv, [conv], [[1.0]], one)["test_error"].shape == (1,)  # 36 values a channel: fine


def test_other_data_given_for_a_runs_checkpoints_is_noted(tmp_path, small_digits, registered, capsys):
    """load_points(..., data=) took data other than the run's without a word."""
    mine = dataclasses.replace(small_digits, name="mine", x_train=small_digits.x_train[:300],
                               y_train=small_digits.y_train[:300])
    train(out=tmp_path / "a", model="plain_mlp", seed=1, data=mine, epochs=1, progress=False)
    a = tmp_path / "a" / "model.pt"
    capsys.readouterr()
    load_points([a], data=mine)
    assert "note:" not in capsys.readouterr().err  # the same data: nothing to say
    fewer = dataclasses.replace(mine, x_train=mine.x_train[:200], y_train=mine.y_train[:200])
    assert load_points([a], data=fewer).data.describe()["n_train"] == 200  # taken as given
    said = (f"note: {a} was trained on 'mine' (300 train / 360 test, input (1, 8, 8), 10 classes); the data given "
            f"is 'mine' (200 train / 360 test, input (1, 8, 8), 10 classes) (they differ in n train)")
    assert said in capsys.readouterr().err
    load_points([a], data=fewer)
    assert said not in capsys.readouterr().err  # said once in a process (ESPRO loads once per component)
    # a run that starts from the checkpoint says it too, naming the first checkpoint that differs
    train(out=tmp_path / "b", model="plain_mlp", seed=2, data=mine, epochs=1, progress=False)
    fewest = dataclasses.replace(mine, x_train=mine.x_train[:150], y_train=mine.y_train[:150])
    fit_curve(a, tmp_path / "b" / "model.pt", tmp_path / "ab", epochs=1, data=fewest, progress=False)
    assert f"note: {a} was trained on 'mine' (300 train" in capsys.readouterr().err
    # data read from the files, copied in Python (dataclasses.replace drops its fingerprint): the same, no note
    digits = load_dataset("digits")
    train(out=tmp_path / "d", model="plain_mlp", seed=1, epochs=1, progress=False)
    capsys.readouterr()
    load_points([tmp_path / "d" / "model.pt"], data=dataclasses.replace(digits, augment=True))
    load_points([tmp_path / "d" / "model.pt"], data=digits)
    assert "note:" not in capsys.readouterr().err


def test_config_counts_and_numbers_given_from_python_are_one_line():
    """A config's counts are whole numbers and its rates numbers: from Python, 2.5, "0.9" or None were taken
    and failed later (a TypeError in a comparison, or epochs spent first)."""
    from landscape.curves.spro import SimplexConfig
    from landscape.train import TrainConfig
    from landscape.variational import VariationalConfig

    cases = [(VariationalConfig(epochs=10, hwa_start=2.5), "--hwa-start must be a whole number, got 2.5"),
             (VariationalConfig(epochs=10, kl_warmup=None), "--kl-warmup must be a whole number, got None"),
             (SimplexConfig(samples=1.5), "--samples must be a whole number, got 1.5"),
             (TrainConfig(momentum="0.9"), "--momentum must be a number, got '0.9'"),
             (TrainConfig(epochs=4.5), "--epochs must be a whole number, got 4.5")]
    for config, message in cases:
        with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
            config.validate()
    config = VariationalConfig(epochs=10.0, hwa_start=4.0, cycle=2.0)
    config.validate()  # whole floats are whole numbers, kept as ints
    assert (config.epochs, config.hwa_start, config.cycle) == (10, 4, 2) and isinstance(config.hwa_start, int)


def test_seeds_draw_counts_and_a_warm_up_past_the_training_are_one_line(tmp_path, small_digits):
    """Seeds were checked by swag, subspace, plane and sharpness only: elsewhere -1 ran on the draws of 2^64 - 1
    and 2^70 ended in an OverflowError; samples=2.5 was a TypeError, a rank of 2.0 a slicing error; a KL warm-up
    longer than the training fitted at a fraction of the KL term and recorded the full weight."""
    from landscape.curves.posterior import evaluate_posterior_curve
    from landscape.rays import evaluate_rays
    from landscape.swag import evaluate_swag
    from landscape.train import TrainConfig
    from landscape.variational import VariationalConfig, evaluate_variational

    missing = tmp_path / "none.pt"  # each refusal comes before any file is read
    cases = [(lambda: TrainConfig(seed=-1).validate(), "--seed must be a whole number from 0 to 2^63 - 1, got -1"),
             (lambda: TrainConfig(seed=2 ** 70).validate(), f"--seed must be a whole number from 0 to 2^63 - 1, "
                                                            f"got {2 ** 70}"),
             (lambda: TrainConfig(data_seed=-3).validate(), "--data-seed must be a whole number from 0 to 2^63 - 1, "
                                                            "got -3"),
             (lambda: load_dataset("digits", seed=-3), "--data-seed must be a whole number from 0 to 2^63 - 1, got -3"),
             (lambda: evaluate_rays(mlp(False), [torch.zeros(3)], small_digits, seed=-1), "--seed must be a whole number from 0 to 2^63 "
                                                                      "- 1, got -1"),
             (lambda: evaluate_variational(missing, seed=-1), "--seed must be a whole number from 0 to 2^63 - 1, "
                                                              "got -1"),
             (lambda: evaluate_variational(missing, samples=2.5), "--samples must be a whole number, got 2.5"),
             (lambda: evaluate_swag(missing, samples=2.5), "--samples must be a whole number, got 2.5"),
             (lambda: evaluate_swag(missing, samples=0), "--samples must be at least 1, got 0"),
             (lambda: evaluate_posterior_curve(missing, seed=2 ** 64), f"--seed must be a whole number from 0 to "
                                                                       f"2^63 - 1, got {2 ** 64}"),
             (lambda: VariationalConfig(epochs=2, kl_warmup=5).validate(),
              "--kl-warmup 5 is longer than --epochs 2: the KL term would never come near its full weight (it would "
              "end at 0.4 of it); a warm-up of at most --epochs (--epochs - 1 or less leaves an epoch or more at full "
              "weight)"),
             (lambda: TrainConfig(seed=1.0).validate() or TrainConfig(seed=1.5).validate(),
              "--seed must be a whole number from 0 to 2^63 - 1, got 1.5")]
    for call, message in cases:
        with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
            call()
    VariationalConfig(epochs=2, kl_warmup=2).validate()  # a ramp that ends with the training
    config = TrainConfig(seed=3.0, data_seed=2.0)
    config.validate()  # whole floats are seeds, kept as ints (a generator takes ints only)
    assert (config.seed, config.data_seed) == (3, 2) and isinstance(config.seed, int)


def test_the_plane_and_rays_functions_check_what_a_notebook_passes(small_digits, tmp_path):
    """A labels list shorter than the centres or points silently dropped their results from the summary; a
    mistyped keyword was a TypeError naming a private function; one tensor given as the centres was read as
    94,186 centres (a memory refusal), one path as its characters; numpy points failed on .detach()."""
    from landscape import seed_everything
    from landscape.plane import evaluate_plane, evaluate_random_plane, evaluate_trajectory_plane
    from landscape.rays import evaluate_rays

    net = mlp(False)
    space = ParamSpace.of(net)
    w = space.flatten(net)
    pts = [w, w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)),
           w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(2))]
    with pytest.raises(UserError, match=r"^labels has 1 entry for 2 centres: give one a centre$"):
        evaluate_rays(net, pts[:2], small_digits, labels=["x"], directions=1, steps=1)
    with pytest.raises(UserError, match=r"^paths has 3 entries for 2 centres"):
        evaluate_rays(net, pts[:2], small_digits, paths=["a", "b", "c"], directions=1, steps=1)
    for one in (pts[0], pts[0].numpy()):
        with pytest.raises(UserError, match=r"^centers is a list of flat weight vectors .* got an array of shape "):
            evaluate_rays(net, one, small_digits, directions=1, steps=1)
    with pytest.raises(UserError, match=r"^labels has 2 entries for the plane's 3 points"):
        evaluate_plane(net, pts, small_digits, labels=["a", "b"], grid=2)
    with pytest.raises(UserError, match=r"^mark_labels has 2 entries for 1 marks"):
        evaluate_plane(net, pts, small_digits, grid=2, marks=[w], mark_labels=["s", "t"])
    for call, name in ((lambda: evaluate_plane(net, pts, small_digits, grd=3), "evaluate_plane"),
                       (lambda: evaluate_random_plane(net, w, small_digits, grd=3), "evaluate_random_plane"),
                       (lambda: evaluate_trajectory_plane(net, pts, small_digits, grd=3), "evaluate_trajectory_plane")):
        with pytest.raises(UserError, match=rf"^{name}\(\) takes no keyword 'grd' \(did you mean grid=\?\)$"):
            call()
    with pytest.raises(UserError, match=r"^paths is a list of checkpoints, got the single path 'a/model.pt'"):
        load_points("a/model.pt")
    # a trajectory's folder and a comparison's folders given as one path read it character by character
    # ("/ holds no checkpoint-NNN.pt", "/ is given twice")
    from pathlib import Path

    from landscape.inputs import load_trajectory
    from landscape.plots.compare import draw_comparison
    with pytest.raises(UserError, match=r"^paths is a list of checkpoints or run folders, got the single path "
                                        r"'runs/a' \(one: \[path\]\)$"):
        load_trajectory("runs/a")
    with pytest.raises(UserError, match=r"^folders is a list of result folders, got the single path 'r/ab-eval'$"):
        draw_comparison(Path("r/ab-eval"), "fig")
    with pytest.raises(UserError, match=r"^seed must be a whole number"):
        seed_everything(-1)
    as_numpy = evaluate_plane(net, [p.numpy() for p in pts], small_digits, grid=2)
    as_tensors = evaluate_plane(net, pts, small_digits, grid=2)
    assert np.array_equal(as_numpy.arrays["train_loss"], as_tensors.arrays["train_loss"])
    rays = evaluate_rays(net, [p.numpy() for p in pts[:2]], small_digits, directions=1, steps=1, labels=["a", "b"])
    assert [c["label"] for c in rays.summary["centers"]] == ["a", "b"]


def test_paths_and_numpy_numbers_from_python_leave_loadable_checkpoints(tmp_path, small_digits):
    """A pathlib.Path for from_ckpt and a NumPy int in model_kwargs were stored in every checkpoint as they
    were, which weights_only loading refuses: the run finished, and none of its files opened again (nor did
    its --resume). They are stored as a str and an int; anything else unloadable is refused before saving."""
    from pathlib import Path

    from landscape.averaging import run_swa
    from landscape.checkpoint import load_checkpoint, load_model, save_checkpoint

    train(out=tmp_path / "a", data=small_digits, epochs=1, progress=False, model_kwargs={"width": 8})
    given = Path(tmp_path / "a" / "model.pt")
    run_swa(out=tmp_path / "sw", from_ckpt=given, data=small_digits, epochs=3, swa_start=1, swa_lr=0.05,
            swag_rank=2, progress=False)
    for name in ("swa.pt", "sgd.pt", "swag.pt", "model.pt"):
        assert load_checkpoint(tmp_path / "sw" / name).meta["train_config"]["from_ckpt"] == str(given)
    again = run_swa(out=tmp_path / "sw", from_ckpt=given, data=small_digits, epochs=3, swa_start=1, swa_lr=0.05,
                    swag_rank=2, progress=False, resume=True)
    assert again.out == tmp_path / "sw"

    r = train(out=tmp_path / "np", data=small_digits, model="mlp", model_kwargs={"hidden": np.int64(16)},
              epochs=1, progress=False)
    net = load_model(tmp_path / "np" / "model.pt")
    assert type(load_checkpoint(tmp_path / "np" / "model.pt").model["kwargs"]["hidden"]) is int
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), r.model.state_dict().values()))

    with pytest.raises(UserError, match=r"x\.pt: not saved: its entry meta\.notes\[1\] is a builtins\.object"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2), {"name": "mlp", "kwargs": {"num_classes": 2,
                                                                                       "input_shape": [2]}},
                        meta={"notes": ["fine", object()]})
    assert not (tmp_path / "x.pt").exists()


def test_results_print_in_a_few_lines_and_lazy_names_complete(small_digits, tmp_path):
    """A result's dataclass repr printed the whole network, every epoch's record and the data's tensors
    (345 lines for a PreResNet-110 run); and import_checkpoint, loaded on first use, was missing from
    dir(landscape), so tab completion did not offer it."""
    import landscape

    r = train(out=None, data=small_digits, epochs=2, progress=False, model_kwargs={"width": 8})
    text = repr(r)
    params = sum(p.numel() for p in r.model.parameters())
    assert text.startswith("TrainResult(\n") and len(text.splitlines()) == 6, text
    assert f"model=<ConvNet: {params:,} parameters>" in text and "metrics=<list of 2>" in text
    assert "summary=<dict of " in text and "test_error" in text and "out=None" in text
    points = load_points([_saved(r.model, tmp_path / "m.pt")], data=small_digits)
    shown = repr(points)
    assert f"vectors=<list of 1, the first <tensor ({params},) float32 on cpu>>" in shown
    assert "data=<Dataset 'digits': 400 train / 360 test>" in shown and len(shown.splitlines()) < 10
    assert "import_checkpoint" in dir(landscape) and set(landscape.__all__) <= set(dir(landscape))
    from landscape.brief import brief
    long = tmp_path / ("a-long-folder-name-for-experiments-" * 4) / "run"
    assert brief(long) == repr(long) and brief(10 ** 120) == "<int of 121 digits>"  # a TypeError before


def _saved(model: nn.Module, path):
    from landscape.checkpoint import save_checkpoint
    from landscape.models import model_spec

    save_checkpoint(path, model, model_spec("convnet", 10, (1, 8, 8), width=8))
    return path


def test_data_options_are_keywords_in_every_function_that_loads_checkpoints(tmp_path, small_digits):
    """load_points, evaluate_ensemble and width_report took the data options only as data_overrides={...}
    (dataset="digits" was a TypeError naming evaluate_rays), where evaluate_curve and the others take them
    as keywords; load_dataset spelled the run settings' data_seed= and data_normalization= otherwise."""
    from landscape.ensemble import evaluate_ensemble
    from landscape.rays import width_report

    for seed in (1, 2):
        train(out=tmp_path / str(seed), data=small_digits, epochs=1, seed=seed, progress=False,
              model_kwargs={"width": 8})
    a, b = tmp_path / "1" / "model.pt", tmp_path / "2" / "model.pt"
    as_keyword = load_points([a, b], dataset="digits", val_size=100, data_seed=3)
    as_dict = load_points([a, b], data_overrides={"dataset": "digits", "val_size": 100, "data_seed": 3})
    assert as_keyword.data.eval_split == "val" and torch.equal(as_keyword.data.y_test, as_dict.data.y_test)
    with pytest.raises(UserError, match="dataset is given twice, as a keyword and in data_overrides"):
        load_points([a], dataset="digits", data_overrides={"dataset": "digits"})
    with pytest.raises(UserError, match=r"unknown keyword 'datset' \(did you mean dataset=\?\)"):
        load_points([a], datset="digits")
    ens = evaluate_ensemble([a, b], dataset="digits")
    assert ens.summary["ensemble"]["test_error"] == evaluate_ensemble(
        [a, b], data_overrides={"dataset": "digits"}).summary["ensemble"]["test_error"]
    rays = width_report(a, b, dataset="digits", val_size=100, directions=1, steps=2)
    assert rays.summary["eval_split"] == "val"
    # load_dataset takes a run's stored data settings as they are spelled there
    again = load_dataset("digits", val_size=100, data_seed=3, data_normalization="standard")
    assert torch.equal(again.y_test, load_dataset("digits", val_size=100, seed=3).y_test)
    with pytest.raises(UserError, match="seed=1 and data_seed=3 are one setting"):
        load_dataset("digits", seed=1, data_seed=3)
