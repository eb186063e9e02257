"""How good are predicted orientations: reprojection RMSE and angular errors.

- :func:`reprojection_rmse` is the paper's eq. 16, defined for every symmetry without
  knowing the point group: symmetry mates project identically and score 0.
- :func:`angular_error` is the geodesic angle in degrees, the minimum over the point
  group's mates when ``symmetry`` is given (as CESPED defines it).
"""

from __future__ import annotations

import numpy as np
import torch

from skpose._validation import as_quaternions, check_volume, to_numpy
from skpose.geometry.symmetry import symmetry_aware_distance
from skpose.imaging.projection import project

__all__ = [
    "angular_error",
    "error_summary",
    "reprojection_rmse",
    "reprojection_scorer",
]


def _paired(q_true, q_pred):
    a = as_quaternions(q_true, "q_true")
    b = as_quaternions(q_pred, "q_pred").to(a.dtype)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            "Expected 'q_true' and 'q_pred' to have the same shape (n, 4), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    return a, b


def reprojection_rmse(
    volume, q_true, q_pred, shifts_px=None, *, batch_size: int = 256
) -> float:
    """Reprojection RMSE (paper eq. 16).

    ``RMSE = sqrt( sum_i ||X(R_pred_i, t_i) - X(R_true_i, t_i)||^2 / n )`` where
    ``X(R, t)`` is the projection of ``volume`` at ``R`` shifted by ``t`` without CTF
    or noise, and the squared norm runs over all pixels of image ``i``. The volume is
    used as given (no normalisation): the value depends on the map's scale and box
    size, so compare methods on the same volume only.

    Parameters
    ----------
    volume : array of shape (N, N, N)
        The map, ``[z, y, x]``.
    q_true, q_pred : array of shape (n, 4)
        Reference and predicted quaternions ``(w, x, y, z)``.
    shifts_px : array of shape (n, 2), optional
        RELION origins in pixels, applied to both projections.
    batch_size : int, default 256
        Images projected at once (bounds memory).

    Returns
    -------
    float
        The RMSE, in the volume's density units times pixels (a sum along ``z``).

    Raises
    ------
    ValueError
        When the volume is constant (every pose would score alike).

    Examples
    --------
    >>> vol = np.random.default_rng(0).random((16, 16, 16))
    >>> q = np.array([[1.0, 0, 0, 0]])
    >>> reprojection_rmse(vol, q, q)
    0.0
    """
    vol = check_volume(volume)
    if vol.numel() and bool(vol.max() == vol.min()):
        raise ValueError(
            f"Expected 'volume' to vary: it is constant (every voxel "
            f"{float(vol.flatten()[0]):g}), so the RMSE would say nothing about the "
            "poses (0, the best score, for any prediction on an all-zero map)."
        )
    a, b = _paired(q_true, q_pred)
    total = 0.0
    for start in range(0, a.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        t = None if shifts_px is None else to_numpy(shifts_px)[sl]
        pair = project(vol, torch.cat((a[sl], b[sl])), _twice(t))
        half = pair.shape[0] // 2
        total += float(((pair[:half] - pair[half:]) ** 2).sum())
    return float(np.sqrt(total / max(a.shape[0], 1)))


def _twice(shifts):
    if shifts is None:
        return None
    s = np.asarray(shifts, dtype=np.float64)
    return np.concatenate([s, s])


def angular_error(q_true, q_pred, symmetry: str = "C1") -> np.ndarray:
    """Angle between true and predicted orientations, in degrees.

    Parameters
    ----------
    q_true, q_pred : array of shape (n, 4)
        Quaternions ``(w, x, y, z)``.
    symmetry : str, default "C1"
        Point group of the particle; the error is the minimum over the symmetry mates
        ``q_pred * s`` (see :mod:`skpose.geometry.symmetry`).

    Returns
    -------
    numpy.ndarray of shape (n,)
        Errors in degrees, in [0, 180].

    Examples
    --------
    >>> angular_error([[1.0, 0, 0, 0]], [[0.0, 0, 0, 1.0]], symmetry="C2").round(6)
    array([0.])
    """
    a, b = _paired(q_true, q_pred)
    return np.rad2deg(to_numpy(symmetry_aware_distance(a, b, symmetry)))


def error_summary(errors_deg) -> dict:
    """Median, mean and the fractions under 5 and 10 degrees of angular errors.

    Parameters
    ----------
    errors_deg : array of shape (n,)
        Angular errors in degrees (e.g. from :func:`angular_error`).

    Returns
    -------
    dict
        ``{"median_deg", "mean_deg", "pct_below_5", "pct_below_10", "n"}``.
    """
    e = np.asarray(errors_deg, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise ValueError("Expected 'errors_deg' to hold at least one error.")
    return {
        "median_deg": float(np.median(e)),
        "mean_deg": float(np.mean(e)),
        "pct_below_5": float(100 * np.mean(e < 5)),
        "pct_below_10": float(100 * np.mean(e < 10)),
        "n": int(e.size),
    }


def reprojection_scorer(volume):
    """A scikit-learn scorer: minus the reprojection RMSE (greater is better).

    Parameters
    ----------
    volume : array of shape (N, N, N)
        The map projections are compared with.

    Returns
    -------
    callable
        ``scorer(estimator, X, y) -> float``, usable as
        ``GridSearchCV(..., scoring=reprojection_scorer(volume))``.
    """
    vol = check_volume(volume).detach().cpu()

    def scorer(estimator, X, y):
        return -reprojection_rmse(vol, y, estimator.predict(X))

    return scorer
