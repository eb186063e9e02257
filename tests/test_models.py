"""Maps from atomic models: axes, centring, low-pass, and beta-galactosidase's D2."""

from __future__ import annotations

import sys

import numpy as np
import pytest

gemmi = pytest.importorskip("gemmi")

from skpose.geometry.rotations import quat_to_matrix, random_quaternions  # noqa: E402
from skpose.imaging.models import volume_from_model  # noqa: E402


def _corr(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _turn_180(vol, axis: str):
    """The map turned 180 degrees about x, y or z through voxel N // 2 (even N)."""
    axes = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}[axis]  # the two axes that flip
    return np.roll(np.flip(vol, axes), 1, axes)


def _centre_of_mass_px(vol) -> np.ndarray:
    """Centre of mass (x, y, z) in voxels from N // 2."""
    r = np.arange(vol.shape[0]) - vol.shape[0] // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return np.array([(c * vol).sum() for c in (x, y, z)]) / vol.sum()


def _write_pdb(path, atoms) -> None:
    """A PDB file of single-atom residues: ``atoms`` = [(element, x, y, z), ...]."""
    lines = [
        f"HETATM{i:5d} {el:<3s}  UNK A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
        f"  1.00 20.00          {el:>2s}"
        for i, (el, x, y, z) in enumerate(atoms, start=1)
    ]
    path.write_text("\n".join([*lines, "END", ""]))


@pytest.fixture(scope="module")
def bgal(shared_data):
    return shared_data / "maps" / "5a1a.cif"


@pytest.fixture(scope="module")
def bgal_turned(bgal, tmp_path_factory):
    """beta-galactosidase turned by a random rotation: D2 axes off x, y and z."""
    st = gemmi.read_structure(str(bgal))
    rot = quat_to_matrix(random_quaternions(1, random_state=3)[0]).numpy()
    st[0].transform_pos_and_adp(
        gemmi.Transform(gemmi.Mat33(rot.tolist()), gemmi.Vec3(0, 0, 0))
    )
    path = tmp_path_factory.mktemp("models") / "5a1a_turned.pdb"
    st.write_pdb(str(path))
    return path


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_model_x_is_the_last_axis(tmp_path, axis):
    n, p = 32, 2.0
    pos = np.full(3, (n // 2) * p)
    pos[axis] += 5 * p  # 5 voxels along +x, +y or +z
    _write_pdb(tmp_path / "one.pdb", [("C", *pos)])
    vol, apix = volume_from_model(
        tmp_path / "one.pdb", box_size=n, pixel_size_angstrom=p, center=False
    )
    expected = [n // 2] * 3
    expected[2 - axis] += 5  # [z, y, x]
    assert apix == p
    assert np.unravel_index(vol.argmax(), vol.shape) == tuple(expected)


def test_center_puts_centre_of_mass_at_box_centre(tmp_path):
    # A sulfur and a carbon 20 A apart: the centre of mass sits nearer the sulfur.
    _write_pdb(tmp_path / "two.pdb", [("S", 3.0, 7.0, 11.0), ("C", 23.0, 7.0, 11.0)])
    vol, _ = volume_from_model(
        tmp_path / "two.pdb", box_size=48, pixel_size_angstrom=1.0
    )
    s_peak = np.unravel_index(vol.argmax(), vol.shape)
    com_x = (32.06 * 0 + 12.011 * 20) / (32.06 + 12.011)  # from the sulfur, in A
    assert s_peak == (24, 24, round(24 - com_x))
    # The carbon 20 A = 20 voxels further along +x: the second-highest peak.
    c_peak = vol[24, 24, s_peak[2] + 20]
    assert c_peak == vol[24, 24, s_peak[2] + 15 :].max() > 0


def test_bgal_map_is_centred_nonnegative_and_d2(bgal):
    vol, apix = volume_from_model(bgal, box_size=64, pixel_size_angstrom=3.5)
    assert vol.shape == (64, 64, 64) and vol.dtype == np.float32 and apix == 3.5
    assert vol.min() >= 0 and vol.max() > 0
    assert np.abs(_centre_of_mass_px(vol)).max() < 1.0
    # The deposited frame of 5a1a is already a D2 setting (2-folds on x, y, z).
    for axis in "xyz":
        assert _corr(vol, _turn_180(vol, axis)) > 0.999


def test_align_to_symmetry_recovers_d2_setting(bgal, bgal_turned):
    kwargs = {"box_size": 64, "pixel_size_angstrom": 3.5}
    turned, _ = volume_from_model(bgal_turned, **kwargs)
    aligned, _ = volume_from_model(bgal_turned, align_to_symmetry=True, **kwargs)
    reference, _ = volume_from_model(bgal, align_to_symmetry=True, **kwargs)
    # Measured (x, y, z): 0.42, 0.43, 0.63 before alignment; 1.000000 after, and
    # 1.000000 against skpose.simulate.symmetrize_volume(aligned, "D2").
    for axis in "xyz":
        assert _corr(turned, _turn_180(turned, axis)) < 0.7
        assert _corr(aligned, _turn_180(aligned, axis)) > 0.99
    assert np.abs(_centre_of_mass_px(aligned)).max() < 1.0
    # The same map whatever the model's starting orientation, up to a D2 operator.
    best = max(
        _corr(reference, a) for a in [aligned, *(_turn_180(aligned, c) for c in "xyz")]
    )
    assert best > 0.99


def test_resolution_is_gaussian_lowpass(bgal):
    """The transforms at two resolutions differ by exp(-s^2 (d2^2 - d1^2))."""
    n, p, d1, d2 = 64, 3.5, 8.0, 14.0
    v1, _ = volume_from_model(
        bgal, box_size=n, pixel_size_angstrom=p, resolution_angstrom=d1
    )
    v2, _ = volume_from_model(
        bgal, box_size=n, pixel_size_angstrom=p, resolution_angstrom=d2
    )
    assert v2.max() < v1.max()
    f1, f2 = np.abs(np.fft.rfftn(v1)), np.abs(np.fft.rfftn(v2))
    s = np.fft.fftfreq(n, d=p)
    sx = np.fft.rfftfreq(n, d=p)
    s2 = s[:, None, None] ** 2 + s[None, :, None] ** 2 + sx[None, None, :] ** 2
    for shell in (0.02, 0.04, 0.06, 0.08):  # 1/A, below Nyquist (0.143)
        sel = np.abs(np.sqrt(s2) - shell) < 0.004
        measured = f2[sel].sum() / f1[sel].sum()
        expected = np.exp(-(shell**2) * (d2**2 - d1**2))
        assert measured == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"box_size": 1}, "'box_size' to be an integer >= 2, got 1"),
        ({"box_size": 32.0}, "'box_size' to be an integer"),
        ({"pixel_size_angstrom": -1.0}, "'pixel_size_angstrom' to be a number > 0"),
        ({"pixel_size_angstrom": "a"}, "'pixel_size_angstrom' to be a number > 0"),
        (
            {"resolution_angstrom": 3.0},
            "'resolution_angstrom' to be at least the Nyquist",
        ),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    _write_pdb(tmp_path / "one.pdb", [("C", 0.0, 0.0, 0.0)])
    args = {"box_size": 32, "pixel_size_angstrom": 2.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        volume_from_model(tmp_path / "one.pdb", **args)


def test_model_outside_box_raises(bgal, tmp_path):
    with pytest.raises(ValueError, match=r"outside the 64 A box: increase 'box_size'"):
        volume_from_model(bgal, box_size=32, pixel_size_angstrom=2.0)
    _write_pdb(tmp_path / "far.pdb", [("C", -5.0, 0.0, 0.0)])
    with pytest.raises(ValueError, match="outside the"):
        volume_from_model(
            tmp_path / "far.pdb", box_size=32, pixel_size_angstrom=2.0, center=False
        )


def test_unreadable_file_raises(tmp_path):
    (tmp_path / "empty.pdb").write_text("REMARK nothing here\nEND\n")
    with pytest.raises(ValueError, match="not a readable PDB/mmCIF model"):
        volume_from_model(tmp_path / "empty.pdb", box_size=8, pixel_size_angstrom=1.0)
    (tmp_path / "bad.cif").write_text("data_x\nloop_\n_atom_site.id\n")
    with pytest.raises(ValueError, match=r"bad\.cif' is not a readable"):
        volume_from_model(tmp_path / "bad.cif", box_size=8, pixel_size_angstrom=1.0)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.cif"):
        volume_from_model(
            tmp_path / "missing.cif", box_size=32, pixel_size_angstrom=2.0
        )


def test_missing_gemmi_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemmi", None)
    with pytest.raises(ImportError, match=r"pip install skpose\[models\]"):
        volume_from_model(tmp_path / "x.pdb", box_size=8, pixel_size_angstrom=1.0)
