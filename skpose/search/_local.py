"""Local refinement: full-resolution correlations and a shrinking local search.

Private to :mod:`skpose.search`.

:class:`FourierScorer` computes normalised cross-correlations of images with central
slices of the map at given rotations and translations, on the Cartesian ``rfft2``
half-plane up to a chosen radius (the DC term excluded, interior columns counted twice
so that the sums are those of the full plane). Slices are sampled only at those
frequencies; translations are phase factors, a small window of them evaluated as one
matrix product. In-plane turns can cost no extra slices: the slice of ``R_z(a) R`` is
the slice of ``R`` read at ``R_z(a)^T k``, so ``<I, c P_{R_z(a) R}>`` correlates the
slice of ``R`` with the image transform (times its CTF) read at the turned frequencies
``R_z(a) k``, bilinearly from its twice-padded transform
(:meth:`FourierScorer.score_turned`). Those reads are approximate: their power gains or
loses a few per cent with where the turned frequencies fall between the nodes, which
is divided out (else the NCC ripples with the turn and exceeds 1), and what remains
still moves the peak by a few tenths of a degree on smooth maps.

:func:`local_search` refines poses by a shrinking grid: each round scores 27 rotations
``R_z(u_z s) exp(s (u_x, u_y, 0)) R`` (``u`` in ``{-1, 0, 1}^3``, step ``s``) times a
square window of translations (within ``h`` of the current origin, ``3 x 3`` or, on
small boxes, finer: spaced at most ``s N / 4`` pixels, ``s`` in radians, what a step
moves points a quarter box from the axis). The rounds before the last slice 9
rotations and read each at three in-plane turns; the last, which sets the accuracy,
slices its rotations (exact turns), 19 of them: the cube's corners are left out, a
quadratic needs none. Rotations and translations are coupled (on a
smooth map a small tilt and a sub-pixel shift change the image alike), so a round
does not just keep its best grid point: a quadratic in the five coordinates
``(u, t / h)`` is fitted to all its scores and the pose moves to the fitted maximum
when that is one within two steps (and within the cone and translation range);
otherwise to the best rotation, its translation placed by a quadratic fitted to its
window. Poses whose fitted maximum was not taken or lay more than one step away are
searched again at the same step (at most twice more), the others go on; then both
steps halve. Each round uses the frequencies its step resolves (``r_max ~ 1.5 /
step``, as the global search does): the first rounds see a smooth, wide basin, the
last ones the full resolution. The result is the better, at full resolution, of the
last round's best grid pose and its fitted maximum.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from skpose.geometry.rotations import (
    axis_angle_to_quat,
    geodesic_distance,
    quat_multiply,
)
from skpose.geometry.symmetry import symmetry_aware_distance
from skpose.imaging._fourier import frequency_grid
from skpose.imaging.ctf import compute_ctf
from skpose.search._global import (
    padded_planes,
    resolution_for,
    sample_planes,
    slice_planes,
)

__all__ = [
    "FourierScorer",
    "LocalResult",
    "batches",
    "best_candidates",
    "local_search",
    "refine_batches",
    "score_batches",
]

# Offsets of a 3-point pattern, the centre first.
_UNIT = (0.0, -1.0, 1.0)
# A generic in-plane angle (radians) added to every image turn, see `_round`.
_OFF_GRID = 0.5
# Padding of the image transforms read at turned frequencies.
PAD = 2
# A round's fitted maximum is taken up to this many steps (along each coordinate) from
# the round's centre ...
_TRUST = 2.0
# ... and a pose whose maximum lies more than one step away is searched again at the
# same step, at most this many more times.
_REPEATS = 2
# Most translations per side of a round's window: 2 _WINDOW + 1.
_WINDOW = 3


class FourierScorer:
    """NCC of a batch of images against projections of the map.

    Parameters
    ----------
    projector : FourierProjector
        The map at the images' box ``N``.
    images : torch.Tensor of shape (n, N, N)
    ctf : CTFParams or None
        The images' CTF: projections are multiplied by it before the correlation.
    """

    def __init__(self, projector, images: torch.Tensor, ctf=None):
        n_box = images.shape[-1]
        dtype, device = images.dtype, images.device
        self.projector = projector
        self.box_size = n_box
        gy, gx = frequency_grid(n_box, dtype=dtype, device=device)
        radius = torch.sqrt(gx**2 + gy**2).reshape(-1)
        keep = (radius > 0) & (radius <= n_box / 2)
        order = torch.argsort(radius[keep], stable=True)
        flat = torch.nonzero(keep).squeeze(1)[order]  # frequencies by radius
        self.radius = radius[flat]
        weight = torch.where((gx == 0) | (gx == n_box / 2), 1.0, 2.0).reshape(-1)
        self.weight = weight[flat].to(dtype)
        self.k2d = torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=-1)[flat]
        ft = torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))
        self.image_ft = ft.reshape(images.shape[0], -1)[:, flat]
        self.ctf = None
        if ctf is not None:
            c = compute_ctf(ctf, n_box, dtype=dtype, device=device)
            self.ctf = c[..., : n_box // 2 + 1].reshape(images.shape[0], -1)[:, flat]
        self._images, self._ctf_params, self._planes = images, ctf, None

    @property
    def planes(self) -> torch.Tensor:
        """``Re cI, Im cI`` (and ``c^2``) of :func:`padded_planes`, on first use."""
        if self._planes is None:
            planes = padded_planes(self._images, self._ctf_params, PAD)
            planes = planes if self._ctf_params is None else planes[:, 2:]
            self._planes = planes.contiguous()
        return self._planes

    def subset(self, rows: torch.Tensor) -> FourierScorer:
        """The scorer of the images ``rows`` (indices) alone."""
        out = copy.copy(self)
        out.image_ft, out._images = self.image_ft[rows], self._images[rows]
        if self.ctf is not None:
            out.ctf = self.ctf[rows]
            out._ctf_params = self._ctf_params[rows.cpu().numpy()]
        out._planes = None if self._planes is None else self._planes[rows]
        return out

    def _count(self, r_max: float) -> int:
        return int(torch.searchsorted(self.radius, float(r_max) + 1e-6).item())

    def _image_norms(self, count: int) -> torch.Tensor:
        power = self.image_ft[:, :count].abs() ** 2
        return torch.sqrt((self.weight[:count] * power).sum(-1)).clamp_min(1e-30)

    def score(self, quats, centres_px, offsets_px, r_max: float) -> torch.Tensor:
        """NCC at rotations ``quats`` and origins ``centres_px + offsets_px``.

        Parameters
        ----------
        quats : torch.Tensor of shape (n, c, 4)
            ``c`` candidate rotations per image.
        centres_px : torch.Tensor of shape (n, 2)
            RELION origins (pixels) around which each image's translations are tried.
        offsets_px : torch.Tensor of shape (S, 2)
            Offsets added to every centre.
        r_max : float
            Outer frequency radius (cycles per box) of the correlation.

        Returns
        -------
        torch.Tensor of shape (n, c, S)
        """
        count = self._count(r_max)
        k2d, w = self.k2d[:count], self.weight[:count]
        image = self.image_ft[:, :count]
        ref_weight = w.expand(image.shape[0], -1)
        if self.ctf is not None:
            image = image * self.ctf[:, :count]
            ref_weight = ref_weight * self.ctf[:, :count] ** 2
        b = self._shifted((w * image)[:, None], k2d[None], centres_px, offsets_px)
        return self._ncc(quats, k2d, b, ref_weight[:, None], count)[:, :, 0]

    def score_turned(self, quats, angles_rad, centres_px, offsets_px, r_max: float):
        """NCC at rotations ``R_z(a) R`` for every ``R`` of ``quats`` and angle ``a``.

        Parameters
        ----------
        quats : torch.Tensor of shape (n, c, 4)
        angles_rad : torch.Tensor of shape (A,)
            In-plane turns (radians, about the viewing axis z).
        centres_px, offsets_px, r_max
            As in :meth:`score`.

        Returns
        -------
        torch.Tensor of shape (n, c, A, S)
        """
        count = self._count(r_max)
        k2d, w = self.k2d[:count], self.weight[:count]
        cos, sin = torch.cos(angles_rad), torch.sin(angles_rad)
        turn = torch.stack(
            (torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), 1
        )
        turned = torch.einsum("aij,kj->aki", turn.to(k2d.dtype), k2d)  # (A, K, 2)
        n, a = quats.shape[0], angles_rad.shape[0]
        samples = sample_planes(self.planes, turned.reshape(-1, 2), self.box_size)
        samples = samples.reshape(n, -1, a, count)  # (n, channels, A, K)
        image = torch.complex(samples[:, 0], samples[:, 1])  # (n, A, K)
        ref_weight = w * (samples[:, 2] if self.ctf is not None else 1.0)
        b = self._shifted(w * image, turned, centres_px, offsets_px)
        ncc = self._ncc(quats, k2d, b, ref_weight.expand(n, a, count), count)
        # The reads' power differs from the exact transform's by a gain that depends
        # on where the turned frequencies fall between the padded nodes: divide it
        # out, or the NCC ripples with the turn (and peaks off the true angle).
        exact = self.image_ft[:, :count]
        exact = exact if self.ctf is None else exact * self.ctf[:, :count]
        power = (w * exact.abs() ** 2).sum(-1).clamp_min(1e-30)[:, None]  # (n, 1)
        gain = torch.sqrt((w * image.abs() ** 2).sum(-1) / power)  # (n, A)
        return ncc / gain.clamp_min(1e-30)[:, None, :, None]

    def _shifted(self, image, k2d, centres_px, offsets_px):
        """``image * exp(-2 pi i k.(centre + offset) / N)`` as real planes.

        ``image`` is ``(n, A, K)`` at frequencies ``k2d`` ``(A, K, 2)``; returns the
        real and imaginary parts, each ``(n, K, A * S)``.
        """
        scale = -2 * math.pi / self.box_size
        k = k2d.to(centres_px.dtype)
        arg = scale * torch.einsum("akj,nj->nka", k, centres_px)
        z = image.transpose(1, 2) * torch.polar(torch.ones_like(arg), arg)  # (n, K, A)
        arg = scale * torch.einsum("akj,sj->kas", k, offsets_px.to(k.dtype))
        e = torch.polar(torch.ones_like(arg), arg)  # (K, A, S)
        z_re, z_im = z.real[..., None], z.imag[..., None]
        b_re = z_re * e.real - z_im * e.imag  # (n, K, A, S)
        b_im = z_re * e.imag + z_im * e.real
        return b_re.flatten(2), b_im.flatten(2)

    def _ncc(self, quats, k2d, b, ref_weight, count) -> torch.Tensor:
        """NCC ``(n, c, A, S)`` of the slices of ``quats`` with hypotheses ``b``.

        ``b`` are the real and imaginary planes ``(n, K, A * S)`` of the weighted,
        phase-shifted image transforms (:meth:`_shifted`); ``ref_weight`` ``(n, A, K)``
        weighs the slices' power in their norms (``w`` or ``w c^2``).
        """
        planes = slice_planes(self.projector, quats, k2d)  # (2, n, K, c)
        num = planes[0].transpose(1, 2) @ b[0] + planes[1].transpose(1, 2) @ b[1]
        n, c, a = num.shape[0], num.shape[1], ref_weight.shape[1]
        power = planes[0] ** 2 + planes[1] ** 2  # (n, K, c)
        ref_norm = torch.sqrt(torch.einsum("nkc,nak->nca", power, ref_weight))
        norms = self._image_norms(count)[:, None, None, None]
        num = num.reshape(n, c, a, -1)
        return num / ref_norm.clamp_min(1e-30)[..., None] / norms


def _square_pattern(step_px: float, dtype, device, m: int = 1) -> torch.Tensor:
    """The ``(2 m + 1)^2`` offsets ``step_px * {-1, .., 1}^2`` spaced ``step_px / m``.

    The centre first; one zero offset when ``step_px <= 0``.
    """
    if step_px <= 0:
        return torch.zeros(1, 2, dtype=dtype, device=device)
    ticks = sorted(range(-m, m + 1), key=lambda i: (abs(i), i))  # 0, -1, 1, -2, ..
    r = torch.tensor(ticks, dtype=dtype, device=device) * (step_px / m)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)


def _tilt_pattern(dtype, device) -> torch.Tensor:
    """The 9 out-of-plane unit rotation vectors ``(u_x, u_y, 0)``, the centre first."""
    r = torch.tensor(_UNIT, dtype=dtype, device=device)
    xy = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat((xy, torch.zeros_like(xy[:, :1])), dim=1)


def _chart(quats, u, step_rad: float) -> torch.Tensor:
    """``R_z(u_z s) exp(s (u_x, u_y, 0)) R``; ``quats`` and ``u`` broadcast."""
    zero = torch.zeros_like(u[..., :1])
    tilt = axis_angle_to_quat(torch.cat((u[..., :2], zero), dim=-1) * step_rad)
    spin = axis_angle_to_quat(torch.cat((zero, zero, u[..., 2:]), dim=-1) * step_rad)
    return quat_multiply(quat_multiply(spin, tilt), quats)


def _rotation_pattern(dtype, device, corners: bool = True) -> torch.Tensor:
    """The 27 unit vectors ``u`` of a round: 9 tilts (outer) times 3 turns.

    Without ``corners``: the 19 that are not corners of the cube (enough for a
    quadratic, cross terms included).
    """
    tilt = _tilt_pattern(dtype, device)[:, None, :2].expand(9, 3, 2)
    spin = torch.tensor(_UNIT, dtype=dtype, device=device)[None, :, None]
    u = torch.cat((tilt, spin.expand(9, 3, 1)), dim=-1).reshape(27, 3)
    return u if corners else u[u.abs().sum(dim=1) < 3]


def _quadratic_peak(values: torch.Tensor, x: torch.Tensor, bound: float = 1.0):
    """Maximum of the quadratic fitted to scores ``(m, P)`` at points ``x`` ``(P, d)``.

    Returns the peak ``(m, d)``, the fitted value there ``(m,)`` and whether it is a
    maximum within ``bound`` (negative-definite Hessian, ``|peak|_inf <= bound``).
    """
    d = x.shape[1]
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    cross = torch.stack([x[:, i] * x[:, j] for i, j in pairs], dim=1)
    design = torch.cat((torch.ones_like(x[:, :1]), x, x * x, cross), dim=1)
    coef = values @ torch.linalg.pinv(design).T  # (m, 1 + 2 d + d (d - 1) / 2)
    grad, curv = coef[:, 1 : 1 + d], coef[:, 1 + d : 1 + 2 * d]
    hessian = torch.diag_embed(2 * curv)
    for k, (i, j) in enumerate(pairs):
        hessian[:, i, j] = hessian[:, j, i] = coef[:, 1 + 2 * d + k]
    concave = torch.linalg.eigvalsh(hessian)[:, -1] < 0
    eye = torch.eye(d, dtype=values.dtype, device=values.device)
    safe = torch.where(concave[:, None, None], hessian, -eye)
    peak = -torch.linalg.solve(safe, grad)
    value = coef[:, 0] + 0.5 * (grad * peak).sum(1)
    return peak, value, concave & (peak.abs().amax(dim=1) <= bound)


@dataclass
class LocalResult:
    """Refined poses of a batch: quaternions, origins, NCC and margin."""

    quaternions: torch.Tensor
    shifts_px: torch.Tensor
    score: torch.Tensor
    margin: torch.Tensor


def _round(scorer, quats, shifts_px, step_deg: float, offsets, exact: bool):
    """Scores ``(n, P, S)`` of rotations around ``quats`` times ``offsets``.

    The ``P = 27`` rotations of :func:`_rotation_pattern`: the 9 tilts sliced and the
    images read at the three turns (:meth:`FourierScorer.score_turned`); ``exact``:
    the ``P = 19`` without corners, each sliced.
    """
    dtype, device = quats.dtype, quats.device
    step = math.radians(step_deg)
    r_max = resolution_for(step_deg, scorer.box_size)
    if exact:
        u = _rotation_pattern(dtype, device, corners=False)
        return scorer.score(_chart(quats[:, None], u, step), shifts_px, offsets, r_max)
    tilts = _chart(quats[:, None], _tilt_pattern(dtype, device), step)  # (n, 9, 4)
    spins = torch.tensor(_UNIT, dtype=dtype, device=device) * step
    # Read the image at turns _OFF_GRID + u_z s against slices of R_z(-_OFF_GRID) T R:
    # the same candidates, but no turn samples the padded transform on its nodes
    # (where the gridding correction over-shoots), so none is favoured.
    back = axis_angle_to_quat(torch.tensor([0.0, 0.0, -_OFF_GRID], dtype=dtype))
    scores = scorer.score_turned(
        quat_multiply(back.to(device), tilts),
        spins + _OFF_GRID,
        shifts_px,
        offsets,
        r_max,
    )  # (n, 9, 3, S)
    return scores.reshape(scores.shape[0], 27, -1)


def _move(quats, shifts_px, scores, step_deg: float, offsets, shift_step: float):
    """The round's two poses: the best grid rotation and the fitted maximum.

    The best rotation is the one whose window of translations ``offsets`` (within
    ``shift_step``) fits the highest quadratic maximum (its grid maximum where the fit
    has none inside), its translation at that maximum. The fitted pose is the maximum
    of a quadratic in the five coordinates ``(u, t / h)`` fitted to all the scores,
    where it is one within ``_TRUST`` steps (the best rotation's pose elsewhere).
    Returns rotations ``(n, 2, 4)`` and origins ``(n, 2, 2)``, the best grid
    rotation's first, and whether the fitted maximum is one within a step ``(n,)``.
    """
    dtype, device = quats.dtype, quats.device
    n, nu, s = scores.shape
    u = _rotation_pattern(dtype, device, corners=nu == 27)  # as _round scored
    best = scores.amax(dim=-1)  # (n, nu)
    shift = offsets[scores.argmax(dim=-1)]  # (n, nu, 2)
    x = u
    if s > 1:
        window = offsets / shift_step
        t, value, ok = _quadratic_peak(scores.reshape(n * nu, s), window)
        ok = (ok & (value > best.reshape(-1))).reshape(n, nu)
        best = torch.where(ok, value.reshape(n, nu), best)
        shift = torch.where(ok[..., None], t.reshape(n, nu, 2) * shift_step, shift)
        x = torch.cat((u[:, None].expand(nu, s, 3), window.expand(nu, s, 2)), dim=-1)
    index = best.argmax(dim=1)
    rows = torch.arange(n, device=device)
    step = math.radians(step_deg)
    grid_q = _chart(quats, u[index], step)
    grid_t = shifts_px + shift[rows, index]
    peak, _, ok = _quadratic_peak(scores.reshape(n, -1), x.reshape(nu * s, -1), _TRUST)
    fit_q = torch.where(ok[:, None], _chart(quats, peak[:, :3], step), grid_q)
    fit_t = shifts_px + peak[:, 3:] * shift_step if s > 1 else shifts_px
    fit_t = torch.where(ok[:, None], fit_t, grid_t)
    settled = ok & (peak.abs().amax(dim=1) <= 1)
    return torch.stack((grid_q, fit_q), 1), torch.stack((grid_t, fit_t), 1), settled


def _step(scorer, quats, shifts_px, limits, step_deg, window, last: bool):
    """One round and its move: :func:`_move`'s poses, and which have settled.

    ``window`` is the translation offsets and their half-width; ``limits`` are the
    starting poses, the cone (radians) and the translation range: a fitted maximum
    beyond them is replaced by the best grid rotation's pose. A pose has settled when
    its fitted maximum was taken and lies within one step. ``last``: exact turns.
    """
    start, start_t, cone, max_shift = limits
    scores = _round(scorer, quats, shifts_px, step_deg, window[0], exact=last)
    cand, cand_t, settled = _move(quats, shifts_px, scores, step_deg, *window)
    far = (geodesic_distance(cand[:, 1], start) > cone) | (
        (cand_t[:, 1] - start_t).abs().amax(dim=1) > max_shift * (1 + 1e-6)
    )
    cand[:, 1] = torch.where(far[:, None], cand[:, 0], cand[:, 1])
    cand_t[:, 1] = torch.where(far[:, None], cand_t[:, 0], cand_t[:, 1])
    # The best grid pose is a step from the current one, which may itself be at the
    # edge: a grid rotation out of the cone stays where it was, a grid origin out of
    # range is held at its edge, so that no round carries a pose past the limits.
    out = geodesic_distance(cand[:, 0], start) > cone
    cand[:, 0] = torch.where(out[:, None], quats, cand[:, 0])
    cand[:, 1] = torch.where(out[:, None] & far[:, None], quats, cand[:, 1])
    cand_t = start_t[:, None] + (cand_t - start_t[:, None]).clamp(-max_shift, max_shift)
    return cand, cand_t, settled & ~far


def local_search(
    scorer: FourierScorer,
    quats: torch.Tensor,
    shifts_px: torch.Tensor,
    *,
    cone_deg: float,
    final_step_deg: float,
    max_shift_px: float,
    symmetry: str = "C1",
) -> LocalResult:
    """Refine poses by a shrinking grid search around each (see the module docstring).

    Parameters
    ----------
    scorer : FourierScorer
        Holds the images (and their CTF).
    quats : torch.Tensor of shape (n, 4)
        Starting rotations.
    shifts_px : torch.Tensor of shape (n, 2)
        Starting RELION origins in pixels.
    cone_deg : float
        Half-width of the rotation search: the first round steps ``cone_deg / 2``
        about each axis and the halving steps reach ``cone_deg`` in all; no pose
        moves farther than ``cone_deg`` from its start.
    final_step_deg : float
        Steps halve until they are at most this; the quadratic fitted to that last
        round's scores then places the pose between its points.
    max_shift_px : float
        Half-width of the translation search around the starting origins, reached the
        same way (first step ``max_shift_px / 2``; no origin moves farther along
        either axis); 0 keeps the origins.
    symmetry : str, default "C1"
        Point group: rotations near a mate of the pose do not count in the margin.

    Returns
    -------
    LocalResult
        ``score``: the NCC at full resolution; ``margin``: see :func:`_finish`.
    """
    dtype, device = quats.dtype, quats.device
    start, start_t = quats, shifts_px
    step, shift_step = cone_deg / 2, max_shift_px / 2
    # Translations no farther apart than a step moves points a quarter box from the
    # axis, or a tilt mimics the translation error (one ratio: both steps halve).
    spacing = math.radians(step) * scorer.box_size / 4
    m = min(max(1, math.ceil(shift_step / spacing - 1e-6)), _WINDOW)
    while True:
        last = step <= final_step_deg * (1 + 1e-9)
        window = (_square_pattern(shift_step, dtype, device, m), shift_step)
        todo = torch.arange(quats.shape[0], device=device)
        for attempt in range(1 + _REPEATS):
            sub = scorer if attempt == 0 else scorer.subset(todo)
            limits = (start[todo], start_t[todo], math.radians(cone_deg), max_shift_px)
            pose = (quats[todo], shifts_px[todo])
            c, ct, settled = _step(sub, *pose, limits, step, window, last)
            if attempt == 0:
                cand, cand_t = c, ct
            else:
                cand[todo], cand_t[todo] = c, ct
            quats, shifts_px = cand[:, 1], cand_t[:, 1]
            todo = todo[~settled]
            if todo.numel() == 0:
                break
        if last:
            break
        step, shift_step = step / 2, shift_step / 2
    return _finish(scorer, cand, cand_t, cone_deg, symmetry)


def _finish(scorer, cand, cand_t, cone_deg: float, symmetry: str) -> LocalResult:
    """Pick the better of poses ``cand`` ``(n, 2, 4)``, ``cand_t`` at full resolution.

    The margin compares the pose with six rotations ``cone_deg`` away about the image
    axes, at the resolution ``cone_deg / 2`` resolves (the first round's; cheap), with
    translations re-searched within one pixel. Rotations within
    ``cone_deg / 2`` of a symmetry mate of the pose are not distinct and are left
    out; the margin is NaN when all six are.
    """
    dtype, device = cand.dtype, cand.device
    n = cand.shape[0]
    zero = torch.zeros(1, 2, dtype=dtype, device=device)
    scores = torch.stack(
        [
            scorer.score(cand[:, i, None], cand_t[:, i], zero, scorer.box_size / 2)
            for i in range(cand.shape[1])
        ],
        dim=1,
    )[..., 0, 0]  # (n, 2)
    score, index = scores.max(dim=1)
    rows = torch.arange(n, device=device)
    quats, shifts_px = cand[rows, index], cand_t[rows, index]
    axes = torch.cat((torch.zeros(1, 3), torch.eye(3), -torch.eye(3)))
    axes = axes.to(dtype=dtype, device=device) * math.radians(cone_deg)
    probes = quat_multiply(axis_angle_to_quat(axes)[None], quats[:, None])
    offsets = _square_pattern(1.0, dtype, device)
    r_max = resolution_for(cone_deg / 2, scorer.box_size)
    coarse = scorer.score(probes, shifts_px, offsets, r_max).amax(dim=-1)  # (n, 7)
    apart = symmetry_aware_distance(probes[:, 1:], quats[:, None], symmetry)
    others = torch.where(apart > math.radians(cone_deg) / 2, coarse[:, 1:], -math.inf)
    margin = coarse[:, 0] - others.amax(dim=1)
    margin = torch.where(torch.isfinite(margin), margin, torch.nan)
    return LocalResult(quats, shifts_px, score, margin)


def batches(n: int, size: int, verbose: bool, desc: str):
    """Slices of ``size`` over ``n`` items, with a progress bar when ``verbose``."""
    starts = range(0, n, size)
    for start in tqdm(starts, disable=not verbose, desc=desc, unit="batch"):
        yield slice(start, min(start + size, n))


def refine_batches(
    projector,
    images,
    quats,
    shifts_px,
    ctf,
    *,
    cone_deg: float,
    final_step_deg: float,
    max_shift_px: float,
    batch_size: int,
    symmetry: str = "C1",
    verbose: bool = False,
) -> list:
    """:func:`local_search` batch by batch: a list of ``(q, t, score, margin)``."""
    out = []
    rows = np.arange(images.shape[0])
    for sl in batches(images.shape[0], batch_size, verbose, "refine"):
        scorer = FourierScorer(
            projector, images[sl], None if ctf is None else ctf[rows[sl]]
        )
        res = local_search(
            scorer,
            quats[sl],
            shifts_px[sl],
            cone_deg=cone_deg,
            final_step_deg=final_step_deg,
            max_shift_px=max_shift_px,
            symmetry=symmetry,
        )
        out.append((res.quaternions, res.shifts_px, res.score, res.margin))
    return out


def best_candidates(
    projector, images, quats, shifts_px, ctf, *, step_deg: float, batch_size: int = 256
) -> torch.Tensor:
    """Index ``(n,)`` of each image's best candidate of ``quats`` ``(n, K, 4)``.

    Best: the highest NCC at the resolution a ``step_deg`` step resolves (as a
    refinement round at that step correlates), origins searched on the ``3 x 3``
    window within one pixel of ``shifts_px`` ``(n, 2)``. Inputs as in
    :func:`score_batches`.
    """
    offsets = _square_pattern(1.0, images.dtype, images.device)
    r_max = resolution_for(step_deg, images.shape[-1])
    rows, out = np.arange(images.shape[0]), []
    for sl in batches(images.shape[0], batch_size, False, "hypotheses"):
        c = None if ctf is None else ctf[rows[sl]]
        scorer = FourierScorer(projector, images[sl], c)
        scores = scorer.score(quats[sl], shifts_px[sl], offsets, r_max)  # (b, K, 9)
        out.append(scores.amax(dim=-1).argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def score_batches(projector, images, quats, shifts_px, ctf, batch_size: int = 256):
    """NCC of each image with the projection at its pose, batch by batch.

    Inputs already checked (:func:`skpose.search.pose_score` checks them): images
    ``(n, N, N)`` at the projector's box, quaternions ``(n, 4)`` and origins ``(n, 2)``
    of the images' dtype and device, ``ctf`` None or ``n`` particles. All frequencies
    up to Nyquist but the mean. Returns a float64 tensor ``(n,)`` on the images'
    device.
    """
    zero = torch.zeros(1, 2, dtype=images.dtype, device=images.device)
    rows, out = np.arange(images.shape[0]), []
    for sl in batches(images.shape[0], batch_size, False, "score"):
        c = None if ctf is None else ctf[rows[sl]]
        scorer = FourierScorer(projector, images[sl], c)
        radius = scorer.box_size / 2
        out.append(scorer.score(quats[sl, None], shifts_px[sl], zero, radius))
    return torch.cat(out)[:, 0, 0].to(torch.float64)
