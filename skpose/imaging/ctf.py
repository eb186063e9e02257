"""RELION's contrast transfer function (CTF), with RELION's sign (positive first lobe).

The formula is RELION's ``CTF::getCTF`` (``src/ctf.h``)::

    lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))     [Angstrom, V in volts]
    df(a)  = -(dU + dV)/2 - (dU - dV)/2 cos(2 (a - angle))  [Angstrom]
    chi    = pi lambda df |k|^2 + pi/2 Cs lambda^3 |k|^4
             - phase_shift - atan(Q0 / sqrt(1 - Q0^2))
    CTF    = scale * -sin(chi) exp(-B |k|^2 / 4)

with ``k = (kx, ky)`` in 1/Angstrom, ``a = atan2(ky, kx)`` measured from the image's x
axis, ``dU, dV`` = ``rlnDefocusU, rlnDefocusV`` (Angstrom, positive underfocus),
``angle`` = ``rlnDefocusAngle``, ``Cs`` = ``rlnSphericalAberration`` (mm, converted
to Angstrom), ``Q0`` = ``rlnAmplitudeContrast`` and ``phase_shift`` =
``rlnPhaseShift`` (degrees) and ``scale`` = ``rlnCtfScalefactor`` (RELION's
``CTF::scale``, default 1; ``getCTF`` returns ``scale * retval``). At ``k = 0`` the CTF
equals ``scale * Q0`` (> 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from skpose._validation import to_tensor
from skpose.imaging._fourier import frequency_grid

__all__ = ["CTFParams", "check_ctf", "compute_ctf", "electron_wavelength_angstrom"]


@dataclass
class CTFParams:
    """Per-particle CTF parameters in RELION's units.

    Every field is a number or an array of shape ``(n,)`` (broadcast against each
    other).

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom : array of shape (n,)
        ``rlnDefocusU`` / ``rlnDefocusV`` in Angstrom (positive = underfocus).
    defocus_angle_deg : array of shape (n,)
        ``rlnDefocusAngle`` in degrees, from the image x axis.
    pixel_size_angstrom : array of shape (n,)
        Pixel size of the images the CTF applies to.
    voltage_kv : float or array
        ``rlnVoltage`` (kV).
    cs_mm : float or array
        ``rlnSphericalAberration`` (mm).
    amplitude_contrast : float or array
        ``rlnAmplitudeContrast`` (fraction, e.g. 0.1).
    phase_shift_deg : float or array
        ``rlnPhaseShift`` (degrees).
    bfactor : float or array
        ``rlnCtfBfactor`` (Angstrom^2); 0 for none.
    scale : float or array
        ``rlnCtfScalefactor``: multiplies the whole CTF, as RELION's ``CTF::getCTF``
        does (> 0; default 1).
    """

    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    pixel_size_angstrom: np.ndarray
    voltage_kv: np.ndarray = 300.0
    cs_mm: np.ndarray = 2.7
    amplitude_contrast: np.ndarray = 0.1
    phase_shift_deg: np.ndarray = 0.0
    bfactor: np.ndarray = 0.0
    scale: np.ndarray = 1.0

    def __len__(self) -> int:
        return int(np.broadcast(*[np.asarray(v) for v in self.as_dict().values()]).size)

    @property
    def shape(self) -> tuple[int]:
        """``(n,)``: lets scikit-learn split a CTF with its images.

        ``GridSearchCV(...).fit(images, quaternions, ctf=ctf)`` indexes fit parameters
        that have a ``shape`` like arrays (``ctf[rows, ...]``), one row per particle.
        """
        return (len(self),)

    def as_dict(self) -> dict:
        """Fields as a dict of numpy arrays."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    def __getitem__(self, index) -> CTFParams:
        """Parameters of a subset of particles (fields broadcast to ``(n,)`` first)."""
        d = self.as_dict()
        n = len(self)
        return CTFParams(
            **{k: np.broadcast_to(v, (n,))[index].copy() for k, v in d.items()}
        )

    def resampled(self, factor: float) -> CTFParams:
        """The CTF of the same images Fourier-resampled to ``factor`` times the box.

        Same physical CTF; only the pixel size changes (divided by ``factor``).
        """
        if factor == 1:
            return self
        fields_ = self.as_dict()
        fields_["pixel_size_angstrom"] = fields_["pixel_size_angstrom"] / factor
        return CTFParams(**fields_)


def check_ctf(ctf, n: int) -> CTFParams | None:
    """The CTF of ``n`` images: one row per image, or ``None``.

    Parameters
    ----------
    ctf : CTFParams or None
        ``n`` particles' parameters, or one set for all ``n`` images.
    n : int
        Number of images.

    Returns
    -------
    CTFParams of length n, or None
        A single set is repeated ``n`` times.

    Raises
    ------
    TypeError
        When ``ctf`` is neither None nor a CTFParams.
    ValueError
        When it describes neither 1 nor ``n`` particles.
    """
    if ctf is None:
        return None
    if not isinstance(ctf, CTFParams):
        raise TypeError(
            f"Expected 'ctf' to be None or a CTFParams, got {type(ctf).__name__}."
        )
    if len(ctf) not in (1, n):
        raise ValueError(
            f"Expected 'ctf' to describe 1 or {n} particles (one per image), got "
            f"{len(ctf)}."
        )
    return ctf[np.zeros(n, dtype=int)] if len(ctf) == 1 else ctf


def electron_wavelength_angstrom(voltage_kv):
    """Relativistic electron wavelength in Angstrom, as RELION computes it.

    Examples
    --------
    >>> round(float(electron_wavelength_angstrom(300.0)), 5)
    0.01969
    """
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))


def _field(params: CTFParams, name: str, n: int, dtype, device) -> torch.Tensor:
    value = to_tensor(np.asarray(getattr(params, name), dtype=np.float64), name)
    value = value.to(dtype=dtype, device=device).reshape(-1)
    if value.numel() not in (1, n):
        raise ValueError(
            f"Expected CTF field '{name}' to have 1 or {n} values, got {value.numel()}."
        )
    return value.expand(n)[:, None, None]


def compute_ctf(params: CTFParams, box_size: int, *, dtype=torch.float32, device=None):
    """RELION's CTF on the 2-D FFT grid of a ``box_size`` image.

    Parameters
    ----------
    params : CTFParams
        ``n`` particles' parameters.
    box_size : int
        Image side ``N`` in pixels.
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor of shape (n, N, N)
        CTF values at the frequencies of ``torch.fft.fft2`` (unshifted layout, index
        ``[ky, kx]`` with ``torch.fft.fftfreq``), positive first lobe.
    """
    if not isinstance(params, CTFParams):
        raise TypeError(
            f"Expected 'params' to be a CTFParams, got {type(params).__name__}."
        )
    if int(box_size) < 2:
        raise ValueError(f"Expected 'box_size' >= 2, got {box_size}.")
    n = len(params)
    f = {k.name: _field(params, k.name, n, dtype, device) for k in fields(params)}
    if (f["pixel_size_angstrom"] <= 0).any():
        raise ValueError("Expected CTF 'pixel_size_angstrom' > 0.")
    if ((f["amplitude_contrast"] < 0) | (f["amplitude_contrast"] >= 1)).any():
        raise ValueError("Expected CTF 'amplitude_contrast' in [0, 1).")
    if not (torch.isfinite(f["scale"]).all() and (f["scale"] > 0).all()):
        raise ValueError("Expected CTF 'scale' (rlnCtfScalefactor) finite and > 0.")
    ky, kx = frequency_grid(
        box_size, half=False, cycles_per="pixel", dtype=dtype, device=device
    )
    kx = kx / f["pixel_size_angstrom"]
    ky = ky / f["pixel_size_angstrom"]
    k2 = kx * kx + ky * ky
    lam = to_tensor(electron_wavelength_angstrom(params.voltage_kv), "voltage_kv")
    lam = lam.to(dtype=dtype, device=device).reshape(-1).expand(n)[:, None, None]
    du, dv = f["defocus_u_angstrom"], f["defocus_v_angstrom"]
    azimuth = torch.deg2rad(f["defocus_angle_deg"])
    # RELION stores defocus as a negative number internally: deltaf < 0 underfocus.
    deltaf = -(du + dv) / 2 - (du - dv) / 2 * torch.cos(
        2 * (torch.atan2(ky, kx) - azimuth)
    )
    cs_angstrom = f["cs_mm"] * 1e7
    q0 = f["amplitude_contrast"]
    chi = (
        math.pi * lam * deltaf * k2
        + math.pi / 2 * cs_angstrom * lam**3 * k2 * k2
        - torch.deg2rad(f["phase_shift_deg"])
        - torch.atan(q0 / torch.sqrt(1 - q0 * q0))
    )
    return -f["scale"] * torch.sin(chi) * torch.exp(-f["bfactor"] / 4 * k2)
