"""Prediction of a particle set in chunks, here or on a dask cluster.

The implementation of :func:`skpose.distributed.predict_particles` and of the
estimators' ``client=`` keyword: a copy of the estimator (its map loaded, when given
as a path) is the context every chunk gets, once per worker, and each chunk runs its
``predict_poses`` (or ``predict``); the chunks' machinery is
:mod:`skpose.estimators._chunks` (here) and :mod:`skpose.estimators._cluster` (dask).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from skpose.estimators import _inference
from skpose.estimators._chunks import DEFAULT_CHUNK_SIZE, _map, _Plan, _Source
from skpose.io import read_volume
from skpose.search.poses import Poses

__all__ = ["predict_particles", "run_method"]


@dataclasses.dataclass
class _Predict:
    """An estimator's ``predict`` or ``predict_poses``, as every chunk runs it."""

    estimator: object
    method: str
    options: dict
    takes_shifts: bool


def _predict_chunk(work: _Predict, images, shifts_px, ctf):
    args = (images, shifts_px) if work.takes_shifts else (images,)
    out = getattr(work.estimator, work.method)(*args, ctf=ctf, **work.options)
    return tuple(out) if isinstance(out, Poses) else out


def _shippable(estimator, refine, precision="fp32", compile=False) -> _Predict:
    """A copy of the estimator as the workers get it (its map loaded, if a path)."""
    from skpose.estimators.orientation import OrientationEstimator

    check_is_fitted(estimator)
    network = isinstance(estimator, OrientationEstimator)
    _inference.check_options("predict_particles", precision, compile)
    if not network and (refine is not None or precision != "fp32" or compile):
        raise ValueError(
            "'refine', 'precision' and 'compile' of predict_particles apply to "
            f"OrientationEstimator, not {type(estimator).__name__} (whose own "
            "parameters set its refinement)."
        )
    est = copy.copy(estimator)
    est.verbose = 0  # one progress bar over the chunks, not one per chunk
    if refine is not None:
        if not isinstance(refine, (bool, np.bool_)):
            raise ValueError(
                f"Expected 'refine' to be None, True or False, got {refine!r}."
            )
        est.refine = bool(refine)
    if network and isinstance(est.volume, (str, Path)):
        if est.input_box_ != est.image_size_:  # the map at the images' box is used
            est.volume = read_volume(est.volume)[0]
    options = {"precision": precision, "compile": compile} if network else {}
    return _Predict(est, "predict_poses", options, takes_shifts=network)


def _device(estimator) -> str:
    net = getattr(estimator, "net_", None)
    return (
        str(net.device)
        if net is not None
        else str(getattr(estimator, "device_", "cpu"))
    )


def _assemble(results, n: int, method: str):
    """Put each chunk's outputs at its rows: Poses, or quaternions ``(n, 4)``."""
    parts = None
    for rows, out in results:
        out = out if isinstance(out, tuple) else (out,)
        if parts is None:
            parts = [np.empty((n, *np.shape(o)[1:])) for o in out]
        for whole, piece in zip(parts, out, strict=True):
            whole[rows] = piece
    if parts is None:  # no particles
        parts = [np.zeros((0, 4)), np.zeros((0, 2)), np.zeros(0), np.zeros(0)]
    return parts[0] if method == "predict" else Poses(*parts)


def predict_particles(
    estimator,
    particles,
    *,
    shifts_px=None,
    ctf=None,
    client=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    refine: bool | None = None,
    precision: str = "fp32",
    compile: bool = False,
    prefetch: bool = True,
    max_open_files: int = 32,
    retries: int = 2,
    verbose: bool = False,
) -> Poses:
    """Poses of a particle set, chunk by chunk, here or on a dask cluster.

    Parameters
    ----------
    estimator : OrientationEstimator or ProjectionMatcher
        Fitted. Sent once to each worker, with its map (read here when ``volume``
        is a path).
    particles : str or Path or Particles or array of shape (n, N, N)
        A STAR file or a particle table (the workers read the images from the
        stacks its ``rlnImageName`` names; its origins start the refinement and its
        CTF columns, when present, are used), or images in memory (scattered chunk
        by chunk).
    shifts_px : array of shape (n, 2), optional
        With images in memory: known RELION origins in pixels.
    ctf : CTFParams, optional
        With images in memory: their CTF.
    client : distributed.Client or str or True, optional
        None: this process. A client, a scheduler address (``"tcp://host:8786"``)
        or True (the active client): the cluster.
    chunk_size : int, default 1024
        Particles per task. A multiple of the estimator's refinement batch size
        (256) makes the same batches as one ``predict_poses`` call, and so the same
        poses; float32 rounding in a batch depends on the batch's size.
    refine : bool or None, default None
        Override the ``refine`` parameter of an OrientationEstimator.
    precision : {"fp32", "bf16"}, default "fp32"
        The network's forward pass (OrientationEstimator only).
    compile : bool, default False
        :func:`torch.compile` the network (OrientationEstimator only).
    prefetch : bool, default True
        Here: read the next chunk's images while the current one is computed.
    max_open_files : int, default 32
        Most stacks each reader keeps open.
    retries : int, default 2
        Times a chunk that raised is run again (a worker lost mid-run does not count:
        the scheduler runs its chunks elsewhere).
    verbose : bool, default False
        A progress bar over chunks.

    Returns
    -------
    Poses
        In input order; equal to the estimator's ``predict_poses`` on all the
        images at once (to 1e-5) when ``chunk_size`` is a multiple of the
        refinement's batch (256). Other chunk sizes change a refined pose where
        float32 rounding tips a near tie (a few of 500 particles under a barely
        trained model).

    Examples
    --------
    >>> from distributed import Client  # doctest: +SKIP
    >>> with Client("tcp://10.0.0.5:8786") as client:  # doctest: +SKIP
    ...     poses = predict_particles(est, "particles.star", client=client)
    """
    work = _shippable(estimator, refine, precision, compile)
    device = _device(work.estimator)
    plan = _Plan(chunk_size, device, max_open_files, prefetch, retries, verbose)
    return _predict(work, _Source.of(particles, shifts_px, ctf), client, plan)


def run_method(estimator, method: str, images, shifts_px=None, ctf=None, **kw):
    """``estimator.<method>(images, ...)`` on a cluster: the ``client=`` keyword.

    ``kw``: ``client``, and the network's ``precision`` and ``compile``.
    """
    client = kw.pop("client")
    work = _shippable(estimator, None, **kw)
    if method == "predict":
        work.method, work.takes_shifts = "predict", False
    plan = _Plan(device=_device(work.estimator), progress=bool(estimator.verbose))
    return _predict(work, _Source.of(images, shifts_px, ctf), client, plan)


def _predict(work: _Predict, source: _Source, client, plan: _Plan):
    if source.box is not None:  # the estimator's own error, before any chunk runs
        work.estimator._fitted_images(torch.zeros(1, source.box, source.box))
    results = _map(_predict_chunk, source, work, client, plan)
    return _assemble(results, len(source), work.method)
