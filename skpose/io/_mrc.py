"""MRC volumes and image stacks (memory-mapped), and particle images by STAR row."""

from __future__ import annotations

import contextlib
import mmap
import warnings
from collections import OrderedDict
from pathlib import Path

import mrcfile
import numpy as np

from skpose._validation import to_numpy
from skpose.io._atomic import atomic_path
from skpose.io._star import Particles, require_columns

__all__ = [
    "ParticleImageLoader",
    "iter_particle_images",
    "load_particle_images",
    "read_images",
    "read_volume",
    "write_images",
    "write_volume",
]


# --------------------------------------------------------------------------------------
# MRC volumes and stacks
# --------------------------------------------------------------------------------------


def _open_permissive(path: Path, opener):
    """Old MRC files (no ``MAP`` id string, zero machine stamp) that RELION reads.

    Accepted only when the header's data block fills the file exactly.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mrc = opener(path, mode="r", permissive=True)
    expected = mrc.header.nbytes + int(mrc.header.nsymbt)
    if mrc.data is None or expected + mrc.data.nbytes != path.stat().st_size:
        mrc.close()
        raise ValueError("header and file size disagree")
    return mrc


def _label(path: Path, header) -> tuple[str | None, str]:
    """What the file says it holds: ("stack" | "volume" | None, why).

    RELION tells stacks from maps by the name (``.mrcs`` stacks, ``.mrc`` maps; it
    refuses ``N@file.mrc``); MRC2014 by the header (space group 0 and ``mz = 1``: an
    image stack; space group 1-230: a volume). Real files break the header rule both
    ways (RELION and cryoSPARC write stacks with ``mz = nz``, some maps carry space
    group 0), so only these count: a ``.mrcs`` name or a stack header is a stack; a
    volume space group in a file not named ``.mrcs`` is a map; anything else is
    unlabelled and read either way.
    """
    ispg, nz, mz = int(header.ispg), int(header.nz), int(header.mz)
    if path.suffix.lower() == ".mrcs":
        return "stack", "its name ends in .mrcs, RELION's mark of a stack"
    if ispg == 0 and mz == 1 < nz:
        return "stack", f"its header says so: space group 0, mz = 1 for {nz} sections"
    if 1 <= ispg <= 230 and nz > 1:
        return "volume", f"its header's space group is {ispg}, a volume's"
    return None, ""


def _read_mrc(path, *, mmap: bool) -> tuple[np.ndarray, float, tuple]:
    """Read an MRC file's data, voxel size (Angstrom, x axis; 0 if unset) and label.

    The data is a read-only memmap when ``mmap``; the label is :func:`_label`'s.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MRC file '{path}' does not exist.")
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                mrc = opener(path, mode="r")
        except ValueError as exc:
            if "Map ID string not found" not in str(exc):
                raise
            mrc = _open_permissive(path, opener)
    except Exception as exc:  # mrcfile raises ValueError, EOFError, RuntimeWarning...
        raise ValueError(f"'{path}' is not a readable MRC file: {exc}") from exc
    with mrc:
        data, voxel_size = mrc.data, float(mrc.voxel_size.x)
        label = _label(path, mrc.header)
    return data, voxel_size, label


def read_volume(path) -> tuple[np.ndarray, float]:
    """Read a cubic volume from an MRC file.

    Parameters
    ----------
    path : str or pathlib.Path
        The MRC file.

    Returns
    -------
    volume : numpy.ndarray of shape (N, N, N), float32
        Indexed ``[z, y, x]``, loaded into memory.
    voxel_size_angstrom : float
        From the header (x axis); 0.0 when the header leaves it unset.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is not a readable MRC file (or is truncated), not cubic, labelled as
        an image stack (a ``.mrcs`` name, or the MRC2014 stack header: space group 0
        with ``mz = 1``), or constant (every voxel equal: nothing to project).
    """
    data, voxel_size, (kind, why) = _read_mrc(path, mmap=False)
    if kind == "stack":
        raise ValueError(
            f"MRC file '{path}' is an image stack ({why}), not a 3-D map: pass the "
            "map (RELION names maps .mrc and particle stacks .mrcs)."
        )
    if data.ndim != 3 or not (data.shape[0] == data.shape[1] == data.shape[2]):
        raise ValueError(
            f"Expected MRC file '{path}' to hold a cubic volume (N, N, N), got shape "
            f"{data.shape}."
        )
    volume = np.array(data, dtype=np.float32)
    if volume.size and volume.min() == volume.max():
        raise ValueError(
            f"MRC file '{path}' holds a constant map (every voxel is "
            f"{float(volume.flat[0]):g}): its projections carry no orientation, and "
            "every pose would score alike."
        )
    return volume, voxel_size


def write_volume(path, volume, voxel_size_angstrom: float = 1.0) -> None:
    """Write a cubic volume to an MRC file (float32, replaced atomically).

    Parameters
    ----------
    path : str or pathlib.Path
        The MRC file.
    volume : array of shape (N, N, N)
        Indexed ``[z, y, x]`` (numpy or torch).
    voxel_size_angstrom : float, default 1.0
        Written to the header.
    """
    vol = np.asarray(to_numpy(volume), dtype=np.float32)
    if vol.ndim != 3 or not (vol.shape[0] == vol.shape[1] == vol.shape[2]):
        raise ValueError(
            f"Expected 'volume' to be a cubic volume of shape (N, N, N), got "
            f"{vol.shape}."
        )
    _check_spacing(voxel_size_angstrom, "voxel_size_angstrom")
    _write_mrc(path, vol, voxel_size_angstrom, stack=False)


def _write_mrc(path, data: np.ndarray, spacing: float, *, stack: bool) -> None:
    """Write an MRC volume or stack atomically, its file closed even when it fails.

    (mrcfile leaves its file open when the final flush fails, e.g. on a full disk.)
    """
    with atomic_path(path) as tmp:
        mrc = mrcfile.new(tmp, overwrite=True)
        try:
            mrc.set_data(data)
            mrc.set_image_stack() if stack else mrc.set_volume()
            mrc.voxel_size = float(spacing)
            mrc.close()
        except BaseException:
            with contextlib.suppress(OSError):
                mrc._iostream.close()
            raise


def _check_spacing(value, name: str) -> None:
    if not (isinstance(value, (int, float, np.number)) and np.isfinite(value)) or not (
        value > 0
    ):
        raise ValueError(f"Expected '{name}' to be a number > 0, got {value!r}.")


def read_images(path, *, mmap: bool = True) -> np.ndarray:
    """Read an MRC image stack, memory-mapped by default.

    Parameters
    ----------
    path : str or pathlib.Path
        An ``.mrcs`` stack (or ``.mrc`` holding one image or a stack).
    mmap : bool, default True
        Return a read-only ``numpy.memmap`` in the file's own dtype, reading nothing
        until indexed; ``False`` loads the stack as float32.

    Returns
    -------
    numpy.ndarray of shape (n, N, N)
        Images indexed ``[n, y, x]``; a single 2-D image comes back as ``(1, N, N)``.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; not a readable MRC file; images not square; labelled as a 3-D
        map (a volume's space group in a file not named ``.mrcs``; RELION reads
        particle images only from ``.mrcs`` stacks).
    """
    data, _, (kind, why) = _read_mrc(path, mmap=mmap)
    if kind == "volume":
        raise ValueError(
            f"MRC file '{path}' is a 3-D map ({why}, and its name does not end in "
            ".mrcs), not an image stack: particle images are read from stacks "
            "(RELION, too, refuses 'N@file.mrc'); name a stack .mrcs."
        )
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(
            f"Expected MRC file '{path}' to hold square images (n, N, N), got shape "
            f"{data.shape}."
        )
    return data if mmap else np.asarray(data, dtype=np.float32)


def write_images(path, images, pixel_size_angstrom: float = 1.0) -> None:
    """Write images to an MRC stack (``.mrcs``, float32, space group 0; atomic).

    Parameters
    ----------
    path : str or pathlib.Path
        The stack file.
    images : array of shape (n, N, N) or (N, N)
        Indexed ``[n, y, x]`` (numpy or torch).
    pixel_size_angstrom : float, default 1.0
        Written to the header.
    """
    arr = np.asarray(to_numpy(images), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(
            f"Expected 'images' to have shape (n, H, W) with H == W, got {arr.shape}."
        )
    _check_spacing(pixel_size_angstrom, "pixel_size_angstrom")
    _write_mrc(path, arr, pixel_size_angstrom, stack=True)


# --------------------------------------------------------------------------------------
# Particle images referenced by STAR files
# --------------------------------------------------------------------------------------


def _check_count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected '{name}' to be an integer >= 1, got {value!r}.")


class ParticleImageLoader:
    """Load images named ``index@stack.mrcs`` while keeping few stacks open.

    Stacks are memory-mapped on first use and kept in a least-recently-used cache of
    at most ``max_open_files`` entries (each holds one file descriptor); only the rows
    asked for are read.

    Parameters
    ----------
    max_open_files : int, default 32
        Most stacks open at once.

    Examples
    --------
    >>> with ParticleImageLoader(max_open_files=8) as loader:  # doctest: +SKIP
    ...     images = loader.load(particles.image_files, particles.image_indices)
    """

    def __init__(self, max_open_files: int = 32):
        _check_count(max_open_files, "max_open_files")
        self.max_open_files = int(max_open_files)
        self._stacks: OrderedDict[Path, np.ndarray] = OrderedDict()

    @property
    def n_open(self) -> int:
        """Number of stacks held open now."""
        return len(self._stacks)

    def stack(self, path) -> np.ndarray:
        """Return the memory-mapped stack ``(n, N, N)`` at ``path``.

        Opens it if needed, closing the least recently used stack beyond the bound.
        """
        path = Path(path)
        if path in self._stacks:
            self._stacks.move_to_end(path)
            return self._stacks[path]
        while len(self._stacks) >= self.max_open_files:
            self._stacks.popitem(last=False)  # the memmap's file closes with it
        self._stacks[path] = read_images(path, mmap=True)
        return self._stacks[path]

    def load(self, files, indices, *, context=None) -> np.ndarray:
        """Read images ``indices[i]`` (0-based) of stacks ``files[i]``.

        Parameters
        ----------
        files : sequence of path of length n
            The stack of each image.
        indices : array of int of shape (n,)
            0-based index of each image in its stack.
        context : callable, optional
            ``context(i)`` describes item ``i`` in error messages (e.g. its STAR row).

        Returns
        -------
        numpy.ndarray of shape (n, N, N), float32
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(files) != len(indices):
            raise ValueError(
                f"Expected 'files' and 'indices' to have the same length, got "
                f"{len(files)} and {len(indices)}."
            )
        describe = context or (lambda i: f"item {i}")
        by_file: dict[Path, list[int]] = {}
        for i, file in enumerate(files):
            by_file.setdefault(Path(file), []).append(i)
        out = None
        for file, items in by_file.items():
            stack = self._open_for(file, describe(items[0]))
            idx = indices[items]
            past = (idx >= len(stack)) | (idx < 0)
            if past.any():
                k = int(np.flatnonzero(past)[0])
                raise ValueError(
                    f"Image index {idx[k] + 1} (1-based) of {describe(items[k])} is "
                    f"past the end of stack '{file}', which holds {len(stack)} images."
                )
            if out is None:
                out = np.empty((len(indices), *stack.shape[1:]), dtype=np.float32)
            elif stack.shape[1:] != out.shape[1:]:
                raise ValueError(
                    f"Stack '{file}' holds images of shape {stack.shape[1:]}, but "
                    f"earlier images are {out.shape[1:]}."
                )
            out[items] = stack[idx]
            _drop_resident_pages(stack)
        return out if out is not None else np.zeros((0, 0, 0), dtype=np.float32)

    def _open_for(self, file: Path, where: str) -> np.ndarray:
        try:
            return self.stack(file)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"Image stack '{file}' (referenced by {where}) does not exist."
            ) from exc
        except ValueError as exc:
            raise ValueError(f"{exc} (Referenced by {where}.)") from exc

    def close(self) -> None:
        """Release every open stack."""
        self._stacks.clear()

    def __enter__(self) -> ParticleImageLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_resident_pages(array: np.ndarray) -> None:
    """Drop the pages a memory-mapped stack has read from this process's memory.

    They stay in the page cache (a later read maps them back without disk I/O), but
    without this the process's resident memory grows by every page of every open
    stack it has read: 1.5 GB over a 10^5-particle set at 64 px.
    """
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def _resolve_rows(rows, n: int) -> np.ndarray:
    all_rows = np.arange(n)
    if rows is None:
        return all_rows
    try:
        selected = all_rows[to_numpy(rows) if not isinstance(rows, slice) else rows]
    except IndexError as exc:
        raise ValueError(f"'rows' does not index {n} particles: {exc}") from exc
    return np.atleast_1d(selected)


class _ImageRefs:
    """The parsed ``index@file`` names of a particle table."""

    def __init__(self, particles: Particles):
        require_columns(particles, ["rlnImageName"], purpose="loading images")
        self.files = particles.image_files
        self.indices = particles.image_indices
        self.names = particles.data["rlnImageName"].to_numpy()
        self.source = particles.source
        self.sizes = None  # rlnImageSize per row, when the table gives it
        if particles.has_column("rlnImageSize"):
            self.sizes = particles._float_column("rlnImageSize")

    def load(self, selected: np.ndarray, loader: ParticleImageLoader) -> np.ndarray:
        def context(i):
            row = selected[i]
            return f"row {row} ({self.names[row]!r}) of {self.source}"

        stacks = [self.files[r] for r in selected]
        images = loader.load(stacks, self.indices[selected], context=context)
        if self.sizes is not None and len(selected):
            wrong = np.flatnonzero(self.sizes[selected] != images.shape[-1])
            if len(wrong):
                i = int(wrong[0])
                raise ValueError(
                    f"rlnImageSize of {context(i)} is {self.sizes[selected[i]]:g} px, "
                    f"but its stack '{stacks[i]}' holds {images.shape[-1]} px images: "
                    "the table does not describe these images (fix rlnImageSize or "
                    "point rlnImageName to the right stack)."
                )
        return images


def load_particle_images(
    particles: Particles, rows=None, *, loader: ParticleImageLoader | None = None
) -> np.ndarray:
    """Load the images of particles from the stacks their ``rlnImageName`` names.

    Parameters
    ----------
    particles : Particles
        From :func:`read_particles`; ``index@file`` names are 1-based, relative files
        resolve against the STAR file's folder.
    rows : array of int, boolean mask or slice, optional
        Which particles (default all), in the order given.
    loader : ParticleImageLoader, optional
        Reuse its open stacks across calls; a private one (32 files) by default.

    Returns
    -------
    numpy.ndarray of shape (len(rows), N, N), float32

    Raises
    ------
    ValueError
        No ``rlnImageName`` column; an index past the end of its stack.
    FileNotFoundError
        A stack that does not exist (the message names it and the row).
    """
    refs = _ImageRefs(particles)
    selected = _resolve_rows(rows, len(particles))
    if loader is not None:
        return refs.load(selected, loader)
    with ParticleImageLoader() as own:
        return refs.load(selected, own)


def iter_particle_images(
    particles: Particles, batch_size: int = 256, rows=None, *, max_open_files: int = 32
):
    """Stream particle images in batches, with bounded memory and open files.

    Parameters
    ----------
    particles : Particles
        As for :func:`load_particle_images`.
    batch_size : int, default 256
        Images per batch.
    rows : array of int, boolean mask or slice, optional
        Which particles (default all).
    max_open_files : int, default 32
        Most stacks open at once.

    Yields
    ------
    rows : numpy.ndarray of shape (b,)
        The particle rows of the batch.
    images : numpy.ndarray of shape (b, N, N), float32
    """
    _check_count(batch_size, "batch_size")
    refs = _ImageRefs(particles)  # parse the image names once, not per batch
    selected = _resolve_rows(rows, len(particles))
    with ParticleImageLoader(max_open_files) as loader:
        for start in range(0, len(selected), batch_size):
            batch = selected[start : start + batch_size]
            yield batch, refs.load(batch, loader)
