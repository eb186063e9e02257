"""Small helpers shared by the tests."""

import numpy as np


def ncc(a, b) -> float:
    """Normalised cross-correlation of two images (means removed)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


class TabularChecks:
    """Mixin that lets scikit-learn's generic checks drive a pose estimator.

    The checks feed tabular ``X`` (n, d) and 1-D or 2-D regression ``y``. The mixin
    zero-pads each row into an 8 x 8 image (d <= 64) and turns ``y`` into rotations
    (the first one to three target columns, scaled, as a rotation vector); the
    estimator is given a matching 8-voxel map. Everything else - parameters,
    validation, fitting, persistence, determinism - is the estimator's own.
    """

    def _adapt(self, X, y=None):
        from skpose.geometry.rotations import axis_angle_to_quat

        if hasattr(X, "toarray") or np.iscomplexobj(X) or np.iscomplexobj(y):
            return X, y  # sparse or complex: the estimator's own errors
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] in (0, 64):
            return X, y  # 1-D, empty or image-sized: the estimator decides
        images = np.zeros((X.shape[0], 64), dtype=X.dtype)
        images[:, : X.shape[1]] = X
        if y is None:
            return images, None
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, :3]
        rotvec = np.zeros((len(y), 3))
        rotvec[:, : y.shape[1]] = np.tanh(y)
        return images, axis_angle_to_quat(rotvec)

    def _check_features(self, X):
        if hasattr(self, "n_features_in_") and np.ndim(X) == 2:
            if np.shape(X)[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {np.shape(X)[1]} features, but {type(self).__name__} "
                    f"is expecting {self.n_features_in_} features as input."
                )

    def _record_features(self, X):
        if not hasattr(X, "toarray") and np.ndim(X) == 2:
            self.n_features_in_ = np.shape(X)[1]

    def fit(self, X, y=None, shifts_px=None, ctf=None):
        images, q = self._adapt(X, y)
        super().fit(images, q, shifts_px, ctf)
        self._record_features(X)
        return self

    def predict(self, X, ctf=None):
        self._check_features(X)
        return super().predict(self._adapt(X)[0], ctf)

    def score(self, X, y):
        self._check_features(X)
        images, q = self._adapt(X, y)
        return super().score(images, q)
