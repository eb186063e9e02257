"""Projections of a 3-D map: a differentiable Fourier-slice projector and a reference.

Convention (RELION's, verified on ``relion_project`` output; ``docs/conventions.md``):
the projection of a volume ``V`` (array ``[z, y, x]``, origin at index ``N // 2``) at
rotation ``R`` (our ``R`` = RELION's ``A``) is::

    img(x, y) = sum_z V(R^T (x, y, z)^T)          (paper eq. 13)

and, by the Fourier-slice theorem, ``F_img(k) = F_V(R^T (kx, ky, 0)^T)``. A particle
with RELION origin ``(ox, oy)`` pixels (``shifts_px``) is that projection translated by
``(-ox, -oy)``: ``img_shifted(x, y) = img(x + ox, y + oy)``.

:func:`project` is the fast path: the zero-padded volume's FFT is computed once per
volume, device, dtype and padding (cached; see :class:`FourierProjector`), each image
is one central slice sampled by trilinear interpolation, phase-shifted, optionally
multiplied by the CTF, and inverse-transformed. Like RELION, the volume is divided by
the real-space transform of the trilinear kernel (gridding correction) before its FFT
and only frequencies within the Nyquist circle ``|k| <= N / 2`` are kept. The kernel's
transform is the separable ``sinc^2`` per axis where RELION uses the radial
``sinc^2(|r| / P)``: up to 0.3 % apart within the sphere ``|r| <= N / 2`` and 3 % at
the box corners for ``pad = 2`` (``docs/conventions.md``).
:meth:`FourierProjector.sample_slices` samples the same slices at any frequencies.
``frequencies="square"`` keeps every frequency of the image grid instead: the accurate
mode for maps with power up to Nyquist (``docs/conventions.md``).

:func:`project_real_space` rotates the volume in real space (trilinear) and sums along
``z``: slow, simple, and independent of the Fourier path. Tests compare the two.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from skpose._validation import as_quaternions, back_like, check_volume, to_tensor
from skpose.geometry.rotations import quat_to_matrix
from skpose.imaging._fourier import frequency_grid, gridding_correct, nyquist_half_plane
from skpose.imaging.ctf import CTFParams, compute_ctf

__all__ = ["FourierProjector", "phase_shift", "project", "project_real_space"]

_CACHE_SIZE = 4
_cache: OrderedDict = OrderedDict()


def _check_shifts(shifts_px, n: int, like: torch.Tensor) -> torch.Tensor | None:
    if shifts_px is None:
        return None
    s = to_tensor(shifts_px, "shifts_px").to(dtype=like.dtype, device=like.device)
    if s.shape != (n, 2):
        raise ValueError(
            f"Expected 'shifts_px' to have shape ({n}, 2) (ox, oy), got "
            f"{tuple(s.shape)}."
        )
    if not torch.isfinite(s).all():
        raise ValueError("Expected 'shifts_px' to be finite.")
    return s


class FourierProjector:
    """The Fourier transform of one zero-padded volume, ready to cut central slices.

    Parameters
    ----------
    volume : torch.Tensor of shape (N, N, N)
        Density, indexed ``[z, y, x]`` with the origin at ``N // 2``. Gradients flow to
        it when it requires grad.
    pad : int, default 2
        Zero-padding factor before the FFT (RELION's ``padding_factor``); 2 keeps the
        trilinear interpolation error small.
    gridding_correction : bool, default True
        Pre-divide by the trilinear kernel's real-space transform, as RELION does, but
        separable: ``sinc^2`` per axis where RELION's is radial (module docstring).
    frequencies : {"circle", "square"}, default "circle"
        Which image frequencies to sample: ``"circle"`` keeps ``|k| <= N / 2`` and
        zeroes the corners of the spectrum, as RELION does; ``"square"`` keeps every
        frequency of the ``N x N`` image grid (3-D samples beyond the volume's own
        frequency cube are zero). ``"square"`` is the accurate mode for maps with
        power up to Nyquist (small boxes, Fourier-cropped maps): see
        ``docs/conventions.md`` for when it matters.

    Examples
    --------
    >>> vol = torch.zeros(16, 16, 16); vol[8, 8, 8] = 1.0
    >>> proj = FourierProjector(vol)
    >>> img = proj(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    >>> tuple(img.shape), round(float(img.sum()), 3)
    ((1, 16, 16), 1.0)
    """

    def __init__(
        self,
        volume,
        pad: int = 2,
        gridding_correction: bool = True,
        *,
        frequencies: str = "circle",
    ):
        vol = check_volume(volume)
        if not isinstance(pad, int) or pad < 1:
            raise ValueError(f"Expected 'pad' to be an integer >= 1, got {pad!r}.")
        if frequencies not in ("circle", "square"):
            raise ValueError(
                "Expected 'frequencies' to be 'circle' or 'square', got "
                f"{frequencies!r}."
            )
        self.frequencies = frequencies
        self.box_size = vol.shape[-1]
        self.pad = pad
        self.padded_size = pad * self.box_size
        self.dtype = vol.dtype
        self.device = vol.device
        if gridding_correction:
            vol = gridding_correct(vol, self.padded_size)
        n, p = self.box_size, self.padded_size
        start = p // 2 - n // 2
        padded = F.pad(vol, (start, p - n - start) * 3)
        ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)))
        if p % 2 == 0:
            # Index 0 holds frequency -P/2; append +P/2 (the same value, by
            # periodicity) so that the grid is symmetric about its centre and
            # symmetry mates and Friedel pairs are interpolated alike.
            for dim in range(3):
                ft = torch.cat((ft, ft.narrow(dim, 0, 1)), dim=dim)
        # (1, 2, M, M, M): real and imaginary parts as channels for grid_sample.
        self._ft = torch.stack((ft.real, ft.imag))[None]
        self._grid_size = ft.shape[-1]
        self._inside = None  # frequencies sampled, computed on first use

    def __call__(self, quaternions, shifts_px=None, ctf=None) -> torch.Tensor:
        """Project at ``quaternions`` (see :func:`project`)."""
        quat = as_quaternions(quaternions, "quaternions").to(self.dtype)
        quat = quat.to(self.device)
        if quat.ndim != 2:
            raise ValueError(
                f"Expected 'quaternions' to have shape (n, 4), got {tuple(quat.shape)}."
            )
        ft_slice = self.central_slice(quat)
        n = quat.shape[0]
        shifts = _check_shifts(shifts_px, n, quat)
        if shifts is not None:
            ft_slice = ft_slice * phase_shift(shifts, self.box_size, half=True)
        if ctf is not None:
            ft_slice = ft_slice * _ctf_half(ctf, n, self.box_size, quat)
        img = torch.fft.irfft2(ft_slice, s=(self.box_size, self.box_size))
        return torch.fft.fftshift(img, dim=(-2, -1))

    def central_slice(self, quat: torch.Tensor) -> torch.Tensor:
        """Half-plane central slices ``F_V(R^T k)``, shape ``(n, N, N // 2 + 1)``.

        Frequencies are in ``torch.fft.rfft2`` layout with the real-space origin at
        index 0; with ``frequencies="circle"``, values outside the Nyquist circle are
        zero (and are never sampled).
        """
        n = self.box_size
        if self._inside is None:  # frequencies sampled, cached
            self._inside = nyquist_half_plane(
                n,
                square=self.frequencies == "square",
                dtype=self.dtype,
                device=self.device,
            )
        index, k2d = self._inside  # (K,), (K, 2) in cycles per box
        values = self.sample_slices(quat[:, None, :], k2d)  # (b, K)
        out = values.new_zeros(quat.shape[0], n * (n // 2 + 1))
        out = out.index_copy(1, index, values)
        return out.reshape(quat.shape[0], n, n // 2 + 1)

    def sample_slices(self, quaternions, freqs, *, split: bool = False):
        """Central-slice values ``F_V(R^T (kx, ky, 0)^T)`` at any 2-D frequencies.

        The padded transform is sampled by trilinear interpolation, exactly as
        :func:`project` samples it: at integer frequencies within the Nyquist circle
        these are the transforms of :func:`project`'s images.

        Parameters
        ----------
        quaternions : torch.Tensor of shape (..., 4)
            Rotations ``(w, x, y, z)``, normalised here (our ``R`` = RELION's ``A``).
        freqs : torch.Tensor of shape (..., 2)
            Frequencies ``(kx, ky)`` in cycles per box (``N`` times cycles per pixel),
            meaningful within the Nyquist circle ``|k| <= N / 2``; beyond it the
            samples fade to zero at the padded grid's edge. The batch shapes of
            ``quaternions`` and ``freqs`` broadcast: ``quaternions[:, None]`` with
            ``freqs`` of shape ``(K, 2)`` samples every rotation at every frequency.
        split : bool, default False
            Return the real and imaginary parts stacked first, as one real tensor
            (the interpolation's own layout, no complex copy).

        Returns
        -------
        torch.Tensor of shape (...), complex, or (2, ...) real with ``split``
            ``...`` is the broadcast batch shape. The transform of the projection at
            ``R`` with its origin at the box centre ``N // 2``:
            ``rfft2(ifftshift(image))`` at ``[ky, kx]`` for ``kx >= 0`` (``fft2`` for
            any ``kx``), in the projector's dtype and on its device.

        Examples
        --------
        >>> vol = torch.rand(16, 16, 16, dtype=torch.float64)
        >>> q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, 0.0, 0.8, 0.0]])
        >>> proj = FourierProjector(vol)
        >>> k = torch.tensor([[3.0, -2.0], [0.5, 1.5], [0.0, 0.0]])
        >>> proj.sample_slices(q[:, None], k).shape  # every rotation, every frequency
        torch.Size([2, 3])
        >>> img = project(vol, q)
        >>> ft = torch.fft.rfft2(torch.fft.ifftshift(img, dim=(-2, -1)))
        >>> bool(torch.allclose(proj.sample_slices(q, k[0]), ft[:, -2, 3]))
        True
        """
        kw = {"dtype": self.dtype, "device": self.device}
        rows = quat_to_matrix(to_tensor(quaternions, "quaternions").to(**kw))
        k = to_tensor(freqs, "freqs").to(**kw) * self.pad  # in padded-grid pixels
        # R^T (kx, ky, 0): contract with the first two rows of R.
        k3d = torch.einsum("...i,...ij->...j", k, rows[..., :2, :])
        # grid_sample wants (x, y, z) in [-1, 1] over the grid's indices.
        grid = (k3d + self.padded_size // 2) * (2.0 / (self._grid_size - 1)) - 1.0
        sampled = F.grid_sample(
            self._ft,
            grid.reshape(1, 1, 1, -1, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).reshape(2, *grid.shape[:-1])
        # The padded volume's origin sat at index 0 for its FFT, so the slice describes
        # an image whose origin is at index 0 too.
        return sampled if split else torch.complex(sampled[0], sampled[1])


def phase_shift(shifts_px, box_size: int, *, half: bool = False) -> torch.Tensor:
    """Fourier factors that translate images by ``-shifts_px`` (RELION origins).

    Parameters
    ----------
    shifts_px : torch.Tensor of shape (n, 2)
        RELION origins ``(ox, oy)`` in pixels; the image moves by ``(-ox, -oy)``.
    box_size : int
        Image side ``N``.
    half : bool, default False
        ``rfft2`` layout ``(N, N // 2 + 1)`` instead of ``fft2`` ``(N, N)``.

    Returns
    -------
    torch.Tensor of shape (n, N, N) or (n, N, N // 2 + 1), complex
        ``exp(+2 pi i (kx ox + ky oy) / N)``.
    """
    s = to_tensor(shifts_px, "shifts_px")
    ky, kx = frequency_grid(
        box_size,
        half=half,
        cycles_per="pixel",
        sparse=True,
        dtype=s.dtype,
        device=s.device,
    )
    arg = (
        2 * math.pi * (kx[None] * s[:, 0, None, None] + ky[None] * s[:, 1, None, None])
    )
    return torch.polar(torch.ones_like(arg), arg)


def _ctf_half(ctf, n: int, box_size: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(ctf, CTFParams):
        if len(ctf) not in (1, n):
            raise ValueError(
                f"Expected 'ctf' to describe 1 or {n} particles, got {len(ctf)}."
            )
        values = compute_ctf(ctf, box_size, dtype=like.dtype, device=like.device)
    else:
        values = to_tensor(ctf, "ctf").to(dtype=like.dtype, device=like.device)
        if values.shape[-2:] != (box_size, box_size):
            raise ValueError(
                f"Expected 'ctf' to be CTFParams or an array (n, {box_size}, "
                f"{box_size}) in fft2 layout, got {tuple(values.shape)}."
            )
    return values[..., : box_size // 2 + 1]


def _get_projector(
    volume_in, volume: torch.Tensor, pad: int, frequencies: str = "circle"
) -> FourierProjector:
    """The cached projector of a volume, per volume, device, dtype, pad, frequencies.

    A tensor is recognised by identity (a weak reference, so a freed tensor whose
    memory is reused is never mistaken for it) and its version counter (in-place
    changes invalidate the entry); an array by a digest of its bytes.
    """
    if volume.requires_grad:
        return FourierProjector(volume, pad=pad, frequencies=frequencies)
    meta = (tuple(volume.shape), volume.dtype, str(volume.device), pad, frequencies)
    if isinstance(volume_in, torch.Tensor):
        key = ("tensor", id(volume_in), volume_in._version, *meta)
    else:
        data = np.ascontiguousarray(volume_in)
        key = ("array", hashlib.blake2b(data.tobytes(), digest_size=16).digest(), *meta)
    entry = _cache.get(key)
    if entry is not None and (entry[0] is None or entry[0]() is volume_in):
        _cache.move_to_end(key)
        return entry[1]
    proj = FourierProjector(volume, pad=pad, frequencies=frequencies)
    ref = weakref.ref(volume_in) if isinstance(volume_in, torch.Tensor) else None
    _cache[key] = (ref, proj)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return proj


def project(
    volume,
    quaternions,
    shifts_px=None,
    ctf=None,
    *,
    pad: int = 2,
    frequencies: str = "circle",
):
    """Project a volume at many orientations (Fourier-slice, differentiable).

    Parameters
    ----------
    volume : torch.Tensor or numpy.ndarray of shape (N, N, N)
        Density ``[z, y, x]``, origin at ``N // 2``. The padded FFT is cached per
        volume (tensor identity and version, or array contents), device, dtype and
        ``pad`` (up to 4 volumes), unless it requires grad.
    quaternions : torch.Tensor of shape (n, 4)
        Orientations ``(w, x, y, z)`` (our ``R`` = RELION's ``A``).
    shifts_px : torch.Tensor of shape (n, 2), optional
        RELION origins ``(ox, oy)`` in pixels: each image moves by ``(-ox, -oy)``.
    ctf : CTFParams or torch.Tensor of shape (n, N, N), optional
        Multiplies each image's transform (``fft2`` layout).
    pad : int, default 2
        Zero-padding factor of the volume before its FFT.
    frequencies : {"circle", "square"}, default "circle"
        ``"circle"``: RELION's ``|k| <= N / 2``; ``"square"``: every frequency of the
        image grid, the accurate mode (see :class:`FourierProjector`).

    Returns
    -------
    torch.Tensor of shape (n, N, N)
        Images ``[y, x]`` with the origin at ``N // 2``, in the volume's dtype and on
        its device (numpy in, numpy out).

    Examples
    --------
    >>> vol = torch.rand(16, 16, 16, dtype=torch.float64)
    >>> img = project(vol, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    >>> img.shape
    torch.Size([1, 16, 16])
    """
    vol = check_volume(volume)
    out = _get_projector(volume, vol, pad, frequencies)(quaternions, shifts_px, ctf)
    return back_like(out, volume)


def project_real_space(volume, quaternions, shifts_px=None):
    """Reference projector: rotate in real space (trilinear) and sum along ``z``.

    ``img(x, y) = sum_z V(R^T (x + ox, y + oy, z))`` with ``(ox, oy)`` = ``shifts_px``.
    Costs ``N^3`` samples per image: for tests and small boxes.

    Parameters
    ----------
    volume : torch.Tensor of shape (N, N, N)
        Density ``[z, y, x]``, origin at ``N // 2``.
    quaternions : torch.Tensor of shape (n, 4)
        Orientations ``(w, x, y, z)``.
    shifts_px : torch.Tensor of shape (n, 2), optional
        RELION origins in pixels.

    Returns
    -------
    torch.Tensor of shape (n, N, N)
    """
    vol = check_volume(volume)
    quat = as_quaternions(quaternions, "quaternions").to(vol.dtype).to(vol.device)
    if quat.ndim != 2:
        raise ValueError(
            f"Expected 'quaternions' to have shape (n, 4), got {tuple(quat.shape)}."
        )
    n_img, n = quat.shape[0], vol.shape[-1]
    shifts = _check_shifts(shifts_px, n_img, quat)
    r = torch.arange(n, dtype=vol.dtype, device=vol.device) - n // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack((x, y, z), dim=-1)  # (z, y, x, 3) as (x, y, z)
    images = []
    for i in range(n_img):
        p = pts
        if shifts is not None:
            p = p + torch.cat((shifts[i], shifts.new_zeros(1)))
        src = p @ quat_to_matrix(quat[i])  # rows: (R^T p)^T = p^T R
        grid = (src + n // 2) * (2.0 / (n - 1)) - 1.0
        rotated = F.grid_sample(
            vol[None, None], grid[None], mode="bilinear", align_corners=True
        )[0, 0]
        images.append(rotated.sum(dim=0))
    return back_like(torch.stack(images), volume)
