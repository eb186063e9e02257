"""What keeps the command line from losing files or passing a wrong answer silently.

- **Before any work**: every file a command will write is checked writable (its folder
  exists or can be created, and takes a new file; probed, then left as it was), and
  none of them may be one of the command's input files (same resolved path, or the
  same file through a link) unless ``--force``. Errors are one line, exit status 2.
- **Interrupts**: SIGINT and SIGTERM raise :class:`Interrupted`; the command stops,
  prints one line and exits with 130 or 143 (128 + the signal). Writes are atomic
  (:mod:`skpose.io._atomic`), so nothing half-written is left behind. ``fit`` saves
  nothing unless ``--save-on-interrupt``, and then a model that records how many
  iterations it holds; the exit status is still 130/143 so that ``fit && predict``
  stops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from skpose.estimators._training import CHECKPOINT_NAME
from skpose.io._atomic import TEMP_TAG

__all__ = [
    "Interrupted",
    "add_arguments",
    "check_not_inputs",
    "checkpoint_params",
    "preflight",
    "run",
    "saving_on_interrupt",
    "warn_if_partial",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Path arguments that name outputs; every other Path argument is an input.
_OUTPUT_ARGS = ("out", "checkpoint_dir")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; ``detail`` ends the message: what was (not) saved."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.detail = None


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


def add_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Add ``--force`` to every subcommand and the checkpoint options to ``fit``."""
    for name, parser in subparsers.choices.items():
        group = parser.add_argument_group("safety")
        group.add_argument(
            "--force",
            action="store_true",
            help="write even over one of this command's input files (still atomic)",
        )
        if name == "fit":
            _add_fit_arguments(group)


def _add_fit_arguments(group) -> None:
    group.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="save a checkpoint every --checkpoint-every iterations into this folder",
    )
    group.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="K",
        help="iterations between checkpoints (default 100)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --checkpoint-dir (a CPU run gives the "
        "uninterrupted run's model bit for bit)",
    )
    group.add_argument(
        "--save-on-interrupt",
        action="store_true",
        help="on Ctrl-C or SIGTERM, save the partial model (it records its "
        "iterations); the exit status is still 130/143",
    )


def checkpoint_params(args) -> dict:
    """``OrientationEstimator`` checkpoint parameters from ``fit``'s options."""
    if args.checkpoint_dir is None:
        return {}
    if args.resume and not (args.checkpoint_dir / CHECKPOINT_NAME).is_file():
        print(f"no checkpoint in {args.checkpoint_dir}: training from iteration 0")
    return {
        "checkpoint_dir": str(args.checkpoint_dir),
        "checkpoint_every": args.checkpoint_every,
        "resume": bool(args.resume),
    }


def _check_fit_options(args) -> None:
    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir (where the checkpoint is).")
    if args.checkpoint_every < 1:
        raise ValueError(
            f"--checkpoint-every must be >= 1, got {args.checkpoint_every}."
        )
    single = [
        flag
        for flag, on in (
            ("--checkpoint-dir", args.checkpoint_dir is not None),
            ("--save-on-interrupt", args.save_on_interrupt),
        )
        if on
    ]
    if single and (args.grid_w or args.grid_lr):
        raise ValueError(
            f"{' and '.join(single)} apply to a single training, not to a grid "
            "search (--grid-w/--grid-lr)."
        )


# --------------------------------------------------------------------------------------
# Paths, checked before any work
# --------------------------------------------------------------------------------------


def _outputs(args) -> list[Path]:
    """Every file the command will write (some only under some options)."""
    out = Path(args.out)
    command = args.command
    if command == "simulate":
        return [out / "particles.star", out / "particles.mrcs"]
    if command == "split":
        return [out / "train.star", out / "rest.star"]
    if command == "evaluate":
        names = ("summary.json", "angular_errors_deg.txt", "error_histogram.png")
        return [out / n for n in (*names, "error_by_direction.png", "projections.png")]
    if command == "reconstruct":
        stem, outputs = out.with_suffix(""), [out]
        if args.half_maps:
            outputs += [Path(f"{stem}_half1.mrc"), Path(f"{stem}_half2.mrc")]
        if args.half_maps or args.reference:
            outputs += [out.with_suffix(".fsc.json"), out.with_suffix(".fsc.png")]
        return outputs
    if command == "fit" and args.checkpoint_dir is not None:
        return [out, Path(args.checkpoint_dir) / CHECKPOINT_NAME]
    return [out]


def _inputs(args) -> dict[str, Path]:
    return {
        name: Path(value)
        for name, value in vars(args).items()
        if isinstance(value, Path) and name not in _OUTPUT_ARGS
    }


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _label(path: Path, args) -> str:
    out = Path(args.out)
    return f"--out {out}" if path == out else f"{path} (written into --out {out})"


def check_not_inputs(args, inputs: dict) -> None:
    """Refuse, unless ``--force``, to write over any of ``inputs`` (name: path).

    Entries that are not paths (a map given as an array) are ignored.
    """
    if args.force:
        return
    paths = {k: Path(v) for k, v in inputs.items() if isinstance(v, (str, os.PathLike))}
    for path in _outputs(args):
        for name, source in paths.items():
            if _same_file(path, source):
                raise ValueError(
                    f"{_label(path, args)} is this command's input {name} ({source}): "
                    "skpose does not write over its own inputs; choose another --out, "
                    "or pass --force to replace it."
                )


def _probe_folder(folder: Path) -> None:
    """Raise ``OSError`` unless a file can be created in ``folder``; leave no trace."""
    missing = []
    existing = folder
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder")
    try:
        for path in reversed(missing):
            path.mkdir()
        probe = folder / f".probe{TEMP_TAG}{os.getpid()}-0"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    finally:
        for path in missing:
            with contextlib.suppress(OSError):
                path.rmdir()


def _check_writable(path: Path, args, probed: set) -> None:
    if path.is_dir():
        raise ValueError(f"Cannot write {_label(path, args)}: it is a folder.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"Cannot write {_label(path, args)}: the file is read-only.")
    if path.parent in probed:
        return
    probed.add(path.parent)
    try:
        _probe_folder(path.parent)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        raise ValueError(
            f"Cannot write {_label(path, args)}: {reason}{where}."
        ) from None


def preflight(args) -> None:
    """Check options and output paths before any work (``ValueError``: exit 2)."""
    if args.command == "fit":
        _check_fit_options(args)
    check_not_inputs(args, _inputs(args))
    probed = set()
    for path in _outputs(args):
        _check_writable(path, args, probed)


# --------------------------------------------------------------------------------------
# Interrupts
# --------------------------------------------------------------------------------------


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_raise():
    """SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def run(command, args) -> int:
    """Run a subcommand safely; the exit code (0, or 128 + signal if interrupted)."""
    try:
        with _signals_raise():
            preflight(args)
            command(args)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        detail = getattr(exc, "detail", None) or "; no partial file was written"
        name = signal.Signals(signum).name
        print(f"skpose: interrupted by {name}{detail}", file=sys.stderr)
        return 128 + signum
    return 0


@contextlib.contextmanager
def saving_on_interrupt(args, est, save):
    """``fit``: on an interrupt, say how far training got; ``save(record)`` if asked.

    ``save(interrupted)`` writes the model with the dictionary ``interrupted``
    (signal, ``n_iter``, ``max_iter``) recorded in it.
    """
    try:
        yield
    except KeyboardInterrupt as exc:
        n_iter = getattr(est, "n_iter_", 0)
        progress = f" after {n_iter} of {est.max_iter} iterations"
        signum = getattr(exc, "signum", signal.SIGINT)
        if args.save_on_interrupt and n_iter > 0:
            save(
                {
                    "signal": signal.Signals(signum).name,
                    "n_iter": n_iter,
                    "max_iter": est.max_iter,
                }
            )
            exc.detail = (
                f"{progress}; partial model of {n_iter} iterations saved to "
                f"{args.out} (--save-on-interrupt)"
            )
        else:
            exc.detail = f"{progress}; nothing written to {args.out}"
        raise


def warn_if_partial(model: dict, path) -> None:
    """Warn (stderr) when a model was saved by ``fit --save-on-interrupt``."""
    partial = model.get("interrupted")
    if partial:
        print(
            f"skpose: warning: {path} is a partial model ({partial['n_iter']} of "
            f"{partial['max_iter']} iterations, saved on {partial['signal']})",
            file=sys.stderr,
        )
