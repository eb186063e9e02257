"""Model selection for the command line: a GridSearchCV over the estimator's parameters.

Here so that scikit-learn stays inside :mod:`skpose.estimators` (the CLI calls this).
"""

from __future__ import annotations

import sklearn
from sklearn.model_selection import GridSearchCV

__all__ = ["grid_search"]


def grid_search(estimator, grid: dict, images, quaternions, *, cv: int = 3, **data):
    """Fit a :class:`~sklearn.model_selection.GridSearchCV` of ``estimator``.

    Metadata routing splits the per-particle ``data`` (``shifts_px``, ``ctf``) with
    the images, for ``fit`` and for ``score`` alike.

    Parameters
    ----------
    estimator : OrientationEstimator
    grid : dict of str to list
        Parameter values to try, e.g. ``{"w": [0.5, 0.8], "lr": [1e-3]}``.
    images : array of shape (n, N, N)
    quaternions : array of shape (n, 4)
    cv : int, default 3
        Folds.
    **data
        Per-particle keywords of ``fit`` and ``score``.

    Returns
    -------
    GridSearchCV
        Fitted; ``best_estimator_`` is refitted on all particles.
    """
    with sklearn.config_context(enable_metadata_routing=True):
        estimator.set_fit_request(**dict.fromkeys(data, True))
        estimator.set_score_request(**dict.fromkeys(data, True))
        return GridSearchCV(estimator, grid, cv=cv).fit(images, quaternions, **data)
