"""Image and volume preprocessing: Fourier rescaling, RELION-style normalisation, masks.

Every function takes torch tensors (following their device and dtype) or numpy arrays
(the result is then numpy, of the same dtype). Arrays are laid out as everywhere in
skpose: images ``(..., N, N)`` indexed ``[y, x]``, volumes ``(..., N, N, N)`` indexed
``[z, y, x]``; the centre of a box of side ``N`` is index ``N // 2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from skpose._validation import back_like, check_finite, check_images, to_tensor

__all__ = [
    "RELION_BACKGROUND_FRACTION",
    "circular_mask",
    "fourier_crop",
    "fourier_pad",
    "fourier_resize",
    "normalize_images",
    "phase_flip",
]

#: Default background radius as a fraction of the box side: RELION's extraction uses a
#: background circle of diameter 75% of the box ("Diameter background circle" = -1),
#: i.e. a radius of 0.375 N.
RELION_BACKGROUND_FRACTION = 0.375


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Expected '{name}' to be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(
            f"Expected '{name}' to be an integer >= {minimum}, got {value}."
        )
    return int(value)


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"Expected '{name}' to be a number, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Expected '{name}' to be a finite number >= 0, got {value}.")
    return float(value)


# --------------------------------------------------------------------------------------
# Fourier cropping and padding
# --------------------------------------------------------------------------------------


def _resize_axis(f: torch.Tensor, dim: int, n: int, m: int) -> torch.Tensor:
    """Crop or zero-pad one axis of a centred spectrum (DC at index n // 2) to ``m``.

    Cropping to an even ``m`` folds the dropped ``+m/2`` coefficient onto the kept
    ``-m/2`` one (what sampling on the coarser grid does), so the spectrum stays
    Hermitian. Padding an even ``n`` splits its unpaired Nyquist coefficient in halves
    at ``-n/2`` and ``+n/2``, so that padding then cropping is the identity.
    """
    if m < n:
        start = n // 2 - m // 2
        out = f.narrow(dim, start, m)
        if m % 2 == 0:
            nyquist = f.narrow(dim, start, 1) + f.narrow(dim, start + m, 1)
            out = torch.cat((nyquist, out.narrow(dim, 1, m - 1)), dim=dim)
        return out
    if n % 2 == 0:
        half = f.narrow(dim, 0, 1) / 2
        f = torch.cat((half, f.narrow(dim, 1, n - 1), half), dim=dim)
    size = f.shape[dim]
    before = m // 2 - size // 2
    shape = list(f.shape)
    shape[dim] = before
    zeros_before = f.new_zeros(shape)
    shape[dim] = m - size - before
    return torch.cat((zeros_before, f, f.new_zeros(shape)), dim=dim)


def _check_box(t: torch.Tensor, ndim: int) -> str:
    name = "images" if ndim == 2 else "volume"
    box = t.shape[-ndim:] if t.ndim >= ndim else ()
    if t.ndim < ndim or len(set(box)) != 1:
        layout = "(..., N, N)" if ndim == 2 else "(..., N, N, N)"
        raise ValueError(
            f"Expected '{name}' to have shape {layout} with equal sides, got "
            f"{tuple(t.shape)}."
        )
    check_finite(t, name)
    return name


def fourier_resize(x, new_size: int, *, ndim: int = 2, centered: bool = True):
    """Rescale images or volumes to another box size in Fourier space.

    The centred spectrum (DC at index ``N // 2``) is cropped to, or zero-padded to,
    ``new_size`` on each of the last ``ndim`` axes: cropping low-pass filters and
    downsamples, padding interpolates (sinc). The pixel size becomes
    ``pixel_size * N / new_size``.

    Values are scaled by ``(new_size / N) ** ndim`` so that the **mean intensity per
    pixel is preserved** (the DC term is kept per pixel, as RELION's ``resizeMap``
    does); sums over pixels therefore scale by ``(new_size / N) ** ndim``: projecting
    (summing along z) a resized volume gives ``new_size / N`` times the resized
    projection.

    Odd and even sizes are both handled: an even target folds the two Nyquist
    coefficients into one; padding an even source splits its Nyquist coefficient
    evenly, so that ``fourier_resize(fourier_resize(x, M), N) == x`` for ``M > N``, and
    a signal band-limited below the smaller Nyquist survives crop-then-pad.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray of shape (..., N, N) or (..., N, N, N)
        Real images (``ndim=2``) or volumes (``ndim=3``), any leading dimensions.
    new_size : int
        Output side ``M >= 1``.
    ndim : {2, 3}, default 2
        How many trailing axes to resize.
    centered : bool, default True
        Keep the box centre fixed: pixel ``N // 2`` of the input maps to pixel
        ``M // 2`` of the output (positions ``p`` map to
        ``M // 2 + (p - N // 2) * M / N``), skpose's origin convention. ``False``
        keeps index 0 fixed instead (``p`` maps to ``p * M / N``), as RELION's
        ``resizeMap`` does (no ``CenterFFT``). The two agree when ``N`` and ``M``
        are both even and differ by a fraction of a pixel otherwise (half a pixel for
        65 to 64).

    Returns
    -------
    torch.Tensor or numpy.ndarray of shape (..., M, M) or (..., M, M, M)
        Same type, dtype (floating; integers become float64) and device as ``x``.

    Examples
    --------
    >>> img = np.ones((1, 8, 8), dtype=np.float32)
    >>> small = fourier_resize(img, 4)
    >>> small.shape, small.dtype, float(small.mean())
    ((1, 4, 4), dtype('float32'), 1.0)
    """
    if ndim not in (2, 3):
        raise ValueError(f"Expected 'ndim' to be 2 or 3, got {ndim!r}.")
    t = to_tensor(x, "images" if ndim == 2 else "volume")
    _check_box(t, ndim)
    m = _check_int(new_size, "new_size", 1)
    n = t.shape[-1]
    if m == n:
        return back_like(t.clone(), x)
    dims = tuple(range(-ndim, 0))
    if centered:  # put the centre N // 2 at index 0, where the DFT's origin is
        t = torch.fft.ifftshift(t, dim=dims)
    f = torch.fft.fftshift(torch.fft.fftn(t, dim=dims), dim=dims)
    for dim in dims:
        f = _resize_axis(f, dim, n, m)
    out = torch.fft.ifftn(torch.fft.ifftshift(f, dim=dims), dim=dims).real
    if centered:
        out = torch.fft.fftshift(out, dim=dims)
    return back_like((out * (m / n) ** ndim).to(t.dtype), x)


def _resolve_ndim(x, ndim, func: str) -> int:
    """``ndim`` if given, else 2 unless ``x`` is a cube (volume or N images of N px)."""
    if ndim is not None:
        return ndim
    shape = np.shape(x)
    if len(shape) == 3 and shape[0] == shape[1] == shape[2]:
        raise ValueError(
            f"{func}: 'x' of shape {shape} is a volume or a stack of {shape[0]} "
            "images, which its shape cannot tell: pass ndim=3 for a volume or ndim=2 "
            "for images."
        )
    return 2


def fourier_crop(x, new_size: int, *, ndim: int | None = None, centered: bool = True):
    """Downsample by Fourier cropping: :func:`fourier_resize` with ``new_size <= N``.

    ``ndim`` (2: images, 3: volumes) defaults to 2, except for an array of shape
    ``(N, N, N)``, which may be either: then it must be given.

    Examples
    --------
    >>> fourier_crop(np.zeros((2, 64, 64)), 32).shape
    (2, 32, 32)
    >>> fourier_crop(np.zeros((64, 64, 64)), 32, ndim=3).shape
    (32, 32, 32)
    """
    ndim = _resolve_ndim(x, ndim, "fourier_crop")
    size = np.shape(x)[-1] if np.ndim(x) else 0
    if isinstance(new_size, (int, np.integer)) and new_size > size:
        raise ValueError(
            f"Expected 'new_size' <= the box size {size} for cropping, got {new_size}."
        )
    return fourier_resize(x, new_size, ndim=ndim, centered=centered)


def fourier_pad(x, new_size: int, *, ndim: int | None = None, centered: bool = True):
    """Upsample by Fourier zero-padding: :func:`fourier_resize` with ``new_size >= N``.

    ``ndim`` defaults as in :func:`fourier_crop`.

    Examples
    --------
    >>> fourier_pad(np.zeros((2, 32, 32)), 64).shape
    (2, 64, 64)
    """
    ndim = _resolve_ndim(x, ndim, "fourier_pad")
    size = np.shape(x)[-1] if np.ndim(x) else 0
    if isinstance(new_size, (int, np.integer)) and new_size < size:
        raise ValueError(
            f"Expected 'new_size' >= the box size {size} for padding, got {new_size}."
        )
    return fourier_resize(x, new_size, ndim=ndim, centered=centered)


# --------------------------------------------------------------------------------------
# Masks and normalisation
# --------------------------------------------------------------------------------------


def _radius_grid(box_size: int, ndim: int, dtype, device) -> torch.Tensor:
    coords = torch.arange(box_size, dtype=dtype, device=device) - box_size // 2
    grids = torch.meshgrid(*([coords] * ndim), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def circular_mask(
    box_size: int,
    radius: float,
    *,
    soft_edge: float = 0.0,
    ndim: int = 2,
    dtype=torch.float32,
    device=None,
) -> torch.Tensor:
    """Make a circular (``ndim=2``) or spherical (``ndim=3``) mask centred at N // 2.

    Parameters
    ----------
    box_size : int
        Side ``N`` in pixels.
    radius : float
        Pixels at distance ``<= radius`` from the centre are 1.
    soft_edge : float, default 0
        Width in pixels of a raised-cosine fall-off from 1 (at ``radius``) to 0 (at
        ``radius + soft_edge``); 0 gives a hard edge.
    ndim : {2, 3}, default 2
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor of shape (N, N) or (N, N, N)
        Values in [0, 1].

    Examples
    --------
    >>> circular_mask(5, 1).int()
    tensor([[0, 0, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    n = _check_int(box_size, "box_size", 1)
    r0 = _check_real(radius, "radius")
    width = _check_real(soft_edge, "soft_edge")
    if ndim not in (2, 3):
        raise ValueError(f"Expected 'ndim' to be 2 or 3, got {ndim!r}.")
    r = _radius_grid(n, ndim, torch.float64, device)
    if width == 0:
        mask = (r <= r0).to(torch.float64)
    else:
        ramp = 0.5 * (1 + torch.cos(math.pi * (r - r0) / width))
        mask = torch.where(r <= r0, 1.0, torch.where(r >= r0 + width, 0.0, ramp))
    return mask.to(dtype)


def normalize_images(images, radius: float | None = None, *, constant: str = "raise"):
    """Normalise each image to zero mean and unit variance of its background.

    As RELION's particle extraction: the mean and standard deviation (population,
    ``1/n``) of the pixels **outside** the circle of ``radius`` pixels around the
    centre ``N // 2`` are computed per image; the image has the mean subtracted and is
    divided by the standard deviation. RELION also subtracts a fitted ramp (plane)
    first by default; this function does not.

    Parameters
    ----------
    images : torch.Tensor or numpy.ndarray of shape (n, N, N)
        Images indexed ``[y, x]``.
    radius : float, optional
        Background radius in pixels; pixels with distance ``> radius`` are background.
        Default ``0.375 * N`` (RELION's default background circle: diameter 75% of
        the box).
    constant : {"raise", "whole"}, default "raise"
        What to do with an image whose background is constant (masked particles,
        blank images): raise, or normalise it by the statistics of the whole image
        (dividing by 1 when the whole image is constant too).

    Returns
    -------
    torch.Tensor or numpy.ndarray of shape (n, N, N)
        Same type, dtype and device as ``images``.

    Raises
    ------
    ValueError
        Images not ``(n, N, N)`` or not finite; a radius leaving fewer than 2
        background pixels; an image with a constant background (with
        ``constant="raise"``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> out = normalize_images(5 + 3 * rng.standard_normal((2, 32, 32)))
    >>> background = circular_mask(32, 12).numpy() == 0
    >>> bg = out[0][background]
    >>> bool(abs(bg.mean()) < 1e-9), round(float(bg.std()), 9)
    (True, 1.0)
    """
    t = check_images(images)
    n = t.shape[-1]
    r0 = n * RELION_BACKGROUND_FRACTION if radius is None else radius
    r0 = _check_real(r0, "radius")
    background = _radius_grid(n, 2, torch.float64, t.device) > r0
    if int(background.sum()) < 2:
        raise ValueError(
            f"Expected 'radius' to leave at least 2 background pixels in a {n} x {n} "
            f"box, got {r0}."
        )
    values = t[:, background]
    mean = values.mean(dim=-1)
    std = values.std(dim=-1, correction=0)
    if constant not in ("raise", "whole"):
        raise ValueError(
            f"Expected 'constant' to be 'raise' or 'whole', got {constant!r}."
        )
    flat = std <= torch.finfo(t.dtype).tiny
    if flat.any() and constant == "whole":
        whole = t.reshape(t.shape[0], -1)
        mean = torch.where(flat, whole.mean(dim=-1), mean)
        std = torch.where(flat, whole.std(dim=-1, correction=0), std)
        std = torch.where(std <= torch.finfo(t.dtype).tiny, torch.ones_like(std), std)
    elif flat.any():
        raise ValueError(
            f"Image {int(torch.nonzero(flat)[0, 0])} of 'images' has a constant "
            f"background (outside radius {r0}); cannot normalise it."
        )
    return back_like((t - mean[:, None, None]) / std[:, None, None], images)


def phase_flip(images, ctf):
    """Multiply each image's transform by the sign of its CTF (phase flipping).

    After phase flipping, every frequency has the contrast of the first lobe (RELION's
    sign: positive), so the images look like CTF-free projections up to an amplitude
    modulation; this is how skpose feeds CTF-affected particles to the network.

    Parameters
    ----------
    images : torch.Tensor or numpy.ndarray of shape (n, N, N)
        Images ``[y, x]`` with the origin at ``N // 2``.
    ctf : skpose.imaging.ctf.CTFParams
        ``n`` particles' parameters (their pixel size is the images').

    Returns
    -------
    Same type as ``images``, shape (n, N, N)
    """
    from skpose.imaging.ctf import CTFParams, compute_ctf

    t = check_images(images)
    if not isinstance(ctf, CTFParams):
        raise TypeError(f"Expected 'ctf' to be a CTFParams, got {type(ctf).__name__}.")
    if len(ctf) != t.shape[0]:
        raise ValueError(
            f"'images' and 'ctf' describe different numbers of particles: "
            f"{t.shape[0]} and {len(ctf)}."
        )
    sign = torch.sign(compute_ctf(ctf, t.shape[-1], dtype=t.dtype, device=t.device))
    ft = torch.fft.fft2(torch.fft.ifftshift(t, dim=(-2, -1)))
    flipped = torch.fft.fftshift(torch.fft.ifft2(ft * sign).real, dim=(-2, -1))
    return back_like(flipped, images)
