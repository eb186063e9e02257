"""The network alone: training and held-out angular errors, by decile.

A diagnostic for issue 11's question "does the network learn here?": it trains the
benchmark's network (``search_vs_network.py``'s CPU configuration: small network,
32 px input, lr 1e-3, batch 32) on one map and condition and prints the error
distribution on 1,000 training and 1,000 held-out particles. Training error close to
the held-out error at chance (random rotations: a median of 132 degrees for C1)
means the network did not learn at all; a low training and a high held-out error,
that it learned the training set only.

    python benchmarks/network_alone.py --condition snr1 --max-shift 3 --recentre
    python benchmarks/network_alone.py --condition snr0.1+ctf --max-shift 0 \
        --lowpass 0.1

``--lowpass F`` multiplies the images' transforms by ``exp(-(k / F)^2)`` (``k`` in
cycles per pixel of the benchmark box) before the estimator sees them, a denoising
front end tried for the issue (not a parameter of the estimator: see
``benchmarks/README.md`` for why).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from search_vs_network import CONDITIONS, load_map

import skpose


def lowpassed(images: np.ndarray, cutoff: float) -> np.ndarray:
    """Images times a Gaussian ``exp(-(k / cutoff)^2)`` in Fourier space."""
    x = torch.as_tensor(images, dtype=torch.float64)
    k = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)
    gain = torch.exp(-(k[:, None] ** 2 + k[None] ** 2) / cutoff**2)
    out = torch.fft.ifft2(torch.fft.fft2(x) * gain).real
    return out.to(torch.float32).numpy()


def deciles(name: str, errors: np.ndarray) -> str:
    d = np.percentile(errors, np.arange(10, 100, 10))
    return (
        f"{name}: median {np.median(errors):.1f} deg; deciles "
        + " ".join(f"{v:.1f}" for v in d)
        + f"; {100 * (errors < 10).mean():.1f} % < 10; "
        f"{100 * (errors > 150).mean():.1f} % > 150"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--map", default="80S", choices=["80S", "bgal"])
    p.add_argument("--condition", default="snr1", choices=list(CONDITIONS))
    p.add_argument("--max-shift", type=float, default=3.0)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--max-iter", type=int, default=3000)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--w", type=float, default=0.8, help="for C1 (D2 uses 0)")
    p.add_argument("--lowpass", type=float, default=0.0, help="0: off")
    p.add_argument("--recentre", action="store_true")
    p.add_argument("--simulate", type=float, default=0.0, help="simulate_from_map")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    volume, pixel, symmetry = load_map(args.map, args.box)
    condition = CONDITIONS[args.condition]
    n = args.n_train + 1000
    sim = skpose.simulate_particles(
        volume, n, snr=condition["snr"], ctf=condition["ctf"],
        max_shift=args.max_shift, pixel_size_angstrom=pixel, random_state=args.seed,
    )  # fmt: skip
    images = sim.images if not args.lowpass else lowpassed(sim.images, args.lowpass)
    train, test = np.arange(args.n_train), np.arange(args.n_train, n)
    ctf = sim.ctf
    est = skpose.OrientationEstimator(
        volume, w=args.w if symmetry == "C1" else 0.0, lr=1e-3,
        max_iter=args.max_iter, batch_size=32, architecture="small",
        image_size=args.image_size, symmetry=None if symmetry == "C1" else symmetry,
        random_state=args.seed, device="cpu", simulate_from_map=args.simulate,
        recentre=args.recentre,
    )  # fmt: skip
    start = time.process_time()
    est.fit(images[train], sim.quaternions[train], sim.shifts_px[train],
            ctf=None if ctf is None else ctf[train])  # fmt: skip
    print(f"{vars(args)}")
    print(f"training: {time.process_time() - start:.0f} s CPU")
    for name, rows in (("training", train[:1000]), ("held out", test)):
        q = est.predict(images[rows], None if ctf is None else ctf[rows])
        print(deciles(name, skpose.angular_error(sim.quaternions[rows], q, symmetry)))


if __name__ == "__main__":
    main()
