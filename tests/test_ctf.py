"""RELION's CTF: formula written out, sign, astigmatism direction, bad input."""

import math

import numpy as np
import pytest
import torch

from skpose.imaging.ctf import CTFParams, compute_ctf, electron_wavelength_angstrom


def relion_getctf(kx, ky, du, dv, angle_deg, voltage_kv, cs_mm, q0, phase_deg, bfac):
    """RELION's CTF::getCTF (src/ctf.h), scalar, written out independently."""
    volts = voltage_kv * 1e3
    lam = 12.2643247 / math.sqrt(volts * (1.0 + volts * 0.978466e-6))
    k1 = math.pi / 2 * 2 * lam
    k2 = math.pi / 2 * cs_mm * 1e7 * lam**3
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    k4 = -bfac / 4.0
    k5 = math.radians(phase_deg)
    u2 = kx * kx + ky * ky
    ellipsoid_ang = math.atan2(ky, kx) - math.radians(angle_deg)
    deltaf = -(du + dv) / 2 - (du - dv) / 2 * math.cos(2 * ellipsoid_ang)
    argument = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
    return -math.sin(argument) * math.exp(k4 * u2)


PARAMS = {
    "du": 18000.0,
    "dv": 16500.0,
    "angle_deg": 35.0,
    "voltage_kv": 200.0,
    "cs_mm": 1.4,
    "q0": 0.1,
    "phase_deg": 20.0,
    "bfac": 50.0,
}


def make(n=1, **kw):
    p = {**PARAMS, **kw}
    return CTFParams(
        defocus_u_angstrom=np.full(n, p["du"]),
        defocus_v_angstrom=np.full(n, p["dv"]),
        defocus_angle_deg=np.full(n, p["angle_deg"]),
        pixel_size_angstrom=np.full(n, 1.5),
        voltage_kv=p["voltage_kv"],
        cs_mm=p["cs_mm"],
        amplitude_contrast=p["q0"],
        phase_shift_deg=p["phase_deg"],
        bfactor=p["bfac"],
    )


def test_wavelength():
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.019687, abs=1e-6)
    assert electron_wavelength_angstrom(200.0) == pytest.approx(0.025079, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_relion_formula(dtype, device):
    n = 32
    ctf = compute_ctf(make(), n, dtype=dtype, device=device)[0].cpu().double().numpy()
    freq = np.fft.fftfreq(n) / 1.5
    for iy, ix in [(0, 0), (1, 0), (0, 3), (5, 7), (31, 2), (16, 16), (20, 9)]:
        ref = relion_getctf(freq[ix], freq[iy], **PARAMS)
        assert ctf[iy, ix] == pytest.approx(
            ref, abs={torch.float32: 2e-5, torch.float64: 1e-12}[dtype]
        )


def test_positive_first_lobe_and_dc_equals_amplitude_contrast():
    ctf = compute_ctf(make(phase_deg=0.0, bfac=0.0), 64, dtype=torch.float64)[0]
    assert float(ctf[0, 0]) == pytest.approx(0.1, abs=1e-12)
    assert float(ctf[0, 1]) > 0.1  # rises from Q0 within the first lobe


def test_astigmatism_direction():
    """Along the astigmatism angle the defocus is DefocusU; at +90 degrees DefocusV."""
    n = 128
    astig = compute_ctf(
        make(du=20000.0, dv=10000.0, angle_deg=0.0), n, dtype=torch.float64
    )[0]
    round_u = compute_ctf(make(du=20000.0, dv=20000.0), n, dtype=torch.float64)[0]
    round_v = compute_ctf(make(du=10000.0, dv=10000.0), n, dtype=torch.float64)[0]
    assert torch.allclose(astig[0, :], round_u[0, :])  # along x (ky = 0)
    assert torch.allclose(astig[:, 0], round_v[:, 0])  # along y


def test_batch_and_subset():
    p = CTFParams(
        np.array([1e4, 2e4, 3e4]), np.array([1e4, 2e4, 3e4]), np.zeros(3), 1.0
    )
    assert len(p) == 3
    full = compute_ctf(p, 16, dtype=torch.float64)
    sub = compute_ctf(p[[2]], 16, dtype=torch.float64)
    assert torch.allclose(full[2], sub[0])


def test_bad_input():
    with pytest.raises(TypeError, match="'params'"):
        compute_ctf({"defocus": 1}, 16)
    with pytest.raises(ValueError, match="pixel_size_angstrom"):
        compute_ctf(CTFParams(1e4, 1e4, 0.0, 0.0), 16)
    with pytest.raises(ValueError, match="amplitude_contrast"):
        compute_ctf(CTFParams(1e4, 1e4, 0.0, 1.0, amplitude_contrast=1.5), 16)
    with pytest.raises(ValueError, match="box_size"):
        compute_ctf(CTFParams(1e4, 1e4, 0.0, 1.0), 1)


def test_resampled_changes_only_the_pixel_size():
    ctf = CTFParams(
        defocus_u_angstrom=[15000.0, 20000.0],
        defocus_v_angstrom=[14000.0, 19000.0],
        defocus_angle_deg=[10.0, 40.0],
        pixel_size_angstrom=[1.5, 1.5],
    )
    assert ctf.resampled(1) is ctf
    half = ctf.resampled(0.5)  # a box half as wide: pixels twice as large
    np.testing.assert_allclose(half.pixel_size_angstrom, [3.0, 3.0])
    for name, value in ctf.as_dict().items():
        if name != "pixel_size_angstrom":
            np.testing.assert_array_equal(half.as_dict()[name], value)
    # The same physical CTF: the small box's CTF is the large one's central part.
    big = np.fft.fftshift(compute_ctf(ctf, 64).numpy(), axes=(-2, -1))
    small = np.fft.fftshift(compute_ctf(half, 32).numpy(), axes=(-2, -1))
    np.testing.assert_allclose(small, big[:, 16:48, 16:48], atol=1e-5)


def test_scale_factor_multiplies_the_ctf_as_relion_does():
    # RELION's CTF::getCTF returns scale * retval (rlnCtfScalefactor, default 1).
    base = CTFParams(1.5e4, 1.4e4, 20.0, 1.2, amplitude_contrast=0.1)
    scaled = CTFParams(1.5e4, 1.4e4, 20.0, 1.2, amplitude_contrast=0.1, scale=0.4)
    one, part = compute_ctf(base, 32), compute_ctf(scaled, 32)
    torch.testing.assert_close(part, 0.4 * one)
    assert float(part[0, 0, 0]) == pytest.approx(0.4 * 0.1)
    assert base.scale == 1.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"'scale' \(rlnCtfScalefactor\)"):
            compute_ctf(CTFParams(1e4, 1e4, 0.0, 1.0, scale=bad), 16)
