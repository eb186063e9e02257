"""Inference options of the estimators: precision, compiled networks, device copies.

Private to :mod:`skpose.estimators`. ``precision="bf16"`` runs the network's forward
pass under :func:`torch.autocast` (bfloat16 convolutions and matrix products, on the CPU
as on a GPU); the preprocessing, the refinement and the scores stay float32.
``compile=True`` runs it through :func:`torch.compile`, compiled once per network.
:func:`to_device` copies a batch to the network's device, without blocking from pinned
memory; :func:`prefetched` reads the next batch in a background thread while the
current one is computed. What each is worth is measured in ``docs/gpu.md``.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

import numpy as np
import torch

__all__ = ["PRECISIONS", "autocast", "check_options", "compiled", "prefetched"]

PRECISIONS = ("fp32", "bf16")
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_END = object()


def check_options(owner: str, precision, compile) -> None:
    """Raise a ``ValueError`` naming the owner for a bad ``precision``/``compile``."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"Expected 'precision' of {owner} to be one of {PRECISIONS}, got "
            f"{precision!r}."
        )
    if not isinstance(compile, (bool, np.bool_)):
        raise ValueError(
            f"Expected 'compile' of {owner} to be True or False, got {compile!r}."
        )


def autocast(device, precision: str):
    """The forward pass's precision: a no-op for ``"fp32"``, bfloat16 autocast else."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def compiled(module: torch.nn.Module) -> Callable:
    """``torch.compile(module)``, compiled once per module."""
    out = _COMPILED.get(module)
    if out is None:
        out = _COMPILED[module] = torch.compile(module, dynamic=False)
    return out


def to_device(x, device):
    """``x`` on ``device``: a tensor copied without blocking when it is pinned.

    numpy arrays stay numpy on the CPU (today's path, unchanged), and become tensors
    elsewhere.
    """
    if torch.device(device).type == "cpu":
        return x
    t = torch.as_tensor(x)
    return t.to(device, non_blocking=t.is_pinned())


def pinned(x, device):
    """A page-locked copy of ``x`` when ``device`` is a CUDA device, else ``x``."""
    if torch.device(device).type != "cuda":
        return x
    return torch.as_tensor(x).pin_memory()


class _Reader:
    """Reads the items of an iterator one at a time, each in a daemon thread.

    A read still in flight when the consumer stops (an interrupt while a slow disk is
    read) neither blocks the exit nor keeps the process alive: the reader closes the
    source itself when that read returns.
    """

    def __init__(self, items: Iterable, transform: Callable | None):
        self._it, self._transform = iter(items), transform
        self._lock = threading.Lock()
        self._stopped = self._in_flight = False

    def _read(self):
        item = next(self._it, _END)
        with self._lock:
            self._in_flight = False
            if self._stopped:  # the consumer is gone: close the source here
                self._close()
                return _END
        if item is _END or self._transform is None:
            return item
        return self._transform(item)

    def submit(self) -> Future:
        future: Future = Future()

        def run():
            try:
                future.set_result(self._read())
            except BaseException as error:  # handed to the consumer
                future.set_exception(error)

        self._in_flight = True
        threading.Thread(target=run, name="skpose-prefetch", daemon=True).start()
        return future

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if not self._in_flight:
                self._close()

    def _close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def prefetched(items: Iterable, transform: Callable | None = None) -> Iterator:
    """The items of ``items`` (each through ``transform``), one ahead in a thread.

    The next item is read (and transformed) in a background thread while the caller
    works on the current one: reading memory-mapped images overlaps with the compute.
    """
    reader = _Reader(items, transform)
    try:
        pending = reader.submit()
        while (item := pending.result()) is not _END:
            pending = reader.submit()
            yield item
    finally:
        reader.stop()
