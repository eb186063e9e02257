"""``skpose search``: the conventional pipeline, from STAR to STAR.

A global search over a grid of orientations (``--step`` degrees, one asymmetric unit
of ``--symmetry``) and trial origins (within ``--max-shift`` pixels), then local
refinement down to ``--refine-step`` degrees (RELION's practice;
:class:`skpose.ProjectionMatcher` with ``refine_step_deg``). References are
CTF-modulated with each particle's CTF from the STAR file. Origins are searched from
zero, as for freshly picked particles, or around the STAR's origins with
``--keep-origins``. The output keeps every other column and the optics table, and
adds ``rlnSkposeConfidence`` (the refined normalised cross-correlation, as
``skpose predict`` writes it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from skpose.imaging._centring import recentre
from skpose.io import iter_particle_images, read_particles, read_volume

__all__ = ["add_parser", "search"]

EXAMPLE = (
    "skpose search particles.star --volume map.mrc --step 15 --symmetry D2 "
    "--out searched.star"
)


def add_parser(sub, make) -> None:
    """Add the ``search`` subcommand; ``make(sub, name, help)`` builds a subparser."""
    p = make(sub, "search", "Global search + local refinement of every particle.")
    p.add_argument("particles", type=Path, help="STAR file")
    p.add_argument("--volume", type=Path, required=True, help="MRC map, particle box")
    p.add_argument("--out", type=Path, required=True, help="STAR file to write")
    p.add_argument("--step", type=float, default=15.0, help="grid step, degrees")
    p.add_argument(
        "--refine-step", type=float, default=2.0, help="final refinement step, degrees"
    )
    p.add_argument(
        "--max-shift", type=float, default=4.0, help="origin search radius, pixels"
    )
    p.add_argument("--symmetry", default="C1")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--keep-origins",
        action="store_true",
        help="search origins around the STAR's instead of zero",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _check_options(args) -> None:
    if not 0 < args.step <= 90:
        raise ValueError(f"--step must be in (0, 90] degrees, got {args.step:g}.")
    if not args.refine_step > 0:
        raise ValueError(
            f"--refine-step must be > 0 degrees, got {args.refine_step:g}."
        )
    if not args.max_shift >= 0:
        raise ValueError(f"--max-shift must be >= 0 pixels, got {args.max_shift:g}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")


def _load_map(args, particles, pixel: float) -> np.ndarray:
    """The map, checked against the particles' box and pixel size."""
    if not Path(args.volume).is_file():
        raise FileNotFoundError(f"--volume {args.volume} does not exist.")
    volume, voxel = read_volume(args.volume)
    box = particles.box_size
    if box and volume.shape[0] != box:
        raise ValueError(
            f"{args.volume} is a {volume.shape[0]} px map but the particles of "
            f"{particles.source} are {box} px: give the map at the particles' box "
            "and pixel size."
        )
    if voxel and abs(voxel - pixel) > 0.01 * pixel:
        raise ValueError(
            f"{args.volume} has {voxel:g} A voxels but the particles of "
            f"{particles.source} are at {pixel:g} A/px: resample the map first."
        )
    return volume


def search(args) -> None:
    """``skpose search``: global search + refinement; write poses and confidence."""
    from skpose.cli._commands import _has_ctf, _single_pixel_size, write_poses
    from skpose.estimators import ProjectionMatcher

    _check_options(args)
    particles = read_particles(args.particles)
    pixel = _single_pixel_size(particles)
    volume = _load_map(args, particles, pixel)
    matcher = ProjectionMatcher(
        volume,
        angular_step_deg=args.step,
        max_shift_px=args.max_shift,
        symmetry=args.symmetry,
        refine_step_deg=args.refine_step,
        batch_size=args.batch_size,
        device=args.device,
    )
    n = len(particles)
    quats, conf = np.zeros((n, 4)), np.zeros(n)
    start = particles.origins_px.astype(np.float64)
    if not args.keep_origins:
        start = np.zeros_like(start)
    shifts = start.copy()
    ctf_all = particles.ctf if _has_ctf(particles) else None
    batches = iter_particle_images(particles, args.batch_size)
    total = -(-n // args.batch_size)
    for rows, images in tqdm(
        batches, total=total, desc="search", unit="batch", disable=None
    ):
        if not hasattr(matcher, "directions_"):
            matcher.fit(images[:1])  # checks the options; the grid, once
        if args.keep_origins:
            images = recentre(images, start[rows]).numpy()
        ctf = None if ctf_all is None else ctf_all[rows]
        poses = matcher.predict_poses(images, ctf=ctf)
        quats[rows], conf[rows] = poses.quaternions, poses.score
        shifts[rows] = start[rows] + poses.shifts_px
    out = write_poses(args.out, particles, quats, shifts, conf)
    print(f"searched {n} particles (step {args.step:g} deg); wrote {out}")
