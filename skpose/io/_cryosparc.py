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
    quaternions : numpy.ndarray of shape (n, 4) or None
        Unit quaternions (w, x, y, z), w >= 0, of RELION's ``A``, from the 3-D
        poses ``pose_source`` names; None when the file has none (CTF only, or a 2-D
        classification).
    shifts_px : numpy.ndarray of shape (n, 2) or None
        The shifts of the same alignment (``pose_source/shift``) in pixels, taken as
        RELION's origin ``(ox, oy)`` (the sign cryoDRGN uses); for ``alignments2D``
        the 2-D alignment's shifts; None without an alignment.
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
    pose_source : str or None
        Where the poses come from: ``"alignments3D"`` (a refinement),
        ``"alignments_class_0"`` (ab initio or heterogeneous refinement with one
        class), ``"alignments_class_*"`` (several classes: each particle's most
        probable class, by ``class_posterior``), ``"alignments2D"`` (in-plane only:
        no quaternions), or None.
    """

    quaternions: np.ndarray | None
    shifts_px: np.ndarray | None
    ctf: CTFParams | None
    pixel_size_angstrom: np.ndarray
    box_size: int
    uid: np.ndarray
    image_files: list[str] | None = None
    image_indices: np.ndarray | None = None
    pose_source: str | None = None

    def __len__(self) -> int:
        return len(self.uid)


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


def _class_prefixes(names) -> list[str]:
    found = {n.split("/")[0] for n in names if n.startswith("alignments_class_")}
    return sorted(found, key=lambda p: int(p.rsplit("_", 1)[1]))


def _cs_alignment(array: np.ndarray, path):
    """(quaternions or None, shifts or None, source) of the file's best alignment."""
    names = array.dtype.names
    if any(n.startswith("alignments3D/") for n in names):
        prefixes = ["alignments3D"]
    else:
        prefixes = _class_prefixes(names)
    if not prefixes:
        if "alignments2D/shift" in names:
            shift = _cs_field(array, "alignments2D/shift", path)
            return None, np.asarray(shift, dtype=np.float64), "alignments2D"
        return None, None, None
    fields = {k: [f"{p}/{k}" for p in prefixes] for k in ("pose", "shift")}
    pose = np.stack([_cs_field(array, f, path) for f in fields["pose"]], axis=1)
    shift = np.stack([_cs_field(array, f, path) for f in fields["shift"]], axis=1)
    best = np.zeros(len(array), dtype=np.int64)
    if len(prefixes) > 1:
        posterior = [_cs_field(array, f"{p}/class_posterior", path) for p in prefixes]
        best = np.argmax(np.stack(posterior, axis=1), axis=1)
    rows = np.arange(len(array))
    pose = np.asarray(pose[rows, best], dtype=np.float64)
    quats = cryosparc_pose_to_quat(pose) if len(pose) else np.zeros((0, 4))
    source = prefixes[0] if len(prefixes) == 1 else "alignments_class_*"
    return quats, np.asarray(shift[rows, best], dtype=np.float64), source


def read_cryosparc(path) -> CryoSparcParticles:
    """Read poses, shifts and CTF of a cryoSPARC ``.cs`` particle file.

    Poses come from ``alignments3D`` (refinements); else from ``alignments_class_K``
    (ab initio, heterogeneous refinement: with several classes, each particle's most
    probable one); a file with neither (CTF only, or ``alignments2D`` of a 2-D
    classification, which has no 3-D orientation) reads with ``quaternions`` None.

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
        (``blob/psize_A``, ``blob/shape``, ``uid``; the ``shift`` of an alignment
        with poses; ``class_posterior`` of several classes).
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
    quats, shifts, source = _cs_alignment(array, path)
    pixel = np.asarray(_cs_field(array, "blob/psize_A", path), dtype=np.float64)
    sizes = np.unique(np.asarray(_cs_field(array, "blob/shape", path))[:, 0])
    if len(sizes) > 1:
        raise ValueError(f"cryoSPARC file '{path}' mixes box sizes {sizes.tolist()}.")
    has_blob = "blob/path" in array.dtype.names and "blob/idx" in array.dtype.names
    return CryoSparcParticles(
        quaternions=quats,
        shifts_px=shifts,
        ctf=_cs_ctf(array, path, pixel),
        pixel_size_angstrom=pixel,
        box_size=int(sizes[0]) if len(sizes) else 0,
        uid=np.asarray(_cs_field(array, "uid", path)),
        image_files=[p.decode() for p in array["blob/path"]] if has_blob else None,
        image_indices=array["blob/idx"].astype(np.int64) if has_blob else None,
        pose_source=source,
    )
