"""What each ``skpose`` subcommand does (``skpose.cli`` parses, this module acts).

CTF handling (``fit`` and ``predict``): the STAR file's CTF goes to the estimator
(``ctf=``), which owns it: its network sees the particles **phase-flipped**, so that
every frequency has the first lobe's contrast, while the reprojection loss stays the
paper's simplified projection (no CTF), which phase-flipped images resemble up to an
amplitude envelope. Why: the network then sees the same contrast for every defocus,
and the loss needs no per-image CTF inside the training loop. The model records
whether it was trained with a CTF, and ``predict`` refuses particles of the other kind.
The confidence written by ``predict`` is :func:`skpose.search.pose_score`: the
normalised cross-correlation of each image with the CTF-modulated projection at the
written pose, at the particles' box, with or without ``--refine``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import joblib
import numpy as np
import torch
from tqdm.auto import tqdm

import skpose
from skpose import distributed
from skpose.cli import _safety
from skpose.imaging.preprocess import fourier_resize
from skpose.io import (
    iter_particle_images,
    load_particle_images,
    read_particles,
    read_volume,
    require_unique_images,
    write_particles,
    write_volume,
)
from skpose.io._atomic import atomic_path, write_text

_MODEL_FORMAT = "skpose-model-1"
_MODEL_KEYS = ("estimator", "box_size", "pixel_size_angstrom", "map_sha256", "ctf")


# --------------------------------------------------------------------------------------
# simulate / split
# --------------------------------------------------------------------------------------


def simulate(args) -> None:
    """``skpose simulate``: a RELION 3.1 STAR + MRCS from a map."""
    volume, voxel = read_volume(args.map)
    pixel = voxel if args.pixel_size is None else args.pixel_size
    if not pixel > 0:
        raise ValueError(
            f"MRC file '{args.map}' gives no voxel size (0 in its header): pass "
            "--pixel-size."
        )
    sim = skpose.simulate_particles(
        volume,
        args.n,
        snr=args.snr,
        ctf=bool(args.ctf),
        max_shift=args.max_shift,
        poses=args.poses,
        pixel_size_angstrom=pixel,
        random_state=args.seed,
        frequencies=args.frequencies,
    )
    star = sim.to_relion(Path(args.out) / "particles.star")
    print(f"wrote {len(sim)} particles to {star}")


def split(args) -> None:
    """``skpose split``: train.star (a random fraction) and rest.star."""
    if not 0 < args.fraction < 1:
        raise ValueError(f"--fraction must be in (0, 1), got {args.fraction}.")
    particles = _read(args.particles, "splitting", unique=True)
    n = len(particles)
    if n < 2:
        raise ValueError(f"{particles.source} has 1 particle: nothing to split.")
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


def _read(path, purpose: str, *, unique: bool = False):
    """Particles for ``purpose``: at least one, and one row per image if ``unique``."""
    particles = read_particles(path)
    if len(particles) == 0:
        raise ValueError(
            f"{particles.source} has no particles (its particle table has 0 rows): "
            f"nothing for {purpose}."
        )
    if unique:
        require_unique_images(particles, purpose=purpose)
    return particles


def _refuse_blank(particles, rows, images) -> None:
    """Refuse constant images (every pixel equal): they carry no orientation."""
    flat = np.asarray(images).reshape(len(images), -1)
    blank = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    if len(blank):
        row = int(np.asarray(rows)[blank[0]])
        raise _blank_error(particles, row, float(flat[blank[0], 0]), len(blank))


def _blank_error(particles, row: int, value: float, count: int) -> ValueError:
    name = particles.data["rlnImageName"].iloc[row]
    return ValueError(
        f"Row {row} ({name!r}) of {particles.source} is a constant image (every "
        f"pixel {value:g}; {count} such image(s) in this batch): a blank or unwritten "
        "particle; remove it."
    )


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


def _estimator(args, volume_path: Path):
    arch = args.architecture
    if arch == "auto":
        arch = "vgg16" if torch.cuda.is_available() else "small"
    small = arch == "small"

    def given(value, default):  # not "value or default": 0 is refused, not replaced
        return default if value is None else value

    return skpose.OrientationEstimator(
        str(volume_path),
        w=args.w,
        lr=given(args.lr, 1e-3 if small else 5e-5),
        max_iter=args.max_iter,
        batch_size=given(args.batch_size, 32 if small else 24),
        image_size=given(args.box, 32 if small else 128),
        architecture=arch,
        symmetry=args.symmetry,
        device=args.device,
        random_state=args.seed,
        verbose=args.verbose,
        simulate_from_map=getattr(args, "simulate_from_map", 0.0),
        fallback=getattr(args, "fallback", None),
        recentre=getattr(args, "recentre", False),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_model(args, est, images, particles, pixel, interrupted=None) -> None:
    """Write the model file atomically; ``interrupted`` marks a partial model."""
    model = {
        "format": _MODEL_FORMAT,
        "estimator": est,
        "box_size": int(images.shape[-1]),
        "pixel_size_angstrom": pixel,
        "map_sha256": _sha256(args.volume),
        "ctf": "phase-flipped" if est.trained_with_ctf_ else "none",
        "skpose_version": skpose.__version__,
    }
    if interrupted:
        model["interrupted"] = interrupted
    with atomic_path(args.out) as tmp:
        joblib.dump(model, tmp)


def fit(args) -> None:
    """``skpose fit``: train (optionally grid-search w and lr) and save the model."""
    particles, quats, pixel = _posed_particles(args.particles, "training", unique=True)
    images = load_particle_images(particles)
    _refuse_blank(particles, np.arange(len(particles)), images)
    data = {"shifts_px": particles.origins_px}
    if _has_ctf(particles):
        data["ctf"] = particles.ctf  # the estimator phase-flips the images
    est = _estimator(args, args.volume).set_params(**_safety.checkpoint_params(args))
    if args.grid_w or args.grid_lr:
        est = _grid_search(args, est, images, quats, data)
    else:
        save = functools.partial(_save_model, args, est, images, particles, pixel)
        with _safety.saving_on_interrupt(args, est, save):
            est.fit(images, quats, **data)
    _save_model(args, est, images, particles, pixel)
    print(f"trained {est.n_iter_} iterations; model saved to {args.out}")


def _grid_search(args, est, images, quats, data: dict):
    """The best estimator of a GridSearchCV over w and lr.

    Metadata routing splits the origins and the CTF with the images, for ``fit`` and
    for ``score`` alike.
    """
    from skpose.estimators._selection import grid_search

    grid = {"w": args.grid_w or [est.w], "lr": args.grid_lr or [est.lr]}
    search = grid_search(est, grid, images, quats, cv=args.cv, **data)
    print(f"best {search.best_params_} (score {search.best_score_:.4g})")
    return search.best_estimator_


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
    _safety.warn_if_partial(model, path)
    missing = sorted(set(_MODEL_KEYS) - set(model))
    if missing:
        raise ValueError(
            f"{path} is an incomplete skpose model file: it lacks {missing}; "
            "write it again with skpose fit."
        )
    est = model["estimator"]
    if not isinstance(est, skpose.OrientationEstimator) or not hasattr(est, "net_"):
        raise ValueError(
            f"{path}: its 'estimator' is a {type(est).__name__}, not a fitted "
            "OrientationEstimator; write it again with skpose fit."
        )
    if getattr(est, "trained_with_ctf_", None) is None:  # saved before it was recorded
        est.trained_with_ctf_ = model.get("ctf") == "phase-flipped"
    return model


def _check_ctf_like_model(particles, model_path: Path, est) -> None:
    """Refuse particles with a CTF for a model trained without one, and the reverse."""
    has_ctf = _has_ctf(particles)
    if est.trained_with_ctf_ and not has_ctf:
        raise ValueError(
            f"{model_path} was trained on particles with a CTF, but "
            f"{particles.source} has no CTF parameters (rlnDefocusU ...): predict "
            "particles with their CTF, or train a model on particles without one."
        )
    if has_ctf and not est.trained_with_ctf_:
        raise ValueError(
            f"{model_path} was trained on particles without a CTF, but "
            f"{particles.source} has CTF parameters (rlnDefocusU ...): train the "
            "model on particles with their CTF."
        )


def _rescale_box(particles, model: dict) -> int | None:
    """The box to Fourier-rescale particles to, or None when they already match.

    The particles' box is their first stack's (whose images the loader checks
    against ``rlnImageSize``).
    """
    box = load_particle_images(particles, [0]).shape[-1]
    pixel = _single_pixel_size(particles)
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
    """Poses of one chunk: quaternions, confidence, origins, blank images.

    The confidence is :func:`skpose.search.pose_score` at the particles' box, the
    same with and without refinement. The last item is None, or for a chunk with
    constant images ``(index in the chunk of the first, its value, their count)``:
    the caller refuses it, naming its row.
    """
    flat = np.asarray(raw).reshape(len(raw), -1)
    blanks = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    if len(blanks):
        first = int(blanks[0])
        return None, None, None, (first, float(flat[first, 0]), len(blanks))
    est, target = setup.estimator, setup.target_box
    factor = 1.0 if target is None else target / raw.shape[-1]
    if target is not None:
        raw = fourier_resize(raw, target)
        if ctf is not None:
            ctf.pixel_size_angstrom = np.full(len(ctf), setup.pixel_size_angstrom)
    poses = est.predict_poses(
        raw, shifts_px=shifts_px * factor, ctf=ctf, precision=setup.precision
    )
    return poses.quaternions, poses.score, poses.shifts_px / factor, None


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
    at the particles' box (``OrientationEstimator(refine=True)``) and origins are
    updated. The confidence is the same either way: the normalised cross-correlation
    of each image with the (CTF-modulated) projection at its written pose, at the
    particles' box (:func:`skpose.search.pose_score`).
    Chunks of ``--batch-size`` particles run here or, with ``--scheduler``, on a dask
    cluster's workers (which read the images themselves; see
    :func:`skpose.distributed.map_chunks`): the same chunks, the same poses (up to
    the float rounding of the refinement, which depends on the thread count).
    """
    model = _load_model(args.model)
    _safety.check_not_inputs(args, {"map": args.volume or model["estimator"].volume})
    if args.hypotheses != 1 and not args.refine:
        raise ValueError(
            "--hypotheses scores the network's answers against the map: add --refine."
        )
    est = _refining(model, args.volume) if args.refine else model["estimator"]
    if args.refine:
        est.set_params(hypotheses=args.hypotheses)
    est.set_params(verbose=0)  # one progress bar below, not one per batch
    particles = _read(args.particles, "predicting")
    target = _rescale_box(particles, model)
    _check_ctf_like_model(particles, args.model, est)
    n = len(particles)
    quats, conf = np.zeros((n, 4)), np.zeros(n)
    shifts = particles.origins_px.astype(np.float64)
    setup = _PredictSetup(
        est, target, model["pixel_size_angstrom"], bool(args.refine), args.precision
    )
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
        for rows, (q, c, t, blank) in chunks:
            if blank is not None:  # a constant image: refuse, naming its row
                raise _blank_error(particles, int(rows[blank[0]]), *blank[1:])
            quats[rows], conf[rows], shifts[rows] = q, c, t
    finally:
        if client is not None:
            client.close()
    out = write_poses(args.out, particles, quats, shifts, conf)
    print(f"predicted {n} particles; wrote {out}")


def write_poses(out, particles, quats, shifts, confidence) -> Path:
    """Write poses (origins unless None) and ``rlnSkposeConfidence`` into a STAR.

    Every other column and the optics table are kept; image names are rebased so
    that they resolve from the output's folder.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _rebase_image_names(particles, particles, out.parent)
    write_particles(
        out,
        particles,
        quaternions=quats,
        shifts_px=shifts,
        extra_columns={"rlnSkposeConfidence": confidence},
    )
    return out


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
        _read(args.predicted, "evaluation", unique=True),
        _read(args.reference, "evaluation", unique=True),
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
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    with atomic_path(out / "angular_errors_deg.txt") as tmp:
        np.savetxt(tmp, errors, fmt="%.4f")
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


def _posed_particles(path, purpose: str, *, unique: bool = False):
    """Particles with angles, their quaternions, and their single pixel size."""
    particles = _read(path, purpose, unique=unique)
    quats = particles.quaternions
    if quats is None:
        raise ValueError(
            f"{particles.source} has no rlnAngleRot/Tilt/Psi columns (needed for "
            f"{purpose})."
        )
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

    particles, quats, pixel = _posed_particles(args.particles, "reconstruction")
    n = len(particles)
    ctf = None if args.no_ctf or not _has_ctf(particles) else particles.ctf
    halves = reconstruction.random_halves(n, args.seed) if args.half_maps else None
    if halves is not None and not ((halves == 1).any() and (halves == 2).any()):
        raise ValueError(
            f"--half-maps needs particles in both random halves; {particles.source} "
            f"has {n} particle(s)."
        )
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
        write_text(path, json.dumps(report, indent=2))
        _fsc_plot(report, path.with_suffix(".png"))
        for name, entry in report.items():
            res = entry["resolution_angstrom"]
            if res is None:
                print(
                    f"FSC ({name}) is below 0.143 from the first shell on: the maps "
                    "do not agree at any resolution"
                )
            elif min(entry["fsc"]) >= 0.143:
                print(f"FSC ({name}) stays above 0.143 up to Nyquist ({res:.2f} A)")
            else:
                print(f"FSC ({name}) crosses 0.143 at {res:.2f} A")


def _fsc_entry(reconstruction, freq, curve) -> dict:
    """The FSC curve and its 0.143 resolution (None, JSON null, where there is none)."""
    res = float(reconstruction.resolution_at(freq, curve))
    return {
        "frequency_per_angstrom": np.asarray(freq).tolist(),
        "fsc": np.asarray(curve).tolist(),
        "resolution_angstrom": res if math.isfinite(res) else None,
    }


def _fsc_plot(report: dict, path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        return
    from skpose import plotting

    first = next(iter(report.values()))
    curves = {name: entry["fsc"] for name, entry in report.items()}
    plotting.plot_fsc(np.asarray(first["frequency_per_angstrom"]), curves, path=path)
