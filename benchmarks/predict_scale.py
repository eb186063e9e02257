"""Wall time and peak memory of ``skpose predict`` as the particle count grows.

``skpose predict`` streams images from memory-mapped stacks in batches, so its memory
must not grow with the number of particles. This script simulates a RELION set of
64 px particles with CTF and shifts (one simulation of ``--base`` particles, its stack
then copied so that the large sets read distinct files, as real data sets do), trains a
small model briefly (accuracy is not the point here), and runs ``skpose predict`` in a
fresh process for each count, recording wall time and the process's peak resident
memory (``VmHWM``). Median of ``--repeats`` runs per count.

    python benchmarks/predict_scale.py                    # 1e4 and 1e5 particles
    python benchmarks/predict_scale.py --counts 1000 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import skpose
from skpose.cli import main as skpose_main


def make_set(folder: Path, base: int, copies: int, seed: int) -> tuple[Path, int]:
    """A STAR of ``base * copies`` particles over ``copies`` stacks of ``base`` each."""
    sim_dir = folder / "base"
    if not (sim_dir / "particles.star").exists():
        skpose.write_volume(folder / "map.mrc", skpose.phantom_volume(64), 3.0)
        assert skpose_main(
            ["simulate", str(folder / "map.mrc"), "--n", str(base), "--ctf",
             "--snr", "1", "--max-shift", "3", "--seed", str(seed),
             "--out", str(sim_dir)]
        ) == 0  # fmt: skip
    particles = skpose.read_particles(sim_dir / "particles.star")
    tables = []
    for k in range(copies):
        stack = f"stack_{k:03d}.mrcs"
        if not (sim_dir / stack).exists():
            shutil.copyfile(sim_dir / "particles.mrcs", sim_dir / stack)
        table = particles.data.copy()
        table["rlnImageName"] = [
            name.replace("particles.mrcs", stack) for name in table["rlnImageName"]
        ]
        tables.append(table)
    star = sim_dir / f"set_{base * copies}.star"
    table = pd.concat(tables, ignore_index=True)
    skpose.write_particles(star, dataclasses.replace(particles, data=table))
    return star, base * copies


def train(folder: Path, star: Path) -> Path:
    model = folder / "model.joblib"
    if not model.exists():
        assert skpose_main(
            ["fit", str(star), "--volume", str(folder / "map.mrc"), "--out",
             str(model), "--architecture", "small", "--box", "32", "--max-iter", "50",
             "--device", "cpu", "--verbose", "0"]
        ) == 0  # fmt: skip
    return model


def run_once(argv: list) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one ``skpose`` command."""
    # VmHWM: this process's peak resident set (ru_maxrss would include the parent's,
    # inherited through fork).
    code = (
        "import sys, time; from skpose.cli import main; t = time.perf_counter();"
        " rc = main(sys.argv[1:]); dt = time.perf_counter() - t;"
        " hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')];"
        " print('RESULT', dt, int(hwm[0].split()[1]) / 1024); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")][-1]
    seconds, rss = (float(v) for v in line.split()[1:])
    return seconds, rss


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--base", type=int, default=10_000, help="particles simulated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS")
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="also time 'skpose reconstruct --half-maps' on the predicted STAR",
    )
    args = p.parse_args(argv)
    if any(c % args.base and c > args.base for c in args.counts):
        raise SystemExit("--counts above --base must be multiples of it")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="skpose_predict_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sets = {}
    for count in sorted(args.counts):
        base = min(count, args.base)
        sets[count] = make_set(folder, args.base, max(1, count // base), seed=0)
    model = train(folder, sets[min(sets)][0])
    print(
        f"prepared in {time.perf_counter() - start:.0f} s in {folder}; predict with "
        f"{args.threads} threads, {args.repeats} runs each (median)\n"
    )
    print(
        "| command | particles | stacks on disk (GiB) | wall s | particles / s "
        "| peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for count, (star, n) in sets.items():
        out = folder / f"pred_{count}.star"
        commands = {"predict": ["predict", star, "--model", model, "--out", out]}
        if args.reconstruct:
            rec = ["reconstruct", out, "--out", folder / "rec.mrc", "--half-maps"]
            commands["reconstruct"] = rec
        for name, command in commands.items():
            runs = [run_once([str(a) for a in command]) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            disk = n * 64 * 64 * 4 / 2**30
            print(
                f"| {name} | {n:,} | {disk:.2f} | {seconds:.1f} | {n / seconds:,.0f} "
                f"| {rss:.0f} |",
                flush=True,
            )
        predicted = skpose.read_particles(folder / f"pred_{count}.star")
        assert len(predicted) == n and np.isfinite(predicted.quaternions).all()


if __name__ == "__main__":
    main()
