"""Seconds per training epoch of the README's main job, loaded and quiet.

The README's job (``examples/quickstart.py``): 2400 training particles of the 64 px
phantom, ``architecture="small"``, 32 px input, batch 32, so an epoch is 75
iterations. Each configuration trains ``--epochs`` epochs in a fresh process and
reports the median epoch time (skorch's ``dur``):

- ``spin, 2 threads``: before this change: torch's default thread count and libgomp's
  default wait (it spins ~300,000 times at each barrier before sleeping; set here as
  ``GOMP_SPINCOUNT=300000``, which equals that default and stops skpose from choosing);
- ``passive, 2 threads``: skpose's default now (``OMP_WAIT_POLICY=PASSIVE`` set on
  import, the CPUs this process may use);
- ``passive, 1 thread``: ``--threads 1``, the advice for a machine shared with other
  work.

"loaded" runs one ``yes > /dev/null`` per CPU beside the training (started and
stopped by this script); "quiet" runs none, but other processes on the machine are
not under its control: the 1-minute load average is printed with each row.

    python benchmarks/threads.py                 # 1 epoch per configuration
    python benchmarks/threads.py --epochs 2 --only quiet
    python benchmarks/threads.py --configs "passive, 2 threads" "passive, 1 thread"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "spin, 2 threads": ({"GOMP_SPINCOUNT": "300000"}, 2),
    "passive, 2 threads": ({}, 2),
    "passive, 1 thread": ({}, 1),
}


def child(data: Path, threads: int, epochs: int) -> None:
    import numpy as np

    import skpose

    skpose.set_threads(threads)
    d = np.load(data)
    est = skpose.OrientationEstimator(
        d["volume"], w=0.8, lr=1e-3, max_iter=75 * epochs, batch_size=32,
        architecture="small", image_size=32, random_state=0,
    )  # fmt: skip
    est.fit(d["images"], d["quats"], d["shifts"])
    durations = list(est.net_.history[:, "dur"])
    print("RESULT", json.dumps({"epoch_s": statistics.median(durations)}))


def simulate(path: Path) -> None:
    import numpy as np

    import skpose

    volume = skpose.phantom_volume(64)
    sim = skpose.simulate_particles(volume, 2400, max_shift=2, random_state=0)
    np.savez(
        path, volume=volume, images=sim.images, quats=sim.quaternions,
        shifts=sim.shifts_px,
    )  # fmt: skip


def run(data: Path, env: dict, threads: int, epochs: int, loaded: bool) -> dict:
    hogs = []
    if loaded:
        for _ in range(len(os.sched_getaffinity(0))):
            hogs.append(subprocess.Popen(["yes"], stdout=subprocess.DEVNULL))
    try:
        cmd = [sys.executable, __file__, "--child", str(data), str(threads)]
        done = subprocess.run(
            [*cmd, "--epochs", str(epochs)],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT")][-1]
    result = json.loads(line.split(" ", 1)[1])
    result["load"] = os.getloadavg()[0]
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--only", choices=["loaded", "quiet"], default=None)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument(
        "--child", nargs=2, metavar=("DATA", "THREADS"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), int(args.child[1]), args.epochs)
    data = Path(tempfile.mkdtemp(prefix="skpose_threads_")) / "train.npz"
    simulate(data)
    # Keep the user's wait policy out of the children: each row sets its own.
    for name in (
        "OMP_WAIT_POLICY",
        "GOMP_SPINCOUNT",
        "KMP_BLOCKTIME",
        "OMP_NUM_THREADS",
    ):
        os.environ.pop(name, None)
    states = [args.only] if args.only else ["quiet", "loaded"]
    print("| machine | configuration | s per epoch | 1-min load after |")
    print("|---|---|---:|---:|")
    for state in states:
        for name in args.configs:
            env, threads = CONFIGS[name]
            r = run(data, env, threads, args.epochs, state == "loaded")
            print(
                f"| {state} | {name} | {r['epoch_s']:.1f} | {r['load']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
