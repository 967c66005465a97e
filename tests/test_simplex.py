"""Simplexes: volumes against known values, uniform sampling, frozen vertices,
shared connectors, SPRO on digits."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from landscape.curves.simplex import SimplicialComplex, cayley_menger_volume, face_grid, sample_barycentric
from landscape.curves.spro import connect_modes, grow_simplex, load_simplex
from landscape.checkpoint import load_checkpoint, read_json
from landscape.data import load_dataset
from landscape.errors import UserError
from landscape.train import train
from landscape.weights import ParamSpace


def test_cayley_menger_volume_of_known_simplexes():
    # unit right triangle in 3-D (embedded in a larger space): area 1/2
    tri = torch.zeros(3, 7, dtype=torch.float64)
    tri[1, 0], tri[2, 1] = 1.0, 1.0
    assert float(cayley_menger_volume(tri)) == pytest.approx(0.5, rel=1e-12)
    # segment: its length
    seg = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    assert float(cayley_menger_volume(seg)) == pytest.approx(5.0, rel=1e-12)
    # corner tetrahedron with edges a, b, c: abc / 6; translated and rotated it stays the same
    tet = torch.zeros(4, 5, dtype=torch.float64)
    tet[1, 0], tet[2, 1], tet[3, 2] = 2.0, 3.0, 5.0
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    moved = tet @ q.T + torch.randn(5, dtype=torch.float64)
    assert float(cayley_menger_volume(moved)) == pytest.approx(2 * 3 * 5 / 6, rel=1e-9)
    # regular triangle with side s: sqrt(3)/4 s^2; and the Gram-determinant formula agrees in high dimension
    s = 2.0
    eq = torch.tensor([[0, 0], [s, 0], [s / 2, s * math.sqrt(3) / 2]], dtype=torch.float64)
    assert float(cayley_menger_volume(eq)) == pytest.approx(math.sqrt(3) / 4 * s * s, rel=1e-12)
    v = torch.randn(4, 10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e = v[1:] - v[0]
    gram_volume = math.sqrt(float(torch.linalg.det(e @ e.T))) / math.factorial(3)
    assert float(cayley_menger_volume(v)) == pytest.approx(gram_volume, rel=1e-6)
    # degenerate: three collinear points
    col = torch.tensor([[0.0, 0], [1, 1], [2, 2]], dtype=torch.float64)
    assert float(cayley_menger_volume(col)) == pytest.approx(0.0, abs=1e-6)


def test_a_small_simplex_far_from_the_origin_keeps_its_volume():
    """The vertices' own Gram matrix gave |a|^2 + |b|^2 - 2 a.b, which lost edges small beside the weights'
    norm to cancellation (an edge of 2e-6 of float32 weights of norm 21 read 3.5e-6)."""
    g = torch.Generator().manual_seed(0)
    mode = 0.07 * torch.randn(100_000, generator=g)
    for scale in (1e-3, 1e-5, 1e-6, 1e-7):
        for k in (1, 3):  # an edge (read 2.26e-5 for 2.22e-5 at 1e-6), a tetrahedron (16 % off at 1e-7)
            steps = torch.randn(k, 100_000, generator=g)
            steps = scale * float(mode.norm()) * steps / steps.norm(dim=1, keepdim=True)
            v = torch.cat([mode[None], mode + steps]).float()  # as the weights are held
            e = (v[1:].numpy().astype(np.float64) - v[0].numpy().astype(np.float64))  # the edges exactly
            expected = math.sqrt(np.linalg.det(e @ e.T)) / math.factorial(k)  # numpy's, not the function's
            assert float(cayley_menger_volume(v)) == pytest.approx(expected, rel=1e-6, abs=0), (scale, k)


def test_barycentric_samples_are_in_the_simplex_and_uniform():
    b = sample_barycentric(20_000, 3, torch.Generator().manual_seed(0))
    assert torch.all(b >= 0) and torch.allclose(b.sum(1), torch.ones(len(b), dtype=b.dtype))
    # Dirichlet(1,1,1): each marginal is Beta(1, 2), CDF 1 - (1 - x)^2
    for j in range(3):
        p = stats.kstest(b[:, j].numpy(), lambda x: 1 - (1 - x) ** 2).pvalue
        assert p > 1e-3
    # uniform over the triangle: equal counts in the 4 sub-triangles of the midpoint subdivision
    corner = (b > 0.5).any(dim=1)
    which = torch.where(corner, b.argmax(1), torch.full_like(b.argmax(1), 3))
    counts = torch.bincount(which, minlength=4).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_face_grid_covers_the_triangle():
    g = face_grid(4)
    assert g.shape == (15, 3) and torch.allclose(g.sum(1), torch.ones(15, dtype=g.dtype))
    assert {tuple(r) for r in g.tolist()} >= {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)}


def _space(p=6):
    return ParamSpace(names=("w",), shapes=((p,),))


def test_complex_shares_connectors_and_samples_its_simplexes():
    space = _space()
    modes = torch.randn(2, 6)
    conn = torch.randn(2, 6)
    cx = SimplicialComplex(space, modes, conn, [(0, 2, 3), (1, 2, 3)])
    assert cx.num_anchors == 4 and torch.equal(cx.anchors()[2:], conn)
    c = cx.sample(400, torch.Generator().manual_seed(0))
    # every sample lies in one simplex: never both modes, always weights summing to 1
    assert torch.all((c[:, 0] > 0) ^ (c[:, 1] > 0))
    assert torch.allclose(c.sum(1), torch.ones(400, dtype=c.dtype))
    # the connectors take part in every sample; both simplexes are chosen about equally
    assert torch.all(c[:, 2] > 0) and torch.all(c[:, 3] > 0)
    assert 150 < int((c[:, 0] > 0).sum()) < 250
    # moving a connector changes both simplexes' volumes (it is shared)
    before = cx.volumes().clone()
    with torch.no_grad():
        cx.free[0] += 5.0
    after = cx.volumes()
    assert torch.all(after != before)
    assert torch.allclose(cx.barycentres()[0], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3], dtype=torch.float64))
    with pytest.raises(UserError):
        SimplicialComplex(space, modes, conn, [(0, 0, 3)])


def test_volume_weighted_sampling_prefers_the_larger_simplex():
    space = _space(2)
    anchors = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cx = SimplicialComplex(space, anchors, None, [(0, 1, 2), (0, 2, 3)])  # areas 5 and 0.5
    c = cx.sample(2000, torch.Generator().manual_seed(0), volume_weighted=True)
    share = float((c[:, 1] > 0).float().mean())
    assert share == pytest.approx(5 / 5.5, abs=0.03)


def test_the_evaluation_samples_the_complex_as_the_fit_did():
    """spro --volume-weighted trained on samples drawn in proportion to each simplex's volume: its evaluation's
    samples and ensemble are drawn the same way (they were drawn a simplex uniformly, whatever the fit did)."""
    from landscape.curves.spro import evaluate_simplex
    from landscape.data import Dataset

    class TwoWeights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return x * self.w

    g = torch.Generator().manual_seed(0)
    data = Dataset(name="t", x_train=torch.randn(20, 2, generator=g), y_train=torch.randint(0, 2, (20,), generator=g),
                   x_test=torch.randn(10, 2, generator=g), y_test=torch.randint(0, 2, (10,), generator=g),
                   num_classes=2, mean=(0.0,), std=(1.0,))
    anchors = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cx = SimplicialComplex(_space(2), anchors, None, [(0, 1, 2), (0, 2, 3)])  # areas 5 and 0.5
    for weighted, share in ((True, 5 / 5.5), (False, 0.5)):
        ev = evaluate_simplex(cx, TwoWeights(), data, samples=600, face_resolution=2, volume_weighted=weighted)
        c = ev["arrays"]["sample_coefficients"]
        assert float((c[:, 1] > 0).mean()) == pytest.approx(share, abs=0.05), weighted


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    return d


@pytest.fixture(scope="module")
def modes(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("modes")
    for seed in (1, 2):
        train(out=root / str(seed), data=digits, epochs=6, seed=seed, progress=False, model_kwargs={"width": 8})
    return root / "1" / "model.pt", root / "2" / "model.pt"


@pytest.mark.slow
def test_spro_grows_a_low_loss_simplex_and_freezes_earlier_vertices(tmp_path, capsys, modes):
    a, _ = modes
    r = grow_simplex(a, tmp_path / "sx", vertices=3, lam=1.0, epochs=3, eval_samples=8, face_resolution=4,
                     progress=False)
    s = r.summary
    space = ParamSpace.of(r.model)
    mode_vec = space.flatten(load_checkpoint(a).state_dict)
    anchors = r.complex.anchors()
    assert torch.equal(anchors[0].cpu(), mode_vec)  # the mode never moves
    # the first added vertex was frozen while the second trained
    v1_after_phase1 = load_simplex(tmp_path / "sx" / "vertex-1" / "model.pt")[0].anchors()[1]
    assert torch.equal(anchors[1].cpu(), v1_after_phase1.cpu())
    assert s["volume"] > 0 and s["samples"] == 8
    assert s["test_error_mean"] <= s["test_error_max"]
    assert abs(s["test_error_mean"] - s["vertices"][0]["test_error"]) < 10
    assert (tmp_path / "sx" / "simplex.npz").exists() and (tmp_path / "sx" / "model.pt").exists()
    assert torch.load(tmp_path / "sx" / "model.pt", weights_only=True)["kind"] == "simplex"

    # The folder is this run's: another mode's --resume would reuse these vertices for it, and a
    # run of another kind would replace its files; both are refused, and nothing changes.
    _, b = modes
    before = {p.name: p.read_bytes() for p in (tmp_path / "sx").iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"holds a simplex run of other checkpoints or settings \(simplex of "):
        grow_simplex(b, tmp_path / "sx", vertices=3, resume=True, progress=False)
    with pytest.raises(UserError, match="already holds a simplex run; pass --resume"):
        connect_modes(list(modes), tmp_path / "sx", connectors=1, progress=False)
    with pytest.raises(UserError, match="holds a simplex run of other checkpoints or settings"):
        connect_modes(list(modes), tmp_path / "sx", connectors=1, resume=True, progress=False)
    with pytest.raises(UserError, match=r"holds a simplex run of the same checkpoints with --vertices 3, not 4; "
                                        r"choose another --out, or resume it with its own count"):
        grow_simplex(a, tmp_path / "sx", vertices=4, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "sx").iterdir() if p.is_file()} == before
    # the same run resumed: its finished vertices are reused
    again = grow_simplex(a, tmp_path / "sx", vertices=3, lam=1.0, epochs=3, eval_samples=8, face_resolution=4,
                         resume=True, progress=False)
    assert torch.equal(again.complex.anchors().cpu(), anchors.cpu())
    assert "evaluating again" not in capsys.readouterr().err
    # resumed with another evaluation: the vertices are reused, the replaced results said so
    again = grow_simplex(a, tmp_path / "sx", vertices=3, lam=1.0, epochs=3, eval_samples=4, face_resolution=4,
                         resume=True, progress=False)
    assert again.summary["samples"] == 4 and torch.equal(again.complex.anchors().cpu(), anchors.cpu())
    assert (f"note: {tmp_path / 'sx'}: evaluating again with --eval-samples 4 (the stored results used 8); they "
            f"are replaced") in capsys.readouterr().err
    again = grow_simplex(a, tmp_path / "sx", vertices=3, lam=1.0, epochs=3, eval_samples=4, face_resolution=3,
                         resume=True, progress=False)  # another face grid was replaced without a word
    assert again.summary["face_grid"] == 3 and np.load(tmp_path / "sx" / "simplex.npz")["face_train_loss"].size == 10
    assert (f"note: {tmp_path / 'sx'}: evaluating again with --face-grid 3 (the stored results used 4); they "
            f"are replaced") in capsys.readouterr().err
    # a finished run whose summary was torn is finished again (under torchrun rank 0 alone read it, and
    # its error left the other ranks waiting for it)
    (tmp_path / "sx" / "summary.json").write_text('{"samples": 8,')
    again = grow_simplex(a, tmp_path / "sx", vertices=3, lam=1.0, epochs=3, eval_samples=4, face_resolution=4,
                         resume=True, progress=False)
    assert again.summary["samples"] == 4 and read_json(tmp_path / "sx" / "summary.json")["samples"] == 4


@pytest.mark.slow
def test_complex_between_two_modes_stays_below_the_line_barrier(tmp_path, modes):
    r = connect_modes(list(modes), tmp_path / "cx", connectors=1, lam=0.1, epochs=4, eval_samples=8,
                      face_resolution=4, progress=False)
    s = r.summary
    assert s["kind"] == "complex" and s["simplexes"] == [[0, 2], [1, 2]]
    assert s["train_loss_max"] < s["line"]["train_loss_max"]
    # the line's NLL barrier beside its train loss's, from the line's own points (wd/2 ||w||^2 taken off)
    from landscape.evaluate import evaluate_points
    from landscape.geometry import line_coefficients
    t = np.linspace(0, 1, 21)
    ref = evaluate_points(r.model, r.complex.anchors().detach(), line_coefficients(3, 0, 1, 1.0, t), r.data)
    assert s["line"]["train_nll_barrier"] == pytest.approx(ref["train_nll"].max() - ref["train_nll"][[0, -1]].mean(),
                                                           rel=1e-4)
    space = ParamSpace.of(r.model)
    for i, path in enumerate(modes):
        assert torch.equal(r.complex.anchors()[i].cpu(), space.flatten(load_checkpoint(path).state_dict))


@pytest.mark.parametrize("weighted", [True, False])
def test_a_fit_hands_its_sampling_to_its_evaluation(tmp_path, modes, monkeypatch, weighted):
    """spro passes --volume-weighted on to the evaluation of the simplex it made."""
    import landscape.curves.spro as spro_module

    real, seen = spro_module.evaluate_simplex, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("volume_weighted"))
        return real(*args, **kwargs)

    monkeypatch.setattr(spro_module, "evaluate_simplex", spy)
    grow_simplex(modes[0], tmp_path / "s", vertices=2, epochs=1, eval_samples=2, face_resolution=2,
                 volume_weighted=weighted, progress=False)
    assert seen == [weighted]


def test_bad_evaluation_and_init_options_are_refused_before_training(tmp_path, capsys):
    """--eval-samples 0 and --face-grid 0 used to end in a traceback after every vertex was
    trained; --init-scale 0 put the new vertex on the mode and reported a diverged loss."""
    from landscape import cli
    from landscape.checkpoint import save_checkpoint
    from landscape.models import create_model

    ckpt = tmp_path / "untrained.pt"
    spec = {"name": "convnet", "kwargs": {"num_classes": 10, "input_shape": [1, 8, 8], "width": 4}}
    save_checkpoint(ckpt, create_model("convnet", num_classes=10, input_shape=(1, 8, 8), width=4).state_dict(), spec)
    for argv, msg in ((["--connectors", "1"], "--connectors applies to a complex (--modes); simplexes around modes "
                                             "(--base) take --vertices"),
                      (["--eval-samples", "0"], "--eval-samples must be at least 1, got 0"),
                      (["--face-grid", "-1"], "--face-grid must be at least 1, got -1"),
                      (["--init-scale", "0"], "--init-scale must be positive (a new vertex at the centroid spans "
                                              "no volume), got 0.0"),
                      (["--lam", "nan"], "--lam must be a finite number >= 0, got nan"),
                      (["--init-scale", "inf"], "--init-scale must be positive (a new vertex at the centroid spans "
                                                "no volume), got inf")):
        code = cli.main(["simplex", "--base", str(ckpt), "--out", str(tmp_path / "s"), "--quiet", *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.strip() == f"landscape: error: {msg}", err
        assert not (tmp_path / "s").exists()
    # a count that could never fit is refused before the first vertex trains, not when memory runs out
    for argv, flag in ((["--vertices", str(10 ** 9)], "--vertices 1000000000"),
                       (["--modes", str(ckpt), str(tmp_path / "other.pt"), "--connectors", str(10 ** 9)],
                        "--connectors 1000000000")):
        if "--modes" in argv:
            torch.manual_seed(1)
            save_checkpoint(tmp_path / "other.pt", create_model("convnet", num_classes=10, input_shape=(1, 8, 8),
                                                                width=4).state_dict(), spec)
            code = cli.main(["simplex", *argv, "--out", str(tmp_path / "s"), "--quiet"])
        else:
            code = cli.main(["simplex", "--base", str(ckpt), "--out", str(tmp_path / "s"), "--quiet", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(f"landscape: error: {flag} (the ") and "GiB, more than the" in err, err
        assert "\n" not in err and not (tmp_path / "s").exists()
    # ESPRO claimed its folder (config.json) before its settings were checked
    code = cli.main(["simplex", "--base", str(ckpt), str(ckpt), "--lam", "-1", "--out", str(tmp_path / "e"), "--quiet"])
    assert code == 2 and capsys.readouterr().err.strip() == "landscape: error: --lam must be a finite number >= 0, got -1.0"
    assert not (tmp_path / "e").exists()
    code = cli.main(["simplex", "--modes", str(ckpt), str(ckpt), "--vertices", "3", "--out", str(tmp_path / "e")])
    assert code == 2 and capsys.readouterr().err.strip() == (
        "landscape: error: --vertices applies to simplexes around modes (--base); a complex (--modes) takes --connectors")


def test_counts_from_python_are_checked_before_any_work(tmp_path, modes):
    """From Python, face_resolution=0 ended in a ZeroDivisionError and eval_samples=0 in a ValueError after every
    vertex was trained, vertices=2.5 in a TypeError; and espro(vertices=1) claimed its folder first, so that the
    corrected command was refused as another run."""
    from landscape.curves.spro import espro, evaluate_simplex

    a, b = modes
    for call, msg in ((lambda out: grow_simplex(a, out, face_resolution=0), "--face-grid must be at least 1, got 0"),
                      (lambda out: grow_simplex(a, out, eval_samples=0), "--eval-samples must be at least 1, got 0"),
                      (lambda out: grow_simplex(a, out, eval_samples=-2), "--eval-samples must be at least 1, got -2"),
                      (lambda out: grow_simplex(a, out, vertices=2.5), "--vertices must be a whole number, got 2.5"),
                      (lambda out: grow_simplex(a, out, vertices="3"), "--vertices must be a whole number, got '3'"),
                      (lambda out: connect_modes([a, b], out, connectors=1.5),
                       "--connectors must be a whole number, got 1.5"),
                      (lambda out: connect_modes([a, b], out, connectors=0), "--connectors must be at least 1, got 0"),
                      (lambda out: espro([a, b], out, vertices=1),
                       r"--vertices must be at least 2 \(the mode and one more\), got 1"),
                      (lambda out: espro([a, b], out, eval_samples=0), "--eval-samples must be at least 1, got 0"),
                      (lambda out: evaluate_simplex(None, None, None, face_resolution=0),
                       "--face-grid must be at least 1, got 0"),
                      (lambda out: evaluate_simplex(None, None, None, seed=-1),
                       r"--seed must be a whole number from 0 to 2\^63 - 1, got -1")):
        with pytest.raises(UserError, match=f"^{msg}$"):
            call(tmp_path / "s")
        assert not (tmp_path / "s").exists()


def test_an_init_scale_below_the_weights_precision_is_refused_and_a_small_one_noted(tmp_path, capsys, modes):
    """--init-scale 1e-9 started the vertex at the mode's float32 neighbour, 5.8e-9 from it, not 2.1e-8, and
    1e-7 ran to a vertex thrown 99 away (92 % test error) without a word: the log-volume term's gradient is
    1 / the vertex's height."""
    from landscape import cli
    from landscape.curves.spro import SimplexConfig, _note_first_step

    a, _ = modes
    code = cli.main(["simplex", "--base", str(a), "--init-scale", "1e-9", "--out", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("landscape: error: --init-scale 1e-09 is below what the weights' "
                                        "torch.float32 resolves around the centroid (norm ") and "\n" not in err, err
    assert not (tmp_path / "s").exists()
    # the first step of the volume term, lr x weight / height, against the height
    _note_first_step(SimplexConfig(), weight=0.1, edge=1.0, stage="")
    assert capsys.readouterr().err == ""
    _note_first_step(SimplexConfig(lr=0.01), weight=0.1, edge=1e-2, stage="vertex 2 of 3")
    assert capsys.readouterr().err.strip() == (
        "note: vertex 2 of 3: the volume term's first step (about --lr x weight / distance = 0.1) is 10 times the "
        "new vertex's distance from the centroid (0.01): its first steps may throw it far; a larger --init-scale, "
        "or a smaller --lam or --lr, avoids it")
    _note_first_step(SimplexConfig(init="random"), weight=0.1, edge=1e-2, stage="")
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_espro_components_are_grown_independently_and_resume_with_other_samples(tmp_path, capsys, modes):
    """Every ESPRO component drew its vertices' starts, batch orders and samples from the same seeds: the same
    mode grown twice gave one simplex twice (its v1s 0.28 apart, 5 from the mode). The first component is the
    simplex grown alone; other --eval-samples on --resume re-evaluate, as for one simplex."""
    from landscape import cli

    a, _ = modes
    argv = ["simplex", "--base", str(a), str(a), "--vertices", "2", "--epochs", "1", "--eval-samples", "2",
            "--face-grid", "1", "--out", str(tmp_path / "e"), "--quiet"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'e'}: no figure: a simplex of two vertices has no triangular face to draw" in err
    first, second = (load_simplex(tmp_path / "e" / f"component-{i}" / "model.pt")[0].anchors() for i in (1, 2))
    assert torch.equal(first[0], second[0])  # the same mode
    apart, away = float((first[1] - second[1]).norm()), float((first[1] - first[0]).norm())
    assert apart > 0.5 * away, (apart, away)
    alone = grow_simplex(a, tmp_path / "alone", vertices=2, epochs=1, eval_samples=2, face_resolution=1,
                         progress=False)
    assert torch.equal(alone.complex.anchors().cpu(), first.cpu())
    with np.load(tmp_path / "alone" / "simplex.npz") as lone, \
            np.load(tmp_path / "e" / "component-1" / "simplex.npz") as component:
        assert np.array_equal(lone["sample_coefficients"], component["sample_coefficients"])
        assert np.array_equal(lone["sample_test_nll"], component["sample_test_nll"])
    assert cli.main([*argv, "--resume", "--eval-samples", "3"]) == 0
    assert "evaluating again with --eval-samples 3 (the stored results used 2)" in capsys.readouterr().err
    assert [row["samples_per_component"] for row in read_json(tmp_path / "e" / "summary.json")["ensemble"]] == [1, 2, 3]
    # an ESPRO folder an earlier build began (its claim without "draws") resumes with that build's shared draws:
    # not half one build's run and half the other's
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"command": "simplex", "espro": True, "bases": [str(a), str(a)],
                                                 "vertices": 2, "eval_samples": 2}))
    assert cli.main([*argv[:-3], "--out", str(old), "--quiet", "--resume"]) == 0
    first, second = (load_simplex(old / f"component-{i}" / "model.pt")[0].anchors() for i in (1, 2))
    assert torch.equal(first, second) and "draws" not in read_json(old / "config.json")


def test_an_init_scale_that_overflows_and_espro_bases_on_other_data_are_refused_before_training(
        tmp_path, capsys, modes):
    """--init-scale 1e300 trained from infinite weights, then blamed --lr; ESPRO over a base that held out a
    validation split trained every simplex, then failed in np.stack (one was scored on 100 images, one on 360)."""
    from landscape import cli
    a, b = modes
    for argv in (["--base", a], ["--base", a, b], ["--modes", a, b]):
        code = cli.main(["simplex", *map(str, argv), "--init-scale", "1e300", "--out", str(tmp_path / "s"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.strip().startswith(
            "landscape: error: --init-scale 1e+300 would move a new vertex to infinite weights (it is a fraction of "
            "the centroid's norm, here "), err
        assert not (tmp_path / "s").exists()
    train(out=tmp_path / "held", epochs=1, seed=3, val_size=100, progress=False, model_kwargs={"width": 8})
    held = tmp_path / "held" / "model.pt"
    code = cli.main(["simplex", "--base", str(a), str(held), "--out", str(tmp_path / "e"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == (f"landscape: error: {held} was trained on other data than {a} (val-size 100 "
                                         f"vs 0); give the data options explicitly to use the same data for both")
    assert not (tmp_path / "e").exists()
    # The same mode twice is allowed, and said (here before the folder, a training run's, is refused).
    code = cli.main(["simplex", "--base", str(a), str(b), str(a), "--out", str(tmp_path / "held"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[0] == f"note: {a} holds the same weights as {a}: that mode counts twice in the ensemble"
    assert len(lines) == 2 and lines[1].startswith(f"landscape: error: {tmp_path / 'held'} ")


def test_a_divergence_names_the_settings_above_1_beside_the_rate():
    from landscape.curves.spro import SimplexConfig, _rate_flags

    assert _rate_flags(SimplexConfig()) == "--lr"
    assert _rate_flags(SimplexConfig(lam=5.0)) == "--lr (or --lam 5, which scales the volume term)"
    assert _rate_flags(SimplexConfig(lam=5.0, init_scale=20.0)) == (
        "--lr (or --lam 5, which scales the volume term; or --init-scale 20, which places the new vertex)")
    assert _rate_flags(SimplexConfig(init="random", init_scale=20.0)) == "--lr"


def test_foreign_modes_need_and_take_model(tmp_path, modes):
    """simplex had no --model: a foreign mode ended in a TypeError (its spec was None)."""
    import shutil

    from landscape.train import TrainConfig

    from landscape.curves.spro import SimplexConfig

    sd = load_checkpoint(modes[0]).state_dict
    torch.save({"model_state": sd}, tmp_path / "foreign.pt")
    kw = dict(vertices=2, epochs=1, eval_samples=2, face_resolution=2, progress=False)
    with pytest.raises(UserError, match="foreign.pt: foreign checkpoint without architecture; name it with --model"):
        grow_simplex(tmp_path / "foreign.pt", tmp_path / "refused", **kw)
    assert not (tmp_path / "refused").exists()
    r = grow_simplex(tmp_path / "foreign.pt", tmp_path / "s", model="convnet", model_kwargs={"width": 8}, **kw)
    assert torch.equal(r.complex.anchors()[0].cpu(), ParamSpace.of(r.model).flatten(sd))
    # a config object naming its network (not the default) counts as naming it
    assert TrainConfig.model == "convnet"
    cfg = SimplexConfig(model="mlp", model_kwargs={"hidden": 8})
    with pytest.raises(UserError, match="foreign.pt does not fit model 'mlp'"):
        grow_simplex(tmp_path / "foreign.pt", tmp_path / "c", config=cfg, **kw)
    # a complex joins different modes: a copy of one is refused
    shutil.copy(modes[0], tmp_path / "copy.pt")
    with pytest.raises(UserError, match="hold the same weights: a complex joins different modes"):
        connect_modes([modes[0], tmp_path / "copy.pt"], tmp_path / "cx", connectors=1, epochs=1, progress=False)
    assert not (tmp_path / "cx").exists()


def test_a_simplex_trains_on_the_data_normalisation_it_is_given(tmp_path, modes):
    """grow_simplex passed four of the data settings on to the data it loads: a given --data-normalization was
    recorded in its config but the mode's standard inputs were used."""
    a, _ = modes
    r = grow_simplex(a, tmp_path / "sx", vertices=2, epochs=1, eval_samples=2, face_resolution=2, progress=False,
                     data_normalization="0.5/0.25")
    assert r.data.normalization == r.summary["config"]["data_normalization"] == "0.5/0.25"
    assert r.data.mean == (0.5,) and r.summary["dataset"]["normalization"] == "0.5/0.25"


def test_one_path_where_a_list_of_modes_is_expected_is_refused():
    """connect_modes("a.pt") read the string's characters as checkpoints ("a: no such checkpoint file")."""
    from landscape.curves.spro import espro
    from landscape.errors import UserError

    with pytest.raises(UserError, match=r"^modes is a list of checkpoints, got the single path 'runs/a/model\.pt'$"):
        connect_modes("runs/a/model.pt")
    with pytest.raises(UserError, match=r"^bases is a list of checkpoints, got the single path 'a\.pt' \(one: "):
        espro("a.pt")


def test_the_command_lines_face_grid_given_in_python_names_its_keyword():
    """A caller guessing the Python name from --face-grid got "takes no keyword 'face_grid'" alone: no name
    near it in spelling is the one (face_resolution)."""
    with pytest.raises(UserError, match=r"^grow_simplex\(\) takes no keyword 'face_grid' \(the simplex functions' "
                                        r"--face-grid is face_resolution=\)$"):
        grow_simplex("nope.pt", face_grid=3)


def test_a_stopped_evaluation_keeps_its_points_and_a_resume_continues_them(tmp_path, modes, monkeypatch, capsys):
    """The final evaluation (and a complex's straight line) kept nothing on disk: a stop in it lost every
    point evaluated, and the rerun evaluated them all again. They are kept in partial stores, which the
    rerun continues and the finished run removes."""
    import landscape.sweep as sweep_module

    real, calls = sweep_module.evaluate_points, []

    def counting(model, anchors, coefficients, *args, **kwargs):
        calls.append(len(coefficients))
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(model, anchors, coefficients, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "evaluate_points", counting)
    monkeypatch.setattr(sweep_module, "default_points_per_pass", lambda *a, **k: 4)
    out, kwargs = tmp_path / "cx", dict(connectors=1, lam=0.1, epochs=1, eval_samples=4, progress=False)
    # the line's 21 points are 6 passes of 4; the evaluation's 3 vertices, 2 barycentres and 4 samples 3 more
    stop_at = 8
    with pytest.raises(KeyboardInterrupt):
        connect_modes(list(modes), out, **kwargs)
    assert calls == [4, 4, 4, 4, 4, 1, 4, 4]
    with np.load(out / "simplex.partial.npz") as z:
        assert int(z["done"].sum()) == 4
    assert (out / "line.partial.npz").exists() and not (out / "model.pt").exists()
    from landscape import cli
    assert cli.main(["plot", str(out)]) == 2  # a stopped evaluation is said so, not "no stored results"
    assert "unfinished" in capsys.readouterr().err
    calls.clear()
    stop_at = None
    r = connect_modes(list(modes), out, resume=True, **kwargs)
    assert calls == [4, 1]  # the line and the evaluation's first pass were not evaluated again
    assert not (out / "simplex.partial.npz").exists() and not (out / "line.partial.npz").exists()
    # the kept and the new points are what one uninterrupted evaluation gives
    from landscape.curves.spro import evaluate_simplex
    whole = evaluate_simplex(r.complex, r.model, r.data, None, samples=4, wd=r.summary["config"]["wd"])
    stored = np.load(out / "simplex.npz")
    for key in ("vertex_train_loss", "vertex_test_error", "sample_train_loss", "sample_test_nll"):
        np.testing.assert_allclose(stored[key], whole["arrays"][key], rtol=1e-5, atol=1e-6)
    assert r.summary["ensemble"]["test_nll"] == pytest.approx(whole["summary"]["ensemble"]["test_nll"], rel=1e-5)
    # evaluated again with other samples and stopped, then resumed with yet others: the kept points are another
    # evaluation's, dropped with a note (they were refused, and only deleting the file by hand went on)
    calls.clear()
    stop_at = 8  # the line's 6 passes again (its store went with the finished run), then the evaluation's second
    with pytest.raises(KeyboardInterrupt):
        connect_modes(list(modes), out, resume=True, **dict(kwargs, eval_samples=6))
    assert (out / "simplex.partial.npz").exists()
    stop_at = None
    capsys.readouterr()
    again = connect_modes(list(modes), out, resume=True, **dict(kwargs, eval_samples=3))
    assert again.summary["samples"] == 3 and not (out / "simplex.partial.npz").exists()
    assert (f"note: {out}: the points simplex.partial.npz kept are of another evaluation (other --eval-samples or "
            f"--face-grid); they are dropped, and the 8 points evaluated") in capsys.readouterr().err
