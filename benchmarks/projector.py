"""Projections per second: skpose's Fourier-slice projector against other libraries.

Usage::

    python benchmarks/projector.py [--sizes 64 128] [--batch 256] [--repeats 5]
    python benchmarks/projector.py --quick      # box 32, batch 16, 2 repeats (< 60 s)

Every method is wrapped as a function ``quaternions (b, 4) -> images (b, N, N)`` in
skpose's convention (volume ``[z, y, x]`` with origin ``N // 2``, quaternions
``(w, x, y, z)``, ``R`` = RELION's ``A``, ``img(x, y) = sum_z V(R^T (x, y, z))``).
Work that depends only on the volume (its padded FFT) happens once, untimed, for every
method that allows it; torch-fourier-slice's public ``project_3d_to_2d`` redoes it on
every call, so it appears twice: as published and with the FFT hoisted out.

"fwd+bwd" is one forward pass plus the gradient of ``sum(images * target)`` with
respect to the quaternions. The third-party projectors take rotation matrices; their
wrappers build them with ``skpose.geometry.rotations.quat_to_matrix`` inside the timed
region, so every row differentiates down to the same quaternions.

The optional libraries are not skpose dependencies; install them without letting pip
touch torch (see ``INSTALL_HINT``). A library that fails to import is skipped with the
reason printed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

# libgomp (torch's OpenMP) spin-waits up to 300k iterations at every barrier. On a
# small shared VM that made runs intermittently ~5x (many-small-op code: ~100x) slower
# while a descheduled thread was being waited for; a short spin keeps timings stable.
# It must be set before torch loads libgomp; an explicit environment value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch
import torch.nn.functional as F

# Benchmark the checkout this file lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skpose.geometry.rotations import quat_to_matrix, random_quaternions
from skpose.imaging.projection import project, project_real_space

INSTALL_HINT = """\
Optional libraries (keep torch as it is: install with --no-deps):
  pip install --no-deps torch-fourier-slice torch-grid-utils \\
      torch-image-interpolation torch-ctf einops
  # torch-projectors' PyPI wheel is built against one torch release; for another
  # torch, build it from source against the installed one (needs g++ and pybind11):
  pip install --no-deps --target /tmp/buildtools pybind11
  PYTHONPATH=/tmp/buildtools pip install --no-deps --no-build-isolation \\
      --no-binary torch-projectors torch-projectors"""

Projector = Callable[[torch.Tensor], torch.Tensor]
REFERENCE = "ours project pad=2"  # ratios are relative to this row
REAL_SPACE_BATCH = 8
CHECK_BOX = 64
CHECK_ROTATIONS = 8


@dataclass(frozen=True)
class Method:
    """A projector to time: ``prepare(volume)`` does the untimed, per-volume work."""

    name: str
    prepare: Callable[[torch.Tensor], Projector]
    grad_wrt: str = "quaternions"
    max_batch: int | None = None  # time a smaller batch and scale to per-second
    takes_matrices: bool = False  # prepare(volume, transpose=...) picks R or R^T


@dataclass(frozen=True)
class Row:
    method: str
    box: int
    mode: str
    batch: int
    seconds: float
    grad_wrt: str
    scaled: bool

    @property
    def per_second(self) -> float:
        return self.batch / self.seconds


# --------------------------------------------------------------------------- inputs


def blob_volume(box_size: int, n_blobs: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth random density: Gaussian blobs (sigma ~ N/20) inside radius N/4."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.arange(box_size, dtype=torch.float32) - box_size // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    centres = (torch.rand(n_blobs, 3, generator=gen) * 2 - 1) * box_size / 4
    sigma = max(box_size / 20, 1.5)
    volume = torch.zeros(box_size, box_size, box_size)
    for cx, cy, cz in centres.tolist():
        d2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        volume += torch.exp(-d2 / (2 * sigma**2))
    return volume


def rotations_for(quat: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Our ``R`` (``transpose=False``) or ``R^T`` for a library that samples ``M k``."""
    rot = quat_to_matrix(quat)
    return rot.transpose(-1, -2).contiguous() if transpose else rot


def sinc2_correct(volume: torch.Tensor, padded_size: int) -> torch.Tensor:
    """Gridding correction for trilinear sampling of a ``padded_size`` FFT."""
    r = torch.arange(volume.shape[-1], dtype=volume.dtype) - volume.shape[-1] // 2
    s = torch.sinc(r / padded_size) ** 2
    return volume / (s[:, None, None] * s[None, :, None] * s[None, None, :])


# --------------------------------------------------------------------------- methods


def prepare_ours(volume: torch.Tensor, pad: int = 2) -> Projector:
    """``skpose.imaging.projection.project``; the first call fills the FFT cache."""
    project(volume, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), pad=pad)
    return partial(_project_ours, volume, pad=pad)


def _project_ours(volume, quat, pad):
    return project(volume, quat, pad=pad)


def prepare_real_space(volume: torch.Tensor) -> Projector:
    """``skpose.imaging.projection.project_real_space``: rotate N^3 voxels per image."""
    return partial(project_real_space, volume)


def prepare_tfs(volume: torch.Tensor, transpose: bool = True) -> Projector:
    """torch-fourier-slice ``project_3d_to_2d`` as published (volume FFT per call).

    It samples ``F_V(M k)`` with ``M`` acting on ``(x, y, z)`` column vectors, so
    ``M = R^T``; volume and image origins are at ``N // 2`` like ours.
    """
    from torch_fourier_slice import project_3d_to_2d

    def run(quat):
        return project_3d_to_2d(volume, rotations_for(quat, transpose), pad_factor=2.0)

    return run


def prepare_tfs_cached(volume: torch.Tensor, transpose: bool = True) -> Projector:
    """torch-fourier-slice's ``project_3d_to_2d`` pipeline with the volume FFT hoisted.

    Same steps as the library (edge-mean removal, 2x padding, sinc^2 correction,
    fftshifted rfft, ``extract_central_slices_rfft_3d``, inverse FFT of the padded
    2N x 2N slice, crop), so its timing is comparable to our cached projector.
    """
    from torch_fourier_slice import extract_central_slices_rfft_3d
    from torch_fourier_slice.volume_utils import (
        compute_cube_face_averages,
        separable_sinc2_correction,
    )

    n = volume.shape[-1]
    edge = compute_cube_face_averages(volume, n=4)
    p = n // 2
    padded = F.pad(volume - edge, [p] * 6)
    padded = padded / separable_sinc2_correction(tuple(padded.shape))
    dft = torch.fft.rfftn(torch.fft.ifftshift(padded), dim=(-3, -2, -1))
    dft = torch.fft.fftshift(dft, dim=(-3, -2))

    def run(quat):
        slices = extract_central_slices_rfft_3d(dft, rotations_for(quat, transpose))
        slices = torch.fft.ifftshift(slices, dim=(-2,))
        images = torch.fft.irfftn(slices, dim=(-2, -1), s=(2 * n, 2 * n))
        images = torch.fft.fftshift(images, dim=(-2, -1))[..., p : p + n, p : p + n]
        return images + edge * n

    return run


def prepare_tp(
    volume: torch.Tensor, transpose: bool = True, oversampling: int = 2
) -> Projector:
    """torch-projectors ``project_3d_to_2d_forw`` on our pre-computed volume FFT.

    It takes the rfft (DC at index 0) of the padded volume and samples ``F_V(M k)``
    with ``M`` acting on ``(x, y, z)``, so ``M = R^T``; ``oversampling`` is the
    padding factor. It has no gridding correction of its own, so we apply ours.
    """
    import torch_projectors

    n = volume.shape[-1]
    padded_size = n * oversampling
    p = (padded_size - n) // 2
    padded = F.pad(sinc2_correct(volume, padded_size), [p] * 6)
    ft = torch.fft.rfftn(torch.fft.ifftshift(padded), dim=(-3, -2, -1))[None]

    def run(quat):
        slices = torch_projectors.project_3d_to_2d_forw(
            ft,
            rotations_for(quat, transpose)[None],
            output_shape=(n, n),
            oversampling=float(oversampling),
        )  # (1, b, N, N // 2 + 1), DC at index 0
        images = torch.fft.irfft2(slices[0], s=(n, n))
        return torch.fft.fftshift(images, dim=(-2, -1))

    return run


def available(module: str) -> bool:
    """Import ``module`` or print why it is skipped."""
    try:
        mod = importlib.import_module(module)
    except (ImportError, OSError) as exc:  # OSError: extension built for another torch
        print(f"- {module}: SKIPPED ({type(exc).__name__}: {exc})")
        return False
    print(f"- {module} {getattr(mod, '__version__', '?')}: {mod.__file__}")
    return True


def build_methods() -> list[Method]:
    """Our projector first (the reference for ratios), then whatever imports."""
    print("\nOptional libraries:")
    methods = [
        Method(REFERENCE, prepare_ours),
        Method("ours project pad=1", partial(prepare_ours, pad=1)),
        Method(
            "ours project_real_space (ref)",
            prepare_real_space,
            max_batch=REAL_SPACE_BATCH,
        ),
    ]
    third_party = partial(Method, grad_wrt="quaternions (via R)", takes_matrices=True)
    if available("torch_fourier_slice"):
        methods += [
            third_party("torch-fourier-slice project_3d_to_2d", prepare_tfs),
            third_party("torch-fourier-slice, FFT cached", prepare_tfs_cached),
        ]
    if available("torch_projectors"):
        methods += [
            third_party("torch-projectors oversampling=2", prepare_tp),
            third_party(
                "torch-projectors oversampling=1", partial(prepare_tp, oversampling=1)
            ),
        ]
    return methods


# --------------------------------------------------------------------------- checks


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation per image, ``(b, N, N)`` -> ``(b,)``."""
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    return (a * b).sum(dim=(-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1)))


def quat_grad(run: Projector, quat: torch.Tensor, target: torch.Tensor):
    """Gradient of ``sum(run(quat) * target)`` with respect to ``quat``."""
    q = quat.clone().requires_grad_(True)
    (run(q) * target).sum().backward()
    return q.grad


def image_agreement(method: Method, volume, quat, ref_images) -> dict[str, float]:
    """Min NCC against our images for each way of passing the rotation."""
    if not method.takes_matrices:
        return {
            "quaternions": float(ncc(method.prepare(volume)(quat), ref_images).min())
        }
    return {
        label: float(ncc(method.prepare(volume, transpose=t)(quat), ref_images).min())
        for label, t in (("R^T", True), ("R", False))
    }


def check_conventions(methods: list[Method]) -> None:
    """Compare every projector with ours at box 64 and the same random rotations."""
    volume = blob_volume(CHECK_BOX)
    quat = random_quaternions(CHECK_ROTATIONS, 1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(4)
    target = torch.randn(CHECK_ROTATIONS, CHECK_BOX, CHECK_BOX, generator=gen)
    reference = prepare_ours(volume)
    ref_images = reference(quat)
    ref_grad = quat_grad(reference, quat, target).flatten()
    print(
        f"\nConvention check: box {CHECK_BOX}, {CHECK_ROTATIONS} random rotations, "
        "smooth blob volume; min NCC of the images against ours (pad=2) and cosine "
        "of the gradient w.r.t. the quaternions against ours."
    )
    for method in methods[1:]:
        nccs = image_agreement(method, volume, quat, ref_images)
        best = max(nccs, key=nccs.get)
        grad = quat_grad(method.prepare(volume), quat, target).flatten()
        cosine = float(F.cosine_similarity(grad, ref_grad, dim=0))
        verdict = "agrees" if nccs[best] > 0.99 else "DISAGREES"
        others = "".join(f"; {k} gives {v:.4f}" for k, v in nccs.items() if k != best)
        print(
            f"- {method.name}: {verdict} (NCC {nccs[best]:.4f} passing {best}"
            f"{others}; grad cos {cosine:.4f})"
        )


# --------------------------------------------------------------------------- timing


def forward_step(run: Projector, quat: torch.Tensor) -> Callable[[], object]:
    def step():
        with torch.no_grad():
            return run(quat)

    return step


def backward_step(run: Projector, quat, target) -> Callable[[], object]:
    def step():
        q = quat.clone().requires_grad_(True)
        (run(q) * target).sum().backward()
        return q.grad

    return step


@dataclass(frozen=True)
class Case:
    method: Method
    mode: str
    batch: int
    step: Callable[[], object]


def build_cases(methods: list[Method], box: int, batch: int) -> list[Case]:
    """Prepare every method on one volume (untimed) and wrap its two passes."""
    volume = blob_volume(box)
    target = torch.randn(batch, box, box, generator=torch.Generator().manual_seed(3))
    cases = []
    for method in methods:
        n = min(batch, method.max_batch or batch)
        quat = random_quaternions(n, 2, dtype=torch.float32)
        run = method.prepare(volume)
        cases.append(Case(method, "fwd", n, forward_step(run, quat)))
        cases.append(Case(method, "fwd+bwd", n, backward_step(run, quat, target[:n])))
    return cases


def time_box(methods: list[Method], box: int, batch: int, repeats: int) -> list[Row]:
    """Median wall time of every (method, pass) at one box size.

    One warm-up call each, then ``repeats`` rounds that call every case once in turn,
    so a slow drift of the (shared) machine hits all methods alike.
    """
    cases = build_cases(methods, box, batch)
    for case in cases:
        case.step()
    times: list[list[float]] = [[] for _ in cases]
    for i in range(repeats):
        round_start = time.perf_counter()
        for case, case_times in zip(cases, times, strict=True):
            start = time.perf_counter()
            case.step()
            case_times.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - round_start
        print(f"  box {box}: round {i + 1}/{repeats} took {elapsed:.1f} s", flush=True)
    return [
        Row(
            c.method.name,
            box,
            c.mode,
            c.batch,
            statistics.median(t),
            c.method.grad_wrt,
            scaled=c.batch != batch,
        )
        for c, t in zip(cases, times, strict=True)
    ]


# --------------------------------------------------------------------------- report


def print_header() -> None:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            models = (ln.split(":", 1)[1] for ln in f if ln.startswith("model name"))
            cpu = next(models, cpu).strip()
    except OSError:
        pass
    print("# skpose projector benchmark")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU: {cpu}")
    print(f"python {platform.python_version()}, float32, device cpu")
    print(f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']} (see the top of this file)")
    print(INSTALL_HINT)


def print_table(rows: list[Row]) -> None:
    """Markdown table; ratio = proj/s over ours (pad=2) at the same box and pass."""
    ours = {(r.box, r.mode): r.per_second for r in rows if r.method == REFERENCE}
    print(
        "\n| method | box | pass | batch | median s | proj/s | ratio to ours "
        "| grad w.r.t. |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        batch = f"{r.batch}*" if r.scaled else str(r.batch)
        ratio = r.per_second / ours[(r.box, r.mode)]
        grad = r.grad_wrt if r.mode == "fwd+bwd" else "-"
        print(
            f"| {r.method} | {r.box} | {r.mode} | {batch} | {r.seconds:.4f} | "
            f"{r.per_second:,.0f} | {ratio:.2f} | {grad} |"
        )
    if any(r.scaled for r in rows):
        print(
            f"\n\\* timed on a batch of {REAL_SPACE_BATCH} and scaled to per-second "
            "(the real-space reference costs N^3 samples per image)."
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="box 32, batch 16, 2 repeats"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats = [32], 16, 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    print_header()
    methods = build_methods()
    check_conventions(methods)
    print(f"\nTiming (median of {args.repeats} rounds after one warm-up):")
    rows = [
        row
        for box in args.sizes
        for row in time_box(methods, box, args.batch, args.repeats)
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
