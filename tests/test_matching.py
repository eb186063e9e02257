"""ProjectionMatcher and refine: grid, accuracy, CTF, confidence, memory, contract."""

import math
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _helpers import TabularChecks
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from skpose import (
    Poses,
    ProjectionMatcher,
    angular_error,
    phantom_volume,
    pose_score,
    project,
    random_quaternions,
    refine,
    simulate_particles,
    so3_grid,
    write_volume,
)
from skpose.geometry.rotations import (
    axis_angle_to_quat,
    geodesic_distance,
    quat_multiply,
    quat_to_relion_euler,
    relion_euler_to_quat,
)
from skpose.geometry.symmetry import group_order, symmetry_aware_distance
from skpose.search import _global as _search
from skpose.search import grid as _grid
from skpose.search.grid import direction_vectors

BOX = 64


@pytest.fixture(scope="module")
def vol():
    return phantom_volume(BOX)


@pytest.fixture(scope="module")
def noiseless(vol):
    # Origins within a 2.5 px square: inside the default 4 px disk of trial origins.
    return simulate_particles(vol, 48, max_shift=2.5, random_state=0)


def nearest_grid_distance_deg(quats, grid, symmetry="C1"):
    """Symmetry-aware angle (degrees) from each rotation to its nearest grid point."""
    q = torch.as_tensor(quats)
    best = torch.full((len(q),), math.inf, dtype=torch.float64)
    for chunk in torch.split(grid, 4096):
        if symmetry == "C1":
            d = geodesic_distance(q[:, None], chunk[None])
        else:
            d = symmetry_aware_distance(q[:, None], chunk[None], symmetry)
        best = torch.minimum(best, d.amin(dim=1))
    return np.rad2deg(best.numpy())


def perturb(quats, low_deg, high_deg, seed):
    """Rotate each quaternion by a random axis and an angle in [low, high] degrees."""
    rng = np.random.default_rng(seed)
    axes = rng.standard_normal((len(quats), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.deg2rad(rng.uniform(low_deg, high_deg, len(quats)))
    turn = axis_angle_to_quat(torch.as_tensor(axes * angles[:, None]))
    return quat_multiply(turn, torch.as_tensor(quats)).numpy()


# --------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "n_dirs", "n_psi"), [(15.0, 184, 24), (7.5, 734, 48), (3.75, 2934, 96)]
)
def test_grid_counts(step, n_dirs, n_psi):
    grid = so3_grid(step)
    assert grid.shape == (n_dirs * n_psi, 4) and grid.dtype == torch.float64
    torch.testing.assert_close(
        torch.linalg.vector_norm(grid, dim=1),
        torch.ones(len(grid), dtype=torch.float64),
    )
    assert (grid[:, 0] >= 0).all()
    # D2 keeps a quarter of the directions (the Voronoi cell of 1 of 4 images) and
    # a strip beyond its border.
    d2 = so3_grid(step, "D2")
    assert 0.25 <= len(d2) / len(grid) < 0.30


def test_grid_rows_are_relion_angles():
    # Row d * n_psi + l is RELION (rot_d, tilt_d, -360 l / n_psi): the viewing
    # direction of a block of rows is fixed and psi steps down by `step`.
    grid = so3_grid(15.0)
    euler = quat_to_relion_euler(grid[:24]).numpy()
    np.testing.assert_allclose(
        euler[:, :2], np.broadcast_to(euler[0, :2], (24, 2)), atol=1e-9
    )
    psi = np.mod(euler[:, 2] - euler[0, 2], 360)
    np.testing.assert_allclose(psi, np.mod(-15.0 * np.arange(24), 360), atol=1e-9)
    view = direction_vectors(grid[:24]).numpy()
    np.testing.assert_allclose(view, np.broadcast_to(view[0], (24, 3)), atol=1e-12)


@pytest.mark.parametrize("symmetry", ["C1", "D2", "C3", "O"])
def test_grid_spacing_and_covering(symmetry):
    step = 15.0
    grid = so3_grid(step, symmetry)
    # Neighbouring in-plane angles are one step apart.
    first = geodesic_distance(grid[0], grid[1])
    assert np.rad2deg(float(first)) == pytest.approx(step)
    # One direction per step^2 times `step` in-plane: a random rotation lies a median
    # half a step from the nearest grid rotation, symmetry-aware, and the asymmetric
    # unit's border is covered as well as its inside.
    dist = nearest_grid_distance_deg(random_quaternions(800, 0), grid, symmetry)
    assert 0.42 * step < np.median(dist) < 0.52 * step
    assert dist.max() < 0.85 * step


def test_grid_directions_fill_one_asymmetric_unit():
    # The mates of the D2 directions number the C1 grid's, plus the border strip.
    d2 = _grid.grid_directions(7.5, "D2")
    c1 = _grid.grid_directions(7.5, "C1")
    assert 1.0 <= len(d2) * group_order("D2") / len(c1) < 1.15


def test_bad_grid_step():
    with pytest.raises(ValueError, match="angular_step_deg"):
        so3_grid(0.0)
    with pytest.raises(ValueError, match="symmetry"):
        so3_grid(15.0, "X5")


# --------------------------------------------------------------------------------------
# Accuracy of the search
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [15.0, 7.5])
def test_search_finds_the_nearest_grid_point(vol, noiseless, step):
    sim = noiseless
    matcher = ProjectionMatcher(vol, angular_step_deg=step).fit(sim.images)
    poses = matcher.predict_poses(sim.images)
    assert isinstance(poses, Poses)
    err = angular_error(sim.quaternions, poses.quaternions)
    near = nearest_grid_distance_deg(sim.quaternions, so3_grid(step))
    # The exhaustive search returns grid points: as good as the nearest grid point
    # (whose median distance is 0.49 step), with origins within a pixel.
    assert np.median(err) <= np.median(near) + 0.05 * step
    assert np.median(err) <= 0.6 * step
    shift_err = np.abs(poses.shifts_px - sim.shifts_px).max(axis=1)
    assert np.percentile(shift_err, 90) < 1.0
    assert np.median(poses.score) > 0.9


@pytest.mark.parametrize("step", [15.0, 7.5])
def test_search_then_local_refinement_is_within_half_a_step(vol, noiseless, step):
    sim = noiseless
    matcher = ProjectionMatcher(vol, angular_step_deg=step, refine_step_deg=2.0)
    poses = matcher.fit(sim.images).predict_poses(sim.images)
    err = angular_error(sim.quaternions, poses.quaternions)
    assert np.median(err) <= step / 2
    assert np.median(err) < 1.5
    assert np.abs(poses.shifts_px - sim.shifts_px).max() < 1.0
    assert np.median(poses.score) > 0.99


def test_symmetric_map_searches_one_asymmetric_unit():
    step, sym = 7.5, "D2"
    vol = phantom_volume(BOX, sym)
    sim = simulate_particles(vol, 32, max_shift=2.5, random_state=1)
    matcher = ProjectionMatcher(vol, angular_step_deg=step, symmetry=sym)
    matcher.fit(sim.images)
    assert 0.25 <= matcher.grid_size_ / len(so3_grid(step)) < 0.30
    q = matcher.predict(sim.images)
    err = angular_error(sim.quaternions, q, sym)
    near = nearest_grid_distance_deg(sim.quaternions, so3_grid(step, sym), sym)
    assert np.median(err) <= np.median(near) + 0.05 * step
    assert np.median(err) <= 0.55 * step
    # The plain (not symmetry-aware) error is large: poses land on other mates.
    assert np.median(angular_error(sim.quaternions, q)) > 2 * step


def test_ctf_aware_matching(vol):
    sim = simulate_particles(
        vol, 24, snr=1.0, max_shift=2, ctf=True, pixel_size_angstrom=3.0, random_state=5
    )
    matcher = ProjectionMatcher(vol, angular_step_deg=15).fit(sim.images)
    with_ctf = matcher.predict_poses(sim.images, ctf=sim.ctf)
    without = matcher.predict_poses(sim.images)
    err = angular_error(sim.quaternions, with_ctf.quaternions)
    assert np.median(err) <= 0.55 * 15
    # Correlating against CTF-modulated references fits the images far better.
    assert np.median(with_ctf.score) > np.median(without.score) + 0.05
    # ... and local refinement without it lands off the truth.
    good = refine(vol, sim.images, sim.quaternions, ctf=sim.ctf)
    bad = refine(vol, sim.images, sim.quaternions)
    assert np.median(angular_error(sim.quaternions, good.quaternions)) < 1.0
    assert np.median(angular_error(sim.quaternions, bad.quaternions)) > 1.5


def test_image_size_rescales_and_reports_input_pixels(vol, noiseless):
    sim = noiseless
    matcher = ProjectionMatcher(vol, angular_step_deg=15, image_size=32)
    poses = matcher.fit(sim.images).predict_poses(sim.images)
    assert matcher.volume_.shape == (32, 32, 32)
    assert np.median(angular_error(sim.quaternions, poses.quaternions)) <= 0.55 * 15
    shift_err = np.abs(poses.shifts_px - sim.shifts_px).max(axis=1)
    assert np.median(shift_err) < 1.0


# --------------------------------------------------------------------------------------
# Local refinement
# --------------------------------------------------------------------------------------


def test_refine_from_perturbed_poses(vol, noiseless):
    sim = noiseless
    start = perturb(sim.quaternions, 10, 15, seed=2)
    assert np.median(angular_error(sim.quaternions, start)) > 10
    poses = refine(vol, sim.images, start)
    err = angular_error(sim.quaternions, poses.quaternions)
    assert np.median(err) < 2.0
    assert np.percentile(err, 90) < 3.0
    assert np.abs(poses.shifts_px - sim.shifts_px).max() < 1.0
    assert np.median(poses.score) > 0.99 and np.median(poses.margin) > 0
    assert (
        poses.quaternions.dtype == np.float64 and (poses.quaternions[:, 0] >= 0).all()
    )
    # The estimator's method does the same against its fitted map.
    matcher = ProjectionMatcher(vol).fit(sim.images)
    again = matcher.refine(sim.images, start)
    np.testing.assert_allclose(again.quaternions, poses.quaternions, atol=1e-5)


def blob_map(box, seed=0):
    """A smooth map: six Gaussian blobs (sigma 4-7 % of the box) around the centre."""
    rng = np.random.default_rng(seed)
    r = np.arange(box) - box // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    vol = np.zeros((box,) * 3)
    for _ in range(6):
        direction = rng.standard_normal(3)
        cx, cy, cz = direction / np.linalg.norm(direction) * rng.uniform(0.3, 0.6)
        sigma, height = rng.uniform(0.04, 0.07) * box, rng.uniform(0.5, 1.5)
        d2 = (x - cx * box / 2) ** 2 + (y - cy * box / 2) ** 2 + (z - cz * box / 2) ** 2
        vol += height * np.exp(-d2 / (2 * sigma**2))
    return vol.astype(np.float32)


@pytest.mark.parametrize(("box", "final_step"), [(32, 1.0), (32, 0.5), (48, 1.0)])
def test_noiseless_refinement_reaches_well_under_the_final_step(box, final_step):
    # Smooth maps have broad NCC peaks: a biased score (in-plane turns read from the
    # padded image transform) or translations held to a coarse grid (which small
    # tilts then mimic) stalled refinement at about 2 degrees whatever the step.
    vol = blob_map(box)
    quats = random_quaternions(60, random_state=1).numpy()
    origins = np.random.default_rng(2).uniform(-1.5, 1.5, (60, 2))
    images = project(vol, quats, origins)
    start = perturb(quats, 10, 12, seed=3)
    poses = refine(vol, images, start, final_step_deg=final_step)
    err = angular_error(quats, poses.quaternions)
    assert np.median(err) < 0.25 * final_step
    assert np.percentile(err, 90) < 0.5 * final_step
    assert np.median(np.abs(poses.shifts_px - origins)) < 0.02


def test_refinement_keeps_to_its_cone_and_shift_window():
    # The true poses lie outside both limits: every round pulls towards them, and no
    # round may carry a pose (its best grid point included) past the edge.
    vol = blob_map(32)
    quats = random_quaternions(40, random_state=4).numpy()
    origins = np.random.default_rng(5).choice([-2.0, 2.0], (40, 2))
    images = project(vol, quats, origins)
    start = perturb(quats, 12, 14, seed=6)
    poses = refine(vol, images, start, cone_deg=6.0, max_shift_px=0.5)
    moved = angular_error(start, poses.quaternions)
    assert moved.max() <= 6.0 + 1e-3
    assert np.abs(poses.shifts_px).max() <= 0.5 + 1e-5
    assert np.median(moved) > 3.0  # it did move towards the truth


def test_refine_keeps_torch_in_torch_out(vol, noiseless, device):
    sim = noiseless
    images = torch.as_tensor(sim.images[:4], device=device)
    poses = refine(torch.as_tensor(vol), images, sim.quaternions[:4], cone_deg=5.0)
    assert isinstance(poses.quaternions, torch.Tensor)
    assert poses.quaternions.device.type == device
    assert poses.quaternions.shape == (4, 4) and poses.shifts_px.shape == (4, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cone_deg": 0}, "cone_deg"),
        ({"final_step_deg": -1}, "final_step_deg"),
        ({"max_shift_px": -1}, "max_shift_px"),
        ({"batch_size": 0}, "batch_size"),
        ({"symmetry": "Q2"}, "symmetry"),
    ],
)
def test_refine_bad_options(vol, noiseless, kwargs, match):
    with pytest.raises(ValueError, match=match):
        refine(vol, noiseless.images[:2], noiseless.quaternions[:2], **kwargs)


def test_refine_bad_shapes(vol, noiseless):
    sim = noiseless
    with pytest.raises(ValueError, match="quaternions"):
        refine(vol, sim.images[:2], sim.quaternions[:3])
    with pytest.raises(ValueError, match="shifts_px"):
        refine(vol, sim.images[:2], sim.quaternions[:2], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="volume"):
        refine(vol[:32, :32, :32], sim.images[:2], sim.quaternions[:2])


# --------------------------------------------------------------------------------------
# Confidence
# --------------------------------------------------------------------------------------


def test_confidence_separates_junk_from_particles(vol):
    sim = simulate_particles(vol, 45, snr=0.7, max_shift=2, random_state=7)
    rng = np.random.default_rng(8)
    junk = (rng.standard_normal((15, BOX, BOX)) * sim.noise_std).astype(np.float32)
    images = np.concatenate([sim.images, junk])
    is_particle = np.r_[np.ones(45), np.zeros(15)]
    matcher = ProjectionMatcher(vol, angular_step_deg=15).fit(images)
    poses = matcher.predict_poses(images)
    assert roc_auc_score(is_particle, poses.score) > 0.9
    assert roc_auc_score(is_particle, np.nan_to_num(poses.margin)) > 0.8
    # Network-like starts (a few degrees off; junk: anywhere) refined: same story.
    start = np.concatenate(
        [perturb(sim.quaternions, 3, 8, seed=9), random_quaternions(15, 10).numpy()]
    )
    refined = refine(vol, images, start)
    assert roc_auc_score(is_particle, refined.score) > 0.9
    assert roc_auc_score(is_particle, refined.margin) > 0.9
    assert np.median(angular_error(sim.quaternions, refined.quaternions[:45])) < 3


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


def test_references_are_generated_in_bounded_chunks(vol, monkeypatch):
    """The largest blocks do not grow with the grid (8 times more orientations)."""
    seen = {"refs": 0, "block": 0}
    reference_side, correlate = _search.reference_side, _search._correlate_chunk

    def spy_refs(projector, dirs, layout):
        seen["refs"] = max(seen["refs"], dirs.shape[0])
        return reference_side(projector, dirs, layout)

    def spy_correlate(side, refs, layout, w_inv):
        block = refs.modes.shape[0] * side.stacked.shape[-1] * 4
        seen["block"] = max(seen["block"], block * (2 * layout.n_modes + layout.n_psi))
        return correlate(side, refs, layout, w_inv)

    monkeypatch.setattr(_search, "reference_side", spy_refs)
    monkeypatch.setattr(_search, "_correlate_chunk", spy_correlate)
    images = simulate_particles(vol, 4, random_state=0).images
    peaks = []
    for step in (15.0, 7.5):  # 4 416 and 35 232 orientations
        seen.update(refs=0, block=0)
        ProjectionMatcher(vol, angular_step_deg=step).fit(images).predict(images)
        peaks.append(dict(seen))
    assert all(p["refs"] <= _search.REFERENCE_GROUP for p in peaks)
    assert all(p["block"] <= _search.BLOCK_BYTES for p in peaks)
    assert peaks[1]["refs"] <= 2 * peaks[0]["refs"]


_PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    torch.set_num_threads(1)
    from skpose import phantom_volume, simulate_particles
    from skpose import ProjectionMatcher
    vol = phantom_volume(64)
    images = simulate_particles(vol, 8, random_state=0).images
    matcher = ProjectionMatcher(vol, angular_step_deg=float(sys.argv[1]))
    matcher.fit(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    matcher.predict(images)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024)
    """
)


@pytest.mark.slow
def test_peak_memory_flat_when_grid_is_8_times_finer():
    """Measured peak (maxrss) growth of a search, in fresh processes."""

    def peak_mib(step):
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, str(step)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout.strip().splitlines()[-1])

    coarse, fine = peak_mib(7.5), peak_mib(3.75)  # 35 232 and 281 664 orientations
    # All projections of the fine grid would take 4.6 GB, its polar references 52 MB;
    # the search stays within its block budget (48 MiB) plus small change.
    assert fine < coarse + 48
    assert fine < 160


# --------------------------------------------------------------------------------------
# The scikit-learn contract and bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"angular_step_deg": 0}, "angular_step_deg"),
        ({"angular_step_deg": -5}, "angular_step_deg"),
        ({"angular_step_deg": 91}, "angular_step_deg"),
        ({"angular_step_deg": "7.5"}, "angular_step_deg"),
        ({"max_shift_px": -1.0}, "max_shift_px"),
        ({"shift_step_px": 0}, "shift_step_px"),
        ({"symmetry": "X5"}, "symmetry"),
        ({"symmetry": "C0"}, "symmetry"),
        ({"refine_step_deg": 0}, "refine_step_deg"),
        (
            {"refine_cone_deg": 0.0},
            r"'refine_cone_deg' parameter of ProjectionMatcher must be None or a float "
            r"in the range \(0.0, 90.0\]",
        ),
        (
            {"refine_shift_px": -1.0},
            r"'refine_shift_px' parameter of ProjectionMatcher must be a float in the "
            r"range \[0.0, inf\)",
        ),
        ({"image_size": 4}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu"}, "device"),
        ({"verbose": -1}, "verbose"),
    ],
)
def test_bad_parameters(vol, noiseless, params, match):
    with pytest.raises(ValueError, match=match):
        ProjectionMatcher(vol, **params).fit(noiseless.images[:2])


def test_bad_data(vol, noiseless):
    images = noiseless.images[:4]
    with pytest.raises(ValueError, match="volume"):
        ProjectionMatcher(vol[:32, :32, :32]).fit(images)
    with pytest.raises(ValueError, match="volume"):
        ProjectionMatcher().fit(images)
    with pytest.raises(ValueError, match="images"):
        ProjectionMatcher(vol).fit(images[:, :, :40])
    bad = images.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="images"):
        ProjectionMatcher(vol).fit(bad)


def test_predict_before_fit_and_wrong_box(vol, noiseless):
    images = noiseless.images[:2]
    with pytest.raises(NotFittedError):
        ProjectionMatcher(vol).predict(images)
    matcher = ProjectionMatcher(vol, angular_step_deg=30).fit(images)
    small = simulate_particles(phantom_volume(32), 2, random_state=0).images
    with pytest.raises(ValueError, match=r"images.*32 px.*64 px"):
        matcher.predict(small)
    with pytest.raises(ValueError, match="ctf"):
        matcher.predict_poses(images, ctf=simulate_particles(vol, 3, ctf=True).ctf)
    with pytest.raises(TypeError, match="ctf"):
        matcher.predict_poses(images, ctf="yes")


def test_clone_pickle_repr(vol, noiseless):
    images = noiseless.images[:6]
    matcher = ProjectionMatcher(vol, angular_step_deg=30, max_shift_px=2)
    assert "array (64, 64, 64) float32" in repr(matcher)
    twin = clone(matcher)
    assert twin.get_params()["angular_step_deg"] == 30 and not hasattr(
        twin, "directions_"
    )
    q = matcher.fit(images).predict(images)
    restored = pickle.loads(pickle.dumps(matcher))
    np.testing.assert_array_equal(restored.predict(images), q)
    # Flattened images are the same images; labels are accepted and ignored.
    np.testing.assert_array_equal(matcher.predict(images.reshape(6, -1)), q)
    assert matcher.fit(images, noiseless.quaternions[:6]) is matcher


def test_volume_from_mrc_path(vol, noiseless, tmp_path):
    path = tmp_path / "map.mrc"
    write_volume(path, vol, 1.0)
    images = noiseless.images[:4]
    a = ProjectionMatcher(path, angular_step_deg=30).fit(images).predict(images)
    b = ProjectionMatcher(vol, angular_step_deg=30).fit(images).predict(images)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_score_and_grid_search(vol, noiseless):
    sim = noiseless
    images, quats, shifts = sim.images[:12], sim.quaternions[:12], sim.shifts_px[:12]
    fine = ProjectionMatcher(vol, angular_step_deg=15).fit(images)
    coarse = ProjectionMatcher(vol, angular_step_deg=60).fit(images)
    s_fine, s_coarse = fine.score(images, quats, shifts), coarse.score(images, quats)
    assert s_coarse < s_fine <= 0
    search = GridSearchCV(
        ProjectionMatcher(vol, max_shift_px=3), {"angular_step_deg": [20.0, 60.0]}, cv=2
    ).fit(images, quats)
    assert search.best_params_ == {"angular_step_deg": 20.0}


def test_refine_margin_ignores_symmetry_mates():
    # Viewed down its axis, a C12 particle turned 30 degrees in plane gives the same
    # image: with the point group given, that probe is not "distinct".
    vol = phantom_volume(32, "C12")
    angles = np.array([[0.0, 0.0, psi] for psi in (0, 10, 47, 100, 200, 300)])
    sim = simulate_particles(vol, 6, poses=relion_euler_to_quat(angles), random_state=3)
    options = {"cone_deg": 30.0, "max_shift_px": 0}
    plain = refine(vol, sim.images, sim.quaternions, **options)
    aware = refine(vol, sim.images, sim.quaternions, symmetry="C12", **options)
    assert np.abs(plain.margin).max() < 0.002
    assert aware.margin.min() > 0.005


def test_refinement_parameters_and_grid_search(vol, noiseless):
    sim = noiseless
    images, quats = sim.images[:12], sim.quaternions[:12]
    matcher = ProjectionMatcher(vol, angular_step_deg=30, refine_step_deg=4.0)
    # None: two grid steps (capped at 90 degrees).
    assert matcher.fit(images)._cone_deg() == 60.0
    assert matcher.set_params(angular_step_deg=60)._cone_deg() == 90.0
    matcher.set_params(angular_step_deg=30)
    search = GridSearchCV(matcher, {"refine_cone_deg": [3.0, 45.0]}, cv=2)
    search.fit(images, quats)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 2 and scores[0] != scores[1]  # the cone reached refine
    assert search.best_params_ == {"refine_cone_deg": 45.0}
    best = search.best_estimator_
    assert best.refine_cone_deg == 45.0 and best.refine_step_deg == 4.0
    twin = clone(matcher).set_params(refine_cone_deg=20.0, refine_shift_px=2.0)
    assert clone(twin).get_params()["refine_cone_deg"] == 20.0
    assert twin.refine_shift_px == 2.0 and matcher.refine_shift_px == 4.0


def test_confidence_is_pose_score_at_the_input_box(vol, noiseless):
    # Matching at 32 px, scoring at the images' 64 px, searched or refined alike.
    sim = noiseless
    images = sim.images[:8]
    matcher = ProjectionMatcher(vol, angular_step_deg=15, image_size=32).fit(images)
    found = matcher.predict_poses(images)
    expected = pose_score(vol, images, found.quaternions, found.shifts_px)
    np.testing.assert_allclose(found.score, expected, rtol=0, atol=1e-6)
    refined = matcher.set_params(refine_step_deg=2.0).predict_poses(images)
    again = matcher.refine(images, refined.quaternions, refined.shifts_px)
    expected = pose_score(vol, images, again.quaternions, again.shifts_px)
    np.testing.assert_allclose(again.score, expected, rtol=0, atol=1e-6)
    assert np.median(refined.score) > np.median(found.score)


def test_old_shifts_keyword_still_works_with_a_future_warning(vol, noiseless):
    sim = noiseless
    images, quats, shifts = sim.images[:4], sim.quaternions[:4], sim.shifts_px[:4]
    renamed = r"'shifts' keyword of ProjectionMatcher\.{} is renamed 'shifts_px'"
    with pytest.warns(FutureWarning, match=renamed.format("fit")):
        matcher = ProjectionMatcher(vol, angular_step_deg=30).fit(images, shifts=shifts)
    with pytest.warns(FutureWarning, match=renamed.format("refine")):
        old = matcher.refine(images, quats, shifts=shifts, cone_deg=5.0)
    new = matcher.refine(images, quats, shifts_px=shifts, cone_deg=5.0)
    np.testing.assert_array_equal(old.shifts_px, new.shifts_px)
    with pytest.warns(FutureWarning, match=renamed.format("score")):
        old_score = matcher.score(images, quats, shifts=shifts)
    assert old_score == matcher.score(images, quats, shifts_px=shifts)


_ROUNDING = (
    "float32 refinement: the batched correlations round differently with the batch's "
    "order and size, which moves refined poses by up to ~1e-7 (sometimes), above the "
    "check's 1e-7 relative tolerance; grid poses are exact"
)


class TabularMatcher(TabularChecks, ProjectionMatcher):
    """ProjectionMatcher driven by scikit-learn's generic checks (tabular data)."""


@parametrize_with_checks(
    [
        TabularMatcher(
            phantom_volume(8, dtype=np.float64),
            angular_step_deg=30,
            max_shift_px=1.0,
            device="cpu",
        ),
        TabularMatcher(
            phantom_volume(8, dtype=np.float64),
            angular_step_deg=45,
            max_shift_px=0.0,
            refine_step_deg=10.0,
            device="cpu",
        ),
    ],
    expected_failed_checks=lambda est: (
        {}
        if est.refine_step_deg is None
        else dict.fromkeys(
            (
                "check_methods_sample_order_invariance",
                "check_methods_subset_invariance",
            ),
            _ROUNDING,
        )
    ),
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
