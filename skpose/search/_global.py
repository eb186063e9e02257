"""The global pass of projection matching: polar correlations over the grid.

Private to :mod:`skpose.search`; the grid is :mod:`skpose.search.grid`.

Images and references are compared in polar Fourier coordinates, ``F(r, phi)`` on
rings ``r = 1 .. r_max`` (cycles per box) at the grid's ``n_psi`` in-plane angles. An
in-plane rotation of a reference by ``psi_l`` is a cyclic shift of its angle index by
``l``, so the correlations at all in-plane angles are one circular cross-correlation
along ``phi``: with ``hat`` the DFT along ``phi``,
``c(l) = 1/n sum_m e^{2 pi i m l / n} sum_r w_r hat(I)_r(m) conj(hat(R)_r(m))``. For
a batch of (image, trial translation) pairs and a chunk of directions this is one
real matrix product per mode ``m`` (the ring sum) and one real matrix product for the
inverse DFT (the images are real, so ``c`` is real and modes ``0 <= m <= n / 2``
suffice). ``w_r = r`` is the polar area element: the sums approximate the Cartesian
inner products. Translations are phase-shifted copies of each image. References are
one central slice per viewing direction, sampled directly on the polar points from
the map's padded 3-D transform (:func:`slice_planes`); images are gridding-corrected,
zero-padded twice and sampled bilinearly on the same points (:func:`padded_planes`).

CTF: ``<I, c R> = <c I, R>`` for a real CTF ``c``, so the numerator correlates the
CTF-multiplied image with the plain references, and the reference norm
``||c R_psi||^2 = sum w_r c^2(r, phi) |R(r, phi - psi)|^2`` is itself a circular
correlation of ``c^2`` with ``|R|^2``: exact normalised cross-correlations against
CTF-modulated references without building one reference per particle.

Cost per image: ``S D M (8 r_max + 4 n_psi)`` flops for ``S`` translations, ``D``
directions and ``M = n_psi / 2 + 1`` modes (the two matrix products); with
``r_max ~ 1 / step`` and ``D M ~ step^-3`` it grows as ``step^-4``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from skpose.geometry.rotations import quat_multiply
from skpose.geometry.symmetry import symmetry_matrices
from skpose.imaging._fourier import gridding_correct
from skpose.imaging.ctf import compute_ctf
from skpose.imaging.projection import FourierProjector
from skpose.search.grid import direction_vectors, in_plane_quats, n_psi_for

__all__ = [
    "PolarLayout",
    "coarse_search",
    "global_search",
    "image_side",
    "locate",
    "resolution_for",
]

# r_max = RESOLUTION_FACTOR / step (radians): the finest ring an angular step resolves
# (RELION's rule: an angular step theta resolves detail theta * D on a particle of
# diameter D ~ the box).
RESOLUTION_FACTOR = 1.5
# Bytes of the largest intermediate block of the global pass.
BLOCK_BYTES = 48 * 2**20
# (image, trial translation) pairs per batch, and directions whose references are
# sampled at once (small calls stall on a busy CPU; these keep every call large).
COLUMNS = 4096
REFERENCE_GROUP = 256


def resolution_for(angular_step_deg: float, box_size: int) -> int:
    """The outer ring (cycles per box) that an angular step resolves, within Nyquist."""
    r = round(RESOLUTION_FACTOR / math.radians(angular_step_deg))
    return int(min(max(r, 2), box_size // 2))


# --------------------------------------------------------------------------------------
# Fourier samples
# --------------------------------------------------------------------------------------


def slice_planes(projector: FourierProjector, quat: torch.Tensor, k2d: torch.Tensor):
    """Real and imaginary parts of central slices, neighbours innermost.

    Parameters
    ----------
    projector : FourierProjector
        The map's padded transform (its gridding correction included).
    quat : torch.Tensor of shape (n, c, 4)
        ``c`` rotations for each of ``n`` items; the ``c`` of one item are sampled
        next to each other for each frequency (nearby rotations then read nearby
        memory: 1.5 times faster for local searches).
    k2d : torch.Tensor of shape (K, 2)
        Frequencies ``(kx, ky)`` in cycles per box, ``|k| <= N / 2``.

    Returns
    -------
    torch.Tensor of shape (2, n, K, c)
        ``F_V(R^T (kx, ky, 0))``: the transform of the projection with its origin at the
        box centre ``N // 2`` (``rfft2`` of the ``ifftshift``-ed image), interpolated.
    """
    return projector.sample_slices(quat[:, None], k2d[:, None], split=True)


def slice_at(projector: FourierProjector, quat: torch.Tensor, k2d: torch.Tensor):
    """Complex central-slice values ``(..., K)`` at rotations ``quat`` ``(..., 4)``.

    See :func:`slice_planes`; any batch shape, no particular ordering.
    """
    return projector.sample_slices(quat[..., None, :], k2d)


def padded_planes(images: torch.Tensor, ctf=None, pad: int = 2) -> torch.Tensor:
    """Centred transforms of zero-padded, gridding-corrected images, as planes.

    Parameters
    ----------
    images : torch.Tensor of shape (n, N, N)
    ctf : CTFParams or None
    pad : int, default 2
        Padding factor ``p``.

    Returns
    -------
    torch.Tensor of shape (n, 2, pN, pN) or (n, 5, pN, pN), real
        ``Re I, Im I`` and, with a CTF, ``Re cI, Im cI, c^2``: frequency ``k``
        (cycles per ``N`` box) at index ``pN // 2 + p k`` (``fftshift``-ed), phases
        referred to the centre ``N // 2``. Bilinear samples of these
        (:func:`sample_planes`) approximate the transforms at any frequency.
    """
    n = images.shape[-1]
    padded = images.new_zeros(images.shape[0], pad * n, pad * n)
    padded[:, :n, :n] = gridding_correct(images, pad * n, ndim=2)
    # Move the centre N // 2 to index 0 (the DFT's origin).
    padded = torch.roll(padded, shifts=(-(n // 2), -(n // 2)), dims=(-2, -1))
    ft = torch.fft.fft2(padded)
    planes = [ft.real, ft.imag]
    if ctf is not None:
        c = compute_ctf(ctf, pad * n, dtype=images.dtype, device=images.device)
        planes += [ft.real * c, ft.imag * c, c * c]
    return torch.fft.fftshift(torch.stack(planes, dim=1), dim=(-2, -1))


def sample_planes(planes: torch.Tensor, k2d: torch.Tensor, box_size: int):
    """Bilinear samples ``(n, C, K)`` of :func:`padded_planes` at frequencies ``k2d``.

    ``k2d`` is ``(K, 2)`` shared by all images or ``(n, K, 2)``, in cycles per box.
    """
    size = planes.shape[-1]
    pad = size // box_size
    coords = (size // 2 + pad * k2d.to(planes.dtype)) * (2.0 / (size - 1)) - 1.0
    if coords.ndim == 2:
        coords = coords.expand(planes.shape[0], -1, -1)
    out = F.grid_sample(planes, coords[:, None], mode="bilinear", align_corners=True)
    return out[:, :, 0]


# --------------------------------------------------------------------------------------
# The polar global pass
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolarLayout:
    """Polar sampling: rings ``1 .. r_max`` at ``n_psi`` angles ``2 pi j / n_psi``."""

    box_size: int
    r_max: int
    n_psi: int

    def points(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """Frequencies ``(r_max * n_psi, 2)``, ring-major, in cycles per box."""
        r = torch.arange(1, self.r_max + 1, dtype=dtype, device=device)
        phi = 2 * math.pi * torch.arange(self.n_psi, dtype=dtype, device=device)
        phi = phi / self.n_psi
        kx = r[:, None] * torch.cos(phi)[None]
        ky = r[:, None] * torch.sin(phi)[None]
        return torch.stack((kx, ky), dim=-1).reshape(-1, 2)

    def ring_weights(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """The polar area element ``w_r = r`` (rings ``1 .. r_max``)."""
        return torch.arange(1, self.r_max + 1, dtype=dtype, device=device)

    @property
    def n_modes(self) -> int:
        """Angular modes ``m = 0 .. n_psi / 2`` kept."""
        return self.n_psi // 2 + 1


# Angular DFTs are matrix products, and complex products go through real ones: on a
# busy CPU, MKL's threaded FFTs and complex GEMMs of these small sizes stall for
# milliseconds per call (1000 times their arithmetic), real GEMMs do not.


def complex_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for complex ``(..., m, k)``, ``(..., k, n)``, as one real product."""
    left = torch.cat((a.real, a.imag), dim=-1)  # (..., m, 2k)
    top = torch.cat((b.real, b.imag), dim=-1)
    right = torch.cat((top, torch.cat((-b.imag, b.real), dim=-1)), dim=-2)
    out = left @ right  # (..., m, 2n): [Re a Re b - Im a Im b, Re a Im b + Im a Re b]
    n = b.shape[-1]
    return torch.complex(out[..., :n], out[..., n:])


@functools.lru_cache(maxsize=16)
def _dft_matrix(n: int, modes: int, dtype, device) -> torch.Tensor:
    """``exp(-2 pi i j m / n)``, ``(n, modes)``: DFT modes ``0 .. modes - 1``."""
    j = torch.arange(n, dtype=torch.float64)[:, None]
    angle = -2 * math.pi * j * torch.arange(modes, dtype=torch.float64)[None] / n
    return torch.polar(torch.ones_like(angle), angle).to(dtype=dtype, device=device)


def _angular_modes(polar: torch.Tensor, layout: PolarLayout) -> torch.Tensor:
    """``(..., r_max * n_psi)`` samples -> ``(..., r_max, n_modes)`` DFT along phi."""
    rings = polar.reshape(*polar.shape[:-1], layout.r_max, layout.n_psi)
    dft = _dft_matrix(layout.n_psi, layout.n_modes, rings.dtype, rings.device)
    return complex_matmul(rings, dft)


def _ring_power_modes(values: torch.Tensor, layout: PolarLayout) -> torch.Tensor:
    """Real DFT along phi of real ring signals ``(..., r_max * n_psi)``."""
    rings = values.reshape(*values.shape[:-1], layout.r_max, layout.n_psi)
    dtype = torch.complex64 if rings.dtype == torch.float32 else torch.complex128
    dft = _dft_matrix(layout.n_psi, layout.n_modes, dtype, rings.device)
    return torch.complex(rings @ dft.real, rings @ dft.imag)


def _inverse_modes(modes: torch.Tensor, layout: PolarLayout) -> torch.Tensor:
    """Real signals ``(..., n_psi)`` of Hermitian modes ``(..., n_modes)`` (irfft)."""
    w_inv = inverse_dft_matrix(layout, modes.real.dtype, modes.device)
    return torch.view_as_real(modes).flatten(-2) @ w_inv


def inverse_dft_matrix(layout: PolarLayout, dtype, device=None) -> torch.Tensor:
    """Real matrix ``(2 M, n_psi)`` of :func:`_inverse_dft` for a layout."""
    return _inverse_dft(layout.n_psi, dtype, device)


@functools.lru_cache(maxsize=16)
def _inverse_dft(n: int, dtype, device) -> torch.Tensor:
    """Real matrix ``(2 M, n_psi)``: angular modes ``(Re, Im)`` -> correlations.

    ``c(l) = 1/n sum_{m=0}^{n/2} a_m (Re X_m cos(2 pi m l / n) - Im X_m sin(...))``
    with ``a_m = 1`` at ``m = 0, n/2`` and 2 otherwise (the modes ``m < 0`` are the
    conjugates). Rows ``2 m`` and ``2 m + 1`` multiply ``Re X_m`` and ``Im X_m``.
    """
    modes = n // 2 + 1
    m = torch.arange(modes, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * m * torch.arange(n, dtype=torch.float64)[None] / n
    a = torch.full((modes, 1), 2.0, dtype=torch.float64)
    a[0] = a[-1] = 1.0
    w = torch.stack((a * torch.cos(angle), -a * torch.sin(angle)), dim=1) / n
    return w.reshape(2 * modes, n).to(dtype=dtype, device=device)


@dataclass
class ImageSide:
    """The images' half of the global pass (one batch of ``n`` images).

    Attributes
    ----------
    modes : (n, S, r_max, M) complex
        Ring-weighted angular modes of every (image, trial translation) pair.
    stacked : (M, 2 r_max, n * S) real
        The same as ``[Re; Im]`` for the real matrix products.
    norms : (n,)
        Weighted polar norms ``||I||`` of the (CTF-free) images.
    ctf2_modes : (n, r_max, M) complex or None
        rfft along phi of ``w_r c^2`` (CTF only).
    """

    modes: torch.Tensor
    stacked: torch.Tensor
    norms: torch.Tensor
    ctf2_modes: torch.Tensor | None


def image_side(images, layout: PolarLayout, offsets_px, ctf=None) -> ImageSide:
    """Polar modes of images at every trial translation (RELION origins ``offsets_px``).

    ``ctf`` is ``None`` or a :class:`~skpose.imaging.ctf.CTFParams` of the images;
    the modes are then those of the CTF-multiplied images.
    """
    box = layout.box_size
    k2d = layout.points(images.dtype, images.device)
    w = layout.ring_weights(images.dtype, images.device)
    w = w.repeat_interleave(layout.n_psi)
    samples = sample_planes(padded_planes(images, ctf), k2d, box)  # (n, C, K)
    values = torch.complex(samples[:, 0], samples[:, 1])
    norms = torch.sqrt((w * values.abs() ** 2).sum(-1)).clamp_min(1e-30)
    ctf2_modes = None
    if ctf is not None:
        ctf2_modes = _ring_power_modes(w * samples[:, 4], layout)
        values = torch.complex(samples[:, 2], samples[:, 3])
    # Undo each trial origin o: translate the image by +o, a factor exp(-2 pi i k.o/N).
    arg = (-2 * math.pi / box) * (offsets_px.to(k2d.dtype) @ k2d.T)  # (S, K)
    shifted = values[:, None, :] * torch.polar(torch.ones_like(arg), arg)[None]
    modes = _angular_modes(w * shifted, layout)  # (n, S, r, M)
    flat = modes.permute(3, 2, 0, 1).reshape(layout.n_modes, layout.r_max, -1)
    stacked = torch.cat((flat.real, flat.imag), dim=1).contiguous()
    return ImageSide(modes, stacked, norms, ctf2_modes)


@dataclass
class ReferenceSide:
    """Central slices of a chunk of ``D`` directions on the polar points.

    Attributes
    ----------
    modes : (D, r_max, M) complex
        Angular modes (unweighted).
    norms : (D,)
        Weighted polar norms ``||R||``.
    power_modes : (D, r_max, M) complex
        rfft along phi of ``|R|^2`` (for CTF norms).
    """

    modes: torch.Tensor
    norms: torch.Tensor
    power_modes: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """``(M, 2 D, 2 r_max)`` real: ``[[Re, Im], [-Im, Re]]`` of the modes.

        Times the images' ``[Re; Im]`` this gives ``[Re; Im]`` of ``I conj(R)``.
        """
        m = self.modes.permute(2, 0, 1)  # (M, D, r)
        top = torch.cat((m.real, m.imag), dim=-1)
        bottom = torch.cat((-m.imag, m.real), dim=-1)
        return torch.cat((top, bottom), dim=1).contiguous()


def reference_side(projector, dir_quats, layout: PolarLayout) -> ReferenceSide:
    """Polar references of directions ``dir_quats`` ``(..., 4)`` (any batch shape)."""
    k2d = layout.points(projector.dtype, projector.device)
    values = slice_at(projector, dir_quats, k2d)  # (..., K)
    w = layout.ring_weights(values.real.dtype, values.device)
    power = values.abs() ** 2
    norms = (w.repeat_interleave(layout.n_psi) * power).sum(-1)
    return ReferenceSide(
        _angular_modes(values, layout),
        torch.sqrt(norms.clamp_min(1e-30)),
        _ring_power_modes(power, layout),
    )


def _ctf_reference_norms(side: ImageSide, refs: ReferenceSide, layout) -> torch.Tensor:
    """``||c_b R_{d, psi_l}||`` for every image ``b``, direction ``d``, angle ``l``.

    ``sum_r sum_phi w_r c^2(phi) |R(phi - psi)|^2``: a circular cross-correlation along
    phi. Returns ``(D, n, n_psi)``.
    """
    # (M, D, r) @ (M, r, n) -> (M, D, n) -> (D, n, M)
    cross = complex_matmul(
        refs.power_modes.conj().permute(2, 0, 1), side.ctf2_modes.permute(2, 1, 0)
    ).permute(1, 2, 0)
    ref2 = _inverse_modes(cross, layout)
    return torch.sqrt(ref2.clamp_min(1e-30))


def _correlate_chunk(
    side: ImageSide, refs: ReferenceSide, layout, w_inv
) -> torch.Tensor:
    """Best NCC over translations and in-plane angles, ``(n, D)``, for one chunk."""
    n, n_shift = side.modes.shape[:2]
    d = refs.modes.shape[0]
    # (M, 2D, 2r) @ (M, 2r, n*S) -> (M, [Re, Im], D, n*S): I conj(R) per mode.
    prod = torch.matmul(refs.stacked(), side.stacked)
    # Inverse DFT along the modes: (D*n*S, 2M) @ (2M, n_psi), angles last.
    corr = prod.reshape(2 * layout.n_modes, -1).T @ w_inv
    corr = corr.reshape(d, n, n_shift, layout.n_psi)
    if side.ctf2_modes is None:
        best = corr.reshape(d, n, -1).amax(dim=-1)
        return (best / refs.norms[:, None] / side.norms[None, :]).T
    corr = corr / _ctf_reference_norms(side, refs, layout)[:, :, None, :]
    return (corr.reshape(d, n, -1).amax(dim=-1) / side.norms[None, :]).T


def direction_chunk(side: ImageSide, layout: PolarLayout) -> int:
    """Directions per chunk so that the largest intermediates fit ``BLOCK_BYTES``."""
    columns = side.stacked.shape[-1]  # n * S
    per_direction = columns * (8 * layout.n_modes + 8 * layout.n_psi)
    return max(1, BLOCK_BYTES // per_direction)


def image_batch(n_shifts: int) -> int:
    """Images per batch: about ``COLUMNS`` (image, translation) pairs.

    Fewer columns leave room for more directions per chunk within ``BLOCK_BYTES``:
    both matrix products stay large.
    """
    return max(1, COLUMNS // n_shifts)


def coarse_search(projector, dir_quats, side: ImageSide, layout) -> torch.Tensor:
    """The global pass: best NCC ``(n, D)`` per image and viewing direction.

    The maximum runs over every in-plane angle of the grid and every trial translation
    of ``side``. References are generated ``REFERENCE_GROUP`` directions at a time and
    correlated in chunks (``BLOCK_BYTES`` bounds the largest intermediate); they are
    never all held at once.

    Parameters
    ----------
    projector : FourierProjector
        The map at the images' box.
    dir_quats : torch.Tensor of shape (D, 4)
        Grid directions at ``psi = 0`` (:func:`grid_directions`).
    side : ImageSide
        From :func:`image_side`.
    layout : PolarLayout

    Returns
    -------
    torch.Tensor of shape (n, D)
    """
    w_inv = inverse_dft_matrix(layout, side.stacked.dtype, side.stacked.device)
    chunk = direction_chunk(side, layout)
    scores = []
    for group in torch.split(dir_quats, REFERENCE_GROUP):
        refs = reference_side(projector, group, layout)
        for start in range(0, group.shape[0], chunk):
            part = slice(start, start + chunk)
            sub = ReferenceSide(
                refs.modes[part], refs.norms[part], refs.power_modes[part]
            )
            scores.append(_correlate_chunk(side, sub, layout, w_inv))
    return torch.cat(scores, dim=1)


def locate(projector, dir_quats, side: ImageSide, layout):
    """Best in-plane angle and translation of chosen directions, per image.

    Parameters
    ----------
    dir_quats : torch.Tensor of shape (n, k, 4)
        ``k`` directions (at ``psi = 0``) for each of the ``n`` images of ``side``.

    Returns
    -------
    score, psi_index, shift_index : torch.Tensor of shape (n, k)
        The NCC at the best (angle, translation) and their indices.
    """
    refs = reference_side(projector, dir_quats, layout)  # modes (n, k, r, M)
    # (n, M, S, r) @ (n, M, r, k) -> (n, M, S, k) -> (n, k, S, M)
    prod = complex_matmul(
        side.modes.permute(0, 3, 1, 2), refs.modes.conj().permute(0, 3, 2, 1)
    ).permute(0, 3, 2, 1)
    corr = _inverse_modes(prod, layout)  # (n, k, S, n_psi)
    if side.ctf2_modes is None:
        corr = corr / refs.norms[:, :, None, None]
    else:
        cross = complex_matmul(
            side.ctf2_modes.permute(0, 2, 1)[:, :, None],  # (n, M, 1, r)
            refs.power_modes.conj().permute(0, 3, 2, 1),  # (n, M, r, k)
        )[:, :, 0].transpose(1, 2)  # (n, k, M)
        ref2 = _inverse_modes(cross, layout).clamp_min(1e-30)
        corr = corr / torch.sqrt(ref2)[:, :, None, :]
    best, index = corr.flatten(-2).max(dim=-1)
    score = best / side.norms[:, None]
    return score, index % layout.n_psi, index // layout.n_psi


def distinct_margin(coarse, best, dir_quats, symmetry: str, min_angle_deg: float):
    """Best NCC minus the best NCC of directions ``min_angle_deg`` or more away.

    Parameters
    ----------
    coarse : torch.Tensor of shape (n, D)
        Best NCC per image and direction (:func:`coarse_search`).
    best : torch.Tensor of shape (n,)
        Each image's best direction.
    dir_quats : torch.Tensor of shape (D, 4)
    symmetry : str
        Viewing directions ``d`` and ``S^T d`` (those of the mates) are one.
    min_angle_deg : float

    Returns
    -------
    torch.Tensor of shape (n,)
        NaN where no direction is that far.
    """
    vectors = direction_vectors(dir_quats).to(coarse.dtype)  # (D, 3)
    mats = symmetry_matrices(symmetry, dtype=coarse.dtype, device=coarse.device)
    mates = torch.einsum("gji,nj->ngi", mats, vectors[best])  # S^T d: (n, G, 3)
    cosine = torch.einsum("ngi,di->ngd", mates, vectors).amax(dim=1)  # (n, D)
    limit = math.cos(min(math.radians(min_angle_deg), math.pi))
    others = torch.where(cosine < limit, coarse, torch.full_like(coarse, -math.inf))
    margin = coarse.amax(dim=1) - others.amax(dim=1)
    return torch.where(torch.isfinite(margin), margin, torch.nan)


def global_search(projector, dir_quats, offsets_px, images, ctf, *, step_deg, symmetry):
    """The exhaustive search of one batch of images: best grid pose and margin.

    Parameters
    ----------
    projector : FourierProjector
        The map at the images' box.
    dir_quats : torch.Tensor of shape (D, 4)
        The grid's directions (:func:`skpose.search.grid.grid_directions`).
    offsets_px : torch.Tensor of shape (S, 2)
        Trial RELION origins in pixels.
    images : torch.Tensor of shape (n, N, N)
    ctf : CTFParams or None
    step_deg : float
        The grid's angular step (sets ``r_max`` and the in-plane angles).
    symmetry : str

    Returns
    -------
    quats : torch.Tensor of shape (n, 4)
        The best grid rotations.
    shifts_px : torch.Tensor of shape (n, 2)
        Their trial origins.
    margin : torch.Tensor of shape (n,)
        The best NCC minus that of the best direction more than two steps away
        (:func:`distinct_margin`), at the search's resolution.
    """
    box, n_psi = images.shape[-1], n_psi_for(step_deg)
    layout = PolarLayout(box, resolution_for(step_deg, box), n_psi)
    side = image_side(images, layout, offsets_px, ctf)
    coarse = coarse_search(projector, dir_quats, side, layout)
    best = coarse.argmax(dim=1)
    margin = distinct_margin(coarse, best, dir_quats, symmetry, 2 * step_deg)
    _, psi, shift = locate(projector, dir_quats[best][:, None], side, layout)
    spin = in_plane_quats(n_psi, dtype=images.dtype, device=images.device)
    quats = quat_multiply(spin[psi[:, 0]], dir_quats[best])
    return quats, offsets_px[shift[:, 0]], margin
