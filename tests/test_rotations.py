"""Rotations: reference formulas, scipy, RELION, cryoSPARC/cryoDRGN, round trips."""

import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from skpose.geometry import rotations as rot

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def relion_euler_angles2matrix(alpha, beta, gamma):
    """RELION's ``Euler_angles2matrix`` (src/euler.cpp), written out independently."""
    alpha, beta, gamma = np.deg2rad([alpha, beta, gamma])
    ca, sa = np.cos(alpha), np.sin(alpha)
    cb, sb = np.cos(beta), np.sin(beta)
    cg, sg = np.cos(gamma), np.sin(gamma)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def paper_eq10(q):
    q1, q2, q3, q4 = q
    return np.array(
        [
            [1 - 2 * (q3**2 + q4**2), 2 * (q2 * q3 - q1 * q4), 2 * (q2 * q4 + q1 * q3)],
            [2 * (q2 * q3 + q1 * q4), 1 - 2 * (q2**2 + q4**2), 2 * (q3 * q4 - q1 * q2)],
            [2 * (q2 * q4 - q1 * q3), 2 * (q3 * q4 + q1 * q2), 1 - 2 * (q2**2 + q3**2)],
        ]
    )


@pytest.fixture
def quats():
    return rot.random_quaternions(500, random_state=0).numpy()


def same_rotation(q1, q2, atol):
    return np.allclose(np.abs(np.sum(q1 * q2, axis=-1)), 1.0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quat_to_matrix_matches_eq10_and_scipy(quats, dtype, device):
    q = torch.as_tensor(quats, dtype=dtype, device=device)
    m = rot.quat_to_matrix(q)
    assert m.dtype == dtype and m.device.type == device
    m = m.cpu().double().numpy()
    ref = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()
    np.testing.assert_allclose(m, ref, atol=TOL[dtype] * 10)
    np.testing.assert_allclose(
        m[:5], [paper_eq10(x) for x in quats[:5]], atol=TOL[dtype] * 10
    )


def test_relion_euler_formula_equals_ours_and_scipy_transpose():
    rng = np.random.default_rng(1)
    angles = rng.uniform(-180, 180, (200, 3))
    angles[:, 1] = rng.uniform(0, 180, 200)
    ours = rot.relion_euler_to_matrix(angles)
    written_out = np.stack([relion_euler_angles2matrix(*a) for a in angles])
    scipy_t = (
        Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    )
    np.testing.assert_allclose(ours, written_out, atol=1e-14)
    np.testing.assert_allclose(ours, scipy_t, atol=1e-14)
    np.testing.assert_allclose(
        rot.quat_to_matrix(rot.relion_euler_to_quat(angles)), written_out, atol=1e-13
    )


def test_known_values():
    # rot = 90 about z: RELION's A = Rz(90)^T, a -90 degree turn about z.
    q = rot.relion_euler_to_quat(np.array([90.0, 0.0, 0.0]))
    np.testing.assert_allclose(q, [np.sqrt(0.5), 0, 0, -np.sqrt(0.5)], atol=1e-15)
    # 180 degrees about x.
    np.testing.assert_allclose(
        rot.matrix_to_quat(np.diag([1.0, -1.0, -1.0])), [0, 1, 0, 0], atol=1e-15
    )
    np.testing.assert_allclose(
        np.rad2deg(
            rot.geodesic_distance(np.array([1.0, 0, 0, 0]), np.array([0.0, 0, 1, 0]))
        ),
        180.0,
    )


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-9, 179.9999999, 90.0])
def test_euler_round_trip_degenerate_tilts(tilt):
    angles = np.array([[30.0, tilt, 50.0], [-170.0, tilt, 120.0]])
    q = rot.relion_euler_to_quat(angles)
    back = rot.quat_to_relion_euler(q)
    assert np.all(back[:, 1] >= 0) and np.all(back[:, 1] <= 180)
    np.testing.assert_allclose(
        rot.relion_euler_to_matrix(back), rot.relion_euler_to_matrix(angles), atol=1e-7
    )
    assert same_rotation(rot.relion_euler_to_quat(back), q, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trips_through_every_representation(quats, dtype):
    q = torch.as_tensor(quats, dtype=dtype)
    atol = TOL[dtype] * 50
    chain = rot.matrix_to_quat(rot.quat_to_matrix(q))
    assert same_rotation(chain.numpy(), quats, atol)
    chain = rot.relion_euler_to_quat(rot.quat_to_relion_euler(chain))
    assert same_rotation(chain.numpy(), quats, atol)
    chain = rot.axis_angle_to_quat(rot.quat_to_axis_angle(chain))
    assert same_rotation(chain.numpy(), quats, atol)
    chain = rot.cryosparc_pose_to_quat(rot.quat_to_cryosparc_pose(chain))
    assert same_rotation(chain.numpy(), quats, atol)
    assert torch.all(chain[:, 0] >= 0)


def test_axis_angle_matches_scipy_and_is_finite_at_zero(quats):
    rv = rot.quat_to_axis_angle(quats)
    np.testing.assert_allclose(
        Rotation.from_rotvec(rv).as_matrix(), rot.quat_to_matrix(quats), atol=1e-12
    )
    np.testing.assert_allclose(rot.axis_angle_to_quat(np.zeros((1, 3))), [[1, 0, 0, 0]])
    np.testing.assert_allclose(rot.quat_to_axis_angle(np.array([[1.0, 0, 0, 0]])), 0)
    # Near 180 degrees, canonicalisation flips the axis but not the rotation.
    q = rot.axis_angle_to_quat(np.array([[np.pi - 1e-9, 0, 0]]))
    np.testing.assert_allclose(
        rot.quat_to_matrix(q)[0], np.diag([1.0, -1, -1]), atol=1e-8
    )


def test_matrix_to_quat_stable_near_180():
    angles = np.pi - np.logspace(-12, -1, 12)
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    rv = angles[:, None] * axis
    m = Rotation.from_rotvec(rv).as_matrix()
    q = rot.matrix_to_quat(m)
    np.testing.assert_allclose(rot.quat_to_matrix(q), m, atol=1e-14)


def test_multiply_composes_matrices(quats):
    a, b = quats[:250], quats[250:]
    np.testing.assert_allclose(
        rot.quat_to_matrix(rot.quat_multiply(a, b)),
        rot.quat_to_matrix(a) @ rot.quat_to_matrix(b),
        atol=1e-13,
    )
    ident = rot.quat_multiply(a, rot.quat_conjugate(a))
    np.testing.assert_allclose(
        rot.quat_canonical(ident), np.tile([1.0, 0, 0, 0], (250, 1)), atol=1e-14
    )


def test_geodesic_distance_properties(quats):
    a, b = quats[:250], quats[250:]
    d = rot.geodesic_distance(a, b)
    np.testing.assert_allclose(d, rot.geodesic_distance(b, a), atol=1e-14)
    np.testing.assert_allclose(d, rot.geodesic_distance(a, -b), atol=1e-14)
    np.testing.assert_allclose(
        d, 2 * np.arccos(np.clip(np.abs(np.sum(a * b, 1)), 0, 1)), atol=1e-7
    )
    ref = (
        Rotation.from_quat(a[:, [1, 2, 3, 0]]).inv()
        * Rotation.from_quat(b[:, [1, 2, 3, 0]])
    ).magnitude()
    np.testing.assert_allclose(d, ref, atol=1e-12)
    # Accurate near 0, where 2 arccos |<q1, q2>| loses all digits.
    tiny = rot.axis_angle_to_quat(np.array([[1e-9, 0, 0]]))
    np.testing.assert_allclose(
        rot.geodesic_distance(np.array([[1.0, 0, 0, 0]]), tiny), 1e-9, rtol=1e-6
    )


def test_random_quaternions_uniform_and_reproducible():
    q = rot.random_quaternions(20000, random_state=3).numpy()
    np.testing.assert_array_equal(
        q, rot.random_quaternions(20000, random_state=3).numpy()
    )
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-14)
    # Uniform on SO(3): angles have density (1 - cos t) / pi; mean = pi/2 + 2/pi.
    angle = rot.geodesic_distance(np.array([1.0, 0, 0, 0]), q)
    assert abs(angle.mean() - (np.pi / 2 + 2 / np.pi)) < 0.02
    # Viewing directions uniform on the sphere: each component of R^T z has mean 0.
    view = rot.quat_to_matrix(q)[:, 2, :]
    assert np.all(np.abs(view.mean(0)) < 0.02)


def test_gradcheck_float64():
    q = torch.tensor(
        rot.random_quaternions(3, random_state=1).numpy(), requires_grad=True
    )
    assert torch.autograd.gradcheck(rot.quat_to_matrix, (q,))
    other = q.detach().roll(1, 0).clone()
    assert torch.autograd.gradcheck(lambda x: rot.geodesic_distance(x, other), (q,))
    m = rot.quat_to_matrix(q.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(rot.matrix_to_quat, (m,))
    ang = torch.tensor(
        [[10.0, 40.0, 70.0], [-120.0, 100.0, 5.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    assert torch.autograd.gradcheck(rot.relion_euler_to_quat, (ang,))
    rv = torch.tensor(
        [[0.3, -0.2, 1.0], [1e-4, 0.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(rot.axis_angle_to_quat, (rv,))
    assert torch.autograd.gradcheck(rot.quat_to_axis_angle, (q,))


def test_cryosparc_poses_equal_cryodrgn_reading(shared_data):
    cs = np.load(shared_data / "poses" / "cryosparc_P12_J24_001_particles.cs")
    with open(shared_data / "poses" / "pose.cs.pkl", "rb") as f:
        rot_ref, _ = pickle.load(f)
    q = rot.cryosparc_pose_to_quat(cs["alignments3D/pose"].astype(np.float64))
    np.testing.assert_allclose(rot.quat_to_matrix(q), rot_ref, atol=1e-6)
    back = rot.quat_to_cryosparc_pose(q)
    np.testing.assert_allclose(
        rot.quat_to_matrix(rot.cryosparc_pose_to_quat(back)), rot_ref, atol=1e-6
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 4)), "non-zero"),
        (np.full((2, 4), np.nan), "finite"),
        (np.ones((3, 3)), r"shape \(\.\.\., 4\)"),
        (np.array([[1.0, np.inf, 0, 0]]), "finite"),
    ],
)
def test_bad_quaternions(bad, match):
    with pytest.raises(ValueError, match=match):
        rot.quat_to_matrix(bad)


def test_bad_other_inputs():
    with pytest.raises(ValueError, match="angles_deg"):
        rot.relion_euler_to_quat(np.ones((2, 2)))
    with pytest.raises(ValueError, match="matrix"):
        rot.matrix_to_quat(np.ones((2, 4, 4)))
    with pytest.raises(TypeError, match="quat"):
        rot.quat_to_matrix(np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="'n'"):
        rot.random_quaternions(-1)


def test_psi_and_rot_stay_in_their_documented_range():
    # atan2(-0.0, x < 0) is -180: RELION's range for rot and psi is (-180, 180].
    angles = np.array(
        [[10, 90, -180], [-180, 90, -180], [0, 0, -180], [0, 180, 180]], dtype=float
    )
    for dtype in (torch.float32, torch.float64):
        q = rot.relion_euler_to_quat(torch.as_tensor(angles, dtype=dtype))
        back = rot.quat_to_relion_euler(q).numpy()
        assert np.all(back[:, [0, 2]] > -180) and np.all(back[:, [0, 2]] <= 180)
        np.testing.assert_allclose(np.abs(back[:, 2]), 180.0, atol=1e-4)
    many = rot.quat_to_relion_euler(rot.random_quaternions(5000, random_state=3))
    assert many[:, [0, 2]].min() > -180 and many[:, [0, 2]].max() <= 180
