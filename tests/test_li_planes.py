"""Li et al.'s planes: around one network along two random (filter-normalised)
directions, and through a training trajectory's principal directions.

The geometry is checked against numpy (least squares, an SVD of the centred
differences), the grids against the plain sequential loop at the points the
geometry says, and the CLI end to end on a small trained run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from landscape.checkpoint import load_checkpoint, load_model
from landscape.data import Dataset
from landscape.errors import UserError
from landscape.evaluate import METRICS, evaluate_points_sequential
from landscape.geometry import (PlaneBasis, filter_normalize, plane_basis, project, random_directions,
                                random_plane_basis, trajectory_basis, weight_mask)
from landscape.inputs import trajectory_files
from landscape.plane import evaluate_random_plane, evaluate_trajectory_plane
from landscape.train import train
from landscape.weights import ParamSpace
from tests.test_plane_rays import one_line, run_cli


class SmallBN(nn.Module):
    """A linear layer, batch norm and a head: batch norm makes every grid point's statistics its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(11)
    data = Dataset(name="t", x_train=torch.randn(60, 4, generator=g), y_train=torch.randint(0, 3, (60,), generator=g),
                   x_test=torch.randn(30, 4, generator=g), y_test=torch.randint(0, 3, (30,), generator=g),
                   num_classes=3, mean=(0.0,), std=(1.0,))
    torch.manual_seed(0)
    model = SmallBN()
    return model, data, ParamSpace.of(model)


def sequential_at(model, data, points: torch.Tensor, wd: float) -> dict[str, np.ndarray]:
    """The plain loop at explicit weight vectors (M, P)."""
    return evaluate_points_sequential(model, points.float(), np.eye(len(points)), data, wd=wd,
                                      bn_stats="population")


# ------------------------------------------------------------- the geometry
def test_project_onto_an_orthonormal_basis_keeps_its_dot_products_bit_for_bit():
    """A sweep's partial store is keyed by the bytes of its coefficients, which come from these coordinates:
    an interrupted plane of an earlier version resumes only if they are computed as they were."""
    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(300, generator=g) for _ in range(3))
    basis = plane_basis(a, b, c)
    pts = torch.randn(7, 300, generator=g)
    d = pts.double() - basis.origin
    np.testing.assert_array_equal(project(basis, pts), torch.stack([d @ basis.u, d @ basis.v], dim=-1).numpy())


def test_project_onto_a_skew_basis_is_least_squares():
    g = torch.Generator().manual_seed(1)
    origin, u, v = (torch.randn(20, generator=g, dtype=torch.float64) for _ in range(3))
    v = v + 0.7 * u  # far from orthogonal
    basis = PlaneBasis(origin=origin, u=u, v=v, orthonormal=False)
    pts = torch.randn(5, 20, generator=g, dtype=torch.float64)
    want = np.linalg.lstsq(torch.stack([u, v]).T.numpy(), (pts - origin).T.numpy(), rcond=None)[0].T
    np.testing.assert_allclose(project(basis, pts), want, rtol=1e-10, atol=1e-12)
    in_plane = origin + 2.5 * u - 1.25 * v
    np.testing.assert_allclose(project(basis, in_plane[None]), [[2.5, -1.25]], atol=1e-12)


def test_random_plane_basis_is_the_rays_two_directions(tiny):
    model, _, space = tiny
    center = space.flatten(model).detach()
    gauss = random_directions(space.numel, 2, seed=4)  # rays --directions 2 with the same seed
    basis = random_plane_basis(center, space, "gaussian", seed=4)
    torch.testing.assert_close(basis.u, gauss[0].double())
    torch.testing.assert_close(basis.v, gauss[1].double())
    torch.testing.assert_close(basis.origin, center.double())
    filt = random_plane_basis(center, space, "filter", seed=4)
    want = filter_normalize(gauss[:2], center, space)
    torch.testing.assert_close(filt.u, want[0].double())
    torch.testing.assert_close(filt.v, want[1].double())
    # filter normalisation: every row of the first weight matrix has its centre row's norm; biases, BN stay
    w = space.unflatten(center)["body.0.weight"]
    d = space.unflatten(filt.u.float())
    torch.testing.assert_close(d["body.0.weight"].norm(dim=1), w.norm(dim=1))
    assert float(d["body.0.bias"].abs().max()) == 0.0 and float(d["body.1.weight"].abs().max()) == 0.0
    assert not torch.equal(random_plane_basis(center, space, "gaussian", seed=5).u, basis.u)
    with pytest.raises(UserError, match="--normalize 'layer': unknown normalisation"):
        random_plane_basis(center, space, "layer")


def test_filter_normalising_a_model_without_weight_matrices_is_refused():
    model = nn.Sequential()
    model.register_parameter("b", nn.Parameter(torch.zeros(3)))
    space = ParamSpace.of(model)
    with pytest.raises(UserError, match="no weight with two or more dimensions"):
        random_plane_basis(torch.ones(3), space, "filter")


@pytest.mark.parametrize("style", ["parametrization", "hook"])
def test_weight_norm_magnitudes_are_gains_not_filters(style):
    """weight_norm's g, shaped (out, 1), was normalised as out one-element filters: each entry of a direction
    was +-|g_i|, so a step of 1 zeroed or doubled every output's scale, and a weight-normalised network's
    random plane looked 2.6x sharper than the same function without weight norm. g is a gain a filter, as a
    batch-norm scale is: zeroed by filter normalisation and left out by --ignore biasbn; v's filters are
    normalised as a plain weight's."""
    from torch.nn.utils import parametrizations, weight_norm

    torch.manual_seed(0)
    wrap = parametrizations.weight_norm if style == "parametrization" else weight_norm
    model = nn.Sequential(nn.Flatten(), wrap(nn.Linear(6, 4)), nn.ReLU(), nn.Linear(4, 3))
    space = ParamSpace.of(model)
    g, v = (("1.parametrizations.weight.original0", "1.parametrizations.weight.original1")
            if style == "parametrization" else ("1.weight_g", "1.weight_v"))
    assert space.gains == (g,) and dict(zip(space.names, space.shapes))[g] == (4, 1)
    center = space.flatten(model)
    d = filter_normalize(torch.randn(2, space.numel), center, space)
    parts, weights = space.unflatten(d), space.unflatten(center)
    assert torch.count_nonzero(parts[g]) == 0
    assert torch.allclose(parts[v].norm(dim=2), weights[v].norm(dim=1).expand(2, 4), rtol=1e-5)
    assert torch.allclose(parts["3.weight"].norm(dim=2), weights["3.weight"].norm(dim=1).expand(2, 3), rtol=1e-5)
    mask = space.unflatten(weight_mask(space))
    assert not mask[g].any() and mask[v].all() and mask["3.weight"].all() and not mask["3.bias"].any()
    assert space.trained().gains == (g,)
    # a stored result of an earlier build, which took g for filters, is another request; other networks' keys stay
    from landscape.geometry import gains_fixed

    assert gains_fixed(model, True) == {"gains": "fixed"} and gains_fixed(model, False) == {}
    assert gains_fixed(nn.Sequential(nn.Linear(6, 3)), True) == {}


def numpy_pca(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal directions (2, P) and explained ratios of the centred w_i - w_last, by an SVD."""
    diffs = points - points[-1]
    centred = diffs - diffs.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:2], s[:2] ** 2 / (s ** 2).sum()


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_trajectory_basis_is_the_pca_of_the_differences_from_the_end(chunk):
    g = np.random.default_rng(3)
    steps = np.cumsum(g.normal(size=(8, 50)) * np.linspace(3, 0.1, 50), axis=0)  # a walk, anisotropic
    points = torch.tensor(steps + 5.0, dtype=torch.float32)
    basis, ratio = trajectory_basis(points, chunk=chunk)
    axes, want_ratio = numpy_pca(points.double().numpy())
    for got, want in zip((basis.u, basis.v), axes):
        assert abs(float(got @ torch.from_numpy(want))) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(ratio, want_ratio, rtol=1e-9)
    torch.testing.assert_close(basis.origin, points[-1].double())
    assert float(basis.u @ basis.v) == pytest.approx(0.0, abs=1e-12)
    xy = project(basis, points)
    assert (xy[0] >= 0).all()  # the sign convention
    np.testing.assert_allclose(xy[-1], [0.0, 0.0], atol=1e-12)


def test_ignoring_biases_and_batch_norm_is_the_pca_of_the_weights_alone(tiny):
    model, _, space = tiny
    mask = weight_mask(space)
    assert [bool(mask[o]) for o in np.cumsum([0, *space.sizes[:-1]])] == [len(s) >= 2 for s in space.shapes]
    assert int(mask.sum()) == 4 * 6 + 6 * 3  # the two Linear weights; their biases and BN's weight and bias out
    g = torch.Generator().manual_seed(2)
    points = torch.cumsum(torch.randn(6, space.numel, generator=g), dim=0)
    points[:, ~mask] += 50.0 * torch.randn(6, int((~mask).sum()), generator=g)  # large moves that must not count
    basis, ratio = trajectory_basis(points, chunk=5, mask=mask)
    axes, want_ratio = numpy_pca(points[:, mask].double().numpy())
    for got, want in zip((basis.u, basis.v), axes):
        assert float(got[~mask].abs().max()) == 0.0
        assert abs(float(got[mask] @ torch.from_numpy(want))) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(ratio, want_ratio, rtol=1e-9)
    unmasked, _ = trajectory_basis(points)
    assert abs(float(unmasked.u[~mask].norm())) > 0.5  # without the mask the big moves lead PC1


def test_a_trajectory_needs_three_points_spanning_a_plane():
    line = torch.outer(torch.arange(5.0), torch.ones(10))
    with pytest.raises(UserError, match="fewer than two directions"):
        trajectory_basis(line)
    with pytest.raises(UserError, match="at least 3 checkpoints, got 2"):
        trajectory_basis(torch.randn(2, 10))


# ------------------------------------------------------------ the sweeps
def test_random_plane_grid_is_the_loop_at_center_plus_a_d1_plus_b_d2(tiny):
    model, data, space = tiny
    center = space.flatten(model).detach()
    result = evaluate_random_plane(model, center, data, grid=3, seed=2, wd=0.01, bn_stats="population")
    basis = random_plane_basis(center, space, "filter", seed=2)
    x, y = result.arrays["x"], result.arrays["y"]
    np.testing.assert_allclose(x, [-1, 0, 1])
    np.testing.assert_allclose(y, [-1, 0, 1])
    pts = torch.stack([basis.origin + float(a) * basis.u + float(b) * basis.v for a in x for b in y])
    want = sequential_at(model, data, pts, wd=0.01)
    for m in METRICS:
        np.testing.assert_allclose(result.arrays[m].ravel(), want[m], rtol=2e-5, atol=1e-6, err_msg=m)
    s = result.summary
    assert s["plane"] == "random" and s["normalize"] == "filter" and s["seed"] == 2
    assert s["anchors"][0]["label"] == "center" and (s["anchors"][0]["x"], s["anchors"][0]["y"]) == (0.0, 0.0)
    assert s["anchors"][0]["train_loss"] == pytest.approx(float(want["train_loss"][4]), rel=1e-5)  # the middle
    assert s["direction_cosine"] == pytest.approx(float(basis.u @ basis.v / (basis.u.norm() * basis.v.norm())))


def test_random_plane_span_defaults_and_ranges(tiny):
    model, data, space = tiny
    center = space.flatten(model).detach()
    gauss = evaluate_random_plane(model, center, data, grid=2, normalize="gaussian")
    half = 0.5 * float(center.norm())
    np.testing.assert_allclose(gauss.arrays["x"], [-half, half], rtol=1e-6)
    wide = evaluate_random_plane(model, center, data, grid=2, span=3.0, yrange=(0.0, 0.5))
    np.testing.assert_allclose(wide.arrays["x"], [-3, 3])
    np.testing.assert_allclose(wide.arrays["y"], [0, 0.5])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match=r"--span \(the random plane's\) must be a positive number"):
            evaluate_random_plane(model, center, data, grid=2, span=bad)
    with pytest.raises(UserError, match="no margin"):
        evaluate_random_plane(model, center, data, grid=2, margin=0.1)


def test_trajectory_plane_grid_path_and_distances(tiny):
    model, data, space = tiny
    g = torch.Generator().manual_seed(5)
    start = space.flatten(model).detach()
    walk = [start]
    for _ in range(4):
        walk.append(walk[-1] + 0.3 * torch.randn(space.numel, generator=g))
    result = evaluate_trajectory_plane(model, walk, data, grid=3, labels=["first", "b", "c", "d", "last"],
                                       bn_stats="population")
    points = torch.stack(walk)
    axes, ratio = numpy_pca(points.double().numpy())
    s = result.summary
    np.testing.assert_allclose(s["explained_variance"], ratio, rtol=1e-9)
    basis, _ = trajectory_basis(points)
    xy = result.arrays["path_xy"]
    np.testing.assert_allclose(xy, project(basis, points))
    # the path's points' distances from the plane, by hand from numpy's axes
    d = points.double().numpy() - points[-1].double().numpy()
    resid = d - (d @ axes.T) @ axes
    np.testing.assert_allclose(s["trajectory_distance_from_plane"], np.linalg.norm(resid, axis=1), atol=1e-9)
    # the grid covers the path with the margin, and its values are the loop's
    assert result.arrays["x"][0] < xy[:, 0].min() and result.arrays["x"][-1] > xy[:, 0].max()
    pts = torch.stack([basis.origin + float(a) * basis.u + float(b) * basis.v
                       for a in result.arrays["x"] for b in result.arrays["y"]])
    want = sequential_at(model, data, pts, wd=0.0)
    for m in METRICS:
        np.testing.assert_allclose(result.arrays[m].ravel(), want[m], rtol=2e-5, atol=1e-6, err_msg=m)
    assert s["anchor_labels"] == ["last"] and s["start_label"] == "first" and s["checkpoints"] == 5
    assert s["trajectory_labels"] == ["first", "b", "c", "d", "last"]
    with pytest.raises(UserError, match="c has the weights of first: a trajectory passes each checkpoint once"):
        evaluate_trajectory_plane(model, [walk[0], walk[1], walk[0].clone(), walk[3]], data, grid=2,
                                  labels=["first", "b", "c", "d"])
    with pytest.raises(UserError, match="one label per checkpoint: 2 labels for 5"):
        evaluate_trajectory_plane(model, walk, data, grid=2, labels=["first", "last"])


# ------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    train(out=root / "run", epochs=4, seed=1, save_every=1, progress=False, model="convnet",
          model_kwargs={"width": 4}, device="cpu")
    return root / "run"


def test_trajectory_files_of_a_run_folder(run_dir, tmp_path):
    files = trajectory_files([run_dir])
    assert [f.name for f in files] == [f"checkpoint-00{k}.pt" for k in range(0, 5)] + ["model.pt"]
    for k in (10, 2):  # sorted by epoch, not as strings
        (tmp_path / f"checkpoint-{k:04d}.pt").write_bytes(b"")
    (tmp_path / "checkpoint-0100.pt").write_bytes(b"")
    assert [f.name for f in trajectory_files([tmp_path])] == ["checkpoint-0002.pt", "checkpoint-0010.pt",
                                                               "checkpoint-0100.pt"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoint-NNN.pt: train with --save-every"):
        trajectory_files([tmp_path / "empty"])


def test_a_trajectory_of_a_run_still_training_is_refused_and_of_a_stopped_one_noted(run_dir, tmp_path, capsys):
    import fcntl
    import shutil

    from landscape.checkpoint import LOCK

    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped)
    (stopped / "model.pt").unlink()  # stopped after its last checkpoint, before the end
    assert [f.name for f in trajectory_files([stopped])][-1] == "checkpoint-004.pt"
    assert "stopped has no model.pt: its run stopped before its last epoch" in capsys.readouterr().err
    with open(stopped / LOCK, "w") as held:  # a training process holds the folder (another open file: a conflict)
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="its run is still training .*draw its trajectory when it has finished"):
            trajectory_files([stopped])
    assert trajectory_files([run_dir])[-1].name == "model.pt" and "no model.pt" not in capsys.readouterr().err


def test_cli_trajectory_plane_of_a_run(run_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "plane", "--trajectory", run_dir, "--grid", 3, "--out", tmp_path / "t")
    assert code == 0, err
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["checkpoints"] == 5  # the initial weights, 4 epochs; model.pt repeats checkpoint-004.pt, dropped
    assert s["start_label"] == "init" and s["anchor_labels"] == ["epoch 4"]  # named by the epochs they record
    assert s["trajectory_labels"] == ["init", "epoch 1", "epoch 2", "epoch 3", "epoch 4"]
    assert "trajectory: 5 checkpoints" in out and "PC1" in out
    assert (tmp_path / "t" / "plane_train_loss.png").exists()
    final = load_checkpoint(run_dir / "model.pt")
    space = ParamSpace.of(load_model(run_dir / "model.pt"))
    assert torch.equal(space.flatten(final.state_dict),
                       space.flatten(load_checkpoint(run_dir / "checkpoint-004.pt").state_dict))
    # the figure redraws from the stored results alone
    (tmp_path / "t" / "plane_train_loss.png").unlink()
    assert run_cli(capsys, "plot", tmp_path / "t")[0] == 0
    assert (tmp_path / "t" / "plane_train_loss.png").exists()
    # arrays cut short (edited, damaged): one line, no traceback
    with np.load(tmp_path / "t" / "plane.npz") as z:
        arrays = dict(z)
    np.savez(tmp_path / "t" / "plane.npz", **dict(arrays, x=arrays["x"][:1]))
    code, _, err = run_cli(capsys, "plot", tmp_path / "t")
    assert code == 2 and "the stored results do not fit together (ValueError" in one_line(err)
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # the half-drawn figure was closed


def test_cli_trajectory_plane_without_biases_and_batch_norm(run_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "plane", "--trajectory", run_dir, "--ignore", "biasbn", "--grid", 2,
                             "--out", tmp_path / "t")
    assert code == 0, err
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["ignore"] == "biasbn" and "biases and BN left out" in s["axis_labels"][0]
    files = trajectory_files([run_dir])[:-1]  # model.pt repeats the last checkpoint
    model = load_model(files[0])
    space = ParamSpace.of(model)
    points = torch.stack([space.flatten(load_checkpoint(f).state_dict) for f in files])
    mask = weight_mask(space)
    _, want = numpy_pca(points[:, mask].double().numpy())
    np.testing.assert_allclose(s["explained_variance"], want, rtol=1e-6)
    code, _, err = run_cli(capsys, "plane", "--center", run_dir / "model.pt", "--ignore", "biasbn", "--grid", 2,
                           "--out", tmp_path / "c")
    assert code != 0 and "--ignore sets what a trajectory's PCA leaves out (--trajectory)" in one_line(err)
    # an earlier plane (no --ignore) in the same folder is another request
    assert run_cli(capsys, "plane", "--trajectory", run_dir, "--grid", 2, "--out", tmp_path / "u")[0] == 0
    code, _, err = run_cli(capsys, "plane", "--trajectory", run_dir, "--ignore", "biasbn", "--grid", 2,
                           "--out", tmp_path / "u", "--resume")
    assert code != 0 and 'finished plane result of other settings: ignore none, now "biasbn"' in one_line(err)


def test_cli_random_plane_options_and_resume(run_dir, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["plane", "--center", run_dir / "model.pt", "--normalize", "gaussian", "--seed", 3, "--span", 2,
            "--grid", 2, "--out", out]
    code, text, err = run_cli(capsys, *args)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert (s["x_range"], s["y_range"], s["normalize"], s["seed"]) == ([-2, 2], [-2, 2], "gaussian", 3)
    assert "random directions: gaussian, seed 3" in text
    assert run_cli(capsys, *args, "--resume")[0] == 0  # finished: handed back
    code, _, err = run_cli(capsys, *args[:-6], "--seed", 4, "--span", 2, "--grid", 2, "--out", out, "--resume")
    assert code != 0 and "holds a finished plane result of other settings: seed 3, now 4; choose" in one_line(err)


@pytest.mark.parametrize("argv,message", [
    (["--seed", "3"], "--seed sets the random plane around --center; --trajectory spans its own plane"),
    (["--center", "X"], "give one of --ckpt CURVE.pt, --points A.pt B.pt C.pt, --center A.pt or --trajectory RUN "
                        "(got --center and --trajectory)"),
])
def test_cli_plane_refuses_mixed_inputs_in_one_line(run_dir, tmp_path, capsys, argv, message):
    code, _, err = run_cli(capsys, "plane", "--trajectory", run_dir, *argv, "--out", tmp_path / "x")
    assert code != 0 and one_line(err).endswith(message)
    assert not (tmp_path / "x").exists()


def test_cli_random_plane_refuses_bad_options_in_one_line(run_dir, tmp_path, capsys):
    center = run_dir / "model.pt"
    for extra, message in ((["--margin", "0.1"], "--margin: a random plane's grid spans [-span, span]"),
                           (["--normalize", "layer"], "--normalize 'layer': unknown normalisation"),
                           (["--span", "-1"], "--span (the random plane's) must be a positive number")):
        code, _, err = run_cli(capsys, "plane", "--center", center, *extra, "--grid", 2, "--out", tmp_path / "x")
        assert code != 0 and message in one_line(err), extra
    code, _, err = run_cli(capsys, "plane", "--trajectory", tmp_path, "--out", tmp_path / "y")
    assert code != 0 and "holds no checkpoint-NNN.pt" in one_line(err)


def test_cli_trajectory_checkpoints_pass_once_in_training_order(run_dir, tmp_path, capsys):
    c = [run_dir / f"checkpoint-00{k}.pt" for k in range(1, 5)]
    code, out, err = run_cli(capsys, "plane", "--trajectory", c[0], c[1], c[1], c[2], "--grid", 2,
                             "--out", tmp_path / "rep")
    assert code == 0, err
    assert f"note: left out {c[1]}: the same weights as the checkpoint before" in err
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["checkpoints"] == 3
    code, _, err = run_cli(capsys, "plane", "--trajectory", run_dir, run_dir, "--out", tmp_path / "twice")
    assert code != 0 and "not in training order" in one_line(err) and "(epoch 0) comes after" in err
    code, _, err = run_cli(capsys, "plane", "--trajectory", c[2], c[0], c[1], "--out", tmp_path / "order")
    assert code != 0 and f"{c[0]} (epoch 1) comes after {c[2]} (epoch 3)" in one_line(err)
    code, _, err = run_cli(capsys, "plane", "--trajectory", c[0], c[1], c[0], "--out", tmp_path / "back")
    assert code != 0 and "not in training order" in one_line(err)
    code, _, err = run_cli(capsys, "plane", "--trajectory", c[1], c[1], c[2], "--out", tmp_path / "two")
    assert code != 0 and one_line(err).endswith(
        f"a trajectory's plane needs at least 3 checkpoints with distinct weights, got 2 (left out {c[1]}: the same "
        f"weights as the checkpoint before); a run keeps more with a smaller --save-every")
