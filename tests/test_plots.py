"""Plane and rays figures, drawn from synthetic result folders whose surfaces
are known in closed form: files written and valid, contour levels as in
Garipov et al. 2018, clipping, degenerate data, shared axes."""

import json
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import landscape.plots.style as style
from landscape.plots.plane import LogOffsetNorm, clip_values, draw_plane_figures, level_names, log_levels, plot_plane, plot_plane_points
from landscape.plots.rays import draw_rays_figures, plot_rays, shared_limits
from landscape.errors import UserError

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF"}


def _valley(t):
    return 1.2 * t * (1 - t)


def plane_surfaces(x, y):
    """Train loss: a valley along y = 1.2 t (1 - t) from (0, 0) to (1, 0) in a
    quadratic bowl centred on (0.5, 0.3); the grid's far corners rise above the
    papers' clip of 5. Test error (%) rises with it, past the 50 % clip."""
    X, Y = np.meshgrid(x, y, indexing="ij")  # [i, j] = at (x[i], y[j])
    loss = 0.05 + 0.3 * ((X - 0.5) ** 2 + (Y - 0.3) ** 2) + 6.0 * (Y - _valley(X)) ** 2
    return loss, 8.0 + 15.0 * loss


def write_plane(folder, *, synthetic=True, with_extras=True):
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.linspace(-0.6, 1.6, 34), np.linspace(-0.8, 1.2, 30)  # G != H: catches a transposed grid
    loss, err = plane_surfaces(x, y)
    arrays = dict(x=x, y=y, train_loss=loss, train_nll=loss, train_error=err - 5, test_nll=loss * 1.1,
                  test_error=err, anchor_xy=np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.3]]))
    summary = {"anchor_labels": ["w1", "w2", "θ"], "eval_split": "test", "synthetic": synthetic}
    if with_extras:
        t = np.linspace(0, 1, 41)
        arrays["path_xy"] = np.stack([t, _valley(t)], axis=1)
        arrays["mark_xy"] = np.array([[0.5, 0.25]])
        summary.update(path_label="Bezier curve", mark_labels=["SWA"])
    np.savez(folder / "plane.npz", **arrays)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


RAYS_CURVATURE = (1.0, 4.0)  # per centre: train loss = c + a (1 + k/10) d^2 along direction k
RISE = 0.5


def write_rays(folder, *, line=True):
    folder.mkdir(parents=True, exist_ok=True)
    d = np.linspace(-2.0, 2.0, 41)
    scale = 1.0 + 0.1 * np.arange(6)  # 6 directions
    centre_loss = np.array([0.1, 0.05])
    loss = centre_loss[:, None, None] + np.array(RAYS_CURVATURE)[:, None, None] * scale[None, :, None] * d ** 2
    err = np.minimum(5.0 + 20.0 * loss, 90.0)
    half = np.sqrt(RISE / (np.array(RAYS_CURVATURE)[:, None] * scale[None, :]))  # (2, 6)
    width_pos = np.where(half <= 2.0, half, np.inf)
    arrays = dict(distance=d, train_loss=loss, train_nll=loss, train_error=err - 3, test_nll=loss * 1.2,
                  test_error=err, center_train_loss=centre_loss, width_neg=width_pos, width_pos=width_pos)
    if line:
        ld = np.linspace(-0.5, 1.5, 51)
        ll = 0.1 + 2.0 * ld ** 2 * (ld - 1) ** 2
        arrays.update(line_distance=ld, line_train_loss=ll, line_test_error=5 + 20 * ll,
                      line_marks=np.array([0.0, 1.0]))
    np.savez(folder / "rays.npz", **arrays)
    summary = {"centers": [{"label": "SGD", "path": "a/model.pt", "median_width": float(2 * np.median(half[0])),
                            "median_asymmetry": 0.0},
                           {"label": "SWA", "path": "b/model.pt", "median_width": float(2 * np.median(half[1])),
                            "median_asymmetry": 0.0}],
               "rise": RISE, "normalize": "filter", "eval_split": "test", "synthetic": False}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def assert_valid_files(paths, expected, folder):
    assert sorted(p.name for p in paths) == sorted(expected)
    for path in paths:
        assert path.parent == folder and path.exists(), path
        data = path.read_bytes()
        assert len(data) > 1000, path
        assert data.startswith(MAGIC[path.suffix[1:]]), path
    assert not list(folder.glob(".*.tmp")), "atomic save left a temporary file"


# ------------------------------------------------------------------ files
def test_plane_figures_written_as_png_and_pdf(tmp_path):
    folder = write_plane(tmp_path / "plane")
    paths = draw_plane_figures(folder, formats=("png", "pdf"))
    assert_valid_files(paths, [f"plane_{m}.{f}" for m in ("train_loss", "test_error") for f in ("png", "pdf")], folder)
    assert not plt.get_fignums(), "figures left open"


def test_plane_figures_without_path_or_marks(tmp_path):
    folder = write_plane(tmp_path / "plane", synthetic=False, with_extras=False)
    paths = draw_plane_figures(folder)
    assert_valid_files(paths, ["plane_train_loss.png", "plane_test_error.png"], folder)


def test_rays_figures_written_as_png_and_pdf_with_line(tmp_path):
    folder = write_rays(tmp_path / "rays")
    paths = draw_rays_figures(folder, formats=("png", "pdf"))
    names = [f"{stem}.{f}" for stem in ("rays_train_loss", "rays_test_error", "line") for f in ("png", "pdf")]
    assert_valid_files(paths, names, folder)


def test_rays_figures_without_line_skip_the_line_figure(tmp_path):
    folder = write_rays(tmp_path / "rays", line=False)
    paths = draw_rays_figures(folder)
    assert_valid_files(paths, ["rays_train_loss.png", "rays_test_error.png"], folder)


def test_rays_axes_name_their_unit(tmp_path, monkeypatch):
    """Filter-normalised rays go in multiples of their direction (about the centre's norm), the line
    through the centres in weight space: one label \"distance\" for both would say one unit."""

    drawn = {}
    monkeypatch.setattr(style, "save_figure", lambda fig, stem, formats: drawn.__setitem__(stem.name, fig) or [])
    folder = write_rays(tmp_path / "rays")
    draw_rays_figures(folder)
    for stem in ("rays_train_loss", "rays_test_error"):
        assert {ax.get_xlabel() for ax in drawn[stem].axes if ax.get_xlabel()} == {
            "distance (multiples of a filter-normalised direction)"}
    assert {ax.get_xlabel() for ax in drawn["line"].axes} == {"distance along the line (weight space)"}
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps(dict(summary, normalize="gaussian")))
    draw_rays_figures(folder)
    assert {ax.get_xlabel() for ax in drawn["rays_train_loss"].axes if ax.get_xlabel()} == {"distance (weight space)"}
    plt.close("all")


# ------------------------------------------------------------------ contour levels
def test_log_levels_follow_the_papers_formula():
    values = np.array([[0.2, 1.0], [3.0, 9.0]])
    n, log_alpha = 7, -5.0
    levels = log_levels(values, vmax=5.0, log_alpha=log_alpha, n=n)
    lo, hi = 0.2, 5.0  # max clipped from 9 to 5
    expected = lo + np.exp(log_alpha + np.arange(n + 1) * (np.log(hi - lo) - log_alpha) / n)
    assert levels.shape == (n + 2,)
    np.testing.assert_allclose(levels[1:n], expected[1:n])
    assert levels[0] == lo and levels[n] == hi
    assert levels[-1] > 1e3 * hi
    assert np.all(np.diff(levels) > 0)
    gaps = np.diff(levels[: n + 1])
    assert np.all(np.diff(gaps[1:]) > 0), "levels should crowd near the minimum"
    assert gaps[0] < 0.01 * (hi - lo)


def test_log_levels_unclipped_when_below_vmax():
    values = np.linspace(1.0, 3.0, 10)
    assert log_levels(values, vmax=5.0)[-2] == 3.0
    assert log_levels(values, vmax=None)[-2] == 3.0


def test_clip_values_caps_at_vmax_and_keeps_nan():
    out = clip_values(np.array([1.0, 7.0, np.inf, np.nan]), 5.0)
    np.testing.assert_array_equal(out[:3], [1.0, 5.0, 5.0])
    assert np.isnan(out[3])


@pytest.mark.parametrize("values", [np.full((4, 4), 2.5), np.array([[np.nan, 1.0], [2.0, np.nan]]),
                                    np.full((3, 3), np.nan), np.array([[1.0, 1.0 + 1e-4], [1.0, 1.0]])])
def test_log_levels_increase_on_degenerate_data(values):
    levels = log_levels(values, vmax=5.0)
    assert np.all(np.isfinite(levels)) and np.all(np.diff(levels) > 0)


def test_levels_spread_over_a_small_range_and_their_labels_differ():
    """A simplex face of low loss (0.159 to 0.169): exp(-5) above the minimum
    put three quarters of the range in the first band, and every tick read 0.17."""
    values = np.linspace(0.159, 0.169, 50)
    levels = log_levels(values, vmax=5.0)
    assert np.sum(levels[1:-2] < 0.164) >= 3  # all were above 0.1657: the first band held two thirds
    assert levels[0] == 0.159 and levels[-2] == pytest.approx(0.169)
    names = level_names(levels[:-1])
    assert len(set(names)) == len(names) and names[0] == "0.159"
    assert level_names(np.array([0.2, 1.0, 3.0])) == ["0.2", "1", "3"]  # two digits where they suffice
    # each label within a tenth of the gap to its neighbour: 0.1850 read "0.18", and a node of 0.1835, drawn
    # below it, looked inside the band above
    assert level_names(np.array([0.169, 0.176, 0.185, 0.2, 0.24])) == ["0.169", "0.176", "0.185", "0.2", "0.24"]
    # one notation on one colorbar: 3800 beside 72, not 3.8e+03; e-notation only from a million
    assert level_names(np.array([19.0, 72.0, 270.0, 3812.0, 2.1e7])) == ["19", "72", "270", "3800", "2.1e+07"]


def test_a_face_of_little_variation_gets_spread_levels_and_both_colorbars():
    from landscape.plots.simplex import plot_face
    from landscape.plots.style import new_figure
    from landscape.curves.simplex import face_grid

    bary = face_grid(5).numpy()
    fig, (a, b) = new_figure(1, 2)
    plot_face(a, bary, 0.159 + 0.01 * bary[:, 0], ["v0", "v1", "v2"], vmax=5.0, label="train loss")
    plot_face(b, bary, 1.67 + 0.27 * bary[:, 1], ["v0", "v1", "v2"], vmax=50.0, log_alpha=-1.0, label="test error")
    bars = [ax for ax in fig.axes if ax not in (a, b)]
    assert len(bars) == 2
    for bar in bars:
        names = [t.get_text() for t in bar.get_yticklabels()]
        assert len(names) == 8 and len(set(names)) == 8, names
    notes = [t.get_text() for t in a.texts if "of each other" in t.get_text()]  # 0.159 to 0.169: 6 %
    assert notes == [] and [t.get_text() for t in b.texts if "of each other" in t.get_text()] == []
    plt.close(fig)
    # a face of one value: one colour and the value in the title; a narrow range: how narrow, said
    fig, (a, b) = new_figure(1, 2)
    plot_face(a, bary, np.full(len(bary), 0.2777), ["v0", "v1", "v2"], label="test error (%)")
    plot_face(b, bary, 0.1092 + 0.0006 * bary[:, 0], ["v0", "v1", "v2"], label="train loss")
    assert a.get_title() == "test error (%): 0.28 everywhere"
    assert len([ax for ax in fig.axes if ax not in (a, b)]) == 1  # b's colorbar alone
    assert [t.get_text() for t in b.texts if "of each other" in t.get_text()] == ["values within 0.55% of each other"]
    plt.close(fig)


def test_a_face_with_a_plateau_at_its_maximum_is_filled_everywhere():
    """Test errors come in steps: on a 3-grid face the nodes of half the triangle held the maximum, and
    tricontourf left every triangle lying wholly on its top level blank (read as no data)."""
    from landscape.curves.simplex import face_grid
    from landscape.plots.simplex import plot_face
    from landscape.plots.style import new_figure

    bary = face_grid(3).numpy()
    values = np.where(bary[:, 2] < 0.4, 1.3889, 1.1111)  # the half away from the third vertex at the maximum
    values[np.argmax(bary[:, 2])] = 1.3333
    fig, ax = new_figure(1, 1)
    plot_face(ax, bary, values, ["mode", "v1", "v2"], label="test error (%)")
    filled = [c for c in ax.collections if hasattr(c, "get_paths") and c.get_paths()
              and type(c).__name__ in ("ContourSet", "TriContourSet")]
    area = 0.0
    for path in filled[0].get_paths():
        for poly in path.to_polygons(closed_only=True):
            x, y = poly[:, 0], poly[:, 1]
            area += 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert abs(area) == pytest.approx(np.sqrt(3) / 4, rel=1e-6)  # the whole face (unit-side triangle)
    plt.close(fig)


def test_a_faces_colour_bar_has_a_grey_band_above_the_clip_only_where_values_are_there():
    """As a plane's: the face drew an unlabelled band up to 1e10 always, and wrote "> 5" on the tick at 5
    with a colour of the map above it."""
    import matplotlib.colors as mcolors

    from landscape.curves.simplex import face_grid
    from landscape.plots.plane import CLIPPED_COLOR
    from landscape.plots.simplex import plot_face
    from landscape.plots.style import new_figure

    bary = face_grid(6).numpy()
    fig, (a, b) = new_figure(1, 2)
    plot_face(a, bary, 0.2 + 3.0 * bary[:, 0], ["v0", "v1", "v2"], vmax=5.0, label="train loss")  # 0.2 to 3.2
    plot_face(b, bary, 0.2 + 9.0 * bary[:, 0], ["v0", "v1", "v2"], vmax=5.0, label="train loss")  # up to 9.2
    bar_a, bar_b = [ax for ax in fig.axes if ax not in (a, b)]
    names_a = [t.get_text() for t in bar_a.get_yticklabels()]
    assert bar_a.get_ylim()[1] == pytest.approx(3.2) and names_a[-1] == "3.2" and not any(">" in n for n in names_a)
    names_b = [t.get_text() for t in bar_b.get_yticklabels()]
    assert names_b[-2:] == ["5", "> 5"]
    filled = [c for c in b.collections if c.get_array() is not None or hasattr(c, "get_facecolor")]
    top = b.collections[0].get_facecolor()[-1]  # the filled contours' last band
    assert mcolors.to_hex(top[:3]) == mcolors.to_hex(CLIPPED_COLOR) and filled
    plt.close(fig)


def test_norm_is_logarithmic_above_the_minimum():
    norm = LogOffsetNorm(1.0, 1.0 + np.exp(2.0), log_alpha=-2.0)
    assert norm(1.0 + np.exp(-2.0)) == pytest.approx(0.0)
    assert norm(1.0) == pytest.approx(0.0)  # below exp(log_alpha): floored
    assert norm(1.0 + np.exp(0.0)) == pytest.approx(0.5)
    assert norm(1.0 + np.exp(2.0)) == pytest.approx(1.0)
    assert norm(1e10) > 1.0
    np.testing.assert_allclose(norm.inverse(norm(np.array([1.5, 3.0, 7.0]))), [1.5, 3.0, 7.0])
    with pytest.raises(ValueError, match="log_alpha"):
        LogOffsetNorm(0.0, 1.0, log_alpha=1.0)


# ------------------------------------------------------------------ axes
def test_plane_colorbar_top_label_reads_greater_than_the_clip():
    x, y = np.linspace(-0.6, 1.6, 34), np.linspace(-0.8, 1.2, 30)
    loss, _ = plane_surfaces(x, y)
    fig, ax = plt.subplots()
    out, cbar = plot_plane(ax, x, y, loss, vmax=5.0, label="train loss")
    fig.canvas.draw()
    labels = [t.get_text() for t in cbar.ax.get_yticklabels()]
    assert out is ax
    assert labels[-1] == "> " + labels[-2] == "> 5"
    assert cbar.ax.get_ylabel() == "train loss"
    plt.close(fig)


def test_only_clipped_values_get_the_grey_top_band_and_no_line_traces_the_minimum():
    from landscape.plots.plane import CLIPPED_COLOR

    x, y = np.linspace(0, 1, 11), np.linspace(0, 1, 11)
    X, Y = np.meshgrid(x, y, indexing="ij")
    error = np.maximum(0.0, 60 * (X + Y) - 20)  # a plateau of 0 % error, then up to 100 %
    for vmax, clipped in ((50.0, True), (None, False)):
        fig, ax = plt.subplots()
        _, cbar = plot_plane(ax, x, y, error, vmax=vmax, log_alpha=-1.0)
        fig.canvas.draw()
        labels = [t.get_text() for t in cbar.ax.get_yticklabels()]
        filled, lines = ax.collections[0], ax.collections[1]
        assert (labels[-1] == "> 50") is clipped and not any(">" in t for t in labels[:-1])
        top = filled.get_facecolor()[-1][:3]
        assert np.allclose(top, matplotlib.colors.to_rgb(CLIPPED_COLOR)) is clipped
        assert min(lines.levels) > 0.0  # the 0 % plateau's edge is not drawn as a contour line
        plt.close(fig)


def _band_x_extent(filled, band: int) -> tuple[float, float]:
    """The smallest and largest x of the filled contour's band ``band`` (0: the lowest)."""
    vertices = filled.get_paths()[band].vertices
    return float(vertices[:, 0].min()), float(vertices[:, 0].max())


def test_the_band_above_the_clip_starts_where_the_values_cross_it():
    """Values above the clip used to be drawn as about 5e9, so the grey band began at the node below
    the clip beside them (anchors at 1 % error sat in the '> 50' area), and the bands under it vanished."""
    x, y = np.arange(5.0), np.linspace(0, 1, 3)
    error = np.repeat(np.array([0.0, 20.0, 40.0, 80.0, 100.0])[:, None], 3, axis=1)  # a ramp along x
    fig, ax = plt.subplots()
    _, cbar = plot_plane(ax, x, y, error, vmax=50.0, log_alpha=-1.0)
    filled = ax.collections[0]
    lo, hi = _band_x_extent(filled, len(filled.get_paths()) - 1)
    assert lo == pytest.approx(2.25) and hi == pytest.approx(4.0)  # 50 crossed a quarter of the way from 40 to 80
    # the band just under the clip reaches it there too, as linear interpolation of the values puts it
    assert _band_x_extent(filled, len(filled.get_paths()) - 2)[1] == pytest.approx(2.25)
    plt.close(fig)


def test_infinite_values_join_the_band_above_the_clip_and_blanks_are_counted():
    """+inf was drawn as the clip value itself (below finite values above the clip) and NaN left blank without
    a word; +inf is above any clip, and the panel now says how many points are blank."""
    from landscape.plots.plane import CLIPPED_COLOR
    from landscape.plots.style import finish_layout

    x, y = np.arange(5.0), np.arange(5.0)
    loss = 0.2 + 0.1 * np.add.outer(x, y)  # 0.2 ... 1.0, under the clip
    loss[2, 2] = np.inf
    loss[0, 4], loss[4, 0] = np.nan, -np.inf
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    _, cbar = plot_plane(ax, x, y, loss, vmax=5.0)
    finish_layout(fig)
    filled = ax.collections[0]
    assert np.allclose(filled.get_facecolor()[-1][:3], matplotlib.colors.to_rgb(CLIPPED_COLOR))
    grey = filled.get_paths()[-1]
    assert grey.contains_point((2.0, 2.0)) or np.any(np.all(np.isclose(grey.vertices, [2.0, 2.0]), axis=1))
    assert cbar.ax.get_yticklabels()[-1].get_text() == "> 5"
    notes = [t.get_text() for t in ax.texts if "blank" in t.get_text()]
    assert notes == ["blank: 2 of 25 points not finite"]  # the NaN and the -inf; +inf is drawn, above the clip
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)  # without a clip +inf cannot be drawn
    plot_plane(ax, x, y, loss, vmax=None)
    finish_layout(fig)
    assert [t.get_text() for t in ax.texts if "blank" in t.get_text()] == ["blank: 3 of 25 points not finite"]
    plt.close(fig)


@pytest.mark.parametrize("width", [None, 3.25])
def test_a_planes_note_covers_none_of_its_points_or_labels(tmp_path, width):
    """The note said where a plane is not to scale always sat in the lower right corner: at a column's width it
    covered the 'end' anchor and its label."""
    from landscape.plots.plane import load_plane_result, plane_metrics, plot_plane_result
    from landscape.plots.style import finish_layout, new_figure, set_figure_width

    folder = write_plane(tmp_path / "p")
    arrays, summary = load_plane_result(folder)
    arrays = dict(arrays, y=arrays["y"] / 8, anchor_xy=arrays["anchor_xy"] / [1, 8], mark_xy=arrays["mark_xy"] / [1, 8])
    arrays["anchor_xy"][1] = [arrays["x"].max() * 0.9, arrays["y"].min() * 0.9]  # an anchor in the lower right
    arrays["path_xy"] = None
    try:
        set_figure_width(width)
        for metric, label, vmax, log_alpha in plane_metrics(summary):
            fig, ax = new_figure(width=6.0, height=5.0)
            plot_plane_result(ax, arrays, summary, metric, label, vmax, log_alpha)
            finish_layout(fig)
            fig.draw_without_rendering()
            renderer = fig.canvas.get_renderer()
            (note,) = [t for t in ax.texts if "not to scale" in t.get_text()]
            box = note.get_window_extent(renderer)
            others = [t for t in ax.texts if t.get_text() and t is not note]
            assert len(others) >= 2
            for text in others:
                assert not box.overlaps(text.get_window_extent(renderer)), (width, metric, text.get_text())
            for marker in _marker_boxes(ax, renderer):
                assert not box.overlaps(marker), (width, metric)
            plt.close(fig)
    finally:
        set_figure_width(None)


def test_a_note_with_no_clear_place_goes_to_the_stretched_axis_label():
    """A path over the whole panel leaves no corner or edge clear: the note sat on the start marker and the
    path (the least covered place); the stretch belongs on the stretched axis's label then."""
    from landscape.plots.plane import plot_plane_points
    from landscape.plots.style import finish_layout, new_figure

    x, y = np.linspace(0, 20, 11), np.linspace(-0.3, 1.7, 11)  # 20 across, 2 up: stretched about 10x
    X, Y = np.meshgrid(x, y, indexing="ij")
    fig, ax = new_figure(width=6.0, height=5.0)
    plot_plane(ax, x, y, (X - 10) ** 2 / 100 + Y ** 2)
    t = np.linspace(0, 1, 400)
    zigzag = np.stack([20 * t, -0.3 + 2.0 * np.abs((t * 12) % 2 - 1)], axis=1)  # over every part of the panel
    plot_plane_points(ax, np.array([[0.0, 0.0], [20.0, 0.0]]), ["start", "end"], path_xy=zigzag, path_label="curve")
    finish_layout(fig)
    notes = [t.get_text() for t in ax.texts if "stretched" in t.get_text()]
    assert notes == [] and re.fullmatch(r"distance along v \(stretched \d+x\)", ax.get_ylabel()), ax.get_ylabel()
    plt.close(fig)


def test_plane_is_drawn_with_x_along_the_first_index():
    x, y = np.linspace(-1, 1, 21), np.linspace(-2, 2, 41)
    X, Y = np.meshgrid(x, y, indexing="ij")
    values = (X - 0.5) ** 2 + (Y + 1.0) ** 2  # minimum at (0.5, -1)
    fig, ax = plt.subplots()
    ax, _ = plot_plane(ax, x, y, values, colorbar=False)
    lowest_band = ax.collections[0].get_paths()[0].vertices  # the band between level 0 and 1
    np.testing.assert_allclose(lowest_band.mean(axis=0), [0.5, -1.0], atol=0.1)
    with pytest.raises(ValueError, match="shape"):
        plot_plane(ax, y, x, values)
    plt.close(fig)


@pytest.mark.parametrize("values", [np.full((5, 6), 0.3),
                                    np.where(np.eye(5, 6) > 0, np.nan, 1.0 + np.arange(30.0).reshape(5, 6)),
                                    np.full((5, 6), np.nan), np.full((5, 6), np.inf)])
def test_plane_draws_degenerate_data(values, tmp_path):
    fig, ax = plt.subplots()
    ax, cbar = plot_plane(ax, np.linspace(0, 1, 5), np.linspace(0, 1, 6), values, vmax=None)
    plot_plane_points(ax, np.array([[0, 0], [1, 0], [0.5, 1]]), ["a", "b", "c"])
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    plt.close(fig)


def test_a_grid_of_two_a_side_is_not_contoured():
    """A 2 x 2 plane drew clean bands, the bilinear blend of its corners, in which no anchor had its own
    colour: it now says the grid is too small, and its points are still marked."""
    x, y = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fig, ax = plt.subplots()
    _, cbar = plot_plane(ax, x, y, np.array([[0.1, 0.5], [0.3, 2.0]]), vmax=5.0)
    assert cbar is None and not ax.collections
    assert [t.get_text() for t in ax.texts] == ["grid too small to draw (2 x 2)"]
    plt.close(fig)


def test_plane_points_legend_only_with_labelled_artists():
    fig, ax = plt.subplots()
    plot_plane_points(ax, np.zeros((3, 2)), ["a", "b", "c"])
    assert ax.get_legend() is None
    plot_plane_points(ax, np.zeros((3, 2)), path_xy=np.ones((4, 2)), path_label="curve")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["curve"]
    plt.close(fig)


def test_rays_panels_share_the_y_axis(tmp_path):
    from landscape.plots.rays import _draw_metric, load_rays_result

    arrays, summary = load_rays_result(write_rays(tmp_path / "rays"))
    fig, axes = _draw_metric(arrays, summary, "train_loss", "train loss")
    assert len(axes) == 2
    assert axes[0].get_ylim() == axes[1].get_ylim()
    axes[1].set_ylim(0, 123)  # shared, not just equal
    assert axes[0].get_ylim() == (0, 123)
    assert "median width" in axes[0].get_title()
    assert axes[1].get_ylabel() == "" and not axes[1].yaxis.get_tick_params()["labelleft"]  # a row: one y axis
    plt.close(fig)
    fig, axes = _draw_metric(arrays, summary, "test_error", "test error (%)")
    assert "median train-loss width" in axes[0].get_title()  # the width is the train loss's, on every figure
    plt.close(fig)
    from landscape.plots.style import set_figure_width

    set_figure_width(3.25)  # a column: the panels stacked, each with its own y axis
    try:
        fig, axes = _draw_metric(arrays, summary, "train_loss", "train loss")
        assert [ax.get_ylabel() for ax in axes] == ["train loss", "train loss"]
        assert all(ax.yaxis.get_tick_params()["labelleft"] for ax in axes)
        assert axes[0].get_ylim() == axes[1].get_ylim()
        plt.close(fig)
    finally:
        set_figure_width(None)


def test_plot_rays_draws_one_line_per_ray_and_the_rise_level():
    d = np.linspace(-1, 1, 11)
    values = np.stack([d ** 2, 2 * d ** 2, np.where(d > 0.5, np.inf, d ** 2)])
    fig, ax = plt.subplots()
    assert plot_rays(ax, d, values, color="C0", label="SGD", center_value=0.0, rise=0.5) is ax
    ray_lines = [l for l in ax.get_lines() if len(l.get_xdata()) == d.size]
    assert len(ray_lines) == 3
    assert any(np.allclose(l.get_ydata(), 0.5) and l.get_linestyle() == "--" for l in ax.get_lines())
    assert ax.get_legend_handles_labels()[1] == ["SGD", "centre + 0.5"]
    plt.close(fig)


def test_shared_limits_cap_a_diverged_ray():
    lo, hi = shared_limits(np.array([0.0, 1.0, 1e6, np.inf]), cap=5.0)
    assert lo < 0.0 and 5.0 < hi < 6.0
    assert shared_limits(np.full(3, np.nan)) == (0.0, 1.0)


def _write_simplex(folder, vertices):
    """A stored simplex result as landscape simplex writes it (face arrays only with a triangle)."""
    from landscape.curves.simplex import face_grid
    from landscape.checkpoint import write_json, write_npz

    folder.mkdir(parents=True)
    arrays = {"sample_train_loss": np.linspace(0.1, 0.3, 4)}
    if vertices >= 3:
        bary = face_grid(4).numpy()
        arrays.update(face_barycentric=bary, face_train_loss=0.1 + bary[:, 0], face_test_error=5 + 10 * bary[:, 1])
    write_npz(folder / "simplex.npz", arrays)
    write_json(folder / "simplex_summary.json", {"eval_split": "test", "face_labels": ["mode", "v1", "v2"]})


def test_plot_redraws_every_espro_component_and_says_why_a_segment_has_no_figure(tmp_path, capsys):
    from landscape import cli
    for i in (1, 2, 10):
        _write_simplex(tmp_path / "espro" / f"component-{i}", 3)
    assert cli.main(["plot", str(tmp_path / "espro")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"figure: {tmp_path / 'espro' / f'component-{i}' / 'simplex_face.png'}" for i in (1, 2, 10)]
    _write_simplex(tmp_path / "segment", 2)
    assert cli.main(["plot", str(tmp_path / "segment")]) == 0
    assert capsys.readouterr().err.strip() == (f"{tmp_path / 'segment'}: no figure: a simplex of two vertices has no "
                                               f"triangular face to draw")


# ------------------------------------------------------------ comparisons
def write_curve(folder, *, kind="bezier", bends=1, points=21, bump=0.02, line_scale=1.0, split="test"):
    """A stored curve result: the line's train loss 0.1 + 0.8 line_scale sin(pi t)^2, the
    curve's 0.1 + bump sin(pi t)^2 (errors 5 + 20 x loss), as ``landscape curve`` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.linspace(0, 1, points)
    hump = np.sin(np.pi * t) ** 2
    arrays = {"t": t}
    for path, height in (("curve", bump), ("line", 0.8 * line_scale)):
        loss = 0.1 + height * hump
        arrays.update({f"{path}_train_loss": loss, f"{path}_train_nll": loss, f"{path}_train_error": 2 + 10 * loss,
                       f"{path}_test_nll": 1.1 * loss, f"{path}_test_error": 5 + 20 * loss})
    np.savez(folder / "curve.npz", **arrays)
    summary = {"curve_type": kind, "bends": bends, "eval_split": split, "synthetic": False,
               "curve": {"train_loss_barrier": bump, "test_error_barrier": 20 * bump},
               "line": {"train_loss_barrier": 0.8 * line_scale, "test_error_barrier": 16 * line_scale}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_a_loss_along_a_path_spanning_decades_is_drawn_on_a_log_axis(tmp_path):
    """A line rising 160-fold above its ends flattened the curve's own rise into the floor of a linear axis;
    the papers' linear axis stays below 100-fold, and errors stay linear."""
    from landscape.plots.curve import load_curve_result, plot_curve_metric
    from landscape.plots.rays import plot_line_metric

    scales = {}
    for line_scale in (1.0, 20.0):  # the line's loss rises to 0.9 (9x its ends) or 16.1 (161x)
        arrays, summary = load_curve_result(write_curve(tmp_path / f"c{line_scale}", line_scale=line_scale))
        fig, (a, b) = plt.subplots(1, 2)
        plot_curve_metric(a, arrays, "train_loss", "train loss", summary)
        arrays["line_test_error"] = arrays["line_test_error"] * 50  # 300-fold: an error stays linear all the same
        plot_curve_metric(b, arrays, "test_error", "test error (%)", summary)
        scales[line_scale] = (a.get_yscale(), b.get_yscale())
        plt.close(fig)
    assert scales == {1.0: ("linear", "linear"), 20.0: ("log", "linear")}
    fig, ax = plt.subplots()  # the width report's line through its centres, a NaN left out
    d = np.linspace(-10, 10, 21)
    plot_line_metric(ax, d, np.where(d == 5, np.nan, 0.01 + d ** 2), np.array([0.0]), ["SWA"], ["C0"], "loss",
                     log_when_spread=True)
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_a_curve_figure_says_how_many_points_are_not_finite(tmp_path, monkeypatch):
    """NaN points drew gaps in the lines without a word."""
    import landscape.plots.curve as curve_plots

    folder = write_curve(tmp_path / "c")
    with np.load(folder / "curve.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["line_train_loss"][[9, 10]] = [np.nan, np.inf]
    np.savez(folder / "curve.npz", **arrays)
    drawn = []
    monkeypatch.setattr(curve_plots, "save_figure", lambda fig, stem, formats: drawn.append(fig) or [])
    curve_plots.draw_curve_figure(folder)
    loss, error = drawn[0].axes[:2]
    assert loss.get_title().endswith("\n2 points not finite: gaps in the lines")
    assert "not finite" not in error.get_title()
    plt.close(drawn[0])


def test_an_swa_figures_epoch_axis_has_whole_epochs_only(tmp_path, monkeypatch):
    """Three epochs were ticked 1, 1.25, 1.5, ..."""
    import landscape.plots.swa as swa_plots

    (tmp_path / "config.json").write_text(json.dumps({"command": "swa", "config": {"swa_lr": 0.05}}))
    records = [{"epoch": e, "test_error": 2.0 - 0.1 * e, "test_nll": 0.07, "swa_test_error": 1.4,
                "swa_test_nll": 0.06} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = []
    monkeypatch.setattr(swa_plots, "save_figure", lambda fig, stem, formats: drawn.append(fig) or [])
    swa_plots.draw_swa_figure(tmp_path)
    (fig,) = drawn
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0, 2.0, 3.0], ticks
    plt.close(fig)


def test_error_axes_start_at_zero_where_a_difference_is_an_image_or_two(tmp_path, monkeypatch):
    """SWA's figure and a comparison of model averages drew 0.28 % against 0.83 % (two images) as the
    panel's whole height, and a constant error with ticks 0.265 ... 0.290."""
    import landscape.plots.swa as swa_plots
    from landscape.plots.swag import compare_averages

    (tmp_path / "config.json").write_text(json.dumps({"command": "swa", "config": {"swa_lr": 0.05}}))
    records = [{"epoch": e, "test_error": 0.83 if e == 2 else 0.28, "test_nll": 0.07, "swa_test_error": 0.28,
                "swa_test_nll": 0.06} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = []
    monkeypatch.setattr(swa_plots, "save_figure", lambda fig, stem, formats: drawn.append(fig) or [])
    swa_plots.draw_swa_figure(tmp_path)
    error = drawn[0].axes[0]
    assert error.get_ylabel() == "test error (%)" and error.get_ylim() == pytest.approx((-0.03, 1.0))
    plt.close(drawn[0])
    arrays = {"bma_test_nll": np.array([0.3, 0.25]), "bma_test_error": np.array([0.28, 0.56]),
              "mean_test_nll": 0.2, "mean_test_error": 0.28}
    fig = compare_averages([(arrays, {"method": "swag"}), (dict(arrays, bma_test_error=np.array([2.0, 2.2])),
                                                          {"method": "subspace"})], ["a", "b"])
    assert fig.axes[1].get_ylim() == pytest.approx((-0.03 * 2.53, 2.53))  # 1.15 x the largest, 2.2
    plt.close(fig)


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_between_the_same_endpoints_share_one_line_drawn_from_the_densest_result(tmp_path):
    from landscape.plots.compare import _load
    from landscape.plots.curve import compare_curves

    a = write_curve(tmp_path / "bezier", points=21, bump=0.02)
    b = write_curve(tmp_path / "chain", kind="polychain", bends=3, points=41, bump=0.05)
    results = [_load(a, "curve"), _load(b, "curve")]
    fig = compare_curves(results, ["bezier (1 bend)", "polychain (3 bends)"])
    try:
        for ax, metric in zip(fig.axes[:2], ("train_loss", "test_error")):
            lines = _lines(ax)
            assert sorted(lines) == ["bezier (1 bend)", "polychain (3 bends)", "straight line"]
            shared = lines["straight line"]
            np.testing.assert_array_equal(shared.get_xdata(), results[1][0]["t"])  # the 41-point line
            np.testing.assert_array_equal(shared.get_ydata(), results[1][0][f"line_{metric}"])
            for label, (arrays, _) in zip(("bezier (1 bend)", "polychain (3 bends)"), results):
                np.testing.assert_array_equal(lines[label].get_ydata(), arrays[f"curve_{metric}"])
            assert lines["bezier (1 bend)"].get_color() != lines["polychain (3 bends)"].get_color()
            # told apart without colour (grey print): each its own marker, a few along it, not at the same t
            a_line, b_line = lines["bezier (1 bend)"], lines["polychain (3 bends)"]
            assert a_line.get_marker() != b_line.get_marker() and "None" not in (a_line.get_marker(),
                                                                                 b_line.get_marker())
            a_marked = set(np.asarray(a_line.get_xdata())[a_line.get_markevery()[0]::a_line.get_markevery()[1]])
            b_marked = set(np.asarray(b_line.get_xdata())[b_line.get_markevery()[0]::b_line.get_markevery()[1]])
            assert 5 <= len(a_marked) <= 12 and 5 <= len(b_marked) <= 12
        assert fig.axes[1].get_ylabel() == "test error (%)"
    finally:
        plt.close(fig)


def test_curves_between_other_endpoints_each_get_their_own_line(tmp_path):
    from landscape.plots.compare import _load
    from landscape.plots.curve import compare_curves, line_groups

    a = write_curve(tmp_path / "a")
    b = write_curve(tmp_path / "b", line_scale=1.5)  # same ends, another line between them ...
    assert line_groups([_load(a, "curve"), _load(b, "curve")]) == [[0, 1]]  # ... is the same pair of ends
    arrays = dict(np.load(b / "curve.npz"))
    arrays["line_test_nll"] = arrays["line_test_nll"] * 1.01  # other networks at the ends
    np.savez(b / "curve.npz", **arrays)
    results = [_load(a, "curve"), _load(b, "curve")]
    assert line_groups(results) == [[0], [1]]
    fig = compare_curves(results, ["A", "B"])
    try:
        lines = _lines(fig.axes[0])
        assert sorted(lines) == ["A", "B", "straight line: A", "straight line: B"]
        np.testing.assert_array_equal(lines["straight line: B"].get_ydata(), results[1][0]["line_train_loss"])
        assert lines["straight line: A"].get_color() == lines["A"].get_color()
    finally:
        plt.close(fig)
    # A third curve between A's endpoints shares A's line: one line per pair of endpoints, from the densest
    c = write_curve(tmp_path / "c", kind="polychain", points=41)
    results.append(_load(c, "curve"))
    fig = compare_curves(results, ["A", "B", "C"])
    try:
        lines = _lines(fig.axes[1])
        assert sorted(lines) == ["A", "B", "C", "straight line: A, C", "straight line: B"]
        np.testing.assert_array_equal(lines["straight line: A, C"].get_ydata(), results[2][0]["line_test_error"])
    finally:
        plt.close(fig)


def test_planes_side_by_side_one_column_per_result(tmp_path):
    from landscape.plots.compare import _load
    from landscape.plots.plane import compare_planes

    a = write_plane(tmp_path / "bezier", synthetic=False)
    b = write_plane(tmp_path / "line", synthetic=False, with_extras=False)
    arrays = dict(np.load(b / "plane.npz"))
    arrays["x"] = arrays["x"] * 2  # another extent, so the panels tell the results apart
    arrays["train_loss"] = 0.5 * arrays["train_loss"] + 0.01  # another range: the levels must still be shared
    np.savez(b / "plane.npz", **arrays)
    results = [_load(a, "plane"), _load(b, "plane")]
    fig = compare_planes(results, ["Bezier", "independent optima"])
    try:
        fig.canvas.draw()
        bars = [ax for ax in fig.axes if not ax.get_title()]  # the colorbars, column by column
        ticks = [[t.get_text() for t in bar.get_yticklabels()] for bar in bars]
        assert ticks[0] == ticks[2] and ticks[1] == ticks[3]  # one colour is one value in both panels of a metric
        assert ticks[0] != ticks[1]
        low = min(float(r["train_loss"].min()) for r, _ in results)
        assert float(ticks[0][0]) == pytest.approx(low, rel=0.05)  # the levels start at the lower of the two
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in panels] == ["Bezier: train loss", "independent optima: train loss",
                                                     "test error (%)", "test error (%)"]  # row by row
        for ax, (res, _) in zip(panels, results * 2):
            assert ax.get_xlim() == pytest.approx((res["x"].min(), res["x"].max()))
        # the first result's curve is drawn in both its panels, the second has none
        assert [bool(_lines(ax).get("Bezier curve")) for ax in panels] == [True, False, True, False]
        assert len(fig.axes) == 8  # four panels, four colorbars
    finally:
        plt.close(fig)


def test_planes_compared_at_a_papers_width_take_a_row_each(tmp_path):
    from landscape.plots.compare import _load
    from landscape.plots.plane import compare_planes
    from landscape.plots.style import set_figure_width

    every = [_load(write_plane(tmp_path / name, synthetic=False), "plane") for name in ("a", "b", "c", "d")]
    try:
        # a page: a row per result; a column: stacked; 9.5 inches (three panels would fit): still a row per result
        for width, per_row, n in ((6.75, 2, 3), (3.25, 1, 2), (9.5, 2, 4)):
            set_figure_width(width)
            results, labels = every[:n], ["A", "B", "C", "D"][:n]
            fig = compare_planes(results, labels)
            try:
                fig.canvas.draw()
                assert fig.get_size_inches()[0] == pytest.approx(width) and fig.get_size_inches()[1] <= 9.0 + 1e-9
                panels = [ax for ax in fig.axes if ax.get_title()]
                # reading order: each result's train loss, then its test error, every title naming its result
                assert [ax.get_title() for ax in panels] == [f"{x}: {m}" for x in labels
                                                             for m in ("train loss", "test error (%)")]
                boxes = [ax.get_position() for ax in panels]
                rows = [boxes[i:i + per_row] for i in range(0, 2 * n, per_row)]
                for row in rows:  # one row of the grid: side by side
                    assert [b.y0 for b in row] == pytest.approx([row[0].y0] * len(row), abs=0.02)
                assert all(r[0].y0 > below[0].y0 for r, below in zip(rows, rows[1:]))  # rows top to bottom
            finally:
                plt.close(fig)
    finally:
        set_figure_width(None)


def test_default_labels_fall_back_to_the_folders_when_they_would_repeat(tmp_path):
    from landscape.plots.compare import default_labels

    folders = [tmp_path / "x" / "run1", tmp_path / "y" / "run1", tmp_path / "run2"]
    bezier = {"curve_type": "bezier", "bends": 1}
    assert default_labels(folders[1:], [bezier, {"curve_type": "polychain", "bends": 2}], "curve") == [
        "bezier (1 bend)", "polychain (2 bends)"]
    assert default_labels(folders[1:], [bezier, bezier], "curve") == ["run1", "run2"]
    assert default_labels(folders[:2], [bezier, bezier], "curve") == ["x/run1", "y/run1"]  # the parts that differ
    assert default_labels(folders[1:], [{"path_label": "bezier curve"}, {}], "plane") == ["bezier curve", "run2"]


def test_plot_compares_several_folders_from_the_command_line(tmp_path, capsys):
    from landscape import cli
    a = write_curve(tmp_path / "bezier")
    b = write_curve(tmp_path / "chain", kind="polychain", bends=2)
    out = tmp_path / "figs" / "ab"
    assert cli.main(["plot", str(a), str(b), "--out", str(out), "--format", "png", "pdf"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"figure: {out / 'curves.png'}", f"figure: {out / 'curves.pdf'}"]
    assert_valid_files([out / "curves.png", out / "curves.pdf"], ["curves.png", "curves.pdf"], out)
    p, q = write_plane(tmp_path / "p1"), write_plane(tmp_path / "p2")
    assert cli.main(["plot", str(p), str(q), "--out", str(out), "--labels", "one", "two"]) == 0
    assert_valid_files([out / "planes.png"], ["planes.png"], out)
    assert not plt.get_fignums(), "figures left open"


def test_plot_refuses_a_comparison_it_cannot_draw_in_one_line(tmp_path, capsys):
    from landscape import cli
    a, b = write_curve(tmp_path / "a"), write_curve(tmp_path / "b", kind="polychain")
    p = write_plane(tmp_path / "p")
    v = write_curve(tmp_path / "v", split="validation")
    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "out")
    w = write_curve(tmp_path / "w")
    summary = json.loads((w / "summary.json").read_text())
    (w / "summary.json").write_text(json.dumps(dict(summary, wd=5e-4)))
    (a / "summary.json").write_text(json.dumps(dict(json.loads((a / "summary.json").read_text()), wd=3e-4)))
    digits = {"name": "digits", "eval_split": "test", "n_train": 1437, "n_test": 360, "augment": False}
    m = write_curve(tmp_path / "m")
    (m / "summary.json").write_text(json.dumps(dict(summary, dataset=dict(digits, name="mnist", n_train=60000))))
    (b / "summary.json").write_text(json.dumps(dict(json.loads((b / "summary.json").read_text()),
                                                    dataset=dict(digits, augment=True))))  # augment: training only
    n = write_curve(tmp_path / "n")  # the same data, normalised otherwise: the message must tell them apart
    (n / "summary.json").write_text(json.dumps(dict(summary, dataset=dict(digits, normalization="0.5/0.25"))))
    cases = [
        ([str(a), str(b)], "several result folders make one comparison figure: give --out FOLDER for it"),
        ([str(a), str(b), "--out", out, "--labels", "x", "x"], "--labels names two results alike (x, x)"),
        ([str(a), str(b), "--out", out, "--labels", "x", ""], "--labels '': a legend leaves out an empty label"),
        ([str(a), str(b), "--out", out, "--labels", "_x", "y"], "--labels '_x': a legend leaves out"),
        ([str(a), str(b), "--out", out, "--labels", "$a_$", "y"], "--labels '$a_$': its $...$ is not valid mathtext"),
        ([str(a), str(w), "--out", out], f"{a}'s train loss has weight decay 0.0003 and {w}'s 0.0005: not comparable"),
        ([str(b), str(m), "--out", out], f"{b} was evaluated on 'digits' (1437 train / 360 test) and {m} on "
                                         f"'mnist' (60000 train / 360 test)"),
        ([str(b), str(n), "--out", out], f"{b} was evaluated on 'digits' (1437 train / 360 test) and {n} on "
                                         f"'digits' (1437 train / 360 test, normalization 0.5/0.25)"),
        ([str(a), "--labels", "x"], "--labels are for a figure comparing several result folders"),
        ([str(a), "--out", str(b)], f"--out {b} holds results of its own (curve.npz, summary.json), whose figures "),
        ([str(a), str(b), "--out", out, "--labels", "x"], "--labels gives 1 label for 2 result folders"),
        ([str(a), str(tmp_path / "a"), "--out", out], f"{tmp_path / 'a'} is given twice"),
        ([str(a), str(p), "--out", out], f"{a} holds a curve and {p} a plane"),
        ([str(a), str(v), "--out", out], f"{a} was evaluated on the test split and {v} on the validation split"),
        ([str(a), str(b), "--out", str(tmp_path / "file")], "is a file; give a folder for the figure"),
        ([str(a), str(tmp_path), "--out", out], f"{tmp_path}: no curve.npz, plane.npz or model average"),
    ]
    for argv, message in cases:
        assert cli.main(["plot", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert not (tmp_path / "out").exists()  # nothing written by a refused comparison
    assert cli.main(["plot", str(a), str(b), "--out", out, "--labels", "cost $5", r"$\theta_1$"]) == 0  # a lone $ is text
    capsys.readouterr()
    arrays = dict(np.load(b / "curve.npz"))
    del arrays["line_test_error"]
    np.savez(b / "curve.npz", **arrays)
    assert cli.main(["plot", str(a), str(b), "--out", out]) == 2
    assert f"{b / 'curve.npz'}: lacks 'line_test_error'" in capsys.readouterr().err


def write_average(folder, file, summary, *, samples=6, nll0=0.05, centre=True):
    """A stored model average (swag.npz, subspace.npz, variational.npz): test NLL
    nll0 (1 + 1/s) and error 2 + 1/s after s samples; a centre's metrics unless
    ``centre`` is False (subspace results keep none)."""
    folder.mkdir(parents=True, exist_ok=True)
    s = np.arange(1, samples + 1)
    arrays = {"bma_test_nll": nll0 * (1 + 1 / s), "bma_test_error": 2 + 1 / s,
              "sample_test_nll": np.full(samples, 3 * nll0), "sample_test_error": np.full(samples, 4.0)}
    if centre:
        arrays.update(mean_test_nll=np.array(1.5 * nll0), mean_test_error=np.array(3.0))
    np.savez(folder / file, **arrays)
    (folder / "summary.json").write_text(json.dumps(dict(summary, eval_split="test", synthetic=False)))
    return folder


def test_model_averages_compared_on_one_pair_of_axes(tmp_path):
    from landscape.plots.compare import _load, default_labels
    from landscape.plots.swag import average_label, compare_averages

    swag = write_average(tmp_path / "swag", "swag.npz", {"method": "SWAG", "rank": 10, "scale": 0.5, "diag": False})
    sub = write_average(tmp_path / "sub", "subspace.npz", {"method": "ess", "basis": "pca", "rank": 2},
                        samples=4, nll0=0.04, centre=False)
    vi = write_average(tmp_path / "vi", "variational.npz", {"method": "VI", "family": "weight"}, nll0=0.5)
    results = [_load(swag, "average", "swag.npz"), _load(sub, "average", "subspace.npz"),
               _load(vi, "average", "variational.npz")]
    labels = default_labels([swag, sub, vi], [s for _, s in results], "average")
    assert labels == ["SWAG (rank 10, scale 0.5)", "ESS in the PCA subspace", "VI (weight)"]
    assert average_label({"method": "SWAG", "scale": 1.0, "diag": True}) == "SWAG-diag (scale 1.0)"
    fig = compare_averages(results, labels)
    try:
        for ax, key in zip(fig.axes[:2], ("test_nll", "test_error")):
            lines = _lines(ax)
            assert sorted(lines) == sorted(labels + ["SWAG (rank 10, scale 0.5): SWA", "VI (weight): the means"])
            for label, (arrays, _) in zip(labels, results):
                np.testing.assert_array_equal(lines[label].get_ydata(), arrays[f"bma_{key}"])
                np.testing.assert_array_equal(lines[label].get_xdata(), np.arange(1, len(arrays[f"bma_{key}"]) + 1))
            assert lines["VI (weight): the means"].get_ydata()[0] == pytest.approx(float(results[2][0][f"mean_{key}"]))
        assert fig.axes[0].get_yscale() == "log"  # NLLs 0.04 .. 1.0 differ more than 5-fold
        assert fig.axes[1].get_yscale() == "linear"
    finally:
        plt.close(fig)


def test_plot_compares_model_averages_and_refuses_them_beside_a_curve(tmp_path, capsys):
    from landscape import cli
    swag = write_average(tmp_path / "swag", "swag.npz", {"method": "SWAG", "rank": 10, "scale": 0.5, "diag": False})
    vi = write_average(tmp_path / "vi", "variational.npz", {"method": "HWA", "family": "weight"})
    out = tmp_path / "fig"
    assert cli.main(["plot", str(swag), str(vi), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"figure: {out / 'averages.png'}"
    assert_valid_files([out / "averages.png"], ["averages.png"], out)
    curve = write_curve(tmp_path / "curve")
    assert cli.main(["plot", str(swag), str(curve), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"{swag} holds a model average and {curve} a curve; one figure compares results of one kind")


def test_a_comparison_folder_is_redrawn_by_plot_from_its_record(tmp_path, capsys):
    """plot A B --out DIR records what it drew (DIR/curves.json, the folders relative to DIR), so
    `plot DIR` redraws it, after the whole tree has moved too; a damaged record or a folder gone is one line."""
    from landscape import cli
    a = write_curve(tmp_path / "runs" / "a")
    b = write_curve(tmp_path / "runs" / "b", kind="polychain")
    p, q = write_plane(tmp_path / "runs" / "p"), write_plane(tmp_path / "runs" / "q")
    fig = tmp_path / "runs" / "fig"
    assert cli.main(["plot", str(a), str(b), "--out", str(fig), "--labels", "A", "B"]) == 0
    assert cli.main(["plot", str(p), str(q), "--out", str(fig)]) == 0
    record = json.loads((fig / "curves.json").read_text())
    assert record == {"kind": "curve", "results": ["../a", "../b"], "given": ["../a", "../b"], "labels": ["A", "B"]}
    assert json.loads((fig / "planes.json").read_text())["labels"] is None  # the defaults, found again
    (tmp_path / "runs").rename(tmp_path / "moved")
    fig = tmp_path / "moved" / "fig"
    for f in fig.glob("*.png"):
        f.unlink()
    capsys.readouterr()
    assert cli.main(["plot", str(fig), "--format", "pdf"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"figure: {fig / 'curves.pdf'}", f"figure: {fig / 'planes.pdf'}"]
    assert_valid_files([fig / "curves.pdf", fig / "planes.pdf"], ["curves.pdf", "planes.pdf"], fig)
    assert json.loads((fig / "curves.json").read_text()) == record  # the redraw keeps the labels
    (fig / "planes.json").write_text(json.dumps({"kind": "plane", "results": "../p"}))
    assert cli.main(["plot", str(fig)]) == 2
    assert "planes.json: not a record of a comparison" in capsys.readouterr().err
    (fig / "planes.json").unlink()
    (tmp_path / "moved" / "b").rename(tmp_path / "moved" / "b2")
    assert cli.main(["plot", str(fig)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"curves.json names {tmp_path / 'moved' / 'b'}, which is not a folder" in err


def test_a_comparison_of_linked_or_like_named_folders_redraws_as_drawn_in_a_copy_that_followed_the_links(
        tmp_path, capsys, monkeypatch):
    """The record named the folders' link targets: a paper's folder of links to results, zipped (which
    follows the links), said "curves.json names moved_runs/ab-eval, which is not a folder", and a redraw
    titled the panels by the targets' names, or by "fig/../../r1/ab" where two folders share a name
    (labels that depended on where plot ran). The folders are recorded as given too, and the default
    labels are the folders' last parts that tell them apart ("." its folder's name, not an empty label),
    so a redraw finds them again, and follows the results (a curve replaced by another kind is labelled
    as it is now). A comparison folder that cannot be written is told the command that draws it
    elsewhere (a copy of it alone would not find its results)."""
    import errno
    import shutil
    from pathlib import Path

    import landscape.plots.compare as compare
    import landscape.plots.style as style
    from landscape import cli

    drawn = []
    for kind in ("curve", "plane"):
        spec = compare.COMPARABLE[kind]
        monkeypatch.setitem(compare.COMPARABLE, kind, spec._replace(
            draw=lambda results, labels, draw=spec.draw: (drawn.append(list(labels)), draw(results, labels))[1]))
    write_curve(tmp_path / "store" / "new")
    write_curve(tmp_path / "store" / "old", kind="polychain")
    (tmp_path / "paper" / "results").mkdir(parents=True)
    for name, target in (("ours", "new"), ("theirs", "old")):
        (tmp_path / "paper" / "results" / name).symlink_to(Path("../../store") / target)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["plot", "paper/results/ours", "paper/results/theirs", "--out", "paper/fig"]) == 0
    record = json.loads(Path("paper/fig/curves.json").read_text())
    assert record["given"] == ["../results/ours", "../results/theirs"] and record["labels"] is None
    shutil.copytree("paper", "laptop/paper")  # following the links, as zip does
    capsys.readouterr()
    assert cli.main(["plot", "laptop/paper/fig"]) == 0, capsys.readouterr().err
    assert drawn[-1] == drawn[0]
    write_curve(tmp_path / "laptop" / "paper" / "results" / "theirs", kind="bezier", bends=2)  # replaced
    assert cli.main(["plot", "laptop/paper/fig"]) == 0
    assert drawn[-1][1] != drawn[0][1]

    for run in ("r1", "r2"):
        write_plane(tmp_path / run / "ab")
    assert cli.main(["plot", "r1/ab", "r2/ab", "--out", "figs/cmp"]) == 0
    assert drawn[-1] == ["r1/ab", "r2/ab"]
    monkeypatch.chdir(tmp_path / "figs")  # redrawn from elsewhere
    assert cli.main(["plot", "cmp"]) == 0
    assert drawn[-1] == ["r1/ab", "r2/ab"]  # not "cmp/../../r1/ab"
    monkeypatch.chdir(tmp_path / "r1" / "ab")
    assert cli.main(["plot", ".", "../../r2/ab", "--out", "../../figs/dot"]) == 0
    assert drawn[-1] == ["r1/ab", "r2/ab"]  # "." by its name: an empty label was refused on redrawing
    assert cli.main(["plot", "../../figs/dot"]) == 0 and drawn[-1] == ["r1/ab", "r2/ab"]
    monkeypatch.chdir(tmp_path)  # a link then "..": the kernel goes to the link's target's parent, the text not
    write_curve(tmp_path / "links" / "old", kind="bezier", bends=2)  # what the text names
    (tmp_path / "links" / "x").symlink_to("../store/new")
    assert cli.main(["plot", "links/x/../old", "store/new", "--out", "figs/lk"]) == 0
    first = drawn[-1]
    assert cli.main(["plot", "figs/lk"]) == 0 and drawn[-1] == first  # the folder read, not links/old
    monkeypatch.chdir(tmp_path / "figs")

    def read_only(write, path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(style, "atomic_save", read_only)
    capsys.readouterr()
    assert cli.main(["plot", "cmp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("landscape: error: cmp/planes.png: Read-only file system; draw the comparison in a folder you "
                   "can write: landscape plot ../r1/ab ../r2/ab --out NEW_FOLDER"), err


def test_a_model_average_panel_keeps_every_line_visible_and_errors_from_zero():
    from landscape.plots.swag import plot_model_average

    fig, ax = plt.subplots()
    same = np.full(5, 0.28)  # the average, the centre and a sample all at one image wrong in 360
    plot_model_average(ax, same, 0.28, 0.28, label="average", centre_label="centre", ylabel="error (%)",
                       from_zero=True)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["average"].get_zorder() > lines["centre"].get_zorder()  # drawn over the centre's line
    assert lines["average"].get_linewidth() < lines["centre"].get_linewidth()  # which still shows around it
    lo, hi = ax.get_ylim()
    assert -0.05 * hi < lo < 0.0 and hi >= 1.0  # from 0 (a 0 % line above the axis), not a 0.265-0.29 axis
    assert ax.get_xlim() == (0.5, 5.5)  # the first and last markers whole
    plt.close(fig)


def test_plot_width_draws_figures_to_a_papers_width_with_8_pt_text(tmp_path, capsys):
    from landscape import cli
    folder = write_curve(tmp_path / "c")
    assert cli.main(["plot", str(folder), "--width", "3.25"]) == 0
    image = matplotlib.image.imread(folder / "curve.png")
    assert abs(image.shape[1] - 3.25 * 150) <= 1  # 3.25 inches at the figures' 150 dpi
    assert matplotlib.rcParams["font.size"] == 10.0  # put back for the figures drawn after
    assert cli.main(["plot", str(folder)]) == 0
    assert abs(matplotlib.image.imread(folder / "curve.png").shape[1] - 10.0 * 150) <= 1  # the figure's own size
    from landscape.plots.style import fs, set_figure_width

    set_figure_width(6.75)
    try:
        assert fs(10) == 8.0 and fs(9) == pytest.approx(7.2)  # every size written for 10-pt text scales with it
    finally:
        set_figure_width(None)
    assert fs(10) == 10.0
    assert cli.main(["plot", str(folder), "--width", "0.5"]) == 2
    assert "--width must be between 2.5 and 20 inches, got 0.5 (narrower, 8-pt" in capsys.readouterr().err
    assert cli.main(["plot", str(folder), "--width", "2"]) == 2  # titles broke a word a line, labels were clipped
    assert "got 2.0" in capsys.readouterr().err


def test_lines_and_markers_thin_with_the_text_at_a_papers_width(tmp_path):
    from landscape.plots.style import finish_layout, legend_below, new_figure, save_figure, set_figure_width

    def draw():
        fig, ax = new_figure(width=6.0, height=4.0)
        ax.plot([0, 1], [0, 1], lw=2, marker="o", ms=6, label="line")
        ax.scatter([0.5], [0.5], s=60, linewidths=1.5, label="dot")
        ax.contour(np.arange(4), np.arange(3), np.arange(12.0).reshape(3, 4), linewidths=2.5)
        legend_below(fig, ax)
        return fig, ax

    def widths(fig, ax):
        line, dot, contour = ax.get_lines()[0], ax.collections[0], ax.collections[1]
        handles = fig.legends[0].legend_handles
        return (line.get_linewidth(), line.get_markersize(), float(dot.get_sizes()[0]),
                float(dot.get_linewidths()[0]), float(contour.get_linewidths()[0]), handles[0].get_linewidth(),
                float(handles[1].get_sizes()[0]))

    fig, ax = draw()
    save_figure(fig, tmp_path / "own", ("png",))
    own = widths(fig, ax)
    assert own[:5] == pytest.approx((2.0, 6.0, 60.0, 1.5, 2.5))  # at its own size: as written
    try:
        set_figure_width(3.25)
        fig, ax = draw()
        save_figure(fig, tmp_path / "paper", ("png", "pdf"))
        scale = [0.8, 0.8, 0.64, 0.8, 0.8, 0.8, 0.64]  # with the text, 8 pt of 10; a marker's area squared
        assert widths(fig, ax) == pytest.approx([w * k for w, k in zip(own, scale)])
        finish_layout(fig)  # a figure's layout finished again (a caller saving it once more): thinned once
        assert widths(fig, ax) == pytest.approx([w * k for w, k in zip(own, scale)])
        fig, ax = new_figure(width=6.0, height=4.0)
        thin, fine = ax.plot([0, 1], [0, 1], lw=0.6)[0], ax.plot([0, 1], [1, 0], lw=0.9)[0]
        save_figure(fig, tmp_path / "thin", ("png",))
        assert (thin.get_linewidth(), fine.get_linewidth()) == pytest.approx((0.6, 0.8))  # none below 0.8 pt
    finally:
        set_figure_width(None)


def test_a_row_of_panels_wraps_at_a_papers_width_and_keeps_its_order():
    from landscape.plots.style import new_figure, set_figure_width

    fig, axes = new_figure(1, 3, width=15.0, height=3.8)  # its own size: one row
    assert fig.get_size_inches() == pytest.approx((15.0, 3.8)) and len(axes) == 3
    plt.close(fig)
    try:
        set_figure_width(3.25)  # a column: stacked, each panel as shaped as at its own size (5 x 3.8)
        fig, axes = new_figure(1, 3, width=15.0, height=3.8)
        boxes = [ax.get_position() for ax in axes]
        assert fig.get_size_inches() == pytest.approx((3.25, 3 * 3.25 * 3.8 / 5.0))
        assert [b.x0 for b in boxes] == pytest.approx([boxes[0].x0] * 3) and boxes[0].y0 > boxes[1].y0 > boxes[2].y0
        plt.close(fig)
        set_figure_width(6.75)  # a page: two a row, the empty place removed; four panels in 2 x 2
        fig, axes = new_figure(1, 3, width=15.0, height=3.8)
        assert len(axes) == 3 and len(fig.axes) == 3
        b = [ax.get_position() for ax in axes]
        assert b[0].y0 == pytest.approx(b[1].y0) and b[2].y0 < b[0].y0 and b[2].x0 == pytest.approx(b[0].x0)
        plt.close(fig)
        fig, axes = new_figure(1, 2, width=10.0, height=3.8)  # two panels fit a page's width: one row, as before
        assert fig.get_size_inches() == pytest.approx((6.75, 3.8 * 6.75 / 10.0))
        plt.close(fig)
        fig, _ = new_figure(1, 4, width=4.0, height=8.0)  # tall panels: the whole at most a page tall
        assert fig.get_size_inches()[1] <= 9.0 + 1e-9
        plt.close(fig)
    finally:
        set_figure_width(None)


def test_titles_and_legends_fit_the_figures_width():
    from landscape.plots.style import legend_below, wrap_titles

    fig, (a, b) = plt.subplots(1, 2, figsize=(3.25, 2.0))
    a.set_title("train loss barrier: curve 0.0277, line 0.857, and more words than fit")
    b.set_title("short")
    fig.suptitle("SWAG, scale 0.5, rank 10: 30 samples, test NLL 0.0236, error 0.28% and more")
    for i in range(4):
        a.plot([0, 1], [i, i], label=f"a rather long legend entry number {i}")
    wrap_titles(fig)
    assert "\n" in a.get_title() and b.get_title() == "short" and "\n" in fig._suptitle.get_text()
    assert a.get_title().replace("\n", " ") == "train loss barrier: curve 0.0277, line 0.857, and more words than fit"
    math = r"$\lambda = 0.5 \cdot 10^{-3} + \alpha$: train loss of a run with a label in mathtext, long"
    a.set_title(math)
    wrap_titles(fig)
    assert a.get_title() == math  # not broken inside $...$, which would show the raw TeX
    from landscape.plots.style import _wrapped

    lines = _wrapped("train loss barrier: curve 5.97%, line 61.2% and more words to wrap", 1.6, 8).split("\n")
    assert "curve 5.97%, line 61.2%" in lines  # never "line" at a line's end and its value on the next
    assert _wrapped("train loss (NLL + L2, wd 0.0005)", 1.2, 8).split("\n") == ["train loss", "(NLL + L2, wd 0.0005)"]
    assert "\u00a0" not in _wrapped("a σ = 0.051 b " * 6, 1.0, 8)  # the glue is put back as spaces
    assert _wrapped("independent optima: test error (%)", 2.0, 10).split("\n") == [
        "independent optima: test", "error (%)"]  # a unit stays with its quantity
    legend_below(fig, a)
    assert fig.legends[-1]._ncols == 1  # entries this long: one a row in a column's width
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(10, 3))
    for i in range(4):
        ax.plot([0, 1], [i, i], label=f"entry {i}")
    legend_below(fig, ax)
    assert fig.legends[-1]._ncols == 4
    plt.close(fig)


def test_a_centre_far_off_the_samples_is_named_not_drawn():
    from landscape.plots.swag import plot_model_average

    fig, ax = plt.subplots()
    plot_model_average(ax, np.array([0.022, 0.0218, 0.0221]), 0.364, 0.0233, label="average",
                       centre_label="centre of the subspace", ylabel="NLL", log_when_spread=True)
    labels = [line.get_label() for line in ax.get_lines()]
    assert "centre of the subspace: 0.364, above the axis" in labels and ax.get_yscale() == "linear"
    lo, hi = ax.get_ylim()
    assert lo < 0.0218 and 0.0233 < hi < 0.03  # the average and the single sample fill the axis
    plt.close(fig)
    fig, ax = plt.subplots()  # within 5-fold: drawn as a line
    plot_model_average(ax, np.array([0.022, 0.0218]), 0.05, 0.0233, label="average", centre_label="centre",
                       ylabel="NLL", log_when_spread=True)
    assert "centre" in [line.get_label() for line in ax.get_lines()]
    plt.close(fig)


def test_the_train_loss_label_says_it_holds_the_weight_decay_term():
    from landscape.plots.style import train_loss_label

    assert train_loss_label({"wd": 5e-4}) == "train loss (NLL + L2, wd 0.0005)"
    assert train_loss_label({"wd": 0.0}) == "train loss" and train_loss_label({}) == "train loss"
    assert train_loss_label({"config": {"wd": 1e-4}}) == "train loss (NLL + L2, wd 0.0001)"
    assert train_loss_label({"wd": 5e-4}, {"wd": 1e-4}) == "train loss (NLL + L2)"


def test_a_plane_not_drawn_to_scale_says_by_how_much_as_drawn():
    from landscape.plots.style import finish_layout

    texts = []
    for extent in (1.0, 4.0, 300.0):
        fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
        x, y = np.linspace(0, extent, 11), np.linspace(0, 1, 9)
        plot_plane(ax, x, y, np.add.outer(x, y), label="loss")
        finish_layout(fig)  # the layout done (the colorbar took its width), the note measured on it
        box = ax.get_window_extent()
        stretch = (box.height / np.ptp(ax.get_ylim())) / (box.width / np.ptp(ax.get_xlim()))
        texts.append(([t.get_text() for t in ax.texts if "not to scale" in t.get_text()], stretch))
        plt.close(fig)
    assert texts[0][0] == []  # comparable extents: one scale, nothing to say
    (said,), stretch = texts[1]
    assert said == f"not to scale: vertical axis stretched {stretch:.1f}x" and 2 < stretch < 10
    (said,), stretch = texts[2]
    assert said == f"not to scale: vertical axis stretched {stretch:.0f}x" and stretch > 10
    # a panel too narrow for the note on one line: two lines, inside it
    fig, ax = plt.subplots(figsize=(3.4, 3.0), constrained_layout=True)
    x, y = np.linspace(0, 4.0, 11), np.linspace(0, 1, 9)
    plot_plane(ax, x, y, np.add.outer(x, y), label="loss")
    finish_layout(fig)
    (note,) = [t for t in ax.texts if "not to scale" in t.get_text()]
    assert note.get_text().startswith("not to scale:\nvertical axis stretched")
    assert note.get_window_extent().width < ax.get_window_extent().width
    plt.close(fig)


def test_a_model_average_figure_puts_its_legend_below_the_panels(tmp_path, monkeypatch):
    """At every width: inside the first panel it hid the single sample's line (horizontal, at its top)."""
    import landscape.plots.swag as swag_plots
    from landscape.plots.style import set_figure_width

    drawn = []
    monkeypatch.setattr(swag_plots, "save_figure", lambda fig, stem, formats: drawn.append(fig) or [])
    n = 6
    arrays = {"bma_test_nll": np.linspace(0.03, 0.02, n), "bma_test_error": np.full(n, 0.28),
              "mean_test_nll": np.array(0.021), "mean_test_error": np.array(0.28),
              "sample_test_nll": np.full(4, 0.025), "sample_test_error": np.full(4, 0.56)}
    average = {"members": n, "test_nll": 0.02, "test_error": 0.28}
    try:
        for width in (None, 3.25):
            set_figure_width(width)
            swag_plots._draw_average(tmp_path / "x", arrays, {}, {}, average, "model average", "the mean", "SWAG",
                                     ("png",))
            fig = drawn[-1]
            legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
            assert not legends and len(fig.legends) == 1  # below the panels, clear of the lines
            assert [t.get_text() for t in fig.legends[0].get_texts()] == [
                "the mean", "single sample (mean)", "model average"]
            plt.close(fig)
    finally:
        set_figure_width(None)


# ------------------------------------------------------------ legends, outlines, colours, units, titles
def write_trajectory_plane(folder):
    """A training trajectory's plane as ``landscape plane --trajectory`` writes it: four epochs from 'init'
    (upper right) down and back to the final network (an anchor, 'epoch 3'), axes not to one scale."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.linspace(-1.03, 6.2, 9), np.linspace(-1.33, 0.37, 9)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 0.16 + 0.1 * X ** 2 + 0.5 * (Y + 0.2) ** 2
    arrays = dict(x=x, y=y, train_loss=loss, train_nll=loss, train_error=5 * loss, test_nll=loss,
                  test_error=10 * loss, anchor_xy=np.array([[0.0, 0.0]]),
                  path_xy=np.array([[5.16, 0.13], [3.14, -1.09], [0.62, -0.38], [0.0, 0.0]]))
    np.savez(folder / "plane.npz", **arrays)
    summary = {"plane": "trajectory", "anchor_labels": ["epoch 3"], "start_label": "init", "path_label": "trajectory",
               "axis_labels": ["PC1 (94.4 % of the trajectory's variance)", "PC2 (5.0 %)"], "eval_split": "test",
               "wd": 5e-4}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _marker_boxes(ax, renderer):
    """The display boxes of ``ax``'s scatter markers and of its lines' markers."""
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Bbox

    scale, boxes = ax.figure.dpi / 72, []
    for c in ax.collections:
        if isinstance(c, PathCollection):
            xy = c.get_offset_transform().transform(c.get_offsets())
            r = np.resize(np.sqrt(c.get_sizes()) / 2 * scale, len(xy))
            boxes += [Bbox.from_extents(px - s, py - s, px + s, py + s) for (px, py), s in zip(xy, r)]
    for line in ax.get_lines():
        if line.get_marker() not in (None, "None", ""):
            r = line.get_markersize() / 2 * scale
            xy = line.get_transform().transform(line.get_xydata())
            boxes += [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in xy]
    return boxes


@pytest.mark.parametrize("width", [None, 3.3])
@pytest.mark.parametrize("kind", ["curve", "trajectory"])
def test_a_planes_legend_covers_none_of_its_labels_or_markers(tmp_path, width, kind):
    """matplotlib's loc="best" counts a label as one point of a path's many: at a column's width it put a
    trajectory's legend on its 'init' label. The legend now goes where it covers no label and no marker."""
    from landscape.plots.plane import load_plane_result, plane_metrics, plot_plane_result
    from landscape.plots.style import finish_layout, new_figure, set_figure_width

    folder = write_plane(tmp_path / "p") if kind == "curve" else write_trajectory_plane(tmp_path / "p")
    arrays, summary = load_plane_result(folder)
    try:
        set_figure_width(width)
        for metric, label, vmax, log_alpha in plane_metrics(summary):
            fig, ax = new_figure(width=6.0, height=5.0)
            plot_plane_result(ax, arrays, summary, metric, label, vmax, log_alpha)
            ax.set_title(label)
            finish_layout(fig)
            fig.draw_without_rendering()  # as saved: the layout made once more with the legend where it is
            renderer = fig.canvas.get_renderer()
            box = ax.get_legend().get_window_extent(renderer)
            labels = [t for t in ax.texts if t.get_text()]
            assert len(labels) >= 2
            for text in labels:
                assert not box.overlaps(text.get_window_extent(renderer)), (width, metric, text.get_text())
            for marker in _marker_boxes(ax, renderer):
                assert not box.overlaps(marker), (width, metric)
            figure_box = fig.bbox
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and figure_box.y0 <= box.y0  # whole
            plt.close(fig)
    finally:
        set_figure_width(None)


def test_path_outlines_thin_with_their_lines_at_a_papers_width(tmp_path):
    """The white edge under a plane's path and its labels (a Stroke path effect) is thinned with the
    lines at a paper's width, and stays wider than the line it edges."""
    from matplotlib.patheffects import Stroke
    from landscape.plots.plane import load_plane_result, plane_metrics, plot_plane_result
    from landscape.plots.style import finish_layout, new_figure, set_figure_width

    arrays, summary = load_plane_result(write_plane(tmp_path / "p"))
    metric, label, vmax, log_alpha = plane_metrics(summary)[0]

    def strokes(artist):
        return [e._gc["linewidth"] for e in artist.get_path_effects() if isinstance(e, Stroke)]

    drawn = {}
    try:
        for width in (None, 3.3):
            set_figure_width(width)
            fig, ax = new_figure(width=6.0, height=5.0)
            plot_plane_result(ax, arrays, summary, metric, label, vmax, log_alpha)
            finish_layout(fig)
            (path,) = [line for line in ax.get_lines() if line.get_label() == "Bezier curve"]
            (handle,) = ax.get_legend().legend_handles
            texts = [t for t in ax.texts if t.get_text() in ("w1", "w2", "θ", "SWA")]
            assert len(texts) == 4
            drawn[width] = (path.get_linewidth(), strokes(path), handle.get_linewidth(), strokes(handle),
                            [strokes(t) for t in texts])
            plt.close(fig)
    finally:
        set_figure_width(None)
    own, paper = drawn[None], drawn[3.3]
    assert own[0] == 2.0 and own[1] == [3.0]  # at the figure's own size, as drawn
    assert paper[0] == pytest.approx(1.6) and paper[1] == [pytest.approx(2.4)]  # 8 pt of 10, as the line
    assert paper[1][0] > paper[0]  # the outline still shows on both sides of the line
    assert paper[2] == pytest.approx(1.6) and paper[3] == [pytest.approx(2.4)]  # its legend entry alike
    assert paper[4] == [[pytest.approx(2.4)]] * 4  # the labels' white edges too


def write_subspace(folder, *, samples=12, centre=0.0336):
    """A stored subspace-inference result (``landscape subspace``): ESS in SWAG's PCA subspace, one chain,
    the model average's test NLL falling from 0.0337 to 0.0244; the centre's ``centre``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    s = np.arange(1, samples + 1)
    arrays = {"z": rng.normal(size=(samples, 2)), "chain": np.zeros(samples, dtype=int),
              "bma_test_nll": 0.0235 + 0.0102 / s, "bma_test_error": np.full(samples, 0.28),
              "sample_test_nll": np.full(samples, 0.0236), "sample_test_error": np.full(samples, 0.56),
              "shift_test_nll": np.array(centre), "shift_test_error": np.array(0.56)}
    np.savez(folder / "subspace.npz", **arrays)
    summary = {"basis": "pca", "rank": 2, "method": "ess", "temperature": 1.0, "prior_scale": 1.0, "burn_in": 0,
               "start": [0.0, 0.0], "landmarks": {}, "eval_split": "test", "synthetic": False,
               "bma": {"members": samples, "test_nll": 0.0243, "test_error": 0.28}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.mark.parametrize("centre", [0.0336, 0.336])  # on the axis; far above it, named in the legend alone
@pytest.mark.parametrize("width", [None, 3.3, 6.75])
def test_the_subspace_figures_legends_cover_no_line_and_stay_inside_the_figure(tmp_path, monkeypatch, width, centre):
    """At a column's width the NLL panel's legend, inside the panel, ran off the figure's edge (an entry
    naming a centre far off the axis is long) or over the model average's line."""
    import landscape.plots.subspace as subspace_plots
    from landscape.plots.style import finish_layout, set_figure_width

    drawn = []
    monkeypatch.setattr(subspace_plots, "save_figure", lambda fig, stem, formats: drawn.append(fig) or [])
    try:
        set_figure_width(width)
        subspace_plots.draw_subspace_figure(write_subspace(tmp_path / "s", centre=centre))
        fig = drawn[-1]
        finish_layout(fig)
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        nll = fig.axes[-1]  # the model average's panel
        assert nll.get_ylabel() == "test NLL"
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
        entries = [t.get_text() for leg in legends for t in leg.get_texts()]
        assert {"model average", "single sample (mean)"} <= set(entries)
        assert any(e.startswith("centre of the subspace") for e in entries)
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, (width, box)  # inside the figure
            assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1, (width, box)
            for line in nll.get_lines():  # the NLL panel's lines all show
                path = line.get_transform().transform_path(line.get_path())
                assert not path.intersects_bbox(box, filled=False), (width, line.get_label())
        plt.close(fig)
    finally:
        set_figure_width(None)


def test_a_result_has_one_colour_in_its_own_figure_and_in_comparisons(tmp_path, monkeypatch):
    """A Bezier curve, a polygonal chain, SWAG, SWA, SGD or a variational posterior: the same colour in the
    figure of its own result and in every comparison it is drawn in, whatever its place there."""
    import matplotlib.colors as mcolors
    import landscape.plots.curve as curve_plots
    import landscape.plots.rays as rays_plots
    import landscape.plots.swa as swa_plots
    import landscape.plots.swag as swag_plots
    from landscape.plots.compare import _load

    def same(a, b):
        return mcolors.same_color(a, b)

    drawn = []
    for module in (curve_plots, swag_plots, swa_plots):
        monkeypatch.setattr(module, "save_figure", lambda fig, stem, formats: drawn.append(fig) or [])
    chain = write_curve(tmp_path / "chain", kind="polychain", bends=2)
    bezier = write_curve(tmp_path / "bezier")
    own = {}
    for folder, label in ((chain, "polychain (2 bends)"), (bezier, "bezier (1 bend)")):
        curve_plots.draw_curve_figure(folder)
        own[label] = _lines(drawn[-1].axes[0])[label].get_color()
        own["straight line"] = _lines(drawn[-1].axes[0])["straight line"].get_color()
        plt.close(drawn[-1])
    assert not same(own["polychain (2 bends)"], own["bezier (1 bend)"])
    for order in ([chain, bezier], [bezier, chain]):  # either first: each in its own figure's colour
        results = [_load(f, "curve") for f in order]
        labels = [curve_plots.curve_label(s) for _, s in results]
        fig = curve_plots.compare_curves(results, labels)
        for label in [*labels, "straight line"]:
            assert same(_lines(fig.axes[0])[label].get_color(), own[label]), (order, label)
        plt.close(fig)
    # model averages: SWAG's average and its centre (SWA), a variational posterior's ensemble and its means
    stats = {"members": 6, "test_nll": 0.05, "test_error": 2.0}
    swag = write_average(tmp_path / "swag", "swag.npz", {"method": "SWAG", "rank": 10, "scale": 0.5, "diag": False,
                                                         "swa": stats, "bma": stats})
    vi = write_average(tmp_path / "vi", "variational.npz", {"method": "VI", "family": "weight", "prior": "log-uniform",
                                                            "deterministic": stats, "ensemble": stats})
    swag_plots.draw_swag_figure(swag)
    lines = _lines(drawn[-1].axes[0])
    own["swag"] = (lines["SWAG model average"].get_color(), lines["SWA (the mean)"].get_color())
    plt.close(drawn[-1])
    swag_plots.draw_variational_figure(vi)
    lines = _lines(drawn[-1].axes[0])
    own["vi"] = (lines["ensemble"].get_color(), lines["deterministic (the means)"].get_color())
    plt.close(drawn[-1])
    assert not same(own["swag"][0], own["vi"][0])
    results = {"swag": _load(swag, "average", "swag.npz"), "vi": _load(vi, "average", "variational.npz")}
    for order in (["swag", "vi"], ["vi", "swag"]):
        pair = [results[k] for k in order]
        labels = [swag_plots.average_label(s) for _, s in pair]
        fig = swag_plots.compare_averages(pair, labels)
        lines = _lines(fig.axes[0])
        for name, label in zip(order, labels):
            centre = f"{label}: {swag_plots.centre_name(results[name][1])}"
            assert same(lines[label].get_color(), own[name][0]), (order, name)
            assert same(lines[centre].get_color(), own[name][1]), (order, name)
        plt.close(fig)
    # SWA and SGD: the SWA run's figure, the width report's centres (SGD listed first here), SWAG's centre
    run = tmp_path / "swa"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"swa_start": 1, "swa_lr": 0.05}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_error": 2.0, "test_nll": 0.1,
                                                           "swa_test_error": 1.5, "swa_test_nll": 0.08}) + "\n"
                                               for e in (1, 2, 3)))
    swa_plots.draw_swa_figure(run)
    lines = _lines(drawn[-1].axes[0])
    own["SWA"], own["SGD"] = lines["SWA average (BN re-estimated)"].get_color(), lines["SGD iterate"].get_color()
    plt.close(drawn[-1])
    assert same(own["SWA"], own["swag"][1])
    arrays, summary = rays_plots.load_rays_result(write_rays(tmp_path / "rays"))
    fig, axes = rays_plots._draw_metric(arrays, summary, "train_loss", "train loss")
    assert [c["label"] for c in summary["centers"]] == ["SGD", "SWA"]
    assert same(axes[0].get_lines()[0].get_color(), own["SGD"])
    assert same(axes[1].get_lines()[0].get_color(), own["SWA"])
    plt.close(fig)


def _figure_texts(fig):
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_percent_is_written_one_way_in_every_label_and_title(tmp_path, monkeypatch):
    """A number's percent sign follows it without a space ("0.28%", as English typesetting writes it), a
    unit in parentheses reads "(%)": in what the figures write, what they take from a result (a
    trajectory's axis labels), and every string of plots/."""
    import re
    from pathlib import Path

    from landscape import plots
    import landscape.plots.swag as swag_plots
    from landscape.plots.plane import draw_plane_figures
    from landscape.plots.style import finish_layout

    drawn = []

    def keep(fig, stem, formats):  # the figure as it would be saved, kept
        finish_layout(fig)
        drawn.append(fig)
        return []

    monkeypatch.setattr(swag_plots, "save_figure", keep)
    n = 6
    bins = np.array([[0.5, 0.7, 0.9], [0.55, 0.72, 0.93], [10.0, 40.0, 300.0]])
    arrays = {"bma_test_nll": np.linspace(0.03, 0.02, n), "bma_test_error": np.full(n, 0.28),
              "mean_test_nll": np.array(0.021), "mean_test_error": np.array(0.28),
              "sample_test_nll": np.full(4, 0.025), "sample_test_error": np.full(4, 0.56),
              "reliability_centre": bins, "reliability_bma": bins}
    average = {"members": n, "test_nll": 0.02, "test_error": 0.28, "test_ece": 1.2}
    swag_plots._draw_average(tmp_path / "x", arrays, {}, {"test_ece": 1.5}, average, "model average", "the mean",
                             "SWAG", ("png",))
    texts = _figure_texts(drawn[-1])
    plt.close(drawn[-1])
    assert "the mean, ECE 1.50%" in texts and "model average, ECE 1.20%" in texts

    monkeypatch.setattr(style, "save_figure", keep)  # the plane's figures go through style.save_figures
    draw_plane_figures(write_trajectory_plane(tmp_path / "t"))
    texts += [t for fig in drawn[-2:] for t in _figure_texts(fig)]
    for fig in drawn[-2:]:
        plt.close(fig)
    assert "PC1 (94.4% of the trajectory's variance)" in texts and "test error (%)" in texts
    spaced = re.compile(r"\d\s+%|(?<![\d(])%")  # "3 %", "3\u2009%"; a "%" neither after a number nor in "(%)"
    assert [t for t in texts if spaced.search(t)] == []
    for path in sorted(Path(plots.__file__).parent.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"(\d|\})\s+%", line), f"{path.name}:{n}: {line.strip()}"


def test_a_title_wraps_only_where_it_does_not_fit_its_axes():
    """A title is broken where the axes, as the layout draws them, are too narrow for it in its own font,
    and only there: each line takes as many words as fit."""
    from landscape.plots.style import _glued, finish_layout, new_figure, set_figure_width

    words = ("test error barrier: curve 0.694%, line 38.2% and a few more words here to make it long enough "
             "to need three lines in a column").split()
    try:
        set_figure_width(3.3)
        for n in range(3, len(words) + 1):
            title = " ".join(words[:n])
            fig, axes = new_figure(1, 2, width=10.0, height=3.8)  # stacked in a column
            for ax in axes:
                ax.plot([0, 1], [0, 1])
                ax.set_ylabel("train loss (NLL + L2, wd 0.0005)")
            axes[0].set_title(title, fontsize=8)
            finish_layout(fig)
            fig.draw_without_rendering()
            renderer = fig.canvas.get_renderer()
            room = axes[0].get_window_extent(renderer).width
            lines = axes[0].get_title().split("\n")
            assert " ".join(lines) == title
            font = axes[0].title.get_fontproperties()

            def width(text, renderer=renderer, font=font):
                return renderer.get_text_width_height_descent(text, font, ismath=False)[0]

            if width(title) <= room:
                assert len(lines) == 1, (title, width(title), room)  # it fits: one line
            for line, after in zip(lines, lines[1:]):
                assert width(line) <= room
                first = _glued(after).split(" ")[0].replace("\u00a0", " ")  # the next line's first unbreakable run
                assert width(f"{line} {first}") > room, (lines, room)  # would not have fit on this line
            plt.close(fig)
    finally:
        set_figure_width(None)


def test_every_method_that_can_share_a_figure_has_a_colour_of_its_own():
    """The averages (and the networks they are drawn around) meet in one comparison, the paths in another: within
    each group no two share a colour (SWAG-Diagonal and the random subspace once did)."""
    from landscape.plots.style import RESULT_COLORS

    for group in (["SWA", "SGD", "SWAG", "SWAG-Diagonal", "VI", "HWA", "PCA subspace", "curve subspace",
                   "random subspace", "single sample"], ["bezier", "polychain", "straight line"]):
        colors = [RESULT_COLORS[k] for k in group]
        assert len(set(colors)) == len(colors), group


def test_folder_names_as_default_labels_are_shown_as_written():
    """A folder named $x$ is no formula and one named _hidden is not left out of the legend."""
    from landscape.plots.compare import check_labels, default_labels

    from pathlib import Path

    folders = [Path("runs/$x$"), Path("runs/_hidden"), Path("runs/$\\frac")]
    labels = default_labels(folders, [{}, {}, {}], "plane")
    assert labels == ["\\$x\\$", "\u200b_hidden", "\\$\\frac"]
    check_labels(labels, 3)  # no mathtext, none a legend leaves out
    fig, ax = plt.subplots()
    for label in labels:
        ax.plot([0, 1], [0, 1], label=label)
    shown = [t.get_text() for t in ax.legend().get_texts()]
    fig.canvas.draw()  # mathtext would fail here on "$\frac"
    assert shown == labels
    plt.close(fig)


def test_figure_options_given_from_python_as_one_string_or_twice(tmp_path, capsys):
    """formats="pdf" is one format (not "p", "d", "f"), a format given twice is written once, a label
    string is no list of labels, a width is a number; each refused before any folder is made."""
    from landscape.plots.compare import draw_comparison
    from landscape.plots.curve import draw_curve_figure
    from landscape.plots.style import set_figure_width

    a, b = write_curve(tmp_path / "a"), write_curve(tmp_path / "b", kind="polychain")
    assert [p.name for p in draw_curve_figure(a, formats="pdf")] == ["curve.pdf"]
    assert [p.name for p in draw_curve_figure(a, formats=("png", "png"))] == ["curve.png"]
    with pytest.raises(UserError, match="^unknown figure format 'jpg'; choose from png, pdf, svg$"):
        draw_comparison([a, b], tmp_path / "cmp", formats=("png", "jpg"))
    with pytest.raises(UserError, match="^labels must be a list of labels, one per folder, not one string"):
        draw_comparison([a, b], tmp_path / "cmp", labels="ab")
    assert not (tmp_path / "cmp").exists()
    assert [p.name for p in draw_comparison([a, b], tmp_path / "cmp", formats="svg")] == ["curves.svg"]
    with pytest.raises(UserError, match=r"^--width must be between 2.5 and 20 inches, got '3'$"):
        set_figure_width("3")


def test_a_comparison_is_not_written_into_a_result_folder(tmp_path, capsys):
    """`plot A B --out A` put curves.png beside A's own figures, where `plot A` never redraws it."""
    from landscape import cli

    a, b = write_curve(tmp_path / "a"), write_curve(tmp_path / "b", kind="polychain")
    (a / "config.json").write_text(json.dumps({"command": "curve", "config": {}}))
    assert cli.main(["plot", str(a), str(b), "--out", str(a)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--out {a} holds a result (config.json); give a folder of its own for the comparison")
    assert not (a / "curves.png").exists() and not (a / "curves.json").exists()


def test_a_redraw_that_fails_leaves_the_figures_it_had(tmp_path, capsys):
    """A damaged test_error array: the redraw is refused, and plane_train_loss.png is still the pair's old one
    (it was redrawn before the error, beside an old test-error figure)."""
    from landscape import cli

    folder = write_plane(tmp_path / "plane")
    draw_plane_figures(folder)
    before = (folder / "plane_train_loss.png").read_bytes()
    with np.load(folder / "plane.npz") as z:
        arrays = dict(z)
    np.savez(folder / "plane.npz", **dict(arrays, train_loss=arrays["train_loss"] * 2, test_error=np.zeros(3)))
    assert cli.main(["plot", str(folder)]) == 2
    assert "the stored results do not fit together" in capsys.readouterr().err
    assert (folder / "plane_train_loss.png").read_bytes() == before


def test_plot_dpi_sets_the_pngs_resolution_and_only_for_that_command(tmp_path, capsys):
    import struct

    from landscape import cli

    def png_width(path):
        return struct.unpack(">I", path.read_bytes()[16:20])[0]  # IHDR: width, height

    folder = write_plane(tmp_path / "plane")
    assert cli.main(["plot", str(folder)]) == 0
    default = png_width(folder / "plane_train_loss.png")
    assert cli.main(["plot", str(folder), "--dpi", "300"]) == 0
    assert abs(png_width(folder / "plane_train_loss.png") - 2 * default) <= 2
    draw_plane_figures(folder)  # the next figures of this process: 150 dpi again
    assert png_width(folder / "plane_train_loss.png") == default
    assert cli.main(["plot", str(folder), "--dpi", "10"]) == 2
    assert capsys.readouterr().err.strip().endswith("--dpi must be a whole number from 50 to 1200, got 10")
    from landscape.plots.style import set_figure_dpi, set_figure_width

    try:  # from Python, whole floats and numpy's numbers are numbers too
        set_figure_dpi(300.0)
        set_figure_width(np.float32(3.25))
        assert abs(png_width(draw_plane_figures(folder)[0]) - 3.25 * 300) <= 2
    finally:
        set_figure_dpi(None)
        set_figure_width(None)


def test_figures_not_saved_are_closed_when_one_cannot_be(tmp_path):
    """A plane's two figures are drawn before either is saved: when saving fails (a format from Python that
    does not exist), none is left open in the calling process."""
    folder = write_plane(tmp_path / "plane")
    with pytest.raises(UserError, match="unknown figure format 'jpg'"):
        draw_plane_figures(folder, formats=("jpg",))
    assert not plt.get_fignums()


def test_stored_labels_a_figure_cannot_show_as_they_are_are_shown_literally(tmp_path, monkeypatch):
    """A rays centre named _a (a run folder's name) vanished from the legend, one named $\\frac$ failed the
    figure's save; a plane anchor named so failed too. Valid mathtext stays: it may be meant."""
    from landscape.plots.style import shown_label

    assert shown_label("_a") == "\u200b_a" and shown_label("$\\frac$") == "\\$\\frac\\$" and shown_label("$w_1$") == "$w_1$"
    folder = write_rays(tmp_path / "rays")
    summary = json.loads((folder / "summary.json").read_text())
    summary["centers"][0]["label"], summary["centers"][1]["label"] = "_a", "$\\frac$"
    (folder / "summary.json").write_text(json.dumps(summary))
    kept = []
    real = style.save_figure
    monkeypatch.setattr(style, "save_figure", lambda fig, stem, formats: kept.append(fig) or real(fig, stem, formats))
    assert len(draw_rays_figures(folder)) == 3  # saved: the bad mathtext no longer fails
    legend = kept[-1].axes[0].get_legend()  # the line figure's: both centres named
    assert [t.get_text() for t in legend.get_texts()] == ["\u200b_a", "\\$\\frac\\$"]
    plane = write_plane(tmp_path / "plane")
    summary = json.loads((plane / "summary.json").read_text())
    (plane / "summary.json").write_text(json.dumps(dict(summary, anchor_labels=["$\\frac$", "_b", "$w$"])))
    assert len(draw_plane_figures(plane)) == 2


def test_drawing_leaves_the_callers_backend_and_settings_and_ignores_them(tmp_path):
    """style.py set matplotlib's backend to Agg and wrote pdf.fonttype and font.size into the process's
    settings on import: a notebook's inline figures stopped showing, and its own figures changed size. A
    figure drawn under a user's settings (a 13-pt style) is the one drawn under matplotlib's defaults."""
    import subprocess
    import sys

    write_plane(tmp_path / "plain")
    write_plane(tmp_path / "styled")
    script = f"""
import matplotlib
matplotlib.use("svg")
matplotlib.rcParams.update({{"font.size": 13, "pdf.fonttype": 3, "lines.linewidth": 4}})
import matplotlib.pyplot as plt
from landscape.plots.style import set_figure_width
from landscape.plots.plane import draw_plane_figures
set_figure_width(3.25)
draw_plane_figures({str(tmp_path / "styled")!r}, ("png", "pdf"))
from landscape.plots.style import new_figure, save_figure
fig, ax = new_figure()  # a figure of the caller's (as a compare_* function returns), saved by save_figure
ax.set_title("mine")
save_figure(fig, {str(tmp_path / "own")!r}, ("pdf",))
print(matplotlib.get_backend(), matplotlib.rcParams["font.size"], matplotlib.rcParams["pdf.fonttype"],
      matplotlib.rcParams["lines.linewidth"], plt.get_fignums())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["svg", "13.0", "3", "4.0", "[]"]
    from landscape.plots.style import set_figure_width

    set_figure_width(3.25)
    try:
        draw_plane_figures(tmp_path / "plain", ("png", "pdf"))
    finally:
        set_figure_width(None)
    for name in ("plane_train_loss.png", "plane_test_error.png"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "styled" / name).read_bytes(), name
    pdf = (tmp_path / "styled" / "plane_train_loss.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType fonts, as venues' checks ask
    pdf = (tmp_path / "own.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf


def test_figures_of_bf16_results_say_so_and_a_mixed_comparison_counts_them():
    """Nothing in a figure told a bf16 evaluation from an fp32 one, nor a comparison mixing them."""
    from landscape.plots.style import new_figure, note_synthetic

    fig, _ = new_figure(1, 1)
    note_synthetic(fig, [{"precision": "bf16"}])
    assert fig._suptitle.get_text() == "evaluated in bf16"
    fig, _ = new_figure(1, 1)
    fig.suptitle("SWAG: 30 samples")
    note_synthetic(fig, [{"precision": "fp32"}, {"precision": "bf16", "synthetic": True}])
    assert fig._suptitle.get_text() == ("SWAG: 30 samples\n(synthetic data — benchmark only; 1 of the 2 results "
                                        "evaluated in bf16)")
    fig, _ = new_figure(1, 1)
    note_synthetic(fig, [{"precision": "fp32"}, {}])
    assert fig._suptitle is None or fig._suptitle.get_text() == ""
    plt.close("all")


def test_a_finished_results_figures_in_a_folder_that_cannot_be_written_are_kept(tmp_path, monkeypatch, capsys):
    """--resume of a finished result copied to a read-only folder ended in "plane_train_loss.png: Permission
    denied" and printed no table: redrawing its figures is no part of showing it. A command keeps the figures
    there as they are, with one note; `plot`, asked to redraw, still says the folder cannot be written; a
    figure that does not exist yet is an error either way."""
    import errno

    from matplotlib.figure import Figure

    import landscape.errors as errors

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    (png,) = style.save_figure(fig, tmp_path / "f")
    drawn = png.read_bytes()

    def refused(write, path):
        raise OSError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(style, "atomic_save", refused)
    errors._NOTES_SAID.clear()
    for _ in range(2):
        assert style.save_figure(fig, tmp_path / "f") == [png] and png.read_bytes() == drawn
    assert capsys.readouterr().err.count(f"note: {tmp_path} cannot be written; its figures are left as they were") == 1
    with pytest.raises(OSError, match="Permission denied"):
        style.save_figure(fig, tmp_path / "f", formats=("pdf",))  # none there to keep
    style.keep_unwritable_figures(False)
    try:
        with pytest.raises(OSError, match="Permission denied"):
            style.save_figure(fig, tmp_path / "f")
    finally:
        style.keep_unwritable_figures(True)


def test_a_plane_above_its_clip_everywhere_is_drawn_unclipped():
    """A test error over 50% at every point (a weak many-class network) was one grey band, its colour bar
    levels "50" seven times and "> 50.0001", values no point had."""
    from landscape.plots.plane import CLIPPED_COLOR

    x, y = np.linspace(0, 1, 9), np.linspace(0, 1, 9)
    X, Y = np.meshgrid(x, y, indexing="ij")
    error = 90 + 2 * X * Y
    fig, ax = plt.subplots()
    _, cbar = plot_plane(ax, x, y, error, vmax=50.0, log_alpha=-1.0)
    fig.canvas.draw()
    labels = [t.get_text() for t in cbar.ax.get_yticklabels()]
    assert len(set(labels)) == len(labels) > 3 and not any(">" in t for t in labels)
    assert float(labels[0]) == pytest.approx(90) and float(labels[-1]) == pytest.approx(92)
    colors = ax.collections[0].get_facecolor()[:, :3]
    assert not any(np.allclose(c, matplotlib.colors.to_rgb(CLIPPED_COLOR)) for c in colors)
    plt.close(fig)
    # one value at or below the clip: clipped as before
    error[0, 0] = 40
    fig, ax = plt.subplots()
    _, cbar = plot_plane(ax, x, y, error, vmax=50.0, log_alpha=-1.0)
    fig.canvas.draw()
    assert cbar.ax.get_yticklabels()[-1].get_text() == "> 50"
    plt.close(fig)


def test_planes_compared_above_their_clip_share_unclipped_levels(tmp_path):
    from landscape.plots.compare import _load
    from landscape.plots.plane import compare_planes

    folders = [write_plane(tmp_path / "a", synthetic=False), write_plane(tmp_path / "b", synthetic=False)]
    for k, folder in enumerate(folders):
        arrays = dict(np.load(folder / "plane.npz"))
        arrays["test_error"] = 80 + 5 * k + arrays["test_error"] / 10
        np.savez(folder / "plane.npz", **arrays)
    fig = compare_planes([_load(f, "plane") for f in folders], ["a", "b"])
    try:
        fig.canvas.draw()
        bars = [ax for ax in fig.axes if not ax.get_title()]
        ticks = [[t.get_text() for t in bar.get_yticklabels()] for bar in bars]
        error_ticks = ticks[1]  # the colour bars column by column: the test error's are the second and fourth
        assert error_ticks == ticks[3] and not any(">" in t for t in error_ticks)
        assert float(error_ticks[0]) >= 80 and len(set(error_ticks)) == len(error_ticks)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("values, note", [
    (np.log(10) + np.float32(np.log(10)).item() * 2.0 ** -22 * np.arange(30.0).reshape(5, 6) % 3,
     "constant to within float32 rounding: 2.30259"),
    (np.full((5, 6), 0.3), "constant: 0.3"),
    (np.zeros((5, 6)), "constant: 0")])
def test_a_plane_constant_to_rounding_is_one_band_and_says_its_value(values, note):
    """A network that predicts uniformly (ln 10 give or take a few ulps) was drawn as basins and ridges of
    rounding, its colour bar "2.30258" four times and "2.30259" twice; an exactly constant one as eight
    bands labelled 0.3 to 0.300001."""
    from landscape.plots.style import finish_layout

    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    _, cbar = plot_plane(ax, np.linspace(0, 1, 5), np.linspace(0, 1, 6), values, vmax=5.0)
    finish_layout(fig)
    labels = [t.get_text() for t in cbar.ax.get_yticklabels()]
    assert len(labels) == 1 and note.endswith(labels[0])
    assert len(ax.collections) == 1 and len(ax.collections[0].get_facecolor()) == 1  # one band, no lines
    assert note in [t.get_text() for t in ax.texts]
    plt.close(fig)


def test_levels_six_digits_cannot_tell_apart_are_named_by_their_offsets():
    levels = 2.302585 + np.array([0.0, 1e-8, 3e-8, 1e-7, 4e-7])
    names = level_names(levels)
    assert len(set(names)) == len(names)
    assert names[0] == "2.30259" and names[1] == "2.30259 + 1e-08" and names[-1] == "2.30259 + 4e-07"


def test_the_plane_colormap_is_set_for_every_later_plane_and_refused_when_unknown(tmp_path, capsys):
    from landscape import cli

    folder = write_plane(tmp_path / "p", synthetic=False)
    with pytest.raises(UserError, match=r"--cmap: no colormap 'virdis' in matplotlib \(did you mean viridis"):
        style.set_plane_cmap("virdis")
    assert cli.main(["plot", str(folder), "--cmap", "virdis"]) == 2
    assert "did you mean viridis" in capsys.readouterr().err
    seen = []
    real = plot_plane.__globals__["plane_cmap"]
    try:
        style.set_plane_cmap("viridis_r")
        fig, ax = plt.subplots()
        x = np.linspace(0, 1, 7)
        plot_plane(ax, x, x, np.add.outer(x, x), vmax=None)
        lines = ax.collections[1]
        seen.append(lines.get_cmap().name)
        plt.close(fig)
    finally:
        style.set_plane_cmap(None)
    assert seen == ["viridis_r"] and real() == style.PAPERS_CMAP == "jet_r"
    assert cli.main(["plot", str(folder), "--cmap", "cividis_r", "--format", "svg"]) == 0
    svg = (folder / "plane_train_loss.svg").read_text()
    assert "<text" in svg  # text as text, editable in a drawing program, not glyph outlines
    assert style.plane_cmap() == "jet_r"  # the command's choice ends with it


def test_one_results_figures_are_redrawn_in_another_folder_with_out(tmp_path, capsys):
    """Every redraw replaced the result's own figures: a column's and a poster's versions could not sit side
    by side, and a result on a read-only mount could not be drawn at all without copying it by hand."""
    from landscape import cli

    plane = write_plane(tmp_path / "p", synthetic=False)
    assert cli.main(["plot", str(plane)]) == 0
    own = {f.name: f.read_bytes() for f in plane.glob("*.png")}
    assert sorted(own) == ["plane_test_error.png", "plane_train_loss.png"]
    assert cli.main(["plot", str(plane), "--out", str(tmp_path / "col"), "--width", "3.25", "--format", "pdf",
                     "png"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(f.name for f in (tmp_path / "col").iterdir()) == [
        "plane_test_error.pdf", "plane_test_error.png", "plane_train_loss.pdf", "plane_train_loss.png"]
    assert str(tmp_path / "col" / "plane_train_loss.pdf") in printed
    assert {f.name: f.read_bytes() for f in plane.glob("*.png")} == own and not list(plane.glob("*.pdf"))
    assert (tmp_path / "col" / "plane_train_loss.png").read_bytes() != own["plane_train_loss.png"]  # 3.25 in
    # a comparison's folder is drawn again elsewhere with its record, which finds the results from there
    other = write_plane(tmp_path / "q", synthetic=False, with_extras=False)
    assert cli.main(["plot", str(plane), str(other), "--out", str(tmp_path / "cmp")]) == 0
    assert cli.main(["plot", str(tmp_path / "cmp"), "--out", str(tmp_path / "cmp2")]) == 0
    assert sorted(f.name for f in (tmp_path / "cmp2").iterdir()) == ["planes.json", "planes.png"]
    assert cli.main(["plot", str(tmp_path / "cmp2")]) == 0


def test_a_style_sheet_sets_the_figures_fonts_and_ends_with_the_command(tmp_path, capsys):
    """The figures ignored every style (matplotlib's defaults by design, so a notebook's settings do not leak
    in): a paper set in a serif font could not have figures to match."""
    from landscape import cli

    plane = write_plane(tmp_path / "p", synthetic=False)
    sheet = tmp_path / "paper.mplstyle"
    sheet.write_text("font.family: serif\nfont.size: 30\n")
    assert cli.main(["plot", str(plane), "--style", str(sheet), "--format", "pdf"]) == 0
    pdf = (plane / "plane_train_loss.pdf").read_bytes()
    assert b"DejaVuSerif" in pdf and b"DejaVuSans" not in pdf
    assert cli.main(["plot", str(plane), "--format", "pdf"]) == 0  # the next command's figures as before
    assert b"DejaVuSans" in (plane / "plane_train_loss.pdf").read_bytes()
    with style.figure_style():  # the sheet's text size is not the figures': their layout is sized for theirs
        assert matplotlib.rcParams["font.family"] == ["sans-serif"]
    assert cli.main(["plot", str(plane), "--style", "ggplt"]) == 2
    assert "--style 'ggplt': neither a style sheet file nor one of matplotlib's styles (did you mean ggplot" in (
        capsys.readouterr().err)
    try:
        style.set_figure_style(sheet)
        with style.figure_style():
            assert matplotlib.rcParams["font.family"] == ["serif"] and matplotlib.rcParams["font.size"] == 10
    finally:
        style.set_figure_style(None)


def test_a_minimum_at_the_clip_with_the_rest_above_is_no_constant():
    """A test error of exactly 50% at one point and above elsewhere was drawn as one "constant" band: a value
    at the clip is not below it, and the panel is drawn unclipped."""
    from landscape.plots.plane import CLIPPED_COLOR

    v = np.full((6, 6), 80.0)
    v[0, 0] = 50.0
    fig, ax = plt.subplots()
    _, cbar = plot_plane(ax, np.linspace(-1, 1, 6), np.linspace(-1, 1, 6), v, vmax=50.0, log_alpha=-1.0)
    fig.canvas.draw()
    labels = [t.get_text() for t in cbar.ax.get_yticklabels()]
    assert labels[0] == "50" and labels[-1] == "80" and len(set(labels)) == len(labels)
    colors = ax.collections[0].get_facecolor()[:, :3]
    assert not any(np.allclose(c, matplotlib.colors.to_rgb(CLIPPED_COLOR)) for c in colors)
    assert not any("constant" in t.get_text() for t in ax.texts)
    plt.close(fig)
    v[1, 1] = 49.0  # one below: clipped as the papers do
    fig, ax = plt.subplots()
    _, cbar = plot_plane(ax, np.linspace(-1, 1, 6), np.linspace(-1, 1, 6), v, vmax=50.0, log_alpha=-1.0)
    fig.canvas.draw()
    assert cbar.ax.get_yticklabels()[-1].get_text() == "> 50"
    plt.close(fig)


def test_plot_out_and_style_edge_cases(tmp_path, capsys):
    """A sheet with text.usetex (LaTeX absent here; the labels are mathtext anyway) ended in a traceback; a
    plot --out of a folder with nothing to draw left an empty folder behind."""
    from landscape import cli

    plane = write_plane(tmp_path / "p", synthetic=False)
    sheet = tmp_path / "tex.mplstyle"
    sheet.write_text("text.usetex: True\nfont.family: serif\n")
    assert cli.main(["plot", str(plane), "--style", str(sheet), "--out", str(tmp_path / "tex")]) == 0
    assert sorted(f.name for f in (tmp_path / "tex").iterdir()) == ["plane_test_error.png", "plane_train_loss.png"]
    (tmp_path / "nothing").mkdir()
    assert cli.main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "figs")]) == 2
    assert "no stored results to draw" in capsys.readouterr().err and not (tmp_path / "figs").exists()
