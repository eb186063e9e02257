"""Quaternion algebra and every angle convention of skpose, in one place.

Conventions (see ``docs/conventions.md``; each is pinned by a test):

- Quaternions are scalar first ``(w, x, y, z)`` with unit norm; ``q`` and ``-q`` are
  the same rotation; outputs are canonical (``w >= 0``).
- A rotation matrix ``R`` acts on column vectors ``(x, y, z)``: ``p' = R p``.
  ``quat_to_matrix`` is the standard formula (paper eq. 10 without its sign typo).
- Our ``R`` **is** RELION's matrix ``A = Euler_angles2matrix(rot, tilt, psi)``, which
  equals ``scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi],
  degrees=True).as_matrix().T``. A volume projected at ``R`` gives
  ``img(x, y) = sum_z V(R^T (x, y, z))``.
- cryoSPARC ``alignments3D/pose`` is the axis-angle vector (radians) of ``R^T``
  (checked against cryoDRGN's reading of a real ``.cs`` file).

Every function takes torch tensors with leading batch dimensions ``(...)`` and follows
their device and dtype. numpy arrays are accepted too: they are converted at the edge
and the result comes back as numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from skpose._validation import as_quaternions, check_finite, numpy_edge, to_tensor

__all__ = [
    "axis_angle_to_quat",
    "cryosparc_pose_to_quat",
    "geodesic_distance",
    "matrix_to_quat",
    "matrix_to_relion_euler",
    "quat_canonical",
    "quat_conjugate",
    "quat_multiply",
    "quat_normalize",
    "quat_to_axis_angle",
    "quat_to_cryosparc_pose",
    "quat_to_matrix",
    "quat_to_relion_euler",
    "random_quaternions",
    "relion_euler_to_matrix",
    "relion_euler_to_quat",
]


def _check_matrix(matrix, name: str = "matrix") -> torch.Tensor:
    m = to_tensor(matrix, name)
    if m.ndim < 2 or m.shape[-2:] != (3, 3):
        raise ValueError(
            f"Expected '{name}' to have shape (..., 3, 3), got {tuple(m.shape)}."
        )
    check_finite(m, name)
    return m


def _check_vectors(x, name: str, size: int = 3) -> torch.Tensor:
    t = to_tensor(x, name)
    if t.ndim == 0 or t.shape[-1] != size:
        raise ValueError(
            f"Expected '{name}' to have shape (..., {size}), got {tuple(t.shape)}."
        )
    check_finite(t, name)
    return t


# --------------------------------------------------------------------------------------
# Quaternion algebra
# --------------------------------------------------------------------------------------


@numpy_edge
def quat_normalize(quat):
    """Divide quaternions by their norm.

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z). Zero-norm or non-finite rows raise.

    Returns
    -------
    torch.Tensor of shape (..., 4)
        Unit quaternions.
    """
    return as_quaternions(quat, "quat")


@numpy_edge
def quat_canonical(quat):
    """Flip the sign of quaternions so that ``w >= 0`` (q and -q are one rotation).

    When ``w == 0`` exactly, the first non-zero of ``(x, y, z)`` is made positive, so
    that the canonical form is unique.

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z).

    Returns
    -------
    torch.Tensor of shape (..., 4)
        The same rotations with ``w >= 0``.

    Examples
    --------
    >>> quat_canonical(np.array([-1.0, 0.0, 0.0, 0.0]))
    array([1., 0., 0., 0.])
    """
    q = as_quaternions(quat, "quat", normalize=False)
    # Sign of the first non-zero component, scanning w, x, y, z.
    nonzero = q != 0
    first = torch.argmax(nonzero.to(torch.int8), dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(q, -1, first))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return q * sign + 0.0  # + 0.0 turns -0.0 into 0.0


@numpy_edge
def quat_conjugate(quat):
    """Conjugate ``(w, -x, -y, -z)``: the inverse rotation of a unit quaternion.

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z).

    Returns
    -------
    torch.Tensor of shape (..., 4)
    """
    q = as_quaternions(quat, "quat", normalize=False)
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


@numpy_edge
def quat_multiply(quat1, quat2):
    """Hamilton product ``quat1 * quat2``: the rotation ``R(quat1) @ R(quat2)``.

    Parameters
    ----------
    quat1, quat2 : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z); leading dimensions broadcast.

    Returns
    -------
    torch.Tensor of shape (..., 4)
        Not normalised, not canonicalised.
    """
    a = as_quaternions(quat1, "quat1", normalize=False)
    b = as_quaternions(quat2, "quat2", normalize=False)
    a, b = torch.broadcast_tensors(a, b.to(a.dtype))
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        dim=-1,
    )


@numpy_edge
def quat_to_matrix(quat):
    """Rotation matrices of unit quaternions (paper eq. 10, standard signs).

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z); normalised here.

    Returns
    -------
    torch.Tensor of shape (..., 3, 3)
        ``R`` acting on column vectors ``(x, y, z)``; equal to RELION's ``A``.

    Examples
    --------
    >>> quat_to_matrix(np.array([1.0, 0.0, 0.0, 0.0]))
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    """
    q = as_quaternions(quat, "quat")
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


@numpy_edge
def matrix_to_quat(matrix):
    """Unit quaternions of rotation matrices, stable for every angle.

    Shepperd's method: of the four algebraically equal formulas, each row uses the one
    whose denominator is largest, so there is no loss of precision near 180 degrees.

    Parameters
    ----------
    matrix : torch.Tensor of shape (..., 3, 3)
        Rotation matrices acting on column vectors.

    Returns
    -------
    torch.Tensor of shape (..., 4)
        Canonical unit quaternions (w >= 0), scalar first.
    """
    m = _check_matrix(matrix)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 w^2, 4 x^2, 4 y^2, 4 z^2
    sq = torch.stack(
        (
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ),
        dim=-1,
    )
    # Each row equals 4 * q_i * q (i = w, x, y, z).
    cand = torch.stack(
        (
            torch.stack((sq[..., 0], m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, sq[..., 1], m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, sq[..., 2], m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, sq[..., 3]), dim=-1),
        ),
        dim=-2,
    )
    best = torch.argmax(sq, dim=-1)
    picked = torch.gather(
        cand, -2, best[..., None, None].expand(*best.shape, 1, 4)
    ).squeeze(-2)
    q = picked / torch.linalg.vector_norm(picked, dim=-1, keepdim=True)
    return quat_canonical(q)


def random_quaternions(n: int, random_state=None, *, dtype=torch.float64, device=None):
    """Draw ``n`` rotations uniformly on SO(3) (normalised 4-D Gaussians).

    Parameters
    ----------
    n : int
        Number of rotations.
    random_state : None, int or numpy.random.Generator
        Seed for reproducibility (numpy's generator, so results do not depend on the
        device).
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor of shape (n, 4)
        Canonical unit quaternions (w >= 0).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"Expected 'n' to be a non-negative integer, got {n!r}.")
    rng = np.random.default_rng(random_state)
    g = rng.standard_normal((int(n), 4))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = torch.from_numpy(g).to(dtype=dtype, device=device)
    return quat_canonical(q)


@numpy_edge
def geodesic_distance(quat1, quat2):
    """Angle of the rotation taking ``quat1`` to ``quat2`` (paper eq. 11), radians.

    Computed as ``2 atan2(|v|, |w|)`` of ``conj(quat1) * quat2`` rather than
    ``2 arccos |<q1, q2>|``: the same value, accurate near 0 and 180 degrees.

    Parameters
    ----------
    quat1, quat2 : torch.Tensor of shape (..., 4)
        Quaternions, scalar first; normalised here; leading dimensions broadcast.

    Returns
    -------
    torch.Tensor of shape (...)
        Angles in [0, pi].
    """
    a = as_quaternions(quat1, "quat1")
    b = as_quaternions(quat2, "quat2").to(a.dtype)
    d = quat_multiply(quat_conjugate(a), b)
    vec = torch.linalg.vector_norm(d[..., 1:], dim=-1)
    return 2 * torch.atan2(vec, d[..., 0].abs())


# --------------------------------------------------------------------------------------
# RELION Euler angles (ZYZ, degrees)
# --------------------------------------------------------------------------------------


@numpy_edge
def relion_euler_to_matrix(angles_deg):
    """RELION's ``Euler_angles2matrix(rot, tilt, psi)``, written out.

    Parameters
    ----------
    angles_deg : torch.Tensor of shape (..., 3)
        ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` in degrees.

    Returns
    -------
    torch.Tensor of shape (..., 3, 3)
        RELION's ``A`` (= our ``R``).
    """
    ang = torch.deg2rad(_check_vectors(angles_deg, "angles_deg"))
    ca, cb, cg = torch.cos(ang).unbind(-1)
    sa, sb, sg = torch.sin(ang).unbind(-1)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = (
        (cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb),
        (-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb),
        (sc, ss, cb),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


@numpy_edge
def relion_euler_to_quat(angles_deg):
    """Quaternions of RELION Euler angles ``(rot, tilt, psi)`` in degrees.

    Parameters
    ----------
    angles_deg : torch.Tensor of shape (..., 3)
        ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` in degrees.

    Returns
    -------
    torch.Tensor of shape (..., 4)
        Canonical unit quaternions whose matrix is RELION's ``A``.

    Examples
    --------
    >>> relion_euler_to_quat(np.array([90.0, 0.0, 0.0])).round(6) + 0.0
    array([ 0.707107,  0.      ,  0.      , -0.707107])
    """
    return matrix_to_quat(relion_euler_to_matrix(angles_deg))


@numpy_edge
def matrix_to_relion_euler(matrix):
    """RELION's ``Euler_matrix2angles``: ``(rot, tilt, psi)`` in degrees.

    ``tilt`` is in [0, 180]; ``rot`` and ``psi`` in (-180, 180]. At ``tilt`` 0 or 180
    (gimbal lock) ``rot`` is set to 0 and ``psi`` carries the in-plane angle, as RELION
    does.

    Parameters
    ----------
    matrix : torch.Tensor of shape (..., 3, 3)
        Rotation matrices (RELION's ``A``).

    Returns
    -------
    torch.Tensor of shape (..., 3)
        ``(rot, tilt, psi)`` in degrees.
    """
    a = _check_matrix(matrix)
    abs_sb = torch.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    tilt = torch.atan2(abs_sb, a[..., 2, 2])
    rot = torch.atan2(a[..., 2, 1], a[..., 2, 0])
    psi = torch.atan2(a[..., 1, 2], -a[..., 0, 2])
    locked = abs_sb < 16 * torch.finfo(torch.float32).eps
    up = a[..., 2, 2] > 0
    psi_locked = torch.where(
        up,
        torch.atan2(-a[..., 1, 0], a[..., 0, 0]),
        torch.atan2(a[..., 1, 0], -a[..., 0, 0]),
    )
    tilt = torch.where(locked, torch.where(up, 0.0 * tilt, 0.0 * tilt + math.pi), tilt)
    rot = torch.where(locked, torch.zeros_like(rot), rot)
    psi = torch.where(locked, psi_locked, psi)
    angles = torch.rad2deg(torch.stack((rot, tilt, psi), dim=-1))
    # atan2 returns -180 for (-0.0, x < 0): the documented range is (-180, 180].
    wrap = torch.zeros_like(angles)
    wrap[..., 0::2] = 360.0
    return torch.where(angles <= -180.0, angles + wrap, angles)


@numpy_edge
def quat_to_relion_euler(quat):
    """RELION Euler angles ``(rot, tilt, psi)`` in degrees of unit quaternions.

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z).

    Returns
    -------
    torch.Tensor of shape (..., 3)
        ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` in degrees, as
        :func:`matrix_to_relion_euler`.
    """
    return matrix_to_relion_euler(quat_to_matrix(quat))


# --------------------------------------------------------------------------------------
# Axis-angle and cryoSPARC
# --------------------------------------------------------------------------------------


@numpy_edge
def axis_angle_to_quat(rotvec):
    """Quaternions of axis-angle vectors ``theta * axis`` (theta in radians).

    Parameters
    ----------
    rotvec : torch.Tensor of shape (..., 3)
        Rotation vectors: direction the axis (right hand), length the angle.

    Returns
    -------
    torch.Tensor of shape (..., 4)
        Canonical unit quaternions. Differentiable, also at ``theta = 0``.
    """
    v = _check_vectors(rotvec, "rotvec")
    theta = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    # sin(theta / 2) / theta = 0.5 * sinc(theta / (2 pi)), finite at 0.
    scale = 0.5 * torch.sinc(theta / (2 * math.pi))
    q = torch.cat((torch.cos(theta / 2), v * scale), dim=-1)
    return quat_canonical(q)


@numpy_edge
def quat_to_axis_angle(quat):
    """Axis-angle vectors ``theta * axis`` of unit quaternions, ``theta`` in [0, pi].

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z).

    Returns
    -------
    torch.Tensor of shape (..., 3)
        Rotation vectors in radians.
    """
    q = quat_canonical(as_quaternions(quat, "quat"))
    vec = q[..., 1:]
    sin_half = torch.linalg.vector_norm(vec, dim=-1, keepdim=True)
    theta = 2 * torch.atan2(sin_half, q[..., :1])
    small = sin_half < 1e-8
    safe = torch.where(small, torch.ones_like(sin_half), sin_half)
    # theta / sin(theta/2) -> 2 / w as theta -> 0.
    factor = torch.where(small, 2 / q[..., :1], theta / safe)
    return vec * factor


@numpy_edge
def cryosparc_pose_to_quat(pose):
    """Quaternions of cryoSPARC ``alignments3D/pose`` (axis-angle of ``R^T``).

    Parameters
    ----------
    pose : torch.Tensor of shape (..., 3)
        cryoSPARC's axis-angle vectors in radians.

    Returns
    -------
    torch.Tensor of shape (..., 4)
        Canonical quaternions of our ``R`` (RELION's ``A``).
    """
    return quat_canonical(quat_conjugate(axis_angle_to_quat(pose)))


@numpy_edge
def quat_to_cryosparc_pose(quat):
    """CryoSPARC ``alignments3D/pose`` axis-angle vectors of unit quaternions.

    Parameters
    ----------
    quat : torch.Tensor of shape (..., 4)
        Quaternions, scalar first (w, x, y, z).

    Returns
    -------
    torch.Tensor of shape (..., 3)
        Axis-angle vectors (radians) of ``R^T``.
    """
    return quat_to_axis_angle(quat_conjugate(as_quaternions(quat, "quat")))
