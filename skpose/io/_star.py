"""RELION STAR particle tables (3.0, 3.1+, 5.0): the ``Particles`` class of skpose.io.

Layouts handled:

- RELION 3.0: one table (``data_images``, ``data_particles``, ``data_`` ...), every
  column per particle; origins ``rlnOriginX/Y`` in pixels; pixel size from
  ``rlnDetectorPixelSize`` (um) * 1e4 / ``rlnMagnification``.
- RELION 3.1 and later (4.0 writes ``# version 30001`` too): ``data_optics`` and
  ``data_particles``; per-group values (voltage, Cs, amplitude contrast, pixel size, box
  size) joined to particles by ``rlnOpticsGroup``; origins ``rlnOriginXAngst/YAngst``.
- RELION 5.0 (``# version 50001``): the 3.1 layout.

The version comes from the file's ``# version NNNNN`` (or ``# RELION; version 3.0.x``)
line; without one, a file with an optics block is 3.1, otherwise 3.0.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skpose.geometry.rotations import relion_euler_to_quat
from skpose.imaging.ctf import CTFParams

__all__ = ["Particles", "require_columns", "require_unique_images"]

VERSIONS = ("3.0", "3.1", "5.0")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CTF_COLUMNS = ("rlnDefocusU", "rlnVoltage", "rlnSphericalAberration")
PIXEL_SIZE_HELP = (
    "rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification, or rlnPixelSize"
)


def _group_keys(values) -> np.ndarray:
    """Optics group ids as strings ("1", not "1.0"), for matching the two tables.

    Whole numbers lose their ".0" one by one, so that one missing value (NaN, e.g. a
    row cut short) is reported on its own row instead of turning every id into "1.0".
    """
    arr = np.asarray(values)
    keys = arr.astype(str)
    if np.issubdtype(arr.dtype, np.floating):
        whole = np.isfinite(arr) & (arr == np.round(arr))
        keys[whole] = arr[whole].astype(np.int64).astype(str)
    return keys


@dataclass
class Particles:
    """A RELION particle table, with the optics groups it refers to.

    Attributes
    ----------
    data : pandas.DataFrame
        The particles block as read, every original column untouched (one row per
        particle).
    optics : pandas.DataFrame or None
        The ``data_optics`` block (RELION 3.1+), or None.
    version : {"3.0", "3.1", "5.0"}
        The STAR layout (see the module docstring for how it is detected).
    path : pathlib.Path or None
        The STAR file read; relative image paths resolve against its folder (the
        current directory when None).
    blocks : dict
        Every block of the file in order (written back by :func:`write_particles`).
    particles_block, optics_block : str or None
        The names of the particles and optics blocks in ``blocks``.
    """

    data: pd.DataFrame
    optics: pd.DataFrame | None = None
    version: str = "3.1"
    path: Path | None = None
    blocks: dict = field(default_factory=dict, repr=False)
    particles_block: str = "particles"
    optics_block: str | None = "optics"

    def __post_init__(self):
        if not isinstance(self.data, pd.DataFrame):
            raise TypeError(
                "Expected 'data' to be a pandas DataFrame, got "
                f"{type(self.data).__name__}."
            )
        if self.optics is not None and not isinstance(self.optics, pd.DataFrame):
            raise TypeError(
                "Expected 'optics' to be a pandas DataFrame or None, got "
                f"{type(self.optics).__name__}."
            )
        if self.version not in VERSIONS:
            raise ValueError(
                f"Expected 'version' to be one of {VERSIONS}, got {self.version!r}."
            )
        if self.path is not None:
            self.path = Path(self.path)
        self._check_optics_groups()

    # ----------------------------------------------------------------------------
    # Columns
    # ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data)

    @property
    def source(self) -> str:
        """How errors name this table: ``STAR file '<path>'``."""
        return f"STAR file '{self.path}'" if self.path else "the particle table"

    def has_column(self, name: str) -> bool:
        """Whether ``name`` is a particle column or an optics-group column."""
        return name in self.data.columns or (
            self.optics is not None and name in self.optics.columns
        )

    def column(self, name: str) -> np.ndarray:
        """Per-particle values of a column, from the particle or the optics table.

        A particle column wins over the optics column of the same name.

        Returns
        -------
        numpy.ndarray of shape (n,)

        Raises
        ------
        ValueError
            When neither table has the column.
        """
        require_columns(self, [name])
        if name in self.data.columns:
            return self.data[name].to_numpy()
        return self.optics[name].to_numpy()[self._optics_rows()]

    def _float_column(self, name: str, *, finite: bool = False) -> np.ndarray:
        values = self.column(name)
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"Column '{name}' of {self.source} holds non-numeric values."
            ) from exc
        bad = ~np.isfinite(values) if finite else ()
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"Row {row} of {self.source} has {name} = {values[row]}; expected a "
                f"finite number ({int(np.sum(bad))} row(s) are not)."
            )
        return values

    def _group_ids(self) -> tuple[np.ndarray, np.ndarray]:
        groups = _group_keys(self.optics["rlnOpticsGroup"])
        if "rlnOpticsGroup" in self.data.columns:
            particle_groups = _group_keys(self.data["rlnOpticsGroup"])
        else:
            particle_groups = np.full(len(self.data), groups[0] if len(groups) else "")
        return groups, particle_groups

    def _check_optics_groups(self) -> None:
        if self.optics is None:
            return
        if "rlnOpticsGroup" not in self.optics.columns:
            if len(self.optics) == 1:
                return
            raise ValueError(
                f"The optics block of {self.source} has no column 'rlnOpticsGroup'."
            )
        groups, particle_groups = self._group_ids()
        if "rlnOpticsGroup" not in self.data.columns and len(groups) > 1:
            raise ValueError(
                f"{self.source} defines {len(groups)} optics groups but its particles "
                "have no column 'rlnOpticsGroup'."
            )
        undefined = sorted(set(particle_groups) - set(groups))
        if undefined:
            row = int(np.flatnonzero(particle_groups == undefined[0])[0])
            raise ValueError(
                f"Particle row {row} of {self.source} refers to optics group "
                f"{undefined[0]}, which its optics block does not define (defined: "
                f"{', '.join(groups)})."
            )

    def _optics_rows(self) -> np.ndarray:
        if "rlnOpticsGroup" not in self.optics.columns:
            return np.zeros(len(self.data), dtype=np.int64)
        groups, particle_groups = self._group_ids()
        lookup = {g: i for i, g in enumerate(groups)}
        return np.array([lookup[g] for g in particle_groups], dtype=np.int64)

    # ----------------------------------------------------------------------------
    # Derived quantities
    # ----------------------------------------------------------------------------

    def _split_image_names(self) -> tuple[list[Path], np.ndarray] | None:
        if "rlnImageName" not in self.data.columns:
            return None
        folder = self.path.parent if self.path else Path.cwd()
        files, indices, resolved = [], np.empty(len(self), dtype=np.int64), {}
        for row, name in enumerate(self.data["rlnImageName"].astype(str)):
            number, sep, file = name.partition("@")
            if not sep:
                number, file = "1", name
            try:
                indices[row] = int(number) - 1
            except ValueError:
                indices[row] = -1
            if indices[row] < 0:
                raise ValueError(
                    f"Row {row} of {self.source} has rlnImageName {name!r}; expected "
                    "'index@file' with a 1-based index."
                )
            if file not in resolved:
                resolved[file] = Path(os.path.abspath(folder / file))
            files.append(resolved[file])
        return files, indices

    @property
    def image_files(self) -> list[Path] | None:
        """Absolute path of each particle's stack, or None without ``rlnImageName``.

        Relative names resolve against the STAR file's folder.
        """
        split = self._split_image_names()
        return None if split is None else split[0]

    @property
    def image_indices(self) -> np.ndarray | None:
        """0-based index of each particle in its stack, shape (n,), or None."""
        split = self._split_image_names()
        return None if split is None else split[1]

    @property
    def pixel_size_angstrom(self) -> np.ndarray:
        """Pixel size of each particle image in Angstrom, shape (n,); NaN if unknown.

        ``rlnImagePixelSize`` (optics group or particle), else ``rlnDetectorPixelSize``
        (micrometres) * 1e4 / ``rlnMagnification`` (RELION 3.0), else ``rlnPixelSize``.
        """
        if self.has_column("rlnImagePixelSize"):
            return self._float_column("rlnImagePixelSize")
        if self.has_column("rlnDetectorPixelSize") and self.has_column(
            "rlnMagnification"
        ):
            detector = self._float_column("rlnDetectorPixelSize")
            return detector * 1e4 / self._float_column("rlnMagnification")
        if self.has_column("rlnPixelSize"):
            return self._float_column("rlnPixelSize")
        return np.full(len(self), np.nan)

    @property
    def origins_px(self) -> np.ndarray:
        """RELION origins ``(ox, oy)`` in pixels, shape (n, 2); zeros without columns.

        The particle image is the centred projection translated by ``-(ox, oy)``.
        ``rlnOriginXAngst/YAngst`` are divided by the pixel size (zero origins stay
        zero when the pixel size is unknown); otherwise ``rlnOriginX/Y`` are pixels.
        """
        if self.has_column("rlnOriginXAngst") and self.has_column("rlnOriginYAngst"):
            angst = np.stack(
                [self._float_column(f"rlnOrigin{a}Angst", finite=True) for a in "XY"],
                axis=1,
            )
            pixel = self.pixel_size_angstrom[:, None]
            unknown = np.isnan(pixel[:, 0]) & (angst != 0).any(axis=1)
            if unknown.any():
                raise ValueError(
                    f"{self.source} gives origins in Angstrom but no pixel size "
                    f"({PIXEL_SIZE_HELP}) for row {int(np.flatnonzero(unknown)[0])}."
                )
            with np.errstate(invalid="ignore"):
                return np.where(angst == 0, 0.0, angst / pixel)
        if self.has_column("rlnOriginX") and self.has_column("rlnOriginY"):
            return np.stack(
                [self._float_column(f"rlnOrigin{a}", finite=True) for a in "XY"], axis=1
            )
        return np.zeros((len(self), 2))

    @property
    def angles_deg(self) -> np.ndarray | None:
        """RELION Euler angles ``(rot, tilt, psi)`` in degrees, shape (n, 3).

        None unless all three angle columns are present.
        """
        if not all(self.has_column(c) for c in ANGLE_COLUMNS):
            return None
        return np.stack(
            [self._float_column(c, finite=True) for c in ANGLE_COLUMNS], axis=1
        )

    @property
    def quaternions(self) -> np.ndarray | None:
        """Unit quaternions ``(w, x, y, z)`` of the angles, shape (n, 4), float64.

        Canonical (w >= 0); their matrices are RELION's ``A``. None without all three
        angle columns.
        """
        angles = self.angles_deg
        if angles is None:
            return None
        if len(angles) == 0:
            return np.zeros((0, 4))
        return relion_euler_to_quat(angles)

    @property
    def ctf(self) -> CTFParams:
        """RELION CTF parameters of every particle (arrays of shape (n,)).

        ``rlnDefocusU``, ``rlnVoltage`` and ``rlnSphericalAberration`` are required
        (per particle or optics group). Missing others take RELION's own defaults
        (``CTF::read``): ``rlnDefocusV`` = ``rlnDefocusU``; ``rlnDefocusAngle``,
        ``rlnAmplitudeContrast``, ``rlnPhaseShift`` and ``rlnCtfBfactor`` = 0;
        ``rlnCtfScalefactor`` = 1 (it multiplies the CTF, as in RELION). Every value
        must be finite (the error names the row and column).
        """
        require_columns(self, _CTF_COLUMNS, purpose="the CTF")
        pixel = self.pixel_size_angstrom
        if np.isnan(pixel).any():
            raise ValueError(
                f"{self.source} gives no pixel size ({PIXEL_SIZE_HELP}) for the CTF."
            )
        defocus_u = self._float_column("rlnDefocusU", finite=True)

        def optional(name, default):
            if self.has_column(name):
                return self._float_column(name, finite=True)
            return np.broadcast_to(default, (len(self),)).astype(np.float64)

        return CTFParams(
            defocus_u_angstrom=defocus_u,
            defocus_v_angstrom=optional("rlnDefocusV", defocus_u),
            defocus_angle_deg=optional("rlnDefocusAngle", 0.0),
            pixel_size_angstrom=pixel,
            voltage_kv=self._float_column("rlnVoltage", finite=True),
            cs_mm=self._float_column("rlnSphericalAberration", finite=True),
            amplitude_contrast=optional("rlnAmplitudeContrast", 0.0),
            phase_shift_deg=optional("rlnPhaseShift", 0.0),
            bfactor=optional("rlnCtfBfactor", 0.0),
            scale=optional("rlnCtfScalefactor", 1.0),
        )

    @property
    def box_size(self) -> int | None:
        """Image side in pixels from ``rlnImageSize`` (optics group), or None.

        Raises ``ValueError`` when the particles' groups have different sizes.
        """
        if not self.has_column("rlnImageSize"):
            return None
        sizes = self.column("rlnImageSize")
        if len(sizes) == 0 and self.optics is not None:
            sizes = self.optics["rlnImageSize"].to_numpy()
        sizes = np.unique(np.asarray(sizes, dtype=np.int64))
        if len(sizes) > 1:
            raise ValueError(
                f"The particles of {self.source} have several box sizes "
                f"{sizes.tolist()}; select one optics group first."
            )
        return int(sizes[0]) if len(sizes) else None

    def select(self, rows) -> Particles:
        """Select the particles at ``rows`` (indices, boolean mask or slice).

        The optics table and the other blocks are kept.

        Returns
        -------
        Particles
            A new table with a fresh 0-based index.
        """
        selected = self.data.iloc[rows]
        if isinstance(selected, pd.Series):
            selected = selected.to_frame().T
        return dataclasses.replace(self, data=selected.reset_index(drop=True))


def require_columns(particles: Particles, columns, *, purpose: str | None = None):
    """Raise ``ValueError`` naming the file and every missing column.

    Parameters
    ----------
    particles : Particles
        The table (particle and optics columns both count).
    columns : sequence of str
        The columns required.
    purpose : str, optional
        What they are needed for, added to the message.

    Examples
    --------
    >>> import pandas as pd
    >>> table = Particles(pd.DataFrame({"rlnAngleRot": [0.0]}))
    >>> require_columns(table, ["rlnAngleRot"])
    """
    missing = [c for c in columns if not particles.has_column(c)]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        plural = "s" if len(missing) > 1 else ""
        why = f" (needed for {purpose})" if purpose else ""
        raise ValueError(f"{particles.source} has no column{plural} {names}{why}.")


def require_unique_images(particles: Particles, *, purpose: str | None = None):
    """Raise ``ValueError`` when two rows name the same particle image.

    Images are compared as (stack path resolved against the STAR file's folder,
    index), so ``1@a.mrcs`` and ``000001@./a.mrcs`` are the same image. A table
    without ``rlnImageName`` passes.

    Parameters
    ----------
    particles : Particles
    purpose : str, optional
        What needs one row per image, added to the message.

    Raises
    ------
    ValueError
        Naming the file, the image name and the two (0-based) rows.

    Examples
    --------
    >>> import pandas as pd
    >>> table = Particles(pd.DataFrame({"rlnImageName": ["1@a.mrcs", "2@a.mrcs"]}))
    >>> require_unique_images(table)
    """
    split = particles._split_image_names()
    if split is None:
        return
    first: dict = {}
    for row, key in enumerate(zip(split[0], split[1].tolist(), strict=True)):
        seen = first.setdefault(key, row)
        if seen != row:
            name = particles.data["rlnImageName"].iloc[row]
            why = f" {purpose} needs one row per image:" if purpose else ""
            raise ValueError(
                f"{particles.source} lists particle image {name!r} twice, in rows "
                f"{seen} and {row} (0-based; a symmetry-expanded or concatenated "
                f"set?);{why} keep one row per image."
            )
