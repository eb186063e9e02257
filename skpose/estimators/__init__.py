"""The scikit-learn estimators: the network and the conventional pipeline.

:class:`OrientationEstimator` (the network) and :class:`ProjectionMatcher` (global
search + refinement).

The only layer that imports scikit-learn and skorch.
"""

from skpose.estimators.matcher import ProjectionMatcher
from skpose.estimators.orientation import OrientationEstimator

__all__ = ["OrientationEstimator", "ProjectionMatcher"]
