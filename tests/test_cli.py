"""The command line: the paper's workflow from RELION files to RELION files.

CLI tests call ``main([...])`` and read the files it wrote; they never parse stdout.
"""

import json
import os
from pathlib import Path

import joblib
import numpy as np
import pytest
import starfile

import skpose
from skpose.cli import main
from skpose.imaging.preprocess import fourier_pad


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A simulated RELION set (32 px, CTF, shifts, SNR 2) and a small trained model."""
    d = tmp_path_factory.mktemp("cli")
    skpose.write_volume(d / "map.mrc", skpose.phantom_volume(32), 3.0)
    argv = ["simulate", str(d / "map.mrc"), "--n", "300", "--snr", "2", "--ctf"]
    assert (
        main([*argv, "--max-shift", "2", "--seed", "0", "--out", str(d / "sim")]) == 0
    )
    assert (
        main(
            [
                "split",
                str(d / "sim/particles.star"),
                "--fraction",
                "0.2",
                "--out",
                str(d / "split"),
            ]
        )
        == 0
    )
    fit = ["fit", str(d / "split/train.star"), "--volume", str(d / "map.mrc")]
    assert (
        main(
            [
                *fit,
                "--out",
                str(d / "model.joblib"),
                "--max-iter",
                "30",
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    return d


def test_simulate_split_fit_write_what_they_say(workdir):
    sim = skpose.read_particles(workdir / "sim/particles.star")
    assert len(sim) == 300 and sim.version == "3.1"
    train = skpose.read_particles(workdir / "split/train.star")
    rest = skpose.read_particles(workdir / "split/rest.star")
    assert len(train) == 60 and len(rest) == 240
    names = set(train.data.rlnImageName) | set(rest.data.rlnImageName)
    assert len(names) == 300
    # The split's image names resolve from the new folder.
    assert skpose.io.load_particle_images(rest, [0]).shape == (1, 32, 32)
    model = __import__("joblib").load(workdir / "model.joblib")
    assert model["box_size"] == 32 and model["pixel_size_angstrom"] == pytest.approx(
        3.0
    )
    assert model["ctf"] == "phase-flipped" and len(model["map_sha256"]) == 64


def test_predict_keeps_every_column_and_adds_confidence(workdir):
    out = workdir / "predicted.star"
    assert (
        main(
            [
                "predict",
                str(workdir / "split/rest.star"),
                "--model",
                str(workdir / "model.joblib"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    before = starfile.read(workdir / "split/rest.star")
    after = starfile.read(out)
    assert set(after) == set(before)  # the same blocks
    assert after["optics"].equals(before["optics"])
    cols = set(before["particles"].columns)
    assert cols | {"rlnSkposeConfidence"} == set(after["particles"].columns)
    # Image names are rebased to resolve from the output's folder.
    moved = skpose.io.load_particle_images(skpose.read_particles(out), [0, 1])
    expected = skpose.io.load_particle_images(
        skpose.read_particles(workdir / "split/rest.star"), [0, 1]
    )
    np.testing.assert_array_equal(moved, expected)
    for col in cols - {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnImageName"}:
        assert np.array_equal(
            after["particles"][col].to_numpy(), before["particles"][col].to_numpy()
        ), col
    conf = after["particles"]["rlnSkposeConfidence"].to_numpy()
    assert np.all(np.abs(conf) <= 1) and conf.std() > 0


def test_evaluate_writes_summary_and_plots(workdir):
    pred = workdir / "predicted.star"
    if not pred.exists():
        main(
            [
                "predict",
                str(workdir / "split/rest.star"),
                "--model",
                str(workdir / "model.joblib"),
                "--out",
                str(pred),
            ]
        )
    report = workdir / "report"
    args = ["evaluate", str(pred), str(workdir / "split/rest.star")]
    assert (
        main([*args, "--volume", str(workdir / "map.mrc"), "--out", str(report)]) == 0
    )
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n"] == 240 and 0 <= summary["median_deg"] <= 180
    assert summary["reprojection_rmse"] > 0
    errors = np.loadtxt(report / "angular_errors_deg.txt")
    assert errors.shape == (240,)
    for png in ("error_histogram.png", "error_by_direction.png", "projections.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Against itself: zero error.
    self_report = workdir / "self"
    assert main(["evaluate", str(pred), str(pred), "--out", str(self_report)]) == 0
    assert json.loads((self_report / "summary.json").read_text())["median_deg"] < 1e-3


def test_six_optics_groups_keep_every_column(shared_data, tmp_path):
    """RELION 3.1 input with 6 optics groups (1.24 and 1.25 A/px, box 196)."""
    source = shared_data / "star/relion31.6opticsgroups.star"
    blocks = starfile.read(source)
    n = len(blocks["particles"])
    small = skpose.phantom_volume(49)
    sim = skpose.simulate_particles(small, n, random_state=0)
    skpose.write_images(tmp_path / "stack.mrcs", fourier_pad(sim.images, 196), 1.24)
    blocks["particles"]["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(n)]
    starfile.write(blocks, tmp_path / "in.star", overwrite=True)
    volume = fourier_pad(small, 196, ndim=3)
    skpose.write_volume(tmp_path / "map.mrc", volume, 1.24)
    train = skpose.simulate_particles(small, 16, random_state=1)
    est = skpose.OrientationEstimator(
        tmp_path / "map.mrc",
        architecture="small",
        image_size=32,
        max_iter=2,
        batch_size=8,
        random_state=0,
        device="cpu",
    )
    ctf = skpose.read_particles(tmp_path / "in.star").ctf[np.arange(16)]
    est.fit(fourier_pad(train.images, 196), train.quaternions, ctf=ctf)
    model = {
        "format": "skpose-model-1",
        "estimator": est,
        "box_size": 196,
        "pixel_size_angstrom": 1.24,
        "map_sha256": "",
        "ctf": "phase-flipped",
        "skpose_version": skpose.__version__,
    }
    __import__("joblib").dump(model, tmp_path / "model.joblib")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "in.star"),
                "--model",
                str(tmp_path / "model.joblib"),
                "--out",
                str(tmp_path / "out.star"),
            ]
        )
        == 0
    )
    before, after = (
        starfile.read(tmp_path / "in.star"),
        starfile.read(tmp_path / "out.star"),
    )
    assert after["optics"].equals(before["optics"]) and len(after["optics"]) == 6
    assert list(after["particles"].columns) == [
        *before["particles"].columns,
        "rlnSkposeConfidence",
    ]
    same = [
        "rlnOpticsGroup",
        "rlnImageName",
        "rlnDefocusU",
        "rlnOriginXAngst",
        "rlnRandomSubset",
    ]
    for col in same:
        assert np.array_equal(
            after["particles"][col].to_numpy(), before["particles"][col].to_numpy()
        )


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_predict_5000_particles_in_500_stacks_bounded_open_files(
    workdir, tmp_path, monkeypatch
):
    """A STAR over 500 stacks never holds more than a bounded number open (< 64)."""
    sim = skpose.simulate_particles(skpose.phantom_volume(32), 10, random_state=2)
    names = []
    for f in range(500):
        skpose.write_images(tmp_path / f"s{f:03d}.mrcs", sim.images, 3.0)
        names += [f"{i + 1:06d}@s{f:03d}.mrcs" for i in range(10)]
    blocks = starfile.read(workdir / "sim/particles.star")
    particles = blocks["particles"].iloc[np.arange(5000) % 300].reset_index(drop=True)
    particles["rlnImageName"] = names
    starfile.write(
        {"optics": blocks["optics"], "particles": particles},
        tmp_path / "big.star",
        overwrite=True,
    )
    peak = {"open": 0}
    original = skpose.io.ParticleImageLoader.load

    def watched(self, *args, **kwargs):
        peak["open"] = max(peak["open"], _open_files())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(skpose.io.ParticleImageLoader, "load", watched)
    baseline = _open_files()
    argv = [
        "predict",
        str(tmp_path / "big.star"),
        "--model",
        str(workdir / "model.joblib"),
    ]
    assert (
        main([*argv, "--out", str(tmp_path / "big_out.star"), "--batch-size", "500"])
        == 0
    )
    assert peak["open"] - baseline < 64
    assert len(skpose.read_particles(tmp_path / "big_out.star")) == 5000


@pytest.mark.parametrize(
    "make, argv_tail, match",
    [
        ("no_image_name", [], "rlnImageName"),
        ("index_past_end", [], "past the end|index"),
        ("missing_stack", [], "does not exist|not found|No such"),
        ("undefined_group", [], "optics group"),
    ],
)
def test_bad_files_one_line_error(workdir, tmp_path, capsys, make, argv_tail, match):
    blocks = starfile.read(workdir / "split/rest.star")
    parts = blocks["particles"].copy()
    names = [str(workdir / "sim" / n.split("@")[1]) for n in parts.rlnImageName]
    parts["rlnImageName"] = [
        f"{n.split('@')[0]}@{p}" for n, p in zip(parts.rlnImageName, names, strict=True)
    ]
    if make == "no_image_name":
        parts = parts.drop(columns="rlnImageName")
    elif make == "index_past_end":
        parts.loc[0, "rlnImageName"] = f"000999@{names[0]}"
    elif make == "missing_stack":
        parts.loc[0, "rlnImageName"] = f"000001@{tmp_path / 'gone.mrcs'}"
    elif make == "undefined_group":
        parts.loc[0, "rlnOpticsGroup"] = 9
    starfile.write(
        {"optics": blocks["optics"], "particles": parts},
        tmp_path / "bad.star",
        overwrite=True,
    )
    code = main(
        [
            "predict",
            str(tmp_path / "bad.star"),
            "--model",
            str(workdir / "model.joblib"),
            "--out",
            str(tmp_path / "o.star"),
            *argv_tail,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.startswith("skpose: error: ")
        and err.count("\n") == 1
        and "Traceback" not in err
    )
    assert __import__("re").search(match, err), err


def test_model_of_another_box_is_refused(workdir, tmp_path, capsys):
    sim = skpose.simulate_particles(skpose.phantom_volume(48), 4, random_state=0)
    star = sim.to_relion(tmp_path / "p48.star")
    code = main(
        [
            "predict",
            str(star),
            "--model",
            str(workdir / "model.joblib"),
            "--out",
            str(tmp_path / "o.star"),
        ]
    )
    assert code == 2
    assert "model was trained on 32 px" in capsys.readouterr().err


def test_map_box_differs_from_particles(workdir, tmp_path, capsys):
    skpose.write_volume(tmp_path / "map24.mrc", skpose.phantom_volume(24), 3.0)
    code = main(
        [
            "fit",
            str(workdir / "split/train.star"),
            "--volume",
            str(tmp_path / "map24.mrc"),
            "--out",
            str(tmp_path / "m.joblib"),
            "--max-iter",
            "1",
        ]
    )
    assert code == 2
    assert (
        "'volume' box (24 px) differs from the images' box (32 px)"
        in capsys.readouterr().err
    )


def test_help_has_examples(capsys):
    for command in ("simulate", "split", "fit", "predict", "evaluate", "reconstruct"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"example:\n  skpose {command}" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "skpose", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0 and "simulate" in done.stdout


def test_reconstruct_writes_map_half_maps_and_fsc(workdir):
    star = workdir / "split/rest.star"
    out = workdir / "recon/map.mrc"
    argv = ["reconstruct", str(star), "--out", str(out), "--half-maps"]
    assert main([*argv, "--reference", str(workdir / "map.mrc")]) == 0
    volume, pixel = skpose.read_volume(out)
    assert volume.shape == (32, 32, 32) and pixel == pytest.approx(3.0)
    for half in ("map_half1.mrc", "map_half2.mrc"):
        assert skpose.read_volume(out.parent / half)[0].shape == (32, 32, 32)
    report = json.loads(out.with_suffix(".fsc.json").read_text())
    assert set(report) == {"half_maps", "reference"}
    assert 0 < report["reference"]["resolution_angstrom"] < 30
    assert out.with_suffix(".fsc.png").read_bytes()[:4] == b"\x89PNG"


def test_streamed_reconstruction_equals_the_in_memory_one(workdir):
    # The command streams batches into back-projectors; the library reconstructs
    # from images in memory. Same maps, same random halves.
    star = workdir / "split/rest.star"
    out = workdir / "recon_stream/map.mrc"
    argv = ["reconstruct", str(star), "--out", str(out), "--half-maps"]
    assert main([*argv, "--symmetry", "C2", "--seed", "3"]) == 0
    particles = skpose.read_particles(star)
    images = skpose.io.load_particle_images(particles)
    common = {"shifts_px": particles.origins_px, "ctf": particles.ctf, "symmetry": "C2"}
    full = skpose.imaging.reconstruction.reconstruct(
        images, particles.quaternions, **common
    )
    halves = skpose.imaging.reconstruction.half_maps(
        images, particles.quaternions, random_state=3, **common
    )
    names = ("map", "map_half1", "map_half2")
    for name, expected in zip(names, (full, *halves), strict=True):
        got = skpose.read_volume(out.parent / f"{name}.mrc")[0]
        np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())


def test_real_trpv1_predict_evaluate_reconstruct(shared_data, tmp_path):
    """10 real particles: their STAR names a stack that is not shipped, so point it
    at the stack beside it (read in place)."""
    base = shared_data / "real/trpv1"
    blocks = starfile.read(base / "trpv1_small_stack.star")
    stack = base / "trpv1_small_stack.mrcs"
    blocks["particles"]["rlnImageName"] = [f"{i + 1:06d}@{stack}" for i in range(10)]
    starfile.write(blocks, tmp_path / "trpv1.star", overwrite=True)
    _, pixel = skpose.read_volume(base / "trpv1_volume.mrc")
    particles = skpose.read_particles(tmp_path / "trpv1.star")
    images = skpose.io.load_particle_images(particles)
    est = skpose.OrientationEstimator(
        base / "trpv1_volume.mrc",
        architecture="small",
        image_size=48,
        max_iter=2,
        batch_size=5,
        random_state=0,
        device="cpu",
    )
    est.fit(images, particles.quaternions, particles.origins_px, ctf=particles.ctf)
    model = {
        "format": "skpose-model-1",
        "estimator": est,
        "box_size": 48,
        "pixel_size_angstrom": pixel,
        "map_sha256": "",
        "ctf": "phase-flipped",
        "skpose_version": skpose.__version__,
    }
    __import__("joblib").dump(model, tmp_path / "m.joblib")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "trpv1.star"),
                "--model",
                str(tmp_path / "m.joblib"),
                "--out",
                str(tmp_path / "p.star"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "p.star"),
                str(tmp_path / "trpv1.star"),
                "--symmetry",
                "C4",
                "--volume",
                str(base / "trpv1_volume.mrc"),
                "--out",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "rep/summary.json").read_text())["n"] == 10
    assert (
        main(
            [
                "reconstruct",
                str(tmp_path / "trpv1.star"),
                "--out",
                str(tmp_path / "r.mrc"),
                "--symmetry",
                "C4",
                "--reference",
                str(base / "trpv1_volume.mrc"),
            ]
        )
        == 0
    )
    assert skpose.read_volume(tmp_path / "r.mrc")[0].shape == (48, 48, 48)


def test_predict_with_refinement_updates_origins(workdir):
    out = workdir / "refined" / "predicted.star"
    argv = [
        "predict",
        str(workdir / "split/rest.star"),
        "--model",
        str(workdir / "model.joblib"),
    ]
    assert main([*argv, "--out", str(out), "--refine"]) == 0
    before = skpose.read_particles(workdir / "split/rest.star")
    after = skpose.read_particles(out)
    assert not np.allclose(after.origins_px, before.origins_px)
    assert np.abs(after.origins_px).max() <= 2 + 4 + 1e-3  # simulated 2 px + window
    conf = after.data["rlnSkposeConfidence"].to_numpy()
    assert np.all(np.abs(conf) <= 1) and conf.mean() > 0


def test_predict_refine_needs_the_models_map(workdir, capsys):
    argv = [
        "predict",
        str(workdir / "split/rest.star"),
        "--model",
        str(workdir / "model.joblib"),
        "--out",
        str(workdir / "refined2/predicted.star"),
        "--refine",
    ]
    assert main([*argv, "--volume", str(workdir / "missing.mrc")]) == 2
    err = capsys.readouterr().err
    assert "missing.mrc does not exist: pass it with --volume" in err
    other = workdir / "other.mrc"
    skpose.write_volume(other, skpose.phantom_volume(32) * 2, 3.0)
    assert main([*argv, "--volume", str(other)]) == 2
    err = capsys.readouterr().err
    assert "other.mrc is not the map the model was trained with" in err
    assert err.count("\n") == 1
    assert main([*argv, "--volume", str(workdir / "map.mrc")]) == 0


@pytest.fixture(scope="module")
def no_ctf(workdir):
    """Particles without CTF (32 px, 3 A/px, like the workdir's) and a model of them."""
    d = workdir / "no_ctf"
    argv = ["simulate", str(workdir / "map.mrc"), "--n", "40", "--snr", "2"]
    assert main([*argv, "--seed", "1", "--out", str(d)]) == 0
    fit = ["fit", str(d / "particles.star"), "--volume", str(workdir / "map.mrc")]
    out = ["--out", str(d / "model.joblib"), "--max-iter", "2", "--verbose", "0"]
    assert main([*fit, *out]) == 0
    return d


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("skpose: error: ") and err.count("\n") == 1, err
    return err


def test_ctf_trained_model_refuses_particles_without_ctf(workdir, no_ctf, capsys):
    model = __import__("joblib").load(no_ctf / "model.joblib")
    assert model["ctf"] == "none" and not model["estimator"].trained_with_ctf_
    assert __import__("joblib").load(workdir / "model.joblib")["ctf"] == "phase-flipped"
    argv = ["predict", str(no_ctf / "particles.star"), "--out", str(no_ctf / "p.star")]
    code = main([*argv, "--model", str(workdir / "model.joblib")])
    err = _one_line_error(capsys, code)
    assert "model.joblib was trained on particles with a CTF, but" in err
    assert "particles.star' has no CTF parameters" in err
    assert not (no_ctf / "p.star").exists()
    # Its own model predicts them.
    assert main([*argv, "--model", str(no_ctf / "model.joblib")]) == 0


def test_model_trained_without_ctf_refuses_ctf_particles(workdir, no_ctf, capsys):
    rest = workdir / "split/rest.star"
    argv = ["predict", str(rest), "--model", str(no_ctf / "model.joblib")]
    code = main([*argv, "--out", str(no_ctf / "q.star")])
    err = _one_line_error(capsys, code)
    assert "model.joblib was trained on particles without a CTF, but" in err
    assert "rest.star' has CTF parameters" in err
    code = main([*argv, "--out", str(no_ctf / "q.star"), "--refine"])
    assert "trained on particles without a CTF" in _one_line_error(capsys, code)


def test_grid_search_with_ctf_splits_it_with_the_images(workdir):
    train = workdir / "split/train.star"
    fit = ["fit", str(train), "--volume", str(workdir / "map.mrc")]
    out = workdir / "grid.joblib"
    argv = [*fit, "--out", str(out), "--max-iter", "2", "--verbose", "0"]
    assert main([*argv, "--grid-w", "0.4,0.8", "--cv", "2"]) == 0
    model = __import__("joblib").load(out)
    assert model["ctf"] == "phase-flipped" and model["estimator"].trained_with_ctf_
    assert model["estimator"].w in (0.4, 0.8)


def test_confidence_means_the_same_with_and_without_refine(tmp_path):
    """64 px particles with a CTF, a 32 px network: the column is the NCC at the
    written pose at the particles' box (pose_score with their CTF), refined or not."""
    skpose.write_volume(tmp_path / "map.mrc", skpose.phantom_volume(64), 3.0)
    sim = ["simulate", str(tmp_path / "map.mrc"), "--n", "24", "--snr", "2", "--ctf"]
    assert main([*sim, "--max-shift", "2", "--seed", "4", "--out", str(tmp_path)]) == 0
    star = tmp_path / "particles.star"
    fit = ["fit", str(star), "--volume", str(tmp_path / "map.mrc"), "--box", "32"]
    model = tmp_path / "model.joblib"
    options = ["--architecture", "small", "--max-iter", "2", "--device", "cpu"]
    assert main([*fit, *options, "--out", str(model), "--verbose", "0"]) == 0
    assert __import__("joblib").load(model)["estimator"].image_size_ == 32
    predict = ["predict", str(star), "--model", str(model), "--out"]
    assert main([*predict, str(tmp_path / "plain.star")]) == 0
    assert main([*predict, str(tmp_path / "refined.star"), "--refine"]) == 0
    volume, _ = skpose.read_volume(tmp_path / "map.mrc")
    images = skpose.io.load_particle_images(skpose.read_particles(star))
    columns = {}
    for name in ("plain", "refined"):
        written = skpose.read_particles(tmp_path / f"{name}.star")
        conf = written.data["rlnSkposeConfidence"].to_numpy()
        expected = skpose.pose_score(
            volume,
            images,
            written.quaternions,
            written.origins_px,
            ctf=written.ctf,
        )
        np.testing.assert_allclose(conf, expected, rtol=0, atol=1e-5)
        columns[name] = conf
    assert np.median(columns["refined"]) > np.median(columns["plain"])


@pytest.mark.slow
def test_paper_workflow_end_to_end(tmp_path):
    """simulate -> split 20 % -> fit -> predict --refine -> evaluate -> reconstruct.

    CTF and shifts, 32 px, CPU. The reconstruction from predicted poses is compared
    (FSC) with the one from the true poses, and must reach a finer resolution than a
    reconstruction from random poses; the confidence ranks wrong poses low.
    """

    def run(*argv):
        assert main([str(a) for a in argv]) == 0, argv

    skpose.write_volume(tmp_path / "map.mrc", skpose.phantom_volume(32), 3.0)
    sim = tmp_path / "sim"
    run("simulate", tmp_path / "map.mrc", "--n", 2000, "--ctf", "--max-shift", 2,
        "--seed", 0, "--out", sim)  # fmt: skip
    run("split", sim / "particles.star", "--fraction", 0.2, "--seed", 0, "--out", sim)
    run("fit", sim / "train.star", "--volume", tmp_path / "map.mrc", "--out",
        tmp_path / "model.joblib", "--architecture", "small", "--box", 32,
        "--max-iter", 1000, "--device", "cpu", "--verbose", 0)  # fmt: skip
    run("predict", sim / "rest.star", "--model", tmp_path / "model.joblib", "--out",
        sim / "predicted.star", "--refine")  # fmt: skip
    run("evaluate", sim / "predicted.star", sim / "rest.star", "--volume",
        tmp_path / "map.mrc", "--out", tmp_path / "report")  # fmt: skip
    rest = skpose.read_particles(sim / "rest.star")
    random = skpose.random_quaternions(len(rest), 1).numpy()
    skpose.write_particles(sim / "random.star", rest, quaternions=random)
    run("reconstruct", sim / "rest.star", "--out", tmp_path / "true.mrc")
    for name in ("predicted", "random"):
        run("reconstruct", sim / f"{name}.star", "--out", tmp_path / f"{name}.mrc",
            "--reference", tmp_path / "true.mrc", "--half-maps")  # fmt: skip

    summary = json.loads((tmp_path / "report/summary.json").read_text())
    assert summary["n"] == 1600
    fsc = {
        name: json.loads((tmp_path / f"{name}.fsc.json").read_text())
        for name in ("predicted", "random")
    }
    resolution = {
        name: entry["reference"]["resolution_angstrom"] for name, entry in fsc.items()
    }
    print(f"\nend to end: {summary}\nFSC 0.143 vs true-pose map: {resolution}")
    assert resolution["predicted"] < resolution["random"]
    assert summary["pct_below_10"] > 10  # random poses: 0.03 %
    # The confidence column ranks good poses above wrong ones.
    predicted = skpose.read_particles(sim / "predicted.star")
    errors = skpose.angular_error(rest.quaternions, predicted.quaternions)
    conf = predicted.data["rlnSkposeConfidence"].to_numpy()
    good, wrong = errors < 5, errors > 30
    assert good.sum() >= 20 and wrong.sum() >= 20
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(good[good | wrong], conf[good | wrong]) > 0.9
    # The plots a user looks at.
    for png in ("error_histogram", "error_by_direction", "projections"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 1000
    assert (tmp_path / "predicted.fsc.png").stat().st_size > 1000


def test_fit_recentre_trains_and_predicts_on_recentred_particles(workdir):
    model = workdir / "recentred.joblib"
    train, volume = workdir / "split/train.star", workdir / "map.mrc"
    fit = ["fit", str(train), "--volume", str(volume)]
    argv = [*fit, "--out", str(model), "--max-iter", "10", "--verbose", "0"]
    assert main([*argv, "--recentre"]) == 0
    est = joblib.load(model)["estimator"]
    assert est.recentre and est.centring_reference_ is not None
    out = workdir / "recentred" / "predicted.star"
    rest = str(workdir / "split/rest.star")
    assert main(["predict", rest, "--model", str(model), "--out", str(out)]) == 0
    assert len(skpose.read_particles(out)) == len(skpose.read_particles(rest))


def test_predict_hypotheses_refines_the_best_of_the_turned_answers(workdir, capsys):
    model, out = workdir / "model.joblib", workdir / "hypotheses" / "predicted.star"
    rest = str(workdir / "split/rest.star")
    argv = ["predict", rest, "--model", str(model), "--out", str(out)]
    assert main([*argv, "--refine", "--hypotheses", "4"]) == 0
    assert len(skpose.read_particles(out)) == len(skpose.read_particles(rest))
    # The saved model keeps its own setting.
    assert joblib.load(model)["estimator"].hypotheses == 1
    capsys.readouterr()
    assert main([*argv, "--hypotheses", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--hypotheses" in err and "--refine" in err and "\n" not in err
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--refine", "--hypotheses", "3"])
    assert exit_.value.code == 2
