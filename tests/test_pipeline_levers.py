"""The network pipeline's levers: training from the map, calibrated cone, fallback,
recentring, several hypotheses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import skpose
from skpose import OrientationEstimator
from skpose.estimators import _levers
from skpose.geometry.rotations import axis_angle_to_quat, quat_multiply
from skpose.imaging._centring import average_projection, estimate_origins, recentre
from skpose.learn._simulated import MapSimulator, estimate_noise
from skpose.search import _fallback

BOX = 32


@pytest.fixture(scope="module")
def data():
    volume = skpose.phantom_volume(BOX)
    sim = skpose.simulate_particles(
        volume, 240, snr=0.5, ctf=True, max_shift=2, pixel_size_angstrom=3.0,
        random_state=0,
    )  # fmt: skip
    return volume, sim


def _estimator(volume, **params):
    params = {"max_iter": 20, **params}
    return OrientationEstimator(
        volume, architecture="small", image_size=BOX, batch_size=16, lr=1e-3,
        random_state=0, device="cpu", **params,
    )  # fmt: skip


def _fit(est, sim, n=200):
    rows = np.arange(n)
    return est.fit(sim.images[:n], sim.quaternions[:n], sim.shifts_px[:n],
                   ctf=sim.ctf[rows])  # fmt: skip


def test_noise_estimate_recovers_the_simulated_snr(data):
    volume, sim = data
    rows = np.arange(200)
    noise = estimate_noise(
        volume, sim.images[:200], sim.quaternions[:200], sim.shifts_px[:200],
        sim.ctf[rows],
    )  # fmt: skip
    assert noise.snr == pytest.approx(0.5, rel=0.15)
    assert noise.noise_std == pytest.approx(sim.noise_std, rel=0.1)


def test_simulated_particles_match_the_labelled_statistics(data):
    volume, sim = data
    rows = np.arange(200)
    labelled = estimate_noise(volume, sim.images[:200], sim.quaternions[:200],
                              sim.shifts_px[:200], sim.ctf[rows])  # fmt: skip
    simulator = MapSimulator(
        volume, labelled, sim.shifts_px[:200], sim.ctf[rows], random_state=1
    )
    images, q, t, ctf = simulator.draw_raw(400)
    drawn = estimate_noise(volume, images, q, t, ctf)
    assert drawn.snr == pytest.approx(labelled.snr, rel=0.25)
    # CTFs and origins are the labelled ones, drawn with replacement.
    assert np.isin(ctf.defocus_u_angstrom, sim.ctf.defocus_u_angstrom[:200]).all()
    labelled_df = sim.ctf.defocus_u_angstrom[:200]
    assert abs(ctf.defocus_u_angstrom.mean() - labelled_df.mean()) < 0.2 * np.ptp(
        labelled_df
    )
    assert np.abs(t).max() <= np.abs(sim.shifts_px[:200]).max()
    x, y = simulator.draw(8)
    assert x.shape == (8, BOX, BOX) and x.dtype == np.float32 and y.shape == (8, 6)


def test_training_from_the_map_is_reproducible_and_used(data):
    volume, sim = data
    a = _fit(_estimator(volume, simulate_from_map=0.5), sim)
    b = _fit(_estimator(volume, simulate_from_map=0.5), sim)
    plain = _fit(_estimator(volume), sim)
    test = sim.images[200:]
    ctf = sim.ctf[np.arange(200, 240)]
    np.testing.assert_array_equal(a.predict(test, ctf), b.predict(test, ctf))
    assert not np.allclose(a.predict(test, ctf), plain.predict(test, ctf))
    assert a.simulated_noise_.snr == pytest.approx(0.5, rel=0.25)
    assert a.net_.simulator is None  # not pickled with the model
    assert a.n_iter_ == 20


def test_snr_curriculum_starts_clean_and_is_reproducible(data):
    volume, sim = data
    rows = np.arange(50)
    noise = estimate_noise(volume, sim.images[:50], sim.quaternions[:50],
                           sim.shifts_px[:50], sim.ctf[rows])  # fmt: skip
    clean = MapSimulator(volume, noise, np.zeros((1, 2)), sim.ctf[rows], 0)
    clean.noise_scale = 0.0
    images, q, t, ctf = clean.draw_raw(20)
    assert estimate_noise(volume, images, q, t, ctf).snr > 1e3
    params = {"simulate_from_map": 0.5, "snr_curriculum": True}
    a = _fit(_estimator(volume, **params), sim)
    b = _fit(_estimator(volume, **params), sim)
    plain = _fit(_estimator(volume, simulate_from_map=0.5), sim)
    test, ctf = sim.images[200:], sim.ctf[np.arange(200, 240)]
    np.testing.assert_array_equal(a.predict(test, ctf), b.predict(test, ctf))
    assert not np.allclose(a.predict(test, ctf), plain.predict(test, ctf))
    assert a.net_.sim_step == 20 and a.net_.curriculum_steps == 10


def test_paper_configuration_still_trains(data):
    volume, sim = data
    est = OrientationEstimator(volume, architecture="vgg16", image_size=BOX,
                               max_iter=2, batch_size=8, random_state=0,
                               device="cpu")  # fmt: skip
    _fit(est, sim, n=40)
    assert est.n_iter_ == 2
    assert np.isfinite(est.net_.history[-1, "train_loss"])
    for name in ("simulated_noise_", "calibration_", "fallback_threshold_"):
        assert not hasattr(est, name)
    assert est.refine_cone_deg_ == est._cone_deg() == 45.0  # the measured default


def test_fallback_researches_low_confidence_particles(data):
    volume, sim = data
    # A barely trained network: most refined poses are wrong and score low.
    est = _fit(
        _estimator(volume, fallback="search", refine_cone_deg="auto", max_iter=10), sim
    )
    cal = est.calibration_
    assert len(cal["scores"]) == 20  # the held-out particles (at least 20)
    assert est.refine_cone_deg_ == pytest.approx(
        np.clip(np.percentile(cal["network_errors_deg"], 90), 15, 90)
    )
    assert est.fallback_threshold_ > -np.inf  # some held-out poses were wrong
    est.set_params(refine=True)
    test = sim.images[200:]
    ctf = sim.ctf[np.arange(200, 240)]
    poses, fell = est.predict_poses(test, ctf=ctf, return_fallback=True)
    assert 0 < fell.mean() <= 1
    errors = skpose.angular_error(sim.quaternions[200:], poses.quaternions)
    assert np.median(errors[fell]) < 5  # the search found them
    est.set_params(fallback=None)
    plain, none = est.predict_poses(test, ctf=ctf, return_fallback=True)
    assert not none.any()
    assert (poses.score[fell] >= plain.score[fell]).all()


def test_fallback_threshold_and_merge():
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    errors = np.array([40.0, 30.0, 50.0, 1.0, 2.0, 1.5])
    assert _fallback.fallback_threshold(scores, errors) == pytest.approx(0.6)
    assert _fallback.fallback_threshold(scores, np.ones(6)) == -np.inf
    assert _fallback.auto_cone_deg([1.0] * 10) == 15.0
    assert _fallback.auto_cone_deg(np.linspace(0, 100, 11)) == 90.0
    poses = skpose.Poses(np.zeros((3, 4)), np.zeros((3, 2)), np.zeros(3), np.zeros(3))
    found = skpose.Poses(np.ones((2, 4)), np.ones((2, 2)), np.array([1.0, -1.0]),
                         np.ones(2))  # fmt: skip
    merged = _fallback.merge(poses, found, np.array([0, 2]))
    np.testing.assert_array_equal(merged.score, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(merged.quaternions[0], np.ones(4))
    assert poses.score[0] == 0  # not modified in place


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"simulate_from_map": 1.0}, "'simulate_from_map' .* range \\[0.0, 1.0\\)"),
        ({"simulate_from_map": "half"}, "'simulate_from_map' parameter"),
        ({"refine_cone_deg": "wide"}, "'refine_cone_deg' parameter .* among {'auto'}"),
        ({"refine_cone_deg": 120.0}, "'refine_cone_deg' parameter"),
        ({"fallback": "grid"}, "'fallback' .* None or a str among {'search'}"),
        ({"fallback_step_deg": 0}, "'fallback_step_deg' parameter"),
        ({"refine_shift_px": -1.0}, "'refine_shift_px' parameter"),
        ({"snr_curriculum": 1}, "'snr_curriculum' parameter .* instance of 'bool'"),
        ({"recentre": "yes"}, "'recentre' parameter .* instance of 'bool'"),
        ({"hypotheses": 3}, "'hypotheses' parameter .* among {1, 2, 4}"),
    ],
)
def test_lever_parameters_are_checked(data, params, match):
    volume, sim = data
    with pytest.raises(ValueError, match=match):
        _fit(_estimator(volume, **params), sim, n=20)


def test_simulator_mix_replaces_a_fraction_of_the_batch(data):
    volume, sim = data
    rows = np.arange(50)
    noise = estimate_noise(volume, sim.images[:50], sim.quaternions[:50],
                           sim.shifts_px[:50], sim.ctf[rows])  # fmt: skip
    simulator = MapSimulator(volume, noise, sim.shifts_px[:50], sim.ctf[rows], 0)
    X, y = torch.zeros(10, BOX, BOX), torch.zeros(10, 6)
    X2, y2 = simulator.mix(X, y, 0.5)
    assert (X2[:5].abs().sum(dim=(1, 2)) > 0).all() and (X2[5:] == 0).all()
    assert torch.allclose(y2[:5, :4].norm(dim=1), torch.ones(5))
    assert (X == 0).all()  # the loader's batch is left alone


# --------------------------------------------------------------------------------------
# recentre=True: origins estimated without poses
# --------------------------------------------------------------------------------------


def test_average_projection_is_the_mean_over_views():
    volume = skpose.phantom_volume(BOX)
    views = skpose.simulate_particles(volume, 3000, random_state=3).images.mean(0)
    average = average_projection(volume).numpy()
    assert np.corrcoef(average.ravel(), views.ravel())[0, 1] > 0.995
    # Round: the same at the four quarter turns.
    np.testing.assert_allclose(np.rot90(average[1:, 1:]), average[1:, 1:], atol=1e-9)


@pytest.mark.parametrize(
    ("snr", "ctf", "bound"), [(None, False, 1.6), (0.1, True, 3.0)]
)
def test_estimated_origins_find_the_particles(snr, ctf, bound):
    volume = skpose.phantom_volume(64)
    sim = skpose.simulate_particles(
        volume, 200, snr=snr, ctf=ctf, max_shift=6, pixel_size_angstrom=3.0,
        random_state=4,
    )  # fmt: skip
    reference = average_projection(volume)
    found = estimate_origins(sim.images, reference, sim.ctf)
    error = np.linalg.norm(found - sim.shifts_px, axis=1)
    blind = np.linalg.norm(sim.shifts_px, axis=1)  # what zero origins miss by
    assert np.median(error) < bound < np.median(blind)
    # Recentred by the estimates, the particles are found at the centre.
    again = estimate_origins(recentre(sim.images, found), reference, sim.ctf)
    assert np.median(np.linalg.norm(again, axis=1)) < 0.1


def clone_of(est, **params):
    """A fitted copy of ``est`` with ``params`` set (not refitted)."""
    import copy

    return copy.deepcopy(est).set_params(**params)


def test_recentre_is_used_at_fit_and_predict(data, monkeypatch):
    volume, sim = data
    est = _fit(_estimator(volume, recentre=True), sim)
    plain = _fit(_estimator(volume), sim)
    assert est.centring_reference_.shape == (BOX, BOX)
    assert plain.centring_reference_ is None
    test, ctf = sim.images[200:], sim.ctf[np.arange(200, 240)]
    # The network sees recentred images: moving the particles by whole pixels
    # (the estimates move with them) barely moves its answer; without, it does.
    moved = recentre(test, np.tile([[3.0, -2.0]], (len(test), 1))).numpy()

    def change(model):
        before, after = model.predict(test, ctf), model.predict(moved, ctf)
        return np.median(skpose.angular_error(before, after))

    assert change(est) < 0.1 * change(plain)
    # The other input than the network was trained on is refused.
    with pytest.raises(ValueError, match="fitted with recentre=False"):
        clone_of(plain, recentre=True).predict(test, ctf)
    with pytest.raises(ValueError, match="fitted with recentre=True"):
        clone_of(est, recentre=False).predict(test, ctf)
    # Without known origins the poses carry the estimated ones ...
    poses = est.predict_poses(test, ctf=ctf)
    np.testing.assert_allclose(
        poses.shifts_px, estimate_origins(test, est.centring_reference_, ctf)
    )
    # ... and with them, the given ones.
    given = est.predict_poses(test, sim.shifts_px[200:], ctf=ctf)
    np.testing.assert_allclose(given.shifts_px, sim.shifts_px[200:])
    # The refinement starts from the estimates, not from zero.
    starts = []
    refined = type(est)._refined

    def spy(self, projector, x, q, start, *args, **kwargs):
        starts.append(np.array(start))
        return refined(self, projector, x, q, start, *args, **kwargs)

    monkeypatch.setattr(type(est), "_refined", spy)
    est.set_params(refine=True)
    est.predict(test, ctf)
    np.testing.assert_allclose(starts[-1], poses.shifts_px)
    assert np.abs(poses.shifts_px).max() > 1.0


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_quarter_turned_projection_is_the_turned_pose(turns):
    volume = skpose.phantom_volume(BOX)
    q = skpose.random_quaternions(6, random_state=3).numpy()
    images = skpose.project(volume, q, np.zeros((6, 2)))
    spin = axis_angle_to_quat(torch.tensor([0.0, 0.0, -turns * np.pi / 2]))
    turned_pose = quat_multiply(spin.double().expand(6, 4), torch.as_tensor(q))
    expected = skpose.project(volume, turned_pose.numpy(), np.zeros((6, 2)))
    turned = _levers.quarter_turned(images, turns).numpy()
    np.testing.assert_allclose(turned, expected, atol=1e-4 * np.abs(expected).max())
    # Turning the turned pose back gives the pose.
    back = _levers.turned_back(turned_pose.numpy(), turns).numpy()
    assert skpose.angular_error(q, back).max() < 1e-5


@pytest.mark.parametrize(("k", "right_call"), [(2, 1), (4, 2), (4, 3)])
def test_hypotheses_keep_the_answer_that_fits_the_image(k, right_call, monkeypatch):
    # A network that is right on one turned copy only (and answers at random on the
    # others): the kept answer is its, turned back, for every particle.
    volume = skpose.phantom_volume(BOX)
    sim = skpose.simulate_particles(volume, 60, snr=None, max_shift=0, random_state=4)
    est = _estimator(volume, max_iter=2, hypotheses=k, refine_cone_deg=60.0)
    est.fit(sim.images[:20], sim.quaternions[:20])
    truth = sim.quaternions[20:]
    calls = []

    def network(x, verbose, precision="fp32", compile=False):
        calls.append(torch.as_tensor(x).numpy().copy())
        if len(calls) - 1 != right_call:
            return skpose.random_quaternions(len(x), random_state=len(calls)).numpy()
        turns = right_call * 4 // k
        spin = axis_angle_to_quat(torch.tensor([0.0, 0.0, -turns * np.pi / 2]))
        return quat_multiply(
            spin.double().expand(len(x), 4), torch.tensor(truth)
        ).numpy()

    monkeypatch.setattr(est.net_, "predict_quaternions", network)
    q = est.predict(sim.images[20:])
    assert len(calls) == k
    np.testing.assert_allclose(calls[1], _levers.quarter_turned(calls[0], 4 // k))
    assert skpose.angular_error(truth, q).max() < 1e-4
    # Refined, the poses start from that answer (and stay there).
    calls.clear()
    poses = est.set_params(refine=True).predict_poses(sim.images[20:])
    assert np.median(skpose.angular_error(truth, poses.quaternions)) < 0.5
    # One hypothesis: the network's first answer alone.
    calls.clear()
    one = clone_of(est, hypotheses=1, refine=False)
    monkeypatch.setattr(one.net_, "predict_quaternions", network)
    assert np.median(skpose.angular_error(truth, one.predict(sim.images[20:]))) > 30
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"'hypotheses' parameter .* 1, 2 or 4"):
        clone_of(est, hypotheses=3).predict(sim.images[20:])


def test_hypotheses_calibrate_the_cone_and_the_fallback(data):
    # fit's calibration chooses among the hypotheses before the cone is known.
    volume, sim = data
    params = {"hypotheses": 2, "refine_cone_deg": "auto", "fallback": "search"}
    est = _fit(_estimator(volume, **params), sim)
    assert 0 < est.refine_cone_deg_ <= 90 and np.isfinite(est.fallback_threshold_)
    assert len(est.calibration_["network_errors_deg"]) == 20
