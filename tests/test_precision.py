"""bf16 evaluation agrees with fp32: 1 % relative or 1e-3 absolute in train
loss at every point of a digits plane."""

import numpy as np
import pytest
import torch

from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import evaluate_points, precision_amp
from landscape.inputs import load_points
from landscape.plane import evaluate_plane
from landscape.train import train


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    root = tmp_path_factory.mktemp("prec")
    data = load_dataset("digits")
    for seed in (1, 2, 3):
        train(out=root / str(seed), data=data, epochs=4, seed=seed, progress=False, model_kwargs={"width": 8})
    return load_points([root / str(s) / "model.pt" for s in (1, 2, 3)], device="cpu")


@pytest.mark.slow
def test_bf16_plane_matches_fp32(points, tmp_path):
    kw = dict(grid=5, wd=points.wd)
    fp32 = evaluate_plane(points.model, points.vectors, points.data, tmp_path / "fp32", **kw)
    bf16 = evaluate_plane(points.model, points.vectors, points.data, tmp_path / "bf16", precision="bf16", **kw)
    a, b = fp32.arrays["train_loss"], bf16.arrays["train_loss"]
    ok = (np.abs(b - a) <= 0.01 * np.abs(a)) | (np.abs(b - a) <= 1e-3)
    assert ok.all(), np.max(np.abs(b - a) / np.abs(a))
    assert not np.array_equal(a, b)  # bf16 really ran: the values differ in the last digits


def test_unknown_precision_is_a_user_error():
    assert precision_amp("bf16") and not precision_amp("fp32")
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        precision_amp("fp16")


def test_bf16_with_vmap_on_the_cpu_is_refused(points):
    """CPU autocast lowers conv2d but not aten::convolution, which vmap's batched
    convolution calls, so the "bf16" pass would run fp32 convolutions. The first
    half checks that torch still behaves so (drop the refusal when it does not)."""
    x, w = torch.randn(4, 1, 5, 5), torch.randn(3, 2, 1, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.conv2d(x, w[0]).dtype == torch.bfloat16
        assert torch.vmap(lambda wi: torch.nn.functional.conv2d(x, wi))(w).dtype == torch.float32
    with pytest.raises(UserError, match="strategy vmap on the CPU"):
        evaluate_points(points.model, points.vectors, [[1.0, 0.0, 0.0]], points.data, strategy="vmap", amp=True)
    loop = evaluate_points(points.model, points.vectors, [[1.0, 0.0, 0.0]], points.data, strategy="loop", amp=True)
    assert np.isfinite(loop["train_loss"]).all()
