"""skpose: cryo-EM particle orientations from a neural network, scikit-learn style.

The geometry core (every convention is in ``docs/conventions.md``):

- :mod:`skpose.geometry.rotations`: quaternions ``(w, x, y, z)``, RELION Euler angles,
  axis-angle and cryoSPARC poses.
- :mod:`skpose.geometry.symmetry`: point groups in RELION's settings.
- :mod:`skpose.imaging.projection`: differentiable Fourier-slice projector (RELION's
  convention) and a real-space reference.
- :mod:`skpose.imaging.ctf`: RELION's CTF.
- :mod:`skpose.io`, :mod:`skpose.imaging.preprocess`: MRC, STAR, cryoSPARC;
  rescaling and normalisation.
- :mod:`skpose.simulate`, :mod:`skpose.metrics`: simulated particles, reprojection RMSE
  and angular errors.

Reconstruction and resolution: :mod:`skpose.imaging.reconstruction`. Optional
extras: :mod:`skpose.plotting` (matplotlib) and :mod:`skpose.imaging.models` (gemmi),
imported on use.

The estimators (:mod:`skpose.estimators`): :class:`OrientationEstimator`, the
paper's network (:mod:`skpose.learn.network`) trained with its losses
(:mod:`skpose.learn.losses`) through skorch, and :class:`ProjectionMatcher`, the
conventional pipeline (:mod:`skpose.search`: global search, then refinement).
:func:`predict_particles` (:mod:`skpose.distributed`) runs either over a whole STAR
file, chunk by chunk, here or on a dask cluster. :func:`set_threads` and
:func:`available_cpus`: torch's thread count (importing skpose makes idle OpenMP threads
sleep rather than spin, see :mod:`skpose._threads`).
"""

from skpose import _compat
from skpose._threads import available_cpus, set_threads  # first: before torch loads
from skpose.distributed import predict_particles
from skpose.estimators import OrientationEstimator, ProjectionMatcher
from skpose.geometry.rotations import (
    geodesic_distance,
    matrix_to_quat,
    quat_to_matrix,
    quat_to_relion_euler,
    random_quaternions,
    relion_euler_to_quat,
)
from skpose.geometry.symmetry import symmetry_group
from skpose.imaging.ctf import CTFParams, compute_ctf
from skpose.imaging.preprocess import (
    fourier_crop,
    fourier_pad,
    fourier_resize,
    normalize_images,
)
from skpose.imaging.projection import FourierProjector, project, project_real_space
from skpose.imaging.reconstruction import (
    BackProjector,
    fsc,
    fsc_resolution,
    half_maps,
    reconstruct,
    resolution_at,
)
from skpose.io import (
    Particles,
    read_cryosparc,
    read_images,
    read_particles,
    read_volume,
    write_images,
    write_particles,
    write_volume,
)
from skpose.metrics import (
    angular_error,
    error_summary,
    reprojection_rmse,
    reprojection_scorer,
)
from skpose.search import Poses, pose_score, refine, so3_grid
from skpose.simulate import (
    SimulatedParticles,
    phantom_volume,
    simulate_particles,
    symmetrize_volume,
)

__version__ = "0.1.0.dev0"

_compat.install()

__all__ = [
    "BackProjector",
    "CTFParams",
    "FourierProjector",
    "OrientationEstimator",
    "Particles",
    "Poses",
    "ProjectionMatcher",
    "SimulatedParticles",
    "angular_error",
    "available_cpus",
    "compute_ctf",
    "error_summary",
    "fourier_crop",
    "fourier_pad",
    "fourier_resize",
    "fsc",
    "fsc_resolution",
    "geodesic_distance",
    "half_maps",
    "matrix_to_quat",
    "normalize_images",
    "phantom_volume",
    "pose_score",
    "predict_particles",
    "project",
    "project_real_space",
    "quat_to_matrix",
    "quat_to_relion_euler",
    "random_quaternions",
    "read_cryosparc",
    "read_images",
    "read_particles",
    "read_volume",
    "reconstruct",
    "refine",
    "relion_euler_to_quat",
    "reprojection_rmse",
    "reprojection_scorer",
    "resolution_at",
    "set_threads",
    "simulate_particles",
    "so3_grid",
    "symmetrize_volume",
    "symmetry_group",
    "write_images",
    "write_particles",
    "write_volume",
]
