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
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.callbacks import LRScheduler, ProgressBar
from torch import nn
from tqdm.auto import tqdm

from skpose._validation import (
    VolumeReprMixin,
    check_ctf,
    check_finite,
    check_params,
    is_int,
    is_real,
    to_tensor,
)
from skpose.estimators import _inference
from skpose.geometry.rotations import quat_canonical
from skpose.geometry.symmetry import group_order
from skpose.imaging.preprocess import fourier_resize, normalize_images, phase_flip
from skpose.imaging.projection import FourierProjector
from skpose.learn.losses import reprojection_scale, weighted_loss
from skpose.learn.network import OrientationNet, resolve_image_size
from skpose.metrics import reprojection_rmse
from skpose.search.poses import Poses, pose_score, refine

__all__ = ["OrientationEstimator"]

_UNIT_TOLERANCE = 1e-3
# Refinement cone for network poses. 80S ribosome, 64 px noiseless, a small network
# with a median error of 26 degrees: cones of 15/45/60/90 degrees gave medians of
# 9.8/0.73/0.70/0.72 degrees after refinement (40/82/86/85 % under 5 degrees) at
# 3.7/4.8/3.7/5.0 s per 1000 particles (one CPU thread).
_REFINE_CONE_DEG = 60.0


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
    counts iterations as the paper does while skorch reports per epoch.
    """

    def __init__(self, n: int, batch_size: int, total_batches: int, seed: int):
        self.n, self.batch_size, self.remaining = n, batch_size, total_batches
        self.per_epoch = max(1, math.ceil(n / batch_size))
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return min(self.per_epoch, self.remaining) * self.batch_size

    def __iter__(self):
        batches = min(self.per_epoch, self.remaining)
        self.remaining -= batches
        need = batches * self.batch_size
        reps = math.ceil(need / self.n)
        order = torch.cat([torch.randperm(self.n, generator=self.generator)] * reps)
        return iter(order[:need].tolist())


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


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "The 'device' parameter of OrientationEstimator is 'cuda', but no CUDA "
            "device is available. Use 'cpu' or 'auto'."
        )
    return device


class OrientationEstimator(VolumeReprMixin, BaseEstimator):
    """Predict particle orientations (unit quaternions) from cryo-EM images.

    The network of Lian et al. (2022) trained with their weighted objective
    ``w * QD + (1 - w) * reprojection`` (eq. 15) through skorch.

    Parameters
    ----------
    volume : array of shape (N, N, N) or str or Path
        The map (``[z, y, x]``) or the path of an MRC file; its box must be the
        images' box ``N``. Used by the reprojection loss and by :meth:`score`.
    w : float, default 0.8
        Weight of the QD loss in [0, 1]; ``1 - w`` weighs the reprojection loss. Large
        ``w`` (>= 0.6) suits asymmetric particles, small (<= 0.4) symmetric ones.
    lr : float, default 5e-5
        Adam's initial learning rate; divided by 5 after 80 % of ``max_iter``.
    max_iter : int, default 2000
        Training iterations (batches), as the paper counts them.
    batch_size : int, default 24
    weight_decay : float, default 1e-4
        Adam's L2 penalty.
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
        Point group for a symmetry-aware QD loss (our addition); ``None``: the paper's
        plain QD loss.
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
        images' full box (:func:`skpose.search.refine` with a 60 degree cone,
        origins within 4 px, a 2 degree final step): ``predict`` and
        :meth:`predict_poses` then return search-quality poses wherever the network
        was within reach. Needs the map (``volume``) at predict time.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained network (``net_.history`` holds the training losses).
    volume_ : numpy.ndarray of shape (image_size,) * 3
        The map rescaled to the network's input size.
    input_box_ : int
        Box size of the images ``fit`` saw (``predict`` requires the same).
    image_size_ : int
    reprojection_scale_ : float
        Divides the reprojection loss (see :mod:`skpose.learn.losses`).
    n_iter_ : int
        Iterations trained so far.
    n_features_in_ : int
        ``input_box_ ** 2``.

    Examples
    --------
    >>> from skpose import phantom_volume, simulate_particles
    >>> vol = phantom_volume(32)
    >>> sim = simulate_particles(vol, 48, random_state=0)
    >>> est = OrientationEstimator(vol, architecture="small", image_size=32,
    ...                            max_iter=4, batch_size=16, lr=1e-3, random_state=0)
    >>> est.fit(sim.images, sim.quaternions).predict(sim.images[:3]).shape
    (3, 4)
    """

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ----------------------------------------------------------------------------
    # Validation
    # ----------------------------------------------------------------------------

    def _check_params(self) -> None:
        checks = {
            "w": (is_real(self.w) and 0 <= self.w <= 1, "a float in [0, 1]"),
            "lr": (
                is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr),
                "a float > 0",
            ),
            "max_iter": (is_int(self.max_iter) and self.max_iter >= 1, "an int >= 1"),
            "batch_size": (
                is_int(self.batch_size) and self.batch_size >= 1,
                "an int >= 1",
            ),
            "weight_decay": (
                is_real(self.weight_decay) and self.weight_decay >= 0,
                "a float >= 0",
            ),
            "device": (
                self.device in ("auto", "cpu", "cuda"),
                "one of 'auto', 'cpu', 'cuda'",
            ),
            "verbose": (is_int(self.verbose) and self.verbose >= 0, "an int >= 0"),
            "refine": (isinstance(self.refine, (bool, np.bool_)), "True or False"),
            "volume": (self.volume is not None, "an array (N, N, N) or an MRC path"),
        }
        check_params(self, "OrientationEstimator", checks)
        if self.symmetry is not None:
            group_order(self.symmetry)  # raises a ValueError naming 'symmetry'

    def _images(self, X, name: str = "images") -> np.ndarray:
        """Validate images: (n, N, N), or (n, N * N) flattened; finite."""
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

    def _quaternions(self, y, n: int) -> np.ndarray:
        if y is None:
            raise ValueError(
                "OrientationEstimator requires y to be passed, but the target y is "
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

    def _shifts(self, shifts, n: int, box: int) -> np.ndarray:
        if shifts is None:
            return np.zeros((n, 2))
        s = to_tensor(shifts, "shifts").to(torch.float64)
        if s.shape != (n, 2):
            raise ValueError(
                f"Expected 'shifts' to have shape ({n}, 2) (RELION origins in pixels), "
                f"got {tuple(s.shape)}."
            )
        check_finite(s, "shifts")
        return s.numpy() * (self.image_size_ / box)

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
    # Data preparation
    # ----------------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor) -> np.ndarray:
        """Rescale to the network's size and normalise; float32 numpy on the CPU."""
        if images.shape[-1] != self.image_size_:
            images = fourier_resize(images, self.image_size_)
        normalized = normalize_images(images, constant="whole")
        if normalized.device.type != "cpu":  # predict on a GPU: stay there
            return normalized.to(torch.float32)
        return normalized.numpy().astype(np.float32, copy=False)

    def _network_input(self, images: torch.Tensor, ctf) -> np.ndarray:
        """Phase-flipped when a CTF is given; rescaled and normalised."""
        ctf = check_ctf(ctf, images.shape[0])
        return self._prepare(images if ctf is None else phase_flip(images, ctf))

    def _full_volume(self) -> np.ndarray:
        """The map at the images' box (``volume_`` when the network sees that box)."""
        if self.input_box_ == self.image_size_:
            return self.volume_
        volume = self._load_volume()
        if volume.shape[0] != self.input_box_:
            raise ValueError(
                f"The 'volume' box ({volume.shape[0]} px) differs from the box the "
                f"model was fitted on ({self.input_box_} px); set_params(volume=...) "
                "to the map it was trained with."
            )
        return volume

    def _check_box(self, images: torch.Tensor, name: str = "images") -> None:
        if images.shape[-1] != self.input_box_:
            raise ValueError(
                f"'{name}' are {images.shape[-1]} px but the model was fitted on "
                f"{self.input_box_} px images. skpose refuses rather than guess the "
                "pixel size: rescale them (skpose.fourier_resize) to "
                f"{self.input_box_} px at the training pixel size, or refit."
            )

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
            device=_resolve_device(self.device),
        )
        return net.initialize()

    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.default_rng().integers(2**31))
        return int(np.random.default_rng(self.random_state).integers(2**31))

    def fit(self, images, quaternions, shifts=None, ctf=None):
        """Train the network on labelled images.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            Particle images ``[y, x]`` (flattened square images are accepted).
        quaternions : array of shape (n, 4)
            Their orientations ``(w, x, y, z)``, unit norm (our ``R`` = RELION's
            ``A``).
        shifts : array of shape (n, 2), optional
            RELION origins in pixels (used by the reprojection loss); default zeros.
        ctf : CTFParams, optional
            The images' CTF (``n`` particles, or 1 for all): the network then sees
            the images phase-flipped (here and in ``predict``, given the CTF there
            too). Without it, images are used as given.

        Returns
        -------
        self
        """
        if self.warm_start and hasattr(self, "net_"):
            return self.partial_fit(images, quaternions, shifts, ctf)
        self._check_params()
        X = self._images(images)
        q = self._quaternions(quaternions, X.shape[0])
        volume = self._load_volume()
        if volume.shape[0] != X.shape[-1]:
            raise ValueError(
                f"The 'volume' box ({volume.shape[0]} px) differs from the images' box "
                f"({X.shape[-1]} px); both must share box and pixel size."
            )
        net_size = resolve_image_size(self.architecture, self.image_size)
        self.image_size_ = net_size
        self.input_box_ = X.shape[-1]
        self.n_features_in_ = self.input_box_**2
        self.volume_ = (
            volume
            if volume.shape[0] == net_size
            else fourier_resize(volume, net_size, ndim=3)
        )
        y = np.concatenate([q, self._shifts(shifts, len(q), X.shape[-1])], axis=1)
        self.net_ = self._build_net(self.volume_, self.max_iter, len(q))
        self.n_iter_ = 0
        return self._train(self._network_input(X, ctf), y.astype(np.float32))

    def partial_fit(self, images, quaternions, shifts=None, ctf=None):
        """Fine-tune: ``max_iter`` more iterations from the current weights.

        Fits from scratch when the estimator is not fitted yet. The learning rate
        continues from where the last schedule left it (the paper fine-tunes the
        network in later refinement rounds).

        Parameters
        ----------
        images, quaternions, shifts, ctf
            As in :meth:`fit`; the images must have the fitted box.

        Returns
        -------
        self
        """
        if not hasattr(self, "net_"):
            warm, self.warm_start = self.warm_start, False
            try:
                return self.fit(images, quaternions, shifts, ctf)
            finally:
                self.warm_start = warm
        self._check_params()
        X = self._images(images)
        self._check_box(X)
        q = self._quaternions(quaternions, X.shape[0])
        y = np.concatenate([q, self._shifts(shifts, len(q), X.shape[-1])], axis=1)
        # A plain attribute: skorch's set_params would re-initialise the module.
        self.net_.iterator_train__sampler = _IterationSampler(
            len(q), self.batch_size, self.max_iter, self._seed()
        )
        return self._train(self._network_input(X, ctf), y.astype(np.float32))

    def _train(self, X: np.ndarray, y: np.ndarray):
        sampler = self.net_.iterator_train__sampler
        epochs = math.ceil(sampler.remaining / sampler.per_epoch)
        with warnings.catch_warnings():
            # skorch warns that a sampler with shuffle=False is unusual; it is ours.
            warnings.simplefilter("ignore", UserWarning)
            self.net_.partial_fit(X, y, epochs=epochs)
        self.n_iter_ += sum(len(h["batches"]) for h in self.net_.history[-epochs:])
        return self

    # ----------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------

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
            The images' CTF, as in :meth:`fit`.
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
        if self.refine:
            return self.predict_poses(images, ctf=ctf, **options).quaternions
        _inference.check_options("OrientationEstimator.predict", precision, compile)
        check_is_fitted(self, "net_")
        X = self._images(images)
        self._check_box(X)
        return self.net_.predict_quaternions(
            self._network_input(X, ctf), self.verbose >= 1, precision, compile
        )

    def predict_poses(
        self,
        images,
        shifts=None,
        ctf=None,
        *,
        client=None,
        precision="fp32",
        compile=False,
    ) -> Poses:
        """Orientations, origins and a per-particle confidence.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
            With the box the estimator was fitted on (numpy, or a torch tensor).
        shifts : array of shape (n, 2), optional
            Known RELION origins in pixels (e.g. from extraction), the refinement's
            start; default zeros.
        ctf : CTFParams, optional
            The images' CTF: the network sees the images phase-flipped (as in
            :meth:`fit`), the refinement and the score compare them with
            CTF-modulated projections.
        client, precision, compile
            As in :meth:`predict`: on a dask cluster the refinement runs on the
            workers too.

        Returns
        -------
        Poses
            numpy arrays. ``score``: the normalised cross-correlation of each image
            with the projection at its pose (full box, see
            :func:`skpose.search.pose_score`); junk images and wrong poses score
            low. With ``refine=True``, poses and origins are refined and ``margin``
            is the refinement's (see :func:`skpose.search.refine`); otherwise
            origins are ``shifts`` and ``margin`` is NaN.
        """
        options = {"precision": precision, "compile": compile}
        if client is not None:
            from skpose.estimators._distributed import run_method

            return run_method(
                self, "predict_poses", images, shifts, ctf, client=client, **options
            )
        _inference.check_options("OrientationEstimator.predict_poses", **options)
        check_is_fitted(self, "net_")
        X = self._images(images)
        self._check_box(X)
        n = X.shape[0]
        ctf = check_ctf(ctf, n)
        start = np.zeros((n, 2)) if shifts is None else shifts
        q = self.net_.predict_quaternions(
            self._network_input(X, ctf), self.verbose >= 1, precision, compile
        )
        device = self.net_.device
        x = X.to(device)
        volume = torch.as_tensor(self._full_volume(), device=device)
        if self.refine:
            poses = refine(
                volume,
                x,
                q,
                start,
                ctf=ctf,
                cone_deg=_REFINE_CONE_DEG,
                symmetry=self.symmetry or "C1",
            )
            return Poses(*(t.cpu().numpy() for t in poses))
        score = pose_score(volume, x, q, start, ctf=ctf).cpu().numpy()
        t = to_tensor(start, "shifts").to(torch.float64).numpy()
        return Poses(q, t, score, np.full(n, np.nan))

    def score(self, images, quaternions, shifts=None) -> float:
        """Minus the reprojection RMSE (paper eq. 16): greater is better.

        Of :meth:`predict`'s orientations (refined when ``refine=True``). Computed on
        the map rescaled to the network's input size (``volume_``), so scores compare
        models of the same ``image_size`` and map.

        Parameters
        ----------
        images : array of shape (n, N, N) or (n, N * N)
        quaternions : array of shape (n, 4)
            True orientations.
        shifts : array of shape (n, 2), optional
            RELION origins in pixels.

        Returns
        -------
        float
            ``-RMSE`` (<= 0).
        """
        check_is_fitted(self, "net_")
        X = self._images(images)
        self._check_box(X)
        q_true = self._quaternions(quaternions, X.shape[0])
        q_pred = self.predict(X)
        t = self._shifts(shifts, len(q_true), X.shape[-1])
        return -reprojection_rmse(self.volume_, q_true, q_pred, t)
