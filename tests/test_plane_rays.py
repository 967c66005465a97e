"""Planes through three points and rays from a centre: the geometry by hand,
the engine against closed forms, and the sweeps' resume and torchrun sharding.

Models are convnets of width 4 on 500 of the embedded digits, stored as an
.npz so that the CLI reloads the same subset from the checkpoints, or models
whose loss is known in closed form.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landscape import cli
import landscape.evaluate as engine_module
from landscape import sweep as sweep_module
from landscape.checkpoint import load_checkpoint, load_model, save_checkpoint
from landscape.data import Dataset, load_dataset
from landscape.device import total_memory
from landscape.errors import UserError
from landscape.evaluate import METRICS, evaluate_points
from landscape.geometry import (filter_normalize, line_coefficients, plane_basis, plane_coefficients, plane_grid,
                                project, random_directions, ray_coefficients)
from landscape.inputs import load_points
from landscape.models import create_model
from landscape.plane import evaluate_plane
import landscape.rays as rays_module
from landscape.rays import evaluate_rays, line_valley, side_widths
from landscape.sweep import STORE
from landscape.train import train
from landscape.weights import ParamSpace
from tests.conftest import fail_at_pass

ROOT = Path(__file__).resolve().parents[1]
CUDA_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: only the latter
BIN = Path(sys.executable).parent
LANDSCAPE = BIN / "landscape"
TORCHRUN = BIN / "torchrun"


# ----------------------------------------------------------------- helpers
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-12, err_msg=k)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


PORT_TROUBLE = re.compile(r"EADDRINUSE|address already in use|failed to listen|DistNetworkError|Rendezvous", re.I)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def orthonormal_pair(p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(p, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:, 0], q[:, 1]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """500 of the embedded digits as an .npz (400 train, 100 test): the CLI reloads it from the checkpoints."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    path = tmp_path_factory.mktemp("data") / "digits500.npz"
    np.savez(path, x_train=x[:400], y_train=bunch.target[:400], x_test=x[400:500], y_test=bunch.target[400:500])
    return path


@pytest.fixture(scope="module")
def data(subset):
    return load_dataset("npz", str(subset))


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory, subset, data):
    """Three convnets (width 4) trained on the digits subset from seeds 1, 2, 3."""
    root = tmp_path_factory.mktemp("endpoints")
    paths = []
    for name, seed in (("A", 1), ("B", 2), ("C", 3)):
        train(out=root / name, data=data, dataset="npz", data_path=str(subset), epochs=15, seed=seed,
              progress=False, model="convnet", model_kwargs={"width": 4}, device="cpu")
        paths.append(root / name / "model.pt")
    return paths


def flat_weights(path: Path) -> tuple[nn.Module, torch.Tensor]:
    model = load_model(path)
    return model, ParamSpace.of(model).flatten(load_checkpoint(path).state_dict).double()


class BiasOnly(nn.Module):
    """Logits = b for every sample, whatever the input: NLL(b) = logsumexp(b) - sum_k f_k b_k."""

    def __init__(self, k: int):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b.expand(x.shape[0], -1)  # (B, K)


def labels_with_counts(counts, seed) -> torch.Tensor:
    y = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


# ------------------------------------------------------- 1. plane_basis, project
def test_plane_basis_is_orthonormal_and_points_project_to_hand_coordinates():
    p = 7
    a = torch.randn(p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e1, e2 = orthonormal_pair(p, 1)
    b = a + 3.0 * e1
    c = a + 1.5 * e1 + 2.0 * e2  # coplanar by construction: (1.5, 2) in the (e1, e2) frame
    basis = plane_basis(a, b, c)
    u, v = basis.u, basis.v
    assert u.dtype == v.dtype == basis.origin.dtype == torch.float64
    assert abs(float(u @ u) - 1) < 1e-12 and abs(float(v @ v) - 1) < 1e-12 and abs(float(u @ v)) < 1e-12
    # u along b - a, v towards c: the frame is (e1, e2) itself.
    torch.testing.assert_close(u, e1, rtol=0, atol=1e-12)
    torch.testing.assert_close(v, e2, rtol=0, atol=1e-12)
    xy = project(basis, torch.stack([a, b, c]))
    np.testing.assert_allclose(xy, [[0, 0], [3.0, 0], [1.5, 2.0]], rtol=0, atol=1e-12)
    for (x, y), point in zip(xy, (a, b, c)):
        torch.testing.assert_close(basis.origin + x * u + y * v, point, rtol=0, atol=1e-12)
    # The anchor matrix (origin, u, v) with coefficients (1, x, y) gives the points back.
    coeffs = torch.tensor(np.concatenate([np.ones((3, 1)), xy], axis=1))
    torch.testing.assert_close(coeffs @ basis.anchors(torch.float64), torch.stack([a, b, c]), rtol=0, atol=1e-12)


def test_project_general_points_matches_hand_formula():
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(11, generator=g, dtype=torch.float64) for _ in range(3))
    basis = plane_basis(a, b, c)
    ab, ac = b - a, c - a
    xc = float(ac @ ab) / float(ab.norm())
    yc = float(np.sqrt(float(ac @ ac) - xc ** 2))
    np.testing.assert_allclose(project(basis, torch.stack([a, b, c])),
                               [[0, 0], [float(ab.norm()), 0], [xc, yc]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["collinear", "c_equals_a", "a_equals_b"])
def test_plane_basis_rejects_degenerate_points(case):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    c = {"collinear": a + 2.5 * (b - a), "c_equals_a": a.clone(), "a_equals_b": b}[case]
    if case == "a_equals_b":
        b = a.clone()
    with pytest.raises(UserError, match="collinear|identical"):
        plane_basis(a, b, c)


def test_plane_basis_rejects_collinear_float32_points():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    with pytest.raises(UserError, match="collinear"):
        plane_basis(a, b, (a + b) / 2)  # the midpoint, e.g. an average of the two


# ------------------------------------------------- 2. plane_grid, coefficients
def test_plane_grid_covers_the_points_with_the_margin():
    xy = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.0]])
    x, y = plane_grid(xy, grid=9, margin=0.2)
    assert x.shape == y.shape == (9,)
    # extents 3 and 2: 0.2 of each on both sides
    np.testing.assert_allclose(x[[0, -1]], [-0.6, 3.6], rtol=0, atol=1e-12)
    np.testing.assert_allclose(y[[0, -1]], [-0.4, 2.4], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.diff(x), 4.2 / 8, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.diff(y), 2.8 / 8, rtol=0, atol=1e-12)
    assert (x[0] < xy[:, 0]).all() and (xy[:, 0] < x[-1]).all()
    assert (y[0] < xy[:, 1]).all() and (xy[:, 1] < y[-1]).all()
    x0, y0 = plane_grid(xy, grid=5, margin=0.0)
    assert (x0[0], x0[-1], y0[0], y0[-1]) == (0.0, 3.0, 0.0, 2.0)
    with pytest.raises(UserError, match=r"^--margin must be a finite number >= 0 \(a fraction of the points' extent\), got -1"):
        plane_grid(xy, margin=-1.0)
    with pytest.raises(UserError, match=r"^--margin must be a finite number >= 0 .*, got inf$"):  # axes of nan
        plane_grid(xy, margin=float("inf"))
    with pytest.raises(UserError, match="^--yrange needs finite LO < HI, got 2.0 -1.0$"):
        plane_grid(xy, yrange=(2.0, -1.0))


def test_plane_coefficients_are_row_major_in_x_then_y():
    x, y = np.array([-1.0, 0.0, 2.0, 5.0]), np.array([0.5, 1.5, 4.0])  # different lengths: no transposition hides
    coeffs = plane_coefficients(x, y)
    assert coeffs.shape == (12, 3)
    assert (coeffs[:, 0] == 1).all()
    values = (coeffs[:, 1] + 10 * coeffs[:, 2] ** 2).reshape(len(x), len(y))
    np.testing.assert_array_equal(values, x[:, None] + 10 * y[None, :] ** 2)
    # Round trip through an anchor matrix: points[i, j] = origin + x_i u + y_j v.
    W = np.random.default_rng(0).normal(size=(3, 6))
    points = (coeffs @ W).reshape(len(x), len(y), 6)
    for i in range(len(x)):
        for j in range(len(y)):
            np.testing.assert_allclose(points[i, j], W[0] + x[i] * W[1] + y[j] * W[2], rtol=0, atol=1e-12)


# ------------------------------------------ 3. evaluate_plane vs closed forms
def _hand_plane(a, b, c, grid, margin=0.2):
    """Basis, grid axes and grid points (G, G, P) of the plane through a, b, c, all in float64 numpy."""
    u = (b - a) / np.linalg.norm(b - a)
    w = (c - a) - ((c - a) @ u) * u
    v = w / np.linalg.norm(w)
    xy = np.array([[0.0, 0.0], [np.linalg.norm(b - a), 0.0], [(c - a) @ u, (c - a) @ v]])
    lo, hi = xy.min(0), xy.max(0)
    x = np.linspace(lo[0] - margin * (hi - lo)[0], hi[0] + margin * (hi - lo)[0], grid)
    y = np.linspace(lo[1] - margin * (hi - lo)[1], hi[1] + margin * (hi - lo)[1], grid)
    points = a + x[:, None, None] * u + y[None, :, None] * v
    return xy, x, y, points


class Cubed(BiasOnly):
    """Logits b**3: float32 overflows to +-inf from |b| ~ 7e12, and log-softmax of infinite logits is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.b ** 3).expand(x.shape[0], -1)


def test_a_plane_whose_loss_overflowed_at_some_or_all_points_is_summarised(tmp_path, capsys):
    """Every point's loss NaN (a span far too wide) crashed the summary (np.nanargmin: "All-NaN slice"), and
    --resume again, so the points computed never became a result; some points NaN went uncounted."""
    data = Dataset(name="t", x_train=torch.zeros(10, 1), y_train=labels_with_counts([5, 3, 2], 0),
                   x_test=torch.zeros(8, 1), y_test=labels_with_counts([1, 2, 5], 1), num_classes=3,
                   mean=(0.0,), std=(1.0,))
    a, b, c = (torch.tensor(p, dtype=torch.float32) for p in ([0.1, 0.2, 0.3], [1e13, 0, 0], [0, 1e13, 0]))
    some = evaluate_plane(Cubed(3), [a, b, c], data, grid=5, wd=0.0, out=tmp_path / "some")
    lost = ~np.isfinite(some.arrays["train_loss"]) | ~np.isfinite(some.arrays["test_nll"])
    assert 0 < lost.sum() < 25 and some.summary["non_finite_points"] == int(lost.sum())
    finite = np.where(np.isnan(some.arrays["train_loss"]), np.inf, some.arrays["train_loss"])
    assert some.summary["grid_min"]["train_loss"]["value"] == pytest.approx(float(finite.min()))
    far = [torch.tensor(p, dtype=torch.float32) for p in ([1e13, 2e13, 1e13], [3e13, 1e13, 2e13], [2e13, 3e13, 1e13])]
    every = evaluate_plane(Cubed(3), far, data, grid=3, wd=0.0, out=tmp_path / "all")
    assert np.isnan(every.arrays["train_loss"]).all()
    assert every.summary["grid_min"]["train_loss"] is None is every.summary["grid_max"]["train_loss"]
    assert every.summary["grid_max"]["test_error"] == 100.0  # an overflowed prediction counts as an error
    assert every.summary["non_finite_points"] == 9
    again = evaluate_plane(Cubed(3), far, data, grid=3, wd=0.0, out=tmp_path / "all", resume=True)
    assert again.summary["non_finite_points"] == 9


def test_the_plane_command_says_how_many_points_overflowed(tmp_path, capsys, subset, data):
    """The printed line read "train loss from 0.27 to 0.27" for a grid of 48 NaN points in 49, and with every
    point NaN the command crashed; a span of 1e20 printed its range as 20-digit fixed-point numbers."""
    train(out=tmp_path / "m", data=data, dataset="npz", data_path=str(subset), epochs=1, progress=False,
          model="mlp", device="cpu")
    common = ["plane", "--center", tmp_path / "m" / "model.pt", "--normalize", "gaussian", "--quiet"]
    code, out, err = run_cli(capsys, *common, "--grid", 3, "--xrange", 1e20, 2e20, "--yrange", 1e20, 2e20,
                             "--out", tmp_path / "all")
    assert code == 0, err
    assert "plane 3x3: x in [1e+20, 2e+20], y in [1e+20, 2e+20]" in out
    assert "grid: the train loss is not a number at any point (9 of 9 points not finite: the logits overflowed)" in out
    code, out, err = run_cli(capsys, *common, "--grid", 3, "--span", 1e20, "--out", tmp_path / "some")
    assert code == 0, err
    summary = json.loads((tmp_path / "some" / "summary.json").read_text())
    assert summary["non_finite_points"] == 8  # all but the centre, where the loss is the network's own
    line = next(x for x in out.splitlines() if x.startswith("grid: "))
    assert line.startswith("grid: train loss from ") and line.endswith(" (8 of 9 points not finite: the logits "
                                                                       "overflowed)")


def test_plane_of_a_bias_only_model_matches_closed_form_nll_and_weight_decay():
    train_counts, test_counts = [5, 3, 2], [1, 2, 5]
    f_train = np.array(train_counts) / sum(train_counts)
    f_test = np.array(test_counts) / sum(test_counts)
    data = Dataset(name="t", x_train=torch.zeros(10, 1), y_train=labels_with_counts(train_counts, 0),
                   x_test=torch.zeros(8, 1), y_test=labels_with_counts(test_counts, 1), num_classes=3,
                   mean=(0.0,), std=(1.0,))
    a, b, c = np.array([0.5, -1.0, 0.3]), np.array([2.0, 0.5, -1.0]), np.array([-1.0, 1.5, 0.5])
    wd, grid = 0.1, 5
    result = evaluate_plane(BiasOnly(3), [torch.tensor(p, dtype=torch.float32) for p in (a, b, c)], data,
                            grid=grid, wd=wd)
    arrays = result.arrays
    xy, x, y, points = _hand_plane(a, b, c, grid)
    np.testing.assert_allclose(arrays["anchor_xy"], xy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays["x"], x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays["y"], y, rtol=0, atol=1e-6)

    def nll(p, f):  # p (..., K): logsumexp(p) - f . p
        m = p.max(-1, keepdims=True)
        return (m[..., 0] + np.log(np.exp(p - m).sum(-1))) - p @ f

    for key in METRICS:
        assert arrays[key].shape == (grid, grid)
    np.testing.assert_allclose(arrays["train_nll"], nll(points, f_train), rtol=0, atol=1e-5)
    np.testing.assert_allclose(arrays["test_nll"], nll(points, f_test), rtol=0, atol=1e-5)
    penalty = 0.5 * wd * (points ** 2).sum(-1)
    np.testing.assert_allclose(arrays["train_loss"] - arrays["train_nll"], penalty, rtol=1e-6)
    # The exact anchors in the summary: their NLL by the same closed form.
    for entry, p in zip(result.summary["anchors"], (a, b, c)):
        assert entry["train_nll"] == pytest.approx(nll(p, f_train), abs=1e-5)
        assert entry["test_nll"] == pytest.approx(nll(p, f_test), abs=1e-5)
        assert entry["train_loss"] - entry["train_nll"] == pytest.approx(0.5 * wd * p @ p, rel=1e-6)


def test_a_path_that_leaves_the_plane_is_measured_noted_and_labelled_projected(capsys):
    """A polychain of two bends through the plane of its ends and one bend: the other bend is off the plane,
    and its segment was drawn over values that are not the path's own, without a word."""
    from landscape.plots.plane import plot_plane_result
    from landscape.plots.style import new_figure

    data = Dataset(name="t", x_train=torch.zeros(10, 1), y_train=labels_with_counts([5, 3, 2], 0),
                   x_test=torch.zeros(8, 1), y_test=labels_with_counts([1, 2, 5], 1), num_classes=3,
                   mean=(0.0,), std=(1.0,))
    a, b, c = np.array([0.5, -1.0, 0.3]), np.array([2.0, 0.5, -1.0]), np.array([-1.0, 1.5, 0.5])
    normal = np.cross(b - a, c - a)
    normal /= np.linalg.norm(normal)
    off = 0.4 * a + 0.3 * b + 0.3 * c + 0.7 * normal  # 0.7 from the plane
    for path, expected in (([a, off, c, b], 0.7), ([a, 0.5 * (a + c), c, b], 0.0)):
        result = evaluate_plane(BiasOnly(3), [torch.tensor(p, dtype=torch.float32) for p in (a, b, c)], data,
                                grid=3, path=torch.tensor(np.stack(path), dtype=torch.float32), path_label="curve")
        assert result.summary["path_distance_from_plane_max"] == pytest.approx(expected, abs=1e-6)
        err = capsys.readouterr().err
        assert ("note: the curve leaves this plane by up to 0.7" in err) == (expected > 0), err
        fig, ax = new_figure(1, 1)
        plot_plane_result(ax, result.arrays, result.summary, "train_loss", "train loss", 5.0, -5.0)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == (["curve\n(projected: up to 0.7 off the plane)"] if expected else ["curve"])
    # a marked network off the plane likewise: drawn at its projection, in contours that are not its loss
    result = evaluate_plane(BiasOnly(3), [torch.tensor(p, dtype=torch.float32) for p in (a, b, c)], data, grid=3,
                            marks=[torch.tensor(off, dtype=torch.float32),
                                   torch.tensor(0.5 * (a + c), dtype=torch.float32)], mark_labels=["s", "s"])
    fig, ax = new_figure(1, 1)
    plot_plane_result(ax, result.arrays, result.summary, "train_loss", "train loss", 5.0, -5.0)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("s\n(0.7 off the plane)") == 1 and texts.count("s") == 1, texts  # by position: labels repeat


def four_features(g: torch.Generator) -> Dataset:
    """40 training and 20 test samples of 4 Gaussian features, 3 classes: data for a linear model."""
    return Dataset(name="t", x_train=torch.randn(40, 4, generator=g), y_train=torch.randint(0, 3, (40,), generator=g),
                   x_test=torch.randn(20, 4, generator=g), y_test=torch.randint(0, 3, (20,), generator=g),
                   num_classes=3, mean=(0.0,), std=(1.0,))


def test_plane_weight_decay_term_is_the_hand_quadratic_for_a_linear_model():
    g = torch.Generator().manual_seed(5)
    data = four_features(g)
    model = nn.Linear(4, 3)
    P = ParamSpace.of(model).numel
    a, b, c = (torch.randn(P, generator=g, dtype=torch.float64) for _ in range(3))
    wd, grid = 0.3, 4
    arrays = evaluate_plane(model, [a, b, c], data, grid=grid, wd=wd).arrays
    _, _, _, points = _hand_plane(a.numpy(), b.numpy(), c.numpy(), grid)
    np.testing.assert_allclose(arrays["train_loss"] - arrays["train_nll"], 0.5 * wd * (points ** 2).sum(-1), rtol=1e-6)


@pytest.mark.parametrize("edit", ["done_never_evaluated", "nan_error", "negative_nll", "error_over_100"])
def test_a_partial_store_edited_into_an_impossible_one_is_refused(tmp_path, monkeypatch, edit):
    """A store still readable but marked done at points never evaluated (their
    NaN), or holding values no evaluation gives, used to be resumed into a
    result holding NaN with no word; it is now refused in one line and left
    on disk. The untouched store still resumes to the uninterrupted result."""
    g = torch.Generator().manual_seed(7)
    data = four_features(g)
    model = nn.Linear(4, 3)
    a, b, c = (torch.randn(ParamSpace.of(model).numel, generator=g) for _ in range(3))
    kw = dict(grid=3, points_per_pass=2)
    fail_at_pass(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        evaluate_plane(model, [a, b, c], data, tmp_path / "p", **kw)
    monkeypatch.undo()
    store = tmp_path / "p" / STORE
    with np.load(store) as z:
        arrays = {k: z[k] for k in z.files}
    original = {k: v.copy() for k, v in arrays.items()}
    kept = arrays["done"].copy()
    first_done, first_todo = int(np.flatnonzero(kept)[0]), int(np.flatnonzero(~kept)[0])
    if edit == "done_never_evaluated":
        arrays["done"][first_todo] = True
    else:
        column, value = {"nan_error": ("test_error", np.nan), "negative_nll": ("train_nll", -0.5),
                         "error_over_100": ("train_error", 250.0)}[edit]
        arrays[column][first_done] = value
    np.savez(store, **arrays)
    bad = first_todo if edit == "done_never_evaluated" else first_done
    with pytest.raises(UserError, match=rf"damaged partial results \(point {bad} is marked done but holds no result"):
        evaluate_plane(model, [a, b, c], data, tmp_path / "p", resume=True, **kw)
    assert store.exists()
    np.savez(store, **original)  # the store as the sweep wrote it: resumed to the uninterrupted result
    got = evaluate_plane(model, [a, b, c], data, tmp_path / "p", resume=True, **kw).arrays
    whole = evaluate_plane(model, [a, b, c], data, **kw).arrays
    for m in METRICS:
        np.testing.assert_allclose(got[m], whole[m], rtol=1e-6, atol=1e-9, err_msg=m)


def test_a_store_slow_to_write_is_written_less_often_and_a_stop_keeps_every_finished_point(tmp_path, monkeypatch):
    """The partial store was rewritten whole after every pass: a curve's probabilities over 1000 classes made
    each write a second and the writes grew with the square of the points. A pass writes it unless the last
    write took more than a tenth of the time since; a stop between writes writes what is unsaved."""
    from landscape import sweep as sweep_module

    g = torch.Generator().manual_seed(7)
    data = four_features(g)
    model = nn.Linear(4, 3)
    a, b, c = (torch.randn(ParamSpace.of(model).numel, generator=g) for _ in range(3))
    clock = [0.0]
    monkeypatch.setattr(sweep_module.time, "monotonic", lambda: clock[0])
    real_write, writes = sweep_module._write_store, []

    def slow_write(path, key, done, values):  # a write "takes" 5 s; passes take no time on this clock
        writes.append(int(done.sum()))
        clock[0] += 5.0
        real_write(path, key, done, values)

    monkeypatch.setattr(sweep_module, "_write_store", slow_write)
    fail_at_pass(monkeypatch, 4, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        evaluate_plane(model, [a, b, c], data, tmp_path / "p", grid=3, points_per_pass=2)
    assert writes == [2, 6]  # after the first pass; not after the next two (0 s since a 5 s write); then the stop's
    with np.load(tmp_path / "p" / STORE) as z:
        assert int(z["done"].sum()) == 6  # every finished point kept
    writes.clear()  # a sweep that ends writes what is unsaved (its caller's own work may yet be stopped)
    from landscape import plane as plane_module

    monkeypatch.setattr(plane_module, "finish_result", lambda *a, **k: None)  # keep the store to look at
    evaluate_plane(model, [a, b, c], data, tmp_path / "q", grid=3, points_per_pass=2)
    with np.load(tmp_path / "q" / STORE) as z:
        total = int(z["done"].size)
        assert bool(z["done"].all())
    assert writes == [2, total]
    monkeypatch.undo()
    got = evaluate_plane(model, [a, b, c], data, tmp_path / "p", grid=3, points_per_pass=2, resume=True).arrays
    whole = evaluate_plane(model, [a, b, c], data, grid=3, points_per_pass=2).arrays
    for m in METRICS:
        np.testing.assert_array_equal(got[m], whole[m], err_msg=m)


def test_a_plane_resumes_when_its_basis_comes_out_a_few_bits_apart(tmp_path, monkeypatch):
    """A plane's basis and grid are computed from its three points, and their last bits change with the number
    of threads (torchrun runs one per process) or the device: a sweep begun in one process and resumed under
    torchrun was refused as "a different sweep". Its key is now that of the points and settings asked for;
    other points are still refused, and a store keyed as earlier builds keyed it still resumes."""
    from landscape import plane as plane_module

    g = torch.Generator().manual_seed(7)
    data = four_features(g)
    model = nn.Linear(4, 3)
    P = ParamSpace.of(model).numel
    a, b, c = (torch.randn(P, generator=g) for _ in range(3))
    kw = dict(grid=3, points_per_pass=2, wd=0.01)
    real = sweep_module.evaluate_points

    def started(folder):
        fail_at_pass(monkeypatch, 3, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            evaluate_plane(model, [a, b, c], data, folder, **kw)
        monkeypatch.setattr(sweep_module, "evaluate_points", real)
        with np.load(folder / STORE) as z:
            assert int(z["done"].sum()) == 4
        return folder

    whole = evaluate_plane(model, [a, b, c], data, **kw).arrays
    first = started(tmp_path / "p")
    real_basis = plane_module.plane_basis

    def a_few_bits_apart(*vectors):
        basis = real_basis(*vectors)
        return dataclasses.replace(basis, u=basis.u * (1 + 2.0 ** -20))  # some float32 bits change

    monkeypatch.setattr(plane_module, "plane_basis", a_few_bits_apart)
    got = evaluate_plane(model, [a, b, c], data, first, resume=True, **kw).arrays
    for m in METRICS:
        np.testing.assert_allclose(got[m], whole[m], rtol=1e-5, atol=1e-7, err_msg=m)
    monkeypatch.setattr(plane_module, "plane_basis", real_basis)
    # other points: refused, the store kept
    other = started(tmp_path / "q")
    with pytest.raises(UserError, match="partial results of a different sweep"):
        evaluate_plane(model, [a, b, c * 1.5], data, other, resume=True, **kw)
    assert (other / STORE).exists()
    # a store keyed by the anchors and coefficients themselves, as before: resumed
    monkeypatch.setattr(plane_module, "run_sweep", lambda *args, identity=None, real=plane_module.run_sweep, **kwargs:
                        real(*args, **kwargs))  # the sweep keyed without the inputs' identity
    old = started(tmp_path / "r")
    monkeypatch.undo()
    got = evaluate_plane(model, [a, b, c], data, old, resume=True, **kw).arrays
    for m in METRICS:
        np.testing.assert_array_equal(got[m], whole[m])


def test_a_mark_off_the_plane_is_drawn_at_its_projection_and_evaluated_as_itself():
    """plane --mark D printed D's projection's values under D's name; now D's own, and its distance."""
    g = torch.Generator().manual_seed(6)
    data = Dataset(name="t", x_train=torch.randn(40, 4, generator=g), y_train=torch.randint(0, 3, (40,), generator=g),
                   x_test=torch.randn(20, 4, generator=g), y_test=torch.randint(0, 3, (20,), generator=g),
                   num_classes=3, mean=(0.0,), std=(1.0,))
    model = nn.Linear(4, 3)
    P = ParamSpace.of(model).numel
    a, b, c, m = (torch.randn(P, generator=g, dtype=torch.float64) for _ in range(4))
    result = evaluate_plane(model, [a, b, c], data, grid=3, wd=0.1, marks=[m], mark_labels=["D"])
    mark = result.summary["marks"][0]
    own = evaluate_points(model, [m], [[1.0]], data, wd=0.1)
    for key in METRICS:
        assert mark[key] == pytest.approx(float(own[key][0]), rel=1e-6), key
    u = (b - a) / (b - a).norm()  # Gram-Schmidt by hand
    v = (c - a) - ((c - a) @ u) * u
    v = v / v.norm()
    d = m - a
    assert (mark["x"], mark["y"]) == (pytest.approx(float(d @ u)), pytest.approx(float(d @ v)))
    assert mark["distance_from_plane"] == pytest.approx(float((d - (d @ u) * u - (d @ v) * v).norm()), rel=1e-6)
    np.testing.assert_allclose(result.arrays["mark_xy"], [[mark["x"], mark["y"]]])


# -------------------------------------------------------- 4. filter_normalize
def test_filter_normalize_gives_each_filter_the_centres_norm_and_zeroes_1d_parameters():
    model = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    with torch.no_grad():  # non-trivial batch-norm weights and biases too
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    space = ParamSpace.of(model)
    center = space.flatten(model)
    directions = random_directions(space.numel, 3, seed=7)
    before = directions.clone()
    out = filter_normalize(directions, center, space)
    assert torch.equal(directions, before), "the input directions were modified"
    assert out.shape == directions.shape
    offset, n_filters, n_vectors = 0, 0, 0
    for name, p in model.named_parameters():  # walk the flat layout independently of ParamSpace
        size = p.numel()
        piece = out[:, offset:offset + size].reshape(out.shape[0], *p.shape)
        if p.dim() < 2:
            assert (piece == 0).all(), name
            n_vectors += 1
        else:
            want = p.detach().reshape(p.shape[0], -1).norm(dim=1)  # (filters,)
            got = piece.reshape(out.shape[0], p.shape[0], -1).norm(dim=2)  # (n, filters)
            torch.testing.assert_close(got, want.expand_as(got), rtol=1e-5, atol=1e-6)
            # same direction within each filter, only rescaled
            src = before[:, offset:offset + size].reshape(out.shape[0], p.shape[0], -1)
            cos = torch.nn.functional.cosine_similarity(src, piece.reshape_as(src), dim=2)
            torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)
            n_filters += 1
        offset += size
    assert offset == space.numel and n_filters == 4 and n_vectors == 7


# ------------------------------------------------------- 5. random_directions
def test_random_directions_are_unit_reproducible_and_seeded():
    d = random_directions(1000, 4, seed=3)
    assert d.shape == (4, 1000)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(4), rtol=0, atol=1e-6)
    torch.manual_seed(123)  # the global RNG state must not matter
    assert torch.equal(random_directions(1000, 4, seed=3), d)
    other = random_directions(1000, 4, seed=4)
    assert not torch.allclose(other, d)
    # distinct rows, nearly orthogonal in 1000 dimensions
    gram = d @ d.T
    assert (gram - torch.eye(4)).abs().max() < 0.2


# ------------------------------------------------------------- 6. side_widths
S13 = np.linspace(-3, 3, 13)  # step 0.5


def test_side_widths_of_a_parabola():
    v = S13 ** 2
    assert side_widths(S13, v, 1.0) == (1.0, 1.0)  # s = +-1 are grid points where v = 1
    # rise 2: v crosses 2 between s = 1 (v 1) and 1.5 (v 2.25): 1 + 0.5 (2 - 1) / (2.25 - 1) = 1.4
    neg, pos = side_widths(S13, v, 2.0)
    assert neg == pytest.approx(1.4, abs=1e-12) and pos == pytest.approx(1.4, abs=1e-12)
    # the reference is the value at 0, not the minimum: an offset changes nothing
    assert side_widths(S13, v + 7.0, 2.0) == pytest.approx((1.4, 1.4), abs=1e-12)


def test_side_widths_of_an_asymmetric_valley():
    v = np.where(S13 < 0, S13 ** 2, 4 * S13 ** 2)
    assert side_widths(S13, v, 1.0) == pytest.approx((1.0, 0.5), abs=1e-12)
    # rise 2 on the steep side: between s = 0.5 (v 1) and 1 (v 4): 0.5 + 0.5 (2 - 1) / (4 - 1)
    assert side_widths(S13, v, 2.0) == pytest.approx((1.4, 0.5 + 0.5 / 3), abs=1e-12)


def test_the_line_reaches_as_far_as_filter_normalised_rays(endpoints, data):
    """With filter-normalised directions --distance counts multiples of directions as long as the weights'
    filters (about 15 for the digits convnet), but the line was extended by --distance in weight units: a
    fifteenth of the rays' reach, its valley cut off and its slope misread. It reaches as far as the rays."""
    model, a = flat_weights(endpoints[0])
    _, b = flat_weights(endpoints[1])
    space = ParamSpace.of(model)
    r = evaluate_rays(model, [a.float(), b.float()], data, normalize="filter", line=True, directions=2, steps=2,
                      distance=0.5, seed=3)
    gauss = random_directions(space.numel, 2, 3, space.trainable_mask())
    norms = torch.cat([filter_normalize(gauss, c.float(), space).norm(dim=1) for c in (a, b)])
    reach = 0.5 * float(norms.mean())
    assert reach > 2  # many times --distance: the case that was cut short
    d = r.arrays["line_distance"]
    length = float((b - a).norm())
    assert d[0] == pytest.approx(-reach, rel=1e-6) and d[-1] == pytest.approx(length + reach, rel=1e-6)
    assert r.summary["line"]["extension"] == pytest.approx(reach, rel=1e-6)
    assert r.summary["request_settings"]["line_reach"] == "rays"  # an earlier build's shorter line is another result
    gaussian = evaluate_rays(model, [a.float(), b.float()], data, line=True, directions=1, steps=2, distance=0.5)
    assert gaussian.arrays["line_distance"][0] == -0.5 and gaussian.summary["line"]["extension"] == 0.5
    # centres given as weights name no file: no path (not an empty one, which reads as a path)
    assert [c["path"] for c in gaussian.summary["centers"]] == [None, None]


def test_a_loss_that_overflowed_to_nan_bounds_the_width():
    """log-softmax of overflowing logits gives NaN (inf - inf): the scan walked past NaN points (NaN >= target is
    False) and reported the valley as wider than the whole ray (inf, "> 1e+20"). An overflow counts as reached at
    the last finite point before it, as inf already did."""
    v = S13 ** 2
    for bad in (np.nan, np.inf):
        w = np.where(np.abs(S13) >= 1.0, bad, v)  # finite within |s| < 1 (v < 1), overflowed from |s| = 1 on
        assert side_widths(S13, w, 2.0) == (0.5, 0.5)  # the last finite points, s = -0.5 and 0.5
        assert side_widths(S13, w, 0.1) == pytest.approx((0.5 * 0.1 / 0.25, 0.5 * 0.1 / 0.25), abs=1e-12)
    assert all(np.isnan(side_widths(S13, np.where(S13 == 0, np.nan, v), 1.0)))  # no centre value: no width
    s = np.linspace(-4, 4, 9)
    got = line_valley(s, np.where(np.abs(s) > 2, np.nan, s ** 2), 10.0, [0.0], ["a"])
    assert (got["from"], got["to"]) == (-2.0, 2.0)  # bounded by the overflow, not open


def test_a_lines_valley_and_where_points_sit_in_it():
    s = np.linspace(-4, 4, 8001)
    v = np.where(s < 0, 0.1 * s ** 2, s ** 2) + 0.5  # flat on the left, steep on the right, minimum 0.5 at 0
    got = line_valley(s, v, 0.4, [0.0, -1.0], ["a", "b"])
    lo, hi = -2.0, 0.4 ** 0.5  # 0.1 s^2 = 0.4 and s^2 = 0.4
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    assert (got["from"], got["to"]) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    assert got["minimum_at"] == 0.0 and got["minimum_train_loss"] == 0.5
    a, b = got["points"]
    assert a["relative_offset"] == pytest.approx((0 - mid) / half, abs=1e-5) and a["relative_offset"] > 0.5
    assert b["offset_from_middle"] == pytest.approx(-1 - mid, abs=1e-6)
    assert (a["beyond_at"], a["loss_beyond"]) == (4.0, pytest.approx(16.5))  # a sits right of the middle
    assert (b["beyond_at"], b["loss_beyond"]) == (-4.0, pytest.approx(2.1))
    assert got["largest_gap"] == pytest.approx(0.001) and got["samples"] == int(((s >= lo) & (s <= hi)).sum())
    open_left = line_valley(s, v, 3.0, [0.0], ["a"])  # 0.1 s^2 never reaches 3 within 4: that end is open
    assert open_left["from"] is None and open_left["to"] == pytest.approx(3 ** 0.5, abs=1e-6)
    assert open_left["points"][0]["relative_offset"] is None
    overflowed = v.copy()
    overflowed[:10] = np.nan  # the far end overflowed: it is no minimum
    assert line_valley(s, overflowed, 0.4, [0.0], ["a"])["minimum_at"] == 0.0
    assert line_valley(s, np.full_like(v, np.nan), 0.4, [0.0], ["a"]) is None
    walls = np.full(5, np.inf)
    walls[2] = 1.0  # a valley narrower than one step: both neighbours rise past the rise
    narrow = line_valley(np.arange(5.0) - 2, walls, 0.5, [0.0], ["a"])
    assert narrow["from"] == narrow["to"] == 0.0 and narrow["points"][0]["relative_offset"] is None


def test_a_valley_the_line_samples_coarsely_says_so(capsys):
    """width's valley came out -0.50 to 1.19 at --steps 5 and -1.28 to 1.97 at 60, its offsets moving too, with no
    word: its edges are interpolated between samples 2.1 apart. The summary keeps the largest gap across the
    valley, and the printout notes a gap over a tenth of its width."""
    for n, noted in ((9, True), (801, False)):
        s = np.linspace(-4, 4, n)  # samples 1.0 apart, then 0.01
        got = line_valley(s, s ** 2 + 0.5, 2.0, [0.0, 1.0], ["SWA", "SGD"])
        gap = float(np.diff(s).max())
        assert got["largest_gap"] == pytest.approx(gap)
        cli._print_valley(got)
        out = capsys.readouterr().out
        assert ("note: the line's samples are up to 1 apart across the valley, " in out) == noted, out


def test_side_widths_never_rising_is_infinite_and_the_first_crossing_counts():
    v = np.where(S13 < 0, S13 ** 2, 0.0)
    neg, pos = side_widths(S13, v, 1.0)
    assert neg == 1.0 and pos == float("inf")
    assert side_widths(S13, np.zeros(13), 0.1) == (float("inf"), float("inf"))
    s = np.linspace(-2, 2, 9)
    bumpy = np.array([9, 9, 9, 9, 0.0, 0.5, 1.5, 0.2, 5.0])  # rises past 1, falls back, rises again
    # first crossing between s = 0.5 (0.5) and 1 (1.5): 0.5 + 0.5 * 0.5; the negative side crosses at its first step
    assert side_widths(s, bumpy, 1.0) == pytest.approx((0.5 * (1 / 9), 0.75), abs=1e-12)


# ------------------------------------------------------------- 7. evaluate_rays
def _widths_by_hand(s: np.ndarray, v: np.ndarray, rise: float) -> tuple[float, float]:
    zero = int(np.flatnonzero(s == 0)[0])
    target = v[zero] + rise
    out = []
    for idx in (np.arange(zero, -1, -1), np.arange(zero, len(s))):
        over = np.flatnonzero(v[idx] >= target)
        if not len(over):
            out.append(np.inf)
            continue
        j = over[0]
        d, val = np.abs(s[idx[[j - 1, j]]]), v[idx[[j - 1, j]]]
        out.append(float(np.interp(target, val, d)))
    return out[0], out[1]


@pytest.mark.slow
def test_rays_cli_arrays_widths_summary_and_line(tmp_path, capsys, endpoints):
    A, B, _ = endpoints
    _, wa = flat_weights(A)
    _, wb = flat_weights(B)
    length = float((wb.float() - wa.float()).double().norm())
    steps, dirs, rise = 4, 3, 0.1
    # distance L/2 puts 0 and L on the line's grid (indices S and 3S of 4S + 1)
    out = tmp_path / "rays"
    code, stdout, _ = run_cli(capsys, "rays", "--center", A, "--compare", B, "--directions", dirs,
                              "--distance", repr(length / 2), "--steps", steps, "--rise", rise, "--line",
                              "--out", out, "--quiet")
    assert code == 0
    arrays = load_npz(out / "rays.npz")
    summary = json.loads((out / "summary.json").read_text())
    S = 2 * steps + 1
    np.testing.assert_allclose(arrays["distance"], np.linspace(-length / 2, length / 2, S), rtol=1e-12)
    assert arrays["distance"][steps] == 0.0
    for key in METRICS:
        assert arrays[key].shape == (2, dirs, S), key
    assert arrays["width_neg"].shape == arrays["width_pos"].shape == (2, dirs)
    # the centre's value at distance 0 of every ray
    for k in range(2):
        np.testing.assert_allclose(arrays["train_loss"][k, :, steps], arrays["center_train_loss"][k], rtol=1e-7)
        assert summary["centers"][k]["center_train_loss"] == pytest.approx(arrays["center_train_loss"][k], rel=1e-12)
    # widths: what side_widths and an independent interpolation give from the stored profiles
    assert np.isfinite(arrays["width_neg"]).all() and np.isfinite(arrays["width_pos"]).all(), \
        "choose a larger distance: some rays never rise by `rise`"
    for k in range(2):
        for i in range(dirs):
            profile = arrays["train_loss"][k, i]
            want = side_widths(arrays["distance"], profile, rise)
            assert (arrays["width_neg"][k, i], arrays["width_pos"][k, i]) == pytest.approx(want, rel=1e-12)
            assert want == pytest.approx(_widths_by_hand(arrays["distance"], profile, rise), rel=1e-9)
        neg, pos = arrays["width_neg"][k], arrays["width_pos"][k]
        c = summary["centers"][k]
        assert c["median_width"] == pytest.approx(float(np.median(np.concatenate([neg, pos]))), rel=1e-12)
        assert c["median_full_width"] == pytest.approx(float(np.median(neg + pos)), rel=1e-12)
        assert c["widths_beyond_distance"] == 0
        # with weight decay the widths of the train NLL alone too (the wd/2 ||w||^2 term caps the train loss's)
        assert summary["wd"] > 0
        nll = [side_widths(arrays["distance"], arrays["train_nll"][k, i], rise) for i in range(dirs)]
        np.testing.assert_array_equal(np.stack([arrays["nll_width_neg"][k], arrays["nll_width_pos"][k]], 1), nll)
        assert c["median_nll_width"] == rays_module._finite_median(np.concatenate(
            [arrays["nll_width_neg"][k], arrays["nll_width_pos"][k]]))
    assert "NLL width" in stdout and "without the weight-decay term" in stdout
    # the line through the centres: its values at 0 and L are the centres'
    line = arrays["line_distance"]
    assert line.shape == (4 * steps + 1,)
    for key in METRICS:
        assert arrays[f"line_{key}"].shape == line.shape, key
    np.testing.assert_allclose(arrays["line_marks"], [0.0, length], rtol=1e-6)
    i0, i1 = int(np.argmin(np.abs(line))), int(np.argmin(np.abs(line - length)))
    assert (i0, i1) == (steps, 3 * steps) and abs(line[i0]) < 1e-9 and abs(line[i1] - length) < 1e-9
    np.testing.assert_allclose(arrays["line_train_loss"][[i0, i1]], arrays["center_train_loss"], rtol=1e-6)
    assert summary["line"]["length"] == pytest.approx(length, rel=1e-6)
    # the line's figures: between the centres (indices S..3S), and over the whole extended line
    tl = arrays["line_train_loss"]
    assert summary["line"]["between_train_loss_max"] == pytest.approx(tl[steps:3 * steps + 1].max(), rel=1e-12)
    assert summary["line"]["train_loss_barrier"] == pytest.approx(
        tl[steps:3 * steps + 1].max() - (tl[steps] + tl[3 * steps]) / 2, rel=1e-12)
    assert summary["line"]["train_loss_max"] == pytest.approx(tl.max(), rel=1e-12)
    assert f"between them: max train loss {summary['line']['between_train_loss_max']:.4f}" in stdout
    valley = summary["line"]["valley"]
    assert valley == line_valley(line, tl, summary["rise"], [0.0, summary["line"]["length"]],
                                 [c["label"] for c in summary["centers"]])
    assert valley["minimum_train_loss"] == tl.min() and "valley along the line from " in stdout


def test_rays_refuse_a_rise_that_is_not_positive(tmp_path, endpoints):
    A, _, _ = endpoints
    pts = load_points([A], device="cpu")
    for rise in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match=f"^--rise must be a positive train-loss increase, got {rise}$"):
            evaluate_rays(pts.model, pts.vectors, pts.data, tmp_path / "r", directions=1, steps=2, rise=rise)
    for distance in (0.0, float("nan"), float("inf"), 1e300):  # 1e300: its grid's step overflows
        with pytest.raises(UserError, match=re.escape(f"--distance must be a positive number below 1e30, got {distance}")):
            evaluate_rays(pts.model, pts.vectors, pts.data, tmp_path / "r", directions=1, steps=2, distance=distance)
    # from Python, counts and numbers of the wrong type: one line, not a TypeError
    for options, message in ((dict(steps=2.5), "--steps must be a whole number, got 2.5"),
                             (dict(directions=1.5), "--directions must be a whole number, got 1.5"),
                             (dict(rise="0.1"), "--rise must be a number, got '0.1'"),
                             (dict(distance="1"), "--distance must be a number, got '1'")):
        with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
            evaluate_rays(pts.model, pts.vectors, pts.data, tmp_path / "r", **{"directions": 1, "steps": 2, **options})
    assert not (tmp_path / "r").exists()


def test_rays_line_samples_both_centres_for_any_distance(endpoints):
    A, B, _ = endpoints
    pts = load_points([A, B], device="cpu")
    result = evaluate_rays(pts.model, pts.vectors, pts.data, directions=1, steps=2, distance=1.0, line=True)
    line, length = result.arrays["line_distance"], float(result.arrays["line_marks"][1])
    i0, i1 = int(np.argmin(np.abs(line))), int(np.argmin(np.abs(line - length)))
    assert abs(line[i0]) < 1e-9 * length and abs(line[i1] - length) < 1e-9 * length
    np.testing.assert_allclose(result.arrays["line_train_loss"][[i0, i1]], result.arrays["center_train_loss"],
                               rtol=1e-6)


@pytest.mark.parametrize("normalize", ["gaussian", "filter"])
def test_rays_use_the_same_draws_for_every_centre(endpoints, normalize):
    A, B, _ = endpoints
    pts = load_points([A, B], device="cpu")
    kw = dict(directions=2, steps=2, distance=2.0, normalize=normalize, seed=5)
    both = evaluate_rays(pts.model, pts.vectors, pts.data, **kw).arrays
    alone = evaluate_rays(pts.model, pts.vectors[1:], pts.data, **kw).arrays  # B as the only (first) centre
    for key in METRICS:
        np.testing.assert_allclose(both[key][1], alone[key][0], rtol=1e-7, atol=1e-12, err_msg=key)
    # one ray point by hand: B + s d_i with d_i the seed's i-th unit Gaussian draw (filter-normalised to B)
    space = ParamSpace.of(pts.model)
    d = random_directions(space.numel, 2, seed=5)
    if normalize == "filter":
        d = filter_normalize(d, pts.vectors[1], space)
    point = pts.vectors[1] + 2.0 * d[1]
    want = evaluate_points(pts.model, point[None], [[1.0]], pts.data)
    for key in METRICS:
        assert both[key][1, 1, -1] == pytest.approx(want[key][0], rel=1e-5, abs=1e-9), key


def test_ray_and_line_coefficients_by_hand():
    s = np.array([-1.0, 0.0, 2.0])
    c = ray_coefficients(5, 1, [3, 4], s)
    want = np.zeros((6, 5))
    want[:, 1] = 1.0
    want[0:3, 3], want[3:6, 4] = s, s
    np.testing.assert_array_equal(c, want)
    line = line_coefficients(4, 0, 1, 2.0, np.array([-1.0, 0.0, 2.0, 3.0]))
    np.testing.assert_allclose(line, [[1.5, -0.5, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [-0.5, 1.5, 0, 0]], atol=1e-15)


# ---------------------------------------------------- 8. resume after SIGKILL
@pytest.mark.slow
def test_plane_sweep_resumes_after_sigkill_and_matches_an_uninterrupted_run(tmp_path, capsys, endpoints, monkeypatch):
    A, B, C = endpoints
    # small batches: more passes per point, so the sweep lasts long enough to be caught mid-way
    args = ["plane", "--points", A, B, C, "--grid", 7, "--points-per-pass", 2, "--batch-size", 20, "--quiet",
            "--bn-stats", "batches"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(LANDSCAPE), *map(str, args), "--out", str(killed)], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = killed / STORE
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    with np.load(store) as z:
                        n_done = int(z["done"].sum())
                except Exception:  # noqa: BLE001 - a store replaced while we open it: look again
                    n_done = 0
                if 0 < n_done < 52:
                    break
            time.sleep(0.002)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "plane.npz").exists()
    with np.load(store) as z:
        done = z["done"].astype(bool)
        stored = {m: z[m] for m in METRICS}
    assert done.shape == (52,) and 0 < done.sum() < 52
    assert np.isfinite(stored["train_loss"][done]).all() and np.isnan(stored["train_loss"][~done]).all()

    # Without --resume: refused in one line that names --resume; the store is kept.
    code, _, err = run_cli(capsys, *args, "--out", killed)
    assert code == 2 and "--resume" in one_line(err)
    assert store.exists()

    # Resuming with other batch-norm statistics would mix two estimators: refused, store kept.
    other = [a if a != "batches" else "population" for a in args]
    code, _, err = run_cli(capsys, *other, "--out", killed, "--resume")
    assert code == 2 and "different sweep" in one_line(err)
    assert store.exists() and json.loads((killed / "config.json").read_text())["bn_stats"] == "batches"

    evaluated = []
    real = sweep_module.evaluate_points

    def counting(model, anchors, coefficients, *a, **kw):
        evaluated.append(len(coefficients))
        return real(model, anchors, coefficients, *a, **kw)

    monkeypatch.setattr(sweep_module, "evaluate_points", counting)
    code, _, err = run_cli(capsys, *args, "--out", killed, "--resume")
    assert code == 0, err
    m = re.search(r"kept (\d+) of 52", err)
    assert m, err
    assert int(m.group(1)) == int(done.sum())
    assert sum(evaluated) == 52 - int(done.sum()), "resume re-evaluated points it had kept"
    assert not store.exists()
    monkeypatch.setattr(sweep_module, "evaluate_points", real)

    fresh = tmp_path / "fresh"
    code, _, err = run_cli(capsys, *args, "--out", fresh)
    assert code == 0, err
    resumed_arrays = load_npz(killed / "plane.npz")
    assert_same_arrays(resumed_arrays, load_npz(fresh / "plane.npz"), rtol=1e-7)
    # the kept points made it into the result unchanged (grid points are the first 49, row-major)
    grid_done = done[:49]
    np.testing.assert_array_equal(resumed_arrays["train_loss"].ravel()[grid_done], stored["train_loss"][:49][grid_done])
    assert json.loads((killed / "config.json").read_text())["bn_stats"] == "batches"
    s_res = json.loads((killed / "summary.json").read_text())
    s_new = json.loads((fresh / "summary.json").read_text())
    for got, want in zip(s_res["anchors"], s_new["anchors"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-7)

    # A finished folder without --resume: refused too.
    code, _, err = run_cli(capsys, *args, "--out", fresh)
    assert code == 2 and "plane.npz" in one_line(err)


def test_a_sweep_larger_than_the_machine_is_refused_in_one_line_before_any_work(tmp_path, capsys, endpoints):
    A, B, _ = endpoints
    gib = total_memory("cpu") / 2 ** 30
    # 1e10 grid points of 3 coefficients and 5 metrics: hundreds of GiB, whatever this machine has
    for argv, what in ((["plane", "--center", A, "--grid", 100000], "--grid 100000 (10,000,000,001 points) needs "),
                       (["rays", "--center", A, "--steps", 10 ** 9, "--directions", 2],
                        "--directions 2 x --steps 1000000000 (4,000,000,002 points) needs "),
                       (["rays", "--center", A, "--compare", B, "--directions", 10 ** 6, "--steps", 1],
                        "--directions 1000000 x --steps 1 (6,000,000 points) needs ")):  # points x anchors
        out = tmp_path / argv[0]
        code, _, err = run_cli(capsys, *argv, "--out", out, "--quiet")
        line = one_line(err)
        assert code == 2 and line.startswith(f"landscape: error: {what}"), line
        assert line.endswith(f"GiB, more than the {gib:.3g} GiB this CPU has in all")
        assert not (out / STORE).exists() and not (out / "summary.json").exists()


def test_a_checkpoint_with_nan_or_inf_weights_is_refused_in_one_line(tmp_path, capsys, endpoints):
    """Evaluated beside good points it would turn theirs NaN (0 x NaN):
    refused before any work, naming the file; nothing is written."""
    A, B, _ = endpoints
    ck = load_checkpoint(B)
    for value, words in ((float("nan"), "1 NaN value in"), (float("-inf"), "1 infinite weight;")):
        sd = {k: v.clone() for k, v in ck.state_dict.items()}
        next(v for k, v in sd.items() if k.endswith("weight")).view(-1)[0] = value
        bad = tmp_path / "bad.pt"
        save_checkpoint(bad, sd, ck.model, meta=ck.meta)
        out = tmp_path / "rays"
        code, _, err = run_cli(capsys, "rays", "--center", A, "--compare", bad, "--directions", 1, "--steps", 2,
                               "--out", out, "--quiet")
        line = one_line(err)
        assert code == 2 and line.startswith(f"landscape: error: {bad}: ") and words in line, line
        assert not out.exists() or not any(out.iterdir())


def test_a_foreign_checkpoint_gets_a_note_that_its_train_loss_has_no_weight_decay(tmp_path, capsys, subset,
                                                                                    endpoints):
    bare = tmp_path / "bare.pt"
    torch.save(load_checkpoint(endpoints[0]).state_dict, bare)
    argv = ["rays", "--center", bare, "--model", "convnet", "--model-kwargs", "width=4", "--dataset", "npz",
            "--data-path", subset, "--directions", 1, "--steps", 1, "--bn-batches", 1, "--quiet"]
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "r1")
    assert code == 0 and one_line(err) == (f"note: {bare} records no weight decay; train loss is reported without "
                                           f"it (give --wd)")
    assert json.loads((tmp_path / "r1" / "summary.json").read_text())["wd"] == 0.0
    code, _, err = run_cli(capsys, *argv, "--wd", 5e-4, "--out", tmp_path / "r2")
    assert code == 0 and err == ""
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["wd"] == 5e-4


@pytest.mark.parametrize("shape,classes", [("3,8,8", 10), ("1,8,8", 12)], ids=["channels", "classes"])
def test_data_that_does_not_fit_the_checkpoint_is_refused_in_one_line(tmp_path, capsys, endpoints, shape, classes):
    """Data options that override the checkpoint's: other images or more
    classes than the network was built for give one line, before any work."""
    A, B, C = endpoints
    data = ("--dataset", "synthetic", "--synthetic-shape", shape, "--synthetic-classes", classes,
            "--synthetic-size", "50,20")
    for argv in (("rays", "--center", A, "--directions", 1, "--steps", 2, "--quiet"),
                 ("plane", "--points", A, B, C, "--grid", 3, "--quiet"),
                 ("width", "--swa", A, "--sgd", B, "--directions", 1, "--steps", 2, "--quiet"),
                 ("ensemble", A, B)):
        out = tmp_path / argv[0]
        code, _, err = run_cli(capsys, *argv, *data, "--out", out)
        line = one_line(err)
        assert code == 2 and f"{A} was built for input (1, 8, 8) and 10 classes, but dataset 'synthetic' has " \
            f"({shape.replace(',', ', ')}) and {classes}" in line, line
        assert not out.exists() or not any(out.iterdir())


def test_the_engine_refuses_data_the_network_cannot_take(data):
    """Any nn.Module: the probe forward names the inputs or the missing classes."""
    torch.manual_seed(0)
    net = create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4)
    w = ParamSpace.of(net).flatten(net)
    three = dataclasses.replace(data, x_train=data.x_train.repeat(1, 3, 1, 1), x_test=data.x_test.repeat(1, 3, 1, 1))
    with pytest.raises(UserError, match=r"^the network does not accept this data's inputs of shape \(3, 8, 8\): "):
        evaluate_points(net, [w], [[1.0]], three)
    more = dataclasses.replace(data, num_classes=12)
    with pytest.raises(UserError, match="^the network gives 10 outputs, but the data has 12 classes$"):
        evaluate_points(net, [w], [[1.0]], more)


def test_resume_of_a_finished_result_returns_it_only_for_the_same_request(tmp_path, capsys, endpoints):
    """--resume on a finished folder used to return the stored result whatever
    was asked; another grid, other points or another rays setting is refused."""
    A, B, C = endpoints
    out = tmp_path / "plane"
    base = ["plane", "--points", A, B, C, "--grid", 3, "--bn-batches", 1, "--out", out, "--quiet"]
    assert run_cli(capsys, *base)[0] == 0
    stored = (out / "plane.npz").read_bytes()
    code, stdout, err = run_cli(capsys, *base, "--resume")
    assert code == 0 and "plane 3x3" in stdout, stdout + err
    for changed, what in ((["plane", "--points", A, B, C, "--grid", 4, "--bn-batches", 1], "settings: grid 3, now 4"),
                          (["plane", "--points", A, C, B, "--grid", 3, "--bn-batches", 1],
                           "inputs (the weights given differ)"),
                          (["plane", "--points", A, B, C, "--grid", 3, "--bn-batches", 2],
                           "settings: bn_batches 1, now 2")):
        code, _, err = run_cli(capsys, *changed, "--out", out, "--quiet", "--resume")
        assert code == 2 and one_line(err) == (f"landscape: error: {out} holds a finished plane result of other "
                                               f"{what}; choose another --out"), err
    assert (out / "plane.npz").read_bytes() == stored
    rays = ["rays", "--center", A, "--directions", 1, "--steps", 1, "--bn-batches", 1, "--out", tmp_path / "rays",
            "--quiet"]
    assert run_cli(capsys, *rays)[0] == 0
    code, _, err = run_cli(capsys, *rays, "--rise", 0.5, "--resume")
    assert code == 2 and "holds a finished rays result of other settings: rise 0.1, now 0.5;" in one_line(err)
    # a summary that is JSON but not a summary (emptied, or cut down by hand) was a KeyError's traceback
    (out / "summary.json").write_text("{}")
    code, _, err = run_cli(capsys, *base, "--resume")
    assert code == 2 and one_line(err) == (f"landscape: error: {out}/summary.json is damaged (it records neither "
                                           f"the request it answers nor notes); choose another --out (to redraw its "
                                           f"figures: landscape plot {out})")
    assert (out / "plane.npz").read_bytes() == stored


def test_resume_of_a_finished_sweep_on_a_read_only_file_system_shows_it(tmp_path, capsys, endpoints, monkeypatch):
    """On a read-only mount, --resume of a finished plane ended in "sweep.partial.npz: Read-only file system"
    and showed nothing: the kernel answers EROFS before it looks a name up, so unlink(missing_ok=True) of a
    store that was not there raised. (Run as root, a chmod stops no write: the file system's answers are made.)"""
    import errno

    import landscape.plots.style as style

    A, B, C = endpoints
    out = tmp_path / "plane"
    base = ["plane", "--points", A, B, C, "--grid", 3, "--bn-batches", 1, "--out", out, "--quiet"]
    assert run_cli(capsys, *base)[0] == 0
    unlink = Path.unlink

    def read_only(path, missing_ok=False):
        if path.parent == out:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return unlink(path, missing_ok)

    def refused(write, path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr(style, "atomic_save", refused)
    code, stdout, err = run_cli(capsys, *base, "--resume")
    assert code == 0 and "plane 3x3" in stdout and "cannot be written; its figures are left as they were" in err, err


def test_checkpoints_trained_on_other_data_are_not_mixed_silently(tmp_path, capsys, endpoints):
    """One run's validation split may be the other's training data: the first
    checkpoint's data would silently be used for both. Refused in one line,
    unless the data options are given explicitly."""
    A, B, _ = endpoints
    ck = load_checkpoint(B)
    meta = dict(ck.meta, train_config=dict(ck.meta["train_config"], val_size=200))
    other = tmp_path / "val200.pt"
    save_checkpoint(other, ck.state_dict, ck.model, meta=meta)
    code, _, err = run_cli(capsys, "ensemble", A, other)
    assert code == 2 and one_line(err) == (f"landscape: error: {other} was trained on other data than {A} "
                                           f"(val-size 200 vs 0); give the data options explicitly to use the "
                                           f"same data for both")
    code, _, err = run_cli(capsys, "connect", "--start", A, "--end", other, "--epochs", 1, "--out", tmp_path / "c",
                           "--quiet")
    assert code == 2 and "was trained on other data" in one_line(err) and not (tmp_path / "c").exists()
    code, _, err = run_cli(capsys, "ensemble", A, other, "--val-size", 0)
    assert code == 0, err
    # A setting that means nothing for the data used (a path, for digits) is no difference.
    meta = dict(ck.meta, train_config=dict(ck.meta["train_config"], data_path=str(tmp_path / "elsewhere.npz")))
    pathed = tmp_path / "pathed.pt"
    save_checkpoint(pathed, ck.state_dict, ck.model, meta=meta)
    code, _, err = run_cli(capsys, "ensemble", A, pathed, "--dataset", "digits")
    assert code == 0, err


def test_points_trained_with_other_weight_decays_are_noted(tmp_path, capsys, endpoints):
    """A plane through a run of wd 0 and runs of wd 5e-4 reported every train loss with the first's 0, unsaid."""
    A, B, C = endpoints
    ck = load_checkpoint(C)
    wd = ck.meta["train_config"]["wd"]
    other = tmp_path / "wd0.pt"
    save_checkpoint(other, ck.state_dict, ck.model, meta=dict(ck.meta, train_config=dict(ck.meta["train_config"],
                                                                                         wd=0.0)))
    code, _, err = run_cli(capsys, "plane", "--points", other, A, B, "--grid", 3, "--bn-batches", 1, "--out",
                           tmp_path / "p", "--quiet")
    assert code == 0 and (f"note: {A} was trained with weight decay {wd:g}, {other} with 0; train loss is reported "
                          f"with 0 at every point (give --wd to choose)") in err, err
    code, _, err = run_cli(capsys, "plane", "--points", other, A, B, "--grid", 3, "--bn-batches", 1, "--wd", wd,
                           "--out", tmp_path / "q", "--quiet")
    assert code == 0 and "weight decay" not in err, err


def test_the_engine_refuses_a_non_finite_anchor_or_coefficient(data, endpoints):
    model, wa = flat_weights(endpoints[0])
    _, wb = flat_weights(endpoints[1])
    wb[5] = float("nan")
    with pytest.raises(UserError, match="anchor 1 has 1 non-finite weight;"):
        evaluate_points(model, [wa.float(), wb.float()], [[0.5, 0.5]], data)
    with pytest.raises(UserError, match="coefficient row 1 is not finite"):
        evaluate_points(model, [wa.float(), wa.float()], [[0.5, 0.5], [float("inf"), 0.0]], data)
    # planes: the basis through such a point was NaN ("empty plane range x [nan, nan]", or eigh's traceback)
    from landscape.plane import evaluate_trajectory_plane

    _, wc = flat_weights(endpoints[2])
    with pytest.raises(UserError, match=r"^a plane point \(number 2 of the 3 given\) has 1 non-finite weight; no plane"):
        evaluate_plane(model, [wa.float(), wb.float(), wc.float()], data, grid=3)
    with pytest.raises(UserError, match=r"^a trajectory checkpoint \(number 3 of the 3 given\) has 1 non-finite weight"):
        evaluate_trajectory_plane(model, [wa.float(), wc.float(), wb.float()], data, grid=3)


@pytest.mark.parametrize("error, said", [
    (CUDA_OOM("CUDA out of memory. Tried to allocate 2.00 GiB"), "(CUDA out of memory. Tried to allocate 2.00 GiB)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"),
     "(an allocation of 2 GiB failed)"),  # the allocator's byte count, made readable
    (MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000) and data type float64"),
     "(an allocation of 74.5 GiB failed)"),  # numpy's
], ids=["cuda", "cpu", "numpy"])
def test_running_out_of_memory_is_one_line_and_keeps_the_finished_points(tmp_path, capsys, endpoints, monkeypatch,
                                                                        error, said):
    args = ["plane", "--points", *endpoints, "--grid", 3, "--points-per-pass", 3, "--quiet"]
    real = sweep_module.evaluate_points
    fail_at_pass(monkeypatch, 2, error)
    out = tmp_path / "oom"
    code, _, err = run_cli(capsys, *args, "--out", out)
    assert code == 2
    assert one_line(err).startswith("landscape: error: out of memory (")
    assert one_line(err).endswith("what was finished is kept: rerun with --resume and a smaller --points-per-pass, "
                                  "or in another --out with --bn-stats batches or a smaller --batch-size")
    with np.load(out / STORE) as z:
        assert int(z["done"].sum()) == 3
    assert said in one_line(err)
    # failing in the first pass: nothing stored, and the sizes asked for may be the cause
    monkeypatch.setattr(sweep_module, "evaluate_points", real)
    fail_at_pass(monkeypatch, 1, error)
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "first")
    assert code == 2 and one_line(err).endswith(
        "nothing was stored yet: check the sizes asked for (--grid), or rerun with --bn-stats batches or a smaller "
        "--batch-size")
    monkeypatch.setattr(sweep_module, "evaluate_points", real)
    assert json.loads((out / "config.json").read_text())["bn_stats"] == "population"
    # Other settings than the points per pass make another sweep: refused as such, store kept.
    code, _, err = run_cli(capsys, *args, "--bn-batches", 2, "--out", out, "--resume")
    assert code == 2 and "partial results of a different sweep" in one_line(err)
    assert (out / STORE).exists()
    # Less free memory now, so auto alone would choose batches: the resume keeps the sweep's estimator.
    monkeypatch.setattr(engine_module, "_memory_budget", lambda device: 1e5)
    code, _, err = run_cli(capsys, *args[:-3], "--points-per-pass", 2, "--quiet", "--out", out, "--resume")
    assert code == 0 and "kept 3 of" in err, err  # as advised: fewer points per pass
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "fresh")
    assert code == 0, err
    assert_same_arrays(load_npz(out / "plane.npz"), load_npz(tmp_path / "fresh" / "plane.npz"), rtol=1e-7)


# ------------------------------------------------------- 9. torchrun sharding
# Each rank runs cli.main (what the console script runs) through a small driver
# that then reports whether the command left its process group alive, and tears
# it down itself if the command did not; a rank that
# exits with a live gloo group aborts now and then, failing the launch.
DRIVER = """
import os, sys
import torch.distributed as dist
from landscape import cli
{prelude}
code = cli.main(sys.argv[1:])
print(f"rank {{os.environ['RANK']}} returned {{code}}, group left alive: {{dist.is_initialized()}}", flush=True)
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
sys.exit(code)
"""
GLOO_ARGS = ["--grid", 5, "--points-per-pass", 3, "--quiet"]
# Free memory read differently on each rank: rank 0 would take 3 points per pass, rank 1 two.
UNEVEN_MEMORY = """
from landscape import sweep
sweep.default_points_per_pass = lambda *a, **k: 3 if os.environ["RANK"] == "0" else 2
"""


def launch_gloo(root: Path, args: list, prelude: str = "") -> subprocess.CompletedProcess:
    """``landscape ARGS`` on 2 gloo ranks, each running DRIVER with ``prelude`` first."""
    driver = root / "driver.py"
    driver.write_text(DRIVER.format(prelude=prelude))
    out = Path(args[args.index("--out") + 1])
    for _ in range(3):  # a port taken between our pick and torchrun's bind: retry on another, never skip
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
               str(free_port()), str(driver), *map(str, args)]
        done = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=240)
        if done.returncode == 0 or not PORT_TROUBLE.search(done.stderr):
            break
    return done


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory, endpoints):
    """``landscape plane`` on 2 gloo ranks; (finished process, result folder)."""
    root = tmp_path_factory.mktemp("gloo")
    two = root / "two"
    return launch_gloo(root, ["plane", "--points", *endpoints, *GLOO_ARGS, "--out", two]), two


@pytest.mark.slow
def test_two_process_gloo_plane_equals_one_process(tmp_path, capsys, endpoints, gloo_run):
    done, two = gloo_run
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.findall(r"rank (\d) returned 0", done.stdout) in (["0", "1"], ["1", "0"]), done.stdout
    assert done.stdout.count("plane 5x5") == 1, done.stdout  # only rank 0 reports
    assert not (two / STORE).exists()
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs: no argmax tie may flip between thread counts' roundings
    try:
        code, _, err = run_cli(capsys, "plane", "--points", *endpoints, *GLOO_ARGS, "--out", one)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert_same_arrays(load_npz(two / "plane.npz"), load_npz(one / "plane.npz"), rtol=1e-6)


@pytest.mark.slow
def test_torchrun_commands_tear_down_their_process_group(gloo_run):
    done, _ = gloo_run
    assert done.returncode == 0, done.stderr[-4000:]
    states = re.findall(r"group left alive: (True|False)", done.stdout)
    assert states == ["False", "False"], done.stdout


@pytest.mark.slow
def test_ranks_reading_different_free_memory_follow_rank_0s_points_per_pass(tmp_path, gloo_run, endpoints):
    """Without rank 0's choice broadcast, the ranks cut different chunk lists and hang."""
    done, two = gloo_run
    assert done.returncode == 0, done.stderr[-4000:]
    uneven = tmp_path / "uneven"
    args = ["plane", "--points", *endpoints, "--grid", 5, "--quiet", "--out", uneven]
    run = launch_gloo(tmp_path, args, prelude=UNEVEN_MEMORY)
    assert run.returncode == 0, run.stderr[-4000:]
    assert_same_arrays(load_npz(uneven / "plane.npz"), load_npz(two / "plane.npz"), rtol=1e-6)


# Rank 1 alone runs out of memory while rank 0 waits for its points in a collective.
RANK_1_OUT_OF_MEMORY = """
import torch
from landscape import sweep
real = sweep.evaluate_points
def evaluate_points(*a, **k):
    if os.environ["RANK"] == "1":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return real(*a, **k)
sweep.evaluate_points = evaluate_points
"""


# An unexpected error (a bug) on rank 1 alone: it used to wait at the final barrier, a silent hang.
RANK_1_BUG = RANK_1_OUT_OF_MEMORY.replace('torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")',
                                         'ZeroDivisionError("a bug on rank 1")')


@pytest.mark.slow
@pytest.mark.parametrize("prelude,said", [
    (RANK_1_OUT_OF_MEMORY, "landscape: error: rank 1: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"),
    (RANK_1_BUG, "ZeroDivisionError: a bug on rank 1"),
], ids=["out-of-memory", "traceback"])
def test_a_failure_on_one_rank_ends_the_launch_with_its_message(tmp_path, endpoints, prelude, said):
    """The failing rank must not wait for the others (they wait in a collective it never joins)."""
    out = tmp_path / "fail"
    args = ["plane", "--points", *endpoints, *GLOO_ARGS, "--out", out]
    run = launch_gloo(tmp_path, args, prelude=prelude)
    assert run.returncode != 0
    assert said in run.stderr, run.stderr[-3000:]
    assert not (out / "plane.npz").exists()


# ------------------------------------------------------- 10. plane of a curve
@pytest.mark.slow
def test_plane_of_a_curve_holds_its_path_and_exact_anchor_losses(tmp_path, capsys, endpoints, data):
    from landscape.curves.fit import fit_curve

    A, B, _ = endpoints
    fit_curve(A, B, tmp_path / "curve", epochs=1, progress=False)
    ckpt = tmp_path / "curve" / "model.pt"
    out = tmp_path / "plane"
    code, _, err = run_cli(capsys, "plane", "--ckpt", ckpt, "--grid", 3, "--out", out, "--quiet")
    assert code == 0, err
    arrays = load_npz(out / "plane.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert arrays["path_xy"].shape == (61, 2)
    np.testing.assert_allclose(arrays["path_xy"][0], arrays["anchor_xy"][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays["path_xy"][-1], arrays["anchor_xy"][1], rtol=0, atol=1e-6)
    assert [p["label"] for p in summary["anchors"]] == ["start", "end", "bend"]

    # Independently: the endpoints' own weights, the stored bend, the fit's weight decay.
    model, wa = flat_weights(A)
    _, wb = flat_weights(B)
    bend = load_checkpoint(ckpt).extra["curve"]["anchors"][1].double()
    wd = json.loads((tmp_path / "curve" / "config.json").read_text())["config"]["wd"]
    want = evaluate_points(model, torch.stack([wa, wb, bend]), np.eye(3), data, wd=wd)
    got = [p["train_loss"] for p in summary["anchors"]]
    np.testing.assert_allclose(got, want["train_loss"], rtol=1e-5)
    # and the anchors' coordinates are the plane's: start at the origin, end on the x axis at ||B - A||
    np.testing.assert_allclose(arrays["anchor_xy"][:2], [[0, 0], [float((wb - wa).norm()), 0]], atol=1e-5)

    # Data that does not fit the curve's network: one line from plane and from curve, nothing written.
    for argv in (("plane", "--grid", 3), ("curve", "--points", 3)):
        bad = tmp_path / f"{argv[0]}-bad"
        code, _, err = run_cli(capsys, argv[0], "--ckpt", ckpt, *argv[1:], "--dataset", "synthetic",
                               "--synthetic-shape", "3,8,8", "--synthetic-size", "50,20", "--out", bad, "--quiet")
        assert code == 2 and one_line(err).endswith(
            f"{ckpt} was built for input (1, 8, 8) and 10 classes, but dataset 'synthetic' has (3, 8, 8) and 10")
        assert not bad.exists() or not any(bad.iterdir())


def test_a_sweep_logged_to_a_file_prints_a_line_a_pass(tmp_path, capsys, endpoints, monkeypatch):
    """Where stderr is no terminal (a log file, a batch job) a bar cannot redraw
    itself: a sweep prints progress lines after its passes instead, at most one
    every 10 s (a 101 x 101 plane printed 1,275, one every 2-3 s) and always
    the last; --quiet none."""
    from landscape import progress as progress_module

    A, B, C = endpoints
    base = ["plane", "--points", A, B, C, "--grid", 2, "--points-per-pass", 3, "--bn-batches", 1]
    import types

    clock = iter(range(0, 10 ** 6, 3))  # each reading of the lines' clock 3 s after the last
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "p")
    monkeypatch.undo()
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("points ")]
    # 4 grid points + the 3 anchors (the grid's corners are not among them): 7 points in passes of 3: the first
    # pass's line (at 3 s), not the second's (6 s after it), the last always
    assert [line.split(" (")[0] for line in lines] == ["points 3 of 7", "points 7 of 7"], err
    assert "left" in lines[0] and lines[-1].startswith("points 7 of 7 (100 %) after ") and "left" not in lines[-1]
    threads = torch.get_num_threads()
    # where it runs and how: --device auto says nothing of what it chose, and a log of a slow plane showed no
    # device, threads or precision
    assert (f"7 distinct points (the 2 x 2 grid and 3 anchors), 3 a pass over the data, on cpu ({threads} "
            f"thread{'s' if threads != 1 else ''}), fp32, batch norm by batches\n") in err
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert (config["device_used"], config["threads"], config["processes"]) == ("cpu", threads, 1)
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["seconds"] > 0  # how long it took
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "q", "--quiet")
    assert code == 0 and "points " not in err


def test_keys_of_a_validation_split_compare_its_seed_and_still_match_earlier_builds():
    """The split's seed joined the data record (another --data-seed handed back the other split's plane), and so
    every key of a validation split changed: results of earlier builds on such a split were refused on --resume.
    The seed is kept out of the hash, as the fingerprint is, and compared only where both keys hold one."""
    from landscape.sweep import compare_keys, request_key

    vectors = [torch.arange(4.0)]
    one, two, test = (load_dataset("digits", val_size=100, seed=1), load_dataset("digits", val_size=100, seed=2),
                      load_dataset("digits"))
    k1, k2 = (request_key(vectors, {"grid": 3, "dataset": d.describe()}) for d in (one, two))
    earlier = request_key(vectors, {"grid": 3, "dataset": {k: v for k, v in one.describe().items()
                                                           if k != "split_seed"}})  # as earlier builds keyed it
    assert compare_keys(k1, k2) == "split" and compare_keys(k1, k1) is None
    assert compare_keys(earlier, k1) is None and compare_keys(earlier, k2) is None
    assert ":" not in request_key(vectors, {"grid": 3, "dataset": dict(test.describe(), fingerprint=None)})
    assert compare_keys(request_key(vectors, {"grid": 4, "dataset": one.describe()}), k1) == "settings"


def test_points_an_explicit_range_leaves_out_are_named(capsys):
    """--xrange / --yrange cut the figure to the grid: an anchor beyond it vanished without a word."""
    from landscape.plane import _note_outside

    x, y = np.linspace(-0.2, 0.6, 5), np.linspace(-0.5, 0.5, 5)
    path = np.stack([np.linspace(0, 1, 11), np.zeros(11)], axis=1)  # 0.0 .. 1.0: 6 of 11 within 0.6
    _note_outside(x, y, [("A", np.array([0.0, 0.0])), ("B", np.array([1.0, 0.0])), ("SWA", np.array([0.3, 0.7]))],
                  path)
    assert capsys.readouterr().err == ("note: outside --xrange/--yrange ([-0.2, 0.6] x [-0.5, 0.5]), not drawn: "
                                       "B (1, 0), SWA (0.3, 0.7), 4 of the path's 11 points\n")
    _note_outside(x, y, [("A", np.array([0.0, 0.0])), ("C", np.array([0.6, 0.5]))], np.zeros((0, 2)))  # on the edge
    assert capsys.readouterr().err == ""


def test_curve_and_plane_options_given_from_python_are_checked(tmp_path, data, endpoints):
    """bends=1.5, points=3.5, grid=2.5 and xrange=(1,) were TypeErrors and an IndexError from deep inside."""
    from landscape.curves import evaluate_curve, fit_curve

    a, b, c = endpoints
    for options, message in ((dict(bends=1.5), "--bends must be a whole number, got 1.5"),
                             (dict(bends="2"), "--bends must be a whole number, got '2'"),
                             (dict(t_samples=None), "--t-samples must be a whole number, got None")):
        with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
            fit_curve(a, b, tmp_path / "c", data=data, epochs=1, progress=False, **options)
    assert not (tmp_path / "c" / "last.pt").exists()
    model, wa = flat_weights(a)
    vecs = [wa.float(), flat_weights(b)[1].float(), flat_weights(c)[1].float()]
    for options, message in ((dict(grid=2.5), "--grid must be a whole number, got 2.5"),
                             (dict(xrange=(1,)), "--xrange must be two numbers LO HI, got (1,)"),
                             (dict(yrange="0 1"), "--yrange must be two numbers LO HI, got '0 1'"),
                             (dict(margin=None), "--margin must be a number, got None")):
        with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
            evaluate_plane(model, vecs, data, tmp_path / "p", **options)
    bad_mark = vecs[0].clone()
    bad_mark[3] = float("inf")
    with pytest.raises(UserError, match=r"^a marked point has 1 non-finite weight"):
        evaluate_plane(model, vecs, data, tmp_path / "p", marks=[bad_mark])
    assert not (tmp_path / "p").exists()
    result = evaluate_plane(model, vecs, data, grid=3.0, xrange=[-0.1, 1.1])  # whole floats, a list: taken
    assert result.arrays["train_loss"].shape == (3, 3) and result.arrays["x"][0] == -0.1
    with pytest.raises(UserError, match=r"^--points must be a whole number, got 3\.5$"):
        evaluate_curve(tmp_path / "nothing.pt", None, points=3.5)
