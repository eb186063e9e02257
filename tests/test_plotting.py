"""Figures: structure of each plot, the geometry they show, PNG output, bad input."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from skpose import plotting
from skpose.geometry.rotations import (
    quat_multiply,
    random_quaternions,
    relion_euler_to_quat,
)
from skpose.imaging.projection import project
from skpose.simulate import phantom_volume

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ---------------------------------------------------------------- error histogram


def test_error_histogram_bars_median_and_fractions(tmp_path):
    errors = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 20.0, 90.0])
    fig = plotting.plot_error_histogram(
        errors, symmetry="d2", path=tmp_path / "hist.png"
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.patches) == 36  # 5-degree bars from 0 to 180
    assert sum(p.get_height() for p in ax.patches) == errors.size
    assert _legend_texts(ax) == ["median 5.0°", "< 5°: 50.0 %", "< 10°: 75.0 %"]
    assert "D2-aware" in ax.get_xlabel()
    _assert_png(tmp_path / "hist.png")


def test_error_histogram_bins_and_title():
    fig = plotting.plot_error_histogram([1.0, 50.0], bins=18, title="run 3")
    ax = fig.axes[0]
    assert len(ax.patches) == 18 and ax.get_title() == "run 3"
    fig = plotting.plot_error_histogram([1.0, 5.0], bins=np.arange(0, 11, 1.0))
    assert len(fig.axes[0].patches) == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"errors_deg": []}, "'errors_deg' to be a non-empty 1-D array"),
        ({"errors_deg": np.ones((2, 2))}, "'errors_deg' to be a non-empty 1-D"),
        ({"errors_deg": [1.0, -2.0]}, "'errors_deg' to be finite angles >= 0"),
        ({"errors_deg": [1.0, np.nan]}, "'errors_deg' to be finite angles >= 0"),
        ({"bins": 0}, "'bins' to be an integer >= 1, got 0"),
        ({"symmetry": "Q7"}, "'symmetry'"),
    ],
)
def test_error_histogram_bad_input(kwargs, match):
    args = {"errors_deg": [1.0, 2.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        plotting.plot_error_histogram(**args)


# ---------------------------------------------------------------- error by direction


def test_error_by_direction_places_views_at_rot_and_tilt(tmp_path):
    """RELION (rot, tilt, psi) is viewed from longitude rot, latitude 90 - tilt."""
    angles = np.array([[30.0, 60.0, 10.0], [-120.0, 135.0, 70.0], [0.0, 0.0, 45.0]])
    q = relion_euler_to_quat(angles)
    errors = np.array([3.0, 1.0, 2.0])
    fig = plotting.plot_error_by_direction(q, errors, path=tmp_path / "dir.png")
    assert len(fig.axes) == 2  # the map and its colour bar
    ax = fig.axes[0]
    assert ax.name == "mollweide"
    (dots,) = ax.collections
    order = np.argsort(errors)  # increasing error: the largest drawn on top
    lon_lat = np.rad2deg(np.asarray(dots.get_offsets()))
    # Drawn in the order of errors 1, 2, 3: particles 1, 2 (tilt 0: the pole), 0.
    np.testing.assert_allclose(lon_lat[[0, 2]], [[-120, -45], [30, 30]], atol=1e-9)
    assert lon_lat[1, 1] == pytest.approx(90.0)
    np.testing.assert_allclose(dots.get_array(), errors[order])
    _assert_png(tmp_path / "dir.png")


def test_error_by_direction_bad_input():
    q = random_quaternions(3, random_state=0)
    with pytest.raises(ValueError, match=r"'quaternions_true' to have shape \(2, 4\)"):
        plotting.plot_error_by_direction(q, [1.0, 2.0])
    with pytest.raises(ValueError, match="'errors_deg'"):
        plotting.plot_error_by_direction(q, [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="'quaternions_true'"):
        plotting.plot_error_by_direction(np.zeros((3, 4)), [1.0, 2.0, 3.0])


# ---------------------------------------------------------------- FSC


def test_fsc_curves_threshold_and_resolution(tmp_path):
    freq = np.linspace(0, 0.25, 26)  # 1/A
    curves = {
        "linear": 1 - freq / 0.2,
        "high": np.ones_like(freq),
        "noise": np.zeros_like(freq),
    }
    fig = plotting.plot_fsc(freq, curves, path=tmp_path / "fsc.png")
    (ax,) = fig.axes
    hlines = [ln for ln in ax.lines if np.allclose(ln.get_ydata(), 0.143)]
    assert len(hlines) == 1 and len(ax.lines) == 4
    # 1 - f / 0.2 = 0.143 at f = 0.1714 1/A, i.e. 5.83 A.
    assert _legend_texts(ax) == [
        "linear (5.83 Å)",
        "high (does not cross)",
        "noise (below at 0)",
        "FSC = 0.143",
    ]
    (top,) = ax.child_axes  # resolution in A on top
    assert top.xaxis.get_major_formatter()(0.1, 0) == "10"
    assert top.xaxis.get_major_formatter()(0.0, 0) == "∞"
    _assert_png(tmp_path / "fsc.png")


def test_fsc_in_cycles_per_pixel_and_no_threshold():
    shells = np.arange(17) / 32  # cycles per pixel, up to Nyquist
    fig = plotting.plot_fsc(
        shells, {"a": np.linspace(1, 0, 17)}, pixel_size_angstrom=2.0, threshold=None
    )
    (ax,) = fig.axes
    assert len(ax.lines) == 1
    assert ax.lines[0].get_xdata()[-1] == pytest.approx(0.25)  # Nyquist of 2 A
    assert ax.get_xlim()[1] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.ones(5), {"a": np.ones(4)}), {}, r"'curves\['a'\]' to have shape \(5,\)"),
        ((np.ones(5), {}), {}, "'curves' to be a non-empty dict"),
        ((np.ones(5), [np.ones(5)]), {}, "'curves' to be a non-empty dict"),
        ((np.ones((5, 2)), {"a": np.ones(5)}), {}, "'frequencies' to be a 1-D"),
        (
            (np.ones(5), {"a": np.ones(5)}),
            {"pixel_size_angstrom": 0},
            "'pixel_size_angstrom' to be a number > 0",
        ),
    ],
)
def test_fsc_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_fsc(*args, **kwargs)


# ---------------------------------------------------------------- projection panels


@pytest.fixture(scope="module")
def particles():
    vol = phantom_volume(24)
    q_true = random_quaternions(5, random_state=1).numpy()
    q_pred = random_quaternions(5, random_state=2).numpy()
    shifts = np.random.default_rng(0).uniform(-2, 2, (5, 2))
    images = project(vol, q_true, shifts) + 0.1
    return images, vol, q_true, q_pred, shifts


def test_projection_panels_grid_and_content(particles, tmp_path):
    images, vol, q_true, q_pred, shifts = particles
    fig = plotting.plot_projection_panels(
        images, vol, q_true, q_pred, shifts_px=shifts, n=3, path=tmp_path / "p.png"
    )
    assert len(fig.axes) == 9  # 3 rows x (input, reference, predicted)
    rows = np.array(fig.axes).reshape(3, 3)
    expected_pred = project(vol, q_pred[:3], shifts[:3])
    for i in range(3):
        inp, ref, pred = (ax.get_images()[0].get_array() for ax in rows[i])
        np.testing.assert_allclose(inp, images[i])
        np.testing.assert_allclose(ref, images[i] - 0.1, atol=1e-5)
        np.testing.assert_allclose(pred, expected_pred[i], atol=1e-5)
        assert rows[i, 2].get_title().startswith("predicted: ")
        assert rows[i, 2].get_title().endswith("°")
    _assert_png(tmp_path / "p.png")


def test_projection_panels_clip_n_and_symmetry(particles):
    images, vol, q_true, _, _ = particles
    # Predicted = true turned 180 degrees about z: 180 degrees in C1, 0 in C2.
    q_pred = quat_multiply(q_true, np.array([0.0, 0.0, 0.0, 1.0]))
    fig = plotting.plot_projection_panels(
        images, vol, q_true, q_pred, n=10, symmetry="C2"
    )
    assert len(fig.axes) == 15  # all 5 particles
    assert fig.axes[2].get_title() == "predicted: 0.0°"
    fig = plotting.plot_projection_panels(images, vol, q_true, q_pred, n=1)
    assert fig.axes[2].get_title() == "predicted: 180.0°"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n": 0}, "'n' to be an integer >= 1, got 0"),
        ({"n": 2.5}, "'n' to be an integer >= 1"),
        ({"q_pred": np.ones((4, 4))}, r"'q_pred' to have shape \(5, 4\)"),
        ({"q_true": np.ones((5, 3))}, "'q_true'"),
        ({"shifts_px": np.zeros((5, 3))}, r"'shifts_px' to have shape \(5, 2\)"),
        ({"volume": np.zeros((16, 16, 16))}, "share the box size"),
        ({"images": np.zeros((5, 24, 20))}, "'images' to have shape"),
    ],
)
def test_projection_panels_bad_input(particles, change, match):
    images, vol, q_true, q_pred, shifts = particles
    args = {
        "images": images,
        "volume": vol,
        "q_true": q_true,
        "q_pred": q_pred,
        "shifts_px": shifts,
        **change,
    }
    with pytest.raises(ValueError, match=match):
        plotting.plot_projection_panels(**args)


# ---------------------------------------------------------------- training history


def test_training_history_from_skorch_history(tmp_path):
    skorch = pytest.importorskip("skorch")
    hist = skorch.history.History()
    for i in range(4):
        hist.new_epoch()
        hist.record("epoch", i + 1)
        hist.record("train_loss", 1.0 / (i + 1))
        hist.record("valid_loss", 1.2 / (i + 1))
        hist.record("dur", 0.5)
    fig = plotting.plot_training_history(hist, path=tmp_path / "h.png")
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1, 1 / 2, 1 / 3, 1 / 4])
    assert ax.get_title() == "Training loss (4 epochs, 2.0 s)"
    _assert_png(tmp_path / "h.png")


def test_training_history_without_epoch_or_valid():
    fig = plotting.plot_training_history([{"train_loss": 2.0}, {"train_loss": 1.0}])
    (line,) = fig.axes[0].lines
    np.testing.assert_allclose(line.get_xdata(), [1, 2])


@pytest.mark.parametrize(
    ("history", "match"),
    [
        ([], "'history' to be a non-empty list of dicts"),
        (None, "'history' to be a non-empty list of dicts"),
        ([1.0, 2.0], "'history' to be a non-empty list of dicts"),
        ([{"epoch": 1, "dur": 1.0}], "'history' to hold 'train_loss'"),
    ],
)
def test_training_history_bad_input(history, match):
    with pytest.raises(ValueError, match=match):
        plotting.plot_training_history(history)


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.delitem(sys.modules, "skpose.plotting")
    with pytest.raises(ImportError, match=r"pip install skpose\[plot\]"):
        importlib.import_module("skpose.plotting")
