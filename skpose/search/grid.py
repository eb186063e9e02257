"""The search grid: near-uniform rotations over one asymmetric unit of a point group.

Part of :mod:`skpose.search` (which re-exports :func:`so3_grid`).

Viewing directions on a Fibonacci sphere times in-plane angles. A rotation ``R``
views the map along ``d = R^T z`` (the third row of ``R``, RELION's
``(cos rot sin tilt, sin rot sin tilt, cos tilt)``); the grid has
``ceil(4 pi / step^2)`` directions over the whole sphere (one per solid angle
``step^2``, as HEALPix grids are counted) and ``2 ceil(180 / step)`` in-plane angles
``psi_l = -360 l / n_psi`` degrees. With a point group only the directions of one
asymmetric unit of the sphere are kept: ``d`` is kept iff it is closer to a fixed,
generic direction ``l`` than every ``S^T d`` (the viewing directions of its mates
``R S``) is, i.e. ``d . l >= d . S l`` for every ``S``: the spherical Voronoi cell of
``l`` among its images, ``1 / |G|`` of the sphere; plus a strip ``0.35 step`` wide
beyond its border, without which rotations next to the border would lie up to a
whole step from the grid (their nearest grid neighbours fall outside the cell, and
those neighbours' mates are not grid points).
"""

from __future__ import annotations

import math

import torch

from skpose.geometry.rotations import (
    quat_canonical,
    quat_multiply,
    quat_to_matrix,
    relion_euler_to_quat,
)
from skpose.geometry.symmetry import symmetry_matrices

__all__ = [
    "direction_vectors",
    "grid_directions",
    "in_plane_quats",
    "n_psi_for",
    "so3_grid",
    "trial_offsets",
]

# A generic direction (about 5 degrees from +z) that picks one asymmetric unit.
_GENERIC_DIRECTION = (0.0731, 0.0419, 1.0)
# Width (in steps) of the strip kept beyond the asymmetric unit's border; measured:
# rotations next to the border are then as close to the grid as any (0.78 step at
# most), for C2, C3, D2, D7, T, O and I.
BORDER = 0.35


def n_psi_for(angular_step_deg: float) -> int:
    """In-plane angles of the grid: ``2 ceil(180 / step)`` (even)."""
    return 2 * math.ceil(180.0 / angular_step_deg - 1e-9)


def _fibonacci_directions(n: int, dtype=torch.float64) -> torch.Tensor:
    """``n`` near-uniform unit vectors ``(n, 3)`` (the Fibonacci sphere)."""
    i = torch.arange(n, dtype=dtype) + 0.5
    z = 1 - 2 * i / n
    azimuth = torch.remainder(math.pi * (1 + math.sqrt(5)) * i, 2 * math.pi)
    rho = torch.sqrt(1 - z * z)
    return torch.stack((rho * torch.cos(azimuth), rho * torch.sin(azimuth), z), dim=-1)


def _asymmetric_directions(
    directions: torch.Tensor, symmetry: str, margin_rad: float
) -> torch.Tensor:
    """Mask of the directions in the Voronoi cell of the generic direction, widened.

    ``d`` is kept when, for every operator ``S``, it lies on the generic direction's
    side of the great circle bisecting ``l`` and ``S l``, or less than ``margin_rad``
    beyond it: ``d . (l - S l) >= -|l - S l| sin(margin)``. The strip keeps the grid
    points whose mates the cell's rotations next to its border need.
    """
    mats = symmetry_matrices(symmetry, dtype=directions.dtype)
    generic = torch.tensor(_GENERIC_DIRECTION, dtype=directions.dtype)
    generic = generic / torch.linalg.vector_norm(generic)
    normals = generic - mats @ generic  # (G, 3): l - S l, zero for the identity
    slack = torch.linalg.vector_norm(normals, dim=-1) * math.sin(margin_rad)
    return (directions @ normals.T >= -slack - 1e-12).all(dim=1)


def grid_directions(angular_step_deg: float, symmetry: str = "C1") -> torch.Tensor:
    """Viewing directions of the grid as rotations at ``psi = 0``, ``(D, 4)`` float64.

    RELION angles ``(rot, tilt, 0)`` of the Fibonacci directions kept in the
    asymmetric unit (see the module docstring).
    """
    step = math.radians(angular_step_deg)
    dirs = _fibonacci_directions(math.ceil(4 * math.pi / step**2))
    dirs = dirs[_asymmetric_directions(dirs, symmetry, BORDER * step)]
    tilt = torch.rad2deg(torch.acos(dirs[:, 2].clamp(-1, 1)))
    rot = torch.rad2deg(torch.atan2(dirs[:, 1], dirs[:, 0]))
    return relion_euler_to_quat(torch.stack((rot, tilt, torch.zeros_like(rot)), -1))


def in_plane_quats(n_psi: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Rotations about z by RELION ``psi_l = -360 l / n_psi`` degrees, ``(n_psi, 4)``.

    The grid rotation ``(d, l)`` is ``in_plane[l] * direction[d]`` (left product:
    ``R = R_z(psi_l) R_d``).
    """
    half = -math.pi * torch.arange(n_psi, dtype=dtype, device=device) / n_psi
    # RELION's R_z(psi) = [[c, s, 0], [-s, c, 0], [0, 0, 1]] is a rotation by -psi.
    zeros = torch.zeros_like(half)
    return torch.stack((torch.cos(half), zeros, zeros, -torch.sin(half)), dim=-1)


def so3_grid(angular_step_deg: float, symmetry: str = "C1") -> torch.Tensor:
    """A near-uniform grid of rotations over one asymmetric unit of a point group.

    Viewing directions ``d = R^T z`` on a Fibonacci sphere, one per solid angle
    ``step^2`` (``ceil(4 pi / step^2)`` over the sphere, as a HEALPix grid of that
    spacing counts them), restricted to the spherical Voronoi cell of a generic
    direction among its symmetry images (``1 / |G|`` of the sphere); times
    ``n_psi = 2 ceil(180 / step)`` in-plane angles ``psi_l = -360 l / n_psi``
    (RELION's ``rlnAnglePsi``). Rotations are ordered direction-major: row
    ``d * n_psi + l``.

    Counts (C1 and D2; D2 keeps a quarter of the directions plus a strip
    ``0.35 step`` wide beyond the border of its asymmetric unit, which gives the
    rotations next to the border the same covering as elsewhere):

    ======  ====================  ====  ==========  ==================
    step    directions C1 (D2)    psi   C1 total    D2 total
    ======  ====================  ====  ==========  ==================
    15°     184 (54)              24    4 416       1 296 (0.29 C1)
    7.5°    734 (199)             48    35 232      9 552 (0.27 C1)
    3.75°   2 934 (769)           96    281 664     73 824 (0.26 C1)
    ======  ====================  ====  ==========  ==================

    Measured spacing: neighbouring in-plane angles are ``step`` apart and
    neighbouring directions ``1.07 step`` (hexagonal packing of one point per
    ``step^2``). A uniformly random rotation lies a median ``0.48-0.49 step`` from its
    nearest grid rotation and at most ``0.78 step`` (C1, D2, C3, T, O, I alike,
    symmetry-aware).

    Parameters
    ----------
    angular_step_deg : float
        Spacing in degrees, in (0, 90].
    symmetry : str, default "C1"
        Point group (see :func:`skpose.geometry.symmetry.symmetry_group`).

    Returns
    -------
    torch.Tensor of shape (n_directions * n_psi, 4), float64
        Canonical unit quaternions ``(w, x, y, z)``.

    Examples
    --------
    >>> so3_grid(15.0).shape
    torch.Size([4416, 4])
    """
    _check_step(angular_step_deg)
    dirs = grid_directions(angular_step_deg, symmetry)
    psi = in_plane_quats(n_psi_for(angular_step_deg))
    return quat_canonical(quat_multiply(psi[None, :, :], dirs[:, None, :])).reshape(
        -1, 4
    )


def _check_step(angular_step_deg) -> None:
    ok = isinstance(angular_step_deg, (int, float)) and not isinstance(
        angular_step_deg, bool
    )
    if not ok or not 0 < angular_step_deg <= 90:
        raise ValueError(
            "Expected 'angular_step_deg' to be a number in (0, 90] degrees, got "
            f"{angular_step_deg!r}."
        )


def direction_vectors(quats: torch.Tensor) -> torch.Tensor:
    """Viewing directions ``R^T z`` (third rows of ``R``) of rotations ``(..., 4)``."""
    return quat_to_matrix(quats)[..., 2, :]


def trial_offsets(max_shift_px: float, step_px: float) -> torch.Tensor:
    """RELION origins ``(S, 2)`` on a square grid of ``step_px`` within a disk."""
    m = math.floor(max_shift_px / step_px + 1e-9)
    r = torch.arange(-m, m + 1, dtype=torch.float64) * step_px
    grid = torch.stack(torch.meshgrid(r, r, indexing="xy"), dim=-1).reshape(-1, 2)
    keep = (grid**2).sum(-1) <= max_shift_px**2 * (1 + 1e-9) + 1e-12
    return grid[keep]
