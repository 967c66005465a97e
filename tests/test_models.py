"""Tests for the model registry and the built-in architectures.

The dnn-mode-connectivity key tables below are written by hand from that
project's model definitions, not generated from ours, so a renamed or reshaped
layer fails here.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import textwrap

import pytest
import torch
from torch import nn

from landscape.errors import UserError
from landscape.weights import ParamSpace
from landscape.evaluate import evaluate_points
from landscape.models import MODELS, create_model, list_models, register_model


def _forward_backward(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(2, *shape)
    logits = model(x)
    logits.square().mean().backward()
    return logits


# ---------------------------------------------------------------------------
# Every registered model
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_finite_logits_and_grads_on_small_images(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=(3, 8, 8))
    logits = _forward_backward(model, (3, 8, 8))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient (unused in forward?)"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


def test_list_models_is_sorted_and_covers_the_registry() -> None:
    names = list_models()
    assert names == sorted(MODELS)
    for expected in ["mlp", "convnet", "lenet5", "vgg16", "vgg16bn", "vgg19", "vgg19bn",
                     "preresnet", "preresnet20", "preresnet56", "preresnet110", "preresnet164", "wrn28x10"]:
        assert expected in names


@pytest.mark.parametrize("name", ["convnet", "lenet5", "mlp", "vgg16bn", "preresnet20"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_models_take_mnist_and_cifar_sized_images(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=shape)
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_mlp_takes_feature_vectors() -> None:
    model = create_model("mlp", num_classes=3, input_shape=(64,), hidden=16, depth=3)
    assert model(torch.randn(5, 64)).shape == (5, 3)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 4  # depth hidden + output


def test_vgg_pools_larger_images_down_to_the_classifier_width() -> None:
    model = create_model("vgg16", num_classes=7, input_shape=(3, 64, 64)).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("shape, flat", [((3, 32, 32), 16 * 5 * 5), ((1, 28, 28), 16 * 5 * 5), ((1, 8, 8), 16 * 2 * 2)])
def test_lenet5_pads_small_inputs_as_documented(shape: tuple[int, ...], flat: int) -> None:
    model = create_model("lenet5", num_classes=10, input_shape=shape)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(flat, 120), (120, 84), (84, 10)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size) for m in convs] == [(6, (5, 5)), (16, (5, 5))]


@pytest.mark.parametrize("name, kwargs", [
    ("convnet", {}), ("lenet5", {}), ("mlp", {}), ("vgg16bn", {}),
    ("preresnet", {"depth": 56}), ("wrn28x10", {"depth": 10, "widen_factor": 2}),
])
def test_models_run_under_functional_call_and_vmap(name: str, kwargs: dict) -> None:
    # Later modules evaluate several weight sets at once this way.
    torch.manual_seed(0)
    models = [create_model(name, num_classes=10, input_shape=(3, 8, 8), **kwargs).eval() for _ in range(2)]
    params, buffers = torch.func.stack_module_state(models)
    x = torch.randn(4, 3, 8, 8)
    out = torch.vmap(lambda p, b: torch.func.functional_call(models[0], (p, b), (x,)))(params, buffers)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_convnet_reaches_3_percent_error_on_digits() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target)
    train, test = model_selection.train_test_split(
        torch.arange(len(y)).numpy(), test_size=360, random_state=0, stratify=y.numpy()
    )
    assert len(train) == 1437
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, input_shape=(1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    xtr, ytr = x[train], y[train]
    for _ in range(20):
        model.train()
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        error = (model(x[test]).argmax(1) != y[test]).float().mean().item()
    assert error <= 0.03


# ---------------------------------------------------------------------------
# dnn-mode-connectivity checkpoint compatibility (hand-written key tables)
# ---------------------------------------------------------------------------

def _check_keys(model: nn.Module, expected: dict[str, tuple[int, ...]], count: int) -> None:
    state = model.state_dict()
    for key, shape in expected.items():
        assert key in state, f"missing key {key}"
        assert tuple(state[key].shape) == shape, f"{key}: {tuple(state[key].shape)} != {shape}"
    assert len(state) == count


def test_vgg16bn_matches_reference_keys() -> None:
    model = create_model("vgg16bn", num_classes=10, input_shape=(3, 32, 32))
    _check_keys(model, {
        "layer_blocks.0.0.weight": (64, 3, 3, 3),
        "layer_blocks.0.0.bias": (64,),
        "layer_blocks.0.1.running_mean": (64,),
        "layer_blocks.0.1.num_batches_tracked": (),
        "layer_blocks.0.2.weight": (64, 64, 3, 3),  # second conv follows the first BN
        "layer_blocks.2.4.weight": (256, 256, 3, 3),
        "layer_blocks.4.5.weight": (512,),  # last BN of the last block
        "classifier.1.weight": (512, 512),
        "classifier.4.weight": (512, 512),
        "classifier.6.weight": (10, 512),
        "classifier.6.bias": (10,),
    }, count=13 * 2 + 13 * 5 + 3 * 2)
    assert "layer_blocks.4.6.weight" not in model.state_dict()


def test_vgg16_matches_reference_keys() -> None:
    model = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32))
    _check_keys(model, {
        "layer_blocks.0.0.weight": (64, 3, 3, 3),
        "layer_blocks.0.1.weight": (64, 64, 3, 3),
        "layer_blocks.1.0.weight": (128, 64, 3, 3),
        "layer_blocks.4.2.weight": (512, 512, 3, 3),
        "classifier.1.weight": (512, 512),
        "classifier.6.weight": (10, 512),
    }, count=13 * 2 + 3 * 2)


def test_vgg19_and_vgg19bn_match_reference_keys() -> None:
    _check_keys(create_model("vgg19", num_classes=100, input_shape=(3, 32, 32)), {
        "layer_blocks.2.3.weight": (256, 256, 3, 3),
        "layer_blocks.4.3.weight": (512, 512, 3, 3),
        "classifier.6.weight": (100, 512),
    }, count=16 * 2 + 3 * 2)
    _check_keys(create_model("vgg19bn", num_classes=10, input_shape=(3, 32, 32)), {
        "layer_blocks.4.6.weight": (512, 512, 3, 3),
        "layer_blocks.4.7.running_var": (512,),
    }, count=16 * 2 + 16 * 5 + 3 * 2)


def test_vgg_conv_init_matches_reference() -> None:
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32))
    weight = model.state_dict()["layer_blocks.4.0.weight"]  # 512 out channels, 3x3
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (3 * 3 * 512)), rel=0.02)
    assert model.state_dict()["layer_blocks.0.0.bias"].abs().max().item() == 0.0


def test_preresnet110_matches_reference_keys() -> None:
    model = create_model("preresnet", num_classes=10, input_shape=(3, 32, 32), depth=110)
    # Bottleneck, 12 blocks per stage; each block: 3 convs + 3 BNs x 5 entries;
    # one downsample conv per stage; plus conv1, bn (5) and fc (2).
    _check_keys(model, {
        "conv1.weight": (16, 3, 3, 3),
        "layer1.0.bn1.weight": (16,),
        "layer1.0.conv1.weight": (16, 16, 1, 1),
        "layer1.0.downsample.0.weight": (64, 16, 1, 1),
        "layer2.0.conv2.weight": (32, 32, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.11.conv3.weight": (256, 64, 1, 1),
        "layer3.11.bn3.running_mean": (64,),
        "bn.weight": (256,),
        "fc.weight": (10, 256),
    }, count=36 * (3 + 3 * 5) + 3 + 1 + 5 + 2)
    assert "layer3.12.conv1.weight" not in model.state_dict()
    assert "layer1.1.downsample.0.weight" not in model.state_dict()


def test_preresnet20_matches_reference_keys() -> None:
    model = create_model("preresnet20", num_classes=10, input_shape=(3, 32, 32))
    # BasicBlock, 3 per stage; each: 2 convs + 2 BNs x 5; downsample in stages 2 and 3 only.
    _check_keys(model, {
        "layer1.2.conv2.weight": (16, 16, 3, 3),
        "layer2.0.conv1.weight": (32, 16, 3, 3),
        "layer2.0.downsample.0.weight": (32, 16, 1, 1),
        "layer3.0.downsample.0.weight": (64, 32, 1, 1),
        "bn.weight": (64,),
        "fc.weight": (10, 64),
    }, count=9 * (2 + 2 * 5) + 2 + 1 + 5 + 2)
    assert "layer1.0.downsample.0.weight" not in model.state_dict()


def test_preresnet_init_matches_reference() -> None:
    torch.manual_seed(0)
    state = create_model("preresnet20", num_classes=10, input_shape=(3, 32, 32)).state_dict()
    assert state["layer3.2.conv2.weight"].std().item() == pytest.approx(math.sqrt(2 / (3 * 3 * 64)), rel=0.05)
    assert (state["layer3.2.bn2.weight"] == 1).all() and (state["layer3.2.bn2.bias"] == 0).all()


def test_wrn28x10_matches_reference_keys() -> None:
    model = create_model("wrn28x10", num_classes=10, input_shape=(3, 32, 32))
    # 4 WideBasic per stage; each: 2 BNs x 5 + 2 biased convs x 2; 3 shortcut convs x 2;
    # plus conv1 (2), bn1 (5), linear (2).
    _check_keys(model, {
        "conv1.weight": (16, 3, 3, 3),
        "conv1.bias": (16,),
        "layer1.0.bn1.weight": (16,),
        "layer1.0.conv1.weight": (160, 16, 3, 3),
        "layer1.0.shortcut.0.weight": (160, 16, 1, 1),
        "layer2.0.conv2.weight": (320, 320, 3, 3),
        "layer2.0.shortcut.0.bias": (320,),
        "layer3.3.conv2.weight": (640, 640, 3, 3),
        "bn1.weight": (640,),
        "linear.weight": (10, 640),
    }, count=12 * (2 * 5 + 2 * 2) + 3 * 2 + 2 + 5 + 2)
    assert "layer1.1.shortcut.0.weight" not in model.state_dict()


def test_reference_style_checkpoint_loads_strictly() -> None:
    # A state dict built by hand for vgg16 (no BN) loads with strict=True.
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    blocks = [2, 2, 3, 3, 3]
    state, c_in, k = {}, 3, 0
    for b, n in enumerate(blocks):
        for i in range(n):
            state[f"layer_blocks.{b}.{i}.weight"] = torch.zeros(channels[k], c_in, 3, 3)
            state[f"layer_blocks.{b}.{i}.bias"] = torch.zeros(channels[k])
            c_in, k = channels[k], k + 1
    for idx, (out, inp) in {1: (512, 512), 4: (512, 512), 6: (10, 512)}.items():
        state[f"classifier.{idx}.weight"] = torch.zeros(out, inp)
        state[f"classifier.{idx}.bias"] = torch.zeros(out)
    model = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32))
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UserError, match="unknown model 'foo'; choose one of: convnet, lenet5, mlp") as info:
        create_model("foo", num_classes=10, input_shape=(3, 8, 8))
    for name in list_models():
        assert name in str(info.value)
    with pytest.raises(UserError, match="unknown model 'VGG16BN'; did you mean 'vgg16bn'"):  # the papers' spelling
        create_model("VGG16BN", num_classes=10, input_shape=(3, 8, 8))


def test_unknown_kwarg_names_model_argument_and_options() -> None:
    with pytest.raises(UserError, match="model 'convnet' takes no argument 'foo'; it takes: width"):
        create_model("convnet", num_classes=10, input_shape=(1, 8, 8), foo=1)
    with pytest.raises(UserError, match="model 'preresnet20' takes no argument 'depth'"):
        create_model("preresnet20", num_classes=10, input_shape=(3, 8, 8), depth=56)
    with pytest.raises(UserError, match="'lenet5'.*'width'"):
        create_model("lenet5", num_classes=10, input_shape=(1, 8, 8), width=3)


@pytest.mark.parametrize("name, kwargs, bad", [
    ("convnet", {"width": -1}, "width"),
    ("convnet", {"width": 2.5}, "width"),
    ("mlp", {"hidden": 0}, "hidden"),
    ("mlp", {"depth": True}, "depth"),
    ("wrn28x10", {"widen_factor": 0}, "widen_factor"),
    ("wrn28x10", {"dropout_rate": 1.5}, "dropout_rate"),
    ("wrn28x10", {"depth": 27}, "27"),
])
def test_bad_kwarg_values_are_user_errors(name: str, kwargs: dict, bad: str) -> None:
    with pytest.raises(UserError, match=f"model '{name}'.*{bad}"):
        create_model(name, num_classes=10, input_shape=(3, 8, 8), **kwargs)


@pytest.mark.parametrize("depth", [21, 44, 57, 2, "20"])
def test_invalid_preresnet_depth_is_a_user_error(depth: object) -> None:
    with pytest.raises(UserError, match="model 'preresnet'.*depth"):
        create_model("preresnet", num_classes=10, input_shape=(3, 8, 8), depth=depth)


@pytest.mark.parametrize("depth, blocks", [(8, 1), (32, 5), (164, 18)])
def test_valid_preresnet_depths_give_n_blocks_per_stage(depth: int, blocks: int) -> None:
    model = create_model("preresnet", num_classes=10, input_shape=(3, 8, 8), depth=depth)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == blocks


@pytest.mark.parametrize("name", ["convnet", "lenet5", "vgg16", "preresnet20", "wrn28x10"])
def test_conv_model_on_vector_input_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=rf"model '{name}' needs image input \(C, H, W\); got input shape \(64,\)"):
        create_model(name, num_classes=10, input_shape=(64,))


@pytest.mark.parametrize("num_classes, input_shape", [(0, (3, 8, 8)), (10, ()), (10, (3, 0, 8)), (10, "abc")])
def test_bad_data_arguments_are_user_errors(num_classes: int, input_shape: object) -> None:
    with pytest.raises(UserError):
        create_model("mlp", num_classes=num_classes, input_shape=input_shape)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_models.py").write_text(textwrap.dedent("""
        from torch import nn

        seen = {}

        def full(num_classes, input_shape, hidden=4):
            seen.update(num_classes=num_classes, input_shape=input_shape, hidden=hidden)
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.Linear(hidden, num_classes))

        def bare():
            return nn.Linear(3, 2)

        def by_kwargs(**kwargs):
            seen.update(kwargs)
            return nn.Identity()

        def not_a_module(num_classes, input_shape):
            return 42

        def raises(num_classes, input_shape, hidden=4):
            return nn.Linear(input_shape[0], hidden * 1.5)  # a float size: torch's TypeError deep inside

        constant = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_models"
    sys.modules.pop("my_user_models", None)


def test_user_factory_gets_data_arguments_and_kwargs(user_module: str) -> None:
    model = create_model(f"{user_module}:full", num_classes=7, input_shape=(5,), hidden=3)
    assert model(torch.randn(2, 5)).shape == (2, 7)
    assert sys.modules[user_module].seen == {"num_classes": 7, "input_shape": (5,), "hidden": 3}


def test_user_factory_gets_only_what_its_signature_takes(user_module: str) -> None:
    assert isinstance(create_model(f"{user_module}:bare", num_classes=7, input_shape=(5,)), nn.Linear)
    create_model(f"{user_module}:by_kwargs", num_classes=7, input_shape=(5,), extra=1)
    assert sys.modules[user_module].seen == {"num_classes": 7, "input_shape": (5,), "extra": 1}


@pytest.mark.parametrize("spec, kwargs, message", [
    ("no_such_module_xyz:f", {}, "cannot import module 'no_such_module_xyz'"),
    ("my_user_models:missing", {}, "has no attribute 'missing'"),
    ("my_user_models:constant", {}, "not a callable"),
    ("my_user_models:not_a_module", {}, "not a torch.nn.Module"),
    ("my_user_models:full", {"width": 1}, "takes no argument 'width'; it takes: hidden"),
    (":full", {}, "package.module:factory"),
    ("my_user_models:raises", {"hidden": 3}, r"^model 'my_user_models:raises' could not be built with hidden=3: "
                                              r"TypeError: .*float"),
])
def test_user_factory_failures_are_user_errors(user_module: str, spec: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        create_model(spec, num_classes=7, input_shape=(5,), **kwargs)


def test_a_module_in_the_current_folder_is_found(tmp_path, monkeypatch) -> None:
    """The `landscape` script's folder, not the user's, heads sys.path: a model
    file beside the user must still be found, as `python -m` would find it."""
    (tmp_path / "beside_me_models.py").write_text("from torch import nn\n"
                                                  "def net(num_classes, input_shape):\n"
                                                  "    return nn.Linear(input_shape[0], num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    try:
        assert create_model("beside_me_models:net", num_classes=3, input_shape=(4,)).out_features == 3
    finally:
        sys.modules.pop("beside_me_models", None)
    # A module that is found but imports something missing keeps its own error.
    (tmp_path / "broken_models.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(UserError, match="No module named 'no_such_dependency_xyz'"):
        create_model("broken_models:net", num_classes=3, input_shape=(4,))


def test_a_checkpoints_model_registered_elsewhere_names_the_way_out(monkeypatch) -> None:
    from landscape.models import buildable, from_spec, stored_spec

    spec = {"name": "registered_in_another_process", "kwargs": {"num_classes": 3, "input_shape": [4]}}
    assert not buildable(spec["name"]) and buildable("convnet") and buildable("pkg.mod:f")
    with pytest.raises(UserError, match="which is not registered in this process .* name its factory with --model"):
        from_spec(spec, source="run/model.pt")
    # The user's --model stands in for a name this process cannot build, with the stored options; never for one
    # it can build.
    assert stored_spec(spec, "mlp") == {"name": "mlp", "kwargs": spec["kwargs"]}
    assert stored_spec({**spec, "name": "convnet"}, "mlp")["name"] == "convnet"
    assert stored_spec(spec, None)["name"] == "registered_in_another_process"


def test_register_model_adds_a_factory_and_refuses_a_second_one(monkeypatch) -> None:
    monkeypatch.setattr("landscape.models.MODELS", dict(MODELS))
    import landscape.models as models

    @register_model("tiny_test_model")
    def tiny(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        return nn.Linear(input_shape[0], num_classes)

    assert "tiny_test_model" in models.list_models()
    assert create_model("tiny_test_model", num_classes=2, input_shape=(4,)).out_features == 2
    with pytest.raises(UserError, match="already registered"):
        register_model("tiny_test_model")(lambda num_classes, input_shape: nn.Identity())
    with pytest.raises(UserError):
        register_model("bad:name")


def test_data_given_dimensions_are_not_model_kwargs() -> None:
    """--model-kwargs num_classes=5 used to end in a TypeError traceback."""
    from landscape.models import model_spec

    for key in ("num_classes", "input_shape"):
        with pytest.raises(UserError, match=f"^--model-kwargs {key}=... is not an option: {key} comes from the dataset$"):
            model_spec("convnet", 10, (1, 8, 8), **{key: 5})


def test_a_factory_of_ones_own_is_named_by_model_in_every_reader(tmp_path, monkeypatch, small_digits) -> None:
    """Checkpoints trained with a package.module:factory name it; a later reader imports it only when the
    caller names it (model=, --model), and a refusal says how. The width report takes model= as the others do."""
    from landscape.inputs import load_points, network_of
    from landscape.checkpoint import load_checkpoint
    from landscape.rays import width_report
    from landscape.train import train

    (tmp_path / "own_factory_models.py").write_text(textwrap.dedent("""
        import math
        from torch import nn

        def net(num_classes, input_shape, hidden=12):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LANDSCAPE_TRUSTED_FACTORIES", raising=False)
    try:
        for seed in (1, 2):
            train(out=tmp_path / f"r{seed}", model="own_factory_models:net", model_kwargs={"hidden": 10},
                  seed=seed, epochs=1, data=small_digits, progress=False)
        a, b = tmp_path / "r1" / "model.pt", tmp_path / "r2" / "model.pt"
        with pytest.raises(UserError, match=r"if you trust it, name it yourself \(--model own_factory_models:net; "
                                            r"model= in Python\)"):
            width_report(a, b, None, directions=1, steps=3, data=small_digits)
        report = width_report(a, b, None, model="own_factory_models:net", directions=1, steps=3, data=small_digits)
        pts = load_points([a, b], model="own_factory_models:net", data=small_digits)
        assert pts.model[1].out_features == 10  # built with the stored options, not the factory's default
        # the SWA end of the report is the first network: its metrics are the engine's at that point
        assert report.summary["centers"][0]["center_test_error"] == pytest.approx(
            float(evaluate_points(pts.model, [pts.vectors[0]], [[1.0]], small_digits)["test_error"][0]))
        with pytest.raises(UserError, match=r"holds a 'own_factory_models:net' network \(\{'hidden': 10\}\); "
                                            r"--model own_factory_models:other does not apply to it "
                                            r"\(--model own_factory_models:net, its own\)$"):
            network_of(load_checkpoint(a), "own_factory_models:other")
    finally:
        sys.modules.pop("own_factory_models", None)


def test_the_core_never_imports_curves_plots_or_the_cli() -> None:
    """The design's one-way dependencies, inside the one package: cli -> plots, curves -> the core."""
    import pkgutil
    import subprocess

    import landscape

    core = [m.name for m in pkgutil.walk_packages(landscape.__path__, "landscape.")
            if not m.name.startswith(("landscape.curves", "landscape.plots", "landscape.cli", "landscape.__main__"))]
    code = (f"import importlib, sys\nfor m in {core!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('landscape.curves', 'landscape.plots', "
            "'landscape.cli'))))\n"
            "import landscape.curves\n"
            "print(sorted(m for m in sys.modules if m.startswith('landscape.plots')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.splitlines() == ["[]", "[]"] and len(core) > 20


def test_a_users_curves_plots_or_cli_folder_does_not_shadow_the_toolkit(tmp_path) -> None:
    """A folder of figures named plots/ (a namespace package to Python), or a project's own curves/ or cli/,
    in the current folder used to hide the toolkit's top-level modules of those names."""
    import subprocess

    for name in ("curves", "plots", "cli"):
        (tmp_path / name).mkdir()
    (tmp_path / "curves" / "__init__.py").write_text("mine = True\n")
    script = tmp_path / "analysis.py"
    script.write_text("from landscape.curves import fit_curve\nfrom landscape.plots.style import set_figure_width\n"
                      "import curves\nprint(curves.mine, callable(fit_curve), callable(set_figure_width))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["True", "True", "True"], done.stderr
    done = subprocess.run([sys.executable, "-m", "landscape", "models"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "convnet" in done.stdout, done.stderr


def _bn_mlp(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))


def test_a_factory_may_return_a_compiled_or_data_parallel_network(monkeypatch, tmp_path) -> None:
    """Its run's checkpoints hold the plain network's keys (wrapper prefixes stripped), which the wrapped network
    rebuilt from the factory did not take: every later step refused the run's own model.pt."""
    from landscape.checkpoint import load_model
    from landscape.train import train

    monkeypatch.setattr("landscape.models.MODELS", dict(MODELS))
    register_model("compiled_mlp")(lambda num_classes, input_shape: torch.compile(_bn_mlp(num_classes, input_shape)))
    register_model("parallel_mlp")(lambda num_classes, input_shape: nn.DataParallel(_bn_mlp(num_classes, input_shape)))
    for name in ("compiled_mlp", "parallel_mlp"):
        built = create_model(name, num_classes=10, input_shape=(1, 8, 8))
        assert type(built) is nn.Sequential  # the network inside
        result = train(out=tmp_path / name, model=name, epochs=1, progress=False)
        again = load_model(tmp_path / name / "model.pt")
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), result.model.state_dict().values()))


def test_a_buffer_left_out_of_checkpoints_and_drawn_at_random_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """A fixed random projection registered persistent=False is in no checkpoint, so every load drew another:
    a network trained to 12.8 % test error was scored at 84-99 % by every later command, differently each run.
    `train` refuses it before training (by building it again); loading refuses a network whose left-out
    buffers are not what its checkpoint recorded (a generator made once for the module draws anew at every
    build). Buffers left out but built the same every time (positions, a seeded generator's draw) are kept,
    and so is one that differs even under one seed (filled some other way). Loading builds the network once
    (it was built three times, doubling the memory of a big network with a rotary table), and the check
    leaves every generator as it found it, the GPUs' too (it seeded them all)."""
    from landscape import cli
    from landscape.checkpoint import load_checkpoint, load_model, save_checkpoint
    from landscape.models import refuse_random_unsaved

    (tmp_path / "buffered_nets.py").write_text(textwrap.dedent("""
        import itertools

        import torch
        from torch import nn

        counter = itertools.count()
        calls = []
        shared = torch.Generator().manual_seed(0)  # made once for the module: each build draws anew

        class Net(nn.Module):
            def __init__(self, proj):
                super().__init__()
                calls.append(1)
                self.register_buffer("proj", proj, persistent=False)
                self.fc = nn.Linear(64, 10)

            def forward(self, x):
                return self.fc(x.flatten(1) @ self.proj)

        def drawn(num_classes, input_shape):
            return Net(torch.randn(64, 64))

        def fixed(num_classes, input_shape):
            return Net(torch.eye(64) + torch.arange(64.0) / 64)

        def seeded(num_classes, input_shape):
            return Net(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))

        def module_generator(num_classes, input_shape):
            return Net(torch.randn(64, 64, generator=shared))

        def permuted(num_classes, input_shape):  # the same values in another order
            return Net(torch.eye(64)[torch.randperm(64)])

        def counted(num_classes, input_shape):
            return Net(torch.eye(64) * next(counter))

        def unseeded_numpy(num_classes, input_shape):
            import numpy as np
            return Net(torch.from_numpy(np.random.default_rng().standard_normal((64, 64))).float())

        def empty(num_classes, input_shape):  # uninitialised memory: what no load can depend on
            return Net(torch.empty(64, 64))

        def nan_drawn(num_classes, input_shape):
            proj = torch.randn(64, 64)
            proj[0, 0] = float("nan")
            return Net(proj)

        class Cache(nn.Module):  # a positional table made on the first forward
            def __init__(self):
                super().__init__()
                self.register_buffer("table", torch.zeros(0), persistent=False)

            def forward(self, x):
                if self.table.numel() == 0:
                    self.table = torch.arange(float(x.shape[1]))
                return x + self.table

        def cached(num_classes, input_shape):  # lazy: the cache is filled by the forward that sets the shapes
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(32), Cache(), nn.Linear(32, num_classes))

        def growing(num_classes, input_shape):  # a cache the first forward fills: empty as built
            return nn.Sequential(nn.Flatten(), Cache(), nn.Linear(64, num_classes))

        def once(num_classes, input_shape):  # a one-shot resource: a second call fails
            if calls:
                raise RuntimeError("already taken")
            return Net(torch.randn(64, 64))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    shape = {"num_classes": 10, "input_shape": (1, 8, 8)}
    spec = {"name": "", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8]}}
    seeded_gpus = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded_gpus.append(seed))
    try:
        nets = importlib.import_module("buffered_nets")
        seeded_draw = (r"is drawn at random \(or computed from the initial weights\) when the network is built but "
                       r"registered with persistent=False")
        # drawn from a generator no seed reaches: they were taken for torch.empty's memory, left unrecorded, and
        # every load of their runs built other values without a word
        unseeded_draw = (r"takes other values every time the network is built, whatever the seeds \(drawn from an "
                         r"unseeded np.random.default_rng\(\), a generator made once for the module, or the clock\?\)")
        for name, refused in (("drawn", seeded_draw), ("nan_drawn", seeded_draw), ("fixed", None), ("seeded", None),
                              ("counted", unseeded_draw), ("module_generator", unseeded_draw),
                              ("unseeded_numpy", unseeded_draw), ("empty", None)):
            built = create_model(f"buffered_nets:{name}", **shape)
            assert len(nets.calls) == 1  # one build, whatever its buffers
            rebuild = lambda: create_model(f"buffered_nets:{name}", **shape)  # noqa: E731
            if refused:  # NaN equal to NaN
                with pytest.raises(UserError, match=rf"^model 'buffered_nets:{name}': its buffer 'proj' {refused}"):
                    refuse_random_unsaved(f"buffered_nets:{name}", built, rebuild)
            else:
                torch.manual_seed(5)
                before = torch.rand(3)
                seeded_gpus.clear()
                refuse_random_unsaved(f"buffered_nets:{name}", built, rebuild)
                assert seeded_gpus == []  # its torch.manual_seed reseeded every GPU to the check's seed
                torch.manual_seed(5)
                assert torch.equal(torch.rand(3), before)  # the extra builds drew from generators of their own
            nets.calls.clear()
        refuse_random_unsaved("buffered_nets:once", create_model("buffered_nets:once", **shape),
                              lambda: create_model("buffered_nets:once", **shape))  # cannot tell: taken as it is
        create_model("buffered_nets:cached", **shape)  # every build materialised
        assert cli.main(["train", "--model", "buffered_nets:drawn", "--epochs", "1", "--out", "run"]) == 2
        assert "its buffer 'proj' is drawn at random" in capsys.readouterr().err
        assert not (tmp_path / "run" / "model.pt").exists()

        # Loading: the record a checkpoint keeps of the left-out buffers, against the network built again.
        for name, agrees in (("drawn", False), ("permuted", False), ("fixed", True), ("seeded", True)):
            save_checkpoint(tmp_path / f"{name}.pt", create_model(f"buffered_nets:{name}", **shape),
                            {**spec, "name": f"buffered_nets:{name}"})
            nets.calls.clear()
            if agrees:
                load_model(tmp_path / f"{name}.pt", f"buffered_nets:{name}")
                assert len(nets.calls) == 1
            else:
                with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path / name))}\.pt: the network's buffer "
                                                    rf"'proj' is registered with persistent=False, so no checkpoint "
                                                    rf"holds it, and built again it holds other values"):
                    load_model(tmp_path / f"{name}.pt", f"buffered_nets:{name}")
        first = create_model("buffered_nets:module_generator", **shape)
        save_checkpoint(tmp_path / "mg.pt", first, {**spec, "name": "buffered_nets:module_generator"})
        with pytest.raises(UserError, match="built again it holds other values"):  # the next draw of the module's
            load_model(tmp_path / "mg.pt", "buffered_nets:module_generator")
        grown = create_model("buffered_nets:growing", **shape)
        grown(torch.zeros(2, 1, 8, 8))  # trained: the cache filled
        save_checkpoint(tmp_path / "grown.pt", grown, {**spec, "name": "buffered_nets:growing"})
        load_model(tmp_path / "grown.pt", "buffered_nets:growing")  # compared as built, not as trained
        torch.save(create_model("buffered_nets:drawn", **shape).state_dict(), tmp_path / "foreign.pt")
        with pytest.raises(UserError, match="its buffer 'proj' is drawn at random"):  # no record: built again
            load_model(tmp_path / "foreign.pt", "buffered_nets:drawn", **shape)
        torch.save(create_model("buffered_nets:fixed", **shape).state_dict(), tmp_path / "foreign_fixed.pt")
        load_model(tmp_path / "foreign_fixed.pt", "buffered_nets:fixed", **shape)
        assert cli.main(["import", "foreign.pt", "--model", "buffered_nets:drawn", "--dataset", "digits",
                         "--out", "imported.pt"]) == 2
        assert "its buffer 'proj' is drawn at random" in capsys.readouterr().err  # not stamped with one draw
        assert not (tmp_path / "imported.pt").exists()
        # torch.empty's memory: left alone when training starts, so not recorded, and its checkpoints load (each
        # load refused them)
        empty = create_model("buffered_nets:empty", **shape)
        refuse_random_unsaved("buffered_nets:empty", empty, lambda: create_model("buffered_nets:empty", **shape))
        assert not torch.are_deterministic_algorithms_enabled()  # the check's filled memory ends with it
        save_checkpoint(tmp_path / "empty.pt", empty, {**spec, "name": "buffered_nets:empty"})
        assert load_checkpoint(tmp_path / "empty.pt").extra["unsaved_buffers"] == {}  # none to compare, or rebuild
        nets.calls.clear()
        loaded = load_model(tmp_path / "empty.pt", "buffered_nets:empty")
        assert len(nets.calls) == 1  # an empty record: nothing compared, and no build more
        save_checkpoint(tmp_path / "again.pt", loaded, {**spec, "name": "buffered_nets:empty"})
        load_model(tmp_path / "again.pt", "buffered_nets:empty")  # nor recorded from a network loaded
        assert cli.main(["train", "--model", "buffered_nets:unseeded_numpy", "--epochs", "1", "--out", "np"]) == 2
        assert "takes other values every time the network is built" in capsys.readouterr().err
        assert cli.main(["train", "--model", "buffered_nets:fixed", "--epochs", "1", "--out", "ok"]) == 0
        assert cli.main(["ensemble", "ok/model.pt", "ok/model.pt", "--model", "buffered_nets:fixed", "--out", "ens"]) == 0
        assert "unsaved_buffers" in load_checkpoint(tmp_path / "ok" / "model.pt").extra
    finally:
        sys.modules.pop("buffered_nets", None)


def test_the_record_of_left_out_buffers_is_their_sums_and_tolerates_only_the_last_bits() -> None:
    """The sums against a loop by hand; a buffer computed again on another CPU (its last bits differ) agrees;
    the same values drawn again, permuted, or one value changed by more than 1e-5 of their sum of magnitudes
    do not; integers are compared exactly."""
    from landscape.models import _agree, _sums, unsaved_record

    x = torch.tensor([[1.5, -2.0, float("nan")], [float("inf"), 0.25, -float("inf")]])
    golden, scale = 0.6180339887498949, 2.0 ** -60
    finite = [(i, v * scale) for i, v in enumerate([1.5, -2.0, None, None, 0.25, None]) if v is not None]
    by_hand = [1.0, 1.0, 1.0, sum(v for _, v in finite), sum(abs(v) for _, v in finite),
               sum(v * ((i * golden) % 1.0 - 0.5) for i, v in finite)]
    assert _sums(x) == pytest.approx(by_hand, abs=1e-12)
    assert _sums(x, chunk=4) == pytest.approx(by_hand, abs=1e-12)  # in chunks as at once

    class Held(nn.Module):
        def __init__(self, buf):
            super().__init__()
            self.register_buffer("b", buf, persistent=False)
            self.register_buffer("kept", torch.ones(2))  # in the state dict: not recorded

    def record(buf):
        return unsaved_record(Held(buf))["b"]

    torch.manual_seed(0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 512, 2, dtype=torch.float32) / 512))
    assert list(unsaved_record(Held(inv_freq))) == ["b"]
    last_bits = inv_freq * (1 + 2 * torch.finfo(torch.float32).eps * torch.randint(-1, 2, inv_freq.shape))
    assert not torch.equal(last_bits, inv_freq) and _agree(record(last_bits), record(inv_freq))
    drawn = torch.randn(256, 256)
    assert not _agree(record(torch.randn(256, 256)), record(drawn))
    assert not _agree(record(drawn.flip(0)), record(drawn))
    changed = drawn.clone()
    changed[7, 9] += 2.0  # seen above 1e-5 of the sum of magnitudes (52274 here): a redraw moves ~60x that
    assert not _agree(record(changed), record(drawn))
    assert not _agree(record(drawn[:255]), record(drawn)) and not _agree(record(drawn.double()), record(drawn))
    ids = torch.randperm(1000)
    assert _agree(record(ids), record(ids.clone())) and not _agree(record(ids.flip(0)), record(ids))
    threads = torch.get_num_threads()
    try:  # integers by their bytes: a float sum of 65536 of them changed with the number of threads
        torch.set_num_threads(1)
        one = record(torch.arange(65536)[None])
        torch.set_num_threads(2)
        assert _agree(record(torch.arange(65536)[None]), one)
    finally:
        torch.set_num_threads(threads)
    mask = torch.full((8, 8), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)  # sums overflowed
    assert _agree(record(mask), record(mask.clone())) and not _agree(record(mask.T.contiguous()), record(mask))
    assert _agree(record(torch.zeros(0)), record(torch.zeros(0))) and _agree(record(torch.ones(3, dtype=torch.bool)),
                                                                           record(torch.ones(3, dtype=torch.bool)))


def test_a_compiled_network_given_to_load_model_is_loaded_through_the_module_inside(tmp_path) -> None:
    """It was refused as not fitting its checkpoint ("key '_orig_mod.1.weight' is missing")."""
    from landscape.checkpoint import load_model, save_checkpoint
    from landscape.data import load_dataset
    from landscape.evaluate import evaluate_model

    torch.manual_seed(0)
    trained = _bn_mlp(10, (1, 8, 8))
    save_checkpoint(tmp_path / "m.pt", trained.state_dict(), {"name": "elsewhere", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8]}})
    compiled = torch.compile(_bn_mlp(10, (1, 8, 8)))
    loaded = load_model(tmp_path / "m.pt", compiled)
    assert loaded is compiled._orig_mod
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
    data = load_dataset("digits")
    assert evaluate_model(loaded, data) == evaluate_model(trained, data)


def test_networks_that_cannot_be_evaluated_at_other_weights_are_one_line() -> None:
    """A TorchScript module, a DataParallel wrapper and a network on the meta device ended in torch's tracebacks
    (forward hooks on a ScriptModule, the stateless API, copying out of meta tensors)."""
    from landscape.data import load_dataset
    from landscape.evaluate import evaluate_model, evaluate_points

    data = load_dataset("digits")
    plain = _bn_mlp(10, (1, 8, 8))
    for network, said in ((torch.jit.script(_bn_mlp(10, (1, 8, 8))), "is a TorchScript module"),
                          (nn.DataParallel(_bn_mlp(10, (1, 8, 8))), "is wrapped in DataParallel: pass the network "
                                                                     "inside it (.module)"),
                          (torch.compile(_bn_mlp(10, (1, 8, 8))), "is compiled by torch.compile"),
                          (_bn_mlp(10, (1, 8, 8)).to("meta"), "has tensors on the meta device, which hold no values")):
        for call in (lambda: evaluate_points(network, [plain, plain], [[1.0, 0.0]], data),
                     lambda: evaluate_model(network, data)):
            with pytest.raises(UserError, match=f"^the network {re.escape(said)}"):
                call()
    with pytest.raises(UserError, match=r"^model 'scripted' is a TorchScript module"):
        from landscape.models import materialize

        materialize(torch.jit.script(_bn_mlp(10, (1, 8, 8))), (1, 8, 8), "model 'scripted'")


class _Embedded(nn.Module):
    """An embedding over the digits' 64 pixels, each rounded to one of 17 ids (what a token model does)."""

    def __init__(self, **embedding):
        super().__init__()
        self.emb = nn.Embedding(17, 8, **embedding)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        ids = x.flatten(1).clamp(-8, 8).round().long() + 8
        return self.fc(self.emb(ids).mean(1))


def test_embeddings_the_runs_cannot_differentiate_are_one_line(monkeypatch, tmp_path, small_digits):
    """sparse=True ended training in "add(sparse, dense) is not supported" (weight decay) and a curve's fit in
    a hundred lines of SparseCPU traceback; max_norm (which renormalises the weight in place) ended a curve's
    fit in "a view ... modified inplace". Training with max_norm works and is kept."""
    from landscape.curves import fit_curve
    from landscape.sharpness import evaluate_sharpness
    from landscape.train import train

    monkeypatch.setattr("landscape.models.MODELS", dict(MODELS))
    register_model("sparse_emb")(lambda num_classes, input_shape: _Embedded(sparse=True))
    register_model("renormed_emb")(lambda num_classes, input_shape: _Embedded(max_norm=1.0))
    with pytest.raises(UserError, match=r"^the network's emb \(Embedding\) has sparse=True, whose sparse gradients "
                                        r"training with weight decay \(--wd 0 takes them\) cannot take: build it "
                                        r"with sparse=False"):
        train(out=tmp_path / "s", model="sparse_emb", data=small_digits, epochs=1, progress=False)
    train(out=tmp_path / "s0", model="sparse_emb", data=small_digits, epochs=1, wd=0.0, progress=False)  # kept
    with pytest.raises(UserError, match=r"sparse gradients the Hessian's products cannot take"):
        sparse = _Embedded(sparse=True)
        evaluate_sharpness(sparse, [ParamSpace.of(sparse).flatten(sparse)], small_digits, top=1, iters=2)
    for seed in (1, 2):
        train(out=tmp_path / f"r{seed}", model="renormed_emb", data=small_digits, epochs=1, seed=seed, progress=False)
    with pytest.raises(UserError, match=r"^the network's emb \(Embedding\) has max_norm=1, which renormalises its "
                                        r"weight in place in every forward; a curve's \(or simplex's\) fit forms"):
        fit_curve(tmp_path / "r1" / "model.pt", tmp_path / "r2" / "model.pt", tmp_path / "c", data=small_digits,
                  epochs=1, progress=False)


def test_a_network_ending_in_a_softmax_gets_a_note(small_digits, capsys, monkeypatch):
    """Probabilities taken as logits went through a second softmax: every NLL, and the training loss, was of
    those, without a word (a probe: 1.0505 reported against 0.9903 of the network's own probabilities)."""
    import landscape.errors as errors
    from landscape.evaluate import evaluate_model

    torch.manual_seed(0)
    logits = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    errors._NOTES_SAID.clear()
    evaluate_model(logits, small_digits)
    assert capsys.readouterr().err == ""
    probs = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))
    for _ in range(2):  # once a process
        evaluate_model(probs, small_digits)
    err = capsys.readouterr().err
    assert err.count("note: the network's outputs are non-negative and sum to 1 in every row") == 1

    class HalfSoftmax(nn.Module):  # rows sum to 1 within ~1e-3 only
        def forward(self, x):
            return torch.softmax(x.half(), 1).float()

    half = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), HalfSoftmax())  # another Sequential: noted too
    evaluate_model(half, small_digits)
    assert "note: the network's outputs are non-negative and sum to 1" in capsys.readouterr().err
    log_probs = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.LogSoftmax(dim=1))
    evaluate_model(log_probs, small_digits)
    assert capsys.readouterr().err == ""
    errors._NOTES_SAID.clear()  # a process group of the caller's own (no RANK set): its rank 1 says nothing
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    evaluate_model(probs, small_digits)
    assert capsys.readouterr().err == ""


def test_an_embedding_given_standardised_inputs_says_how_ids_are_read(small_digits):
    from landscape.evaluate import evaluate_model

    class Ids(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(17, 10)

        def forward(self, x):
            return self.emb((x.flatten(1) * 100).long()).mean(1)  # standardised inputs: ids out of range

    with pytest.raises(UserError, match=r"index out of range in self; an embedding given standardised inputs\? "
                                        r"integer inputs \(token ids\) need --data-normalization 0/1"):
        evaluate_model(Ids(), small_digits)
