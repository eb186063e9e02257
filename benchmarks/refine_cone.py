"""How wide a refinement cone do poses need? Accuracy and cost per cone.

Network-like starts (the default): 50 % of the particles within 10 degrees of the
truth, 30 % 10-40 degrees off, 20 % anywhere (random rotations). Each start is refined
with :func:`skpose.refine` (final step 2 degrees, origins within 4 px), one CPU
thread; the table gives the median angular error, the fraction under 5 degrees and
the wall-clock time per 1000 particles for each cone (the defaults of
``OrientationEstimator(refine_cone_deg=None)`` come from this table).

    OMP_NUM_THREADS=1 python benchmarks/refine_cone.py --box 64 --n 400 --snr 0 1 0.1

``--matcher``: starts from ``ProjectionMatcher``'s search instead (grid steps 15 and
7.5 degrees), refined within one or two grid steps and origins within 1 or 4 px (the
defaults of ``ProjectionMatcher``'s ``refine_cone_deg`` and ``refine_shift_px``):

    OMP_NUM_THREADS=1 python benchmarks/refine_cone.py --matcher --n 150 --snr 0 1 0.1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import skpose
from skpose.geometry.rotations import axis_angle_to_quat, quat_multiply


def network_like_starts(quats: np.ndarray, seed: int) -> np.ndarray:
    """50 % within 10 degrees, 30 % 10-40 degrees, 20 % random rotations."""
    rng = np.random.default_rng(seed)
    n = len(quats)
    kind = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    angle = np.where(kind == 0, rng.uniform(0, 10, n), rng.uniform(10, 40, n))
    axes = rng.standard_normal((n, 3))
    axes *= np.deg2rad(angle)[:, None] / np.linalg.norm(axes, axis=1, keepdims=True)
    turned = quat_multiply(
        axis_angle_to_quat(torch.as_tensor(axes)), torch.as_tensor(quats)
    )
    start = turned.numpy()
    start[kind == 2] = skpose.random_quaternions(int((kind == 2).sum()), seed).numpy()
    return start


def matcher_table(volume, sims: dict) -> None:
    """Search, then refine within 1 or 2 grid steps, origins within 1 or 4 px."""
    print(
        "| SNR | step | cone | shift window (px) | median error | 90 % origin error |"
    )
    print("|---|---|---|---|---|---|")
    for label, sim in sims.items():
        for step in (15.0, 7.5):
            matcher = skpose.ProjectionMatcher(volume, angular_step_deg=step)
            found = matcher.fit(sim.images[:1]).predict_poses(sim.images)
            for cone, shift in ((step, 1.0), (2 * step, 1.0), (2 * step, 4.0)):
                matcher.set_params(refine_shift_px=shift)
                poses = matcher.refine(
                    sim.images, found.quaternions, found.shifts_px, cone_deg=cone
                )
                err = skpose.angular_error(sim.quaternions, poses.quaternions)
                origin = np.abs(poses.shifts_px - sim.shifts_px).max(axis=1)
                print(
                    f"| {label} | {step:g} | {cone:g} | {shift:g} | "
                    f"{np.median(err):.2f} | {np.percentile(origin, 90):.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--cones", type=float, nargs="+", default=[15, 30, 45, 60, 90])
    parser.add_argument("--snr", type=float, nargs="+", default=[0.0, 1.0, 0.1])
    parser.add_argument("--matcher", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    volume = skpose.phantom_volume(args.box)
    sims = {
        "noiseless" if not snr else f"{snr:g}": skpose.simulate_particles(
            volume, args.n, snr=snr or None, max_shift=2, random_state=0
        )
        for snr in args.snr
    }
    if args.matcher:
        matcher_table(volume, sims)
        return
    print("| SNR | cone (deg) | median error (deg) | < 5 deg | s / 1000 |")
    print("|---|---|---|---|---|")
    for label, sim in sims.items():
        start = network_like_starts(sim.quaternions, seed=1)
        for cone in args.cones:
            t0 = time.perf_counter()
            poses = skpose.refine(volume, sim.images, start, cone_deg=cone)
            seconds = time.perf_counter() - t0
            err = skpose.angular_error(sim.quaternions, poses.quaternions)
            print(
                f"| {label} | {cone:g} | {np.median(err):.2f} | "
                f"{100 * np.mean(err < 5):.1f} % | {1000 * seconds / args.n:.1f} |"
            )


if __name__ == "__main__":
    main()
