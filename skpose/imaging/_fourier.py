"""Fourier-space bookkeeping shared by the imaging and search modules.

- :func:`frequency_grid`: the frequencies of a box's ``fftn`` / ``rfftn``, in cycles per
  box or per pixel.
- :func:`nyquist_half_plane`: the ``rfft2`` frequencies within the Nyquist circle.
- :func:`gridding_correct`: the division by the real-space transform of the
  trilinear (bilinear in 2-D) interpolation kernel on a padded grid.

Layouts are torch's: axes ``[..., z, y, x]``, the DFT origin at index 0, the ``rfft``
half along the last axis.
"""

from __future__ import annotations

import torch

__all__ = ["frequency_grid", "gridding_correct", "nyquist_half_plane"]


def frequency_grid(
    box_size: int,
    ndim: int = 2,
    *,
    half: bool = True,
    cycles_per: str = "box",
    sparse: bool = False,
    dtype=None,
    device=None,
) -> tuple[torch.Tensor, ...]:
    """Frequencies of the DFT of a box of side ``N``, one grid per axis.

    Parameters
    ----------
    box_size : int
        Side ``N`` of the box.
    ndim : int, default 2
        Number of axes.
    half : bool, default True
        ``rfftn`` layout (the last axis holds ``kx = 0 .. N // 2``) instead of
        ``fftn``.
    cycles_per : {"box", "pixel"}, default "box"
        Units: cycles per box (``torch.fft.fftfreq(N, d=1 / N)``: integers
        ``-(N // 2) .. (N - 1) // 2``) or cycles per pixel (``torch.fft.fftfreq(N)``).
    sparse : bool, default False
        Grids of shape ``(N, 1)`` and ``(1, M)`` (``ndim = 2``) that broadcast, instead
        of dense ones.
    dtype, device
        Of the result.

    Returns
    -------
    tuple of ``ndim`` torch.Tensor
        ``(ky, kx)`` or ``(kz, ky, kx)``: each of shape ``(N, ..., N, M)`` (``M = N //
        2 + 1`` with ``half``, else ``N``), indexed like the transform.

    Examples
    --------
    >>> ky, kx = frequency_grid(4)
    >>> ky[:, 0].tolist(), kx[0].tolist()
    ([0.0, 1.0, -2.0, -1.0], [0.0, 1.0, 2.0])
    """
    if cycles_per not in ("box", "pixel"):
        raise ValueError(
            f"Expected 'cycles_per' to be 'box' or 'pixel', got {cycles_per!r}."
        )
    n = int(box_size)
    d = 1.0 / n if cycles_per == "box" else 1.0
    kw = {"d": d, "dtype": dtype, "device": device}
    full = torch.fft.fftfreq(n, **kw)
    axes = [full] * (ndim - 1) + [torch.fft.rfftfreq(n, **kw) if half else full]
    if not sparse:
        return tuple(torch.meshgrid(*axes, indexing="ij"))
    return tuple(
        k.reshape([-1 if axis == i else 1 for axis in range(ndim)])
        for i, k in enumerate(axes)
    )


def nyquist_half_plane(box_size: int, *, square: bool = False, dtype=None, device=None):
    """The ``rfft2`` frequencies of an ``N`` box in the Nyquist circle ``|k| <= N / 2``.

    With ``square=True``, every frequency of the half plane (the projector's accurate
    mode, ``frequencies="square"``).

    Returns
    -------
    index : torch.Tensor of shape (K,), int64
        Their flat indices in the ``(N, N // 2 + 1)`` ``rfft2`` layout, increasing.
    k2d : torch.Tensor of shape (K, 2)
        Their ``(kx, ky)`` in cycles per box.
    """
    n = int(box_size)
    gy, gx = frequency_grid(n, dtype=dtype, device=device)
    inside = ((gx**2 + gy**2) <= (n / 2) ** 2).reshape(-1)
    if square:
        inside = torch.ones_like(inside)
    k2d = torch.stack((gx, gy), dim=-1).reshape(-1, 2)[inside]
    return torch.nonzero(inside).squeeze(1), k2d


def gridding_correct(x: torch.Tensor, padded_size: int, ndim: int = 3):
    """Divide by the real-space transform of linear interpolation on a padded grid.

    Sampling the transform of a zero-padded box (side ``P = padded_size``) by
    trilinear (``ndim = 3``) or bilinear (``ndim = 2``) interpolation, or inserting
    into it with those weights, multiplies the box by the kernel's real-space
    transform. That kernel is separable, ``tri(kx) tri(ky) tri(kz)``, so its transform
    is ``sinc^2(x / P) sinc^2(y / P) sinc^2(z / P)`` (``x, y, z`` in pixels from the
    centre ``N // 2``; ``sinc(t) = sin(pi t) / (pi t)``): this is what is divided.

    RELION (``Projector::griddingCorrect``, ``BackProjector`` alike) divides by the
    radial ``sinc^2(|r| / P)`` instead. The two agree on the axes; elsewhere ours is
    the larger divisor (the corrected values are smaller in magnitude than RELION's):
    with ``P = 2 N`` by at most 0.3 % within the sphere ``|r| <= N / 2`` and by 3 % at
    the corners of the box (less with more padding).

    Parameters
    ----------
    x : torch.Tensor of shape (..., N, N) or (..., N, N, N)
        Images or volumes, centre at index ``N // 2``.
    padded_size : int
        ``P``, the side of the padded grid.
    ndim : {2, 3}, default 3
        How many trailing axes to correct.

    Returns
    -------
    torch.Tensor
        ``x`` divided by the kernel, same shape, dtype and device.
    """
    n = x.shape[-1]
    r = torch.arange(n, dtype=x.dtype, device=x.device) - n // 2
    s = torch.sinc(r / padded_size) ** 2
    kernel = s.reshape([-1] + [1] * (ndim - 1))
    for axis in range(1, ndim):
        kernel = kernel * s.reshape([-1 if i == axis else 1 for i in range(ndim)])
    return x / kernel
