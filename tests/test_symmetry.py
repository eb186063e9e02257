"""Point groups in RELION's settings, symmetry-aware distances, asymmetric units."""

import itertools
import math

import numpy as np
import pytest
import torch

from skpose.geometry.rotations import (
    geodesic_distance,
    quat_conjugate,
    quat_multiply,
    quat_to_matrix,
    random_quaternions,
    relion_euler_to_quat,
)
from skpose.geometry.symmetry import (
    asymmetric_unit_mask,
    closest_symmetry_mate,
    group_order,
    reduce_to_asymmetric_unit,
    symmetry_aware_distance,
    symmetry_group,
    symmetry_matrices,
)

PHI = (1 + math.sqrt(5)) / 2
ORDERS = {
    "C1": 1,
    "C5": 5,
    "D1": 2,
    "D2": 4,
    "D7": 14,
    "T": 12,
    "O": 24,
    "I": 60,
    "I1": 60,
    "I2": 60,
    "I3": 60,
    "I4": 60,
}
GROUPS = list(ORDERS)
DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Angles (radians) that count as zero after float arithmetic, per dtype.
ANGLE_TOL = {torch.float32: 1e-3, torch.float64: 1e-9}

# RELION src/symmetries.cpp, SymList::fill_symmetry_class: "rot_axis fold x y z".
RELION_GENERATORS = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))],
    "I1": [
        (2, (1.0, 0.0, 0.0)),
        (5, (0.85065080702670, 0.0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0.0)),
    ],
    "I2": [
        (2, (0.0, 0.0, 1.0)),
        (5, (0.525731114, 0.0, 0.850650807)),
        (3, (0.0, 0.356822076, 0.934172364)),
    ],
    "I3": [
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
    "I4": [
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
}


def axis_angle_quat(axis, angle):
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    return torch.tensor([math.cos(angle / 2), *(math.sin(angle / 2) * axis)])


def contains(group, quat, atol=1e-6):
    """Whether each quaternion (..., 4) is in the group up to sign."""
    overlap = (quat[..., None, :] * group).sum(-1).abs().amax(-1)
    return overlap > 1 - atol


def cyclic_permutations(points):
    points = np.asarray(points, dtype=np.float64)
    return np.concatenate([np.roll(points, k, axis=1) for k in range(3)])


def signs(point):
    return [np.multiply(point, s) for s in itertools.product([1, -1], repeat=3)]


def icosahedron_222(first):
    """Cyclic permutations of (0, +-1, +-phi) (first=0) or (+-1, 0, +-phi) (first=1)."""
    base = (0.0, 1.0, PHI) if first == 0 else (1.0, 0.0, PHI)
    return np.unique(cyclic_permutations(signs(base)), axis=0)


def icosahedron_5_on_z(azimuth_deg):
    """5-fold vertices on +-z; the upper ring at azimuths azimuth_deg + 72 k."""
    azimuths = np.deg2rad(azimuth_deg + 72.0 * np.arange(5))
    ring = np.stack(
        [2 * np.cos(azimuths), 2 * np.sin(azimuths), np.ones(5)], axis=1
    ) / math.sqrt(5)
    return np.concatenate([[[0.0, 0.0, 1.0]], ring, -ring, [[0.0, 0.0, -1.0]]])


def polygon(n, apexes):
    angles = 2 * np.pi * np.arange(n) / n
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros(n)], axis=1)
    return np.concatenate([ring, np.asarray(apexes, dtype=np.float64).reshape(-1, 3)])


def tetrahedron_3_on_z():
    """Vertex on +z and one in the +y half of the yz plane (RELION's T setting)."""
    low = np.array([0.0, 2 * math.sqrt(2) / 3, -1 / 3])
    turn = quat_to_matrix(axis_angle_quat((0, 0, 1), 2 * np.pi / 3)).numpy()
    return np.stack([[0.0, 0.0, 1.0], low, turn @ low, turn @ turn @ low])


POLYHEDRA = {
    "C5": polygon(5, [0.0, 0.0, 1.0]),
    "D2": polygon(2, [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]),
    "D7": polygon(7, [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]),
    "T": tetrahedron_3_on_z(),
    "O": np.concatenate([np.eye(3), -np.eye(3), np.array(signs((1.0, 1.0, 1.0)))]),
    "I1": icosahedron_222(first=0),
    "I2": icosahedron_222(first=1),
    "I": icosahedron_222(first=1),
    "I3": icosahedron_5_on_z(180.0),
    "I4": icosahedron_5_on_z(0.0),
}


def maps_onto_itself(matrices, vertices):
    """Whether every matrix permutes the vertex set."""
    vertices = torch.as_tensor(vertices, dtype=matrices.dtype)
    images = torch.einsum("gij,vj->gvi", matrices, vertices)
    gaps = torch.cdist(images, vertices[None].expand(len(matrices), -1, -1))
    return bool((gaps.amin(-1) < 1e-6).all())


# --------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GROUPS)
def test_group_order(name):
    assert symmetry_group(name).shape == (ORDERS[name], 4)
    assert group_order(name) == ORDERS[name]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GROUPS)
def test_group_is_unit_canonical_identity_first(name, dtype, device):
    group = symmetry_group(name, dtype=dtype, device=device)
    assert group.dtype == dtype and group.device.type == device
    torch.testing.assert_close(
        torch.linalg.vector_norm(group, dim=-1),
        torch.ones(len(group), dtype=dtype, device=device),
    )
    assert (group[:, 0] >= 0).all()
    assert group[0].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", GROUPS)
def test_group_is_closed_without_duplicates(name):
    group = symmetry_group(name)
    products = quat_multiply(group[:, None], group[None])
    assert contains(group, products).all()
    overlap = (group @ group.T).abs() - torch.eye(len(group), dtype=group.dtype)
    assert overlap.max() < 1 - 1e-6


def test_names_are_case_insensitive_and_i_is_i2():
    torch.testing.assert_close(symmetry_group("c4"), symmetry_group("C4"))
    torch.testing.assert_close(symmetry_group("d2"), symmetry_group("D2"))
    torch.testing.assert_close(symmetry_group("i"), symmetry_group("I2"))


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_cn_turns_about_z(n):
    group = symmetry_group(f"C{n}")
    assert (group[:, 1:3] == 0).all()
    assert contains(group, axis_angle_quat((0, 0, 1), 2 * math.pi / n))


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_dn_adds_a_two_fold_about_x(n):
    group = symmetry_group(f"D{n}")
    assert contains(group, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert contains(group, symmetry_group(f"C{n}")).all()


@pytest.mark.parametrize("name", list(RELION_GENERATORS))
def test_relion_generators_are_in_the_group(name):
    group = symmetry_group(name)
    for fold, axis in RELION_GENERATORS[name]:
        assert contains(group, axis_angle_quat(axis, 2 * math.pi / fold))


@pytest.mark.parametrize("name", list(POLYHEDRA))
def test_polyhedron_is_invariant(name):
    assert maps_onto_itself(symmetry_matrices(name), POLYHEDRA[name])


@pytest.mark.parametrize(("name", "other"), [("I1", "I2"), ("I2", "I1"), ("I3", "I4")])
def test_icosahedral_settings_differ(name, other):
    assert not maps_onto_itself(symmetry_matrices(name), POLYHEDRA[other])


def test_cn_does_not_flip_its_pyramid():
    assert not maps_onto_itself(symmetry_matrices("D5"), POLYHEDRA["C5"])


def test_i2_is_i1_turned_90_degrees_about_z():
    turn = axis_angle_quat((0, 0, 1), math.pi / 2)
    conjugated = quat_multiply(
        quat_multiply(turn, symmetry_group("I1")), quat_conjugate(turn)
    )
    assert contains(symmetry_group("I2"), conjugated).all()


@pytest.mark.parametrize(
    ("name", "five_fold_on_z"),
    [("I1", False), ("I2", False), ("I3", True), ("I4", True)],
)
def test_five_fold_on_z_only_in_5_2_settings(name, five_fold_on_z):
    fifth = axis_angle_quat((0, 0, 1), 2 * math.pi / 5)
    assert bool(contains(symmetry_group(name), fifth)) == five_fold_on_z


@pytest.mark.parametrize(
    ("name", "axes"),
    [("I1", "xyz"), ("I2", "xyz"), ("I3", "y"), ("I4", "y"), ("T", "")],
)
def test_two_folds_on_coordinate_axes(name, axes):
    group = symmetry_group(name)
    for index, axis in enumerate("xyz"):
        half_turn = torch.zeros(4, dtype=torch.float64)
        half_turn[1 + index] = 1.0
        assert bool(contains(group, half_turn)) == (axis in axes)


def test_symmetry_matrices_match_quaternions():
    matrices = symmetry_matrices("O", dtype=torch.float32)
    assert matrices.shape == (24, 3, 3) and matrices.dtype == torch.float32
    torch.testing.assert_close(
        matrices, quat_to_matrix(symmetry_group("O", dtype=torch.float32))
    )


# --------------------------------------------------------------------------------------
# Distances and mates
# --------------------------------------------------------------------------------------


def projected_points(quat, points):
    """Image positions (x, y) of points p of the volume projected at R: (R p)_xy."""
    points = torch.as_tensor(points, dtype=quat.dtype)
    return torch.einsum("...ij,vj->...vi", quat_to_matrix(quat), points)[..., :2]


@pytest.mark.parametrize("name", ["C4", "D7", "T", "O", "I2", "I3"])
def test_right_mates_give_the_same_projection(name):
    # A volume made of the orbit {S p0} of a generic point is invariant under G;
    # img(x) = sum_z V(R^T x) puts each point p at (R p)_xy.
    points = symmetry_matrices(name) @ torch.tensor(
        [0.3, -0.5, 0.8], dtype=torch.float64
    )
    quat = random_quaternions(1, 12)[0]
    group = symmetry_group(name)
    image = projected_points(quat, points)
    right = projected_points(quat_multiply(quat, group), points)
    left = projected_points(quat_multiply(group, quat), points)
    assert (torch.cdist(right, image).amin(-1) < 1e-6).all()
    assert (torch.cdist(left[1:], image).amin(-1) > 1e-3).any(-1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["C5", "D7", "T", "O", "I3"])
def test_distance_is_zero_between_mates(name, dtype):
    quat = random_quaternions(8, 0, dtype=dtype)
    group = symmetry_group(name, dtype=dtype)
    mates = quat_multiply(quat[:, None], group)
    distance = symmetry_aware_distance(quat[:, None], mates, name)
    assert distance.shape == (8, len(group)) and distance.dtype == dtype
    assert distance.max() < ANGLE_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["C1", "C5", "D2", "T", "O", "I"])
def test_distance_is_symmetric_and_at_most_geodesic(name, dtype):
    quat1 = random_quaternions(200, 1, dtype=dtype)
    quat2 = random_quaternions(200, 2, dtype=dtype)
    forward = symmetry_aware_distance(quat1, quat2, name)
    torch.testing.assert_close(forward, symmetry_aware_distance(quat2, quat1, name))
    plain = geodesic_distance(quat1, quat2)
    assert (forward <= plain + ANGLE_TOL[dtype]).all()
    if name == "C1":
        torch.testing.assert_close(forward, plain)


def test_distance_ignores_mates_on_both_sides():
    quat1, quat2 = random_quaternions(50, 3), random_quaternions(50, 4)
    group = symmetry_group("D7")
    moved1 = quat_multiply(quat1, group[torch.arange(50) % 14])
    moved2 = quat_multiply(quat2, group[(3 * torch.arange(50)) % 14])
    torch.testing.assert_close(
        symmetry_aware_distance(moved1, moved2, "D7"),
        symmetry_aware_distance(quat1, quat2, "D7"),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["C4", "D2", "O", "I1"])
def test_closest_mate_is_a_mate_at_the_symmetric_distance(name, dtype):
    pred = random_quaternions(100, 5, dtype=dtype)
    ref = random_quaternions(100, 6, dtype=dtype)
    mate = closest_symmetry_mate(pred, ref, name)
    assert mate.shape == (100, 4) and (mate[:, 0] >= 0).all()
    assert symmetry_aware_distance(mate, pred, name).max() < ANGLE_TOL[dtype]
    torch.testing.assert_close(
        geodesic_distance(mate, ref), symmetry_aware_distance(pred, ref, name)
    )


def test_closest_mate_broadcasts_and_accepts_numpy():
    pred = random_quaternions(6, 7).numpy()
    mate = closest_symmetry_mate(pred, np.array([1.0, 0.0, 0.0, 0.0]), "T")
    assert isinstance(mate, np.ndarray) and mate.shape == (6, 4)


# --------------------------------------------------------------------------------------
# Asymmetric unit
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["C1", "C4", "D2", "D7", "T", "O", "I"])
def test_asymmetric_unit_holds_1_over_g_of_uniform_rotations(name):
    n = 20000
    kept = asymmetric_unit_mask(random_quaternions(n, 8), name).double().mean()
    expected = 1 / group_order(name)
    # Four binomial standard deviations: 1-3 % for C4 and D2, ~20 % for I.
    assert abs(kept - expected) <= 4 * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GROUPS)
def test_asymmetric_unit_keeps_one_mate_per_orbit(name, dtype):
    quat = random_quaternions(100, 9, dtype=dtype)
    mates = quat_multiply(quat[:, None], symmetry_group(name, dtype=dtype))
    assert (asymmetric_unit_mask(mates, name).sum(-1) == 1).all()


@pytest.mark.parametrize("name", GROUPS)
def test_asymmetric_unit_keeps_one_mate_of_special_rotations(name):
    # Views along axes and in planes of symmetry: ties in the projection direction.
    grid = torch.tensor(
        list(itertools.product([0, 45, 90, 180], [0, 54.7356103, 90, 180], [0, 90])),
        dtype=torch.float64,
    )
    quat = relion_euler_to_quat(grid)
    mates = quat_multiply(quat[:, None], symmetry_group(name))
    assert (asymmetric_unit_mask(mates, name).sum(-1) == 1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["C1", "C4", "D7", "T", "O", "I2", "I4"])
def test_reduce_gives_the_mate_in_the_asymmetric_unit(name, dtype):
    quat = random_quaternions(300, 10, dtype=dtype)
    reduced = reduce_to_asymmetric_unit(quat, name)
    assert reduced.shape == quat.shape and reduced.dtype == dtype
    assert (reduced[:, 0] >= 0).all()
    assert asymmetric_unit_mask(reduced, name).all()
    assert symmetry_aware_distance(reduced, quat, name).max() < ANGLE_TOL[dtype]
    # Every mate reduces to the same rotation.
    group = symmetry_group(name, dtype=dtype)
    again = reduce_to_asymmetric_unit(quat_multiply(quat, group[-1]), name)
    assert geodesic_distance(again, reduced).max() < ANGLE_TOL[dtype]


def test_reduce_accepts_numpy_and_leading_dimensions():
    quat = random_quaternions(12, 11).numpy().reshape(3, 4, 4)
    reduced = reduce_to_asymmetric_unit(quat, "D2")
    assert isinstance(reduced, np.ndarray) and reduced.shape == (3, 4, 4)
    assert asymmetric_unit_mask(quat, "D2").shape == (3, 4)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["D0", "C0", "X3", "", "I5", "CI", "D2h", "C-1", "Oh"])
def test_unknown_symmetry_raises(name):
    with pytest.raises(ValueError, match=r"Expected 'symmetry' to be 'Cn' or 'Dn'"):
        symmetry_group(name)
    with pytest.raises(ValueError, match="'symmetry'"):
        group_order(name)
    with pytest.raises(ValueError, match="'symmetry'"):
        symmetry_aware_distance(random_quaternions(2), random_quaternions(2), name)


@pytest.mark.parametrize("name", [None, 3, 2.0])
def test_non_string_symmetry_raises(name):
    with pytest.raises(TypeError, match="Expected 'symmetry' to be a string"):
        symmetry_group(name)
    with pytest.raises(TypeError, match="'symmetry'"):
        asymmetric_unit_mask(random_quaternions(2), name)


def test_bad_quaternions_raise():
    with pytest.raises(ValueError, match="'quat'"):
        asymmetric_unit_mask(np.zeros((3, 3)), "C2")
    with pytest.raises(ValueError, match="'quat_ref'"):
        closest_symmetry_mate(random_quaternions(2), np.zeros((2, 4)), "C2")
