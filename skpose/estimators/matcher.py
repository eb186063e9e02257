"""ProjectionMatcher: exhaustive search + local refinement as an estimator."""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from skpose.estimators._base import PoseEstimator, renamed_shifts
from skpose.imaging.ctf import check_ctf
from skpose.imaging.preprocess import fourier_resize
from skpose.imaging.projection import FourierProjector
from skpose.metrics import reprojection_rmse
from skpose.search import _global as _search
from skpose.search import grid as _grid
from skpose.search._local import batches
from skpose.search.poses import (
    Poses,
    _as_output,
    _check_refine_options,
    _check_start,
)

__all__ = ["ProjectionMatcher"]


class ProjectionMatcher(PoseEstimator):
    """Find particle orientations by exhaustive projection matching.

    Every image is compared with the map's projections at every orientation of
    :func:`so3_grid` (``angular_step_deg``, one asymmetric unit of ``symmetry``) and
    every trial origin on a ``shift_step_px`` grid within ``max_shift_px``, by
    normalised cross-correlation; see :mod:`skpose.search` for the algorithm. With a
    ``refine_step_deg``, each pose found is then refined locally (as
    :class:`OrientationEstimator` refines its network's, with the same ``refine_*``
    parameters). Measured on one core of a busy shared CPU (Xeon, AVX-512), 64 px
    images, 49 trial origins, C1: 1.9, 6.3 and about 125 s per 1000 particles at 15,
    7.5 and 3.75 degrees (3.5, 10 and 120 s with a CTF); the cost grows as
    ``step^-4``.

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
    refine_cone_deg : float in (0, 90] or None, default None
        How far (degrees) refinement may move a pose; ``None``: two grid steps,
        ``min(2 * angular_step_deg, 90)`` (15 degrees at the default step, the
        default cone of :func:`refine`). The search's pose is within about 0.85
        step of the truth (its grid's covering radius) when it found the right
        basin; the network's poses need a wider cone (``None`` means 45 degrees
        there, see :class:`OrientationEstimator`).
    refine_step_deg : float or None, default None
        ``None``: poses are grid points (the exhaustive search alone). A float (> 0;
        2.0 is :class:`OrientationEstimator`'s default): each pose is then refined
        locally (the algorithm of :func:`refine`) within ``refine_cone_deg`` and
        ``refine_shift_px`` of it, down to this last step. The matcher has no
        ``refine`` switch as the network has: its method :meth:`refine` holds the
        name, so ``None`` here is the switch.
    refine_shift_px : float, default 4.0
        How far (input pixels, per axis) refinement may move each origin from its
        start.
    image_size : int or None, default None
        Rescale images and map to this box (Fourier cropping) before matching and
        refining; origins are reported in input pixels all the same, and the
        confidence is computed at the input box. ``None``: the input box.
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
    device_ : str
        The device matching runs on (``"cpu"`` or ``"cuda"``).
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

    _parameter_constraints: ClassVar[dict] = {
        **PoseEstimator._parameter_constraints,
        "angular_step_deg": [Interval(Real, 0, 90, closed="right")],
        "max_shift_px": [Interval(Real, 0, None, closed="left")],
        "shift_step_px": [Interval(Real, 0, None, closed="neither")],
        "image_size": [None, Interval(Integral, 8, None, closed="left")],
        "refine_step_deg": [None, Interval(Real, 0, None, closed="neither")],
    }
    _requires_y = False

    def __init__(
        self,
        volume=None,
        *,
        angular_step_deg=7.5,
        max_shift_px=4.0,
        shift_step_px=1.0,
        symmetry="C1",
        refine_step_deg=None,
        refine_cone_deg=None,
        refine_shift_px=4.0,
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
        self.refine_cone_deg = refine_cone_deg
        self.refine_shift_px = refine_shift_px
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_projector", None)  # rebuilt from volume_ on first use
        return state

    def _default_cone_deg(self) -> float:
        return min(2.0 * self.angular_step_deg, 90.0)

    # ----------------------------------------------------------------------------
    # Fitting
    # ----------------------------------------------------------------------------

    @renamed_shifts
    def fit(self, images, quaternions=None, shifts_px=None, ctf=None):
        """Prepare the search: grid, trial origins and the map's padded transform.

        References are not stored: one per viewing direction is sampled from the
        map's transform, chunk by chunk, whenever images are matched.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            Images of the box the matcher will see (their values are not used).
        quaternions, shifts_px, ctf : ignored
            Accepted so that the matcher drops into the pipelines of
            :class:`OrientationEstimator` (``shifts=``, the old name of
            ``shifts_px``, with a FutureWarning).

        Returns
        -------
        self
        """
        self._check_params()
        X = self._images(images)
        self._fit_volume(X, self.image_size or X.shape[-1])
        self.device_ = self._resolve_device()
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

    def _full_projector(self, device) -> FourierProjector:
        if self.image_size_ == self.input_box_:
            return self._get_projector()
        return super()._full_projector(device)

    # ----------------------------------------------------------------------------
    # Matching
    # ----------------------------------------------------------------------------

    def _inputs(self, images, ctf):
        """Checked images and CTF at the input box and at the matching box.

        Returns ``(X, ctf, x, ctf_x)``: ``X`` float32 on the device, ``x`` the same
        Fourier-rescaled to ``image_size_``, ``ctf_x`` the CTF at that pixel size.
        """
        X = self._fitted_images(images)
        ctf = check_ctf(ctf, X.shape[0])
        if self.image_size_ == self.input_box_:
            X = X.to(self.device_)
            return X, ctf, X, ctf
        x = fourier_resize(X, self.image_size_).to(self.device_)
        scale = self.image_size_ / self.input_box_
        return X.to(self.device_), ctf, x, None if ctf is None else ctf.resampled(scale)

    def _search_batch(self, x: torch.Tensor, ctf):
        """Global search of one batch: ``(q, t, score, margin)``; score NaN (later)."""
        quats, shifts, margin = _search.global_search(
            self._get_projector(),
            self.directions_.to(dtype=x.dtype, device=x.device),
            self.offsets_px_.to(dtype=x.dtype, device=x.device),
            x,
            ctf,
            step_deg=self.angular_step_deg,
            symmetry=self.symmetry,
        )
        return quats, shifts, torch.full_like(margin, torch.nan), margin

    def _match(self, X, ctf, x, ctf_x) -> Poses:
        """Search (then refine) checked images; scored at the input box."""
        size = min(self.batch_size, _search.image_batch(len(self.offsets_px_)))
        rows, parts = np.arange(x.shape[0]), []
        with torch.no_grad():
            for sl in batches(x.shape[0], size, self.verbose > 0, "search"):
                c = None if ctf_x is None else ctf_x[rows[sl]]
                parts.append(self._search_batch(x[sl], c))
        scale = self.image_size_ / self.input_box_
        q, t, _, margin = _as_output(parts, 1 / scale, True)
        if self.refine_step_deg is not None:
            q, t, _, _ = self._refined(
                self._get_projector(),
                x,
                q,
                t,
                ctf_x,
                scale=scale,
                batch_size=self.batch_size,
            )
        return self._scored(self._full_projector(X.device), X, q, t, margin, ctf)

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
            numpy arrays (refined poses with a ``refine_step_deg``); ``score``: the
            confidence, :func:`pose_score` at the returned pose at the input box
            (as in :meth:`OrientationEstimator.predict_poses`; see :class:`Poses`);
            ``margin``: the search's best NCC minus that of the best viewing
            direction more than two grid steps away (symmetry-aware), both at the
            search's resolution.
        """
        if client is not None:
            from skpose.estimators._distributed import run_method

            return run_method(self, "predict_poses", images, ctf=ctf, client=client)
        return self._match(*self._inputs(images, ctf))

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

    @renamed_shifts
    def refine(
        self,
        images,
        quaternions,
        shifts_px=None,
        ctf=None,
        *,
        cone_deg: float | None = None,
        final_step_deg: float | None = None,
    ) -> Poses:
        """Refine given poses locally (see :func:`refine`) against the fitted map.

        Origins may move up to ``refine_shift_px`` from ``shifts_px`` (default
        zeros).

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
        quaternions : array of shape (n, 4)
            Starting orientations.
        shifts_px : array of shape (n, 2), optional
            Starting RELION origins in input pixels. (``shifts=``, its old name,
            still works with a FutureWarning.)
        ctf : CTFParams, optional
        cone_deg, final_step_deg : float, optional
            Override ``refine_cone_deg`` (``None``: two grid steps) and
            ``refine_step_deg`` (``None``: 2 degrees) for this call.

        Returns
        -------
        Poses
            numpy arrays, origins in input pixels; ``score`` as in
            :meth:`predict_poses`, ``margin`` the refinement's (see :func:`refine`).
        """
        cone = self._cone_deg() if cone_deg is None else cone_deg
        step = self.refine_step_deg if final_step_deg is None else final_step_deg
        step = 2.0 if step is None else step  # OrientationEstimator's default
        _check_refine_options(cone, step, self.refine_shift_px, 1)
        X, ctf, x, ctf_x = self._inputs(images, ctf)
        scale = self.image_size_ / self.input_box_
        q, t = _check_start(quaternions, shifts_px, x.shape[0], x, "shifts_px")
        poses = self._refined(
            self._get_projector(),
            x,
            q,
            t.double().cpu().numpy(),
            ctf_x,
            scale=scale,
            cone_deg=cone,
            final_step_deg=step,
            batch_size=self.batch_size,
        )
        return self._scored(
            self._full_projector(X.device),
            X,
            poses.quaternions,
            poses.shifts_px,
            poses.margin,
            ctf,
        )

    @renamed_shifts
    def score(self, images, quaternions, shifts_px=None, ctf=None) -> float:
        """Minus the reprojection RMSE (paper eq. 16) of the predictions.

        Greater is better. Computed on the map at the matching box (``volume_``),
        with the true origins applied to both projections, as
        :meth:`OrientationEstimator.score` does.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
        quaternions : array of shape (n, 4)
            True orientations.
        shifts_px : array of shape (n, 2), optional
            True RELION origins in input pixels. (``shifts=``, its old name, still
            works with a FutureWarning.)
        ctf : CTFParams, optional
            The images' CTF, as in :meth:`predict_poses`.

        Returns
        -------
        float
            ``-RMSE`` (<= 0).
        """
        inputs = self._inputs(images, ctf)
        n = inputs[0].shape[0]
        q_true = self._quaternions(quaternions, n)
        q_pred = self._match(*inputs).quaternions
        origins = self._origins(shifts_px, n) * (self.image_size_ / self.input_box_)
        return -reprojection_rmse(self.volume_, q_true, q_pred, origins)
