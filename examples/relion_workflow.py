"""The RELION workflow from the command line, on a simulated set with CTF and shifts.

Runs on a CPU in a few minutes::

    python examples/relion_workflow.py            # 5000 particles, 64 px
    python examples/relion_workflow.py --quick    # a smoke test, under a minute

The paper's workflow (its Fig. 1) as ``skpose`` commands: simulate a RELION 3.1
particle set from a map (random defoci, shifts), split off 20 % as the labelled
training subset, train the network on it, predict the poses of the rest, evaluate them
against the truth, and reconstruct a map from the predicted poses (with half maps and
an FSC against the map). Each step calls ``skpose.cli.main`` with the arguments you
would type in a shell; the script prints each command before running it, so you can
copy them. Everything is written to ``out/relion_workflow/``.

The map is skpose's built-in asymmetric phantom (``--map`` takes your own cubic MRC
map). The CPU configuration (``--architecture small --box 32``) is our choice for a
laptop; on a GPU, leave both out to train the paper's network at 128 px.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import skpose
from skpose.cli import main as skpose_main


def run(*args) -> None:
    """Run one ``skpose`` command (printed first); stop on a non-zero exit code."""
    argv = [str(a) for a in args]
    print(f"\n$ skpose {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = skpose_main(argv)
    if code != 0:
        raise SystemExit(f"skpose {argv[0]} failed with exit code {code}")
    print(f"({argv[0]}: {time.perf_counter() - start:.1f} s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, help="cubic MRC map (default: phantom)")
    parser.add_argument("--n", type=int, default=5000, help="particles to simulate")
    parser.add_argument("--snr", type=float, default=None, help="default: noiseless")
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("out/relion_workflow"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test (< 60 s)")
    args = parser.parse_args(argv)
    box = 64
    if args.quick:
        args.n, args.max_iter, box = 600, 60, 32

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.map:
        map_path = args.map
    else:
        map_path = out / "map.mrc"
        skpose.write_volume(map_path, skpose.phantom_volume(box), 3.0)
        print(f"wrote the built-in phantom ({box} px, 3 A/px) to {map_path}")

    sim = out / "sim"
    noise = [] if args.snr is None else ["--snr", args.snr]
    run("simulate", map_path, "--n", args.n, *noise, "--ctf", "--max-shift", 3,
        "--seed", args.seed, "--out", sim)  # fmt: skip
    run("split", sim / "particles.star", "--fraction", 0.2, "--seed", args.seed,
        "--out", sim)  # fmt: skip
    model = out / "model.joblib"
    run("fit", sim / "train.star", "--volume", map_path, "--out", model,
        "--architecture", "small", "--box", 32, "--max-iter", args.max_iter,
        "--device", "cpu", "--seed", args.seed, "--verbose", 0)  # fmt: skip
    # Beside rest.star: its rlnImageName entries are relative to that folder.
    predicted = sim / "predicted.star"
    run("predict", sim / "rest.star", "--model", model, "--out", predicted, "--refine")
    report = out / "report"
    run("evaluate", predicted, sim / "rest.star", "--volume", map_path,
        "--out", report)  # fmt: skip
    run("reconstruct", predicted, "--out", out / "map_predicted.mrc", "--half-maps",
        "--reference", map_path)  # fmt: skip
    run("reconstruct", sim / "rest.star", "--out", out / "map_true_poses.mrc",
        "--reference", map_path)  # fmt: skip

    summary = json.loads((report / "summary.json").read_text())
    print(
        f"\nmedian angular error {summary['median_deg']:.1f} deg, reprojection RMSE "
        f"{summary['reprojection_rmse']:.4g}; total {time.perf_counter() - start:.0f} s"
    )
    print(f"\nfiles in {out}:")
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in {".star", ".joblib", ".mrc", ".json",
                                              ".png", ".txt"}:  # fmt: skip
            print(f"  {path}")


if __name__ == "__main__":
    main()
