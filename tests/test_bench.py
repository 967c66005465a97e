"""The benchmarks' baseline computes what the engine computes.

``bench/protocol.py`` re-implements the papers' evaluation loop (DataLoader,
``bn_update`` with momentum b / (n + b), ``test`` on train and test); the
speed ratios in docs/benchmarks.md mean something only if it does the same
work and gets the same numbers as the engine with the papers' estimator.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.data import load_dataset
from landscape.evaluate import METRICS, evaluate_points
from landscape.models import create_model
from landscape.weights import ParamSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from protocol import forward_flops, max_differences, papers_protocol, within  # noqa: E402


@pytest.fixture(scope="module")
def data():
    d = load_dataset("digits")
    # 256 training images: whole batches of 128, where b / (n + b) weighting and equal weights agree
    return dataclasses.replace(d, x_train=d.x_train[:256], y_train=d.y_train[:256],
                               x_test=d.x_test[:100], y_test=d.y_test[:100])


def convnet(seed):
    torch.manual_seed(seed)
    return create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=8)


@pytest.mark.parametrize("grad", [True, False])
def test_papers_protocol_equals_the_engine_with_update_bn_statistics(data, grad):
    a, b = convnet(1), convnet(2)
    coeffs = np.array([[1.0, 0.0], [0.6, 0.4], [0.2, 0.8]])
    space = ParamSpace.of(a)
    anchors = torch.stack([space.flatten(m).detach() for m in (a, b)])  # (2, P)
    base = papers_protocol(a, anchors, coeffs, data, wd=5e-4, batch_size=128, grad=grad)
    engine = evaluate_points(a, [a, b], coeffs, data, wd=5e-4, batch_size=128, bn_stats="batches")
    for m in METRICS:
        np.testing.assert_allclose(base[m], engine[m], rtol=1e-5, atol=1e-6, err_msg=m)
    assert np.ptp(base["train_loss"]) > 1e-2  # three different points
    # and population statistics are close to them, not equal
    pop = evaluate_points(a, [a, b], coeffs, data, wd=5e-4, bn_stats="population")
    d = max_differences(pop, base)
    assert 0 < d["train_nll"][0]
    assert within(pop["train_loss"], base["train_loss"], rel=0.05)


# --------------------------------------------------------------- bench/vgg_plane.py
def test_vgg16bn_forward_flops_are_the_hand_count():
    """2 x multiply-adds of the 13 convolutions (3x3, padding 1, a 2x2 pool after
    each block) and the 3 linear layers on a 32x32 image; BN, ReLU and pooling
    are not counted."""
    from vgg_plane import vgg16bn

    blocks = [(32, [(3, 64), (64, 64)]), (16, [(64, 128), (128, 128)]),
              (8, [(128, 256), (256, 256), (256, 256)]), (4, [(256, 512), (512, 512), (512, 512)]),
              (2, [(512, 512), (512, 512), (512, 512)])]
    convs = sum(2 * 9 * cin * cout * side * side for side, layers in blocks for cin, cout in layers)
    linear = 2 * (512 * 512 + 512 * 512 + 512 * 10)
    assert forward_flops(vgg16bn(0, torch.device("cpu")), torch.zeros(3, 3, 32, 32)) == convs + linear


def test_vgg_plane_script_runs_and_reports(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "vgg_plane.py"
    argv = ["--grid", 2, "--train", 16, "--test", 8, "--device", "cpu", "--precision", "fp32", "--peak-tflops", 1]
    done = subprocess.run([sys.executable, str(script), *map(str, argv)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plane 2x2 + 3 anchors = 7 points" in done.stdout
    assert "24 images per point" in done.stdout  # population statistics: 16 train + 8 test
    assert done.stdout.index("warm-up (not counted): ") < done.stdout.index("time: ")
    assert "strategy loop" in done.stdout and "points per pass: " in done.stdout  # the CPU's default
    assert "of peak; lower bound at peak" in done.stdout
    assert "train loss finite at every point: True" in done.stdout


def test_train_layout_script_times_both_layouts():
    import re
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "train_layout.py"
    done = subprocess.run([sys.executable, str(script), "--epochs", "1", "--rounds", "1"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(NCHW|channels-last) +[\d.]+ +([\d.]+) ", done.stdout, re.M)}
    assert rows.keys() == {"NCHW", "channels-last"} and rows["NCHW"] == 1.0 and rows["channels-last"] > 0
    assert "final train losses" in done.stdout


def test_effective_sample_size_of_independent_and_of_autocorrelated_chains():
    from samplers import effective_size

    rng = np.random.default_rng(0)
    chains, length = 4, 2000
    iid = rng.standard_normal((chains * length, 2))
    label = np.tile(np.arange(chains), length)  # kept round-robin, as the samplers keep them
    assert effective_size(iid, label) == pytest.approx([chains * length] * 2, rel=0.15)
    # AR(1) with coefficient phi: the integrated autocorrelation time is (1 + phi) / (1 - phi)
    phi = 0.8
    x = np.zeros((length, chains))
    for t in range(1, length):
        x[t] = phi * x[t - 1] + rng.standard_normal(chains)
    ar = np.stack([x.ravel(), x.ravel()], 1)  # row t * chains + c: step t of chain c
    assert effective_size(ar, label) == pytest.approx([chains * length * (1 - phi) / (1 + phi)] * 2, rel=0.2)
    # two chains each stuck in its own mode (well mixed within it) describe about one sample of the whole
    stuck = rng.standard_normal((2 * 200, 1)) * 0.1 + np.tile([-3.0, 3.0], 200)[:, None]
    assert effective_size(stuck, np.tile([0, 1], 200))[0] < 5
