"""Particle origins without poses: correlation with the map's average projection.

Private to :mod:`skpose.imaging`; :class:`skpose.OrientationEstimator` uses it when
``recentre=True`` and ``skpose search`` to write recentred stacks.

The mean of a map's projections over all views is the projection of its spherical
average (:func:`average_projection`): a round blob with the particle's radial mass
profile, the same for every pose. Correlating an image with it (times the image's CTF,
a matched filter) peaks where the particle's centre of mass lies, to within how far
that centre sits from the map's origin in the image's view (:func:`estimate_origins`).
No pose is needed, so the estimate can come before the network; it is an origin
estimate good to about half a pixel on clean particles and 1.4-2 px at SNR 0.1-0.05
with a CTF (64 px 80S particles, measured in ``benchmarks/README.md``), enough to take
most of the translation out of what the network must learn.
"""

from __future__ import annotations

import numpy as np
import torch

from skpose._validation import check_images
from skpose.imaging._fourier import frequency_grid
from skpose.imaging.projection import phase_shift

__all__ = ["average_projection", "estimate_origins", "recentre"]


def average_projection(volume) -> torch.Tensor:
    """The projection along z of the map's spherical average, float64 ``(N, N)``.

    Parameters
    ----------
    volume : array or torch.Tensor of shape (N, N, N)
        The map ``[z, y, x]``, origin at ``N // 2``.
    """
    v = torch.as_tensor(volume, dtype=torch.float64)
    n = v.shape[-1]
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    radius = torch.sqrt(z * z + y * y + x * x)
    shell = radius.round().long().flatten()
    total = torch.bincount(shell, weights=v.flatten())
    count = torch.bincount(shell).clamp_min(1)
    profile = (total / count).numpy()
    spherical = np.interp(radius.numpy(), np.arange(len(profile)), profile, right=0.0)
    return torch.as_tensor(spherical.sum(axis=0))


def estimate_origins(images, reference, ctf=None, *, max_shift_px=None) -> np.ndarray:
    """RELION origins ``(ox, oy)`` of images from their correlation with ``reference``.

    Parameters
    ----------
    images : array or torch.Tensor of shape (n, N, N)
        Raw particle images (not phase-flipped).
    reference : torch.Tensor of shape (N, N)
        :func:`average_projection` of the map at the images' box.
    ctf : CTFParams, optional
        The images' CTF: the reference is multiplied by it (a matched filter).
    max_shift_px : float, optional
        Search origins within this radius; default a quarter of the box.

    Returns
    -------
    numpy.ndarray of shape (n, 2), float64
        Origins in pixels, sub-pixel by a parabola through the correlation peak and
        its neighbours along each axis. Translating each image by its origin
        (:func:`recentre`) puts the particle's centre at ``N // 2``.
    """
    from skpose.imaging.ctf import compute_ctf

    x = check_images(images).to(torch.float64)
    n = x.shape[-1]
    ref = torch.as_tensor(reference, dtype=torch.float64, device=x.device)
    ft = torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)))
    ref_ft = torch.fft.fft2(torch.fft.ifftshift(ref, dim=(-2, -1)))
    product = ft * ref_ft.conj()
    if ctf is not None:
        product = product * compute_ctf(ctf, n, dtype=x.dtype, device=x.device)
    # Zero displacement at N // 2 after the shift.
    cc = torch.fft.fftshift(torch.fft.ifft2(product).real, dim=(-2, -1))
    limit = n / 4 if max_shift_px is None else float(max_shift_px)
    ky, kx = frequency_grid(n, half=False, cycles_per="box", dtype=x.dtype)
    outside = torch.fft.fftshift(ky**2 + kx**2, dim=(-2, -1)) > limit**2
    cc = cc.masked_fill(outside.to(x.device), -torch.inf)
    peak = cc.flatten(1).argmax(dim=1)
    py, px = peak // n, peak % n
    rows = torch.arange(len(x), device=x.device)

    def vertex(before, at, after):
        curvature = before - 2 * at + after
        ok = torch.isfinite(curvature) & (curvature < 0)
        offset = 0.5 * (before - after) / torch.where(ok, curvature, -1.0)
        return torch.where(ok, offset.clamp(-0.5, 0.5), 0.0)

    at = cc[rows, py, px]
    dy = vertex(cc[rows, (py - 1) % n, px], at, cc[rows, (py + 1) % n, px])
    dx = vertex(cc[rows, py, (px - 1) % n], at, cc[rows, py, (px + 1) % n])
    displacement = torch.stack((px - n // 2 + dx, py - n // 2 + dy), dim=1)
    return (-displacement).cpu().numpy()


def recentre(images, origins_px) -> torch.Tensor:
    """Images translated by ``+origins_px``: the particles then sit at the centre.

    Parameters
    ----------
    images : array or torch.Tensor of shape (n, N, N)
    origins_px : array of shape (n, 2)
        RELION origins ``(ox, oy)`` in pixels.

    Returns
    -------
    torch.Tensor of shape (n, N, N), in the images' dtype and device.
    """
    x = check_images(images)
    work = x.to(torch.float64)
    origins = torch.as_tensor(origins_px, dtype=torch.float64, device=x.device)
    shift = phase_shift(-origins, x.shape[-1])
    ft = torch.fft.fft2(torch.fft.ifftshift(work, dim=(-2, -1))) * shift
    out = torch.fft.fftshift(torch.fft.ifft2(ft).real, dim=(-2, -1))
    return out.to(x.dtype)
