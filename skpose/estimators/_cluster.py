"""Chunks on a dask cluster: clients, and the tasks of one run.

Private to :mod:`skpose.estimators` (dask is imported only here, and only when a
client is asked for). For a run (:class:`Cluster`):

- the work (``func``, ``context``: the estimator, its map) is scattered once to every
  worker (``broadcast=True``), not sent with each chunk;
- one task per chunk. A STAR chunk carries its rows of the table (a few kB): the
  worker reads the images from the stacks itself. Images in memory are scattered
  chunk by chunk;
- at most a few chunks per worker thread are in flight; results are gathered as they
  complete (the caller puts them back at their rows, so the output is in input order);
- a worker lost mid-run: the scheduler runs its chunks elsewhere; a chunk whose
  scattered images (or the work itself) died with it is scattered again, and so is
  one that finished but whose result died with the worker before it was gathered
  (the scheduler then forgets it: ``result()`` raises ``CancelledError``). A chunk that
  raises is run again ``retries`` times (``submit(retries=...)``), then its error is
  raised here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np

from skpose._validation import is_real
from skpose.estimators._chunks import _array_task, _Job, _Source, _table_task

__all__ = ["Cluster", "as_client", "connect"]

_INSTALL = (
    "Running on a dask cluster needs dask.distributed: pip install 'skpose[dask]'."
)


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


def as_client(client) -> tuple[object, bool]:
    """``(client, whether this call made it)`` from a ``client=`` other than None."""
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


class Cluster:
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
                try:
                    result = future.result()  # raises the chunk's own error
                except CancelledError:  # finished, then its result died with a worker
                    self.lost(i)
                    continue
                future.release()
                yield i, result
                following = next(queued, None)
                if following is not None:
                    self.submit(following)
        finally:
            self.client.cancel(list(self.done.futures))
