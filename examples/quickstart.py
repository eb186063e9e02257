"""Quickstart: simulate particles, train the orientation network, predict, evaluate.

Runs on a laptop CPU in a few minutes::

    python examples/quickstart.py                 # the built-in asymmetric phantom
    python examples/quickstart.py --map map.mrc   # your own map (cubic MRC)
    python examples/quickstart.py --figures docs/figures   # and the docs' figures

The paper's workflow on simulated data: (1) simulate a particle set from a map with
shifts and noise, and write it as a RELION 3.1 STAR + MRCS; (2) read it back; (3) train
``OrientationEstimator`` on 80 % of the particles (their known poses stand in for a
conventional search); (4) predict the other 20 %; (5) evaluate against the truth with
the paper's metric (reprojection RMSE) and angular errors, next to random poses; and
save the model with joblib. A separate block at the end then compares the two
pipelines a user would run on the held-out particles, both starting blind (no angles,
zero origins): network + local refinement against ``skpose search``'s conventional
pipeline (``ProjectionMatcher`` 15-degree global search + the same refinement), with
their accuracy and time per 1000 particles. With ``--figures``, it draws the error
histogram, the error by viewing direction, projections side by side and the FSC of
half maps reconstructed from the network + refinement poses.

The default particles are noisy with a CTF (SNR 0.1, defoci 1-2.5 um), as real ones
are; ``--snr 0`` makes them noiseless and ``--no-ctf`` drops the CTF.

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
    parser.add_argument("--snr", type=float, default=0.1, help="0: noiseless")
    parser.add_argument("--no-ctf", action="store_true", help="particles without CTF")
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
        volume, args.n, snr=args.snr or None, ctf=not args.no_ctf, max_shift=2,
        pixel_size_angstrom=pixel_size, random_state=args.seed,
    )  # fmt: skip
    star = sim.to_relion(args.out / "particles.star")
    particles = skpose.read_particles(star)
    images = skpose.read_images(star.with_suffix(".mrcs"))  # memory-mapped
    quats, shifts = particles.quaternions, particles.origins_px
    ctf = particles.ctf if particles.has_column("rlnDefocusU") else None
    print(f"simulated {len(sim)} particles ({volume.shape[0]} px) -> {star}")

    # 3. Train on 80 %.
    n_train = int(0.8 * len(quats))
    est = OrientationEstimator(
        volume, w=0.8, lr=1e-3, max_iter=args.max_iter, batch_size=32,
        architecture="small", image_size=32, random_state=args.seed, verbose=1,
        fallback="search",  # calibrate a confidence threshold on held-out particles
    )  # fmt: skip
    train_ctf = None if ctf is None else ctf[np.arange(n_train)]
    est.fit(images[:n_train], quats[:n_train], shifts[:n_train], ctf=train_ctf)
    fitted = time.perf_counter()

    # 4. Predict the other 20 %.
    test = slice(n_train, None)
    test_ctf = None if ctf is None else ctf[np.arange(n_train, len(quats))]
    predicted = est.predict(images[test], ctf=test_ctf)
    predict_s = time.perf_counter() - fitted

    # 5. Evaluate.
    print("\n| poses | median deg | mean deg | % < 5 deg | % < 10 deg | RMSE |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    random = skpose.random_quaternions(len(predicted), rng).numpy()
    for name, q in [("network", predicted), ("random poses", random)]:
        row = evaluate(volume, quats[test], q, shifts[test], "C1")
        print(f"| {name} | {row} |")
    joblib.dump(est, args.out / "model.joblib")
    print(
        f"\ntrained {est.n_iter_} iterations in {fitted - start:.0f} s; predicted "
        f"{len(predicted)} particles in {predict_s:.2f} s; "
        f"model saved to {args.out / 'model.joblib'}"
    )
    poses = compare_pipelines(volume, images[test], test_ctf, quats[test], est)
    if args.figures:
        held_out = (images[test], test_ctf, quats[test])
        figures(args.figures, volume, pixel_size, *held_out, poses)


# --------------------------------------------------------------------------------------
# The comparison users care about: network + refinement vs the conventional pipeline
# --------------------------------------------------------------------------------------


def compare_pipelines(volume, images, ctf, truth, est):
    """Both pipelines on the held-out particles, from no angles and zero origins."""
    from skpose import ProjectionMatcher

    est.set_params(refine=True, refine_shift_px=3.0, verbose=0, fallback=None)
    matcher = ProjectionMatcher(
        volume, angular_step_deg=15, refine_step_deg=2, max_shift_px=3
    ).fit(images[:1])  # what `skpose search --step 15 --refine-step 2` runs
    print("\n| pipeline (from zero origins) | median deg | % < 5 deg | s / 1000 |")
    print("|---|---|---|---|")

    def with_fallback():
        est.set_params(fallback="search")  # low-confidence particles searched again
        poses, searched = est.predict_poses(images, ctf=ctf, return_fallback=True)
        print(f"(fallback: {100 * searched.mean():.1f} % of the particles searched)")
        return poses

    results = {}
    for name, run in [
        ("network + refinement", lambda: est.predict_poses(images, ctf=ctf)),
        ("network + refinement + fallback", with_fallback),
        ("search 15 deg + refinement", lambda: matcher.predict_poses(images, ctf)),
    ]:
        start = time.perf_counter()
        poses = results[name] = run()
        seconds = 1000 * (time.perf_counter() - start) / len(images)
        s = skpose.error_summary(skpose.angular_error(truth, poses.quaternions))
        print(
            f"| {name} | {s['median_deg']:.2f} | {s['pct_below_5']:.1f} | "
            f"{seconds:.1f} |"
        )
    return results["network + refinement"]


def figures(folder: Path, volume, pixel_size, images, ctf, truth, poses):
    """The four figures of the docs, from the network + refinement poses."""
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
        images, poses.quaternions, poses.shifts_px, ctf=ctf, random_state=0
    )
    freq, curve = skpose.fsc(half1, half2, pixel_size_angstrom=pixel_size)
    truth_map = skpose.reconstruct(images, truth, poses.shifts_px, ctf=ctf)
    _, vs_truth = skpose.fsc(half1 + half2, truth_map, pixel_size_angstrom=pixel_size)
    plotting.plot_fsc(
        freq, {"half maps (refined poses)": curve, "vs map from true poses": vs_truth},
        path=folder / "fsc.png",
    )  # fmt: skip
    print(f"figures written to {folder}")


if __name__ == "__main__":
    main()
