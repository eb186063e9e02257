"""skpose.io: MRC volumes and stacks, RELION STAR, cryoSPARC .cs, image loading."""

from __future__ import annotations

import os
import pickle
import shutil

import mrcfile
import numpy as np
import pandas as pd
import pytest

from skpose.geometry.rotations import quat_to_matrix, random_quaternions
from skpose.io import (
    ParticleImageLoader,
    Particles,
    iter_particle_images,
    load_particle_images,
    read_cryosparc,
    read_images,
    read_particles,
    read_volume,
    require_columns,
    write_images,
    write_particles,
    write_volume,
)

STAR_GLOBS = (
    "star/*.star",
    "poses/*.star",
    "conventions/**/*.star",
    "real/trpv1/*.star",
)
PFCRT = "star/FinalRefinement-OriginalParticles-PfCRT.star"
PROJ64 = "conventions/relion_project_70s/rln_proj_64.star"
TRPV1 = "real/trpv1/trpv1_small_stack.star"
CS_FILE = "poses/cryosparc_P12_J24_001_particles.cs"

# file: (particles, version, optics groups or None, particles block)
KNOWN_STARS = {
    PFCRT: (5, "3.0", None, "images"),
    "star/relion31.6opticsgroups.star": (139, "3.1", 6, "particles"),
    "star/relion5.star": (17, "5.0", 1, "particles"),
    "star/relion31.star": (5, "3.1", 1, "particles"),
    "star/sample_particles_relion31.star": (17, "3.1", 2, "particles"),
    "star/sample_relion_symmetry_group_D4.star": (17, "3.0", None, "model_class_1"),
    "star/rln3.1_data_style.star": (2, "3.0", None, "block_2"),
    "poses/particles_relion31_betagal_tutorial.star": (4501, "3.1", 1, "particles"),
    PROJ64: (5, "3.1", None, "particles"),
    TRPV1: (10, "3.1", 1, "particles"),
}
ROUND_TRIP_STARS = [
    PFCRT,
    "star/relion31.6opticsgroups.star",
    "star/relion5.star",
    "star/rln3.1_data_style.star",
    "star/sample_particles_relion31.star",
    "conventions/relion_project_70s/rln_proj_64.star",
    "conventions/relion_project_ctf/relion_proj_batch.star",
    TRPV1,
]


def _shared_stars(shared_data):
    files = sorted({p for g in STAR_GLOBS for p in shared_data.glob(g)})
    assert len(files) >= 16
    return files


def _read_pickle(path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _tiny_star(tmp_path, n_files, per_file, *, rng, box=8, extra_rows=()):
    """A RELION 3.1 STAR in tmp_path over n_files stacks; image (f, i) holds f*100+i."""
    names = []
    for f in range(n_files):
        images = np.zeros((per_file, box, box), dtype=np.float32)
        images += (f * 100 + np.arange(per_file))[:, None, None]
        write_images(tmp_path / f"stack_{f:03d}.mrcs", images)
        names += [f"{i + 1:06d}@stack_{f:03d}.mrcs" for i in range(per_file)]
    names = list(rng.permutation(names)) + list(extra_rows)
    data = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1})
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5], "rlnImageSize": [box]}
    )
    write_particles(tmp_path / "tiny.star", Particles(data, optics))
    return read_particles(tmp_path / "tiny.star"), names


def _expected_value(name):
    index, file = name.split("@")
    return int(file[6:9]) * 100 + int(index) - 1


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------
# STAR reading
# --------------------------------------------------------------------------------------


def test_every_shared_star_reads(shared_data):
    for path in _shared_stars(shared_data):
        particles = read_particles(path)
        assert len(particles) > 0, path
        assert particles.version in ("3.0", "3.1", "5.0")
        assert particles.origins_px.shape == (len(particles), 2)
        assert particles.pixel_size_angstrom.shape == (len(particles),)
        q = particles.quaternions
        assert q is None or (q.shape == (len(particles), 4) and (q[:, 0] >= 0).all())


@pytest.mark.parametrize("name", sorted(KNOWN_STARS))
def test_known_star_layouts(shared_data, name):
    n, version, n_optics, block = KNOWN_STARS[name]
    particles = read_particles(shared_data / name)
    assert len(particles) == n
    assert particles.version == version
    assert (None if particles.optics is None else len(particles.optics)) == n_optics
    assert particles.particles_block == block
    assert list(particles.data.columns) == list(particles.blocks[block].columns)


def test_pfcrt_relion30_matches_cryodrgn(shared_data):
    particles = read_particles(shared_data / PFCRT)
    rot, trans = _read_pickle(shared_data / "poses/pose.star.pkl")
    np.testing.assert_allclose(quat_to_matrix(particles.quaternions), rot, atol=1e-6)
    np.testing.assert_allclose(particles.origins_px / 300, trans, atol=1e-9)
    np.testing.assert_allclose(particles.pixel_size_angstrom, 1.035)
    assert particles.image_indices.tolist() == [0, 1, 2, 3, 4]
    assert particles.image_files[0] == (
        shared_data / "star/Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs"
    )
    # RELION's CTF::read defaults: no rlnAmplitudeContrast -> 0.
    ctf = particles.ctf
    np.testing.assert_allclose(ctf.defocus_u_angstrom[0], 15686.0)
    np.testing.assert_allclose(ctf.amplitude_contrast, 0.0)
    np.testing.assert_allclose(ctf.voltage_kv, particles.data["rlnVoltage"])


def test_cryosparc_matches_cryodrgn(shared_data):
    cs = read_cryosparc(shared_data / CS_FILE)
    rot, trans = _read_pickle(shared_data / "poses/pose.cs.pkl")
    assert len(cs) == 2019 and cs.box_size == 180
    np.testing.assert_allclose(quat_to_matrix(cs.quaternions), rot, atol=1e-5)
    np.testing.assert_allclose(cs.shifts_px / 180, trans, atol=1e-6)
    np.testing.assert_allclose(cs.pixel_size_angstrom, 2.95)
    raw = np.load(shared_data / CS_FILE)
    np.testing.assert_allclose(
        cs.ctf.defocus_angle_deg, np.rad2deg(raw["ctf/df_angle_rad"]), rtol=1e-6
    )
    np.testing.assert_allclose(cs.ctf.voltage_kv, 200.0)
    np.testing.assert_allclose(cs.ctf.amplitude_contrast, 0.07, rtol=1e-6)
    assert cs.image_indices[:2].tolist() == [0, 1]


def test_trpv1_optics_group_7(shared_data):
    particles = read_particles(shared_data / TRPV1)
    assert particles.version == "3.1"  # no version line, but an optics block
    assert particles.box_size == 48
    assert set(particles.data["rlnOpticsGroup"]) == {7}
    np.testing.assert_allclose(particles.pixel_size_angstrom, 4.88)
    origins = particles.data[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    np.testing.assert_allclose(particles.origins_px, origins / 4.88)
    ctf = particles.ctf
    np.testing.assert_allclose(ctf.defocus_u_angstrom, 14657.509766)
    np.testing.assert_allclose(ctf.defocus_v_angstrom, 15222.730469)
    np.testing.assert_allclose(ctf.defocus_angle_deg, 53.749996)
    np.testing.assert_allclose(ctf.voltage_kv, 300.0)
    np.testing.assert_allclose(ctf.cs_mm, 2.0)
    np.testing.assert_allclose(ctf.amplitude_contrast, 0.1)
    np.testing.assert_allclose(ctf.phase_shift_deg, 0.0)
    np.testing.assert_allclose(ctf.bfactor, 0.0)
    assert len(ctf) == 10


def test_trpv1_missing_stack_is_named(shared_data):
    # The STAR names "./batch_0_restacked.mrc"; the stack ships as trpv1_small_stack.
    particles = read_particles(shared_data / TRPV1)
    with pytest.raises(FileNotFoundError, match=r"batch_0_restacked\.mrc.*row 0"):
        load_particle_images(particles)


def test_optics_groups_join_per_particle(shared_data):
    particles = read_particles(shared_data / "star/relion31.6opticsgroups.star")
    merged = particles.data.merge(particles.optics, on="rlnOpticsGroup", how="left")
    ctf = particles.ctf
    np.testing.assert_allclose(ctf.cs_mm, merged["rlnSphericalAberration"])
    np.testing.assert_allclose(
        particles.pixel_size_angstrom, merged["rlnImagePixelSize"]
    )
    assert set(np.unique(ctf.cs_mm)) == {2.6, 2.7}
    assert particles.box_size == 196


def test_origins_in_pixels_and_angstrom(shared_data):
    folder = shared_data / "conventions"
    shifted = read_particles(folder / "relion_project_70s/rln_proj_64_shifted.star")
    expected = [[6, 10], [10, -5], [-8, 11], [-13, -3]]
    np.testing.assert_allclose(shifted.origins_px, expected)
    # No optics block and no pixel size: zero origins in Angstrom stay zero.
    plain = read_particles(folder / "relion_project_70s/rln_proj_64.star")
    np.testing.assert_array_equal(plain.origins_px, 0.0)
    assert np.isnan(plain.pixel_size_angstrom).all() and plain.box_size is None
    # Both px and Angstrom columns: they agree.
    batch = read_particles(folder / "relion_project_ctf/relion_proj_batch.star")
    px = batch.data[["rlnOriginX", "rlnOriginY"]].to_numpy()
    np.testing.assert_allclose(batch.origins_px, px, atol=1e-5)


def test_select_subset(shared_data):
    particles = read_particles(shared_data / "star/relion31.6opticsgroups.star")
    subset = particles.select([5, 2, 100])
    assert len(subset) == 3
    np.testing.assert_allclose(subset.quaternions, particles.quaternions[[5, 2, 100]])
    pd.testing.assert_frame_equal(subset.optics, particles.optics)
    assert len(particles.select(np.arange(139) < 10)) == 10
    assert len(particles.select(slice(0, 4))) == 4


def test_missing_columns_errors(shared_data):
    plain = read_particles(shared_data / PROJ64)
    with pytest.raises(
        ValueError, match=r"rln_proj_64\.star' has no columns.*DefocusU"
    ):
        _ = plain.ctf
    with pytest.raises(ValueError, match=r"no column 'rlnMagnification'"):
        require_columns(plain, ["rlnAngleRot", "rlnMagnification"])
    with pytest.raises(ValueError, match=r"no column 'rlnClassNumber'"):
        plain.column("rlnClassNumber")
    no_images = Particles(plain.data.drop(columns="rlnImageName"))
    assert no_images.image_files is None and no_images.image_indices is None
    with pytest.raises(ValueError, match=r"no column 'rlnImageName' \(needed for load"):
        load_particle_images(no_images)
    cs = read_particles(shared_data / "star/multi_line_c_engine.star")
    assert cs.quaternions is None and cs.angles_deg is None


@pytest.mark.parametrize(
    ("header", "optics", "version"),
    [
        ("# RELION; version 3.0.6", False, "3.0"),
        ("# version 30001", False, "3.1"),
        ("# version 30001", True, "3.1"),
        ("# version 40000", True, "3.1"),
        ("# version 50001", True, "5.0"),
        ("# version 3.", False, "3.0"),
        ("", True, "3.1"),
        ("", False, "3.0"),
    ],
)
def test_version_detection(tmp_path, header, optics, version):
    optics_block = "data_optics\n\nloop_\n_rlnOpticsGroup #1\n1\n\n" if optics else ""
    path = tmp_path / "v.star"
    path.write_text(
        f"{header}\n\n{optics_block}{header}\n\ndata_particles\n\nloop_\n"
        "_rlnAngleRot #1\n_rlnOpticsGroup #2\n10.0 1\n"
    )
    assert read_particles(path).version == version


def test_star_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"STAR file '.*nope\.star' does not"):
        read_particles(tmp_path / "nope.star")
    (tmp_path / "empty.star").write_text("# nothing here\n")
    with pytest.raises(ValueError, match=r"empty\.star' has no particle table"):
        read_particles(tmp_path / "empty.star")


def test_undefined_optics_group(tmp_path):
    path = tmp_path / "bad_group.star"
    path.write_text(
        "# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n"
        "_rlnImagePixelSize #2\n1 1.5\n2 1.5\n\n# version 30001\n\ndata_particles\n\n"
        "loop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n1@a.mrcs 1\n2@a.mrcs 3\n"
    )
    with pytest.raises(
        ValueError,
        match=r"row 1 of STAR file '.*bad_group\.star' refers to optics "
        r"group 3.*defined: 1, 2",
    ):
        read_particles(path)


def test_bad_image_name(tmp_path):
    data = pd.DataFrame({"rlnImageName": ["1@a.mrcs", "x@a.mrcs"]})
    with pytest.raises(
        ValueError, match=r"Row 1 of the particle table has rlnImageName"
    ):
        _ = Particles(data).image_indices


# --------------------------------------------------------------------------------------
# STAR writing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROUND_TRIP_STARS)
def test_star_round_trip_keeps_everything(shared_data, tmp_path, name):
    original = read_particles(shared_data / name)
    write_particles(tmp_path / "out.star", original)
    again = read_particles(tmp_path / "out.star")
    assert again.version == original.version
    assert again.particles_block == original.particles_block
    assert list(again.blocks) == list(original.blocks)
    pd.testing.assert_frame_equal(
        again.data, original.data, check_exact=False, atol=1e-6
    )
    if original.optics is None:
        assert again.optics is None
    else:
        pd.testing.assert_frame_equal(again.optics, original.optics, atol=1e-6)
    if original.version != "3.0":
        assert (
            f"# version {'50001' if original.version == '5.0' else '30001'}"
            in (tmp_path / "out.star").read_text()
        )


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        (PFCRT, ["rlnOriginX", "rlnOriginY"]),
        (TRPV1, ["rlnOriginXAngst", "rlnOriginYAngst"]),
        ("star/relion31.6opticsgroups.star", ["rlnOriginXAngst", "rlnOriginYAngst"]),
        ("conventions/relion_project_70s/rln_proj_64_shifted.star", ["rlnOriginX"]),
    ],
)
def test_write_new_poses(shared_data, tmp_path, name, columns):
    original = read_particles(shared_data / name)
    n = len(original)
    rng = np.random.default_rng(0)
    quats = random_quaternions(n, random_state=1).numpy()
    shifts = rng.uniform(-10, 10, size=(n, 2))
    confidence = rng.uniform(size=n)
    write_particles(
        tmp_path / "out.star",
        original,
        quaternions=quats,
        shifts_px=shifts,
        extra_columns={"rlnSkposeConfidence": confidence},
    )
    again = read_particles(tmp_path / "out.star")
    np.testing.assert_allclose(
        quat_to_matrix(again.quaternions), quat_to_matrix(quats), atol=1e-5
    )
    np.testing.assert_allclose(again.origins_px, shifts, atol=1e-5)
    np.testing.assert_allclose(again.data["rlnSkposeConfidence"], confidence, atol=1e-6)
    assert set(columns) <= set(again.data.columns)
    assert list(again.data.columns[: len(original.data.columns)]) == list(
        original.data.columns
    )
    untouched = [
        c for c in original.data.columns if not c.startswith(("rlnAngle", "rlnOrigin"))
    ]
    pd.testing.assert_frame_equal(
        again.data[untouched], original.data[untouched], atol=1e-6
    )


def test_write_particles_errors(shared_data, tmp_path):
    plain = read_particles(shared_data / PROJ64)
    out = tmp_path / "out.star"
    with pytest.raises(ValueError, match=r"'quaternions' to have shape \(5, 4\)"):
        write_particles(out, plain, quaternions=np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"'shifts_px' to be finite"):
        write_particles(out, plain, shifts_px=np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match=r"origins in Angstrom.*no pixel size"):
        write_particles(out, plain, shifts_px=np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"extra column 'rlnX' to have shape \(5,\)"):
        write_particles(out, plain, extra_columns={"rlnX": np.ones(3)})
    with pytest.raises(TypeError, match=r"'particles' to be a Particles"):
        write_particles(out, plain.data)


def test_write_in_memory_table(tmp_path):
    data = pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnOpticsGroup": [1]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0]})
    write_particles(
        tmp_path / "new.star",
        Particles(data, optics),
        quaternions=np.array([[1.0, 0, 0, 0]]),
        shifts_px=np.array([[1.0, -2.0]]),
    )
    again = read_particles(tmp_path / "new.star")
    assert again.version == "3.1" and list(again.blocks) == ["optics", "particles"]
    np.testing.assert_allclose(again.data["rlnOriginXAngst"], [2.0])
    np.testing.assert_allclose(again.origins_px, [[1.0, -2.0]])


# --------------------------------------------------------------------------------------
# MRC volumes and stacks
# --------------------------------------------------------------------------------------


def test_volume_round_trip(tmp_path):
    volume = np.random.default_rng(0).standard_normal((10, 10, 10))
    write_volume(tmp_path / "v.mrc", volume, voxel_size_angstrom=3.25)
    again, voxel_size = read_volume(tmp_path / "v.mrc")
    assert again.dtype == np.float32 and voxel_size == pytest.approx(3.25)
    np.testing.assert_allclose(again, volume.astype(np.float32))


def test_shared_volumes(shared_data):
    volume, voxel_size = read_volume(shared_data / "real/trpv1/trpv1_volume.mrc")
    assert volume.shape == (48, 48, 48) and voxel_size == pytest.approx(4.88)
    point, voxel_size = read_volume(
        shared_data / "conventions/relion_project_ctf/pointmass.mrc"
    )
    assert voxel_size == 0.0  # header leaves it unset
    assert np.argwhere(point == point.max()).tolist() == [[32, 32, 49]]  # [z, y, x]


def test_volume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*missing\.mrc' does not exist"):
        read_volume(tmp_path / "missing.mrc")
    write_volume(tmp_path / "v.mrc", np.ones((16, 16, 16)))
    raw = (tmp_path / "v.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match=r"'.*cut\.mrc' is not a readable MRC file"):
        read_volume(tmp_path / "cut.mrc")
    with pytest.raises(ValueError, match=r"'.*cut\.mrc' is not a readable MRC file"):
        read_images(tmp_path / "cut.mrc")
    (tmp_path / "text.mrc").write_text("not an MRC file at all\n" * 100)
    with pytest.raises(ValueError, match=r"'.*text\.mrc' is not a readable MRC file"):
        read_volume(tmp_path / "text.mrc")
    with mrcfile.new(tmp_path / "box.mrc") as mrc:
        mrc.set_data(np.zeros((4, 5, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"box\.mrc' to hold a cubic volume"):
        read_volume(tmp_path / "box.mrc")
    with pytest.raises(ValueError, match=r"'volume' to be a cubic volume"):
        write_volume(tmp_path / "w.mrc", np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match=r"'voxel_size_angstrom' to be a number > 0"):
        write_volume(tmp_path / "w.mrc", np.zeros((4, 4, 4)), voxel_size_angstrom=0)


def test_stack_is_memory_mapped(tmp_path):
    images = np.random.default_rng(0).standard_normal((6, 12, 12)).astype(np.float32)
    write_images(tmp_path / "s.mrcs", images, pixel_size_angstrom=2.5)
    stack = read_images(tmp_path / "s.mrcs")
    assert isinstance(stack, np.memmap) and stack.shape == (6, 12, 12)
    assert not stack.flags.writeable
    np.testing.assert_array_equal(stack[[4, 1]], images[[4, 1]])
    loaded = read_images(tmp_path / "s.mrcs", mmap=False)
    assert not isinstance(loaded, np.memmap) and loaded.dtype == np.float32
    with mrcfile.open(tmp_path / "s.mrcs") as mrc:
        assert mrc.is_image_stack() and mrc.voxel_size.x == pytest.approx(2.5)


def test_single_image_and_bad_stacks(tmp_path):
    write_images(tmp_path / "one.mrcs", np.ones((8, 8)))
    assert read_images(tmp_path / "one.mrcs").shape == (1, 8, 8)
    with mrcfile.new(tmp_path / "one.mrc") as mrc:
        mrc.set_data(np.ones((8, 8), dtype=np.float32))
    assert read_images(tmp_path / "one.mrc").shape == (1, 8, 8)
    with mrcfile.new(tmp_path / "wide.mrcs") as mrc:
        mrc.set_data(np.zeros((2, 4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"wide\.mrcs' to hold square images"):
        read_images(tmp_path / "wide.mrcs")
    with pytest.raises(ValueError, match=r"'images' to have shape \(n, H, W\)"):
        write_images(tmp_path / "x.mrcs", np.zeros((2, 4, 6)))


def test_old_mrc_without_map_id(shared_data):
    # relion31.mrcs has no "MAP " id string (an old MRC header) yet RELION reads it.
    stack = read_images(shared_data / "star/relion31.mrcs")
    assert stack.shape == (5, 256, 256) and np.isfinite(stack[0]).all()


# --------------------------------------------------------------------------------------
# Particle images through STAR files
# --------------------------------------------------------------------------------------


def test_load_shared_particle_images(shared_data):
    folder = shared_data / "conventions/relion_project_70s"
    particles = read_particles(folder / "rln_proj_64.star")
    images = load_particle_images(particles)
    np.testing.assert_array_equal(images, read_images(folder / "rln_proj_64.mrcs"))
    subset = load_particle_images(particles, [3, 0])
    np.testing.assert_array_equal(subset, images[[3, 0]])


def test_open_files_stay_bounded(tmp_path):
    particles, names = _tiny_star(tmp_path, 100, 2, rng=np.random.default_rng(0))
    assert len(particles) == 200
    expected = np.array([_expected_value(n) for n in names], dtype=np.float32)
    before = _open_fds()
    seen, peak = [], 0
    for rows, images in iter_particle_images(
        particles, batch_size=16, max_open_files=8
    ):
        peak = max(peak, _open_fds() - before)
        seen.append(rows)
        np.testing.assert_array_equal(images[:, 3, 5], expected[rows])
    assert 0 < peak <= 8  # each open stack holds one descriptor (its mmap)
    assert np.concatenate(seen).tolist() == list(range(200))
    assert _open_fds() == before
    loader = ParticleImageLoader(max_open_files=4)
    for start in range(0, 200, 10):
        rows = np.arange(start, start + 10)
        images = load_particle_images(particles, rows, loader=loader)
        np.testing.assert_array_equal(images[:, 0, 0], expected[rows])
        assert loader.n_open <= 4 and _open_fds() - before <= 4
    loader.close()
    assert _open_fds() == before


def test_image_loading_errors(tmp_path):
    particles, _ = _tiny_star(
        tmp_path,
        2,
        3,
        rng=np.random.default_rng(0),
        extra_rows=["000004@stack_001.mrcs", "000001@gone.mrcs"],
    )
    with pytest.raises(
        ValueError,
        match=r"Image index 4 .*row 6 .* past the end of stack "
        r"'.*stack_001\.mrcs', which holds 3 images",
    ):
        load_particle_images(particles, [0, 6])
    with pytest.raises(
        FileNotFoundError, match=r"'.*gone\.mrcs' \(referenced by row 7"
    ):
        load_particle_images(particles, [7])
    with pytest.raises(ValueError, match=r"'rows' does not index 8 particles"):
        load_particle_images(particles, [8])
    with pytest.raises(ValueError, match=r"'max_open_files' to be an integer >= 1"):
        ParticleImageLoader(0)
    with pytest.raises(ValueError, match=r"'batch_size' to be an integer >= 1"):
        next(iter_particle_images(particles, batch_size=0))


def test_absolute_image_paths(tmp_path, shared_data):
    stack = shared_data / "real/trpv1/trpv1_small_stack.mrcs"
    data = pd.DataFrame({"rlnImageName": [f"2@{stack}", f"10@{stack}"]})
    images = load_particle_images(Particles(data, path=tmp_path / "any.star"))
    np.testing.assert_array_equal(images, read_images(stack)[[1, 9]])


# --------------------------------------------------------------------------------------
# cryoSPARC errors
# --------------------------------------------------------------------------------------


def test_cryosparc_errors(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match=r"'.*none\.cs' does not exist"):
        read_cryosparc(tmp_path / "none.cs")
    raw = np.load(shared_data / CS_FILE)
    keep = [n for n in raw.dtype.names if n != "alignments3D/pose"]
    with open(tmp_path / "nopose.cs", "wb") as handle:
        np.save(handle, raw[keep][:3])
    with pytest.raises(
        ValueError, match=r"nopose\.cs' has no field 'alignments3D/pose'"
    ):
        read_cryosparc(tmp_path / "nopose.cs")
    shutil.copy(shared_data / PFCRT, tmp_path / "text.cs")
    with pytest.raises(ValueError, match=r"text\.cs' is not a readable cryoSPARC"):
        read_cryosparc(tmp_path / "text.cs")


def _resident_file_kib() -> int | None:
    """This process's resident file-backed memory (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            lines = [x for x in f if x.startswith("RssFile:")]
    except OSError:
        return None
    return int(lines[0].split()[1]) if lines else None


def test_reading_a_stack_does_not_keep_its_pages_resident(tmp_path):
    # 96 MiB of images read in batches: the process's memory must not grow with them
    # (the pages stay in the page cache, not in the process).
    if _resident_file_kib() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    path = tmp_path / "big.mrcs"
    images = np.random.default_rng(0).standard_normal((6144, 64, 64), np.float32)
    write_images(path, images)
    del images
    with ParticleImageLoader() as loader:
        loader.load([path], [0])
        before = _resident_file_kib()
        for start in range(0, 6144, 512):
            batch = loader.load([path] * 512, np.arange(start, start + 512))
        grown_mib = (_resident_file_kib() - before) / 1024
    assert batch.shape == (512, 64, 64)
    assert grown_mib < 16, f"resident file-backed memory grew by {grown_mib:.0f} MiB"


def _cs_variant(tmp_path, shared_data, name, mapping):
    """A 6-row .cs from the real one; ``mapping(field, values)`` -> new fields.

    Each new field is ``(name, values)``; the field's dtype follows the values.
    """
    raw = np.load(shared_data / CS_FILE)[:6]
    fields = [f for n in raw.dtype.names for f in mapping(n, raw[n])]
    dtype = [(f, v.dtype, v.shape[1:]) for f, v in fields]
    out = np.zeros(len(raw), dtype=dtype)
    for field, values in fields:
        out[field] = values
    with open(tmp_path / name, "wb") as handle:
        np.save(handle, out)
    return read_cryosparc(tmp_path / name)


def _ctf_only(name, values):
    return [] if name.startswith("alignments") else [(name, values)]


def _two_d(name, values):
    if not name.startswith("alignments3D/"):
        return [(name, values)]
    name = name.replace("alignments3D", "alignments2D")
    return [(name, values[:, 2] if name.endswith("/pose") else values)]


def _class_0(name, values):
    return [(name.replace("alignments3D/", "alignments_class_0/"), values)]


def _classes_0_1(name, values):
    """Class 1 holds the inverse poses; odd rows prefer class 0, even ones class 1."""
    if not name.startswith("alignments3D/"):
        return [(name, values)]
    first, second = values, values
    if name.endswith("/pose"):
        second = -values
    if name.endswith("/class_posterior"):
        first = np.tile([0.1, 0.9], 3).astype(values.dtype)
        second = 1 - first
    key = name.removeprefix("alignments3D/")
    return [(f"alignments_class_0/{key}", first), (f"alignments_class_1/{key}", second)]


def test_cryosparc_without_3d_poses_and_with_classes(tmp_path, shared_data):
    full = read_cryosparc(shared_data / CS_FILE)
    assert full.pose_source == "alignments3D"
    q, shifts = full.quaternions[:6], full.shifts_px[:6]
    cs = _cs_variant(tmp_path, shared_data, "ctf.cs", _ctf_only)
    assert len(cs) == 6 and cs.quaternions is None and cs.shifts_px is None
    assert cs.pose_source is None and cs.ctf is not None
    cs = _cs_variant(tmp_path, shared_data, "2d.cs", _two_d)
    assert cs.quaternions is None and cs.pose_source == "alignments2D"
    np.testing.assert_allclose(cs.shifts_px, shifts)
    cs = _cs_variant(tmp_path, shared_data, "c0.cs", _class_0)
    assert cs.pose_source == "alignments_class_0"
    np.testing.assert_allclose(cs.quaternions, q)
    cs = _cs_variant(tmp_path, shared_data, "c01.cs", _classes_0_1)
    assert cs.pose_source == "alignments_class_*"
    np.testing.assert_allclose(cs.quaternions[1::2], q[1::2])
    inverse = q * [1, -1, -1, -1]  # the conjugate, already canonical (w >= 0)
    np.testing.assert_allclose(cs.quaternions[::2], inverse[::2], atol=1e-6)


def test_ctf_scale_factor_is_read_per_particle_or_per_group(tmp_path):
    data = pd.DataFrame(
        {
            "rlnDefocusU": [1e4, 2e4],
            "rlnCtfScalefactor": [0.5, 2.0],
            "rlnOpticsGroup": 1,
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnImagePixelSize": [1.5],
        }
    )
    np.testing.assert_array_equal(Particles(data, optics).ctf.scale, [0.5, 2.0])
    optics["rlnCtfScalefactor"] = 0.7
    no_column = Particles(data.drop(columns="rlnCtfScalefactor"), optics)
    np.testing.assert_array_equal(no_column.ctf.scale, [0.7, 0.7])
    default = Particles(data.drop(columns="rlnCtfScalefactor"), optics.iloc[:, :4])
    np.testing.assert_array_equal(default.ctf.scale, [1.0, 1.0])
