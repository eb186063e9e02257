"""skpose.imaging.preprocess: Fourier crop / pad, background normalisation, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skpose.imaging.preprocess import (
    RELION_BACKGROUND_FRACTION,
    circular_mask,
    fourier_crop,
    fourier_pad,
    fourier_resize,
    normalize_images,
)

ATOL = {torch.float32: 2e-5, torch.float64: 1e-11}
# (large N, small M): even/odd in every combination.
SIZE_PAIRS = [(64, 32), (65, 33), (64, 33), (65, 32), (48, 31), (33, 16)]


def _band_limited(n, kmax, *, leading=(), ndim=2, seed=0):
    """Random real signal on an n-grid with frequencies |k_i| <= kmax on every axis."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*([np.arange(n) - n // 2] * ndim), indexing="ij")
    out = np.zeros((*leading, *([n] * ndim)))
    for _ in range(12):
        k = rng.integers(-kmax, kmax + 1, size=ndim)
        phase = 2 * np.pi * sum(ki * g for ki, g in zip(k, grids, strict=True)) / n
        amp = rng.standard_normal((*leading, *([1] * ndim)))
        out += amp * np.cos(phase + rng.uniform(0, 2 * np.pi))
    return out


# --------------------------------------------------------------------------------------
# Fourier resizing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), SIZE_PAIRS)
def test_band_limited_image_survives_crop_then_pad(n, m):
    x = _band_limited(n, (m - 1) // 2, leading=(3,))
    small = fourier_crop(x, m)
    assert small.shape == (3, m, m)
    np.testing.assert_allclose(fourier_pad(small, n), x, atol=1e-10)


@pytest.mark.parametrize(("n", "m"), [(64, 32), (66, 33), (32, 16), (34, 17)])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("centered", [True, False])
def test_crop_samples_the_band_limited_signal(n, m, ndim, centered):
    # With N = 2M, coarse pixel j sits at fine pixel N//2 + 2 (j - M//2) (centred),
    # or at 2 j (index 0 fixed, as RELION's resizeMap).
    x = _band_limited(n, (m - 1) // 2, ndim=ndim, seed=3)
    small = fourier_resize(x, m, ndim=ndim, centered=centered)
    start = n // 2 - 2 * (m // 2) if centered else 0
    np.testing.assert_allclose(small, x[(slice(start, None, 2),) * ndim], atol=1e-10)


def test_centre_stays_at_n_over_2():
    # A blob centred at N//2 comes out mirror-symmetric about M//2 (pixels M//2 +- d,
    # leaving out the unpaired first row/column of an even box), peaked there.
    for n, m in [*SIZE_PAIRS, *[(m, n) for n, m in SIZE_PAIRS]]:
        g = np.arange(n) - n // 2
        blob = np.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * (n / 20) ** 2))
        out = fourier_resize(blob[None], m)[0]
        core = out[1:, 1:] if m % 2 == 0 else out
        np.testing.assert_allclose(core, core[::-1, ::-1], atol=1e-12)
        np.testing.assert_allclose(core, core.T, atol=1e-12)
        assert np.unravel_index(out.argmax(), out.shape) == (m // 2, m // 2)


@pytest.mark.parametrize(("n", "m"), SIZE_PAIRS)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("centered", [True, False])
def test_pad_then_crop_is_identity(n, m, ndim, centered):
    x = np.random.default_rng(1).standard_normal((2, *([m] * ndim)))
    big = fourier_resize(x, n, ndim=ndim, centered=centered)
    small = fourier_resize(big, m, ndim=ndim, centered=centered)
    np.testing.assert_allclose(small, x, atol=1e-10)


def test_even_nyquist_is_folded_not_halved():
    # (-1)^j on the coarse grid is cos(pi x / 2) on the 2x finer one: pure Nyquist.
    x = np.cos(np.pi * np.arange(16) / 2)[None, :] * np.ones((16, 1))
    small = fourier_crop(x[None], 8)[0]
    np.testing.assert_allclose(small, x[:, ::2][::2], atol=1e-12)


@pytest.mark.parametrize(("n", "m"), SIZE_PAIRS + [(m, n) for n, m in SIZE_PAIRS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_is_preserved(n, m, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, n, n, dtype=dtype, generator=generator) + 3
    y = fourier_resize(x, m)
    torch.testing.assert_close(
        y.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=ATOL[dtype], rtol=0
    )


@pytest.mark.parametrize(("n", "m"), [(32, 16), (33, 20), (32, 21), (20, 32), (21, 30)])
@pytest.mark.parametrize("centered", [True, False])
def test_resize_commutes_with_projection(n, m, centered):
    # Projection along z is the sum over axis 0 ([z, y, x]); mean-preserving scaling
    # makes the projection of the resized volume m / n times the resized projection.
    volume = np.random.default_rng(2).standard_normal((n, n, n))
    resized = fourier_resize(volume, m, ndim=3, centered=centered)
    projected_resized = resized.sum(axis=0) * n / m
    resized_projection = fourier_resize(volume.sum(axis=0)[None], m, centered=centered)
    resized_projection = resized_projection[0]
    np.testing.assert_allclose(projected_resized, resized_projection, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_input(dtype, device):
    x = torch.randn(2, 3, 16, 16, dtype=dtype, device=device)
    y = fourier_resize(x, 10)
    assert isinstance(y, torch.Tensor)
    assert y.dtype == dtype and y.device == x.device and y.shape == (2, 3, 10, 10)
    # Leading dimensions are independent images.
    torch.testing.assert_close(y[1, 2], fourier_resize(x[1, 2][None], 10)[0])
    v = fourier_resize(torch.randn(9, 9, 9, dtype=dtype, device=device), 12, ndim=3)
    assert v.dtype == dtype and v.device == x.device and v.shape == (12, 12, 12)
    same = fourier_resize(x, 16)
    torch.testing.assert_close(same, x)
    assert same is not x


def test_numpy_in_numpy_out():
    x32 = np.ones((2, 8, 8), dtype=np.float32)
    out = fourier_resize(x32, 5)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
    assert fourier_resize(np.ones((1, 8, 8), dtype=np.int16), 4).dtype == np.float64


def test_fourier_resize_errors():
    images = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match=r"'new_size' to be an integer >= 1, got 0"):
        fourier_resize(images, 0)
    with pytest.raises(TypeError, match=r"'new_size' to be an integer, got 2.5"):
        fourier_resize(images, 2.5)
    with pytest.raises(
        ValueError, match=r"'images' to have shape \(\.\.\., N, N\).*8, 6"
    ):
        fourier_resize(np.zeros((2, 8, 6)), 4)
    with pytest.raises(ValueError, match=r"'volume' to have shape \(\.\.\., N, N, N\)"):
        fourier_resize(np.zeros((8, 8, 6)), 4, ndim=3)
    with pytest.raises(ValueError, match=r"'volume' to have shape"):
        fourier_resize(np.zeros((8, 8)), 4, ndim=3)
    bad = images.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"'images' to be finite.*1 NaN or inf"):
        fourier_resize(bad, 4)
    with pytest.raises(ValueError, match=r"'ndim' to be 2 or 3, got 4"):
        fourier_resize(images, 4, ndim=4)
    with pytest.raises(ValueError, match=r"'new_size' <= the box size 8 for cropping"):
        fourier_crop(images, 10)
    with pytest.raises(ValueError, match=r"'new_size' >= the box size 8 for padding"):
        fourier_pad(images, 6)


# --------------------------------------------------------------------------------------
# Normalisation and masks
# --------------------------------------------------------------------------------------


def _background(n, radius):
    y, x = np.mgrid[:n, :n] - n // 2
    return np.hypot(x, y) > radius


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_background_statistics(dtype, device):
    n = 40
    rng = np.random.default_rng(0)
    means, stds = np.array([5.0, -2.0, 0.3]), np.array([3.0, 0.5, 9.0])
    images = rng.normal(means[:, None, None], stds[:, None, None], (3, n, n))
    images[:, ~_background(n, 10)] += 50.0  # a bright particle inside the circle
    t = torch.as_tensor(images, dtype=dtype, device=device)
    out = normalize_images(t)
    assert out.dtype == dtype and out.device == t.device and out.shape == t.shape
    bg = out.cpu().numpy()[:, _background(n, RELION_BACKGROUND_FRACTION * n)]
    np.testing.assert_allclose(bg.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-5)
    # An explicit radius changes which pixels count as background.
    out8 = normalize_images(images, radius=18)
    assert isinstance(out8, np.ndarray)
    bg8 = out8[:, _background(n, 18)]
    np.testing.assert_allclose(bg8.std(axis=1), 1.0, atol=1e-10)
    np.testing.assert_allclose(bg8.mean(axis=1), 0.0, atol=1e-10)


def test_normalize_errors():
    with pytest.raises(ValueError, match=r"'images' to have shape \(n, H, W\)"):
        normalize_images(np.zeros((8, 8)))
    with pytest.raises(
        ValueError, match=r"'images' to have shape \(n, H, W\) with H == W"
    ):
        normalize_images(np.zeros((2, 8, 6)))
    bad = np.random.default_rng(0).standard_normal((2, 8, 8))
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"'images' to be finite"):
        normalize_images(bad)
    noise = np.random.default_rng(0).standard_normal((2, 8, 8))
    with pytest.raises(ValueError, match=r"'radius' to leave at least 2 background"):
        normalize_images(noise, radius=6)
    with pytest.raises(ValueError, match=r"'radius' to be a finite number >= 0"):
        normalize_images(noise, radius=-1)
    flat = noise.copy()
    flat[1] = 7.0
    with pytest.raises(
        ValueError, match=r"Image 1 of 'images' has a constant background"
    ):
        normalize_images(flat)
    # On request, whole-image statistics instead (a blank image stays blank).
    out = normalize_images(flat, constant="whole")
    assert np.allclose(out[1], 0.0) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="'constant'"):
        normalize_images(noise, constant="ignore")


def test_circular_mask():
    mask = circular_mask(9, 2.0)
    assert mask.shape == (9, 9) and mask.dtype == torch.float32
    np.testing.assert_array_equal(mask.numpy(), ~_background(9, 2.0))
    soft = circular_mask(32, 6.0, soft_edge=4.0, dtype=torch.float64)
    r = np.hypot(*(np.mgrid[:32, :32] - 16))
    soft = soft.numpy()
    assert (soft[r <= 6] == 1).all() and (soft[r >= 10] == 0).all()
    edge = (r > 6) & (r < 10)
    np.testing.assert_allclose(
        soft[edge], 0.5 * (1 + np.cos(np.pi * (r[edge] - 6) / 4))
    )
    assert soft[16, 16 + 8] == pytest.approx(0.5)  # halfway through the edge
    sphere = circular_mask(8, 3, ndim=3)
    assert sphere.shape == (8, 8, 8) and sphere[4, 4, 4] == 1 and sphere[0, 0, 0] == 0


def test_circular_mask_errors():
    with pytest.raises(ValueError, match=r"'box_size' to be an integer >= 1, got 0"):
        circular_mask(0, 1)
    with pytest.raises(ValueError, match=r"'radius' to be a finite number >= 0"):
        circular_mask(8, -2)
    with pytest.raises(ValueError, match=r"'soft_edge' to be a finite number >= 0"):
        circular_mask(8, 2, soft_edge=float("nan"))
    with pytest.raises(TypeError, match=r"'radius' to be a number"):
        circular_mask(8, "2")
    with pytest.raises(ValueError, match=r"'ndim' to be 2 or 3"):
        circular_mask(8, 2, ndim=1)


def test_phase_flip_restores_positive_contrast():
    from skpose.imaging.ctf import CTFParams
    from skpose.imaging.preprocess import phase_flip
    from skpose.imaging.projection import project
    from skpose.simulate import phantom_volume

    vol = phantom_volume(32, dtype=np.float64)
    q = np.array([[0.8, 0.2, 0.5, -0.26]]) / np.linalg.norm([0.8, 0.2, 0.5, -0.26])
    ctf = CTFParams(
        np.array([20000.0]), np.array([20000.0]), np.zeros(1), np.array([3.0])
    )
    clean = project(vol, q)
    with_ctf = project(vol, q, ctf=ctf)
    flipped = phase_flip(with_ctf, ctf)

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    assert corr(flipped, clean) > corr(with_ctf, clean) + 0.1  # 0.87 vs 0.74
    # Flipping twice is the identity.
    np.testing.assert_allclose(phase_flip(flipped, ctf), with_ctf, atol=1e-10)
    with pytest.raises(ValueError, match="different numbers"):
        phase_flip(np.concatenate([with_ctf, with_ctf]), ctf)
    with pytest.raises(TypeError, match="'ctf'"):
        phase_flip(with_ctf, {"defocus": 1})


def test_crop_and_pad_refuse_to_guess_whether_a_cube_is_a_volume():
    cube = np.random.default_rng(0).standard_normal((16, 16, 16))
    for func, size in ((fourier_crop, 8), (fourier_pad, 24)):
        with pytest.raises(ValueError, match=r"volume or a stack of 16 images.*ndim=3"):
            func(cube, size)
        assert func(cube, size, ndim=3).shape == (size,) * 3
        assert func(cube, size, ndim=2).shape == (16, size, size)
    # Not a cube: images, as before.
    assert fourier_crop(cube[:5], 8).shape == (5, 8, 8)
