"""Chunks of a particle set, computed here or on a dask cluster.

The engine behind :mod:`skpose.distributed` and the estimators' ``client=`` keyword.
A particle set (the rows of a STAR file, or images in memory) is cut into chunks of
rows, and ``func(context, images, shifts_px, ctf)`` runs on each.

Here, chunk after chunk, the next chunk's images read in a background thread while the
current one is computed (:func:`skpose.estimators._inference.prefetched`; into pinned
memory when the work runs on a CUDA device).

On a cluster (a ``dask.distributed.Client``):

- the work (``func``, ``context``: the estimator, its map) is scattered once to every
  worker (``broadcast=True``), not sent with each chunk;
- one task per chunk. A STAR chunk carries its rows of the table (a few kB): the
  worker reads the images from the stacks itself, through a
  :class:`~skpose.io.ParticleImageLoader` that stays open across its chunks. Images
  in memory are scattered chunk by chunk;
- at most a few chunks per worker thread are in flight; results are gathered as
  they complete and put back at their rows, so the output is in input order;
- a worker lost mid-run: the scheduler runs its chunks elsewhere; a chunk whose
  scattered images (or the work itself) died with it is scattered again. A chunk
  that raises is run again ``retries`` times (``submit(retries=...)``), then its
  error is raised here.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from skpose._validation import check_ctf, is_int, is_real, to_tensor
from skpose.estimators import _inference
from skpose.io import (
    ParticleImageLoader,
    Particles,
    iter_particle_images,
    load_particle_images,
    read_particles,
    read_volume,
)
from skpose.search.poses import Poses

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "connect",
    "map_chunks",
    "predict_particles",
    "run_method",
    "worker_state",
]

#: Rows per chunk (one task on a cluster) unless told otherwise.
DEFAULT_CHUNK_SIZE = 1024
_INSTALL = (
    "Running on a dask cluster needs dask.distributed: pip install 'skpose[dask]'."
)

# Per-process state of the workers (and of this process): one image loader per thread
# (ParticleImageLoader is not thread-safe) and the count of chunks computed.
_LOCK = threading.Lock()
_LOADERS: dict[tuple[int, int], ParticleImageLoader] = {}
_STATS = {"chunks": 0}
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@dataclasses.dataclass
class _Job:
    """What every chunk needs; sent once to each worker."""

    func: Callable
    context: object
    device: str
    max_open_files: int


@dataclasses.dataclass
class _ArrayChunk:
    """A chunk of images in memory (scattered to a worker as one object)."""

    images: object
    shifts_px: np.ndarray | None
    ctf: object


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return distributed


def connect(scheduler: str, *, timeout_s: float = 10.0):
    """A dask client of the scheduler at ``scheduler``, or a one-line error.

    Parameters
    ----------
    scheduler : str
        The scheduler's address, e.g. ``"tcp://10.0.0.5:8786"`` (what ``dask
        scheduler`` prints).
    timeout_s : float, default 10
        How long to try to reach it.

    Returns
    -------
    distributed.Client
        Not made the default client; close it when done.

    Raises
    ------
    ConnectionError
        When the scheduler cannot be reached within ``timeout_s``.
    ImportError
        When dask.distributed is not installed (``pip install 'skpose[dask]'``).
    """
    distributed = _distributed()
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ValueError(
            f"Expected 'scheduler' to be an address such as 'tcp://host:8786', got "
            f"{scheduler!r}."
        )
    if not (is_real(timeout_s) and timeout_s > 0):
        raise ValueError(f"Expected 'timeout_s' to be a number > 0, got {timeout_s!r}.")
    try:
        return distributed.Client(scheduler, timeout=timeout_s, set_as_default=False)
    except OSError as exc:  # TimeoutError, refused connections
        raise ConnectionError(
            f"Cannot reach the dask scheduler at {scheduler!r} within {timeout_s:g} s "
            f"({exc}); is 'dask scheduler' running there?"
        ) from None


def _client(client) -> tuple[object, bool]:
    """``(client or None, whether this call made it)`` from a ``client=`` argument."""
    if client is None or client is False:
        return None, False
    if isinstance(client, (str, Path)):
        return connect(str(client)), True
    distributed = _distributed()
    if client is True:
        try:
            return distributed.Client.current(), False
        except ValueError:
            raise ValueError(
                "client=True asks for the active dask client, but there is none: "
                "create one (distributed.Client(...)) or pass it."
            ) from None
    if not isinstance(client, distributed.Client):
        raise TypeError(
            "Expected 'client' to be a dask.distributed.Client, a scheduler address, "
            f"True (the active client) or None, got {type(client).__name__}."
        )
    return client, False


# --------------------------------------------------------------------------------------
# One chunk (here or on a worker)
# --------------------------------------------------------------------------------------


def _loader(max_open_files: int) -> ParticleImageLoader:
    """The calling thread's image loader; its stacks stay open across chunks."""
    key = (threading.get_ident(), max_open_files)
    with _LOCK:
        if key not in _LOADERS:
            _LOADERS[key] = ParticleImageLoader(max_open_files)
        return _LOADERS[key]


def worker_state() -> dict:
    """The chunks this process has computed and the stacks its loaders hold open.

    Run it on the workers with ``client.run(worker_state)``.
    """
    with _LOCK:
        return {
            "chunks": _STATS["chunks"],
            "open_stacks": sum(loader.n_open for loader in _LOADERS.values()),
        }


def _table_ctf(table: Particles):
    return table.ctf if table.has_column("rlnDefocusU") else None


def _restore_mmap_threshold() -> None:
    """Undo the slowdown of dask's ``MALLOC_TRIM_THRESHOLD_``, once per process.

    dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting it freezes
    glibc's mmap threshold at 128 kB, so every tensor larger than that is mapped and
    unmapped again, page by page: predict ran 1.8x slower (12.5 s instead of 6.9 s
    for 2000 particles, one thread). A 32 MiB threshold (glibc's own ceiling for its
    dynamic one) restores the speed (6.3-6.6 s) and keeps dask's trimming. Only when
    the variable is set and ``MALLOC_MMAP_THRESHOLD_`` is not; glibc only.
    """
    if _STATS.get("malloc_tuned") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _STATS["malloc_tuned"] = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
    except (OSError, AttributeError):  # not glibc
        pass


def _run_chunk(job: _Job, images, shifts_px, ctf):
    _restore_mmap_threshold()
    out = job.func(
        job.context, _inference.to_device(images, job.device), shifts_px, ctf
    )
    with _LOCK:
        _STATS["chunks"] += 1
    return out


def _table_task(job: _Job, table: Particles):
    """A STAR chunk on a worker: read its images from the stacks, then compute."""
    images = load_particle_images(table, loader=_loader(job.max_open_files))
    return _run_chunk(job, images, table.origins_px, _table_ctf(table))


def _array_task(job: _Job, chunk: _ArrayChunk):
    return _run_chunk(job, chunk.images, chunk.shifts_px, chunk.ctf)


# --------------------------------------------------------------------------------------
# A particle set in chunks
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
    """A particle set: a STAR table, or images in memory with their origins and CTF."""

    table: Particles | None = None
    images: object = None
    shifts_px: np.ndarray | None = None
    ctf: object = None

    @classmethod
    def of(cls, data, shifts_px=None, ctf=None) -> _Source:
        if isinstance(data, (str, Path)):
            data = read_particles(data)
        if isinstance(data, Particles):
            if shifts_px is not None or ctf is not None:
                raise ValueError(
                    "A STAR file's particles bring their own origins and CTF: pass "
                    "'shifts_px' and 'ctf' only with images in memory."
                )
            return cls(table=data)
        if not hasattr(data, "shape") or len(data.shape) < 2:
            raise ValueError(
                "Expected particles as a STAR file, a Particles table, or images "
                f"(n, N, N); got {type(data).__name__}."
            )
        n = data.shape[0]
        if shifts_px is not None:
            shifts_px = to_tensor(shifts_px, "shifts_px").to(torch.float64).numpy()
            if shifts_px.shape != (n, 2):
                raise ValueError(
                    f"Expected 'shifts_px' to have shape ({n}, 2), got "
                    f"{shifts_px.shape}."
                )
        return cls(images=data, shifts_px=shifts_px, ctf=check_ctf(ctf, n))

    def __len__(self) -> int:
        return len(self.table) if self.table is not None else self.images.shape[0]

    @property
    def box(self) -> int | None:
        if self.table is not None:
            return self.table.box_size
        return self.images.shape[-1] if len(self.images.shape) == 3 else None

    def chunk(self, rows: np.ndarray):
        """The payload of a task on ``rows``: a table (no other blocks), or arrays."""
        if self.table is not None:  # image names resolve from an absolute folder
            path = self.table.path and Path(os.path.abspath(self.table.path))
            return dataclasses.replace(self.table.select(rows), path=path, blocks={})
        sl = slice(int(rows[0]), int(rows[-1]) + 1)
        return _ArrayChunk(
            self.images[sl],
            None if self.shifts_px is None else self.shifts_px[sl],
            None if self.ctf is None else self.ctf[rows],
        )

    def local_chunks(self, chunks, job: _Job, prefetch: bool) -> Iterator:
        """``(rows, images, shifts_px, ctf)`` chunk by chunk, read one ahead."""
        if self.table is None:
            for rows in chunks:
                c = self.chunk(rows)
                yield rows, c.images, c.shifts_px, c.ctf
            return
        size = len(chunks[0]) if chunks else 1
        shifts, ctf = self.table.origins_px, _table_ctf(self.table)
        batches = iter_particle_images(
            self.table, size, max_open_files=job.max_open_files
        )

        def pin(batch):
            return batch[0], _inference.pinned(batch[1], job.device)

        batches = _inference.prefetched(batches, pin) if prefetch else map(pin, batches)
        for rows, images in batches:
            yield rows, images, shifts[rows], None if ctf is None else ctf[rows]


@dataclasses.dataclass
class _Plan:
    """How the chunks run (see :func:`map_chunks`); checked when made."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str = "cpu"
    max_open_files: int = 32
    prefetch: bool = True
    retries: int = 2
    progress: bool | None = False

    def __post_init__(self):
        least = {"chunk_size": 1, "max_open_files": 1, "retries": 0}
        for name, low in least.items():
            value = getattr(self, name)
            if not (is_int(value) and value >= low):
                raise ValueError(
                    f"Expected '{name}' to be an int >= {low}, got {value!r}."
                )
        self.device = str(self.device)


def map_chunks(
    func: Callable,
    particles,
    context=None,
    *,
    shifts_px=None,
    ctf=None,
    client=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device="cpu",
    max_open_files: int = 32,
    prefetch: bool = True,
    retries: int = 2,
    progress: bool | None = False,
) -> Iterator[tuple[np.ndarray, object]]:
    """``func(context, images, shifts_px, ctf)`` on each chunk of a particle set.

    Parameters
    ----------
    func : callable
        A module-level function (workers import it by name). It gets ``context``,
        the chunk's images ``(b, N, N)`` (float32 numpy; a tensor on ``device`` when
        that is not the CPU), their RELION origins ``(b, 2)`` in pixels (or None)
        and their :class:`~skpose.CTFParams` (or None).
    particles : str or Path or Particles or array of shape (n, N, N)
        A STAR file, a particle table (origins and CTF from its columns; images
        read from the stacks its ``rlnImageName`` names), or images in memory.
    context : object
        Sent once to each worker (it must pickle).
    shifts_px : array of shape (n, 2), optional
        With images in memory: their origins.
    ctf : CTFParams, optional
        With images in memory: their CTF (``n``, or 1 for all).
    client : distributed.Client or str or True, optional
        Where to compute: here (None), on a client's cluster, on the scheduler at
        an address, or on the active client (True).
    chunk_size : int, default 1024
        Rows per chunk (one task on a cluster).
    device : str, default "cpu"
        Where ``func`` computes: images reach it there (through pinned memory and a
        copy that does not block, for CUDA).
    max_open_files : int, default 32
        Most stacks each reader keeps open.
    prefetch : bool, default True
        Here: read the next chunk in a background thread.
    retries : int, default 2
        Times a chunk that raised (or lost its scattered images with a worker) is
        run again.
    progress : bool or None, default False
        A progress bar over chunks; None: only on a terminal.

    Yields
    ------
    rows : numpy.ndarray of shape (b,)
        The chunk's rows (positions in ``particles``).
    result
        ``func``'s result. Chunks come in input order here and in the order they
        complete on a cluster: put each result at its ``rows``.
    """
    plan = _Plan(chunk_size, device, max_open_files, prefetch, retries, progress)
    return _map(func, _Source.of(particles, shifts_px, ctf), context, client, plan)


def _map(func, source: _Source, context, client, plan: _Plan) -> Iterator:
    n = len(source)
    size = plan.chunk_size
    chunks = [np.arange(s, min(s + size, n)) for s in range(0, n, size)]
    job = _Job(func, context, plan.device, plan.max_open_files)
    client, owned = _client(client)
    disable = None if plan.progress is None else not plan.progress
    bar = tqdm(total=len(chunks), disable=disable, desc="predict", unit="chunk")
    try:
        if client is None:
            for rows, *args in source.local_chunks(chunks, job, plan.prefetch):
                yield rows, _run_chunk(job, *args)
                bar.update()
        else:
            cluster = _Cluster(client, job, source, chunks, plan.retries)
            for i, result in cluster.results():
                yield chunks[i], result
                bar.update()
    finally:
        bar.close()
        if owned:
            client.close()


class _Cluster:
    """The chunks' tasks on a cluster: a window of them in flight, lost ones again."""

    def __init__(self, client, job: _Job, source: _Source, chunks: list, retries):
        self.client, self.job, self.source, self.chunks = client, job, source, chunks
        self.retries, self.token = retries, uuid.uuid4().hex[:8]
        self.attempts = np.zeros(len(chunks), dtype=int)
        self.running: dict[str, int] = {}
        self.done = _distributed().as_completed()
        self.shared = self._scatter(job, broadcast=True)

    def _scatter(self, data, broadcast: bool = False):
        """``client.scatter``, again if the worker it picked dies meanwhile."""
        for attempt in range(self.retries + 1):
            try:
                return self.client.scatter(data, broadcast=broadcast, hash=False)
            except OSError:  # CommClosedError: a worker lost during the scatter
                if attempt == self.retries:
                    raise
                time.sleep(0.2 * 2**attempt)
        return None  # not reached

    def submit(self, i: int) -> None:
        if self.shared.status != "finished":  # every copy of the work was lost
            self.shared = self._scatter(self.job, broadcast=True)
        payload = self.source.chunk(self.chunks[i])
        if self.source.table is not None:  # a few kB: sent with the task
            task = _table_task
        else:
            task, payload = _array_task, self._scatter(payload)
        key = f"skpose-chunk-{i}-{self.attempts[i]}-{self.token}"
        future = self.client.submit(
            task, self.shared, payload, key=key, retries=self.retries
        )
        self.running[future.key] = i
        self.done.add(future)

    def lost(self, i: int) -> None:
        """Submit chunk ``i`` again: its scattered data died with a worker."""
        self.attempts[i] += 1
        if self.attempts[i] > self.retries:
            rows = self.chunks[i]
            raise RuntimeError(
                f"Chunk {i} (rows {rows[0]}-{rows[-1]}) lost its data with a worker "
                f"{self.attempts[i]} times; giving up."
            )
        self.submit(i)

    def results(self) -> Iterator[tuple[int, object]]:
        """``(chunk index, result)`` as the chunks complete."""
        window = max(4, 2 * sum(self.client.nthreads().values()))
        queued = iter(range(len(self.chunks)))
        for _ in range(min(window, len(self.chunks))):
            self.submit(next(queued))
        try:
            for future in self.done:
                i = self.running.pop(future.key)
                if future.status == "cancelled":
                    self.lost(i)
                    continue
                result = future.result()  # raises the chunk's own error
                future.release()
                yield i, result
                following = next(queued, None)
                if following is not None:
                    self.submit(following)
        finally:
            self.client.cancel(list(self.done.futures))


# --------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------


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
        Particles per task.
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
        images at once, up to float rounding of the refinement (1e-5 measured).

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
        work.estimator._check_box(torch.empty(0, source.box, source.box))
    results = _map(_predict_chunk, source, work, client, plan)
    return _assemble(results, len(source), work.method)
