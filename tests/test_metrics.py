"""Metrics: eq. 16 by hand, invariances, symmetry-aware angular error, scorer."""

import numpy as np
import pytest

from skpose.geometry.rotations import (
    axis_angle_to_quat,
    quat_multiply,
    random_quaternions,
)
from skpose.geometry.symmetry import symmetry_group
from skpose.imaging.projection import project
from skpose.metrics import (
    angular_error,
    error_summary,
    reprojection_rmse,
    reprojection_scorer,
)
from skpose.simulate import phantom_volume


@pytest.fixture(scope="module")
def vol():
    return phantom_volume(24).astype(np.float64)


def test_reprojection_rmse_equals_hand_computation(vol):
    qt = random_quaternions(5, random_state=0).numpy()
    qp = random_quaternions(5, random_state=1).numpy()
    a, b = project(vol, qt), project(vol, qp)
    by_hand = np.sqrt(sum(((a[i] - b[i]) ** 2).sum() for i in range(5)) / 5)
    assert reprojection_rmse(vol, qt, qp) == pytest.approx(by_hand, rel=1e-10)
    # Batching does not change it.
    assert reprojection_rmse(vol, qt, qp, batch_size=2) == pytest.approx(
        by_hand, rel=1e-10
    )


def test_reprojection_rmse_tiny_case_by_hand():
    """Identity against 180 degrees about z: the second image is the first turned.

    An odd box, so that every frequency has its mirror partner and the turn is exact.
    """
    vol = phantom_volume(25, dtype=np.float64)
    identity = np.array([[1.0, 0, 0, 0]])
    half_turn = np.array([[0.0, 0, 0, 1.0]])
    img = project(vol, identity)[0]
    turned = img[::-1, ::-1]  # x -> -x about index N // 2 of an odd box
    np.testing.assert_allclose(project(vol, half_turn)[0], turned, atol=1e-9)
    by_hand = np.sqrt(((img - turned) ** 2).sum())
    assert reprojection_rmse(vol, identity, half_turn) == pytest.approx(
        by_hand, rel=1e-8
    )
    # Scaling the map scales the RMSE: no hidden normalisation.
    assert reprojection_rmse(3 * vol, identity, half_turn) == pytest.approx(
        3 * by_hand, rel=1e-8
    )


def test_zero_for_identical_poses_and_symmetry_mates():
    q = random_quaternions(6, random_state=5).numpy()
    sym = phantom_volume(24, "D2", dtype=np.float64)
    assert reprojection_rmse(sym, q, q) == 0.0
    mates = quat_multiply(q, symmetry_group("D2").numpy()[np.arange(6) % 4])
    scale = np.sqrt((project(sym, q) ** 2).sum() / 6)
    # Not exactly 0: on an even box the Nyquist plane (index 0) has no mirror partner.
    assert reprojection_rmse(sym, q, mates) < 1e-4 * scale
    assert (
        reprojection_rmse(sym, q, random_quaternions(6, random_state=6).numpy())
        > 0.02 * scale
    )


def test_shifts_accepted(vol):
    q = random_quaternions(3, random_state=7).numpy()
    p = random_quaternions(3, random_state=8).numpy()
    shifts = np.array([[1.0, -2.0], [0.0, 3.0], [2.0, 2.0]])
    # An integer shift is a circular translation of both images: the RMSE is unchanged.
    assert reprojection_rmse(vol, q, p, shifts) == pytest.approx(
        reprojection_rmse(vol, q, p), rel=1e-6
    )


def test_angular_error_known_values_and_symmetric():
    q = random_quaternions(100, random_state=9).numpy()
    turn = axis_angle_to_quat(np.array([[0, 0, np.deg2rad(30.0)]]))
    p = quat_multiply(q, turn)
    np.testing.assert_allclose(angular_error(q, p), 30.0, atol=1e-9)
    np.testing.assert_allclose(angular_error(q, -p), 30.0, atol=1e-9)
    r = random_quaternions(100, random_state=10).numpy()
    np.testing.assert_allclose(
        angular_error(q, r, "D7"), angular_error(r, q, "D7"), atol=1e-9
    )
    np.testing.assert_allclose(angular_error(q, r), angular_error(r, q), atol=1e-9)
    assert np.all(angular_error(q, r, "D7") <= angular_error(q, r) + 1e-9)


@pytest.mark.parametrize("symmetry", ["C3", "D2", "O", "I"])
def test_angular_error_zero_between_mates(symmetry):
    q = random_quaternions(4, random_state=11).numpy()
    for s in symmetry_group(symmetry).numpy():
        np.testing.assert_allclose(
            angular_error(q, quat_multiply(q, s[None]), symmetry), 0, atol=1e-5
        )


def test_error_summary():
    s = error_summary([1.0, 2.0, 6.0, 12.0])
    assert s == {
        "median_deg": 4.0,
        "mean_deg": 5.25,
        "pct_below_5": 50.0,
        "pct_below_10": 75.0,
        "n": 4,
    }
    with pytest.raises(ValueError, match="errors_deg"):
        error_summary([])


def test_scorer_is_minus_rmse(vol):
    q = random_quaternions(4, random_state=12).numpy()

    class Fixed:
        def predict(self, X):
            return q[::-1].copy()

    scorer = reprojection_scorer(vol)
    assert scorer(Fixed(), np.zeros((4, 24, 24)), q) == pytest.approx(
        -reprojection_rmse(vol, q, q[::-1].copy())
    )


def test_bad_input(vol):
    q = random_quaternions(3, random_state=0).numpy()
    with pytest.raises(ValueError, match="same shape"):
        reprojection_rmse(vol, q, q[:2])
    with pytest.raises(ValueError, match="q_pred"):
        angular_error(q, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="q_true"):
        angular_error(np.full((3, 4), np.nan), q)
    with pytest.raises(ValueError, match=r"[Ss]ymmetry"):
        angular_error(q, q, "X3")
