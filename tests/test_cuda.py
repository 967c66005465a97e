"""The CUDA paths, on a machine with a GPU (skipped elsewhere).

The engine on CUDA batches its K points with ``vmap`` and keeps the data and
the metric sums on the device; these tests hold it to the CPU's sequential
reference (TF32 off, so the comparison is of fp32 with fp32), count its host
synchronisations (they must not grow with the number of batches), and run
the CLI's training and sweep commands on the GPU. A network that calls one
batch-norm layer twice per forward is evaluated with momentum None, one point
at a time, which synchronises per call: not counted here.
"""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from landscape import cli
from landscape.data import load_dataset
from landscape.evaluate import (choose_points_per_pass, evaluate_points, evaluate_points_sequential, full_float32,
                                resolve_strategy)
from landscape.models import create_model
from landscape.weights import ParamSpace

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPE = (1, 8, 8)
COMBO = np.array([[0.5, 0.7, -0.3], [1.2, 0.0, 0.1], [-0.2, 0.4, 0.4], [0.3, 0.3, 0.3], [1.0, 0.0, 0.0]])


@pytest.fixture(scope="module")
def cpu_data():
    d = load_dataset("digits")
    return dataclasses.replace(d, x_train=d.x_train[:300], y_train=d.y_train[:300],
                               x_test=d.x_test[:100], y_test=d.y_test[:100])


@pytest.fixture(scope="module")
def gpu_data(cpu_data):
    return cpu_data.to("cuda")


@pytest.fixture()
def no_tf32():
    with full_float32():
        yield


def convnet(seed):
    torch.manual_seed(seed)
    return create_model("convnet", num_classes=10, input_shape=SHAPE, width=8)


def test_cuda_evaluates_with_vmap():
    assert resolve_strategy("auto", torch.device("cuda")) == "vmap"


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("bn_stats", ["population", "batches"])
def test_engine_on_cuda_equals_the_cpu_reference(cpu_data, gpu_data, no_tf32, bn_stats, strategy):
    anchors = [convnet(10), convnet(11), convnet(12)]
    model = convnet(13)
    kw = dict(wd=5e-4, batch_size=64, bn_stats=bn_stats)
    got = evaluate_points(model, anchors, COMBO, gpu_data, points_per_pass=2, return_probs=True, strategy=strategy,
                          **kw)
    ref = evaluate_points_sequential(model, anchors, COMBO, cpu_data, return_probs=True, **kw)
    for key in ("train_loss", "train_nll", "test_nll", "probs"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for split, n in (("train", len(cpu_data.y_train)), ("test", len(cpu_data.y_test))):  # one flipped argmax at most
        np.testing.assert_allclose(got[f"{split}_error"], ref[f"{split}_error"], atol=100 / n + 1e-9)
    assert np.ptp(got["train_nll"]) > 1e-3


def count_synchronisations(fn) -> int:
    """Host synchronisations ``fn()`` makes, from torch's sync debug mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("bn_stats", ["population", "batches"])
def test_host_synchronisations_do_not_grow_with_the_batches(gpu_data, bn_stats, strategy):
    """300 train / 100 test images in batches of 100 (4 batches) or of 20 (20):
    the inner loop over batches must not synchronise, so both make as many."""
    anchors = [convnet(10), convnet(11), convnet(12)]
    kw = dict(points_per_pass=5, bn_stats=bn_stats, strategy=strategy)
    evaluate_points(anchors[0], anchors, COMBO, gpu_data, batch_size=100, **kw)  # warm-up
    few = count_synchronisations(lambda: evaluate_points(anchors[0], anchors, COMBO, gpu_data, batch_size=100, **kw))
    many = count_synchronisations(lambda: evaluate_points(anchors[0], anchors, COMBO, gpu_data, batch_size=20, **kw))
    assert few > 0  # the debug mode reports (the results' copy to the host at the end)
    assert few == many, (few, many)


def test_points_per_pass_come_from_the_free_memory(gpu_data):
    model = convnet(1).cuda()
    k = choose_points_per_pass(model, gpu_data, 1000, ParamSpace.of(model).numel, "vmap")
    assert 1 < k <= 256


def test_bf16_on_cuda_is_within_1_percent_or_1e3_of_fp32(gpu_data):
    anchors = [convnet(10), convnet(11), convnet(12)]
    fp32 = evaluate_points(anchors[0], anchors, COMBO, gpu_data, wd=5e-4)
    # The convolutions' output dtypes under autocast (the engine's probe forwards run outside it): bf16
    # must reach vmap's batched convolutions, not only the linear layers.
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if torch.is_autocast_enabled("cuda")
                                     else None) for m in anchors[0].modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        bf16 = evaluate_points(anchors[0], anchors, COMBO, gpu_data, wd=5e-4, amp=True)
    finally:
        for h in hooks:
            h.remove()
    assert seen and set(seen) == {torch.bfloat16}, set(seen)
    assert not np.array_equal(bf16["train_nll"], fp32["train_nll"])  # bf16 did run
    for key in ("train_loss", "train_nll", "test_nll"):
        d = np.abs(bf16[key] - fp32[key])
        assert np.all((d <= 0.01 * np.abs(fp32[key])) | (d <= 1e-3)), key


def test_train_and_plane_commands_on_the_gpu(tmp_path, capsys):
    runs = []
    for seed in (1, 2, 3):
        out = tmp_path / f"r{seed}"
        code = cli.main(["train", "--device", "cuda", "--epochs", "2", "--seed", str(seed),
                         "--model-kwargs", "width=8", "--out", str(out), "--quiet"])
        assert code == 0, capsys.readouterr().err
        runs.append(out / "model.pt")
    state = torch.load(runs[0], weights_only=True)["state_dict"]
    assert all(v.device.type == "cpu" for v in state.values())  # checkpoints load anywhere
    code = cli.main(["plane", "--device", "cuda", "--points", *map(str, runs), "--grid", "5", "--quiet",
                     "--out", str(tmp_path / "plane")])
    assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "plane" / "plane.npz") as z:
        assert z["train_loss"].shape == (5, 5) and np.isfinite(z["train_loss"]).all()


def test_subspace_sampling_and_vi_on_the_gpu(tmp_path, cpu_data, gpu_data, no_tf32):
    """ESS with 3 chains (their proposals batched by vmap) keeps every sample's values those of the CPU's
    sequential reference at the same z; VI fits and samples on the GPU."""
    from landscape.averaging import run_swa
    from landscape.subspace import sample_subspace, swag_subspace
    from landscape.train import train

    train(out=tmp_path / "a", data=cpu_data, epochs=2, seed=1, progress=False, model_kwargs={"width": 8})
    run_swa(None, tmp_path / "swa", from_ckpt=str(tmp_path / "a" / "model.pt"), epochs=4, swa_lr=0.1, swag_rank=3,
            data=cpu_data, progress=False)
    sub = swag_subspace(tmp_path / "swa" / "swag.pt", "pca", 2, device="cuda")
    res = sample_subspace(sub, samples=4, chains=3, prior_scale=2.0, data=gpu_data, bn_stats="batches")
    z = res.arrays["z"]
    ref = swag_subspace(tmp_path / "swa" / "swag.pt", "pca", 2, device="cpu")
    want = evaluate_points_sequential(ref.model, ref.anchors(), np.concatenate([np.ones((4, 1)), z], 1), cpu_data,
                                      wd=res.summary["wd"], bn_stats="batches")
    for key in ("train_nll", "test_nll", "test_error"):
        assert res.arrays[f"sample_{key}"] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    vi = sample_subspace(sub, method="vi", vi_epochs=1, samples=2, data=gpu_data)
    assert np.isfinite(vi.arrays["sample_test_nll"]).all() and np.isfinite(vi.summary["vi"]["sigma"]).all()
    flow = sample_subspace(sub, method="vi", vi_family="realnvp", vi_epochs=1, samples=2, data=gpu_data)
    assert np.isfinite(flow.arrays["sample_test_nll"]).all()
    # NUTS on the GPU, both gradients: its target and gradient those of the CPU at the same z, its samples' values
    # the sequential reference's
    from landscape.subspace import LogPosterior, _Run

    def target(space, data, bn_stats):
        run = _Run(subspace=space, net=space.model, data=data, temperature=1.0, prior_scale=2.0,
                   eval_options=dict(wd=0.0, batch_size=128, bn_batches=None, bn_stats=bn_stats, points_per_pass=None,
                                     amp=False), progress=False, resume=False, out=None, key="")
        return LogPosterior(run)

    zs = np.array([[0.2, -0.5], [-1.0, 0.3]])
    for bn_stats in ("population", "batches"):
        on_gpu, on_cpu = target(sub, gpu_data, bn_stats), target(ref, cpu_data, bn_stats)
        assert on_gpu.kind == on_cpu.kind == ("autograd" if bn_stats == "population" else "fd")
        (lp_g, g_g), (lp_c, g_c) = on_gpu(zs), on_cpu(zs)
        tol = 1e-3 if bn_stats == "population" else 1e-2  # finite differences amplify the last digits
        assert lp_g == pytest.approx(lp_c, rel=1e-5) and g_g == pytest.approx(g_c, rel=tol, abs=tol * np.abs(g_c).max())
        nuts = sample_subspace(sub, method="nuts", samples=4, chains=2, burn_in=2, max_depth=4, prior_scale=2.0,
                               data=gpu_data, bn_stats=bn_stats)
        z = nuts.arrays["z"]
        want = evaluate_points_sequential(ref.model, ref.anchors(), np.concatenate([np.ones((4, 1)), z], 1), cpu_data,
                                          wd=nuts.summary["wd"], bn_stats=bn_stats)
        for key in ("train_nll", "test_nll", "test_error"):
            assert nuts.arrays[f"sample_{key}"] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_variational_training_and_its_schemes_on_the_gpu(tmp_path, cpu_data, gpu_data, no_tf32):
    """`vi` with HWA trains on the GPU (the hooks' noise on the device), its checkpoints load on the
    CPU, and `vi-eval`'s schemes on the GPU (the draws through vmap) are the CPU's sequential reference's
    at the same draws."""
    from landscape.train import train
    from landscape.variational import evaluate_variational, load_variational, run_variational

    train(out=tmp_path / "a", data=cpu_data, epochs=2, seed=1, progress=False, model_kwargs={"width": 8})
    run = run_variational(out=tmp_path / "vi", data=gpu_data, device="cuda", from_ckpt=str(tmp_path / "a" / "model.pt"),
                          family="neuron", epochs=3, hwa_start=1, progress=False)
    assert run.summary["hwa"]["averaged"] == 2 and np.isfinite(run.summary["vi"]["test_nll"])
    post, net, _ = load_variational(tmp_path / "vi" / "hwa.pt", "cpu")
    ev = evaluate_variational(tmp_path / "vi" / "hwa.pt", None, samples=3, seed=2, data=gpu_data, device="cuda",
                              bn_stats="batches")
    anchors = torch.cat([post.mean[None], post.sample(3, 2)])
    want = evaluate_points_sequential(net, anchors, np.eye(4), cpu_data, wd=0.0, bn_stats="batches")
    for key in ("train_nll", "test_nll", "test_error"):
        assert ev.arrays[f"sample_{key}"] == pytest.approx(want[key][1:], rel=1e-4, abs=1e-6), key
        assert ev.summary["deterministic"][key] == pytest.approx(float(want[key][0]), rel=1e-4, abs=1e-6), key
