"""Losses: eq. 12, 14, 15 by hand; symmetry blindness and awareness; gradients."""

import numpy as np
import pytest
import torch

from skpose.geometry.rotations import (
    axis_angle_to_quat,
    quat_multiply,
    random_quaternions,
)
from skpose.geometry.symmetry import symmetry_group
from skpose.imaging.projection import FourierProjector, project
from skpose.learn.losses import (
    qd_loss,
    reprojection_l1_loss,
    reprojection_scale,
    symmetric_qd_loss,
    weighted_loss,
)
from skpose.simulate import phantom_volume


@pytest.fixture(scope="module")
def projector():
    return FourierProjector(torch.as_tensor(phantom_volume(24, dtype=np.float64)))


def test_qd_loss_by_hand():
    a = random_quaternions(8, random_state=0)
    b = random_quaternions(8, random_state=1)
    by_hand = np.mean([1 - float(a[i] @ b[i]) ** 2 for i in range(8)])
    assert float(qd_loss(a, b)) == pytest.approx(by_hand)
    assert float(qd_loss(a, a)) == pytest.approx(0, abs=1e-12)
    assert float(qd_loss(a, -a)) == pytest.approx(0, abs=1e-12)  # sign-invariant
    # 1 - <q1, q2>^2 = sin^2(theta / 2) for a rotation by theta between them.
    turn = axis_angle_to_quat(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    assert float(qd_loss(a, quat_multiply(a, turn))) == pytest.approx(np.sin(0.5) ** 2)


def test_symmetric_qd_is_zero_for_mates_and_below_plain_qd():
    q = random_quaternions(6, random_state=2)
    group = symmetry_group("D7")
    mates = quat_multiply(q, group[torch.arange(6) % 14])
    assert float(symmetric_qd_loss(mates, q, "D7")) == pytest.approx(0, abs=1e-12)
    assert float(qd_loss(mates[1:], q[1:])) > 0.01  # the paper's QD is blind to it
    other = random_quaternions(6, random_state=3)
    assert float(symmetric_qd_loss(other, q, "D7")) <= float(qd_loss(other, q))
    assert float(symmetric_qd_loss(other, q, "C1")) == pytest.approx(
        float(qd_loss(other, q))
    )


def test_reprojection_l1_by_hand(projector):
    a = random_quaternions(4, random_state=4)
    b = random_quaternions(4, random_state=5)
    shifts = torch.tensor(
        [[1.0, -2.0], [0.5, 0.0], [0.0, 0.0], [-3.0, 2.0]], dtype=torch.float64
    )
    pa, pb = projector(a, shifts), projector(b, shifts)
    by_hand = float((pa - pb).abs().mean())
    assert float(reprojection_l1_loss(projector, a, b, shifts)) == pytest.approx(
        by_hand
    )
    assert float(
        reprojection_l1_loss(projector, a, b, shifts, scale=2.0)
    ) == pytest.approx(by_hand / 2)


def test_reprojection_loss_ignores_symmetry_mates():
    vol = torch.as_tensor(phantom_volume(25, "D2", dtype=np.float64))
    proj = FourierProjector(vol)
    q = random_quaternions(4, random_state=6)
    mates = quat_multiply(q, symmetry_group("D2"))
    scale = float(project(vol, q).abs().mean())
    assert float(reprojection_l1_loss(proj, mates, q)) < 1e-6 * scale
    assert (
        float(reprojection_l1_loss(proj, random_quaternions(4, random_state=7), q))
        > 0.05 * scale
    )


def test_weighted_loss_combines_terms(projector):
    a = random_quaternions(5, random_state=8)
    b = random_quaternions(5, random_state=9)
    qd = float(qd_loss(a, b))
    rep = float(reprojection_l1_loss(projector, a, b, scale=3.0))
    got = float(weighted_loss(a, b, w=0.3, projector=projector, scale=3.0))
    assert got == pytest.approx(0.3 * qd + 0.7 * rep)
    assert float(weighted_loss(a, b, w=1.0)) == pytest.approx(qd)  # no projector needed
    with pytest.raises(ValueError, match="projector"):
        weighted_loss(a, b, w=0.5)


def test_reprojection_scale_makes_random_guess_about_one(projector):
    scale = reprojection_scale(projector)
    a = random_quaternions(128, random_state=10)
    b = random_quaternions(128, random_state=11)
    assert 0.8 < float(reprojection_l1_loss(projector, a, b, scale=scale)) < 1.2
    # Scaling the map scales the scale: w means the same for any intensity scale.
    twice = FourierProjector(2 * projector_volume(projector))
    assert reprojection_scale(twice) == pytest.approx(2 * scale, rel=1e-6)


def projector_volume(projector):
    return torch.as_tensor(phantom_volume(24, dtype=np.float64))


def test_gradients_reach_predictions(projector):
    q = random_quaternions(3, random_state=12).requires_grad_(True)
    t = random_quaternions(3, random_state=13)
    weighted_loss(q, t, w=0.5, projector=projector, symmetry="C2").backward()
    assert (
        q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    )
