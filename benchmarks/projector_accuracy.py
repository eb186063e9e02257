"""Accuracy and speed of the Fourier projector by box size, padding and frequencies.

Each map is projected at random orientations by ``FourierProjector`` with
``frequencies="circle"`` (RELION's Nyquist circle, the default) and ``"square"`` (every
image frequency) at several paddings, and by ``project_real_space`` (trilinear in real
space), and compared (normalised cross-correlation, mean and minimum over the images)
with an exact projection computed independently of both:

- ``blobs``: Gaussian blobs (sigma 1-1.5 px, power up to Nyquist); their projection is
  analytic: ``sum_i a_i sqrt(2 pi) s_i exp(-|p - (R c_i)_xy|^2 / (2 s_i^2))``.
- ``noise``: white noise inside a sphere of radius 0.4 N (flat spectrum: the hardest
  case); the exact projection of its band-limited (sinc) interpolant is a direct
  Fourier sum over every voxel at every frequency of the image grid, zero where the
  slice leaves the volume's frequency cube.
- ``80S`` (boxes <= 80, needs the shared test data): the 80S ribosome potential
  (4UG0, 80^3 at 4 A) Fourier-cropped to the box, by the same direct sum.

Speed: seconds to build the projector (the padded FFT) and milliseconds per image of a
batch, on one CPU thread.

    python benchmarks/projector_accuracy.py                       # boxes 32 64 128
    python benchmarks/projector_accuracy.py --sizes 32 --pads 1 2 4 --images 16
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import skpose
from skpose.geometry.rotations import quat_to_matrix, random_quaternions
from skpose.imaging.preprocess import fourier_crop
from skpose.imaging.projection import FourierProjector, project_real_space

HERE = Path(__file__).resolve().parent
MAP_80S = "maps/ribosome_4ug0_scattering_potential_from_cistem.mrc"


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    num = (a * b).sum(dim=(-2, -1))
    return num / torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1)))


def blobs(n: int, quats: torch.Tensor, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """A blob map and its analytic projections."""
    c = rng.uniform(-1, 1, (180, 3))
    c = c[np.linalg.norm(c, axis=1) < 1][:60] * 0.4 * n
    s, a = rng.uniform(1.0, 1.5, len(c)), rng.uniform(0.5, 1.0, len(c))
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    yy, xx = np.meshgrid(r, r, indexing="ij")
    vol, images = np.zeros((n, n, n)), np.zeros((len(quats), n, n))
    for ci, si, ai in zip(c, s, a, strict=True):
        d2 = (x - ci[0]) ** 2 + (y - ci[1]) ** 2 + (z - ci[2]) ** 2
        vol += ai * np.exp(-d2 / (2 * si**2))
    for i, m in enumerate(quat_to_matrix(quats).numpy()):
        for (px, py, _), si, ai in zip(c @ m.T, s, a, strict=True):  # R c
            d2 = (xx - px) ** 2 + (yy - py) ** 2
            images[i] += ai * math.sqrt(2 * math.pi) * si * np.exp(-d2 / (2 * si**2))
    return torch.as_tensor(vol), torch.as_tensor(images)


def exact_projections(vol: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """Projections of the sinc interpolant: a direct, separable Fourier sum."""
    n = vol.shape[-1]
    r = torch.arange(n, dtype=torch.float64) - n // 2
    v = vol.to(torch.complex128).reshape(n * n, n)
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    k2 = torch.stack((kx, ky, torch.zeros_like(kx)), -1).reshape(-1, 3)
    out = []
    for m in quat_to_matrix(quats):
        k3 = k2 @ m  # rows (R^T k)^T
        ft = torch.zeros(len(k3), dtype=torch.complex128)
        for s in range(0, len(k3), 1024):
            kk = k3[s : s + 1024]
            ex, ey, ez = (torch.exp(-2j * math.pi * kk[:, [i]] * r) for i in range(3))
            part = (v @ ex.T).reshape(n, n, -1)  # sum over x: (z, y, k)
            part = torch.einsum("zyk,ky->zk", part, ey)  # over y
            ft[s : s + 1024] = torch.einsum("zk,kz->k", part, ez)  # over z
        ft[(k3.abs() > 0.5 + 1e-9).any(dim=1)] = 0
        out.append(torch.fft.fftshift(torch.fft.ifft2(ft.reshape(n, n)).real))
    return torch.stack(out)


def references(n: int, quats: torch.Tensor, data: Path | None) -> dict:
    rng = np.random.default_rng(n)
    refs = {"blobs": blobs(n, quats, rng)}
    r = torch.arange(n, dtype=torch.float64) - n // 2
    radius = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r**2)
    noise = torch.as_tensor(rng.standard_normal((n, n, n))) * (radius < 0.4 * n)
    refs["noise"] = (noise, exact_projections(noise, quats))
    if data is not None and (data / MAP_80S).is_file() and n <= 80:
        big = torch.as_tensor(skpose.read_volume(data / MAP_80S)[0]).double()
        vol = fourier_crop(big, n, ndim=3) if n < 80 else big
        refs["80S"] = (vol, exact_projections(vol, quats))
    return refs


def timed(vol: torch.Tensor, quats: torch.Tensor, pad: int, frequencies: str):
    start = time.perf_counter()
    projector = FourierProjector(vol, pad=pad, frequencies=frequencies)
    setup = time.perf_counter() - start
    projector(quats[:1])
    start = time.perf_counter()
    images = projector(quats)
    return images, setup, (time.perf_counter() - start) / len(quats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--pads", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--data", type=Path, default=os.environ.get("SKPOSE_TEST_DATA"))
    args = p.parse_args()
    torch.set_num_threads(1)
    data = args.data or HERE.parent.parent / "shared" / "data"
    data = data if Path(data).is_dir() else None
    print("| box | map | mode | NCC mean | NCC min | setup (s) | ms / image |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        quats = random_quaternions(args.images, random_state=1)
        for name, (vol, exact) in references(n, quats, data).items():
            vol32, q32 = vol.to(torch.float32), quats.to(torch.float32)
            rows = []
            for pad in args.pads:
                for frequencies in ("circle", "square"):
                    images, setup, per = timed(vol32, q32, pad, frequencies)
                    rows.append((f"{frequencies}, pad {pad}", images, setup, per))
            start = time.perf_counter()
            images = project_real_space(vol32, q32)
            per = (time.perf_counter() - start) / len(q32)
            rows.append(("real space (trilinear)", images, 0.0, per))
            for mode, images, setup, per in rows:
                c = ncc(images.double(), exact)
                print(
                    f"| {n} | {name} | {mode} | {float(c.mean()):.4f} | "
                    f"{float(c.min()):.4f} | {setup:.2f} | {per * 1e3:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
