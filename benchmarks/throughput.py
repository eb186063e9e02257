"""Particles per second and peak memory of predict, here and on 1 or 2 dask workers.

``skpose.distributed.predict_particles`` on 64 px particles (CTF, SNR 1, shifts) read
from a memory-mapped stack, network alone and with refinement. Large sets are made
cheaply: one stack of ``--base`` simulated particles, and a STAR file whose rows cycle
through its images (``rlnImageName`` = ``(i % base) + 1@stack.mrcs``), so a 10^6-row set
costs one small stack on disk (its pages stay in the page cache: this measures compute
and bookkeeping, not disk reads).

Each row runs in a fresh process. ``here``: chunk by chunk in that process (1 torch
thread). ``dask-k``: a ``LocalCluster`` of k worker processes with 1 thread each,
loopback only, started and warmed up before the clock starts (a warm-up predict of
one chunk). Peak memory is ``VmHWM`` (peak resident set) of the predicting process, and
for dask the largest of the workers'.

    python benchmarks/throughput.py                              # the README table
    python benchmarks/throughput.py --counts 10000 --modes here dask-2 --refine-counts
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference import peak_rss_mib  # this folder is on sys.path when run

MODES = ("here", "dask-1", "dask-2")


def make_set(folder: Path, base: int, count: int) -> Path:
    """A STAR of ``count`` rows cycling through one stack of ``base`` particles."""
    import numpy as np

    import skpose
    from skpose.cli import main as skpose_main

    sim = folder / "sim"
    star = sim / f"set_{count}.star"
    if star.exists():
        return star
    if not (sim / "particles.star").exists():
        skpose.write_volume(folder / "map.mrc", skpose.phantom_volume(64), 3.0)
        assert skpose_main(
            ["simulate", str(folder / "map.mrc"), "--n", str(base), "--ctf",
             "--snr", "1", "--max-shift", "3", "--seed", "0", "--out", str(sim)]
        ) == 0  # fmt: skip
    particles = skpose.read_particles(sim / "particles.star")
    table = particles.data.iloc[np.arange(count) % base].reset_index(drop=True)
    table["rlnImageName"] = [f"{i % base + 1:06d}@particles.mrcs" for i in range(count)]
    skpose.write_particles(star, dataclasses.replace(particles, data=table))
    return star


def train(folder: Path) -> Path:
    """A small model, briefly trained (accuracy is not the point here)."""
    import joblib

    import skpose

    path = folder / "model.joblib"
    if not path.exists():
        particles = skpose.read_particles(folder / "sim" / "particles.star")
        images = skpose.io.load_particle_images(particles, slice(0, 1000))
        est = skpose.OrientationEstimator(
            str(folder / "map.mrc"), architecture="small", image_size=32, lr=1e-3,
            batch_size=32, max_iter=50, random_state=0,
        )  # fmt: skip
        rows = slice(0, 1000)
        shifts, ctf = particles.origins_px[rows], particles.ctf[rows]
        est.fit(images, particles.quaternions[rows], shifts, ctf)
        joblib.dump(est, path)
    return path


def child(star: Path, model: Path, mode: str, refine: bool) -> dict:
    import joblib

    import skpose
    from skpose.distributed import predict_particles

    skpose.set_threads(1)
    est = joblib.load(model)
    cluster = client = None
    if mode != "here":
        import distributed

        cluster = distributed.LocalCluster(
            n_workers=int(mode.split("-")[1]), threads_per_worker=1, processes=True,
            host="127.0.0.1", dashboard_address=None,
        )  # fmt: skip
        client = distributed.Client(cluster)
    warm = skpose.read_particles(star).select(range(64))  # imports, first calls
    predict_particles(est, warm, client=client, refine=refine)
    start = time.perf_counter()
    poses = predict_particles(est, star, client=client, refine=refine)
    seconds = time.perf_counter() - start
    workers = [0.0]
    if client is not None:
        workers = list(client.run(peak_rss_mib).values())
        client.close()
        cluster.close()
    assert len(poses.quaternions) == len(skpose.read_particles(star))
    return {"seconds": seconds, "rss": peak_rss_mib(), "worker_rss": max(workers)}


def run(star: Path, model: Path, mode: str, refine: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(star), str(model), mode]
    done = subprocess.run(
        [*cmd, "refine" if refine else "network"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line.split(" ", 1)[1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument(
        "--refine-counts", type=int, nargs="*", default=[1_000, 10_000],
        help="counts for predict with refinement (about 4 ms per particle)",
    )  # fmt: skip
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--base", type=int, default=2000, help="particles simulated")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        star, model, mode, what = args.child
        result = child(Path(star), Path(model), mode, what == "refine")
        print("RESULT", json.dumps(result))
        return
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="skpose_throughput_"))
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(c, False) for c in args.counts] + [(c, True) for c in args.refine_counts]
    stars = {c: make_set(folder, args.base, c) for c, _ in jobs}
    model = train(folder)
    print(f"in {folder}; 1-min load average {os.getloadavg()[0]:.1f} at the start\n")
    print(
        "| predict | particles | where | wall s | particles / s "
        "| peak RSS MiB (client / worker) | 1-min load |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for count, refine in jobs:
        for mode in args.modes:
            r = run(stars[count], model, mode, refine)
            what = "+ refinement" if refine else "network"
            worker = f" / {r['worker_rss']:.0f}" if mode != "here" else ""
            print(
                f"| {what} | {count:,} | {mode} | {r['seconds']:.1f} "
                f"| {count / r['seconds']:,.0f} | {r['rss']:.0f}{worker} "
                f"| {os.getloadavg()[0]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
