"""Poses, their confidence and local refinement.

:class:`Poses` (quaternions, origins, confidence), :func:`refine`, :func:`pose_score`.

:func:`refine` improves given poses by a local search in a shrinking cone; it is what
turns network predictions into search-quality poses at a fraction of the search's cost.
:func:`pose_score` is the confidence of poses found elsewhere (a network, a STAR file).
The algorithms are described in :mod:`skpose.search`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from skpose._validation import (
    as_quaternions,
    back_like,
    check_finite,
    is_int,
    is_real,
    to_numpy,
    to_tensor,
)
from skpose.geometry.rotations import quat_canonical
from skpose.geometry.symmetry import group_order
from skpose.imaging.ctf import check_ctf
from skpose.imaging.projection import FourierProjector
from skpose.search._local import refine_batches, score_batches

__all__ = ["Poses", "pose_score", "refine"]


class Poses(NamedTuple):
    """Poses found for a stack of particles, with their confidence.

    Attributes
    ----------
    quaternions : array of shape (n, 4), float64
        Canonical unit quaternions ``(w, x, y, z)``, ``w >= 0`` (our ``R`` =
        RELION's ``A``).
    shifts_px : array of shape (n, 2), float64
        RELION origins ``(ox, oy)`` in pixels of the input images: the particle is
        the centred projection translated by ``(-ox, -oy)``.
    score : array of shape (n,)
        The confidence: the normalised cross-correlation (NCC) of each image with the
        projection at its pose (times its CTF when one is given) at the images' full
        box, over all frequencies up to Nyquist but the mean (:func:`pose_score`); in
        [-1, 1], and the same number for a pose however it was found (search,
        network, refinement). What is low depends on the SNR: on the 64 px phantom
        with CTF (``OMP_NUM_THREADS=1 python benchmarks/confidence_range.py --snr 1
        0.1 0.01``; 5th / 50th / 95th percentiles), right poses score 0.69 / 0.75 /
        0.80 at SNR 1, 0.28 / 0.34 / 0.39 at SNR 0.1 and 0.08 / 0.11 / 0.15 at SNR
        0.01, wrong (random) poses 0.01 / 0.23 / 0.45, 0.00 / 0.10 / 0.21 and -0.01 /
        0.03 / 0.08, and pure-noise junk images refined to their best pose 0.02 /
        0.05 / 0.07 at any SNR. Scores under about 0.07 (at 64 px) are what noise
        reaches; above that, rank particles within one data set rather than compare
        scores across data sets of different SNR.
    margin : array of shape (n,)
        The best score minus that of the best *distinct* orientation (see the
        method that returned it); NaN where no distinct orientation was scored.
    """

    quaternions: np.ndarray
    shifts_px: np.ndarray
    score: np.ndarray
    margin: np.ndarray


def _as_output(poses: list, scale: float, numpy_out: bool = False) -> Poses:
    """Concatenate per-batch ``(q, t, score, margin)`` tensors into :class:`Poses`.

    float64 and detached; numpy arrays with ``numpy_out``, else tensors.
    """
    q, t, score, margin = (torch.cat(parts) for parts in zip(*poses, strict=True))
    q = quat_canonical(q.to(torch.float64))
    t = t.to(torch.float64) * scale
    out = (q, t, score.to(torch.float64), margin.to(torch.float64))
    return Poses(*(to_numpy(x) if numpy_out else x.detach() for x in out))


def _check_start(quaternions, shifts, n: int, like: torch.Tensor, shifts_name: str):
    """Starting quaternions ``(n, 4)`` and origins ``(n, 2)``, as ``like``'s dtype."""
    q = as_quaternions(quaternions, "quaternions")
    if q.shape != (n, 4):
        raise ValueError(
            f"Expected 'quaternions' to have shape ({n}, 4) (one per image), got "
            f"{tuple(q.shape)}."
        )
    t = torch.zeros(n, 2) if shifts is None else to_tensor(shifts, shifts_name)
    if t.shape != (n, 2):
        raise ValueError(
            f"Expected '{shifts_name}' to have shape ({n}, 2) (RELION origins in "
            f"pixels), got {tuple(t.shape)}."
        )
    check_finite(t, shifts_name)
    return (
        q.to(dtype=like.dtype, device=like.device),
        t.to(dtype=like.dtype, device=like.device),
    )


def _check_refine_options(cone_deg, final_step_deg, max_shift_px, batch_size):
    checks = {
        "cone_deg": (is_real(cone_deg) and 0 < cone_deg <= 90, "a float in (0, 90]"),
        "final_step_deg": (
            is_real(final_step_deg) and final_step_deg > 0,
            "a float > 0",
        ),
        "max_shift_px": (is_real(max_shift_px) and max_shift_px >= 0, "a float >= 0"),
        "batch_size": (is_int(batch_size) and batch_size >= 1, "an int >= 1"),
    }
    values = locals()
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(
                f"Expected '{name}' of refine to be {expected}, got {values[name]!r}."
            )


def refine(
    volume,
    images,
    quaternions,
    shifts_px=None,
    *,
    ctf=None,
    cone_deg: float = 15.0,
    final_step_deg: float = 2.0,
    max_shift_px: float = 4.0,
    symmetry: str = "C1",
    batch_size: int = 256,
) -> Poses:
    """Refine particle poses by a local search around each starting pose.

    Each round scores 27 rotations ``R_z(u_z s) exp(s (u_x, u_y, 0)) R`` (``u`` in
    ``{-1, 0, 1}^3``: steps ``s`` about the image axes) times a window of translations
    around the current pose (``3 x 3``, finer on small boxes), moves the pose to the
    maximum of a quadratic in rotation and translation fitted to the scores (or to the
    best rotation where that maximum is not one, or lies more than two steps away) and
    halves both steps; a pose that moved more than a step is searched again at the same
    step first (at most twice). The first step is ``cone_deg / 2`` (so the rounds reach
    ``cone_deg`` in all), the last the first at or below ``final_step_deg``; the last
    round slices its in-plane turns exactly (and leaves out the 8 corner rotations).
    Each round correlates up to the frequency its step resolves (``1.5 / step`` cycles
    per box, ``step`` in radians; the last rounds use all frequencies up to Nyquist).

    Parameters
    ----------
    volume : array or torch.Tensor of shape (N, N, N)
        The map ``[z, y, x]`` at the images' box and pixel size.
    images : array or torch.Tensor of shape (n, N, N)
        Particle images ``[y, x]``.
    quaternions : array of shape (n, 4)
        Starting orientations ``(w, x, y, z)`` (e.g. a network's predictions).
    shifts_px : array of shape (n, 2), optional
        Starting RELION origins in pixels; default zeros.
    ctf : CTFParams, optional
        The images' CTF (``n`` particles, or 1 for all): references are multiplied
        by it.
    cone_deg : float, default 15
        How far (degrees) from its start a pose may move.
    final_step_deg : float, default 2
        The last round's step; the quadratic fit then places poses well within it
        (noiseless 64 px particles from 10-15 degrees away: median error 0.04
        degrees; 0.85 at SNR 1; 2.7 at SNR 0.1).
    max_shift_px : float, default 4
        How far (pixels, per axis) the origins may move from their start.
    symmetry : str, default "C1"
        Point group of the map: rotations near a symmetry mate of a pose do not
        count as distinct in its margin.
    batch_size : int, default 256
        Images refined at once.

    Returns
    -------
    Poses
        ``margin`` is the pose's NCC minus the best NCC of the six rotations
        ``cone_deg`` away about the image axes (those not near one of its symmetry
        mates), both at the resolution of the first round: a local sharpness of
        the peak. numpy arrays, or torch tensors on the images' device when
        ``images`` is a tensor.

    Examples
    --------
    >>> from skpose import phantom_volume, simulate_particles
    >>> vol = phantom_volume(32)
    >>> sim = simulate_particles(vol, 2, random_state=0)
    >>> poses = refine(vol, sim.images, sim.quaternions)
    >>> poses.quaternions.shape, bool((poses.score > 0.99).all())
    ((2, 4), True)
    """
    _check_refine_options(cone_deg, final_step_deg, max_shift_px, batch_size)
    group_order(symmetry)  # raises a ValueError naming 'symmetry'
    x, vol = _images_and_volume(images, volume)
    q, t = _check_start(quaternions, shifts_px, x.shape[0], x, "shifts_px")
    parts = refine_batches(
        FourierProjector(vol),
        x,
        q,
        t,
        check_ctf(ctf, x.shape[0]),
        cone_deg=float(cone_deg),
        final_step_deg=float(final_step_deg),
        max_shift_px=float(max_shift_px),
        batch_size=int(batch_size),
        symmetry=symmetry,
    )
    return back_like(_as_output(parts, 1.0), images)


def pose_score(volume, images, quaternions, shifts_px=None, *, ctf=None):
    """Normalised cross-correlation of each image with the projection at its pose.

    The ``score`` of :class:`Poses` for poses found elsewhere (a network, a STAR
    file): over all frequencies up to Nyquist but the mean, the projection
    multiplied by the CTF when one is given. Low for junk images and wrong poses.

    Parameters
    ----------
    volume : array or torch.Tensor of shape (N, N, N)
        The map at the images' box and pixel size.
    images : array or torch.Tensor of shape (n, N, N)
    quaternions : array of shape (n, 4)
    shifts_px : array of shape (n, 2), optional
        RELION origins in pixels; default zeros.
    ctf : CTFParams, optional
        The images' CTF (``n`` particles, or 1 for all).

    Returns
    -------
    array of shape (n,), float64
        In [-1, 1]; a numpy array, or a tensor on the images' device when
        ``images`` is a tensor.

    Examples
    --------
    >>> from skpose import phantom_volume, random_quaternions, simulate_particles
    >>> vol = phantom_volume(32)
    >>> sim = simulate_particles(vol, 3, max_shift=2, random_state=1)
    >>> true = pose_score(vol, sim.images, sim.quaternions, sim.shifts_px)
    >>> wrong = random_quaternions(3, random_state=2)
    >>> bad = pose_score(vol, sim.images, wrong, sim.shifts_px)
    >>> bool((true > 0.99).all() and (bad < true).all())
    True
    """
    x, vol = _images_and_volume(images, volume)
    n = x.shape[0]
    q, t = _check_start(quaternions, shifts_px, n, x, "shifts_px")
    with torch.no_grad():
        score = score_batches(FourierProjector(vol), x, q, t, check_ctf(ctf, n))
    return back_like(score, images)


def _images_and_volume(images, volume) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, N, N)`` (n >= 1, float32) and the map at their box, same device."""
    x = to_tensor(images, "images")
    if x.ndim != 3 or x.shape[-1] != x.shape[-2] or x.shape[0] < 1:
        raise ValueError(
            f"Expected 'images' to have shape (n, N, N) with n >= 1, got "
            f"{tuple(x.shape)}."
        )
    check_finite(x, "images")
    x = x.to(torch.float32)
    vol = to_tensor(volume, "volume").to(dtype=torch.float32, device=x.device)
    if vol.shape != (x.shape[-1],) * 3:
        raise ValueError(
            f"Expected 'volume' to have the images' box {(x.shape[-1],) * 3}, got "
            f"{tuple(vol.shape)}."
        )
    return x, vol
