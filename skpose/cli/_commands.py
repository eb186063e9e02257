"""What each ``skpose`` subcommand does (``skpose.cli`` parses, this module acts).

CTF handling (``fit`` and ``predict``): particles whose STAR file has CTF parameters are
**phase-flipped** before they reach the network, so that every frequency has the
first lobe's contrast; the reprojection loss stays the paper's simplified projection
(no CTF), which phase-flipped images resemble up to an amplitude envelope. Why: the
network then sees the same contrast for every defocus, and the loss needs no per-image
CTF inside the training loop. The confidence written by ``predict`` compares each image
with the CTF-modulated projection at its predicted pose (normalised cross-correlation).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import NamedTuple

import joblib
import numpy as np
import torch
from tqdm.auto import tqdm

import skpose
from skpose import distributed
from skpose.imaging.preprocess import fourier_resize, phase_flip
from skpose.io import (
    iter_particle_images,
    load_particle_images,
    read_particles,
    read_volume,
    write_particles,
    write_volume,
)

_MODEL_FORMAT = "skpose-model-1"


# --------------------------------------------------------------------------------------
# simulate / split
# --------------------------------------------------------------------------------------


def simulate(args) -> None:
    """``skpose simulate``: a RELION 3.1 STAR + MRCS from a map."""
    volume, voxel = read_volume(args.map)
    pixel = args.pixel_size or voxel or 1.0
    sim = skpose.simulate_particles(
        volume,
        args.n,
        snr=args.snr,
        ctf=bool(args.ctf),
        max_shift=args.max_shift,
        poses=args.poses,
        pixel_size_angstrom=pixel,
        random_state=args.seed,
    )
    star = sim.to_relion(Path(args.out) / "particles.star")
    print(f"wrote {len(sim)} particles to {star}")


def split(args) -> None:
    """``skpose split``: train.star (a random fraction) and rest.star."""
    if not 0 < args.fraction < 1:
        raise ValueError(f"--fraction must be in (0, 1), got {args.fraction}.")
    particles = read_particles(args.particles)
    n = len(particles)
    rng = np.random.default_rng(args.seed)
    train = np.sort(rng.choice(n, size=max(1, round(args.fraction * n)), replace=False))
    rest = np.setdiff1d(np.arange(n), train)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("rest", rest)):
        subset = particles.select(rows)
        _rebase_image_names(particles, subset, out)
        write_particles(out / f"{name}.star", subset)
    print(f"wrote {len(train)} particles to {out / 'train.star'}, {len(rest)} to rest")


def _rebase_image_names(source, subset, out: Path) -> None:
    """Rewrite ``index@file`` names so that they resolve from the folder ``out``."""
    if not subset.has_column("rlnImageName"):
        return
    base = Path(source.path).parent if source.path else Path.cwd()
    names = []
    for name in subset.data["rlnImageName"]:
        index, _, file = str(name).partition("@")
        path = Path(file) if Path(file).is_absolute() else base / file
        names.append(f"{index}@{os.path.relpath(path.resolve(), out.resolve())}")
    subset.data["rlnImageName"] = names


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------


def _single_pixel_size(particles) -> float:
    """The particles' pixel size; groups within 1 % of each other count as one.

    A network sees images Fourier-cropped far below the precision of a 1 %
    magnification difference (RELION's optics groups often differ by that much).
    """
    sizes = np.asarray(particles.pixel_size_angstrom, dtype=np.float64)
    median = float(np.median(sizes)) if len(sizes) else float("nan")
    if not np.isfinite(sizes).all() or np.any(np.abs(sizes - median) > 0.01 * median):
        raise ValueError(
            f"{particles.source} has particles at pixel sizes "
            f"{np.unique(np.round(sizes, 4)).tolist()} A (unknown or more than 1 % "
            "apart); skpose handles one pixel size at a time: select an optics group "
            "or rescale the particles first."
        )
    return median


def _has_ctf(particles) -> bool:
    return particles.has_column("rlnDefocusU")


def _network_images(particles, rows=None, images=None) -> np.ndarray:
    """Images as the network sees them: phase-flipped when the STAR has a CTF."""
    if images is None:
        images = load_particle_images(particles, rows)
    if _has_ctf(particles):
        ctf = particles.ctf if rows is None else particles.ctf[rows]
        images = phase_flip(images, ctf)
    return np.asarray(images, dtype=np.float32)


def _estimator(args, volume_path: Path):
    arch = args.architecture
    if arch == "auto":
        arch = "vgg16" if torch.cuda.is_available() else "small"
    small = arch == "small"
    return skpose.OrientationEstimator(
        str(volume_path),
        w=args.w,
        lr=args.lr or (1e-3 if small else 5e-5),
        max_iter=args.max_iter,
        batch_size=args.batch_size or (32 if small else 24),
        image_size=args.box or (32 if small else 128),
        architecture=arch,
        symmetry=args.symmetry,
        device=args.device,
        random_state=args.seed,
        verbose=args.verbose,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fit(args) -> None:
    """``skpose fit``: train (optionally grid-search w and lr) and save the model."""
    particles, quats, pixel = _posed_particles(args.particles, "to train on")
    images = _network_images(particles)
    est = _estimator(args, args.volume)
    if args.grid_w or args.grid_lr:
        from sklearn.model_selection import GridSearchCV

        grid = {"w": args.grid_w or [est.w], "lr": args.grid_lr or [est.lr]}
        search = GridSearchCV(est, grid, cv=args.cv)
        search.fit(images, quats, shifts=particles.origins_px)
        print(f"best {search.best_params_} (score {search.best_score_:.4g})")
        est = search.best_estimator_
    else:
        est.fit(images, quats, particles.origins_px)
    model = {
        "format": _MODEL_FORMAT,
        "estimator": est,
        "box_size": int(images.shape[-1]),
        "pixel_size_angstrom": pixel,
        "map_sha256": _sha256(args.volume),
        "ctf": "phase-flipped" if _has_ctf(particles) else "none",
        "skpose_version": skpose.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out)
    print(f"trained {est.n_iter_} iterations; model saved to {args.out}")


# --------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------


def _load_model(path: Path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    try:
        model = joblib.load(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a skpose model file ({exc}).") from exc
    if not isinstance(model, dict) or model.get("format") != _MODEL_FORMAT:
        raise ValueError(f"{path} is not a skpose model file (from 'skpose fit').")
    return model


def _rescale_box(particles, model: dict) -> int | None:
    """The box to Fourier-rescale particles to, or None when they already match."""
    box, pixel = particles.box_size, _single_pixel_size(particles)
    box = box or model["box_size"]
    m_box, m_pixel = model["box_size"], model["pixel_size_angstrom"]
    if box == m_box and abs(pixel - m_pixel) <= 0.01 * m_pixel:
        return None  # within 1 %: see _single_pixel_size
    target = round(box * pixel / m_pixel)
    if target != m_box:
        raise ValueError(
            f"{particles.source}: particles are {box} px at {pixel:g} A/px, the model "
            f"was trained on {m_box} px at {m_pixel:g} A/px; rescaled to the model's "
            f"pixel size they would be {target} px, not {m_box}. Re-extract the "
            "particles at the model's box and pixel size, or retrain."
        )
    return m_box


def _confidence(est, images, quats, shifts, ctf) -> np.ndarray:
    """NCC of each image with its predicted projection, at the network's size."""
    from skpose.search import pose_score

    size = est.image_size_
    small = fourier_resize(images, size) if images.shape[-1] != size else images
    scale = size / images.shape[-1]
    ctf = None if ctf is None else ctf.resampled(scale)
    return pose_score(est.volume_, small, quats, shifts * scale, ctf=ctf)


def _refining(model: dict, volume: Path | None):
    """The model's estimator set to refine against its map (checked by checksum)."""
    est = model["estimator"]
    path = Path(volume if volume is not None else est.volume)
    if not path.is_file():
        raise ValueError(
            f"--refine needs the map the model was trained with; {path} does not "
            "exist: pass it with --volume MAP."
        )
    if _sha256(path) != model["map_sha256"]:
        raise ValueError(
            f"{path} is not the map the model was trained with (its SHA-256 differs "
            "from the one recorded by skpose fit): pass that map with --volume."
        )
    return est.set_params(volume=str(path), refine=True)


class _PredictSetup(NamedTuple):
    """What every chunk of ``skpose predict`` needs (sent once to each worker)."""

    estimator: object
    target_box: int | None  # rescale the particles to the model's box, or None
    pixel_size_angstrom: float  # the model's
    refine: bool
    precision: str


def _predict_chunk(setup: _PredictSetup, raw, shifts_px, ctf):
    """Poses of one chunk: quaternions, confidence and (with --refine) origins."""
    est, target = setup.estimator, setup.target_box
    factor = 1.0 if target is None else target / raw.shape[-1]
    if target is not None:
        raw = fourier_resize(raw, target)
        if ctf is not None:
            ctf.pixel_size_angstrom = np.full(len(ctf), setup.pixel_size_angstrom)
    shifts_px = shifts_px * factor
    if setup.refine:
        poses = est.predict_poses(raw, shifts_px, ctf, precision=setup.precision)
        return poses.quaternions, poses.score, poses.shifts_px / factor
    q = est.predict(raw, ctf=ctf, precision=setup.precision)
    score = _confidence(est, raw, q, shifts_px, ctf)
    if isinstance(score, torch.Tensor):  # images on a GPU
        score = score.cpu().numpy()
    return q, score, None


def _scheduler(address, timeout_s):
    """A client of the dask scheduler at ``address``, or None without one."""
    if address is None:
        return None
    try:
        return distributed.connect(address, timeout_s=timeout_s)
    except ImportError as exc:  # dask is an optional extra
        raise ValueError(f"--scheduler: {exc}") from exc


def predict(args) -> None:
    """``skpose predict``: stream the particles through the model; write a STAR.

    With ``--refine``, each network pose is refined locally against the model's map
    at the particles' box (``OrientationEstimator(refine=True)``), origins are
    updated, and the confidence is the refined normalised cross-correlation; without
    it, the confidence is that correlation at the network pose, at the network's size.
    Chunks of ``--batch-size`` particles run here or, with ``--scheduler``, on a dask
    cluster's workers (which read the images themselves; see
    :func:`skpose.distributed.map_chunks`): the same chunks, the same poses (up to
    the float rounding of the refinement, which depends on the thread count).
    """
    model = _load_model(args.model)
    est = _refining(model, args.volume) if args.refine else model["estimator"]
    est.set_params(verbose=0)  # one progress bar below, not one per batch
    particles = read_particles(args.particles)
    setup = _PredictSetup(
        est,
        _rescale_box(particles, model),
        model["pixel_size_angstrom"],
        bool(args.refine),
        args.precision,
    )
    n = len(particles)
    quats, conf = np.zeros((n, 4)), np.zeros(n)
    shifts = particles.origins_px.astype(np.float64)
    client = _scheduler(args.scheduler, args.scheduler_timeout)
    chunks = distributed.map_chunks(
        _predict_chunk,
        particles,
        setup,
        client=client,
        chunk_size=args.batch_size,
        device=est.net_.device,
        max_open_files=args.max_open_files,
        progress=None,  # a progress bar on a terminal (none in a file or a pipe)
    )
    try:
        for rows, (q, c, t) in chunks:
            quats[rows], conf[rows] = q, c
            if t is not None:
                shifts[rows] = t
    finally:
        if client is not None:
            client.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _rebase_image_names(particles, particles, out.parent)
    write_particles(
        out,
        particles,
        quaternions=quats,
        shifts_px=shifts if args.refine else None,
        extra_columns={"rlnSkposeConfidence": conf},
    )
    print(f"predicted {n} particles; wrote {out}")


# --------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------


def _image_keys(particles) -> list:
    """Each particle's image as (resolved stack path, index): names may be rebased."""
    files, indices = particles.image_files, particles.image_indices
    return [
        (str(Path(f).resolve()), int(i)) for f, i in zip(files, indices, strict=True)
    ]


def _paired_rows(predicted, reference) -> tuple[np.ndarray, np.ndarray]:
    """Rows of both tables that describe the same particle images."""
    if predicted.has_column("rlnImageName") and reference.has_column("rlnImageName"):
        ref_index = {key: i for i, key in enumerate(_image_keys(reference))}
        pairs = [
            (i, ref_index[key])
            for i, key in enumerate(_image_keys(predicted))
            if key in ref_index
        ]
        if not pairs:
            raise ValueError(
                f"No particle image of {predicted.source} is in {reference.source}."
            )
        rows = np.array(pairs)
        return rows[:, 0], rows[:, 1]
    if len(predicted) != len(reference):
        raise ValueError(
            f"{predicted.source} and {reference.source} have {len(predicted)} and "
            f"{len(reference)} particles and no rlnImageName to pair them."
        )
    rows = np.arange(len(predicted))
    return rows, rows


def evaluate(args) -> None:
    """``skpose evaluate``: angular errors, reprojection RMSE, plots, in a folder."""
    predicted, reference = (
        read_particles(args.predicted),
        read_particles(args.reference),
    )
    for table in (predicted, reference):
        if table.quaternions is None:
            raise ValueError(f"{table.source} has no rlnAngleRot/Tilt/Psi columns.")
    p_rows, r_rows = _paired_rows(predicted, reference)
    q_pred = predicted.quaternions[p_rows]
    q_true = reference.quaternions[r_rows]
    errors = skpose.angular_error(q_true, q_pred, args.symmetry)
    summary = skpose.error_summary(errors)
    summary["symmetry"] = args.symmetry
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    volume = None
    if args.volume:
        volume, _ = read_volume(args.volume)
        shifts = reference.origins_px[r_rows]
        summary["reprojection_rmse"] = skpose.reprojection_rmse(
            volume, q_true, q_pred, shifts
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    np.savetxt(out / "angular_errors_deg.txt", errors, fmt="%.4f")
    _evaluation_plots(out, errors, q_true, q_pred, reference, r_rows, volume, args)
    print(json.dumps(summary, indent=2))


def _evaluation_plots(out, errors, q_true, q_pred, reference, rows, volume, args):
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra
        print("matplotlib is not installed: no plots (pip install skpose[plot])")
        return
    from skpose import plotting

    plotting.plot_error_histogram(
        errors, symmetry=args.symmetry, path=out / "error_histogram.png"
    )
    plotting.plot_error_by_direction(
        q_true, errors, path=out / "error_by_direction.png"
    )
    if volume is None:
        return
    try:
        images = load_particle_images(reference, rows[:6])
    except (FileNotFoundError, ValueError) as exc:
        print(f"no projection panels: {str(exc).splitlines()[0]}")
        return
    plotting.plot_projection_panels(
        images,
        volume,
        q_true[:6],
        q_pred[:6],
        shifts_px=reference.origins_px[rows[:6]],
        n=len(images),
        path=out / "projections.png",
    )


# --------------------------------------------------------------------------------------
# reconstruct
# --------------------------------------------------------------------------------------


def _posed_particles(path, purpose: str):
    """Particles with angles, their quaternions, and their single pixel size."""
    particles = read_particles(path)
    quats = particles.quaternions
    if quats is None:
        raise ValueError(f"{particles.source} has no rlnAngleRot/Tilt/Psi {purpose}.")
    return particles, quats, _single_pixel_size(particles)


def _stream_reconstruct(particles, quats, ctf, symmetry: str, halves) -> dict:
    """Maps ``full`` (and ``half1``, ``half2`` with ``halves``), images streamed."""
    from skpose.imaging.reconstruction import BackProjector

    n, grids = len(particles), {}
    shifts = particles.origins_px
    batches = iter_particle_images(particles, 256)
    total = -(-n // 256)
    for rows, images in tqdm(
        batches, total=total, desc="reconstruct", unit="batch", disable=None
    ):
        if not grids:
            names = ("full",) if halves is None else ("full", "half1", "half2")
            box = images.shape[-1]
            grids = {name: BackProjector(box, symmetry=symmetry) for name in names}
        parts = {"full": np.ones(len(rows), dtype=bool)}
        if halves is not None:
            parts.update(half1=halves[rows] == 1, half2=halves[rows] == 2)
        for name, keep in parts.items():
            if keep.any():
                r = rows[keep]
                c = None if ctf is None else ctf[r]
                grids[name].insert(images[keep], quats[r], shifts[r], c)
    return {name: grid.reconstruct().numpy() for name, grid in grids.items()}


def reconstruct(args) -> None:
    """``skpose reconstruct``: Fourier insertion, optional half maps and FSC.

    Images stream from the stacks in batches into one back-projector per map (the
    full map and, with ``--half-maps``, one per random half): memory is bounded by
    the Fourier grids, whatever the particle count.
    """
    from skpose.imaging import reconstruction

    particles, quats, pixel = _posed_particles(args.particles, "columns")
    n = len(particles)
    ctf = None if args.no_ctf or not _has_ctf(particles) else particles.ctf
    halves = reconstruction.random_halves(n, args.seed) if args.half_maps else None
    maps = _stream_reconstruct(particles, quats, ctf, args.symmetry, halves)
    volume = maps["full"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_volume(args.out, volume, pixel)
    print(f"wrote {args.out}")
    report = {}
    if args.half_maps:
        stem = Path(args.out).with_suffix("")
        write_volume(f"{stem}_half1.mrc", maps["half1"], pixel)
        write_volume(f"{stem}_half2.mrc", maps["half2"], pixel)
        freq, curve = reconstruction.fsc(
            maps["half1"], maps["half2"], pixel_size_angstrom=pixel
        )
        report["half_maps"] = _fsc_entry(reconstruction, freq, curve)
    if args.reference:
        ref, _ = read_volume(args.reference)
        freq, curve = reconstruction.fsc(volume, ref, pixel_size_angstrom=pixel)
        report["reference"] = _fsc_entry(reconstruction, freq, curve)
    if report:
        path = Path(args.out).with_suffix(".fsc.json")
        path.write_text(json.dumps(report, indent=2))
        _fsc_plot(report, path.with_suffix(".png"))
        for name, entry in report.items():
            res = entry["resolution_angstrom"]
            if min(entry["fsc"]) >= 0.143:
                print(f"FSC ({name}) stays above 0.143 up to Nyquist ({res:.2f} A)")
            else:
                print(f"FSC ({name}) crosses 0.143 at {res:.2f} A")


def _fsc_entry(reconstruction, freq, curve) -> dict:
    return {
        "frequency_per_angstrom": np.asarray(freq).tolist(),
        "fsc": np.asarray(curve).tolist(),
        "resolution_angstrom": float(reconstruction.resolution_at(freq, curve)),
    }


def _fsc_plot(report: dict, path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        return
    from skpose import plotting

    first = next(iter(report.values()))
    curves = {name: entry["fsc"] for name, entry in report.items()}
    plotting.plot_fsc(np.asarray(first["frequency_per_angstrom"]), curves, path=path)
