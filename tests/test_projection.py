"""Projector physics: Fourier vs real space, fixed centre, Friedel, sums, directions."""

import numpy as np
import pytest
import torch
from _helpers import ncc

from skpose.geometry.rotations import (
    axis_angle_to_quat,
    quat_to_matrix,
    random_quaternions,
)
from skpose.imaging.ctf import CTFParams, compute_ctf
from skpose.imaging.projection import (
    FourierProjector,
    phase_shift,
    project,
    project_real_space,
)
from skpose.simulate import phantom_volume

IDENTITY = np.array([[1.0, 0.0, 0.0, 0.0]])


@pytest.fixture(scope="module")
def phantom():
    """A compact, smooth (band-limited) asymmetric map in a 48 box: wide Gaussians
    within a radius of 14 voxels."""
    blobs = [
        ((0, 0, 0), 4.0),
        ((8, 2, -3), 2.5),
        ((-5, 7, 3), 2.5),
        ((-3, -8, 6), 3.0),
        ((4, -5, -9), 2.5),
    ]
    return sum(gaussian_blob(48, c, s) * (1 + i / 4) for i, (c, s) in enumerate(blobs))


def gaussian_blob(n, centre_xyz, sigma=1.5):
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    cx, cy, cz = centre_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))


def test_fourier_matches_real_space_on_band_limited_volume(phantom):
    """Both interpolate trilinearly, on different grids; on a smooth map they agree.

    Tolerance: NCC >= 0.9995 and relative L2 difference < 2.5 %: the residual is the
    trilinear interpolation error of each path (measured 1.4 % at box 48, pad 2).
    """
    q = random_quaternions(6, random_state=0).numpy()
    shifts = np.random.default_rng(0).uniform(-3, 3, (6, 2))
    fourier = project(phantom, q, shifts)
    real = project_real_space(phantom, q, shifts)
    assert min(ncc(f, r) for f, r in zip(fourier, real, strict=False)) >= 0.9995
    assert np.linalg.norm(fourier - real) / np.linalg.norm(real) < 0.025


@pytest.mark.parametrize("n", [32, 33])
def test_centre_voxel_stays_fixed(n):
    vol = gaussian_blob(n, (0, 0, 0))
    images = project(vol, random_quaternions(5, random_state=1).numpy())
    for img in images:
        assert np.unravel_index(np.argmax(img), img.shape) == (n // 2, n // 2)


def test_identity_projection_is_sum_over_z(phantom):
    # Identity samples the padded transform on its grid: exact up to the frequencies
    # outside the Nyquist circle, which the projector drops (as RELION does).
    img = FourierProjector(torch.as_tensor(phantom), gridding_correction=False)(
        IDENTITY
    )
    peak = phantom.sum(0).max()
    np.testing.assert_allclose(img[0].numpy(), phantom.sum(axis=0), atol=1e-5 * peak)
    # With the gridding correction (the default; RELION's, but separable: see
    # test_gridding_correction_is_separable_not_relions_radial) the map is first
    # divided by the trilinear kernel's transform, sinc^2(x / 2N) sinc^2(y / 2N)
    # sinc^2(z / 2N).
    r = np.arange(48) - 24
    s = np.sinc(r / 96.0) ** 2
    corrected = phantom / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    img = project(phantom, IDENTITY)
    np.testing.assert_allclose(img[0], corrected.sum(axis=0), atol=1e-5 * peak)


def test_friedel_opposite_view_is_mirror(phantom):
    """F(-k) = conj F(k): viewing from the other side (diag(-1, 1, -1) R) mirrors x."""
    q = random_quaternions(4, random_state=2)
    flip = torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)  # 180 about y
    from skpose.geometry.rotations import quat_multiply

    front = project(torch.as_tensor(phantom), q)
    back = project(torch.as_tensor(phantom), quat_multiply(flip, q))
    n = phantom.shape[0]
    mirrored = torch.roll(
        torch.flip(front, dims=[-1]), shifts=1 if n % 2 == 0 else 0, dims=-1
    )
    assert torch.allclose(back, mirrored, atol=1e-9 * front.abs().max())


def test_rotation_moves_off_centre_blob_where_it_must():
    """A blob on +x, turned 90 degrees about z (p' = R p), appears on +y."""
    n = 32
    vol = gaussian_blob(n, (8, 0, 0))
    q = axis_angle_to_quat(np.array([[0, 0, np.pi / 2]]))
    img = project(vol, q)[0]
    assert np.unravel_index(np.argmax(img), img.shape) == (n // 2 + 8, n // 2)
    # 90 degrees about y sends +x to -z: the blob projects onto the centre.
    img = project(vol, axis_angle_to_quat(np.array([[0, np.pi / 2, 0]])))[0]
    assert np.unravel_index(np.argmax(img), img.shape) == (n // 2, n // 2)
    # 90 about x leaves it on +x.
    img = project(vol, axis_angle_to_quat(np.array([[np.pi / 2, 0, 0]])))[0]
    assert np.unravel_index(np.argmax(img), img.shape) == (n // 2, n // 2 + 8)


def test_shift_sign_is_relion_origin():
    """Origin (ox, oy) = (3, -5) moves the particle by (-3, +5) pixels."""
    n = 32
    vol = gaussian_blob(n, (0, 0, 0))
    img = project(vol, IDENTITY, np.array([[3.0, -5.0]]))[0]
    assert np.unravel_index(np.argmax(img), img.shape) == (n // 2 + 5, n // 2 - 3)
    real = project_real_space(vol, IDENTITY, np.array([[3.0, -5.0]]))[0]
    assert np.unravel_index(np.argmax(real), real.shape) == (n // 2 + 5, n // 2 - 3)


def test_phase_shift_is_unitary_for_integer_shifts():
    f = phase_shift(torch.tensor([[2.0, -7.0]]), 16)
    assert torch.allclose(f.abs(), torch.ones(()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_preserved(phantom, dtype, device):
    vol = torch.as_tensor(phantom, dtype=dtype, device=device)
    q = random_quaternions(3, random_state=0, dtype=dtype, device=device)
    img = project(vol, q, torch.zeros(3, 2, dtype=dtype, device=device))
    assert img.shape == (3, 48, 48) and img.dtype == dtype and img.device.type == device
    ref = project(torch.as_tensor(phantom), q.double().cpu())
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    assert torch.allclose(img.double().cpu(), ref, atol=tol * ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [32, 33])
def test_sample_slices_is_the_transform_of_project(n, dtype, device):
    """At the rfft2 frequencies inside the Nyquist circle, sample_slices of batched
    rotations ``(2, 3, 4)`` against frequencies ``(K, 2)`` is the rfft2 of project()'s
    images (origin at N // 2). Measured: 7e-7 (float32), 8e-16 (float64) of the peak;
    ``|k| = N / 2`` is left out (irfft2 keeps only the real part there: 1e-3)."""
    vol = torch.as_tensor(phantom_volume(n), dtype=dtype, device=device)
    q = random_quaternions(6, random_state=3, dtype=dtype, device=device)
    proj = FourierProjector(vol)
    ft = torch.fft.rfft2(torch.fft.ifftshift(proj(q), dim=(-2, -1)))  # (6, N, M)
    ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=dtype, device=device)
    kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    inside = gx**2 + gy**2 < (n / 2) ** 2
    k2d = torch.stack((gx[inside], gy[inside]), dim=-1)  # (K, 2)
    values = proj.sample_slices(q.reshape(2, 3, 1, 4), k2d)
    assert values.shape == (2, 3, k2d.shape[0]) and values.device.type == device
    assert values.dtype == ft.dtype  # complex64 or complex128
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype] * ft.abs().max()
    assert (values.reshape(6, -1) - ft[:, inside]).abs().max() <= tol
    planes = proj.sample_slices(q.reshape(2, 3, 1, 4), k2d, split=True)
    assert torch.equal(planes, torch.stack((values.real, values.imag)))
    one = proj.sample_slices(q[4].cpu().numpy(), k2d[7])  # no batch, numpy rotation
    assert one.shape == () and torch.allclose(one, values[1, 1, 7])


def test_gridding_correction_is_separable_not_relions_radial():
    """Ours divides by sinc^2 per axis (the separable trilinear kernel's transform),
    RELION's griddingCorrect by sinc^2(|r| / P): equal on the axes, ours up to 0.3 %
    lower within |r| <= N / 2 and 3 % lower at the corners (pad 2)."""
    from skpose.imaging._fourier import gridding_correct

    n = 64
    ones = torch.ones(n, n, n, dtype=torch.float64)
    ours = gridding_correct(ones, 2 * n)
    r = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    radius = torch.sqrt(x**2 + y**2 + z**2)
    relion = 1 / torch.sinc(radius / (2 * n)) ** 2
    ratio = ours / relion
    axes = (x == 0).int() + (y == 0).int() + (z == 0).int() >= 2
    assert (ratio[axes] - 1).abs().max() < 1e-12
    assert 0.996 < ratio[radius <= n / 2].min() <= ratio.max() <= 1 + 1e-12
    assert 0.96 < ratio.min() < 0.975


def test_numpy_in_numpy_out(phantom):
    img = project(phantom, IDENTITY)
    assert isinstance(img, np.ndarray) and img.shape == (1, 48, 48)


def test_ctf_multiplies_the_transform(phantom):
    ctf = CTFParams(
        np.array([15000.0]), np.array([14000.0]), np.array([30.0]), np.array([2.0])
    )
    q = random_quaternions(1, random_state=4).numpy()
    with_ctf = project(phantom, q, ctf=ctf)
    by_hand = np.fft.ifft2(
        np.fft.fft2(np.fft.ifftshift(project(phantom, q)[0]))
        * compute_ctf(ctf, 48, dtype=torch.float64)[0].numpy()
    )
    np.testing.assert_allclose(with_ctf[0], np.fft.fftshift(by_hand.real), atol=1e-8)


def test_gradients_flow_to_quaternions_and_volume(phantom):
    vol = torch.as_tensor(phantom[::2, ::2, ::2].copy()).requires_grad_(True)
    q = random_quaternions(2, random_state=5).requires_grad_(True)
    project(vol, q).square().sum().backward()
    assert (
        q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    )
    assert vol.grad is not None and vol.grad.abs().sum() > 0


def test_gradcheck_quaternions_float64():
    vol = torch.as_tensor(phantom_volume(12).astype(np.float64))
    q = random_quaternions(2, random_state=6).requires_grad_(True)
    shifts = torch.tensor([[0.5, -1.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: project(vol, x, shifts), (q,), atol=1e-6, rtol=1e-4
    )


def test_cache_reuses_fft_and_sees_in_place_changes():
    vol = torch.as_tensor(phantom_volume(16).astype(np.float64))
    a = project(vol, IDENTITY)
    vol.mul_(2.0)  # bumps the tensor's version: the cache must not serve the old FFT
    b = project(vol, IDENTITY)
    assert torch.allclose(b, 2 * a)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((np.zeros((4, 4, 5)), IDENTITY), ValueError, "cubic"),
        ((np.full((4, 4, 4), np.nan), IDENTITY), ValueError, "'volume'.*finite"),
        ((np.zeros((8, 8, 8)), np.zeros((1, 4))), ValueError, "non-zero"),
        ((np.zeros((8, 8, 8)), np.ones((2, 3))), ValueError, "quaternions"),
        ((np.zeros((8, 8, 8)), IDENTITY, np.zeros((2, 2))), ValueError, "shifts_px"),
        ((np.zeros((8, 8, 8)), IDENTITY, None, "ctf"), TypeError, "ctf"),
    ],
)
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        project(*args)


def test_cache_never_serves_another_volume():
    """Temporaries from numpy arrays may reuse freed memory: never a stale FFT."""
    q = random_quaternions(2, random_state=7).numpy()
    for symmetry in ["C1", "C2", "D2", "C3"]:
        vol = phantom_volume(16, symmetry, dtype=np.float64)
        fresh = FourierProjector(torch.as_tensor(vol))(q).numpy()
        np.testing.assert_allclose(project(vol, q), fresh, atol=1e-12)
        t = torch.as_tensor(vol.copy())
        np.testing.assert_allclose(project(t, q).numpy(), fresh, atol=1e-12)


def _exact_projections(volume: np.ndarray, quats) -> np.ndarray:
    """Projections of the volume's band-limited (sinc) interpolant, by a direct sum.

    ``F_img(k) = sum_p V[p] exp(-2 pi i (R^T k) . p)`` at every frequency ``k`` of the
    image grid, zero where ``R^T k`` leaves the volume's cube ``|k_i| <= 1/2``.
    """
    n = volume.shape[-1]
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    points = np.stack((x, y, z), -1).reshape(-1, 3)
    k = np.fft.fftfreq(n)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    k2 = np.stack((kx, ky, np.zeros_like(kx)), -1).reshape(-1, 3)
    out = []
    for m in quat_to_matrix(torch.as_tensor(quats)).numpy():
        k3 = k2 @ m  # rows (R^T k)^T
        ft = np.exp(-2j * np.pi * k3 @ points.T) @ volume.reshape(-1)
        ft[(np.abs(k3) > 0.5 + 1e-9).any(axis=1)] = 0
        out.append(np.fft.fftshift(np.fft.ifft2(ft.reshape(n, n)).real))
    return np.stack(out)


def test_square_frequencies_reproduce_a_sharp_map_at_a_small_box():
    """A map with power up to Nyquist (white noise in a sphere, 16 px): RELION's
    Nyquist circle drops the spectrum's corners; "square" keeps them.

    Measured (pad 2, 4 views): NCC 0.90-0.93 (circle) and 0.972-0.989 (square)
    against the exact projections; docs/conventions.md has the table by box size.
    """
    rng = np.random.default_rng(0)
    n = 16
    r = np.arange(n) - n // 2
    radius = np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r**2)
    vol = rng.standard_normal((n, n, n)) * (radius < 0.4 * n)
    q = random_quaternions(4, random_state=2).numpy()
    exact = _exact_projections(vol, q)
    circle = project(vol, q)
    square = project(vol, q, frequencies="square")
    ncc_circle = max(ncc(a, b) for a, b in zip(circle, exact, strict=True))
    ncc_square = min(ncc(a, b) for a, b in zip(square, exact, strict=True))
    assert ncc_square > 0.965 and ncc_circle < 0.94
    # Inside the circle both modes sample the same values.
    f_circle = FourierProjector(torch.as_tensor(vol)).central_slice(torch.as_tensor(q))
    f_square = FourierProjector(torch.as_tensor(vol), frequencies="square")
    f_square = f_square.central_slice(torch.as_tensor(q))
    inside = f_circle != 0
    torch.testing.assert_close(f_square[inside], f_circle[inside])
    with pytest.raises(ValueError, match=r"'frequencies' to be 'circle' or 'square'"):
        FourierProjector(torch.as_tensor(vol), frequencies="corners")
