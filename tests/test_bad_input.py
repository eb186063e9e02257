"""Never pass a wrong answer silently: every bad input is refused with a clear error.

Each case names what came in and where (argument, file, line, row, column). CLI errors
are one line, ``skpose ...: error: ...``, with exit status 2 and no traceback; CLI
tests call ``main([...])`` and read the files it wrote.
"""

from __future__ import annotations

import json
import re

import joblib
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

import skpose
from skpose.cli import _commands, build_parser, main
from skpose.estimators.orientation import OrientationEstimator
from skpose.io import read_images, read_particles, read_volume, require_unique_images

BOX = 32


def _error(capsys, argv) -> str:
    """Run ``skpose argv``; assert a one-line error and exit status 2; return it."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses the option itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(r"skpose( \w+)?: error: ", err), err
    return err


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A 32 px map, 24 simulated particles with CTF, and a model trained 1 step."""
    d = tmp_path_factory.mktemp("bad_input")
    skpose.write_volume(d / "map.mrc", skpose.phantom_volume(BOX), 3.0)
    sim = ["simulate", d / "map.mrc", "--n", "24", "--ctf", "--max-shift", "1"]
    assert main([str(a) for a in [*sim, "--seed", "0", "--out", d / "sim"]]) == 0
    fit = ["fit", d / "sim/particles.star", "--volume", d / "map.mrc"]
    tail = ["--out", d / "model.joblib", "--max-iter", "1", "--verbose", "0"]
    assert main([str(a) for a in [*fit, *tail]]) == 0
    return d


def _variant(d, name: str, edit) -> str:
    """A copy of the simulated STAR (beside its stack) with ``edit(blocks)`` applied."""
    blocks = starfile.read(d / "sim/particles.star", always_dict=True)
    edit(blocks)
    path = d / "sim" / name
    starfile.write(blocks, path, overwrite=True)
    return path


def _fit(d, star, volume=None, *extra):
    volume = volume or d / "map.mrc"
    tail = ["--out", d / "m.joblib", "--max-iter", "1", "--verbose", "0"]
    return ["fit", star, "--volume", volume, *tail, *extra]


# --------------------------------------------------------------------------------------
# Options: zero is refused, never replaced by a default
# --------------------------------------------------------------------------------------


_FIT = ["fit", "p.star", "--volume", "m.mrc", "--out", "m.joblib"]
_SIMULATE = ["simulate", "m.mrc", "--out", "sim"]
_PREDICT = ["predict", "p.star", "--model", "m.joblib", "--out", "o.star"]


@pytest.mark.parametrize(
    "argv, flag",
    [
        ([*_FIT, "--lr", "0"], "lr"),
        ([*_FIT, "--lr", "nan"], "lr"),
        ([*_FIT, "--batch-size", "0"], "batch-size"),
        ([*_FIT, "--box", "0"], "box"),
        ([*_FIT, "--max-iter", "0"], "max-iter"),
        ([*_FIT, "--cv", "1"], "cv"),
        ([*_SIMULATE, "--pixel-size", "0"], "pixel-size"),
        ([*_SIMULATE, "--n", "0"], "n"),
        ([*_SIMULATE, "--snr", "0"], "snr"),
        ([*_SIMULATE, "--max-shift", "-1"], "max-shift"),
        ([*_PREDICT, "--batch-size", "0"], "batch-size"),
        ([*_PREDICT, "--max-open-files", "0"], "max-open-files"),
    ],
)
def test_zero_and_out_of_range_options_are_refused(capsys, argv, flag):
    err = _error(capsys, argv)
    assert f"argument --{flag}" in err


def test_fit_defaults_apply_only_to_absent_options():
    parse = build_parser().parse_args
    base = ["fit", "p.star", "--volume", "m.mrc", "--out", "m", "--architecture"]
    est = _commands._estimator(parse([*base, "small"]), "m.mrc")
    assert (est.lr, est.batch_size, est.image_size) == (1e-3, 32, 32)
    given = [*base, "small", "--lr", "2e-4", "--batch-size", "7", "--box", "48"]
    est = _commands._estimator(parse(given), "m.mrc")
    assert (est.lr, est.batch_size, est.image_size) == (2e-4, 7, 48)


def test_simulate_a_map_without_voxel_size_needs_pixel_size(capsys, tmp_path):
    with mrcfile.new(tmp_path / "nosize.mrc") as mrc:
        mrc.set_data(skpose.phantom_volume(16))  # voxel size left 0
    err = _error(capsys, ["simulate", tmp_path / "nosize.mrc", "--out", tmp_path])
    assert "nosize.mrc' gives no voxel size" in err and "--pixel-size" in err


# --------------------------------------------------------------------------------------
# STAR files: truncated, broken, duplicated, empty
# --------------------------------------------------------------------------------------


def _cut(d, name: str, cut) -> str:
    text = (d / "sim/particles.star").read_text().rstrip("\n")
    last = text.splitlines()[-1]
    path = d / "sim" / name
    path.write_text(text[: len(text) - len(last)] + cut(last))
    return path


def test_star_cut_mid_row_names_file_and_line(d):
    n_lines = len((d / "sim/particles.star").read_text().rstrip("\n").splitlines())
    for name, cut in (
        ("cut_mid_nl.star", lambda row: row[: len(row) // 2] + "\n"),
        ("cut_mid_eof.star", lambda row: row[: len(row) // 2]),
    ):
        path = _cut(d, name, cut)
        with pytest.raises(
            ValueError, match=rf"{name}', line {n_lines}: a data row with \d+ fields"
        ):
            read_particles(path)


def test_star_cut_inside_its_last_value_is_detected(d):
    # No final newline, and the last value is written shorter than the column's.
    path = _cut(d, "cut_value.star", lambda row: row[:-3])
    with pytest.raises(ValueError, match=r"ends inside a value.*looks truncated"):
        read_particles(path)


def test_star_cut_on_a_line_boundary_cannot_be_detected(d):
    # Documented limit (skpose.io._star_check): whole rows lost leave a valid table.
    path = _cut(d, "cut_line.star", lambda row: "")
    assert len(read_particles(path)) == 23


def test_star_row_with_extra_field_and_key_without_value(tmp_path):
    (tmp_path / "extra.star").write_text(
        "data_particles\n\nloop_\n_rlnAngleRot #1\n_rlnAngleTilt #2\n"
        "1.0 2.0\n3.0 4.0 5.0\n"
    )
    with pytest.raises(ValueError, match=r"extra\.star', line 7: .* 3 fields .* 2 col"):
        read_particles(tmp_path / "extra.star")
    (tmp_path / "key.star").write_text("data_general\n\n_rlnImageSize\n")
    with pytest.raises(ValueError, match=r"key\.star', line 3: key _rlnImageSize"):
        read_particles(tmp_path / "key.star")


def test_missing_optics_group_is_reported_on_its_own_row():
    table = pd.DataFrame({"rlnOpticsGroup": [1.0, 1.0, np.nan]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]})
    with pytest.raises(ValueError, match=r"row 2 .* optics group nan"):
        skpose.io.Particles(table, optics)


def _duplicated(d) -> str:
    def edit(blocks):
        parts = blocks["particles"]
        blocks["particles"] = parts.iloc[[*range(len(parts)), 5]].reset_index(drop=True)

    return _variant(d, "dup.star", edit)


@pytest.mark.parametrize("command", ["split", "fit", "evaluate"])
def test_duplicated_image_names_are_refused(d, capsys, command):
    star = _duplicated(d)
    argv = {
        "split": ["split", star, "--out", d / "dsplit"],
        "fit": _fit(d, star),
        "evaluate": ["evaluate", star, d / "sim/particles.star", "--out", d / "drep"],
    }[command]
    err = _error(capsys, argv)
    assert "dup.star' lists particle image '000006@particles.mrcs' twice" in err
    assert "rows 5 and 24" in err
    assert not (d / "dsplit").exists()


def test_duplicates_are_compared_as_resolved_stack_and_index(tmp_path):
    names = ["1@a.mrcs", "2@a.mrcs", "000001@./sub/../a.mrcs"]
    table = skpose.io.Particles(pd.DataFrame({"rlnImageName": names}), path=tmp_path)
    with pytest.raises(ValueError, match=r"rows 0 and 2"):
        require_unique_images(table, purpose="training")


@pytest.mark.parametrize("command", ["split", "fit", "predict", "evaluate", "recon"])
def test_a_star_without_rows_is_refused(d, capsys, command):
    def edit(blocks):
        blocks["particles"] = blocks["particles"].iloc[:0]

    empty = _variant(d, "empty.star", edit)
    argv = {
        "split": ["split", empty, "--out", d / "esplit"],
        "fit": _fit(d, empty),
        "predict": ["predict", empty, "--model", d / "model.joblib", "--out", "x"],
        "evaluate": ["evaluate", empty, d / "sim/particles.star", "--out", d / "e"],
        "recon": ["reconstruct", empty, "--out", d / "e.mrc"],
    }[command]
    assert "empty.star' has no particles (its particle table has 0 rows)" in _error(
        capsys, argv
    )


def test_nan_angle_names_file_row_and_column(d, capsys):
    def edit(blocks):
        blocks["particles"].loc[5, "rlnAngleTilt"] = np.nan

    star = _variant(d, "nan.star", edit)
    err = _error(capsys, _fit(d, star))
    assert "Row 5 of STAR file" in err and "nan.star' has rlnAngleTilt = nan" in err


def test_cryosparc_file_given_as_star_points_to_read_cryosparc(shared_data, capsys):
    cs = shared_data / "poses/cryosparc_P12_J24_001_particles.cs"
    with pytest.raises(ValueError, match=r"cryoSPARC \.cs file.*read_cryosparc"):
        read_particles(cs)
    assert "read_cryosparc" in _error(capsys, ["split", cs, "--out", "x"])


# --------------------------------------------------------------------------------------
# Maps and stacks: the right kind of file, with the size the table says
# --------------------------------------------------------------------------------------


def test_a_particle_stack_given_as_the_map_is_refused(d, capsys, tmp_path):
    images = np.random.default_rng(0).standard_normal((BOX, BOX, BOX))
    skpose.write_images(tmp_path / "stack.mrcs", images, 3.0)
    err = _error(capsys, _fit(d, d / "sim/particles.star", tmp_path / "stack.mrcs"))
    assert "stack.mrcs' is an image stack" in err and "not a 3-D map" in err
    # The MRC2014 stack header (space group 0, mz = 1) counts whatever the name.
    skpose.write_images(tmp_path / "stack.mrc", images, 3.0)
    with pytest.raises(ValueError, match=r"stack\.mrc' is an image stack .*mz = 1"):
        read_volume(tmp_path / "stack.mrc")


def test_star_rows_pointing_into_a_map_are_refused(d, capsys):
    def edit(blocks):
        parts = blocks["particles"]
        parts["rlnImageName"] = [f"{i + 1:06d}@../map.mrc" for i in range(len(parts))]

    err = _error(capsys, _fit(d, _variant(d, "intomap.star", edit)))
    assert "map.mrc' is a 3-D map" in err and "row 0 ('000001@../map.mrc')" in err


def test_real_files_with_contrary_headers_still_read(shared_data):
    # ASPIRE's stack carries a volume's space group: the .mrcs name decides.
    stack = shared_data / "conventions/relion_project_70s/rln_proj_64.mrcs"
    with mrcfile.mmap(stack) as mrc:
        assert mrc.is_volume()
    assert read_images(stack).shape == (5, 64, 64)
    # cryojax's map carries space group 0 with mz = nz: unlabelled, read as a map.
    volume = shared_data / "real/trpv1/trpv1_volume.mrc"
    with mrcfile.mmap(volume) as mrc:
        assert mrc.is_image_stack()
    assert read_volume(volume)[0].shape == (48, 48, 48)


def test_all_zero_map_is_refused_not_scored_best(d, capsys, tmp_path):
    skpose.write_volume(tmp_path / "zero.mrc", np.zeros((BOX,) * 3), 3.0)
    err = _error(capsys, _fit(d, d / "sim/particles.star", tmp_path / "zero.mrc"))
    assert "zero.mrc' holds a constant map" in err
    q = skpose.random_quaternions(3, random_state=0)
    with pytest.raises(ValueError, match=r"'volume' to vary: it is constant"):
        skpose.reprojection_rmse(np.zeros((BOX,) * 3), q, q)
    sim = skpose.simulate_particles(skpose.phantom_volume(BOX), 8, random_state=0)
    est = OrientationEstimator(
        np.zeros((BOX,) * 3), architecture="small", image_size=32, max_iter=1,
        batch_size=8, device="cpu", random_state=0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"Every projection of the map is the same"):
        est.fit(sim.images, sim.quaternions)


def test_image_size_must_agree_with_the_stack(d, capsys):
    def edit(blocks):
        blocks["optics"]["rlnImageSize"] = 64

    star = _variant(d, "size64.star", edit)
    expected = r"rlnImageSize of row 0 \('000001@particles\.mrcs'\) of STAR file .* "
    expected += r"is 64 px, but its stack '.*particles\.mrcs' holds 32 px images"
    assert re.search(expected, _error(capsys, _fit(d, star)))
    predict = ["predict", star, "--model", d / "model.joblib", "--out", d / "p.star"]
    assert re.search(expected, _error(capsys, predict))


# --------------------------------------------------------------------------------------
# Commands whose result would be meaningless
# --------------------------------------------------------------------------------------


def test_simulate_shift_beyond_half_the_box_is_refused(d, capsys):
    argv = ["simulate", d / "map.mrc", "--n", "2", "--max-shift", "1000", "--out", "x"]
    err = _error(capsys, argv)
    assert "'max_shift' < half the box (16 px for a 32 px map), got 1000.0" in err
    vol = skpose.phantom_volume(16)
    with pytest.raises(ValueError, match=r"'max_shift' < half the box"):
        skpose.simulate_particles(vol, 2, max_shift=8)
    assert len(skpose.simulate_particles(vol, 2, max_shift=7.9)) == 2
    with pytest.raises(ValueError, match=r"'pixel_size_angstrom' to be a number > 0"):
        skpose.simulate_particles(vol, 2, pixel_size_angstrom=0)


def test_half_maps_of_one_particle_are_refused(d, capsys):
    def edit(blocks):
        blocks["particles"] = blocks["particles"].iloc[:1]

    one = _variant(d, "one.star", edit)
    argv = ["reconstruct", one, "--out", d / "one.mrc", "--half-maps"]
    assert "--half-maps needs particles in both random halves" in _error(capsys, argv)
    assert not (d / "one.mrc").exists()


def test_fsc_without_resolution_is_null_not_infinity():
    from skpose.imaging import reconstruction

    entry = _commands._fsc_entry(reconstruction, [0.0, 0.1, 0.2], [0.0, 0.0, 0.0])
    assert entry["resolution_angstrom"] is None
    assert "Infinity" not in json.dumps(entry)


def test_predict_with_a_model_file_that_is_not_one(d, capsys, tmp_path):
    star = d / "sim/particles.star"
    for name, content, match in (
        ("dict.joblib", {"a": 1}, "is not a skpose model file"),
        ("noest.joblib", {"format": "skpose-model-1"}, "incomplete skpose model"),
        (
            "badest.joblib",
            {"format": "skpose-model-1", "estimator": {}, "box_size": 32,
             "pixel_size_angstrom": 3.0, "map_sha256": "", "ctf": "none"},
            "its 'estimator' is a dict, not a fitted OrientationEstimator",
        ),
    ):  # fmt: skip
        joblib.dump(content, tmp_path / name)
        argv = ["predict", star, "--model", tmp_path / name, "--out", tmp_path / "o"]
        assert match in _error(capsys, argv)


def test_constant_images_are_named_by_row(d, capsys):
    stack = d / "sim/particles.mrcs"
    images = np.array(read_images(stack))
    images[3] = 0.0
    skpose.write_images(d / "sim/blank.mrcs", images, 3.0)

    def edit(blocks):
        parts = blocks["particles"]
        parts["rlnImageName"] = parts.rlnImageName.str.replace("particles", "blank")

    star = _variant(d, "blank.star", edit)
    err = _error(capsys, _fit(d, star))
    assert "Row 3 ('000004@blank.mrcs') of STAR file" in err
    assert "is a constant image (every pixel 0" in err
    predict = ["predict", star, "--model", d / "model.joblib", "--out", d / "b.star"]
    assert "Row 3 ('000004@blank.mrcs')" in _error(capsys, predict)


# --------------------------------------------------------------------------------------
# The estimator (skpose/estimators/orientation.py): its own parameter and input checks
# --------------------------------------------------------------------------------------


def _tiny(**params):
    base = {"architecture": "small", "image_size": 32, "max_iter": 1, "lr": 1e-3}
    base |= {"batch_size": 8, "random_state": 0, "device": "cpu"}
    return OrientationEstimator(skpose.phantom_volume(BOX), **{**base, **params})


@pytest.fixture(scope="module")
def sim():
    return skpose.simulate_particles(skpose.phantom_volume(BOX), 16, random_state=0)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"warm_start": "no"}, r"'warm_start' parameter of Or.* must be .*bool.*'no'"),
        ({"random_state": "abc"}, r"'random_state' parameter of Or.* None or an int"),
    ],
)
def test_estimator_parameters_are_checked(sim, params, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**params).fit(sim.images, sim.quaternions)


def test_a_single_large_image_is_not_read_as_flattened_images(sim):
    est = _tiny().fit(sim.images, sim.quaternions)
    with pytest.raises(ValueError, match=r"\(1024, 1024\) is ambiguous.*image\[None\]"):
        est.predict(np.random.default_rng(0).random((1024, 1024)))


def test_constant_images_and_diverging_fits_do_not_blame_the_labels(sim):
    with pytest.raises(ValueError, match=r"network predicted zero quaternions.*const"):
        _tiny().fit(np.ones((16, BOX, BOX)), sim.quaternions)
    with pytest.raises(ValueError, match=r"Training diverged.*Lower the learning"):
        _tiny(lr=1e12, max_iter=6).fit(sim.images, sim.quaternions)
