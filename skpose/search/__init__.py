"""Projection matching without learning: global search, local refinement, confidence.

The layer below the estimators (it imports neither scikit-learn nor skorch):

- :mod:`skpose.search.grid`: near-uniform grids over one asymmetric unit of SO(3)
  (:func:`so3_grid`).
- ``skpose.search._global``: exhaustive search over such a grid and a disk of
  translations (polar-Fourier correlations, exact CTF-aware NCC, bounded memory).
- ``skpose.search._local``: local refinement by a shrinking grid of rotations and
  translations (:class:`FourierScorer`, :func:`local_search`).
- :mod:`skpose.search.poses`: :class:`Poses` (quaternions, origins, confidence),
  :func:`refine` and :func:`pose_score`, the public entry points.

The estimator that runs the conventional pipeline (global search, then refinement) is
:class:`skpose.estimators.ProjectionMatcher`.

The algorithms (``skpose.search._global`` and ``skpose.search._local`` hold them):

**Global search.** Images and references meet in polar Fourier coordinates (rings
``1 .. r_max`` at the grid's in-plane angles), where an in-plane rotation is a cyclic
shift: correlations at all in-plane angles of one viewing direction are one circular
cross-correlation along the angle, computed for all images, trial translations and a
chunk of directions as two real matrix products (the second an inverse DFT as a
matrix). ``r_max = 1.5 / step`` cycles per box (radians; capped at Nyquist): the
detail a step resolves, so coarse grids correlate at coarse resolution. References
(one per direction, sampled straight from the map's padded 3-D transform) are
generated chunk by chunk and discarded; peak memory is bounded by a fixed block
(``skpose.search._global.BLOCK_BYTES``, 48 MiB), whatever the grid. Cost per image:
``S * D * (n_psi / 2 + 1) * (8 r_max + 4 n_psi)`` flops for ``S`` translations and
``D`` directions, growing as ``step^-4``.

**CTF.** For a real CTF ``c``, ``<I, c R> = <c I, R>``: the CTF-multiplied image is
correlated with plain references, and the norms ``||c R_psi||^2 =
sum c^2 |R(. - psi)|^2`` are themselves circular cross-correlations of ``c^2`` with
``|R|^2`` along the angle. Exact NCC against CTF-modulated references, without one
reference per particle.

**Local refinement.** Rounds of 27 rotations (a ``3 x 3 x 3`` grid of steps about the
image axes; before the last round, in-plane turns are read from the image's padded
transform so that only 9 slices are sampled; the last slices 19, corners left out)
times a window of translations, halving both steps each round, with the resolution
growing as the step shrinks. A quadratic in rotation and translation together (they
are coupled: on a smooth map a small tilt mimics a sub-pixel shift) fitted to each
round's scores moves the pose between grid points; poses that moved more than a step
are searched again at that step. Noiseless images made by
:func:`~skpose.imaging.projection.project`, from 10 degrees away, reach a median error
of a tenth of the final step or less (64 px, default 2 degrees: 0.04 degrees); images
of the same map projected otherwise (analytically) keep a floor of about 0.13 degrees
at 32-48 px, the interpolation error of the map's slices. Measured on 64 px images
from 10-15 degrees away, the search (before the quadratic moves, which cost about
10 % more time at the default step) reached the accuracy of 40-80 Adam steps of
gradient ascent through the differentiable projector in a tenth of the time on a CPU.

**Confidence.** ``score`` is the NCC at full resolution at the returned pose;
``margin`` is the global search's best NCC minus that of the best viewing direction
more than two steps away, symmetry-aware (the search's resolution), or, for
:func:`refine`, the NCC drop to rotations one cone away (a local measure). Junk
(pure-noise) images get low scores and margins.
"""

from skpose.search.grid import so3_grid
from skpose.search.poses import Poses, pose_score, refine

__all__ = ["Poses", "pose_score", "refine", "so3_grid"]
