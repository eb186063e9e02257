"""The predict path's options on the CPU: bf16, torch.compile, prefetch; memory.

Trains the README's network (64 px phantom, shifts, ``architecture="small"``, 32 px
input) for ``--max-iter`` iterations on 2400 particles, then on 600 held-out ones:

- ``precision="fp32"`` vs ``"bf16"``: seconds per 1000 particles of the network alone
  (median of ``--repeats``), its median angular error, how far bf16 moves each pose
  from fp32, and the median error after refinement started from each;
- ``compile=False`` vs ``True``: first call (compilation) and steady state;
- ``prefetch=False`` vs ``True``: ``predict_particles`` over a memory-mapped STAR set
  of ``--star-rows`` rows (network alone);
- ``--memory``: peak resident memory added by one network forward pass per batch size
  (vgg16 at 128 px, small at 32 and 64 px) and by one refinement batch, each in a
  fresh process (``VmHWM``; the tensors a GPU would hold, measured on the CPU).

    python benchmarks/inference.py                       # accuracy and speed
    python benchmarks/inference.py --memory              # the memory table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import skpose
from skpose.distributed import predict_particles


def timed(fn, repeats: int):
    """Median wall time of ``fn()`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def median_error(truth, q) -> float:
    return float(np.median(skpose.angular_error(truth, q)))


def train(args):
    volume = skpose.phantom_volume(64)
    sim = skpose.simulate_particles(volume, 3000, max_shift=2, random_state=0)
    est = skpose.OrientationEstimator(
        volume, w=0.8, lr=1e-3, max_iter=args.max_iter, batch_size=32,
        architecture="small", image_size=32, random_state=0,
    )  # fmt: skip
    start = time.perf_counter()
    est.fit(sim.images[:2400], sim.quaternions[:2400], sim.shifts_px[:2400])
    print(f"trained {est.n_iter_} iterations in {time.perf_counter() - start:.0f} s")
    return est, sim


def precision_rows(est, sim, args) -> None:
    test = slice(2400, 3000)
    images, truth, shifts = sim.images[test], sim.quaternions[test], sim.shifts_px[test]
    per_1000 = 1000 / len(images)
    q = {}
    print("\n| network | s / 1000 | median error deg | moved from fp32 deg "
          "| median error after refinement deg | refinement s / 1000 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for precision in ("fp32", "bf16"):
        est.set_params(refine=False)
        est.predict(images[:64], precision=precision)  # warm-up
        s, q[precision] = timed(
            lambda p=precision: est.predict(images, precision=p), args.repeats
        )
        moved = skpose.angular_error(q["fp32"], q[precision])
        est.set_params(refine=True)
        t, poses = timed(
            lambda p=precision: est.predict_poses(images, shifts, precision=p), 1
        )
        error = median_error(truth, q[precision])
        print(
            f"| {precision} | {s * per_1000:.2f} | {error:.2f} "
            f"| median {np.median(moved):.2f}, 95th pct {np.percentile(moved, 95):.2f} "
            f"| {median_error(truth, poses.quaternions):.2f} | {t * per_1000:.2f} |",
            flush=True,
        )
    est.set_params(refine=False)


def compile_rows(est, sim, args) -> None:
    images = sim.images[2400:3000]
    per_1000 = 1000 / len(images)
    print("\n| network | first call s | s / 1000 (steady) | max diff vs fp32 |")
    print("|---|---:|---:|---:|")
    reference = est.predict(images)
    for compile in (False, True):
        start = time.perf_counter()
        try:
            est.predict(images, compile=compile)
        except Exception as exc:  # inductor needs a C++ compiler
            print(f"| compile={compile} | failed: {type(exc).__name__}: {exc} | | |")
            continue
        first = time.perf_counter() - start
        s, q = timed(lambda c=compile: est.predict(images, compile=c), args.repeats)
        diff = float(np.abs(q - reference).max())
        print(
            f"| compile={compile} | {first:.1f} | {s * per_1000:.2f} | {diff:.1e} |",
            flush=True,
        )


def prefetch_rows(est, sim, args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="skpose_inference_"))
    star = sim.to_relion(folder / "particles.star")
    particles = skpose.read_particles(star)
    table = particles.data.iloc[np.arange(args.star_rows) % len(sim)]
    table = table.reset_index(drop=True)
    big = dataclasses.replace(particles, data=table)
    print(f"\n| predict_particles ({args.star_rows} rows, mmap) | s / 1000 |")
    print("|---|---:|")
    for prefetch in (False, True):
        predict_particles(est, big.select(range(256)), prefetch=prefetch)  # warm-up
        s, _ = timed(lambda p=prefetch: predict_particles(est, big, prefetch=p),
                     args.repeats)  # fmt: skip
        print(f"| prefetch={prefetch} | {s * 1000 / args.star_rows:.2f} |", flush=True)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (``VmHWM``), MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(kind: str, size: int, batch: int) -> None:
    """Peak memory added by one forward pass (or one refinement batch)."""
    if kind == "refine":
        volume = skpose.phantom_volume(size)
        sim = skpose.simulate_particles(volume, batch, max_shift=2, random_state=0)
        q = skpose.random_quaternions(batch, random_state=1)
        x = torch.as_tensor(sim.images)
        before = peak_rss_mib()
        skpose.refine(volume, x, q, cone_deg=60, batch_size=batch)
    else:
        from skpose.learn.network import OrientationNet

        net = OrientationNet(architecture=kind, image_size=size).eval()
        x = torch.randn(batch, size, size)
        before = peak_rss_mib()
        with torch.no_grad():
            net(x)
    print("RESULT", json.dumps({"added_mib": peak_rss_mib() - before}))


def memory_rows() -> None:
    print("\n| step | box px | batch | peak memory added MiB | per image MiB |")
    print("|---|---:|---:|---:|---:|")
    cases = [("vgg16", 128, b) for b in (8, 24)]
    cases += [("small", 64, b) for b in (24, 256)] + [("small", 32, 256)]
    cases += [("refine", 64, 256), ("refine", 128, 64)]
    for kind, size, batch in cases:
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", kind, str(size), str(batch)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")][-1]
        added = json.loads(line.split(" ", 1)[1])["added_mib"]
        step = "refinement (60 deg cone)" if kind == "refine" else f"network {kind}"
        print(f"| {step} | {size} | {batch} | {added:.0f} | {added / batch:.2f} |",
              flush=True)  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--star-rows", type=int, default=6000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="the memory table only")
    p.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    skpose.set_threads(args.threads)
    if args.memory_child:
        kind, size, batch = args.memory_child
        return memory_child(kind, int(size), int(batch))
    if args.memory:
        return memory_rows()
    cpu = open("/proc/cpuinfo").read()
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f in cpu]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"CPU bf16 support: {', '.join(flags) or 'none'}")  # fmt: skip
    est, sim = train(args)
    precision_rows(est, sim, args)
    compile_rows(est, sim, args)
    prefetch_rows(est, sim, args)


if __name__ == "__main__":
    main()
