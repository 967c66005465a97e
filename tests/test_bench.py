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
from protocol import max_differences, papers_protocol, within  # noqa: E402


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
