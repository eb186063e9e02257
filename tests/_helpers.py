"""Small helpers shared by the tests."""

import numpy as np


def ncc(a, b) -> float:
    """Normalised cross-correlation of two images (means removed)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
