"""Exhaustive search vs network vs network + local refinement: accuracy and speed.

The product's claim, measured: on simulated particles of a real map, how accurate and
how fast is (a) an exhaustive projection-matching search at several grid spacings,
(b) the orientation network alone, (c) the network followed by local refinement? And
the ratio: time of the search that reaches the accuracy of (c), divided by the time of
(c) (training time reported separately, and amortised over 1e5 and 1e6 particles).

    python benchmarks/search_vs_network.py                  # full run (CPU, long)
    python benchmarks/search_vs_network.py --quick          # smoke test, ~1 minute
    python benchmarks/search_vs_network.py --maps 80S --conditions noiseless

Maps: the human 80S ribosome (C1, ../shared/data/maps, 80 px at 4 A, Fourier-cropped
to the benchmark box) and beta-galactosidase (D2, PDB 5A1A made into a map with gemmi,
already in RELION's D2 setting). Conditions: noiseless; SNR 1; SNR 0.1 with CTF (the
SNR definition is skpose.simulate's). Times are wall-clock seconds per 1000 particles on
this machine (median of --repeats runs of each prediction step).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import skpose
from skpose import ProjectionMatcher
from skpose.imaging.preprocess import fourier_crop

HERE = Path(__file__).resolve().parent
CONDITIONS = {
    "noiseless": {"snr": None, "ctf": False},
    "snr1": {"snr": 1.0, "ctf": False},
    "snr0.1+ctf": {"snr": 0.1, "ctf": True},
}


def shared_data() -> Path:
    env = os.environ.get("SKPOSE_TEST_DATA")
    path = Path(env) if env else HERE.parent.parent / "shared" / "data"
    if not (path / "maps").is_dir():
        raise SystemExit(f"shared data not found at {path}: set SKPOSE_TEST_DATA")
    return path


def load_map(name: str, box: int):
    """(volume, pixel size in A, symmetry) at the benchmark box."""
    data = shared_data() / "maps"
    if name == "80S":
        vol, pixel = skpose.read_volume(
            data / "ribosome_4ug0_scattering_potential_from_cistem.mrc"
        )
        pixel = pixel or 4.0
        if vol.shape[0] != box:
            pixel *= vol.shape[0] / box
            vol = fourier_crop(vol, box, ndim=3)
        return vol.astype(np.float32), pixel, "C1"
    if name == "bgal":
        from skpose.imaging.models import volume_from_model

        pixel = 220.0 / box  # beta-gal is ~180 A across: fit it in the box
        vol, pixel = volume_from_model(
            data / "5a1a.cif",
            box_size=box,
            pixel_size_angstrom=pixel,
            resolution_angstrom=2.5 * pixel,
            align_to_symmetry=True,
        )
        return vol.astype(np.float32), pixel, "D2"
    raise SystemExit(f"unknown map {name!r}: choose 80S or bgal")


def timed(fn, repeats: int):
    """Median wall time of ``fn()`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def summary_row(name, errors, rmse, seconds, n):
    s = skpose.error_summary(errors)
    return {
        "method": name,
        "median": s["median_deg"],
        "mean": s["mean_deg"],
        "lt5": s["pct_below_5"],
        "lt10": s["pct_below_10"],
        "rmse": rmse,
        "s_per_1000": 1000 * seconds / n,
    }


def run_condition(volume, pixel, symmetry, condition, args):
    """All methods on one map and one condition; rows of the table, and extras."""
    rng_seed = args.seed
    sim = skpose.simulate_particles(
        volume,
        args.n_train + args.n_test,
        snr=CONDITIONS[condition]["snr"],
        ctf=CONDITIONS[condition]["ctf"],
        max_shift=args.max_shift,
        pixel_size_angstrom=pixel,
        random_state=rng_seed,
    )
    train, test = slice(0, args.n_train), slice(args.n_train, None)
    ctf_test = sim.ctf[np.arange(args.n_train, len(sim))] if sim.ctf else None
    q_true, t_true = sim.quaternions[test], sim.shifts_px[test]
    n = args.n_test

    def row(name, q, seconds):
        err = skpose.angular_error(q_true, q, symmetry)
        rmse = skpose.reprojection_rmse(volume, q_true, q, t_true)
        return summary_row(name, err, rmse, seconds, n)

    # Junk: pure-noise images with the particles' variance, appended to the test set
    # to measure how well each method's confidence ranks them below real particles.
    n_junk = round(args.junk * n)
    rng = np.random.default_rng(rng_seed + 1)
    junk = rng.standard_normal((n_junk, *sim.images.shape[1:])) * sim.images[test].std()
    junk = junk.astype(np.float32)
    junk_ctf = ctf_test[rng.integers(0, n, n_junk)] if ctf_test is not None else None
    aucs = {}

    def auc(name, real, fake):
        labels = np.r_[np.ones(len(real)), np.zeros(len(fake))]
        aucs[name] = (
            roc_auc_score(labels, np.r_[real, fake]) if n_junk else float("nan")
        )

    rows = []
    for step in args.steps:
        matcher = ProjectionMatcher(
            volume,
            angular_step_deg=step,
            max_shift_px=args.max_shift,
            symmetry=symmetry,
            device="cpu",
        ).fit(sim.images[train][:1])
        seconds, poses = timed(
            lambda m=matcher: m.predict_poses(sim.images[test], ctf=ctf_test), 1
        )
        rows.append(row(f"exhaustive search {step:g} deg", poses.quaternions, seconds))
        if n_junk and step == max(args.steps):  # the cheapest grid; finer rank alike
            fake = matcher.predict_poses(junk, ctf=junk_ctf)
            auc(f"exhaustive search {step:g} deg: score", poses.score, fake.score)

    # The product path: OrientationEstimator trained on the raw images with their CTF
    # (it phase-flips them), then predict_poses with refine=False / refine=True.
    ctf_train = sim.ctf[np.arange(args.n_train)] if sim.ctf else None
    est = skpose.OrientationEstimator(
        volume,
        w=args.w if symmetry == "C1" else 0.0,
        lr=1e-3,
        max_iter=args.max_iter,
        batch_size=32,
        architecture="small",
        image_size=args.image_size,
        # With w = 0 the symmetry only makes the refinement's margin symmetry-aware.
        symmetry=None if symmetry == "C1" else symmetry,
        random_state=rng_seed,
        device="cpu",
    )
    train_s, _ = timed(
        lambda: est.fit(
            sim.images[train],
            sim.quaternions[train],
            sim.shifts_px[train],
            ctf=ctf_train,
        ),
        1,
    )
    net_s, q_net = timed(lambda: est.predict(sim.images[test], ctf_test), args.repeats)
    rows.append(row("network alone", q_net, net_s))
    if n_junk:
        # The network's own confidence: NCC at its pose (origins unknown: zeros).
        real = est.predict_poses(sim.images[test], ctf=ctf_test).score
        fake = est.predict_poses(junk, ctf=junk_ctf).score
        auc("network alone: score (NCC at its pose)", real, fake)

    est.set_params(refine=True)
    both_s, poses = timed(
        lambda: est.predict_poses(sim.images[test], ctf=ctf_test), args.repeats
    )
    rows.append(row("network + local refinement", poses.quaternions, both_s))
    # Does the confidence also rank the particles' wrong poses low?
    err = skpose.angular_error(q_true, poses.quaternions, symmetry)
    right, wrong = err < 5, err > 10
    if right.any() and wrong.any():
        aucs["network + refinement: score, right (< 5 deg) vs wrong (> 10 deg)"] = (
            roc_auc_score(right[right | wrong], poses.score[right | wrong])
        )
    if n_junk:
        fake = est.predict_poses(junk, ctf=junk_ctf)
        auc("network + refinement: score (NCC)", poses.score, fake.score)
        auc("network + refinement: margin", poses.margin, fake.margin)
    return rows, {
        "train_s": train_s,
        "n_iter": est.n_iter_,
        "auc": aucs,
        "junk": n_junk,
    }


def ratio_line(rows, extras) -> str:
    """Time of the cheapest search at least as accurate as network + refinement."""
    ours = rows[-1]
    searches = [r for r in rows if r["method"].startswith("exhaustive")]
    good = [r for r in searches if r["median"] <= ours["median"]]
    train = extras["train_s"]
    amort = {m: ours["s_per_1000"] + 1000 * train / m for m in (1e5, 1e6)}
    text = (
        f"network + refinement: {ours['s_per_1000']:.2f} s/1000 particles; training "
        f"{train:.0f} s ({extras['n_iter']} iterations) -> amortised "
        f"{amort[1e5]:.2f} s/1000 over 1e5 particles, {amort[1e6]:.2f} over 1e6"
    )
    if not good:
        best = min(searches, key=lambda r: r["median"])
        return (
            f"{text}\nno search grid reached its median error "
            f"({ours['median']:.2f} deg;"
            f" the finest, {best['method']}, gives {best['median']:.2f} deg in "
            f"{best['s_per_1000']:.1f} s/1000): ratio > "
            f"{best['s_per_1000'] / ours['s_per_1000']:.1f}x"
        )
    cheapest = min(good, key=lambda r: r["s_per_1000"])
    ratio = cheapest["s_per_1000"] / ours["s_per_1000"]
    with_training = cheapest["s_per_1000"] / amort[1e5]
    return (
        f"{text}\nratio: {cheapest['method']} ({cheapest['median']:.2f} deg median) "
        f"takes {ratio:.1f}x the time of network + refinement "
        f"({with_training:.1f}x with training amortised over 1e5 particles)"
    )


def print_table(title: str, rows) -> None:
    print(f"\n### {title}\n")
    print("| method | median° | mean° | % < 5° | % < 10° | RMSE | s / 1000 particles |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['median']:.2f} | {r['mean']:.2f} | {r['lt5']:.1f} "
            f"| {r['lt10']:.1f} | {r['rmse']:.4g} | {r['s_per_1000']:.2f} |"
        )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", nargs="+", default=["80S", "bgal"])
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32, help="network input")
    p.add_argument("--steps", type=float, nargs="+", default=[15.0, 7.5, 3.75])
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--max-iter", type=int, default=3000)
    p.add_argument("--w", type=float, default=0.8, help="for C1 maps (D2 uses 0)")
    p.add_argument("--max-shift", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--junk",
        type=float,
        default=0.2,
        help="pure-noise images added to the test set, as a fraction of it (ROC AUC)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steadier timings on a shared 2-core machine)",
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.maps, args.conditions, args.box = ["80S"], ["noiseless"], 32
        args.steps, args.n_train, args.n_test = [30.0, 15.0], 200, 50
        args.max_iter, args.repeats = 50, 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}; box "
        f"{args.box}, network input {args.image_size} px, {args.n_train} training / "
        f"{args.n_test} test particles, max shift {args.max_shift} px"
    )
    for name in args.maps:
        volume, pixel, symmetry = load_map(name, args.box)
        for condition in args.conditions:
            rows, extras = run_condition(volume, pixel, symmetry, condition, args)
            print_table(f"{name} ({symmetry}), {condition}, {pixel:.2f} A/px", rows)
            print("\n" + ratio_line(rows, extras))
            if extras["auc"]:
                print(
                    f"\nconfidence, ROC AUC (1: perfect ranking): particles vs "
                    f"{extras['junk']} pure-noise images, unless said otherwise"
                )
                for method, value in extras["auc"].items():
                    print(f"  {method}: {value:.3f}")
            print(flush=True)


if __name__ == "__main__":
    main()
