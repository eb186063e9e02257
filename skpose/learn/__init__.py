"""The network and its losses.

torch only: skorch and scikit-learn live in :mod:`skpose.estimators`.
"""

from skpose.learn.losses import weighted_loss
from skpose.learn.network import OrientationNet

__all__ = ["OrientationNet", "weighted_loss"]
