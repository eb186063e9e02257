"""Simulated particle images: a built-in phantom, symmetrisation, noisy projections.

The image model is the paper's: ``X = CTF * shift(project(V, R), -origin) + noise``,
computed by :func:`skpose.imaging.projection.project` (so simulated data obey
exactly the conventions verified on RELION's output).

**SNR** (``snr``) is the ratio of the signal variance to the noise variance, where the
signal variance is that of the clean images (after shift and CTF, before noise) over
all pixels of the box, pooled over the whole simulated set. One noise level serves all
images, as on a real micrograph: white Gaussian noise of variance
``signal_variance / snr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skpose._validation import as_quaternions, back_like, check_volume, to_numpy
from skpose.geometry.rotations import (
    quat_to_matrix,
    quat_to_relion_euler,
    random_quaternions,
)
from skpose.geometry.symmetry import symmetry_group
from skpose.imaging.ctf import CTFParams
from skpose.imaging.projection import project

__all__ = [
    "SimulatedParticles",
    "phantom_volume",
    "random_ctf",
    "simulate_particles",
    "symmetrize_volume",
]

# Blob centres (x, y, z) as fractions of the half box, and relative widths/heights:
# no two are related by a rotation, so the phantom has no symmetry (C1).
_BLOBS = np.array(
    [
        # x,     y,     z,   sigma, amplitude
        [0.00, 0.00, 0.00, 0.16, 0.6],
        [0.55, 0.08, -0.12, 0.10, 1.0],
        [-0.25, 0.50, 0.15, 0.09, 0.8],
        [-0.18, -0.42, 0.45, 0.12, 0.7],
        [0.22, -0.28, -0.55, 0.07, 1.2],
        [-0.60, -0.05, -0.22, 0.08, 0.6],
        [0.12, 0.60, -0.35, 0.06, 1.4],
        [0.35, 0.30, 0.45, 0.05, 0.9],
    ]
)
_SPREAD = 0.8  # blob centres at _SPREAD * (x, y, z) * N / 2


def phantom_volume(box_size: int = 64, symmetry: str = "C1", *, dtype=np.float32):
    """A smooth built-in test map: Gaussian blobs, asymmetric unless ``symmetry``.

    With a point group, every blob is replicated at its images ``S c`` under the
    group, so the map is exactly symmetric (``V(S p) = V(p)``) without interpolation.

    Parameters
    ----------
    box_size : int, default 64
        Side ``N`` of the cubic box; the phantom fits in a sphere of radius ~0.85 N/2.
    symmetry : str, default "C1"
        Point group name (see :func:`skpose.geometry.symmetry.symmetry_group`).
    dtype : numpy dtype, default float32

    Returns
    -------
    numpy.ndarray of shape (N, N, N)
        Density ``[z, y, x]``, origin at ``N // 2``, maximum about 1.

    Examples
    --------
    >>> phantom_volume(32).shape
    (32, 32, 32)
    """
    if not isinstance(box_size, (int, np.integer)) or box_size < 8:
        raise ValueError(
            f"Expected 'box_size' to be an integer >= 8, got {box_size!r}."
        )
    n = int(box_size)
    half = n / 2
    mats = quat_to_matrix(symmetry_group(symmetry)).numpy()
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    vol = np.zeros((n, n, n))
    for cx, cy, cz, sigma, amp in _BLOBS:
        for s in mats:
            c = s @ (np.array([cx, cy, cz]) * _SPREAD * half)
            d2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
            vol += amp * np.exp(-d2 / (2 * (sigma * half) ** 2))
    vol /= len(mats)
    return (vol / vol.max()).astype(dtype)


def symmetrize_volume(volume, symmetry: str):
    """Average a map over a point group: ``mean_S V(S p)`` (trilinear resampling).

    Parameters
    ----------
    volume : array of shape (N, N, N)
        Density ``[z, y, x]``, origin at ``N // 2``.
    symmetry : str
        Point group name.

    Returns
    -------
    Same type as ``volume``, shape (N, N, N)
    """
    vol = check_volume(volume)
    n = vol.shape[-1]
    mats = quat_to_matrix(symmetry_group(symmetry, dtype=vol.dtype, device=vol.device))
    r = torch.arange(n, dtype=vol.dtype, device=vol.device) - n // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack((x, y, z), dim=-1)
    out = torch.zeros_like(vol)
    for s in mats:
        src = pts @ s.T  # S p for every voxel p
        grid = (src + n // 2) * (2.0 / (n - 1)) - 1.0
        out += torch.nn.functional.grid_sample(
            vol[None, None], grid[None], mode="bilinear", align_corners=True
        )[0, 0]
    out /= mats.shape[0]
    return back_like(out, volume)


def random_ctf(
    n: int,
    pixel_size_angstrom: float,
    *,
    defocus_range_angstrom=(10000.0, 25000.0),
    astigmatism_angstrom: float = 500.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    random_state=None,
) -> CTFParams:
    """CTF parameters with a uniform defocus distribution.

    ``DefocusU`` is uniform in ``defocus_range_angstrom``; ``DefocusV = DefocusU - a``
    with ``a`` uniform in ``[0, astigmatism_angstrom]``; the astigmatism angle is
    uniform in [0, 180) degrees.
    """
    rng = np.random.default_rng(random_state)
    lo, hi = defocus_range_angstrom
    if not 0 < lo <= hi:
        raise ValueError(
            "Expected 'defocus_range_angstrom' = (low, high) with 0 < low <= high, "
            f"got {defocus_range_angstrom!r}."
        )
    du = rng.uniform(lo, hi, n)
    return CTFParams(
        defocus_u_angstrom=du,
        defocus_v_angstrom=du - rng.uniform(0, astigmatism_angstrom, n),
        defocus_angle_deg=rng.uniform(0, 180, n),
        pixel_size_angstrom=np.full(n, float(pixel_size_angstrom)),
        voltage_kv=np.full(n, float(voltage_kv)),
        cs_mm=np.full(n, float(cs_mm)),
        amplitude_contrast=np.full(n, float(amplitude_contrast)),
        phase_shift_deg=np.zeros(n),
        bfactor=np.zeros(n),
    )


@dataclass
class SimulatedParticles:
    """Simulated images and the ground truth that made them.

    Attributes
    ----------
    images : numpy.ndarray of shape (n, N, N), float32
    quaternions : numpy.ndarray of shape (n, 4), float64
        True orientations ``(w, x, y, z)``, canonical.
    shifts_px : numpy.ndarray of shape (n, 2), float64
        True RELION origins ``(ox, oy)`` in pixels.
    ctf : CTFParams or None
    pixel_size_angstrom : float
    noise_std : float
        Standard deviation of the added noise (0 when noiseless).
    """

    images: np.ndarray
    quaternions: np.ndarray
    shifts_px: np.ndarray
    ctf: CTFParams | None
    pixel_size_angstrom: float
    noise_std: float

    def __len__(self) -> int:
        return len(self.images)

    def to_relion(self, star_path, *, stack_name: str | None = None) -> Path:
        """Write a RELION 3.1 STAR file (optics + particles) and its MRC stack.

        Parameters
        ----------
        star_path : str or Path
            The STAR file to write; the stack goes beside it.
        stack_name : str, optional
            File name of the stack (default: the STAR's stem + ``.mrcs``).

        Returns
        -------
        Path
            ``star_path``.
        """
        import starfile

        from skpose.io import write_images
        from skpose.io._atomic import atomic_path

        star_path = Path(star_path)
        star_path.parent.mkdir(parents=True, exist_ok=True)
        stack = stack_name or star_path.stem + ".mrcs"
        write_images(star_path.parent / stack, self.images, self.pixel_size_angstrom)
        blocks = {
            "optics": self._optics_table(),
            "particles": self._particle_table(stack),
        }
        with atomic_path(star_path) as tmp:
            starfile.write(blocks, tmp, overwrite=True)
        return star_path

    def _optics_table(self) -> pd.DataFrame:
        ctf = self.ctf
        first = (lambda v: float(np.asarray(v).reshape(-1)[0])) if ctf else None
        return pd.DataFrame(
            {
                "rlnOpticsGroupName": ["opticsGroup1"],
                "rlnOpticsGroup": [1],
                "rlnVoltage": [first(ctf.voltage_kv) if ctf else 300.0],
                "rlnSphericalAberration": [first(ctf.cs_mm) if ctf else 2.7],
                "rlnAmplitudeContrast": [first(ctf.amplitude_contrast) if ctf else 0.1],
                "rlnImagePixelSize": [float(self.pixel_size_angstrom)],
                "rlnImageSize": [int(self.images.shape[-1])],
                "rlnImageDimensionality": [2],
                "rlnCtfDataAreCtfPremultiplied": [0],
            }
        )

    def _particle_table(self, stack: str) -> pd.DataFrame:
        n = len(self)
        euler = quat_to_relion_euler(self.quaternions)
        table = {
            "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": self.shifts_px[:, 0] * self.pixel_size_angstrom,
            "rlnOriginYAngst": self.shifts_px[:, 1] * self.pixel_size_angstrom,
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
        if self.ctf is not None:
            c = self.ctf[np.arange(n)]
            table.update(
                rlnDefocusU=c.defocus_u_angstrom,
                rlnDefocusV=c.defocus_v_angstrom,
                rlnDefocusAngle=c.defocus_angle_deg,
                rlnPhaseShift=c.phase_shift_deg,
                rlnCtfBfactor=c.bfactor,
            )
        return pd.DataFrame(table)


def _draw_poses(poses, n: int, rng) -> np.ndarray:
    if poses is None:
        return to_numpy(random_quaternions(n, rng))
    if isinstance(poses, (str, Path)):
        from skpose.io import read_particles

        quats = read_particles(poses).quaternions
        if quats is None:
            raise ValueError(
                f"STAR file {poses} given as 'poses' has no angle columns."
            )
        poses = quats
    pool = to_numpy(as_quaternions(poses, "poses"))
    if pool.ndim != 2 or len(pool) == 0:
        raise ValueError(
            f"Expected 'poses' to have shape (m, 4) with m >= 1, got {pool.shape}."
        )
    q = pool[rng.integers(0, len(pool), n)]
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def _make_ctf(ctf, n: int, pixel_size_angstrom: float, rng) -> CTFParams | None:
    if ctf is None or ctf is False:
        return None
    if ctf is True:
        return random_ctf(n, pixel_size_angstrom, random_state=rng)
    if isinstance(ctf, CTFParams):
        if len(ctf) not in (1, n):
            raise ValueError(
                f"Expected 'ctf' to describe 1 or {n} particles, got {len(ctf)}."
            )
        return ctf[np.zeros(n, dtype=int)] if len(ctf) == 1 else ctf[np.arange(n)]
    raise TypeError(
        f"Expected 'ctf' to be None, True or a CTFParams, got {type(ctf).__name__}."
    )


def _check_simulation_args(n, snr, max_shift, box: int, pixel_size) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Expected 'n' to be a positive integer, got {n!r}.")
    if snr is not None and not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"Expected 'snr' to be None or a number > 0, got {snr!r}.")
    if not (np.isfinite(max_shift) and max_shift >= 0):
        raise ValueError(
            f"Expected 'max_shift' to be a number >= 0, got {max_shift!r}."
        )
    if max_shift >= box / 2:
        # The Fourier shift is periodic: past half the box the particle's centre
        # leaves the box and comes back from the other side, and the image no
        # longer matches the origin written for it.
        raise ValueError(
            f"Expected 'max_shift' < half the box ({box / 2:g} px for a {box} px "
            f"map), got {max_shift!r}: larger origins move the particle's centre out "
            "of the box, where the periodic Fourier shift wraps it around."
        )
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(
            f"Expected 'pixel_size_angstrom' to be a number > 0, got {pixel_size!r}."
        )


def simulate_particles(
    volume,
    n: int,
    *,
    snr: float | None = None,
    ctf=None,
    max_shift: float = 0,
    poses=None,
    pixel_size_angstrom: float = 1.0,
    batch_size: int = 256,
    random_state=None,
    frequencies: str = "circle",
) -> SimulatedParticles:
    """Project a map at random (or given) poses, with shifts, CTF and noise.

    Parameters
    ----------
    volume : array of shape (N, N, N)
        The map ``[z, y, x]``, origin at ``N // 2``.
    n : int
        Number of particles.
    snr : float, optional
        Signal-to-noise ratio as defined in this module's docstring (variance of the
        clean images over all pixels / noise variance). ``None``: noiseless.
    ctf : None, True or CTFParams
        ``True`` draws defoci with :func:`random_ctf`; a ``CTFParams`` of 1 or ``n``
        particles is used as given.
    max_shift : float, default 0
        Origins ``(ox, oy)`` uniform in ``[-max_shift, max_shift]`` pixels; less than
        half the box (the centre must stay inside it).
    poses : None, array of shape (m, 4), or path to a STAR file
        ``None``: uniform on SO(3); otherwise ``n`` draws with replacement.
    pixel_size_angstrom : float, default 1.0
    batch_size : int, default 256
        Images projected at once.
    random_state : None, int or numpy.random.Generator
    frequencies : {"circle", "square"}, default "circle"
        The projector's frequencies (:func:`skpose.imaging.projection.project`):
        RELION's Nyquist circle, or ``"square"``, the accurate mode for maps with
        power up to Nyquist.

    Returns
    -------
    SimulatedParticles
        ``images`` float32 ``(n, N, N)``, ``quaternions``, ``shifts_px``, ``ctf``.

    Examples
    --------
    >>> sim = simulate_particles(phantom_volume(32), 4, snr=1.0, random_state=0)
    >>> sim.images.shape, sim.quaternions.shape
    ((4, 32, 32), (4, 4))
    """
    vol = check_volume(volume).to(torch.float32)
    _check_simulation_args(n, snr, max_shift, vol.shape[-1], pixel_size_angstrom)
    rng = np.random.default_rng(random_state)
    quats = _draw_poses(poses, int(n), rng)
    shifts = rng.uniform(-max_shift, max_shift, (int(n), 2))
    ctf_params = _make_ctf(ctf, int(n), pixel_size_angstrom, rng)
    images = np.empty((int(n), *vol.shape[1:]), dtype=np.float32)
    for start in range(0, int(n), batch_size):
        sl = slice(start, start + batch_size)
        c = None if ctf_params is None else ctf_params[np.arange(int(n))[sl]]
        images[sl] = to_numpy(
            project(vol, quats[sl], shifts[sl], c, frequencies=frequencies)
        )
    noise_std = 0.0
    if snr is not None:
        noise_std = math.sqrt(float(images.var(dtype=np.float64)) / snr)
        images += rng.standard_normal(images.shape, dtype=np.float32) * noise_std
    return SimulatedParticles(
        images=images,
        quaternions=quats,
        shifts_px=shifts,
        ctf=ctf_params,
        pixel_size_angstrom=float(pixel_size_angstrom),
        noise_std=noise_std,
    )
