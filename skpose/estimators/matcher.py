"""ProjectionMatcher: exhaustive search + local refinement as an estimator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from skpose._validation import (
    VolumeReprMixin,
    as_quaternions,
    check_ctf,
    check_finite,
    check_params,
    is_int,
    is_real,
    param_error,
    to_tensor,
)
from skpose.geometry.symmetry import group_order
from skpose.imaging.preprocess import fourier_resize
from skpose.imaging.projection import FourierProjector
from skpose.metrics import reprojection_rmse
from skpose.search import _global as _search
from skpose.search import grid as _grid
from skpose.search._local import FourierScorer, batches, local_search
from skpose.search.poses import (
    Poses,
    _as_output,
    _check_refine_options,
    _check_start,
    refine_batches,
)

__all__ = ["ProjectionMatcher"]


class ProjectionMatcher(VolumeReprMixin, BaseEstimator):
    """Find particle orientations by exhaustive projection matching.

    Every image is compared with the map's projections at every orientation of
    :func:`so3_grid` (``angular_step_deg``, one asymmetric unit of ``symmetry``) and
    every trial origin on a ``shift_step_px`` grid within ``max_shift_px``, by
    normalised cross-correlation; see :mod:`skpose.search` for the algorithm.
    Measured on one core of a busy shared CPU (Xeon, AVX-512), 64 px images, 49
    trial origins, C1: 1.9, 6.3 and about 125 s per 1000 particles at 15, 7.5 and
    3.75 degrees (3.5, 10 and 120 s with a CTF); the cost grows as ``step^-4``.

    Parameters
    ----------
    volume : array of shape (N, N, N) or str or Path
        The map (``[z, y, x]``) or the path of an MRC file, at the images' box and
        pixel size.
    angular_step_deg : float, default 7.5
        Grid spacing in degrees, in (0, 90]. A random orientation lies a median
        0.49 step from its nearest grid orientation (see :func:`so3_grid`), which
        bounds the accuracy of grid poses.
    max_shift_px : float, default 4.0
        Radius (input pixels) of the disk of trial origins, RELION's offset range.
    shift_step_px : float, default 1.0
        Spacing (input pixels) of the trial origins.
    symmetry : str, default "C1"
        Point group of the map; only one asymmetric unit is searched.
    refine_step_deg : float or None, default None
        ``None``: poses are grid points (the exhaustive search alone). A float: each
        pose is then refined locally (:func:`refine` within one grid step of it, and
        origins within one ``shift_step_px``) down to this step.
    image_size : int or None, default None
        Rescale images and map to this box (Fourier cropping) before matching;
        origins are reported in input pixels all the same. ``None``: the input box.
    batch_size : int, default 256
        Most images matched at once (fewer when the grid is fine, so that the largest
        intermediate stays within a fixed block of memory).
    device : {"auto", "cpu", "cuda"}, default "auto"
    verbose : int, default 0
        > 0 shows a progress bar over batches.

    Attributes
    ----------
    volume_ : numpy.ndarray of shape (image_size,) * 3
        The map at the matching box.
    directions_ : torch.Tensor of shape (D, 4)
        The grid's viewing directions as rotations at ``psi = 0``.
    n_psi_ : int
        In-plane angles per direction.
    grid_size_ : int
        ``D * n_psi_``, the orientations searched.
    offsets_px_ : torch.Tensor of shape (S, 2)
        Trial origins, in pixels of the matching box.
    input_box_ : int
        Box of the images ``fit`` saw.
    image_size_ : int
    n_features_in_ : int
        ``input_box_ ** 2``.

    Examples
    --------
    >>> from skpose import phantom_volume, simulate_particles, angular_error
    >>> vol = phantom_volume(32)
    >>> sim = simulate_particles(vol, 4, random_state=0)
    >>> matcher = ProjectionMatcher(vol, angular_step_deg=15, max_shift_px=0).fit(
    ...     sim.images)
    >>> q = matcher.predict(sim.images)
    >>> bool(np.median(angular_error(sim.quaternions, q)) < 10)
    True
    """

    def __init__(
        self,
        volume=None,
        *,
        angular_step_deg=7.5,
        max_shift_px=4.0,
        shift_step_px=1.0,
        symmetry="C1",
        refine_step_deg=None,
        image_size=None,
        batch_size=256,
        device="auto",
        verbose=0,
    ):
        self.volume = volume
        self.angular_step_deg = angular_step_deg
        self.max_shift_px = max_shift_px
        self.shift_step_px = shift_step_px
        self.symmetry = symmetry
        self.refine_step_deg = refine_step_deg
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_projector", None)  # rebuilt from volume_ on first use
        return state

    # ----------------------------------------------------------------------------
    # Validation
    # ----------------------------------------------------------------------------

    def _check_params(self) -> None:
        step, refine_step = self.angular_step_deg, self.refine_step_deg
        checks = {
            "volume": (self.volume is not None, "an array (N, N, N) or an MRC path"),
            "angular_step_deg": (
                is_real(step) and 0 < step <= 90,
                "a float in (0, 90]",
            ),
            "max_shift_px": (
                is_real(self.max_shift_px) and self.max_shift_px >= 0,
                "a float >= 0",
            ),
            "shift_step_px": (
                is_real(self.shift_step_px) and self.shift_step_px > 0,
                "a float > 0",
            ),
            "refine_step_deg": (
                refine_step is None or (is_real(refine_step) and refine_step > 0),
                "None or a float > 0",
            ),
            "image_size": (
                self.image_size is None
                or (is_int(self.image_size) and self.image_size >= 8),
                "None or an int >= 8",
            ),
            "batch_size": (
                is_int(self.batch_size) and self.batch_size >= 1,
                "an int >= 1",
            ),
            "device": (
                self.device in ("auto", "cpu", "cuda"),
                "one of 'auto', 'cpu', 'cuda'",
            ),
            "verbose": (is_int(self.verbose) and self.verbose >= 0, "an int >= 0"),
        }
        check_params(self, "ProjectionMatcher", checks)
        if self.device == "cuda" and not torch.cuda.is_available():
            expected = "'cpu' or 'auto' (no CUDA device)"
            raise param_error("ProjectionMatcher", "device", self.device, expected)
        group_order(self.symmetry)  # raises a ValueError naming 'symmetry'

    def _images(self, X, name: str = "images") -> torch.Tensor:
        """Validate images: (n, N, N), or (n, N * N) flattened; finite; float32."""
        t = to_tensor(X, name)
        if t.ndim == 2 and t.shape[1] > 0 and math.isqrt(t.shape[1]) ** 2 == t.shape[1]:
            t = t.reshape(t.shape[0], math.isqrt(t.shape[1]), -1)
        if t.ndim != 3 or t.shape[-1] != t.shape[-2] or t.shape[0] < 1:
            raise ValueError(
                f"Expected '{name}' to have shape (n, N, N) with n >= 1, or (n, N * N) "
                f"flattened square images; got {tuple(t.shape)}."
            )
        check_finite(t, name)
        return t.to(torch.float32)

    def _check_box(self, images: torch.Tensor, name: str = "images") -> None:
        if images.shape[-1] != self.input_box_:
            raise ValueError(
                f"'{name}' are {images.shape[-1]} px but the matcher was fitted on "
                f"{self.input_box_} px images. skpose refuses rather than guess the "
                "pixel size: rescale them (skpose.fourier_resize) to "
                f"{self.input_box_} px, or refit."
            )

    def _load_volume(self) -> np.ndarray:
        vol = self.volume
        if isinstance(vol, (str, Path)):
            from skpose.io import read_volume

            vol, _ = read_volume(vol)
        t = to_tensor(vol, "volume")
        if t.ndim != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]):
            raise ValueError(
                f"Expected 'volume' to be a cubic map (N, N, N), got {tuple(t.shape)}."
            )
        check_finite(t, "volume")
        return t.to(torch.float32).numpy()

    # ----------------------------------------------------------------------------
    # Fitting
    # ----------------------------------------------------------------------------

    def fit(self, images, quaternions=None, shifts=None):
        """Prepare the search: grid, trial origins and the map's padded transform.

        References are not stored: one per viewing direction is sampled from the
        map's transform, chunk by chunk, whenever images are matched.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            Images of the box the matcher will see (their values are not used).
        quaternions, shifts : ignored
            Accepted so that the matcher drops into supervised pipelines.

        Returns
        -------
        self
        """
        self._check_params()
        X = self._images(images)
        volume = self._load_volume()
        if volume.shape[0] != X.shape[-1]:
            raise ValueError(
                f"The 'volume' box ({volume.shape[0]} px) differs from the images' box "
                f"({X.shape[-1]} px); both must share box and pixel size."
            )
        self.input_box_ = X.shape[-1]
        self.n_features_in_ = self.input_box_**2
        self.image_size_ = self.image_size or self.input_box_
        self.volume_ = (
            volume
            if self.image_size_ == self.input_box_
            else fourier_resize(volume, self.image_size_, ndim=3)
        )
        self.device_ = (
            ("cuda" if torch.cuda.is_available() else "cpu")
            if self.device == "auto"
            else self.device
        )
        self.directions_ = _grid.grid_directions(self.angular_step_deg, self.symmetry)
        self.n_psi_ = _grid.n_psi_for(self.angular_step_deg)
        self.grid_size_ = self.directions_.shape[0] * self.n_psi_
        scale = self.image_size_ / self.input_box_
        self.offsets_px_ = (
            _grid.trial_offsets(self.max_shift_px, self.shift_step_px) * scale
        )
        self._projector = None
        self._get_projector()
        return self

    def _get_projector(self) -> FourierProjector:
        if getattr(self, "_projector", None) is None:
            vol = torch.as_tensor(self.volume_, device=self.device_)
            self._projector = FourierProjector(vol)
        return self._projector

    # ----------------------------------------------------------------------------
    # Matching
    # ----------------------------------------------------------------------------

    def _prepare(self, images, ctf):
        """Validated images at the matching box (float32, on the device) and CTF."""
        check_is_fitted(self, "directions_")
        X = self._images(images)
        self._check_box(X)
        ctf = check_ctf(ctf, X.shape[0])
        scale = self.image_size_ / self.input_box_
        if self.image_size_ != self.input_box_:
            X = fourier_resize(X, self.image_size_)
        return X.to(self.device_), None if ctf is None else ctf.resampled(scale)

    def _search_batch(self, x: torch.Tensor, ctf):
        """Global search of one batch: ``(q, t, score, margin)`` tensors."""
        projector = self._get_projector()
        quats, shifts, margin = _search.global_search(
            projector,
            self.directions_.to(dtype=x.dtype, device=x.device),
            self.offsets_px_.to(dtype=x.dtype, device=x.device),
            x,
            ctf,
            step_deg=self.angular_step_deg,
            symmetry=self.symmetry,
        )
        scorer = FourierScorer(projector, x, ctf)
        if self.refine_step_deg is None:
            zero = torch.zeros(1, 2, dtype=x.dtype, device=x.device)
            score = scorer.score(quats[:, None], shifts, zero, x.shape[-1] / 2)
            return quats, shifts, score[:, 0, 0], margin
        res = local_search(
            scorer,
            quats,
            shifts,
            cone_deg=float(self.angular_step_deg),
            final_step_deg=float(self.refine_step_deg),
            max_shift_px=float(self.shift_step_px) * self.image_size_ / self.input_box_,
            symmetry=self.symmetry,
        )
        return res.quaternions, res.shifts_px, res.score, margin

    def predict_poses(self, images, ctf=None, *, client=None) -> Poses:
        """Best orientation, origin and confidence of each image.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            With the box the matcher was fitted on.
        ctf : CTFParams, optional
            The images' CTF (``n`` particles, or 1 for all); references are then
            CTF-modulated (exactly, see :mod:`skpose.search`).
        client : dask.distributed.Client or str or True, optional
            Search on a dask cluster (a client, a scheduler address, or True for the
            active client): chunks of 1024 images are scattered to the workers, the
            matcher goes once to each; see
            :func:`skpose.distributed.predict_particles`.

        Returns
        -------
        Poses
            numpy arrays; ``margin``: the search's best NCC minus that of the best
            viewing direction more than two grid steps away (symmetry-aware), both at
            the search's resolution.
        """
        if client is not None:
            from skpose.estimators._distributed import run_method

            return run_method(self, "predict_poses", images, ctf=ctf, client=client)
        x, ctf = self._prepare(images, ctf)
        size = min(self.batch_size, _search.image_batch(len(self.offsets_px_)))
        parts = []
        with torch.no_grad():
            for sl in batches(x.shape[0], size, self.verbose > 0, "search"):
                c = None if ctf is None else ctf[np.arange(x.shape[0])[sl]]
                parts.append(self._search_batch(x[sl], c))
        return _as_output(parts, self.input_box_ / self.image_size_, True)

    def predict(self, images, ctf=None, *, client=None) -> np.ndarray:
        """Orientations of images (the quaternions of :meth:`predict_poses`).

        Parameters
        ----------
        images, ctf, client
            As in :meth:`predict_poses`.

        Returns
        -------
        numpy.ndarray of shape (n, 4), float64
            Canonical unit quaternions ``(w, x, y, z)``, ``w >= 0``.
        """
        return self.predict_poses(images, ctf, client=client).quaternions

    def refine(
        self,
        images,
        quaternions,
        shifts=None,
        ctf=None,
        *,
        cone_deg: float = 15.0,
        final_step_deg: float = 2.0,
    ) -> Poses:
        """Refine given poses locally (see :func:`refine`) against the fitted map.

        Origins may move up to ``max_shift_px`` from ``shifts`` (default zeros).

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
        quaternions : array of shape (n, 4)
            Starting orientations.
        shifts : array of shape (n, 2), optional
            Starting RELION origins in input pixels.
        ctf : CTFParams, optional
        cone_deg, final_step_deg : float
            As in :func:`refine`.

        Returns
        -------
        Poses
            numpy arrays, origins in input pixels.
        """
        _check_refine_options(cone_deg, final_step_deg, self.max_shift_px, 1)
        x, ctf = self._prepare(images, ctf)
        scale = self.image_size_ / self.input_box_
        q, t = _check_start(quaternions, shifts, x.shape[0], x, "shifts")
        with torch.no_grad():
            parts = refine_batches(
                self._get_projector(),
                x,
                q,
                t * scale,
                ctf,
                cone_deg=float(cone_deg),
                final_step_deg=float(final_step_deg),
                max_shift_px=float(self.max_shift_px) * scale,
                batch_size=int(self.batch_size),
                symmetry=self.symmetry,
                verbose=self.verbose > 0,
            )
        return _as_output(parts, 1 / scale, True)

    def score(self, images, quaternions, shifts=None) -> float:
        """Minus the reprojection RMSE (paper eq. 16) of the predictions.

        Greater is better. Computed on the map at the matching box (``volume_``),
        with the true origins applied to both projections, as
        :meth:`OrientationEstimator.score` does.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
        quaternions : array of shape (n, 4)
            True orientations.
        shifts : array of shape (n, 2), optional
            True RELION origins in input pixels.

        Returns
        -------
        float
            ``-RMSE`` (<= 0).
        """
        q_pred = self.predict(images)
        n = q_pred.shape[0]
        q_true = as_quaternions(quaternions, "quaternions").to(torch.float64)
        if q_true.shape != (n, 4):
            raise ValueError(
                f"Expected 'quaternions' to have shape ({n}, 4), got "
                f"{tuple(q_true.shape)}."
            )
        t = None
        if shifts is not None:
            t = to_tensor(shifts, "shifts").to(torch.float64).numpy()
            t = t * (self.image_size_ / self.input_box_)
        return -reprojection_rmse(self.volume_, q_true.numpy(), q_pred, t)
