"""Reading and writing RELION STAR particle files (behind skpose.io)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from skpose._validation import to_numpy
from skpose.geometry.rotations import quat_to_relion_euler
from skpose.io._atomic import atomic_path
from skpose.io._star import ANGLE_COLUMNS, PIXEL_SIZE_HELP, Particles
from skpose.io._star_check import check_star_structure, refuse_cryosparc

__all__ = ["read_particles", "write_particles"]

_VERSION_LINE = re.compile(r"^#\s*(?:RELION\s*;?\s*)?version\s+(\d[\d.]*)\s*$", re.I)
_VERSION_CODES = {"3.1": "30001", "5.0": "50001"}


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _version_from_token(token: str) -> str:
    if "." in token:
        parts = [int(p) for p in token.split(".") if p]
        major, minor = [*parts, 0][:2]
    else:
        code = int(token)
        major, minor = code // 10000, code % 10000
    if major >= 5:
        return "5.0"
    return "3.1" if (major, minor) >= (3, 1) else "3.0"


def _detect_version(path: Path, has_optics: bool) -> str:
    """Read the ``# version`` line that precedes the first block's table."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("loop_"):
                break
            match = _VERSION_LINE.match(line.strip())
            if match:
                version = _version_from_token(match.group(1))
                return "3.1" if version == "3.0" and has_optics else version
    return "3.1" if has_optics else "3.0"


def _particle_block_name(blocks: dict, path: Path) -> str:
    tables = {
        k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"
    }
    for name in ("particles", "images"):
        if name in tables:
            return name
    if not tables:
        raise ValueError(f"STAR file '{path}' has no particle table (loop_ block).")
    with_images = [k for k, v in tables.items() if "rlnImageName" in v.columns]
    if with_images:
        return with_images[0]
    return max(tables, key=lambda k: len(tables[k]))


def read_particles(path) -> Particles:
    """Read a RELION particle STAR file (3.0, 3.1+, 5.0).

    Parameters
    ----------
    path : str or pathlib.Path
        The STAR file. The particles block is ``data_particles`` or ``data_images``,
        else the first table with ``rlnImageName``, else the largest table.

    Returns
    -------
    Particles

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it cannot be parsed, has no table, a data row has fewer or more fields
        than its table has columns, it ends inside a value (see
        :mod:`skpose.io._star_check` for what a truncated file shows and what it does
        not), it is a cryoSPARC ``.cs`` file (read those with :func:`read_cryosparc`),
        or a particle refers to an optics group that the optics block does not define.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STAR file '{path}' does not exist.")
    refuse_cryosparc(path)
    check_star_structure(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise ValueError(f"Could not parse STAR file '{path}': {exc}") from exc
    name = _particle_block_name(blocks, path)
    optics = blocks.get("optics")
    optics_block = "optics" if isinstance(optics, pd.DataFrame) else None
    return Particles(
        data=blocks[name],
        optics=optics if optics_block else None,
        version=_detect_version(path, optics_block is not None),
        path=path.absolute(),
        blocks=dict(blocks),
        particles_block=name,
        optics_block=optics_block,
    )


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _float_array(x, name: str, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(to_numpy(x), dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"Expected '{name}' to have shape {shape}, got {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"Expected '{name}' to be finite, but it holds NaN or inf.")
    return arr


def _set_origins(data: pd.DataFrame, particles: Particles, shifts_px: np.ndarray):
    has_px = "rlnOriginX" in data.columns
    write_angst = "rlnOriginXAngst" in data.columns or (
        particles.version != "3.0" and not has_px
    )
    if write_angst:
        pixel = particles.pixel_size_angstrom
        if np.isnan(pixel).any():
            raise ValueError(
                f"Cannot write origins in Angstrom: {particles.source} gives no pixel "
                f"size ({PIXEL_SIZE_HELP})."
            )
        data["rlnOriginXAngst"] = shifts_px[:, 0] * pixel
        data["rlnOriginYAngst"] = shifts_px[:, 1] * pixel
    if has_px or not write_angst:
        data["rlnOriginX"] = shifts_px[:, 0]
        data["rlnOriginY"] = shifts_px[:, 1]


def _blocks_for_writing(particles: Particles, data: pd.DataFrame) -> dict:
    """Every block in its original order, particles replaced; optics first if new."""
    optics_name = particles.optics_block or "optics"
    blocks = {}
    if particles.optics is not None and optics_name not in particles.blocks:
        blocks[optics_name] = particles.optics
    blocks.update(particles.blocks)
    if particles.optics is not None:
        blocks[optics_name] = particles.optics
    blocks[particles.particles_block] = data
    return blocks


def _add_version_lines(path: Path, version: str) -> None:
    code = _VERSION_CODES.get(version)
    if code is None:
        return
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        if line.startswith("data_"):
            out += [f"# version {code}", ""]
        out.append(line)
    path.write_text("\n".join(out) + "\n")


def write_particles(
    path, particles: Particles, quaternions=None, shifts_px=None, extra_columns=None
) -> None:
    """Write a particle table in the layout it was read in (optics block unchanged).

    Parameters
    ----------
    path : str or pathlib.Path
        The STAR file to write (replaced atomically: an interrupted or failed write
        leaves the previous file intact).
    particles : Particles
        The table; every column and block is written back.
    quaternions : array of shape (n, 4), optional
        New orientations, scalar first (w, x, y, z); written as ``rlnAngleRot``,
        ``rlnAngleTilt``, ``rlnAnglePsi`` (degrees, RELION's ZYZ convention).
    shifts_px : array of shape (n, 2), optional
        New origins ``(ox, oy)`` in pixels (the image is the centred projection
        translated by ``-(ox, oy)``); written as ``rlnOriginXAngst/YAngst``
        (pixels * the particle's pixel size) for RELION 3.1+, ``rlnOriginX/Y`` for
        3.0 and wherever the table already has them.
    extra_columns : dict of str to array of shape (n,), optional
        Columns to add or replace, e.g. ``{"rlnSkposeConfidence": conf}``.

    Notes
    -----
    Floats are written with 6 decimals (as RELION writes them); a ``# version 30001``
    (3.1) or ``# version 50001`` (5.0) line precedes each block.
    """
    if not isinstance(particles, Particles):
        raise TypeError(
            "Expected 'particles' to be a Particles table (from read_particles), got "
            f"{type(particles).__name__}."
        )
    n = len(particles)
    data = particles.data.copy()
    if quaternions is not None:
        q = _float_array(quaternions, "quaternions", (n, 4))
        angles = quat_to_relion_euler(q) if n else np.zeros((0, 3))
        for j, name in enumerate(ANGLE_COLUMNS):
            data[name] = angles[:, j]
    if shifts_px is not None:
        _set_origins(data, particles, _float_array(shifts_px, "shifts_px", (n, 2)))
    for name, values in (extra_columns or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Expected 'extra_columns' keys to be names, got {name!r}.")
        arr = to_numpy(values)
        if arr.shape != (n,):
            raise ValueError(
                f"Expected extra column '{name}' to have shape ({n},), got {arr.shape}."
            )
        data[name] = arr
    with atomic_path(path) as tmp:
        starfile.write(_blocks_for_writing(particles, data), tmp, overwrite=True)
        _add_version_lines(tmp, particles.version)
