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


def test_curve_and_simplex_fits_train_in_bf16_on_a_batch_norm_network(points, tmp_path):
    """connect, simplex and vi-connect crashed on their first step under --amp with batch norm ("expected scalar
    type BFloat16 but found Float"): the weights at a point were formed by a bf16 matmul inside autocast (and, on
    networks without batch norm, silently rounded to bf16). They are formed in fp32 now."""
    from landscape.curves.fit import fit_curve
    from landscape.curves.spro import grow_simplex

    a, b = (str(ck.path) for ck in points.checkpoints[:2])
    runs = {amp: fit_curve(a, b, tmp_path / f"c{amp}", data=points.data, epochs=1, amp=amp, device="cpu",
                           progress=False) for amp in (False, True)}
    for key in ("train_loss_at", "test_error_at"):  # t = 0, 1/2, 1 after one epoch: bf16 near fp32
        fp32, bf16 = (np.asarray(runs[amp].summary["curve"][key]) for amp in (False, True))
        assert np.all(np.abs(bf16 - fp32) <= np.maximum(0.05 * np.abs(fp32), 1.0 if "error" in key else 0.02)), key
    sx = grow_simplex(a, tmp_path / "sx", vertices=2, epochs=1, eval_samples=2, face_resolution=2, amp=True,
                      data=points.data, device="cpu", progress=False)
    assert np.isfinite(sx.summary["train_loss_mean"]) and sx.summary["volume"] > 0
