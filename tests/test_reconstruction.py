"""Reconstruction physics: projections invert, CTF and symmetry help, FSC behaves.

Measured values (box 32, pad 2, CPU) are quoted in each test; thresholds leave margin.
"""

import numpy as np
import pytest
import torch

from skpose.geometry.rotations import quat_to_matrix, random_quaternions
from skpose.geometry.symmetry import reduce_to_asymmetric_unit
from skpose.imaging.ctf import CTFParams, compute_ctf
from skpose.imaging.projection import project, project_real_space
from skpose.imaging.reconstruction import (
    BackProjector,
    fsc,
    fsc_resolution,
    half_maps,
    reconstruct,
    resolution_at,
)
from skpose.simulate import phantom_volume, simulate_particles

N = 32


def sphere(n=N, radius=None):
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return x * x + y * y + z * z <= (radius or n // 2 - 1) ** 2


def corr_in_sphere(a, b):
    """Pearson correlation of two maps over the voxels of the inscribed sphere."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inside = sphere(a.shape[-1])
    a, b = a[inside] - a[inside].mean(), b[inside] - b[inside].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def rel_error(a, b):
    inside = sphere(a.shape[-1])
    return float(np.linalg.norm(a[inside] - b[inside]) / np.linalg.norm(b[inside]))


@pytest.fixture(scope="module")
def vol():
    return phantom_volume(N)


@pytest.fixture(scope="module")
def noiseless(vol):
    """800 shifted projections at uniform random poses."""
    q = random_quaternions(800, random_state=0).numpy()
    shifts = np.random.default_rng(0).uniform(-3, 3, (800, 2))
    return project(vol, q, shifts), q, shifts


# --- reconstruction from projections ----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noiseless_projections_reconstruct_the_phantom(vol, noiseless, dtype, device):
    """Measured: correlation 0.9998, relative error 3.4 % in the sphere (the
    trilinear interpolation error of projector and insertion); wrong poses 0.61."""
    images, q, shifts = noiseless
    rec = reconstruct(
        torch.tensor(images, dtype=dtype, device=device),
        torch.tensor(q, device=device),
        torch.tensor(shifts, device=device),
    )
    assert rec.shape == (N, N, N) and rec.dtype == dtype
    assert rec.device.type == torch.device(device).type
    rec = rec.cpu().numpy()
    assert corr_in_sphere(rec, vol) >= 0.999
    assert rel_error(rec, vol) < 0.05
    wrong = random_quaternions(len(q), random_state=1).numpy()
    assert corr_in_sphere(reconstruct(images, wrong, shifts), vol) < 0.8


def test_real_space_projections_reconstruct_the_phantom(vol):
    """Images from the independent real-space projector (the convention R = RELION's
    A): measured correlation 0.996 from 100 images."""
    q = random_quaternions(100, random_state=2).numpy()
    shifts = np.random.default_rng(2).uniform(-2, 2, (100, 2))
    images = project_real_space(vol, q, shifts)
    assert corr_in_sphere(reconstruct(images, q, shifts), vol) >= 0.99


def test_off_centre_point_comes_back_at_its_voxel():
    vol = np.zeros((N, N, N))
    vol[N // 2 + 2, N // 2 - 4, N // 2 + 6] = 1.0  # z = +2, y = -4, x = +6
    q = random_quaternions(400, random_state=3).numpy()
    rec = reconstruct(project(vol, q), q)
    assert np.unravel_index(np.argmax(rec), rec.shape) == (N // 2 + 2, N // 2 - 4, 22)


def test_shifts_are_undone_with_relion_sign(vol, noiseless):
    """Measured: 0.9998 with the origins, 0.80 ignoring them, 0.52 negated."""
    images, q, shifts = noiseless
    good = corr_in_sphere(reconstruct(images, q, shifts), vol)
    ignored = corr_in_sphere(reconstruct(images, q), vol)
    negated = corr_in_sphere(reconstruct(images, q, -shifts), vol)
    assert good >= 0.999 and ignored < 0.9 and negated < ignored


@pytest.mark.parametrize(("box", "pad"), [(33, 2), (33, 1), (31, 3)])
def test_odd_boxes_and_other_pads(box, pad):
    """Odd boxes, and odd padded grids (no Nyquist plane). Measured 0.9998 (33, 2),
    0.998 (33, 1), 0.9999 (31, 3)."""
    vol = phantom_volume(box)
    q = random_quaternions(800, random_state=4).numpy()
    rec = reconstruct(project(vol, q), q, pad=pad)
    assert corr_in_sphere(rec, vol) >= 0.99


def test_gridding_correction_is_the_trilinear_one(vol, noiseless):
    """sinc^2 (the trilinear kernel's transform) beats no correction: measured
    relative error 3.4 % vs 5.9 %."""
    images, q, shifts = noiseless
    with_gc = reconstruct(images, q, shifts)
    without = reconstruct(images, q, shifts, gridding_correction=False)
    assert rel_error(with_gc, vol) < rel_error(without, vol) - 0.01


def _full_grid_insertion(images, quat, box, pad):
    """Naive reference: every half-plane sample and its Friedel mate ``(-k, conj)``
    scattered into a full periodic ``P^3`` grid, no mirroring tricks."""
    bp = BackProjector(box, pad=pad, dtype=torch.float64)
    p = pad * box
    ft = torch.fft.rfft2(torch.fft.ifftshift(torch.as_tensor(images), dim=(-2, -1)))
    ft = ft.reshape(len(images), -1)[:, bp._index] * bp._multiplicity
    weight = bp._multiplicity.expand(len(images), -1)
    pts = torch.einsum("ki,bij->bkj", bp._k2d, quat_to_matrix(quat)[:, :2, :])
    pts, ft, weight = (
        torch.cat((pts, -pts)),
        torch.cat((ft, ft.conj())),
        torch.cat((weight, weight)),
    )
    data = torch.zeros(p, p, p, dtype=torch.complex128)
    wgrid = torch.zeros(p, p, p, dtype=torch.float64)
    base = torch.floor(pts)
    frac = pts - base
    for corner in np.ndindex(2, 2, 2):  # (dx, dy, dz)
        w = torch.ones_like(frac[..., 0])
        for axis, d in enumerate(corner):
            w = w * (frac[..., axis] if d else 1 - frac[..., axis])
        idx = torch.remainder(base.long() + torch.tensor(corner), p)
        index = (idx[..., 2], idx[..., 1], idx[..., 0])  # [z, y, x]
        data.index_put_(index, ft * w, accumulate=True)
        wgrid.index_put_(index, weight * w, accumulate=True)
    return bp, data[..., : p // 2 + 1], wgrid[..., : p // 2 + 1]


@pytest.mark.parametrize(("box", "pad"), [(8, 2), (7, 1), (7, 3), (9, 2)])
def test_half_grid_equals_naive_full_grid_insertion(box, pad):
    """The Friedel mirroring, the x = 0 and Nyquist planes and the edge clamp."""
    vol = phantom_volume(box if box >= 8 else 8)[:box, :box, :box].astype(np.float64)
    quat = random_quaternions(20, random_state=6)
    images = project(torch.tensor(vol), quat)
    bp, data, weight = _full_grid_insertion(images, quat, box, pad)
    bp.insert(images, quat)
    got_data, got_weight = bp._hermitian_grids()
    torch.testing.assert_close(got_weight, weight)
    torch.testing.assert_close(got_data, data)


def _shell_amplitudes(vol):
    power = np.abs(np.fft.fftn(vol)) ** 2
    k = np.fft.fftfreq(N, 1.0 / N)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.round(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    return np.sqrt(np.bincount(shell.ravel(), power.ravel())[: N // 2 + 1])


@pytest.mark.parametrize("pad", [1, 2])
def test_wiener_constant_is_an_inverse_snr_per_sample(vol, pad):
    """n images at uniform poses give a voxel at radius r about n / (2 r) samples, so
    the constant c scales shell r by (n / 2r) / (n / 2r + c), whatever the padding.
    Measured at shells 4, 8, 12 (n = 400, c = 20): 0.71, 0.55, 0.45 at either pad."""
    q = random_quaternions(400, random_state=0).numpy()
    images = project(vol, q)
    plain = _shell_amplitudes(reconstruct(images, q, pad=pad, wiener_constant=0))
    damped = _shell_amplitudes(reconstruct(images, q, pad=pad, wiener_constant=20))
    for r in (4, 8, 12):
        samples = 400 / (2 * r)
        assert damped[r] / plain[r] == pytest.approx(samples / (samples + 20), abs=0.03)


def test_batching_and_streaming_give_the_same_map(noiseless):
    images, q, shifts = noiseless
    images, q, shifts = images[:200], q[:200], shifts[:200]
    whole = reconstruct(images, q, shifts)
    small_batches = reconstruct(images, q, shifts, batch_size=7)
    bp = BackProjector(N)
    bp.insert(images[:150], q[:150], shifts[:150])
    bp.insert(torch.from_numpy(images[150:]), torch.from_numpy(q[150:]), shifts[150:])
    assert bp.n_inserted == 200
    np.testing.assert_allclose(small_batches, whole, atol=1e-5 * np.abs(whole).max())
    np.testing.assert_allclose(
        bp.reconstruct().numpy(), whole, atol=1e-5 * np.abs(whole).max()
    )


def test_numpy_in_numpy_out_and_memmap(noiseless, tmp_path):
    images, q, _ = noiseless
    path = tmp_path / "stack.npy"
    np.save(path, images[:100])
    stack = np.load(path, mmap_mode="r")
    rec = reconstruct(stack, q[:100], batch_size=32)
    assert isinstance(rec, np.ndarray) and rec.dtype == np.float32
    np.testing.assert_allclose(rec, reconstruct(images[:100], q[:100]), atol=1e-6)


def test_ctf_weighted_insertion_corrects_the_ctf(vol):
    """Measured: 0.9996 with the CTF, 0.73 ignoring it (3 A pixels, 1-2.5 um)."""
    sim = simulate_particles(
        vol, 1000, ctf=True, pixel_size_angstrom=3.0, max_shift=3, random_state=0
    )
    args = (sim.images, sim.quaternions, sim.shifts_px)
    with_ctf = corr_in_sphere(reconstruct(*args, ctf=sim.ctf), vol)
    ignored = corr_in_sphere(reconstruct(*args), vol)
    assert with_ctf >= 0.99 and ignored < 0.85
    # The CTF as an array (fft2 layout) gives the same map.
    some = (sim.images[:100], sim.quaternions[:100], sim.shifts_px[:100])
    values = compute_ctf(sim.ctf[np.arange(100)], N).numpy()
    np.testing.assert_allclose(
        reconstruct(*some, ctf=values),
        reconstruct(*some, ctf=sim.ctf[np.arange(100)]),
        atol=1e-4,
    )


def test_symmetry_expansion_needs_fewer_images():
    """D2 phantom, poses in one asymmetric unit. Measured (20 images, D2): correlation
    0.9990, relative error 5.6 %, mean FSC over shells >= N/4 0.93; without symmetry
    from twice the images (40): 0.9948, 9.9 %, 0.79 (from the same 20: 0.971, 22 %,
    0.58)."""
    vol = phantom_volume(N, "D2")
    q = reduce_to_asymmetric_unit(random_quaternions(40, random_state=1), "D2").numpy()
    images = project(vol, q)
    sym = reconstruct(images[:20], q[:20], symmetry="D2")
    plain = reconstruct(images, q)
    assert corr_in_sphere(sym, vol) > corr_in_sphere(plain, vol)
    assert rel_error(sym, vol) < 0.8 * rel_error(plain, vol)
    high = slice(N // 4, None)
    assert fsc(sym, vol)[1][high].mean() > fsc(plain, vol)[1][high].mean() + 0.05


# --- half maps ------------------------------------------------------------------


def test_half_maps_resolution_improves_with_more_particles(vol):
    """SNR 0.5, 2 A pixels (Nyquist 4 A). Measured: 7.5 A from 200 particles,
    5.5 A from 2000; FSC at shell 9 (5.6 A): 0.07 vs 0.61."""
    results = []
    for n in (200, 2000):
        sim = simulate_particles(
            vol, n, snr=0.5, max_shift=2, pixel_size_angstrom=2.0, random_state=0
        )
        m1, m2 = half_maps(sim.images, sim.quaternions, sim.shifts_px, random_state=0)
        freq, curve = fsc(m1, m2, pixel_size_angstrom=2.0)
        results.append((resolution_at(freq, curve), curve))
    (res_few, fsc_few), (res_many, fsc_many) = results
    assert 4.0 < res_many < res_few < np.inf
    assert fsc_many[9] > fsc_few[9] + 0.3


def test_half_maps_follow_the_given_subset(noiseless):
    images, q, shifts = noiseless
    images, q, shifts = images[:60], q[:60], shifts[:60]
    subset = np.tile([1, 2, 2], 20)
    m1, m2 = half_maps(images, q, shifts, subset=subset)
    np.testing.assert_allclose(m1, reconstruct(images[::3], q[::3], shifts[::3]))
    np.testing.assert_allclose(
        m2, reconstruct(images[subset == 2], q[subset == 2], shifts[subset == 2])
    )
    r1, r2 = half_maps(images, q, shifts, random_state=5)
    s1, _ = half_maps(images, q, shifts, random_state=5)
    np.testing.assert_array_equal(r1, s1)
    assert not np.allclose(r1, r2)


# --- FSC ------------------------------------------------------------------------


def test_fsc_of_a_map_with_itself_is_one_and_symmetric(vol, device):
    rng = np.random.default_rng(0)
    other = vol + 0.3 * rng.standard_normal(vol.shape).astype(np.float32)
    freq, same = fsc(torch.tensor(vol, device=device), torch.tensor(vol, device=device))
    assert freq.device.type == torch.device(device).type
    np.testing.assert_allclose(same.cpu().numpy(), 1.0, atol=1e-5)
    freq, ab = fsc(vol, other, pixel_size_angstrom=1.5)
    _, ba = fsc(other, vol, pixel_size_angstrom=1.5)
    np.testing.assert_allclose(ab, ba, atol=1e-6)
    assert freq.shape == (N // 2 + 1,)
    np.testing.assert_allclose(freq[-1], 1 / 3.0)  # Nyquist: 1 / (2 * 1.5 A)
    assert 0 < ab[-1] < ab[1] <= 1


def test_fsc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, N, N, N))
    _, curve = fsc(a, b)
    # Shells 1..: tens to thousands of voxels each, std ~ 1 / sqrt(voxels).
    # Measured: mean -0.017, largest |FSC| beyond shell 2: 0.067.
    assert abs(curve[1:].mean()) < 0.05
    assert np.abs(curve[3:]).max() < 0.2


@pytest.mark.parametrize("cutoff", [6, 10])
def test_low_pass_copy_crosses_threshold_at_the_cutoff(vol, cutoff):
    """A hard low-pass at radius ``cutoff`` (shells) drops the FSC to 0 right after."""
    rng = np.random.default_rng(2)
    noisy = vol + 0.05 * rng.standard_normal(vol.shape)
    k = np.fft.fftfreq(N, 1.0 / N)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    keep = np.sqrt(kx**2 + ky**2 + kz**2) < cutoff + 0.5
    low = np.fft.ifftn(np.fft.fftn(noisy) * keep).real
    freq, curve = fsc(noisy, low, pixel_size_angstrom=2.0)
    res = resolution_at(freq, curve)
    assert cutoff <= 1 / (res * freq[1]) <= cutoff + 1
    assert fsc_resolution(noisy, low, pixel_size_angstrom=2.0) == pytest.approx(res)


def test_fsc_with_mask_ignores_what_is_outside():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((N, N, N))
    b = a.copy()
    outside = ~sphere(N, 8)
    b[outside] = rng.standard_normal(outside.sum())
    assert fsc(a, b)[1][5:].mean() < 0.5
    mask = sphere(N, 8).astype(float)
    np.testing.assert_allclose(fsc(a, b, mask=mask)[1], 1.0, atol=1e-6)


def test_resolution_at_interpolates_and_handles_the_ends():
    freq = np.array([0.0, 0.1, 0.2, 0.3])
    assert resolution_at(freq, [1.0, 0.5, 0.0, 0.0], 0.25) == pytest.approx(1 / 0.15)
    assert resolution_at(freq, [1.0, 0.9, 0.8, 0.7]) == pytest.approx(1 / 0.3)
    assert resolution_at(freq, [0.1, 0.9, 0.8, 0.7]) == np.inf
    assert resolution_at(torch.tensor(freq), torch.tensor([1.0, 1, 0, 0])) > 5.0


# --- bad input ------------------------------------------------------------------


def _bad(images=None, q=None, **kw):
    images = np.zeros((4, 16, 16)) if images is None else images
    q = random_quaternions(4, random_state=0).numpy() if q is None else q
    return reconstruct(images, q, **kw)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: _bad(images=np.zeros((4, 16, 15))), r"'images'.*\(n, N, N\)"),
        (lambda: _bad(images=np.zeros((16, 16))), r"'images'.*\(n, N, N\)"),
        (lambda: _bad(q=np.ones((4, 3))), r"'quaternions'.*\(\.\.\., 4\)"),
        (lambda: _bad(q=np.ones((5, 4))), r"'quaternions'.*\(4, 4\), one per image"),
        (lambda: _bad(q=np.full((4, 4), np.nan)), "'quaternions' to be finite"),
        (
            lambda: _bad(images=np.full((4, 16, 16), np.nan)),
            "'images' to be finite",
        ),
        (lambda: _bad(shifts_px=np.zeros((4, 3))), r"'shifts_px'.*\(4, 2\)"),
        (lambda: _bad(ctf=np.ones((3, 16, 16))), r"'ctf'.*\(4, 16, 16\)"),
        (lambda: _bad(symmetry="X5"), "'symmetry'"),
        (lambda: _bad(pad=0), "'pad' to be an integer >= 1"),
        (lambda: _bad(batch_size=1.5), "'batch_size' to be an integer"),
        (lambda: _bad(wiener_constant=-1), "'wiener_constant'.*>= 0"),
        (lambda: _bad(wiener_constant=np.inf), "'wiener_constant'.*finite"),
        (lambda: BackProjector(16, dtype=torch.int64), "'dtype'"),
        (lambda: BackProjector(1), "'box_size' to be an integer >= 2"),
        (
            lambda: BackProjector(8).insert(np.zeros((2, 9, 9)), np.ones((2, 4))),
            r"'images'.*\(n, 8, 8\)",
        ),
        (
            lambda: _bad(ctf=CTFParams(np.ones(3), np.ones(3), 0.0, 1.0)),
            "'ctf' to describe 1 or 4 particles",
        ),
        (
            lambda: half_maps(np.zeros((4, 16, 16)), np.ones((4, 4)), subset=[1] * 4),
            "'subset'.*both 1 and 2",
        ),
        (
            lambda: half_maps(np.zeros((4, 16, 16)), np.ones((4, 4)), subset=[1, 3]),
            r"'subset'.*\(4,\)",
        ),
        (lambda: fsc(np.zeros((8, 8, 8)), np.zeros((9, 9, 9))), "same shape"),
        (lambda: fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 4))), "'map2'.*cubic"),
        (
            lambda: fsc(np.zeros((8,) * 3), np.zeros((8,) * 3), mask=np.ones((4,) * 3)),
            "'mask'",
        ),
        (
            lambda: fsc(np.ones((8,) * 3), np.ones((8,) * 3), pixel_size_angstrom=0),
            "'pixel_size_angstrom'",
        ),
        (
            lambda: resolution_at([0, 1], [1, 0], threshold=1.5),
            r"'threshold'.*\(0, 1\)",
        ),
        (lambda: resolution_at([0, 1], [1, 0], threshold=0), r"'threshold'.*\(0, 1\)"),
        (lambda: resolution_at([0, 1, 2], [1, 0]), "same length"),
        (lambda: resolution_at([0, 1], [1, np.nan]), "'fsc_values' to be finite"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_half_maps_rejects_unknown_options():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments.*'symetry'"):
        half_maps(np.zeros((4, 16, 16)), np.ones((4, 4)), symetry="C2")
