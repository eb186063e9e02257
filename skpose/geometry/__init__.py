"""Geometry: rotations in every convention and point groups in RELION's settings.

The lowest layer of skpose (above the input checks of ``skpose._validation``):
:mod:`skpose.geometry.rotations` and :mod:`skpose.geometry.symmetry` import nothing
else from skpose.
"""

from skpose.geometry.rotations import (
    geodesic_distance,
    matrix_to_quat,
    quat_to_matrix,
    quat_to_relion_euler,
    random_quaternions,
    relion_euler_to_quat,
)
from skpose.geometry.symmetry import symmetry_group

__all__ = [
    "geodesic_distance",
    "matrix_to_quat",
    "quat_to_matrix",
    "quat_to_relion_euler",
    "random_quaternions",
    "relion_euler_to_quat",
    "symmetry_group",
]
