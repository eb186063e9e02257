"""Quickstart: simulate particles, train the orientation network, predict, refine.

Runs on a laptop CPU in a few minutes::

    python examples/quickstart.py                 # the built-in asymmetric phantom
    python examples/quickstart.py --map map.mrc   # your own map (cubic MRC)
    python examples/quickstart.py --figures docs/figures   # and the four figures

The paper's workflow on simulated data: (1) simulate a particle set from a map with
shifts and noise, and write it as a RELION 3.1 STAR + MRCS; (2) read it back; (3) train
``OrientationEstimator`` on 80 % of the particles (their known poses stand in for a
conventional search); (4) predict the other 20 %, with the network alone and with the
network's poses refined by a local search against the map (the product:
``predict_poses`` with ``refine=True``); (5) evaluate against the truth with the paper's
metric (reprojection RMSE) and angular errors, next to random poses; save the model
with joblib; and with ``--figures``, draw the error histogram, the error by viewing
direction, projections side by side and the FSC of half maps reconstructed from the
refined poses.

The CPU configuration (``architecture="small"``, 32 px input) is our addition; the
paper's network (``architecture="vgg16"``, 128 px) is the default for GPU use.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import joblib
import numpy as np

import skpose
from skpose import OrientationEstimator


def evaluate(volume, truth, quats, shifts, symmetry):
    """One table row: angular error summary and reprojection RMSE."""
    s = skpose.error_summary(skpose.angular_error(truth, quats, symmetry))
    rmse = skpose.reprojection_rmse(volume, truth, quats, shifts)
    return (
        f"{s['median_deg']:.1f} | {s['mean_deg']:.1f} | {s['pct_below_5']:.1f} | "
        f"{s['pct_below_10']:.1f} | {rmse:.3f}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, help="cubic MRC map (default: phantom)")
    parser.add_argument("--n", type=int, default=3000, help="particles to simulate")
    parser.add_argument("--box", type=int, default=64, help="box of the phantom")
    parser.add_argument("--snr", type=float, default=None, help="default: noiseless")
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--figures", type=Path, help="folder for the figures (needs matplotlib)"
    )
    args = parser.parse_args(argv)

    if args.map:
        volume, pixel_size = skpose.read_volume(args.map)
        pixel_size = pixel_size or 1.0
    else:
        volume, pixel_size = skpose.phantom_volume(args.box), 3.0
    start = time.perf_counter()

    # 1-2. Simulate, write RELION files, read them back.
    sim = skpose.simulate_particles(
        volume, args.n, snr=args.snr, max_shift=2,
        pixel_size_angstrom=pixel_size, random_state=args.seed,
    )  # fmt: skip
    star = sim.to_relion(args.out / "particles.star")
    particles = skpose.read_particles(star)
    images = skpose.read_images(star.with_suffix(".mrcs"))  # memory-mapped
    quats, shifts = particles.quaternions, particles.origins_px
    print(f"simulated {len(sim)} particles ({volume.shape[0]} px) -> {star}")

    # 3. Train on 80 %.
    n_train = int(0.8 * len(quats))
    est = OrientationEstimator(
        volume, w=0.8, lr=1e-3, max_iter=args.max_iter, batch_size=32,
        architecture="small", image_size=32, random_state=args.seed, verbose=1,
    )  # fmt: skip
    est.fit(images[:n_train], quats[:n_train], shifts[:n_train])
    fitted = time.perf_counter()

    # 4. Predict the other 20 %: the network alone, then network + refinement.
    test = slice(n_train, None)
    predicted = est.predict(images[test])
    predict_s = time.perf_counter() - fitted
    est.set_params(refine=True)  # a prediction-time switch: no retraining
    tick = time.perf_counter()
    poses = est.predict_poses(images[test])  # quaternions, origins, confidence
    refine_s = time.perf_counter() - tick

    # 5. Evaluate.
    print("\n| poses | median deg | mean deg | % < 5 deg | % < 10 deg | RMSE |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    random = skpose.random_quaternions(len(predicted), rng).numpy()
    rows = [
        ("network alone", predicted),
        ("network + refinement", poses.quaternions),
        ("random poses", random),
    ]
    for name, q in rows:
        row = evaluate(volume, quats[test], q, shifts[test], "C1")
        print(f"| {name} | {row} |")
    joblib.dump(est, args.out / "model.joblib")
    n_test = len(predicted)
    print(
        f"\ntrained {est.n_iter_} iterations in {fitted - start:.0f} s; network alone "
        f"{1000 * predict_s / n_test:.2f} s per 1000 particles, network + refinement "
        f"{1000 * (predict_s + refine_s) / n_test:.2f} s per 1000; model saved to "
        f"{args.out / 'model.joblib'}"
    )
    if args.figures:
        figures(args.figures, volume, pixel_size, images[test], quats[test], poses)


def figures(folder: Path, volume, pixel_size, images, truth, poses):
    """The four figures of the docs, from the refined poses."""
    from skpose import plotting

    folder.mkdir(parents=True, exist_ok=True)
    errors = skpose.angular_error(truth, poses.quaternions)
    plotting.plot_error_histogram(errors, path=folder / "error_histogram.png")
    by_direction = folder / "error_by_direction.png"
    plotting.plot_error_by_direction(truth, errors, path=by_direction)
    plotting.plot_projection_panels(
        images, volume, truth, poses.quaternions, shifts_px=poses.shifts_px, n=4,
        path=folder / "projections.png",
    )  # fmt: skip
    half1, half2 = skpose.half_maps(
        images, poses.quaternions, poses.shifts_px, random_state=0
    )
    freq, curve = skpose.fsc(half1, half2, pixel_size_angstrom=pixel_size)
    truth_map = skpose.reconstruct(images, truth, poses.shifts_px)
    _, vs_truth = skpose.fsc(half1 + half2, truth_map, pixel_size_angstrom=pixel_size)
    plotting.plot_fsc(
        freq, {"half maps (refined poses)": curve, "vs map from true poses": vs_truth},
        path=folder / "fsc.png",
    )  # fmt: skip
    print(f"figures written to {folder}")

if __name__ == "__main__":
    main()
