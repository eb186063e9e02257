"""``OrientationEstimator``: the paper's network as a scikit-learn estimator.

scikit-learn shape: ``__init__`` stores its arguments; ``fit`` validates them, prepares
the data and trains; fitted state ends in ``_``; ``predict`` returns canonical unit
quaternions; ``score`` is minus the reprojection RMSE, so ``GridSearchCV`` maximises it
without a ``scoring=``. skorch runs the network inside (``net_``, a
:class:`skorch.NeuralNet` whose criterion is the paper's weighted loss, eq. 15).

Data preparation (the same in ``fit``, ``predict`` and ``score``): images ``(n, N, N)``
(or flattened ``(n, N * N)``) are Fourier-rescaled to ``image_size`` and normalised like
RELION does (zero mean, unit variance of the background outside a circle of radius
0.375 N); the map is rescaled to ``image_size`` too and must have the images' box.
"""

from __future__ import annotations

import math
import os
import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, Options, StrOptions
from skorch import NeuralNet
from skorch.callbacks import LRScheduler, ProgressBar
from torch import nn
from tqdm.auto import tqdm

from skpose.estimators import _inference, _levers
from skpose.estimators._base import PointGroup, PoseEstimator, renamed_shifts
from skpose.estimators._training import TrainingRun
from skpose.geometry.rotations import quat_canonical
from skpose.imaging._centring import average_projection, estimate_origins, recentre
from skpose.imaging.ctf import check_ctf
from skpose.imaging.preprocess import fourier_resize, normalize_images, phase_flip
from skpose.imaging.projection import FourierProjector
from skpose.learn.losses import reprojection_scale, weighted_loss
from skpose.learn.network import OrientationNet, resolve_image_size
from skpose.metrics import reprojection_rmse
from skpose.search.poses import Poses

__all__ = ["OrientationEstimator"]

# refine_cone_deg=None: the cone for network poses (measured: see the docstring).
_NETWORK_CONE_DEG = 45.0


class OrientationLoss(nn.Module):
    """The weighted objective (eq. 15) as a skorch criterion.

    ``y_true`` packs the true quaternions and RELION origins: ``(n, 6)`` = ``(w, x, y,
    z, ox, oy)``. The map is a buffer (it follows the net's device); its projector is
    built on first use and never pickled.
    """

    def __init__(self, volume, w: float, scale: float, symmetry: str | None):
        super().__init__()
        self.register_buffer("volume", torch.as_tensor(volume, dtype=torch.float32))
        self.w, self.scale, self.symmetry = w, scale, symmetry
        self._projector = None

    def projector(self) -> FourierProjector:
        """The map's Fourier projector on the buffer's current device."""
        p = self._projector
        if p is None or p.device != self.volume.device:
            self._projector = p = FourierProjector(self.volume)
        return p

    def forward(self, q_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Loss of predicted quaternions against packed targets."""
        projector = self.projector() if self.w < 1 else None
        return weighted_loss(
            q_pred,
            y_true[:, :4],
            w=self.w,
            projector=projector,
            shifts_px=y_true[:, 4:6],
            scale=self.scale,
            symmetry=self.symmetry,
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_projector"] = None
        return state


class _IterationSampler(torch.utils.data.Sampler):
    """Shuffled indices for exactly ``total_batches`` batches, split into epochs.

    An epoch is one pass over the data (the last one shorter), so that ``max_iter``
    counts iterations as the paper does while skorch reports per epoch. ``skip``
    batches of the next epoch are left out (they were trained before a checkpoint).
    """

    def __init__(self, n: int, batch_size: int, total_batches: int, seed: int):
        self.n, self.batch_size, self.remaining = n, batch_size, total_batches
        self.per_epoch = max(1, math.ceil(n / batch_size))
        self.generator = torch.Generator().manual_seed(seed)
        self.skip = 0

    def __len__(self) -> int:
        return (min(self.per_epoch, self.remaining) - self.skip) * self.batch_size

    def __iter__(self):
        self.epoch_start = (self.generator.get_state(), self.remaining)
        batches = min(self.per_epoch, self.remaining)
        self.remaining -= batches
        need = batches * self.batch_size
        reps = math.ceil(need / self.n)
        order = torch.cat([torch.randperm(self.n, generator=self.generator)] * reps)
        start, self.skip = self.skip * self.batch_size, 0
        return iter(order[start:need].tolist())

    def state_dict(self, done_in_epoch: int) -> tuple[dict, str]:
        """The state that replays the rest of training after ``done_in_epoch`` batches.

        Returns the state and where the RNG states were taken relative to the data
        loader's per-epoch seed draw: ``"epoch"`` at an epoch's end, else ``"batch"``.
        """
        generator, remaining = self.epoch_start
        if done_in_epoch >= min(self.per_epoch, remaining):  # the epoch is over
            generator, remaining = self.generator.get_state(), self.remaining
            done_in_epoch = 0
        state = {"generator": generator, "remaining": remaining, "skip": done_in_epoch}
        return state, "batch" if done_in_epoch else "epoch"

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s state."""
        self.generator.set_state(state["generator"])
        self.remaining, self.skip = int(state["remaining"]), int(state["skip"])


class _Net(NeuralNet):
    """skorch's NeuralNet with inference in batches and a progress bar."""

    def predict_quaternions(
        self, X: np.ndarray, verbose: bool, precision: str = "fp32", compile=False
    ) -> np.ndarray:
        """Forward ``X`` in batches of ``batch_size``; numpy float64 ``(n, 4)``.

        ``precision`` and ``compile``: see :meth:`OrientationEstimator.predict`.
        """
        self.module_.eval()
        forward = _inference.compiled(self.module_) if compile else self.infer
        out = []
        starts = range(0, len(X), self.batch_size)
        with torch.no_grad(), _inference.autocast(self.device, precision):
            for s in tqdm(starts, disable=not verbose, desc="predict", unit="batch"):
                batch = torch.as_tensor(X[s : s + self.batch_size], device=self.device)
                out.append(forward(batch).double().cpu())
        if not out:
            return np.zeros((0, 4))
        q = torch.cat(out)
        if precision != "fp32":  # unit to float64 precision, as float32 outputs are
            q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
        return quat_canonical(q).numpy()

    def train_step_single(self, batch, **fit_params):
        """Take skorch's step on a batch mixed with particles simulated from the map."""
        simulator = getattr(self, "simulator", None)
        if simulator is not None:
            ramp = getattr(self, "curriculum_steps", 0)
            self.sim_step = getattr(self, "sim_step", 0) + 1
            simulator.noise_scale = min(1.0, self.sim_step / ramp) if ramp else 1.0
            Xi, yi = batch
            batch = simulator.mix(Xi, yi, self.simulate_fraction)
        return super().train_step_single(batch, **fit_params)


class OrientationEstimator(PoseEstimator):
    """Predict particle orientations (unit quaternions) from cryo-EM images.

    The network of Lian et al. (2022) trained with their weighted objective
    ``w * QD + (1 - w) * reprojection`` (eq. 15) through skorch.

    Parameters
    ----------
    volume : array of shape (N, N, N) or str or Path
        The map (``[z, y, x]``) or the path of an MRC file; its box must be the
        images' box ``N``. Used by the reprojection loss, by :meth:`score`, by the
        refinement and by the confidence of :meth:`predict_poses`.
    w : float, default 0.8
        Weight of the QD loss in [0, 1]; ``1 - w`` weighs the reprojection loss. Large
        ``w`` (>= 0.6) suits asymmetric particles, small (<= 0.4) symmetric ones.
    lr : float, default 5e-5
        Adam's initial learning rate (> 0); divided by 5 after 80 % of ``max_iter``.
    max_iter : int, default 2000
        Training iterations (batches), as the paper counts them.
    batch_size : int, default 24
    weight_decay : float, default 1e-4
        Adam's L2 penalty (>= 0).
    image_size : int or None, default None
        Network input side (a multiple of 16, >= 32); ``None``: 128 for ``"vgg16"``
        (the paper) and 64 for ``"small"``.
    architecture : {"vgg16", "small"}, default "vgg16"
        The paper's network, or our narrow CPU configuration (see
        :class:`skpose.learn.network.OrientationNet`).
    output : {"quaternion", "axis_angle"}, default "quaternion"
        The network's rotation representation (paper Table 3).
    pretrained : str or None, default None
        A local VGG16 weights file in torchvision's layout (``"vgg16"`` only).
    symmetry : str or None, default None
        Point group for a symmetry-aware QD loss (our addition) and for the
        refinement's margin; ``None``: the paper's plain QD loss (C1).
    device : {"auto", "cpu", "cuda"}, default "auto"
    random_state : int or None, default None
        Seeds weights and batch order: the same seed gives identical predictions on
        the CPU.
    verbose : int, default 0
        0 silent; 1 skorch's epoch table and a progress bar in ``predict``; 2 adds a
        progress bar over each epoch's batches.
    warm_start : bool, default False
        ``fit`` on an already fitted estimator continues training instead of starting
        again (as :meth:`partial_fit` does).
    refine : bool, default False
        After the network, refine each pose by a local search against the map at the
        images' full box (the algorithm of :func:`skpose.search.refine`, with the
        three ``refine_*`` parameters below): ``predict`` and :meth:`predict_poses`
        then return search-quality poses wherever the network was within reach.
    refine_cone_deg : float in (0, 90], "auto" or None, default None
        How far (degrees) refinement may move a pose from the network's; ``None``:
        45 degrees. Measured on 400 particles of the 64 px phantom (``OMP_NUM_THREADS=1
        python benchmarks/refine_cone.py --box 64 --n 400 --snr 0 1 0.1``) from starts
        like a network's (50 % within 10 degrees, 30 % 10-40 degrees off, 20 %
        random): median error (degrees) and fraction under 5 degrees after
        refinement::

            cone (deg)      15         30         45         60         90
            noiseless   1.05 64 %  0.46 79 %  0.63 81 %  0.39 80 %  0.70 71 %
            SNR 1       1.63 64 %  1.19 79 %  1.21 81 %  1.21 80 %  1.35 72 %
            SNR 0.1     4.28 56 %  3.57 68 %  3.50 70 %  3.61 66 %  5.21 50 %
            80S *       9.78 40 %      -      0.73 82 %  0.70 86 %  0.72 85 %

        (* measured earlier on the 80S ribosome map, 64 px, noiseless, from a network's
        own poses, 26 degrees median error.) 15 degrees leaves the poses 10-40 degrees
        off behind; 90 starts so coarse that some land in wrong basins, the more so
        the noisier the images. 45 is the best or within 4 points of it in every
        row; 45 and 60 take the same five rounds, 90 six.
        ``"auto"``: ``fit`` holds out 10 % of the labelled particles (20 to 500)
        and sets the cone to the 90th percentile of the network's errors on them,
        clipped to [15, 90] (``refine_cone_deg_``).
    refine_step_deg : float, default 2.0
        The refinement's last step (degrees, > 0); a quadratic fit then places each
        pose well within it (see :func:`skpose.search.refine`).
    refine_shift_px : float, default 4.0
        How far (pixels of the images, per axis) the refinement may move each origin
        from its start (the ``shifts_px`` given, or zero).
    checkpoint_dir : str or Path or None, default None
        ``fit`` saves ``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every``
        iterations, atomically (weights, Adam's state, the learning-rate schedule,
        the iteration count, the history, the batch order's and the torch, numpy and
        Python RNG states). One training per folder (not one per ``GridSearchCV``
        candidate); ``partial_fit`` and warm starts write none.
    checkpoint_every : int, default 100
        Iterations between checkpoints.
    resume : bool, default False
        With ``checkpoint_dir``: ``fit`` continues from the checkpoint there (and
        trains from scratch when there is none). A checkpoint of other parameters or
        data is refused. On the CPU the result is bitwise that of the uninterrupted
        run.
    simulate_from_map : float, default 0.0
        Fraction (in [0, 1)) of every training batch replaced by particles simulated
        on the fly from ``volume`` at uniformly random rotations, with CTFs and
        origins drawn from the labelled particles' and white noise at the SNR
        measured on them (signal of the CTF-modulated projection at the labelled
        pose against the residual; see :mod:`skpose.learn._simulated`). Seeded by
        ``random_state``. 0: the paper's training on labelled particles only.
    fallback : {None, "search"}, default None
        ``"search"``: ``fit`` holds out labelled particles as for ``"auto"`` and
        calibrates a confidence threshold on them (``fallback_threshold_``, see
        :mod:`skpose.search._fallback`); with ``refine=True``, particles whose
        refined confidence falls below it are searched again (global search at
        ``fallback_step_deg`` + refinement) and keep the better pose.
    fallback_step_deg : float, default 15.0
        Grid spacing of the fallback search.
    snr_curriculum : bool, default False
        With ``simulate_from_map > 0``: the simulated particles' noise grows
        linearly from none to the measured level over the first half of
        ``max_iter`` (clean views first), then stays there.
    recentre : bool, default False
        Estimate each particle's origin before the network, by correlating the
        image with the map's average projection over all views (times the image's
        CTF; no pose needed, see :mod:`skpose.imaging._centring`), and feed the
        network the recentred image: it then learns orientations of centred
        particles instead of orientations and translations together. ``fit``
        trains on recentred labelled images (the reprojection loss uses their
        origins less the estimates); with ``refine=True`` the refinement starts
        from the estimated origins when no ``shifts_px`` are given (it searches
        ``refine_shift_px`` around them). False: the paper's input, the image as
        picked.
    hypotheses : {1, 2, 4}, default 1
        At predict time the network also sees each particle turned in-plane by
        quarter turns (2: 0 and 180 degrees; 4: every quarter turn; exact, no
        interpolation). A turned image is the projection of the turned pose, so each
        answer turned back is a hypothesis for the same pose; the one whose
        (CTF-modulated) projection correlates best with the image, at the
        resolution of the refinement's second round (a quarter of the cone) with
        origins searched within a pixel, is kept and refined. Costs ``hypotheses``
        forward passes; the training is unchanged. 1: the paper's single answer.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained network (``net_.history`` holds the training losses).
    volume_ : numpy.ndarray of shape (image_size,) * 3
        The map rescaled to the network's input size.
    input_box_ : int
        Box size of the images ``fit`` saw (``predict`` requires the same).
    image_size_ : int
    trained_with_ctf_ : bool
        Whether ``fit`` was given the images' CTF (the network then saw them
        phase-flipped); ``predict``, :meth:`predict_poses`, :meth:`score` and
        :meth:`partial_fit` refuse images whose CTF is given when it was not, and
        the reverse.
    reprojection_scale_ : float
        Divides the reprojection loss (see :mod:`skpose.learn.losses`).
    centring_reference_ : numpy.ndarray of shape (input_box_, input_box_) or None
        With ``recentre=True``: the map's average projection the origins are
        estimated against; None when fitted without. Predicting or fine-tuning
        with the other ``recentre`` is refused (the network saw the other input).
    n_iter_ : int
        Iterations trained so far (fewer than ``max_iter`` after an interrupt).
    n_features_in_ : int
        ``input_box_ ** 2``.
    simulated_noise_ : NoiseModel
        With ``simulate_from_map > 0``: the amplitude, noise and SNR measured on the
        labelled particles at the network's size.
    refine_cone_deg_ : float
        The refinement cone (``refine_cone_deg``, or the calibrated one).
    fallback_threshold_ : float
        With calibration: the confidence below which particles fall back
        (``-inf``: none).
    calibration_ : dict
        With calibration: held-out network and refined errors, scores, cone and
        threshold.

    Examples
    --------
    >>> from skpose import phantom_volume, simulate_particles
    >>> vol = phantom_volume(32)
    >>> sim = simulate_particles(vol, 48, random_state=0)
    >>> est = OrientationEstimator(vol, architecture="small", image_size=32,
    ...                            max_iter=4, batch_size=16, lr=1e-3, random_state=0)
    >>> est.fit(sim.images, sim.quaternions).predict(sim.images[:3]).shape
    (3, 4)

    Interrupts: Ctrl-C (SIGINT, and SIGTERM where a Python handler is installed, as
    the ``skpose`` command line does) stops training at the end of the current
    iteration and ``fit`` raises ``KeyboardInterrupt``, although skorch alone would
    return as if training were complete. The estimator then holds the network of
    ``n_iter_ < max_iter`` iterations; ``fit`` does not return it as a finished one.
    """

    _parameter_constraints: ClassVar[dict] = {
        **PoseEstimator._parameter_constraints,
        "w": [Interval(Real, 0, 1, closed="both")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "image_size": [None, Interval(Integral, 32, None, closed="left")],
        "architecture": [StrOptions({"vgg16", "small"})],
        "output": [StrOptions({"quaternion", "axis_angle"})],
        "pretrained": [None, str, Path],
        "symmetry": [None, PointGroup()],
        "random_state": [None, Interval(Integral, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "refine": ["boolean"],
        "refine_cone_deg": [
            None,
            Interval(Real, 0, 90, closed="right"),
            StrOptions({"auto"}),
        ],
        "simulate_from_map": [Interval(Real, 0, 1, closed="left")],
        "fallback": [None, StrOptions({"search"})],
        "fallback_step_deg": [Interval(Real, 0, 90, closed="right")],
        "snr_curriculum": ["boolean"],
        "recentre": ["boolean"],
        "hypotheses": [Options(Integral, {1, 2, 4})],
        "checkpoint_dir": [None, str, os.PathLike],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "resume": ["boolean"],
    }

    def __init__(
        self,
        volume=None,
        *,
        w=0.8,
        lr=5e-5,
        max_iter=2000,
        batch_size=24,
        weight_decay=1e-4,
        image_size=None,
        architecture="vgg16",
        output="quaternion",
        pretrained=None,
        symmetry=None,
        device="auto",
        random_state=None,
        verbose=0,
        warm_start=False,
        refine=False,
        refine_cone_deg=None,
        refine_step_deg=2.0,
        refine_shift_px=4.0,
        checkpoint_dir=None,
        checkpoint_every=100,
        resume=False,
        simulate_from_map=0.0,
        fallback=None,
        fallback_step_deg=15.0,
        snr_curriculum=False,
        recentre=False,
        hypotheses=1,
    ):
        self.volume = volume
        self.w = w
        self.lr = lr
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.image_size = image_size
        self.architecture = architecture
        self.output = output
        self.pretrained = pretrained
        self.symmetry = symmetry
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.refine = refine
        self.refine_cone_deg = refine_cone_deg
        self.refine_step_deg = refine_step_deg
        self.refine_shift_px = refine_shift_px
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.simulate_from_map = simulate_from_map
        self.fallback = fallback
        self.fallback_step_deg = fallback_step_deg
        self.snr_curriculum = snr_curriculum
        self.recentre = recentre
        self.hypotheses = hypotheses

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    def _default_cone_deg(self) -> float:
        return _NETWORK_CONE_DEG

    def _cone_deg(self) -> float:
        if isinstance(self.refine_cone_deg, str):  # "auto": calibrated by fit
            return float(self.refine_cone_deg_)
        return super()._cone_deg()

    # ----------------------------------------------------------------------------
    # Validation and data preparation
    # ----------------------------------------------------------------------------

    def _ctf_as_trained(self, ctf, n: int):
        """The checked CTF of ``n`` images, refused when training had the other kind."""
        ctf = check_ctf(ctf, n)
        trained = getattr(self, "trained_with_ctf_", None)  # None: unknown (old pickle)
        if trained is None or trained == (ctf is not None):
            return ctf
        if trained:
            raise ValueError(
                "OrientationEstimator was trained on images with a CTF (its network "
                "saw them phase-flipped) but got no 'ctf': pass the images' CTF "
                "(ctf=CTFParams), or refit on images without one."
            )
        raise ValueError(
            "OrientationEstimator was trained on images without a CTF but got a "
            "'ctf': its network never saw phase-flipped images. Predict without "
            "ctf=, or refit with the training images' CTF."
        )

    def _targets(self, quaternions: np.ndarray, shifts_px, box: int) -> np.ndarray:
        """Packed ``(n, 6)`` float32 targets: quaternions, origins at the net's size."""
        origins = self._origins(shifts_px, len(quaternions)) * (self.image_size_ / box)
        return np.concatenate([quaternions, origins], axis=1).astype(np.float32)

    def _estimated_origins(self, X: torch.Tensor, ctf) -> np.ndarray | None:
        """Origins (input pixels) estimated without poses; None unless ``recentre``.

        Refuses a ``recentre`` other than the one the network was trained with.
        """
        reference = getattr(self, "centring_reference_", None)  # None: old pickle
        if bool(self.recentre) != (reference is not None):
            if self.recentre:
                raise ValueError(
                    "OrientationEstimator was fitted with recentre=False: its network "
                    "never saw recentred particles. Refit with recentre=True, or "
                    "set_params(recentre=False)."
                )
            raise ValueError(
                "OrientationEstimator was fitted with recentre=True (its network saw "
                "recentred particles) but recentre is now False: "
                "set_params(recentre=True), or refit."
            )
        if reference is None:
            return None
        return estimate_origins(X, reference, ctf)

    def _recentred(self, X: torch.Tensor, y: np.ndarray, ctf):
        """Labelled images recentred and their targets' origins made residual."""
        origins = self._estimated_origins(X, ctf)
        if origins is None:
            return X, y
        y = y.copy()
        y[:, 4:6] -= (origins * (self.image_size_ / X.shape[-1])).astype(y.dtype)
        return recentre(X, origins), y

    def _network_input(self, images: torch.Tensor, ctf) -> np.ndarray:
        """Network input: phase-flipped (with a CTF), rescaled, normalised; float32.

        numpy on the CPU; a float32 tensor on the images' device when they are on a
        GPU (predict there: the preprocessing stays there too).
        """
        if ctf is not None:
            images = phase_flip(images, ctf)
        if images.shape[-1] != self.image_size_:
            images = fourier_resize(images, self.image_size_)
        normalized = normalize_images(images, constant="whole")
        if normalized.device.type != "cpu":  # predict on a GPU: stay there
            return normalized.to(torch.float32)
        return normalized.numpy().astype(np.float32, copy=False)

    # ----------------------------------------------------------------------------
    # Fitting
    # ----------------------------------------------------------------------------

    def _build_net(self, volume_small: np.ndarray, total_batches: int, n: int):
        seed = self._seed()
        torch.manual_seed(seed)
        projector = FourierProjector(torch.as_tensor(volume_small))
        self.reprojection_scale_ = reprojection_scale(projector, random_state=seed)
        callbacks = [
            (
                "lr_schedule",
                LRScheduler(
                    policy=torch.optim.lr_scheduler.MultiStepLR,
                    milestones=[max(1, int(0.8 * self.max_iter))],
                    gamma=0.2,
                    step_every="batch",
                ),
            )
        ]
        if self.verbose >= 2:
            callbacks.append(("progress", ProgressBar()))
        net = _Net(
            module=OrientationNet,
            module__architecture=self.architecture,
            module__image_size=self.image_size_,
            module__output=self.output,
            module__pretrained=self.pretrained,
            criterion=OrientationLoss,
            criterion__volume=volume_small,
            criterion__w=float(self.w),
            criterion__scale=self.reprojection_scale_,
            criterion__symmetry=self.symmetry,
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=self.weight_decay,
            lr=self.lr,
            batch_size=self.batch_size,
            max_epochs=1,
            train_split=None,
            callbacks=callbacks,
            iterator_train__sampler=_IterationSampler(
                n, self.batch_size, total_batches, seed
            ),
            verbose=int(self.verbose >= 1),
            device=self._resolve_device(),
        )
        return net.initialize()

    def _seed(self) -> int:
        return int(np.random.default_rng(self.random_state).integers(2**31))

    @renamed_shifts
    def fit(self, images, quaternions, shifts_px=None, ctf=None):
        """Train the network on labelled images.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            Particle images ``[y, x]`` (flattened square images are accepted).
        quaternions : array of shape (n, 4)
            Their orientations ``(w, x, y, z)``, unit norm (our ``R`` = RELION's
            ``A``).
        shifts_px : array of shape (n, 2), optional
            RELION origins in pixels (used by the reprojection loss); default zeros.
            (``shifts=``, its old name, still works with a FutureWarning.)
        ctf : CTFParams, optional
            The images' CTF (``n`` particles, or 1 for all): the network then sees
            the images phase-flipped, and the fitted estimator requires the CTF of
            the images it predicts (``trained_with_ctf_``). Without it, images are
            used as given, and predicting images with a CTF is refused.

        Returns
        -------
        self
        """
        if self.warm_start and hasattr(self, "net_"):
            return self.partial_fit(images, quaternions, shifts_px, ctf)
        self._check_params()
        X = self._images(images)
        q = self._quaternions(quaternions, X.shape[0])
        ctf = check_ctf(ctf, X.shape[0])
        self._fit_volume(X, resolve_image_size(self.architecture, self.image_size))
        self.trained_with_ctf_ = ctf is not None
        y = self._targets(q, shifts_px, X.shape[-1])
        self.centring_reference_ = (
            average_projection(self._full_volume()).numpy() if self.recentre else None
        )
        X, y = self._recentred(X, y, ctf)
        rows = held = slice(None)
        if _levers.needs_calibration(self):
            rows, held = _levers.calibration_rows(len(q), self._seed())
        self.net_ = self._build_net(self.volume_, self.max_iter, len(y[rows]))
        self.n_iter_ = 0
        if not isinstance(self.refine_cone_deg, str):
            self.refine_cone_deg_ = self._cone_deg()
        self._train_on(X[rows], y[rows], None if ctf is None else ctf[rows])
        if _levers.needs_calibration(self):
            held_ctf = None if ctf is None else ctf[held]
            _levers.calibrate(self, X[held], q[held], held_ctf)
        return self

    def _train_on(self, X: torch.Tensor, y: np.ndarray, ctf):
        """Train on labelled images, mixed with simulated ones when asked."""
        if self.simulate_from_map > 0:
            _levers.attach_simulator(self, X, y[:, :4], y[:, 4:], ctf)
            self.net_.simulate_fraction = float(self.simulate_from_map)
            self.net_.sim_step = 0
            ramp = self.max_iter // 2 if self.snr_curriculum else 0
            self.net_.curriculum_steps = ramp
        try:
            return self._train(self._network_input(X, ctf), y.astype(np.float32))
        finally:
            self.net_.simulator = None  # not pickled with the model

    @renamed_shifts
    def partial_fit(self, images, quaternions, shifts_px=None, ctf=None):
        """Fine-tune: ``max_iter`` more iterations from the current weights.

        Fits from scratch when the estimator is not fitted yet. The learning rate
        continues from where the last schedule left it (the paper fine-tunes the
        network in later refinement rounds).

        Parameters
        ----------
        images, quaternions, shifts_px, ctf
            As in :meth:`fit`; the images must have the fitted box, and a CTF when
            (and only when) the estimator was trained with one.

        Returns
        -------
        self
        """
        if not hasattr(self, "net_"):
            warm, self.warm_start = self.warm_start, False
            try:
                return self.fit(images, quaternions, shifts_px, ctf)
            finally:
                self.warm_start = warm
        self._check_params()
        X = self._fitted_images(images)
        q = self._quaternions(quaternions, X.shape[0])
        ctf = self._ctf_as_trained(ctf, X.shape[0])
        y = self._targets(q, shifts_px, X.shape[-1])
        X, y = self._recentred(X, y, ctf)
        # A plain attribute: skorch's set_params would re-initialise the module.
        self.net_.iterator_train__sampler = _IterationSampler(
            len(q), self.batch_size, self.max_iter, self._seed()
        )
        return self._train_on(X, y, ctf)

    def _train(self, X: np.ndarray, y: np.ndarray):
        # Counts n_iter_, checkpoints, resumes, and raises interrupts skorch swallows.
        with TrainingRun(self, X, y) as run, warnings.catch_warnings():
            # skorch warns that a sampler with shuffle=False is unusual; it is ours.
            warnings.simplefilter("ignore", UserWarning)
            self.net_.partial_fit(X, y, epochs=run.epochs)
        return self

    # ----------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------

    def _network(
        self,
        X: torch.Tensor,
        ctf,
        precision="fp32",
        compile=False,
        origins=None,
        start=None,
        projector=None,
    ):
        """The network's quaternions ``(n, 4)`` for checked images and CTF.

        ``origins``: the images' estimated origins when ``recentre`` (computed
        here when not given); the network sees the images recentred by them.
        ``start``: the origins (pixels) the hypotheses are scored at; default the
        estimated origins, or zeros. ``projector``: the full-box projector they are
        scored with, when the caller has one.
        """
        if origins is None:
            origins = self._estimated_origins(X, ctf)
        if start is None:
            start = np.zeros((X.shape[0], 2)) if origins is None else origins
        X_in = X if origins is None else recentre(X, origins)
        return self._answers(X_in, X, start, ctf, precision, compile, projector)

    def _answers(
        self, X_in, X, start, ctf, precision="fp32", compile=False, projector=None
    ):
        """The network's answers for input images ``X_in`` (the images ``X`` as fed).

        With ``hypotheses > 1``: the best of the turned copies' answers, scored on
        ``X`` at origins ``start`` (:func:`_levers.best_hypotheses`, with
        ``projector`` when given).
        """
        inp = self._network_input(X_in, ctf)
        verbose, k = self.verbose >= 1, self.hypotheses
        if k not in (1, 2, 4):
            raise ValueError(
                f"The 'hypotheses' parameter of OrientationEstimator must be 1, 2 or "
                f"4. Got {k!r} instead."
            )
        if k == 1:
            return self.net_.predict_quaternions(inp, verbose, precision, compile)
        hyps = _levers.turned_hypotheses(self.net_, inp, k, verbose, precision, compile)
        return _levers.best_hypotheses(self, X, hyps, start, ctf, projector)

    def _poses(self, X: torch.Tensor, start: np.ndarray | None, ctf, **options):
        """Network poses, refined when ``refine=True``, scored at the full box.

        ``start``: the origins the refinement starts from and the score uses; None
        when unknown: then the estimated ones (``recentre``) or zeros.
        Returns the :class:`Poses` and the mask of the particles that fell back to
        the global search (``fallback="search"``).
        """
        origins = self._estimated_origins(X, ctf)
        if start is None:
            start = np.zeros((X.shape[0], 2)) if origins is None else origins
        device = self.net_.device
        x = X.to(device)
        projector = self._full_projector(device)  # one for hypotheses, refine, score
        q = self._network(
            X, ctf, origins=origins, start=start, projector=projector, **options
        )
        margin = np.full(len(q), np.nan)
        if self.refine:
            q, start, _, margin = self._refined(projector, x, q, start, ctf)
        out = self._scored(projector, x, q, start, margin, ctf)
        fell_back = np.zeros(len(q), dtype=bool)
        calibrated = hasattr(self, "fallback_threshold_")
        if self.refine and self.fallback == "search" and calibrated:
            out, fell_back = _levers.fall_back(self, x, ctf, out)
        return out, fell_back

    def predict(
        self, images, ctf=None, *, client=None, precision="fp32", compile=False
    ) -> np.ndarray:
        """Orientations of images, in batches (refined when ``refine=True``).

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            With the box the estimator was fitted on: numpy, or a torch tensor (on
            the network's device, the preprocessing runs there too).
        ctf : CTFParams, optional
            The images' CTF, as in :meth:`fit`: required when the estimator was
            trained with a CTF, refused when it was not.
        client : dask.distributed.Client or str or True, optional
            Predict on a dask cluster: a client, a scheduler address
            (``"tcp://host:8786"``), or True for the active client. The images are
            cut into chunks of 1024 that are scattered to the workers; the estimator
            and its map go once to each worker; the result equals this process's.
            :func:`skpose.distributed.predict_particles` also streams particles
            from a STAR file, each worker reading its own images.
        precision : {"fp32", "bf16"}, default "fp32"
            The network's forward pass in float32, or under bfloat16 autocast
            (the refinement and the scores stay float32); ``docs/gpu.md`` gives
            the speed and the change in angular error.
        compile : bool, default False
            Run the network through :func:`torch.compile` (compiled once per
            network; no gain measured on the CPU, see ``docs/gpu.md``).

        Returns
        -------
        numpy.ndarray of shape (n, 4), float64
            Canonical unit quaternions ``(w, x, y, z)``, ``w >= 0``.
        """
        options = {"precision": precision, "compile": compile}
        if client is not None:
            from skpose.estimators._distributed import run_method

            return run_method(
                self, "predict", images, None, ctf, client=client, **options
            )
        _inference.check_options("OrientationEstimator.predict", **options)
        X = self._fitted_images(images)
        ctf = self._ctf_as_trained(ctf, X.shape[0])
        if self.refine:
            return self._poses(X, None, ctf, **options)[0].quaternions
        return self._network(X, ctf, **options)

    @renamed_shifts
    def predict_poses(
        self,
        images,
        shifts_px=None,
        ctf=None,
        *,
        return_fallback=False,
        client=None,
        precision="fp32",
        compile=False,
    ) -> Poses:
        """Orientations, origins and a per-particle confidence.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            With the box the estimator was fitted on (numpy, or a torch tensor).
        shifts_px : array of shape (n, 2), optional
            Known RELION origins in pixels (e.g. from extraction), the refinement's
            start; default zeros, or the origins estimated by ``recentre=True``.
            (``shifts=``, its old name, still works with a FutureWarning.)
        ctf : CTFParams, optional
            The images' CTF, as in :meth:`predict`: the network sees the images
            phase-flipped (as in :meth:`fit`), the refinement and the score compare
            them with CTF-modulated projections.
        client, precision, compile
            As in :meth:`predict`: on a dask cluster the refinement runs on the
            workers too.

        Returns
        -------
        Poses
            numpy arrays. ``score``: the confidence, the normalised cross-correlation
            of each image with the (CTF-modulated) projection at its returned pose at
            the images' full box, :func:`skpose.search.pose_score`'s, in [-1, 1]
            (the same number for the same pose whether or not it was refined; see
            :class:`~skpose.search.Poses` for what is low). With ``refine=True``,
            poses and origins are refined and ``margin`` is the refinement's (see
            :func:`skpose.search.refine`); otherwise origins are ``shifts_px`` and
            ``margin`` is NaN.
        fallback : numpy.ndarray of shape (n,), bool
            Only with ``return_fallback=True``: the particles that went through the
            fallback search (``fallback="search"`` and ``refine=True``; otherwise
            all False).
        """
        options = {"precision": precision, "compile": compile}
        if client is not None:
            from skpose.estimators._distributed import run_method

            return run_method(
                self, "predict_poses", images, shifts_px, ctf, client=client, **options
            )
        _inference.check_options("OrientationEstimator.predict_poses", **options)
        X = self._fitted_images(images)
        ctf = self._ctf_as_trained(ctf, X.shape[0])
        start = None if shifts_px is None else self._origins(shifts_px, X.shape[0])
        out, fell_back = self._poses(X, start, ctf, **options)
        return (out, fell_back) if return_fallback else out

    @renamed_shifts
    def score(self, images, quaternions, shifts_px=None, ctf=None) -> float:
        """Minus the reprojection RMSE (paper eq. 16): greater is better.

        Of the predicted orientations (refined when ``refine=True``, from the given
        origins). Computed on the map rescaled to the network's input size
        (``volume_``), so scores compare models of the same ``image_size`` and map.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
        quaternions : array of shape (n, 4)
            True orientations.
        shifts_px : array of shape (n, 2), optional
            True RELION origins in pixels. (``shifts=``, its old name, still works
            with a FutureWarning.)
        ctf : CTFParams, optional
            The images' CTF, as in :meth:`predict`.

        Returns
        -------
        float
            ``-RMSE`` (<= 0).
        """
        X = self._fitted_images(images)
        q_true = self._quaternions(quaternions, X.shape[0])
        ctf = self._ctf_as_trained(ctf, X.shape[0])
        origins = self._origins(shifts_px, len(q_true))
        if self.refine:
            q_pred = self._poses(X, origins, ctf)[0].quaternions
        else:
            q_pred = self._network(X, ctf, start=origins)
        scale = self.image_size_ / self.input_box_
        return -reprojection_rmse(self.volume_, q_true, q_pred, origins * scale)
