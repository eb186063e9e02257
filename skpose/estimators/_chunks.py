"""A particle set in chunks of rows, and what one chunk does (here or on a worker).

Private to :mod:`skpose.estimators`; the public face is :mod:`skpose.distributed`. A
particle set (the rows of a STAR file, or images in memory) is cut into chunks of rows,
and ``func(context, images, shifts_px, ctf)`` runs on each. Here, chunk after chunk,
the next chunk's images read in a background thread while the current one is computed
(:func:`skpose.estimators._inference.prefetched`; into pinned memory when the work
runs on a CUDA device). With a dask client the chunks run on the cluster
(:mod:`skpose.estimators._cluster`): a STAR chunk then carries its rows of the table,
and the worker reads the images through a :class:`~skpose.io.ParticleImageLoader` that
stays open across its chunks.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from skpose._validation import is_int, to_tensor
from skpose.estimators import _inference
from skpose.imaging.ctf import check_ctf
from skpose.io import (
    ParticleImageLoader,
    Particles,
    iter_particle_images,
    load_particle_images,
    read_particles,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "map_chunks", "worker_state"]

#: Rows per chunk (one task on a cluster) unless told otherwise.
DEFAULT_CHUNK_SIZE = 1024

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
    disable = None if plan.progress is None else not plan.progress
    bar = tqdm(total=len(chunks), disable=disable, desc="predict", unit="chunk")
    owned = False
    try:
        if client is None or client is False:
            local = source.local_chunks(chunks, job, plan.prefetch)
            results = ((rows, _run_chunk(job, *args)) for rows, *args in local)
        else:
            from skpose.estimators._cluster import Cluster, as_client

            client, owned = as_client(client)
            run = Cluster(client, job, source, chunks, plan.retries)
            results = ((chunks[i], result) for i, result in run.results())
        for rows, result in results:
            yield rows, result
            bar.update()
    finally:
        bar.close()
        if owned:
            client.close()
