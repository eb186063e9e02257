"""Atomic file writes: a file at its path is always either the old one or the new one.

Every file skpose writes (STAR, MRC, models, checkpoints, plots, reports) goes through
:func:`atomic_path`: the writer writes a temporary file beside the target, which is
flushed to disk (``fsync``) and renamed over the target (``os.replace``, atomic on
POSIX), and the folder's entry is synced too. A write that fails (full disk, an
exception, Ctrl-C) removes its temporary file and leaves the previous file intact; a
process killed outright (``kill -9``, a power cut) leaves at most a hidden temporary
``.<name>.skpose-tmp-<pid>-<random><suffix>``, which the next write of that target
removes once its process is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_TAG", "atomic_path", "temp_path", "write_text"]

TEMP_TAG = ".skpose-tmp-"


def temp_path(target: Path) -> Path:
    """A fresh temporary name beside ``target`` that keeps its suffix.

    The suffix stays last because writers choose the format from it (matplotlib's
    ``.png``, joblib's ``.gz``).
    """
    token = secrets.token_hex(4)
    return target.with_name(
        f".{target.name}{TEMP_TAG}{os.getpid()}-{token}{target.suffix}"
    )


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` left by processes that have died.

    Returns
    -------
    list of Path
        The files removed.
    """
    prefix = f".{target.name}{TEMP_TAG}"
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix) :].partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        _fsync_path(folder, flags)
    except OSError:  # e.g. a file system that cannot sync folders
        pass


@contextlib.contextmanager
def atomic_path(target) -> Iterator[Path]:
    """Write ``target`` atomically: yield a temporary path for a writer to fill.

    The folder is created if needed. When the ``with`` block ends normally, the
    temporary file (which the block must have written) is synced to disk, given the
    permission bits of the file it replaces, and renamed over ``target``; when it
    raises (including ``KeyboardInterrupt``), or the sync fails, the temporary file
    is removed and ``target`` is left as it was. A symbolic link at ``target`` is
    followed: the file it points to is replaced.

    Parameters
    ----------
    target : str or path-like
        The file to write.

    Yields
    ------
    pathlib.Path
        Where to write: ``.<name>.skpose-tmp-<pid>-<random><suffix>`` beside
        ``target``.

    Examples
    --------
    >>> import json, tempfile
    >>> target = Path(tempfile.mkdtemp()) / "report.json"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text(json.dumps({"n": 3}))
    >>> json.loads(target.read_text())
    {'n': 3}
    """
    target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_path(target)
    try:
        yield tmp
        _fsync_path(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(target.parent)


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
