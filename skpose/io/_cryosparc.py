"""cryoSPARC ``.cs`` particle files (behind skpose.io)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skpose.geometry.rotations import cryosparc_pose_to_quat
from skpose.imaging.ctf import CTFParams

__all__ = ["CryoSparcParticles", "read_cryosparc"]


@dataclass
class CryoSparcParticles:
    """Particles read from a cryoSPARC ``.cs`` file.

    Attributes
    ----------
    quaternions : numpy.ndarray of shape (n, 4)
        Unit quaternions (w, x, y, z), w >= 0, of RELION's ``A`` (from
        ``alignments3D/pose``).
    shifts_px : numpy.ndarray of shape (n, 2)
        ``alignments3D/shift`` in pixels, taken as RELION's origin ``(ox, oy)`` (the
        sign cryoDRGN uses).
    ctf : CTFParams or None
        From the ``ctf/`` fields (angles converted to degrees); None without them.
    pixel_size_angstrom : numpy.ndarray of shape (n,)
        ``blob/psize_A``.
    box_size : int
        ``blob/shape``.
    uid : numpy.ndarray of shape (n,), uint64
    image_files : list of str or None
        ``blob/path`` as stored (relative to the cryoSPARC project folder).
    image_indices : numpy.ndarray of shape (n,) or None
        ``blob/idx``, 0-based.
    """

    quaternions: np.ndarray
    shifts_px: np.ndarray
    ctf: CTFParams | None
    pixel_size_angstrom: np.ndarray
    box_size: int
    uid: np.ndarray
    image_files: list[str] | None = None
    image_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.quaternions)


def _cs_field(array: np.ndarray, name: str, path) -> np.ndarray:
    if name not in array.dtype.names:
        raise ValueError(f"cryoSPARC file '{path}' has no field '{name}'.")
    return array[name]


def _cs_ctf(array: np.ndarray, path, pixel: np.ndarray) -> CTFParams | None:
    if "ctf/df1_A" not in array.dtype.names:
        return None

    def get(name):
        return np.asarray(_cs_field(array, name, path), dtype=np.float64)

    return CTFParams(
        defocus_u_angstrom=get("ctf/df1_A"),
        defocus_v_angstrom=get("ctf/df2_A"),
        defocus_angle_deg=np.rad2deg(get("ctf/df_angle_rad")),
        pixel_size_angstrom=pixel,
        voltage_kv=get("ctf/accel_kv"),
        cs_mm=get("ctf/cs_mm"),
        amplitude_contrast=get("ctf/amp_contrast"),
        phase_shift_deg=np.rad2deg(get("ctf/phase_shift_rad"))
        if "ctf/phase_shift_rad" in array.dtype.names
        else np.zeros(len(pixel)),
    )


def read_cryosparc(path) -> CryoSparcParticles:
    """Read poses, shifts and CTF of a cryoSPARC ``.cs`` particle file.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.cs`` file (a numpy structured array saved with ``np.save``).

    Returns
    -------
    CryoSparcParticles

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; not a structured array; a required field missing
        (``alignments3D/pose``, ``alignments3D/shift``, ``blob/psize_A``,
        ``blob/shape``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cryoSPARC file '{path}' does not exist.")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(
            f"'{path}' is not a readable cryoSPARC .cs file: {exc}"
        ) from exc
    if not isinstance(array, np.ndarray) or array.dtype.names is None:
        raise ValueError(f"'{path}' is not a cryoSPARC .cs file (no structured array).")
    pose = np.asarray(_cs_field(array, "alignments3D/pose", path), dtype=np.float64)
    shift = np.asarray(_cs_field(array, "alignments3D/shift", path), dtype=np.float64)
    pixel = np.asarray(_cs_field(array, "blob/psize_A", path), dtype=np.float64)
    sizes = np.unique(np.asarray(_cs_field(array, "blob/shape", path))[:, 0])
    if len(sizes) > 1:
        raise ValueError(f"cryoSPARC file '{path}' mixes box sizes {sizes.tolist()}.")
    has_blob = "blob/path" in array.dtype.names and "blob/idx" in array.dtype.names
    return CryoSparcParticles(
        quaternions=cryosparc_pose_to_quat(pose) if len(pose) else np.zeros((0, 4)),
        shifts_px=shift,
        ctf=_cs_ctf(array, path, pixel),
        pixel_size_angstrom=pixel,
        box_size=int(sizes[0]) if len(sizes) else 0,
        uid=np.asarray(_cs_field(array, "uid", path)),
        image_files=[p.decode() for p in array["blob/path"]] if has_blob else None,
        image_indices=array["blob/idx"].astype(np.int64) if has_blob else None,
    )
