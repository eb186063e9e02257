"""The paper's noise study (its Table 2) at a CPU budget.

Runs on a CPU in a few minutes::

    python examples/noise_study.py            # noiseless, SNR 1, 0.7, 0.4, 0.1
    python examples/noise_study.py --quick    # a smoke test, under a minute

For each signal-to-noise ratio the script simulates the same particles (same poses,
same shifts: one seed, only the noise level changes) of the built-in asymmetric
phantom, trains the CPU network (``architecture="small"``, 32 px) with the same budget
on 80 % of them, predicts the other 20 %, and reports the median angular error and the
paper's reprojection RMSE (eq. 16, on the full-size map) in a markdown table, next to
the RMSE of random poses. The figure, ``out/noise_study/noise_study.png``, shows one
particle at each SNR and both metrics against SNR.

SNR is skpose's definition (``skpose.simulate``): the variance of the clean images
over the whole box divided by the noise variance. The paper's Table 2 used 128 px
images, the VGG16 network and 2000 iterations on a GPU; expect the same trend (errors
grow as the SNR falls), not its numbers. At this CPU budget the noisy runs end far from
the noiseless one (median errors near 100 degrees against 38 noiseless, on 2 cores);
``--w 1`` (QD alone), more iterations (``--max-iter``) or more particles (``--n``) do
better. The table in ``docs/choosing-w-and-lr.md`` is this script's output.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import skpose
from skpose import OrientationEstimator


def train_and_score(volume, sim, n_train, args):
    """Train on the first ``n_train`` particles; errors and RMSE on the rest."""
    train, test = slice(None, n_train), slice(n_train, None)
    est = OrientationEstimator(
        volume, w=args.w, lr=1e-3, max_iter=args.max_iter, batch_size=32,
        architecture="small", image_size=32, random_state=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    est.fit(sim.images[train], sim.quaternions[train], sim.shifts_px[train])
    seconds = time.perf_counter() - start
    q_true, shifts = sim.quaternions[test], sim.shifts_px[test]
    q_pred = est.predict(sim.images[test])
    summary = skpose.error_summary(skpose.angular_error(q_true, q_pred))
    rmse = skpose.reprojection_rmse(volume, q_true, q_pred, shifts)
    return summary, rmse, seconds


def save_figure(rows, examples, path: Path) -> None:
    """One particle per SNR above; median error and RMSE against SNR below."""
    fig = Figure(figsize=(2.0 * max(len(examples), 4), 6.5))
    grid = fig.add_gridspec(2, 1, height_ratios=[1, 1.6])
    top, bottom = grid[0].subgridspec(1, len(examples)), grid[1].subgridspec(1, 2)
    for k, (label, image) in enumerate(examples):
        ax = fig.add_subplot(top[0, k])
        ax.imshow(image, cmap="gray")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    noisy = [r for r in rows if math.isfinite(r["snr"])]
    snr = [r["snr"] for r in noisy]
    panels = [
        (bottom[0, 0], "median_deg", "median angular error (deg)"),
        (bottom[0, 1], "rmse", "reprojection RMSE"),
    ]
    for spec, key, label in panels:
        ax = fig.add_subplot(spec)
        ax.plot(snr, [r[key] for r in noisy], "o-", label="network")
        clean = [r for r in rows if not math.isfinite(r["snr"])]
        if clean:
            ax.axhline(clean[0][key], color="gray", ls="--", label="noiseless")
        if key == "rmse":
            ax.axhline(rows[0]["random_rmse"], color="red", ls=":", label="random")
        ax.set_xscale("log")
        ax.set_xticks(snr, [f"{v:g}" for v in snr])
        ax.minorticks_off()
        ax.invert_xaxis()  # noisier to the right
        ax.set_ylim(bottom=0)
        ax.set_xlabel("SNR")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="particles (80 %% train)")
    parser.add_argument("--box", type=int, default=64, help="box of the phantom")
    parser.add_argument("--snr", type=float, nargs="+", default=[1, 0.7, 0.4, 0.1])
    parser.add_argument("--no-clean", action="store_true", help="skip the noiseless")
    parser.add_argument("--w", type=float, default=0.8)
    parser.add_argument("--max-iter", type=int, default=1500, help="per SNR")
    parser.add_argument("--out", type=Path, default=Path("out/noise_study"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test (< 60 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.box, args.max_iter, args.no_clean = 300, 32, 10, True
    args.out.mkdir(parents=True, exist_ok=True)

    volume = skpose.phantom_volume(args.box)
    n_train = int(0.8 * args.n)
    levels = ([] if args.no_clean else [math.inf]) + list(args.snr)
    rows, examples, first = [], [], None
    for snr in levels:
        # One seed: poses and shifts are drawn before the noise, so they are shared.
        sim = skpose.simulate_particles(
            volume, args.n, snr=None if math.isinf(snr) else snr, max_shift=2,
            random_state=args.seed,
        )  # fmt: skip
        if first is None:
            first = sim
            rng = np.random.default_rng(args.seed)
            random = skpose.random_quaternions(args.n - n_train, rng).numpy()
            random_rmse = skpose.reprojection_rmse(
                volume, sim.quaternions[n_train:], random, sim.shifts_px[n_train:]
            )
        assert np.array_equal(sim.quaternions, first.quaternions)
        label = "noiseless" if math.isinf(snr) else f"{snr:g}"
        title = label if math.isinf(snr) else f"SNR {label}"
        examples.append((title, sim.images[n_train]))
        summary, rmse, seconds = train_and_score(volume, sim, n_train, args)
        rows.append({"snr": snr, "label": label, **summary, "rmse": rmse,
                     "random_rmse": random_rmse, "seconds": seconds})  # fmt: skip
        print(f"{title}: median {summary['median_deg']:.1f} deg, RMSE {rmse:.4g} "
              f"({seconds:.0f} s)", flush=True)  # fmt: skip

    print(
        f"\n{args.n - n_train} test particles, {n_train} training, "
        f"{args.max_iter} iterations, w = {args.w}\n"
    )
    print("| SNR | median deg | mean deg | % < 10 deg | RMSE | RMSE random poses |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['median_deg']:.1f} | {r['mean_deg']:.1f} | "
            f"{r['pct_below_10']:.1f} | {r['rmse']:.4g} | {r['random_rmse']:.4g} |"
        )
    path = args.out / "noise_study.png"
    save_figure(rows, examples, path)
    print(f"\ntraining took {sum(r['seconds'] for r in rows):.0f} s; figure: {path}")


if __name__ == "__main__":
    main()
