"""What confidence is "low"? The score of right poses vs pure-noise junk images.

The confidence of skpose's estimators (``Poses.score``, the ``rlnSkposeConfidence``
column of ``skpose predict``) is :func:`skpose.pose_score`: the normalised
cross-correlation (NCC) of each image with the (CTF-modulated) projection at its pose,
at the images' full box, in [-1, 1]. This script measures its distribution on
simulated particles of the built-in phantom (64 px, origins within 2 px, CTF at 1.5 A
per pixel) at several SNRs, for

- particles at their true poses ("right");
- the same particles at random poses ("wrong");
- pure-noise images of the particles' noise level ("junk"), refined from random starts
  (:func:`skpose.refine`, 45 degree cone: the best a refinement makes of them, which
  is what a network + refinement would report for junk).

    OMP_NUM_THREADS=1 python benchmarks/confidence_range.py --n 300 --snr 1 0.1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import skpose


def percentiles(x) -> str:
    p5, p50, p95 = np.percentile(x, [5, 50, 95])
    return f"{p5:.3f} / {p50:.3f} / {p95:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--snr", type=float, nargs="+", default=[1.0, 0.1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    volume = skpose.phantom_volume(args.box)
    print("| SNR | right poses | wrong poses | junk, refined | junk above right p5 |")
    print("|---|---|---|---|---|")
    for snr in args.snr:
        sim = skpose.simulate_particles(
            volume,
            args.n,
            snr=snr,
            ctf=True,
            max_shift=2,
            pixel_size_angstrom=1.5,
            random_state=0,
        )
        right = skpose.pose_score(
            volume, sim.images, sim.quaternions, sim.shifts_px, ctf=sim.ctf
        )
        random = skpose.random_quaternions(args.n, 1).numpy()
        wrong = skpose.pose_score(
            volume, sim.images, random, sim.shifts_px, ctf=sim.ctf
        )
        rng = np.random.default_rng(2)
        junk = rng.standard_normal(sim.images.shape) * sim.noise_std
        junk = skpose.refine(
            volume, junk.astype(np.float32), random, ctf=sim.ctf, cone_deg=45.0
        ).score
        above = np.mean(junk > np.percentile(right, 5))
        print(
            f"| {snr:g} | {percentiles(right)} | {percentiles(wrong)} | "
            f"{percentiles(junk)} | {100 * above:.1f} % |"
        )
    print("(5th / 50th / 95th percentiles of the NCC)")


if __name__ == "__main__":
    main()
