"""What both estimators share: the parameter table, input checks, map, device, tags.

:class:`PoseEstimator` is the base of :class:`~skpose.OrientationEstimator` and
:class:`~skpose.ProjectionMatcher`. It holds, once, with one wording per error:

- the parameters they share, as scikit-learn's declarative ``_parameter_constraints``
  table (each estimator extends it with its own), checked when ``fit`` starts;
- the checks of images, orientations, origins and the map, and the box checks;
- the device (``"auto"``, ``"cpu"``, ``"cuda"``) and the scikit-learn tags;
- the confidence of returned poses: :func:`skpose.search.pose_score` at the images'
  full box (with their CTF), whatever found the poses;
- the old keyword ``shifts=`` of the methods, now ``shifts_px=`` (a FutureWarning).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted

from skpose._validation import check_finite, check_volume, to_tensor
from skpose.geometry.symmetry import _ACCEPTED, group_order
from skpose.imaging.preprocess import fourier_resize
from skpose.imaging.projection import FourierProjector
from skpose.search._local import refine_batches, score_batches
from skpose.search.poses import Poses, _as_output

__all__ = ["PoseEstimator", "renamed_shifts"]

_UNIT_TOLERANCE = 1e-3


class PointGroup(Options):
    """A point group name that :func:`skpose.geometry.symmetry.group_order` knows.

    An :class:`~sklearn.utils._param_validation.Options` whose options are the
    infinitely many RELION names (``"C1"``, ``"D7"``, ``"I2"``, ...).
    """

    def __init__(self):
        super().__init__(str, set())

    def is_satisfied_by(self, val) -> bool:
        try:
            group_order(val)
        except (TypeError, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return f"a point group: {_ACCEPTED}"


def renamed_shifts(method):
    """Let ``method`` take its old keyword ``shifts=`` (now ``shifts_px=``), warning.

    The signature stays ``method``'s own (scikit-learn reads it for metadata routing).
    """

    @functools.wraps(method)
    def accept_old_name(self, *args, **kwargs):
        if "shifts" in kwargs:
            owner = f"{type(self).__name__}.{method.__name__}"
            if "shifts_px" in kwargs:
                raise TypeError(
                    f"{owner}() got both 'shifts_px' and its old name 'shifts'."
                )
            warnings.warn(
                f"The 'shifts' keyword of {owner} is renamed 'shifts_px' (RELION "
                "origins in pixels, as everywhere in skpose); 'shifts' will be "
                "removed in a future release.",
                FutureWarning,
                stacklevel=2,
            )
            kwargs["shifts_px"] = kwargs.pop("shifts")
        return method(self, *args, **kwargs)

    return accept_old_name


class _ArrayRepr:
    """An array in an estimator's repr: ``<array (64, 64, 64) float32>``."""

    def __init__(self, array):
        self.text = f"<array {tuple(array.shape)} {array.dtype}>"

    def __repr__(self) -> str:
        return self.text


class PoseEstimator(BaseEstimator):
    """Base of the pose estimators: shared parameters, checks, map and device.

    Subclasses extend :attr:`_parameter_constraints` with their own parameters and
    name the default refinement cone (:meth:`_default_cone_deg`). Not for direct use.
    """

    _parameter_constraints: ClassVar[dict] = {
        "volume": [str, Path, "array-like"],
        "symmetry": [PointGroup()],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "verbose": ["verbose"],
        "refine_cone_deg": [None, Interval(Real, 0, 90, closed="right")],
        "refine_step_deg": [Interval(Real, 0, None, closed="neither")],
        "refine_shift_px": [Interval(Real, 0, None, closed="left")],
    }
    # Whether fit needs the orientations (scikit-learn's target tag).
    _requires_y = True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self._requires_y
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        return tags

    def __repr__(self, N_CHAR_MAX=700):
        volume = self.volume  # an array parameter shows as its shape, not its values
        if hasattr(volume, "shape") and not isinstance(volume, (str, Path)):
            self.volume = _ArrayRepr(volume)
        try:
            return super().__repr__(N_CHAR_MAX)
        finally:
            self.volume = volume

    def __setstate__(self, state):
        super().__setstate__(state)
        # Pickled before a parameter existed: it takes its default.
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if param.kind is param.KEYWORD_ONLY and name not in self.__dict__:
                setattr(self, name, param.default)

    # ----------------------------------------------------------------------------
    # Parameters
    # ----------------------------------------------------------------------------

    def _check_params(self) -> None:
        """Check every parameter against the table; then the device."""
        self._validate_params()
        self._resolve_device()

    def _resolve_device(self) -> str:
        """``"cpu"`` or ``"cuda"``: ``"auto"`` picks CUDA when there is a device."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"The 'device' parameter of {type(self).__name__} is 'cuda', but no "
                "CUDA device is available. Use 'cpu' or 'auto'."
            )
        return self.device

    def _default_cone_deg(self) -> float:
        raise NotImplementedError

    def _cone_deg(self) -> float:
        """``refine_cone_deg``, or the estimator's default when it is None."""
        if self.refine_cone_deg is None:
            return float(self._default_cone_deg())
        return float(self.refine_cone_deg)

    # ----------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------

    def _images(self, X, name: str = "images") -> torch.Tensor:
        """Images ``(n, N, N)`` or flattened ``(n, N * N)``; n >= 1, finite; float32."""
        t = to_tensor(X, name)
        if t.ndim < 2:
            raise ValueError(
                f"Expected '{name}' to be images (n, N, N) or flattened images "
                f"(n, N * N), got an array of shape {tuple(t.shape)}. Reshape your "
                "data: a single image is images[None]."
            )
        if t.ndim == 2 and t.shape[1] == 0:
            raise ValueError(
                f"0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is "
                f"required: '{name}' holds no pixels."
            )
        if t.ndim == 2 and t.shape[0] == t.shape[1] > 1:
            side = math.isqrt(t.shape[1])
            raise ValueError(
                f"Expected '{name}' to be images (n, N, N); a 2-D array of shape "
                f"{tuple(t.shape)} is ambiguous (one {t.shape[0]} x {t.shape[1]} "
                f"image, or {t.shape[0]} flattened {side} px images?). Pass a single "
                "image as image[None], or flattened images reshaped to (n, N, N)."
            )
        if t.ndim == 2:
            side = math.isqrt(t.shape[1])
            if side * side != t.shape[1]:
                raise ValueError(
                    f"Expected '{name}' to have shape (n, H, W) with H == W, or "
                    f"(n, N * N) flattened square images; got {tuple(t.shape)}, "
                    f"whose {t.shape[1]} features are not a square number."
                )
            t = t.reshape(-1, side, side)
        if t.ndim != 3 or t.shape[-1] != t.shape[-2] or t.shape[0] < 1:
            raise ValueError(
                f"Expected '{name}' to have shape (n, H, W) with H == W and n >= 1, "
                f"got {tuple(t.shape)}."
            )
        check_finite(t, name)
        return t.to(torch.float32)

    def _fitted_images(self, X, name: str = "images") -> torch.Tensor:
        """:meth:`_images` of a fitted estimator, at the box it was fitted on."""
        check_is_fitted(self, "input_box_")
        images = self._images(X, name)
        if images.shape[-1] != self.input_box_:
            raise ValueError(
                f"'{name}' are {images.shape[-1]} px but {type(self).__name__} was "
                f"fitted on {self.input_box_} px images. skpose refuses rather than "
                "guess the pixel size: rescale them (skpose.fourier_resize) to "
                f"{self.input_box_} px at the training pixel size, or refit."
            )
        return images

    def _quaternions(self, y, n: int) -> np.ndarray:
        """Unit quaternions ``(n, 4)`` (norms within 1e-3 of 1, renormalised)."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is "
                "None: pass the particles' quaternions (n, 4)."
            )
        q = to_tensor(y, "quaternions").to(torch.float64)
        if q.ndim != 2 or q.shape[1] != 4:
            raise ValueError(
                f"Expected 'quaternions' to have shape (n, 4) (w, x, y, z), got "
                f"{tuple(q.shape)}."
            )
        if q.shape[0] != n:
            raise ValueError(
                f"'images' and 'quaternions' have different lengths: {n} and "
                f"{q.shape[0]}."
            )
        check_finite(q, "quaternions")
        norm = torch.linalg.vector_norm(q, dim=1)
        bad = (norm - 1).abs() > _UNIT_TOLERANCE
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"Expected 'quaternions' to be unit quaternions (norm within "
                f"{_UNIT_TOLERANCE} of 1); row {i} has norm {float(norm[i]):.6g}. "
                "Normalise them first (skpose refuses rather than guessing)."
            )
        return (q / norm[:, None]).numpy()

    @staticmethod
    def _origins(shifts_px, n: int) -> np.ndarray:
        """RELION origins ``(n, 2)`` in pixels, float64; zeros when None."""
        if shifts_px is None:
            return np.zeros((n, 2))
        s = to_tensor(shifts_px, "shifts_px").to(torch.float64)
        if tuple(s.shape) != (n, 2):
            raise ValueError(
                f"Expected 'shifts_px' to have shape ({n}, 2) (RELION origins in "
                f"pixels), got {tuple(s.shape)}."
            )
        check_finite(s, "shifts_px")
        return s.numpy()

    # ----------------------------------------------------------------------------
    # The map
    # ----------------------------------------------------------------------------

    def _load_volume(self) -> np.ndarray:
        """The ``volume`` parameter (an array, or read from its MRC file); float32."""
        volume = self.volume
        if isinstance(volume, (str, Path)):
            from skpose.io import read_volume

            volume, _ = read_volume(volume)
        return check_volume(volume, "volume").to(torch.float32).numpy()

    def _fit_volume(self, images: torch.Tensor, image_size: int) -> None:
        """Set the box attributes and ``volume_``, the map at ``image_size``."""
        volume = self._load_volume()
        if volume.shape[0] != images.shape[-1]:
            raise ValueError(
                f"The 'volume' box ({volume.shape[0]} px) differs from the images' box "
                f"({images.shape[-1]} px); both must share box and pixel size."
            )
        self.input_box_ = images.shape[-1]
        self.n_features_in_ = self.input_box_**2
        self.image_size_ = image_size
        self.volume_ = (
            volume
            if image_size == self.input_box_
            else fourier_resize(volume, image_size, ndim=3)
        )

    def _full_volume(self) -> np.ndarray:
        """The map at the images' box (``volume_`` when that is the working box)."""
        if self.input_box_ == self.image_size_:
            return self.volume_
        volume = self._load_volume()
        if volume.shape[0] != self.input_box_:
            raise ValueError(
                f"The 'volume' box ({volume.shape[0]} px) differs from the box "
                f"{type(self).__name__} was fitted on ({self.input_box_} px); "
                "set_params(volume=...) to the map it was fitted with."
            )
        return volume

    def _full_projector(self, device) -> FourierProjector:
        """The projector of the map at the images' box, on ``device``."""
        return FourierProjector(torch.as_tensor(self._full_volume(), device=device))

    # ----------------------------------------------------------------------------
    # Refinement and confidence
    # ----------------------------------------------------------------------------

    def _refined(
        self,
        projector,
        x,
        quaternions,
        shifts_px,
        ctf,
        *,
        scale: float = 1.0,
        cone_deg: float | None = None,
        final_step_deg: float | None = None,
        batch_size: int = 256,
    ) -> Poses:
        """Poses refined locally with the ``refine_*`` parameters.

        ``x``: checked images ``(n, M, M)`` at the projector's box, ``scale`` times
        the input box; ``quaternions`` ``(n, 4)`` and ``shifts_px`` ``(n, 2)`` (input
        pixels) the starts; ``ctf`` checked, at the box of ``x``. ``cone_deg`` and
        ``final_step_deg`` override ``refine_cone_deg`` and ``refine_step_deg``.
        Returns numpy :class:`Poses`, origins in input pixels, with the refinement's
        own score and margin.
        """
        cone_deg = self._cone_deg() if cone_deg is None else cone_deg
        step_deg = self.refine_step_deg if final_step_deg is None else final_step_deg
        like = {"dtype": x.dtype, "device": x.device}
        with torch.no_grad():
            parts = refine_batches(
                projector,
                x,
                torch.as_tensor(quaternions, **like),
                torch.as_tensor(shifts_px, **like) * scale,
                ctf,
                cone_deg=float(cone_deg),
                final_step_deg=float(step_deg),
                max_shift_px=float(self.refine_shift_px) * scale,
                batch_size=int(batch_size),
                symmetry=self.symmetry or "C1",
                verbose=bool(self.verbose),
            )
        return _as_output(parts, 1 / scale, True)

    @staticmethod
    def _scored(projector, images, quaternions, shifts_px, margin, ctf) -> Poses:
        """Poses (numpy) with ``score`` = :func:`pose_score` at the images' box.

        ``images`` ``(n, N, N)`` at the projector's box (on its device),
        ``quaternions`` ``(n, 4)`` and ``shifts_px`` ``(n, 2)`` float64 numpy in those
        pixels, ``ctf`` checked. The one meaning of ``Poses.score`` in both
        estimators, refined or not.
        """
        like = {"dtype": images.dtype, "device": images.device}
        with torch.no_grad():
            score = score_batches(
                projector,
                images,
                torch.as_tensor(quaternions, **like),
                torch.as_tensor(shifts_px, **like),
                ctf,
            )
        return Poses(quaternions, shifts_px, score.cpu().numpy(), margin)
