"""Calibration of the network pipeline on held-out labelled particles.

Private to :mod:`skpose.search`; :class:`skpose.OrientationEstimator` uses it when
``fallback="search"`` or ``refine_cone_deg="auto"``.

- :func:`auto_cone_deg`: the refinement cone from the network's error distribution on
  held-out labelled particles (a high percentile, clipped), instead of a constant.
- :func:`fallback_threshold`: the refined confidence (NCC) below which a particle's
  pose is more likely wrong than right, chosen on held-out particles whose error after
  refinement is known: the threshold ``t`` that maximises Youden's index (the fraction
  of wrong poses, error > ``right_deg``, that score below ``t`` minus the fraction of
  right ones that do). Particles scoring below it go through the global search +
  refinement (:func:`merge`). With no wrong held-out pose there is nothing to catch:
  ``-inf`` (no fallback).
"""

from __future__ import annotations

import numpy as np

__all__ = ["auto_cone_deg", "fallback_threshold", "merge"]

# Percentile of held-out network errors that the refinement cone must reach, and the
# cone's bounds (degrees): below 15 the first rounds lose the basin at SNR 0.1, above
# 90 a cone means a global search.
CONE_PERCENTILE = 90.0
CONE_RANGE_DEG = (15.0, 90.0)


def auto_cone_deg(errors_deg) -> float:
    """The :data:`CONE_PERCENTILE` th percentile of ``errors_deg``, clipped."""
    errors = np.asarray(errors_deg, dtype=np.float64)
    value = float(np.percentile(errors, CONE_PERCENTILE)) if errors.size else np.inf
    return float(np.clip(value, *CONE_RANGE_DEG))


def fallback_threshold(scores, errors_deg, right_deg: float = 5.0) -> float:
    """Score below which a refined pose falls back to the global search.

    Parameters
    ----------
    scores : array of shape (m,)
        Refined NCC of held-out labelled particles.
    errors_deg : array of shape (m,)
        Their angular errors after refinement (degrees).
    right_deg : float, default 5
        Errors at or below this count as right.

    Returns
    -------
    float
        The threshold (``-inf``: no particle falls back).
    """
    scores = np.asarray(scores, dtype=np.float64)
    wrong = np.asarray(errors_deg, dtype=np.float64) > right_deg
    if not wrong.any():
        return -np.inf
    if wrong.all():
        return np.inf
    candidates = np.unique(scores)
    # Falling back when score < t: t at each distinct score, and just above the top.
    cuts = np.r_[candidates, np.nextafter(candidates[-1], np.inf)]
    below = scores[None, :] < cuts[:, None]  # (cuts, m)
    youden = below[:, wrong].mean(axis=1) - below[:, ~wrong].mean(axis=1)
    best = int(np.argmax(youden))
    return float(cuts[best]) if youden[best] > 0 else -np.inf


def merge(poses, searched, rows):
    """``poses`` with ``rows`` replaced by ``searched`` where it scores higher.

    Parameters
    ----------
    poses : Poses
        numpy arrays for all particles (the network + refinement).
    searched : Poses
        numpy arrays for the particles ``rows`` (the global search + refinement).
    rows : array of int

    Returns
    -------
    Poses
        A new tuple of arrays; the margin of a replaced row is the search's.
    """
    better = searched.score > poses.score[rows]
    take = np.asarray(rows)[better]
    out = [np.array(a, copy=True) for a in poses]
    for field, new in zip(out, searched, strict=True):
        field[take] = new[better]
    return type(poses)(*out)
