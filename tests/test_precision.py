"""bf16 evaluation agrees with fp32: 1 % relative or 1e-3 absolute in train
loss at every point of a digits plane."""

import numpy as np
import pytest

from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.evaluate import precision_amp
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
