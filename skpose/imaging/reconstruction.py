"""Reconstruction by Fourier insertion, half maps, and the Fourier shell correlation.

The reconstruction is the inverse of :func:`skpose.imaging.projection.project`, in
the same conventions (``docs/conventions.md``): an image at rotation ``R`` (our ``R`` =
RELION's ``A``) is the central slice ``F_img(k) = F_V(R^T (kx, ky, 0)^T)`` of the
volume's transform, images are ``[y, x]`` with the origin at ``N // 2``, volumes
``[z, y, x]`` with the origin at ``N // 2``, and ``shifts_px`` are RELION origins.

Algorithm (:class:`BackProjector`), RELION's backprojection with trilinear insertion:

1. Each image is transformed (``rfft2``, origin moved to index 0) and phase-shifted by
   ``+origin`` to centre it (the conjugate of
   :func:`skpose.imaging.projection.phase_shift`).
2. With a CTF, the transform is multiplied by the CTF and the CTF squared is the
   sample's weight (without a CTF the weight is 1).
3. Every frequency within the Nyquist circle ``|k| <= N / 2`` is inserted at
   ``pad * R^T (kx, ky, 0)`` in a zero-padded 3-D Fourier grid of side ``P = pad N``:
   ``CTF F`` is added to a data grid and ``CTF^2`` to a weight grid, spread over the
   8 neighbouring voxels with trilinear weights (``index_add_``). The image's half
   plane ``kx >= 0`` is inserted (the columns ``kx = 0`` and ``N / 2`` at half
   weight) into a half grid ``x >= 0`` (``rfftn`` layout): a point at ``x < 0`` goes
   in as its Friedel mate (``-k``, complex conjugate), so the grid is Hermitian by
   construction.
4. Symmetry: each image is inserted at every symmetry mate ``q * s`` (exact; the cost
   grows with the group order).
5. Normalisation (a Wiener-like filter): ``F = data / (weight + c / pad^3)`` with
   ``c = wiener_constant``. The weights count CTF²-weighted image samples; a voxel of
   the map's own ``N^3`` Fourier grid spans ``pad^3`` padded voxels, so ``c`` is an
   inverse SNR per image Fourier sample at the map's sampling, independent of ``pad``
   (RELION's ``1 / tau^2`` with its ``padding^3`` correction). For scale: ``n`` images
   at uniform poses give a voxel at radius ``r`` pixels about ``n / (2 r)`` samples.
6. Inverse FFT, crop the central ``N^3``, and gridding correction: divide by
   ``sinc^2(x / P) sinc^2(y / P) sinc^2(z / P)``, the real-space transform of the
   (separable) trilinear kernel on the padded grid (the inserted samples are convolved
   with that kernel; the same correction :mod:`skpose.imaging.projection` applies
   before projecting). RELION divides by the radial ``sinc^2(|r| / P)`` instead: for
   ``pad = 2`` our divisor is up to 0.3 % larger within the sphere ``|r| <= N / 2``
   and 3 % larger at the box corners (``docs/conventions.md``).

The FSC (:func:`fsc`) is computed over shells ``round(|k|) = 0 .. N // 2``;
:func:`resolution_at` reads where it drops below a threshold (0.143 for half maps).
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np
import torch

from skpose._validation import (
    as_quaternions,
    back_like,
    check_finite,
    check_volume,
    to_numpy,
    to_tensor,
)
from skpose.geometry.rotations import quat_multiply, quat_to_matrix
from skpose.geometry.symmetry import symmetry_group
from skpose.imaging._fourier import frequency_grid, gridding_correct, nyquist_half_plane
from skpose.imaging.ctf import CTFParams, compute_ctf
from skpose.imaging.projection import phase_shift

__all__ = [
    "BackProjector",
    "fsc",
    "fsc_resolution",
    "half_maps",
    "reconstruct",
    "resolution_at",
]

# (image, frequency) samples scattered at once. On CPU, small enough that each
# element-wise operation stays under torch's parallel grain size (32768 elements) and
# runs without thread synchronisation, which is faster on shared, busy cores; large on
# GPUs, where each operation is a kernel launch.
_SAMPLES_PER_CHUNK = {"cpu": 1 << 13, "cuda": 1 << 20}


def _check_number(value, name: str, expected: str, ok) -> float:
    """``value`` as a float if it is a real number with ``ok(value)``, else an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
        raise ValueError(f"Expected '{name}' to be {expected}, got {value!r}.")
    return float(value)


def _check_int(value, name: str, minimum: int = 1) -> int:
    integral = isinstance(value, numbers.Integral)
    expected = f"an integer >= {minimum}"
    return int(
        _check_number(value, name, expected, lambda v: integral and v >= minimum)
    )


class BackProjector:
    """A padded 3-D Fourier grid that accumulates images, then gives a volume.

    Use it to stream images from any source (stacks on disk, several files) into one
    reconstruction: call :meth:`insert` on each batch and :meth:`reconstruct` once.
    Memory: ``3 P^2 (P // 2 + 2)`` numbers of ``dtype`` with ``P = pad * box_size``.

    Parameters
    ----------
    box_size : int
        Image and volume side ``N`` in pixels.
    pad : int, default 2
        Oversampling of the Fourier grid (RELION's ``padding_factor``).
    symmetry : str, default "C1"
        Point group (see :func:`skpose.geometry.symmetry.symmetry_group`); each image is
        inserted at all its mates ``q * s``.
    dtype : torch.dtype, default torch.float32
        Of the accumulation and of the result.
    device : torch.device or str, optional
        Where the grid lives (default: CPU).

    Examples
    --------
    >>> bp = BackProjector(16)
    >>> bp.insert(torch.zeros(2, 16, 16), torch.tensor([[1.0, 0, 0, 0]] * 2))
    >>> bp.reconstruct().shape
    torch.Size([16, 16, 16])
    """

    def __init__(
        self,
        box_size: int,
        *,
        pad: int = 2,
        symmetry: str = "C1",
        dtype=torch.float32,
        device=None,
    ):
        self.box_size = _check_int(box_size, "box_size", 2)
        self.pad = _check_int(pad, "pad")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"Expected 'dtype' to be torch.float32 or torch.float64, got {dtype!r}."
            )
        self.symmetry = symmetry
        self.dtype = dtype
        self.device = torch.device("cpu" if device is None else device)
        self._group = symmetry_group(symmetry, dtype=dtype, device=self.device)
        p = self.pad * self.box_size
        self.padded_size = p
        self.n_inserted = 0
        # Grid [kz, ky, kx] with kx = 0 .. P // 2 + 1 (the last column is folded onto
        # its Friedel mates at the end); columns: Re data, Im data, weight.
        self._acc = torch.zeros(
            p * p * (p // 2 + 2), 3, dtype=dtype, device=self.device
        )
        self._setup_frequencies()

    def _setup_frequencies(self) -> None:
        """Half-plane frequencies inside the Nyquist circle, and their multiplicity."""
        n = self.box_size
        self._index, k2d = nyquist_half_plane(n, dtype=self.dtype, device=self.device)
        self._k2d = k2d * self.pad
        # Columns kx = 0 (and kx = N/2) hold both members of their Friedel pairs, which
        # the Hermitian grid adds again: half weight keeps every frequency counted once.
        kx_in = k2d[:, 0]
        edge = (kx_in == 0) | ((n % 2 == 0) & (kx_in == n // 2))
        self._multiplicity = torch.where(edge, 0.5, 1.0).to(self.dtype)

    def insert(self, images, quaternions, shifts_px=None, ctf=None) -> None:
        """Add a batch of images to the grid.

        Parameters
        ----------
        images : torch.Tensor or numpy.ndarray of shape (n, N, N)
            Particle images ``[y, x]``, origin at ``N // 2``.
        quaternions : torch.Tensor of shape (n, 4)
            Orientations ``(w, x, y, z)`` (our ``R`` = RELION's ``A``).
        shifts_px : torch.Tensor of shape (n, 2), optional
            RELION origins ``(ox, oy)`` in pixels; the images are moved back by
            ``(+ox, +oy)`` before insertion.
        ctf : CTFParams or torch.Tensor of shape (n, N, N), optional
            The images' CTF (``fft2`` layout); the insertion is CTF-weighted.
        """
        kw = {"device": self.device, "dtype": self.dtype}
        imgs = _check_image_batch(images, self.box_size).to(**kw)
        n = imgs.shape[0]
        quat = _check_quaternions(quaternions, n).to(**kw)
        ft = torch.fft.rfft2(torch.fft.ifftshift(imgs, dim=(-2, -1)))
        if shifts_px is not None:
            shifts = _check_shifts(shifts_px, n).to(**kw)
            ft = ft * phase_shift(shifts, self.box_size, half=True).conj()
        ft = ft.reshape(n, -1)[:, self._index]
        weight = self._multiplicity.expand(n, -1)
        if ctf is not None:
            c = _ctf_batch(ctf, n, self.box_size, self.dtype, self.device)
            c = c[..., : self.box_size // 2 + 1].reshape(n, -1)[:, self._index]
            ft, weight = ft * c, weight * c * c
        ft = ft * self._multiplicity
        rot = quat_to_matrix(quat_multiply(quat[:, None, :], self._group))
        chunk = _SAMPLES_PER_CHUNK.get(self.device.type, 1 << 16)
        step = max(1, chunk // max(1, self._k2d.shape[0]))
        for mate in range(rot.shape[1]):
            for start in range(0, n, step):
                sl = slice(start, start + step)
                self._scatter(ft[sl], weight[sl], rot[sl, mate])
        self.n_inserted += n

    def _scatter(self, values, weights, rot) -> None:
        """Trilinear insertion of ``values`` (b, K) at ``R^T k`` into the half grid.

        A point at ``x < 0`` is replaced by its Friedel mate (``-k``, conjugate value),
        so every neighbour has ``0 <= x <= P // 2 + 1``; :meth:`_hermitian_grids` adds
        the mates that belong on the planes ``x = 0`` and folds ``x = P // 2 + 1``.
        """
        p, h = self.padded_size, self.padded_size // 2 + 2
        k3d = torch.einsum("ki,bij->bkj", self._k2d, rot[:, :2, :])  # (b, K, 3)
        sign = torch.where(k3d[..., :1] < 0, -1.0, 1.0).to(k3d.dtype)
        k3d = k3d * sign
        src = k3d.new_empty((*values.shape, 3))
        src[..., 0], src[..., 1], src[..., 2] = values.real, values.imag, weights
        src[..., 1] *= sign[..., 0]
        # floor(k) as trunc(k + P) - P (|k| <= P / 2): the cast is cheap, while
        # torch.floor enters a parallel region even for small tensors (slow on busy
        # cores).
        base = (k3d + p).to(torch.long) - p
        frac = k3d - base.to(k3d.dtype)
        bx = base[..., 0]
        by = [torch.remainder(base[..., 1] + d, p) * h for d in (0, 1)]
        bz = [torch.remainder(base[..., 2] + d, p) * (p * h) for d in (0, 1)]
        fx, fy, fz = frac.unbind(-1)
        wx, wy, wz = (1 - fx, fx), (1 - fy, fy), (1 - fz, fz)
        for dz in (0, 1):
            for dy in (0, 1):
                wzy = wz[dz] * wy[dy]
                zy = bz[dz] + by[dy]
                for dx in (0, 1):
                    rows = src * (wzy * wx[dx])[..., None]
                    flat = (zy + bx + dx).reshape(-1)
                    self._acc.index_add_(0, flat, rows.reshape(-1, 3))

    def _hermitian_grids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Data (complex) and weight grids ``(P, P, P // 2 + 1)``, ``[kz, ky, kx]``.

        Completes the Hermitian half grid: the column ``x = P // 2 + 1`` is the mirror
        of ``x = P - (P // 2 + 1)`` and is added there as ``conj(G(-k))``; the planes
        ``x = 0`` (and ``x = P / 2``, P even) are their own mirrors and receive
        ``conj(G(-k))`` of their own values.
        """
        p = self.padded_size
        acc = self._acc.reshape(p, p, p // 2 + 2, 3)
        data = torch.complex(acc[..., :-1, 0], acc[..., :-1, 1])
        weight = acc[..., :-1, 2].clone()
        extra = acc[..., -1, :]
        folded = _negate_plane(torch.complex(extra[..., 0], extra[..., 1])).conj()
        data[..., p - (p // 2 + 1)] += folded
        weight[..., p - (p // 2 + 1)] += _negate_plane(extra[..., 2])
        for ix in [0, p // 2] if p % 2 == 0 else [0]:
            d, w = data[..., ix], weight[..., ix]
            data[..., ix] = d + _negate_plane(d).conj()
            weight[..., ix] = w + _negate_plane(w)
        return data, weight

    def reconstruct(
        self, *, wiener_constant: float = 1e-2, gridding_correction: bool = True
    ) -> torch.Tensor:
        """Normalise the accumulated grid and transform it back to a volume.

        Parameters
        ----------
        wiener_constant : float, default 0.01
            ``c`` in ``F = data / (weight + c / pad^3)``: an inverse SNR per image
            Fourier sample (module docstring). 0 gives the plain weighted average
            (voxels without weight stay 0); larger values damp poorly sampled
            frequencies and CTF zeros.
        gridding_correction : bool, default True
            Divide by the transform of the trilinear kernel, ``sinc^2(x / P)`` per
            axis (module docstring, step 6).

        Returns
        -------
        torch.Tensor of shape (N, N, N)
            Density ``[z, y, x]``, origin at ``N // 2``, on the grid's device and dtype.
        """
        wiener = _check_wiener(wiener_constant)
        data, weight = self._hermitian_grids()
        p, n = self.padded_size, self.box_size
        tau = wiener / self.pad**3
        if tau > 0:
            ft = data / (weight + tau)
        else:
            has = weight > 0
            ft = torch.where(has, data / torch.where(has, weight, 1.0), 0.0)
        vol = torch.fft.irfftn(ft, s=(p, p, p), dim=(0, 1, 2))
        vol = torch.fft.fftshift(vol)
        start = p // 2 - n // 2
        vol = vol[start : start + n, start : start + n, start : start + n]
        if gridding_correction:
            vol = gridding_correct(vol, p)
        return vol.contiguous()


def _negate_plane(plane: torch.Tensor) -> torch.Tensor:
    """``plane[(-iz) % P, (-iy) % P]``: a plane's values at the negated frequencies."""
    return torch.roll(torch.flip(plane, (0, 1)), (1, 1), (0, 1))


def _check_wiener(value) -> float:
    return _check_number(
        value,
        "wiener_constant",
        "a finite number >= 0",
        lambda v: math.isfinite(v) and v >= 0,
    )


def _check_image_batch(images, box_size: int) -> torch.Tensor:
    t = to_tensor(images, "images")
    if t.ndim != 3 or t.shape[-2:] != (box_size, box_size):
        raise ValueError(
            f"Expected 'images' to have shape (n, {box_size}, {box_size}), got "
            f"{tuple(t.shape)}."
        )
    check_finite(t, "images")
    return t


def _check_quaternions(quaternions, n: int) -> torch.Tensor:
    quat = as_quaternions(quaternions, "quaternions")
    if quat.ndim != 2 or quat.shape[0] != n:
        raise ValueError(
            f"Expected 'quaternions' to have shape ({n}, 4), one per image, got "
            f"{tuple(quat.shape)}."
        )
    return quat


def _check_shifts(shifts_px, n: int) -> torch.Tensor:
    s = to_tensor(shifts_px, "shifts_px")
    if s.shape != (n, 2):
        raise ValueError(
            f"Expected 'shifts_px' to have shape ({n}, 2) (ox, oy), got "
            f"{tuple(s.shape)}."
        )
    check_finite(s, "shifts_px")
    return s


def _ctf_batch(ctf, n: int, box_size: int, dtype, device) -> torch.Tensor:
    """CTF values ``(n, N, N)`` (``fft2`` layout) of a batch."""
    if isinstance(ctf, CTFParams):
        if len(ctf) not in (1, n):
            raise ValueError(
                f"Expected 'ctf' to describe 1 or {n} particles, got {len(ctf)}."
            )
        return compute_ctf(ctf, box_size, dtype=dtype, device=device)
    values = to_tensor(ctf, "ctf").to(dtype=dtype, device=device)
    if values.shape not in ((n, box_size, box_size), (box_size, box_size)):
        raise ValueError(
            f"Expected 'ctf' to be CTFParams or an array ({n}, {box_size}, "
            f"{box_size}) in fft2 layout, got {tuple(values.shape)}."
        )
    check_finite(values, "ctf")
    return values


def _check_inputs(images, quaternions, shifts_px, ctf) -> tuple[int, int]:
    """Shapes and lengths, checked before any work (contents are checked per batch)."""
    shape = tuple(getattr(images, "shape", np.shape(images)))
    if len(shape) != 3 or shape[1] != shape[2] or shape[0] < 1:
        raise ValueError(
            f"Expected 'images' to have shape (n, N, N) with n >= 1, got {shape}."
        )
    n, box = shape[0], shape[1]
    _check_quaternions(quaternions, n)
    if shifts_px is not None:
        _check_shifts(shifts_px, n)
    if isinstance(ctf, CTFParams):
        if len(ctf) not in (1, n):
            raise ValueError(
                f"Expected 'ctf' to describe 1 or {n} particles, got {len(ctf)}."
            )
    elif ctf is not None:
        cshape = tuple(getattr(ctf, "shape", np.shape(ctf)))
        if cshape not in ((n, box, box), (box, box)):
            raise ValueError(
                f"Expected 'ctf' to be CTFParams or an array ({n}, {box}, {box}) "
                f"in fft2 layout, got {cshape}."
            )
    return n, box


def _take(array, rows: np.ndarray):
    """``array[rows]`` for numpy arrays, tensors, lists and CTFParams; None stays."""
    if array is None or (isinstance(array, CTFParams) and len(array) == 1):
        return array
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(rows, device=array.device)]
    if isinstance(array, CTFParams):
        return array[rows]
    return np.asarray(array)[rows]


def _reconstruct_rows(images, quaternions, shifts_px, ctf, rows, options: dict):
    """Reconstruct from ``images[rows]`` streamed in batches (see ``reconstruct``)."""
    if not isinstance(images, torch.Tensor | np.ndarray):
        images = np.asarray(images)
    batch = _check_int(options["batch_size"], "batch_size")
    wiener = _check_wiener(options["wiener_constant"])
    device = options["device"]
    if device is None:
        device = images.device if isinstance(images, torch.Tensor) else "cpu"
    double = getattr(images, "dtype", None) in (torch.float64, np.float64)
    bp = BackProjector(
        images.shape[-1],
        pad=options["pad"],
        symmetry=options["symmetry"],
        dtype=torch.float64 if double else torch.float32,
        device=device,
    )
    for start in range(0, len(rows), batch):
        idx = rows[start : start + batch]
        sel = torch.as_tensor(idx) if isinstance(images, torch.Tensor) else idx
        c = ctf if getattr(ctf, "ndim", 0) == 2 else _take(ctf, idx)
        bp.insert(images[sel], _take(quaternions, idx), _take(shifts_px, idx), c)
    vol = bp.reconstruct(
        wiener_constant=wiener, gridding_correction=options["gridding_correction"]
    )
    return back_like(vol, images)


def reconstruct(
    images,
    quaternions,
    shifts_px=None,
    *,
    ctf=None,
    symmetry: str = "C1",
    pad: int = 2,
    wiener_constant: float = 1e-2,
    batch_size: int = 256,
    gridding_correction: bool = True,
    device=None,
):
    """Reconstruct a volume from oriented images by Fourier insertion.

    The inverse of :func:`skpose.imaging.projection.project` (same conventions); the
    algorithm is in this module's docstring. Images are streamed in batches of
    ``batch_size``, so a memory-mapped stack is never loaded whole.

    Parameters
    ----------
    images : torch.Tensor or numpy.ndarray of shape (n, N, N)
        Particle images ``[y, x]``, origin at ``N // 2`` (a ``numpy.memmap`` works).
    quaternions : array of shape (n, 4)
        Orientations ``(w, x, y, z)`` (our ``R`` = RELION's ``A``).
    shifts_px : array of shape (n, 2), optional
        RELION origins ``(ox, oy)`` in pixels (the particle is the centred projection
        moved by ``(-ox, -oy)``).
    ctf : CTFParams or array of shape (n, N, N) or (N, N), optional
        The images' CTF (``fft2`` layout). Insertion is CTF-weighted (``CTF F`` as
        data, ``CTF^2`` as weight), so the CTF is corrected by the Wiener-like filter.
    symmetry : str, default "C1"
        Point group; each image is inserted at every mate ``q * s``.
    pad : int, default 2
        Oversampling of the Fourier grid. 2 is best for trilinear insertion: with a
        larger pad an image's samples lie ``pad`` voxels apart and leave gaps.
    wiener_constant : float, default 0.01
        Added to the weights (see :meth:`BackProjector.reconstruct`); raise it for
        noisy data with sparse views.
    batch_size : int, default 256
        Images transformed and inserted at once.
    gridding_correction : bool, default True
        Divide by the real-space transform of the trilinear kernel.
    device : torch.device or str, optional
        Where to compute (default: the images' device, CPU for numpy).

    Returns
    -------
    torch.Tensor or numpy.ndarray of shape (N, N, N)
        Density ``[z, y, x]``, origin at ``N // 2``; numpy when ``images`` is numpy.
        float64 for float64 images, float32 otherwise.

    Examples
    --------
    >>> from skpose.imaging.projection import project
    >>> from skpose.geometry.rotations import random_quaternions
    >>> vol = torch.zeros(16, 16, 16); vol[8, 8, 11] = 1.0
    >>> q = random_quaternions(200, random_state=0, dtype=torch.float32)
    >>> rec = reconstruct(project(vol, q), q)
    >>> tuple(int(i) for i in np.unravel_index(int(rec.argmax()), rec.shape))
    (8, 8, 11)
    """
    n, _ = _check_inputs(images, quaternions, shifts_px, ctf)
    options = {
        "symmetry": symmetry,
        "pad": pad,
        "wiener_constant": wiener_constant,
        "batch_size": batch_size,
        "gridding_correction": gridding_correction,
        "device": device,
    }
    return _reconstruct_rows(images, quaternions, shifts_px, ctf, np.arange(n), options)


def random_halves(n: int, random_state=None) -> np.ndarray:
    """A random split of ``n`` images into halves 1 and 2 (``n // 2`` in half 1).

    The split :func:`half_maps` makes by default, for streaming the same halves into
    two :class:`BackProjector` objects.

    Examples
    --------
    >>> np.bincount(random_halves(7, random_state=0))[1:].tolist()
    [3, 4]
    """
    perm = np.random.default_rng(random_state).permutation(n)
    return np.where(np.isin(np.arange(n), perm[: n // 2]), 1, 2)


def _check_subset(subset, n: int) -> np.ndarray:
    s = to_numpy(subset)
    if s.shape != (n,) or not np.isin(s, (1, 2)).all():
        raise ValueError(
            f"Expected 'subset' to have shape ({n},) with values 1 or 2 "
            f"(rlnRandomSubset), got shape {s.shape}."
        )
    if not ((s == 1).any() and (s == 2).any()):
        raise ValueError(
            "Expected 'subset' to hold both 1 and 2 (two non-empty halves)."
        )
    return s.astype(int)


def half_maps(
    images,
    quaternions,
    shifts_px=None,
    *,
    subset=None,
    random_state=None,
    **options,
):
    """Two independent reconstructions from the two halves of the data.

    Parameters
    ----------
    images, quaternions, shifts_px
        As in :func:`reconstruct`.
    subset : array of shape (n,) of 1 and 2, optional
        Which half each image belongs to (RELION's ``rlnRandomSubset``). Default: a
        random split into halves of ``n // 2`` and ``n - n // 2`` images.
    random_state : None, int or numpy.random.Generator
        Seeds the random split (ignored with ``subset``).
    **options
        ``ctf``, ``symmetry``, ``pad``, ``wiener_constant``, ``batch_size``,
        ``gridding_correction``, ``device``: as in :func:`reconstruct`.

    Returns
    -------
    tuple of two arrays of shape (N, N, N)
        The reconstructions from subset 1 and subset 2 (numpy for numpy ``images``).

    Examples
    --------
    >>> from skpose.geometry.rotations import random_quaternions
    >>> q = random_quaternions(6, random_state=0)
    >>> m1, m2 = half_maps(np.zeros((6, 16, 16)), q.numpy(), random_state=0)
    >>> m1.shape, m2.shape
    ((16, 16, 16), (16, 16, 16))
    """
    defaults = {
        name: p.default
        for name, p in inspect.signature(reconstruct).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"half_maps() got unexpected keyword arguments {unknown}.")
    options = {k: options.get(k, v) for k, v in defaults.items()}
    ctf = options.pop("ctf")
    n, _ = _check_inputs(images, quaternions, shifts_px, ctf)
    if n < 2:
        raise ValueError(f"Expected at least 2 images for two half maps, got {n}.")
    subset = random_halves(n, random_state) if subset is None else subset
    subset = _check_subset(subset, n)
    return tuple(
        _reconstruct_rows(
            images, quaternions, shifts_px, ctf, np.flatnonzero(subset == h), options
        )
        for h in (1, 2)
    )


def _check_pair(map1, map2, mask):
    v1 = check_volume(map1, "map1")
    v2 = check_volume(map2, "map2")
    if v1.shape != v2.shape:
        raise ValueError(
            "Expected 'map1' and 'map2' to have the same shape, got "
            f"{tuple(v1.shape)} and {tuple(v2.shape)}."
        )
    v2 = v2.to(device=v1.device, dtype=v1.dtype)
    if mask is not None:
        m = check_volume(mask, "mask").to(device=v1.device, dtype=v1.dtype)
        if m.shape != v1.shape:
            raise ValueError(
                f"Expected 'mask' to have the maps' shape {tuple(v1.shape)}, got "
                f"{tuple(m.shape)}."
            )
        v1, v2 = v1 * m, v2 * m
    return v1, v2


def fsc(map1, map2, *, pixel_size_angstrom: float = 1.0, mask=None):
    """Fourier shell correlation of two maps.

    ``FSC(r) = Re sum F1 conj(F2) / sqrt(sum |F1|^2 sum |F2|^2)`` over the shell of
    frequencies with ``round(|k|) = r`` (``k`` in cycles per box), ``r = 0 .. N // 2``.
    A shell where either map has no power gets 0.

    Parameters
    ----------
    map1, map2 : torch.Tensor or numpy.ndarray of shape (N, N, N)
        Maps ``[z, y, x]`` on the same grid.
    pixel_size_angstrom : float, default 1.0
        Voxel size, for the frequencies.
    mask : array of shape (N, N, N), optional
        Real-space mask multiplying both maps first (a soft mask avoids ringing).

    Returns
    -------
    frequencies : array of shape (N // 2 + 1,)
        Shell frequencies ``r / (N * pixel_size_angstrom)`` in 1/Angstrom.
    fsc : array of shape (N // 2 + 1,)
        Correlation per shell, in [-1, 1]. numpy when ``map1`` is numpy.

    Examples
    --------
    >>> vol = np.random.default_rng(0).standard_normal((16, 16, 16))
    >>> freq, curve = fsc(vol, vol, pixel_size_angstrom=2.0)
    >>> float(freq[-1]), bool(np.allclose(curve, 1.0))
    (0.25, True)
    """
    _check_number(
        pixel_size_angstrom,
        "pixel_size_angstrom",
        "a finite number > 0",
        lambda v: math.isfinite(v) and v > 0,
    )
    v1, v2 = _check_pair(map1, map2, mask)
    n = v1.shape[-1]
    f1, f2 = torch.fft.rfftn(v1), torch.fft.rfftn(v2)
    kw = {"dtype": v1.dtype, "device": v1.device}
    kz, ky, kx = frequency_grid(n, 3, sparse=True, **kw)
    radius = torch.sqrt(kz**2 + ky**2 + kx**2)
    shell = torch.round(radius).to(torch.long).reshape(-1)
    # Friedel pairs: columns 0 < kx < N/2 stand for two frequencies each.
    mult = torch.full((n // 2 + 1,), 2.0, **kw)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    mult = mult.expand(n, n, -1).reshape(-1)
    keep = shell <= n // 2
    shell, mult = shell[keep], mult[keep]
    terms = torch.stack(
        ((f1 * f2.conj()).real, f1.abs() ** 2, f2.abs() ** 2), dim=-1
    ).reshape(-1, 3)[keep]
    sums = torch.zeros(n // 2 + 1, 3, **kw).index_add_(0, shell, terms * mult[:, None])
    denom = torch.sqrt(sums[:, 1] * sums[:, 2])
    curve = torch.where(denom > 0, sums[:, 0] / torch.where(denom > 0, denom, 1), 0)
    freq = torch.arange(n // 2 + 1, **kw) / (n * pixel_size_angstrom)
    return back_like((freq, curve), map1)


def _check_threshold(threshold) -> None:
    _check_number(threshold, "threshold", "a number in (0, 1)", lambda v: 0 < v < 1)


def resolution_at(frequencies, fsc_values, threshold: float = 0.143) -> float:
    """Resolution (Angstrom) where an FSC curve first drops below ``threshold``.

    The crossing frequency is interpolated linearly between the last shell at or above
    the threshold and the first below it; the resolution is its inverse.

    Parameters
    ----------
    frequencies : array of shape (m,)
        Increasing shell frequencies in 1/Angstrom (as :func:`fsc` returns).
    fsc_values : array of shape (m,)
        The FSC per shell.
    threshold : float, default 0.143
        In (0, 1): 0.143 for half maps (gold standard), 0.5 for a map against a
        noise-free reference.

    Returns
    -------
    float
        Resolution in Angstrom. ``inf`` when the first shell (DC) is already below
        the threshold; ``1 / frequencies[-1]`` (Nyquist for :func:`fsc`'s shells) when
        the curve never drops below it: the resolution is at least that.

    Examples
    --------
    >>> round(resolution_at([0.0, 0.1, 0.2], [1.0, 0.5, 0.0], threshold=0.25), 3)
    6.667
    """
    _check_threshold(threshold)
    freq = to_tensor(frequencies, "frequencies").detach().cpu().double()
    curve = to_tensor(fsc_values, "fsc_values").detach().cpu().double()
    if freq.ndim != 1 or curve.shape != freq.shape or freq.numel() < 2:
        raise ValueError(
            "Expected 'frequencies' and 'fsc_values' to be 1-D of the same length "
            f">= 2, got {tuple(freq.shape)} and {tuple(curve.shape)}."
        )
    check_finite(curve, "fsc_values")
    below = torch.nonzero(curve < threshold).squeeze(1)
    if below.numel() == 0:
        return float(1.0 / freq[-1])
    i = int(below[0])
    if i == 0:
        return math.inf
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    crossing = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return float(1.0 / crossing) if crossing > 0 else math.inf


def fsc_resolution(
    map1, map2, *, pixel_size_angstrom: float = 1.0, threshold: float = 0.143, mask=None
) -> float:
    """Resolution (Angstrom) at which the FSC of two maps drops below ``threshold``.

    ``resolution_at(*fsc(map1, map2, ...), threshold)``: use 0.143 for two half maps
    and 0.5 for a reconstruction against a reference map.

    Parameters
    ----------
    map1, map2 : array of shape (N, N, N)
        Maps ``[z, y, x]`` on the same grid.
    pixel_size_angstrom : float, default 1.0
    threshold : float, default 0.143
    mask : array of shape (N, N, N), optional

    Returns
    -------
    float
        See :func:`resolution_at`.

    Examples
    --------
    >>> vol = np.random.default_rng(0).standard_normal((16, 16, 16))
    >>> fsc_resolution(vol, vol, pixel_size_angstrom=1.5)
    3.0
    """
    _check_threshold(threshold)
    freq, curve = fsc(map1, map2, pixel_size_angstrom=pixel_size_angstrom, mask=mask)
    return resolution_at(freq, curve, threshold)
