"""The scikit-learn estimators: the network and the conventional pipeline.

:class:`OrientationEstimator` (the network) and :class:`ProjectionMatcher` (global
search + refinement), both built on ``skpose.estimators._base.PoseEstimator`` (the
shared parameter table, input checks, map, device, refinement and confidence).

The only layer that imports scikit-learn and skorch.
"""

from skpose.estimators.matcher import ProjectionMatcher
from skpose.estimators.orientation import OrientationEstimator

__all__ = ["OrientationEstimator", "ProjectionMatcher"]
