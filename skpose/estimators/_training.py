"""One training run of ``OrientationEstimator``: iterations, interrupts, checkpoints.

**Interrupts.** skorch catches ``KeyboardInterrupt`` inside ``fit`` and returns as if
training had finished. During a run, SIGINT (and SIGTERM wherever a Python handler is
installed, as the ``skpose`` command line does) is therefore deferred to the end of
the current iteration and then handed to the handler that was there before, which
raises (``KeyboardInterrupt`` for Ctrl-C); :class:`TrainingRun` re-raises what skorch
swallowed. ``fit`` never returns a half-trained network as if it were complete: it
raises, and the estimator keeps the consistent network of ``n_iter_`` iterations. A
second signal within the same iteration is handed on at once.

**Checkpoints.** With ``checkpoint_dir``, a training from scratch (``fit``) saves
``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every`` iterations, atomically:
network weights, Adam's state, the learning-rate schedule, the iteration count, the
history, the batch sampler's state, and the torch, numpy and Python RNG states, with
a fingerprint of the parameters and data. ``resume=True`` continues from it; on the
CPU the result is bitwise the uninterrupted run's (see ``docs/relion-workflow.md``).
"""

from __future__ import annotations

import hashlib
import math
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.history import History

from skpose.io._atomic import atomic_path

__all__ = ["CHECKPOINT_NAME", "TrainingRun"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "skpose-checkpoint-1"
_MONITOR = "skpose_training"
# Parameters that do not change what training computes.
_NOT_TRAINING = {
    "verbose",
    "device",
    "checkpoint_dir",
    "checkpoint_every",
    "resume",
    "warm_start",
    "refine",
}


class _DeferredSignals:
    """Hold SIGINT/SIGTERM until :meth:`poll`, then hand them to the old handlers.

    Only signals whose current handler is a Python callable are deferred (SIGINT's
    default raises ``KeyboardInterrupt``; a default SIGTERM still terminates), and
    only in the main thread, where handlers can be set.
    """

    def __init__(self):
        self.pending = None
        self.raised = None
        self._previous = {}
        self._installed = False

    def __enter__(self) -> _DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if callable(handler):
                    self._previous[signum] = handler
                    signal.signal(signum, self._defer)
            self._installed = True
        return self

    def _defer(self, signum, frame) -> None:
        if self.pending is not None:  # a second signal: the user insists
            self.poll()
        self.pending = (signum, frame)

    def restore(self) -> None:
        """Put the previous handlers back."""
        if self._installed:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._installed = False

    def poll(self) -> None:
        """Hand a pending signal to its previous handler (which usually raises)."""
        if self.pending is None:
            return
        (signum, frame), self.pending = self.pending, None
        self.restore()
        try:
            self._previous[signum](signum, frame)
        except BaseException as exc:
            self.raised = exc
            raise


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj):
    """``obj`` with numpy scalars as Python numbers, for ``weights_only`` loading."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj.item() if isinstance(obj, np.generic) else obj


def _lr_callback(net):
    return dict(net.callbacks_).get("lr_schedule")


class TrainingMonitor(Callback):
    """skorch callback that tells its :class:`TrainingRun` where training is.

    Attached for one run and detached after it, so that saved models do not
    depend on it.
    """

    run: TrainingRun

    def on_train_begin(self, net, **kwargs):
        """Resumed run: restore the saved states once skorch set up its schedule."""
        if self.run.restored is not None:
            self.run.load_training_state(net)

    def on_epoch_begin(self, net, **kwargs):
        """Count the epoch's iterations from the sampler's resume offset."""
        self.run.in_epoch = self.run.sampler.skip
        self.run.restore_rng("epoch")

    def on_epoch_end(self, net, **kwargs):
        """Write a checkpoint due at the epoch's last iteration."""
        self.run.epoch_end(net)

    def on_batch_begin(self, net, training=False, **kwargs):
        """Resumed run: restore the RNG states before the first iteration."""
        if training:
            self.run.restore_rng("batch")

    def on_batch_end(self, net, training=False, **kwargs):
        """Count an iteration; checkpoint; deliver a deferred interrupt."""
        if training:
            self.run.after_iteration(net)


class TrainingRun:
    """Context manager around one ``net_.partial_fit`` of an ``OrientationEstimator``.

    On entry: checks the checkpoint parameters, attaches a :class:`TrainingMonitor`,
    loads a checkpoint when resuming, and starts deferring signals. On exit: sets
    ``n_iter_`` and raises the interrupt skorch swallowed, if any.

    Parameters
    ----------
    estimator : OrientationEstimator
        With ``net_`` built and ``net_.iterator_train__sampler`` set for this run.
    X, y : numpy.ndarray
        The network's training input and packed targets (for the fingerprint).
    """

    def __init__(self, estimator, X: np.ndarray, y: np.ndarray):
        self.est, self.net = estimator, estimator.net_
        self.sampler = self.net.iterator_train__sampler
        self.restored = None
        self._restore_at = None
        self.checkpoint = None
        self.base = estimator.n_iter_
        check_checkpoint_params(estimator)
        fresh = len(self.net.history) == 0
        if fresh and estimator.checkpoint_dir is not None:
            self.checkpoint = Path(estimator.checkpoint_dir) / CHECKPOINT_NAME
            self.fingerprint = fingerprint(estimator, X, y)
            if estimator.resume and self.checkpoint.is_file():
                self._resume()
        self.planned = self.sampler.remaining - self.sampler.skip
        self.epochs = math.ceil(self.sampler.remaining / self.sampler.per_epoch)
        self.done, self.in_epoch = 0, 0
        self._save_at_epoch_end = False
        self.monitor = TrainingMonitor()
        self.deferred = _DeferredSignals()

    # -- checkpoints -----------------------------------------------------------------

    def _resume(self) -> None:
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        check_fingerprint(state, self.fingerprint, self.checkpoint)
        self.sampler.load_state_dict(state["sampler"])
        self.est.n_iter_ = self.base = int(state["n_iter"])
        self.est.reprojection_scale_ = state["reprojection_scale"]
        self.net.criterion_.scale = state["reprojection_scale"]
        self.net.module_.load_state_dict(state["module"])
        self.restored, self._restore_at = state, state["restore_rng_at"]
        if self.est.verbose:
            print(
                f"resuming from iteration {self.base} of {self.est.max_iter} "
                f"({self.checkpoint})"
            )

    def load_training_state(self, net) -> None:
        """Optimizer, schedule and history of the checkpoint (at train begin)."""
        state = self.restored
        net.optimizer_.load_state_dict(state["optimizer"])
        lr = _lr_callback(net)
        lr.lr_scheduler_.load_state_dict(state["lr_scheduler"])
        lr.batch_idx_ = int(state["lr_batch_idx"])
        net.history = History(state["history"])

    def restore_rng(self, when: str) -> None:
        """Restore the RNG states at the point where the checkpoint took them.

        ``"batch"`` (mid-epoch checkpoint): before the next iteration, after the
        data loader has drawn its seed for the resumed epoch, as it had in the
        original run; ``"epoch"`` (end-of-epoch checkpoint): before that draw.
        """
        if self._restore_at == when:
            _set_rng_state(self.restored["rng"])
            self._restore_at = None

    def after_iteration(self, net) -> None:
        """Count an iteration, checkpoint when due, deliver a deferred interrupt.

        A checkpoint due at an epoch's last iteration waits for the epoch's end, so
        that it holds skorch's summary of the epoch (the states are the same).
        """
        self.done += 1
        self.in_epoch += 1
        n_iter = self.base + self.done
        if self.checkpoint is None or n_iter % self.est.checkpoint_every:
            self.deferred.poll()
        elif self.in_epoch >= min(self.sampler.per_epoch, self.sampler.epoch_start[1]):
            self._save_at_epoch_end = True
        else:
            self.save(net, n_iter, self.in_epoch)
            self.deferred.poll()

    def epoch_end(self, net) -> None:
        """Write a checkpoint that waited for the epoch's end."""
        if self._save_at_epoch_end:
            self._save_at_epoch_end = False
            self.save(net, self.base + self.done, self.in_epoch)
            self.deferred.poll()

    def save(self, net, n_iter: int, in_epoch: int) -> None:
        """Write the checkpoint of iteration ``n_iter`` atomically."""
        sampler, restore_at = self.sampler.state_dict(in_epoch)
        lr = _lr_callback(net)
        state = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint,
            "n_iter": n_iter,
            "module": net.module_.state_dict(),
            "optimizer": net.optimizer_.state_dict(),
            "lr_scheduler": lr.lr_scheduler_.state_dict(),
            "lr_batch_idx": int(lr.batch_idx_),
            "history": _plain(net.history.to_list()),
            "sampler": sampler,
            "reprojection_scale": float(self.est.reprojection_scale_),
            "rng": _rng_state(),
            "restore_rng_at": restore_at,
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    # -- the run ---------------------------------------------------------------------

    def __enter__(self) -> TrainingRun:
        self.monitor.run = self
        self.net.callbacks_.append((_MONITOR, self.monitor))
        self.deferred.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.deferred.restore()
        self.net.callbacks_[:] = [
            (name, cb) for name, cb in self.net.callbacks_ if name != _MONITOR
        ]
        del self.monitor.run
        self.est.n_iter_ = self.base + self.done
        if exc is not None:
            return
        if self.deferred.raised is not None:  # skorch swallowed it
            raise self.deferred.raised
        self.deferred.poll()  # a signal during the last iteration
        if self.done < self.planned:
            raise KeyboardInterrupt(
                f"training stopped after {self.est.n_iter_} of "
                f"{self.base + self.planned} iterations"
            )


def check_checkpoint_params(est) -> None:
    """``resume=True`` needs a ``checkpoint_dir`` (the types are in the table)."""
    if est.resume and est.checkpoint_dir is None:
        raise ValueError(
            "The 'resume' parameter of OrientationEstimator must be False when "
            "'checkpoint_dir' is None (there is no checkpoint to resume). Got True "
            "instead."
        )


def fingerprint(est, X: np.ndarray, y: np.ndarray) -> dict:
    """What a checkpoint must match to be resumed: parameters and data digests."""
    params = {
        name: repr(value)
        for name, value in sorted(est.get_params().items())
        if name not in _NOT_TRAINING and name != "volume"
    }
    return {"params": params, "data": _digest(X, y, est.volume_)}


def check_fingerprint(state: dict, expected: dict, path: Path) -> None:
    """Refuse to resume a checkpoint of another training."""
    if state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a skpose checkpoint.")
    saved = state["fingerprint"]
    differ = [
        f"{k}={saved['params'].get(k)} (now {v})"
        for k, v in expected["params"].items()
        if saved["params"].get(k) != v
    ]
    if saved["data"] != expected["data"]:
        differ.append("the training images, poses or map")
    if differ:
        raise ValueError(
            f"Cannot resume from {path}: it was written by another training "
            f"({'; '.join(differ)}). Remove it or choose another checkpoint folder, "
            "or train without resuming."
        )
