"""What :class:`OrientationEstimator` adds around the paper's network (all opt-in).

- ``simulate_from_map``: a fraction of every training batch is replaced by particles
  simulated on the fly from the map, with the labelled particles' CTFs, origins and
  measured SNR (:mod:`skpose.learn._simulated`).
- ``refine_cone_deg="auto"`` and ``fallback="search"``: ``fit`` holds out
  :data:`CALIBRATION_FRACTION` of the labelled particles (at least
  :data:`CALIBRATION_MIN`, at most :data:`CALIBRATION_MAX`), trains on the rest, and
  measures on the held-out ones the network's errors (which set the cone) and the
  refined confidence of right and wrong poses (which sets the fallback threshold,
  :mod:`skpose.search._fallback`). At predict time particles below the threshold go
  through :class:`ProjectionMatcher` (global search at ``fallback_step_deg`` +
  refinement) and keep whichever pose scores higher.
- ``hypotheses``: the network also sees each particle turned in-plane by quarter
  turns (exact: a turned projection is the projection of the turned pose), each
  answer is turned back, and the one whose projection correlates best with the
  image (at the refinement's second-round resolution) is kept
  (:func:`turned_hypotheses`, :func:`best_hypotheses`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from skpose.geometry.rotations import axis_angle_to_quat, quat_canonical, quat_multiply
from skpose.imaging.preprocess import fourier_resize
from skpose.learn._simulated import MapSimulator, estimate_noise
from skpose.search import _fallback
from skpose.search._local import best_candidates
from skpose.search.poses import Poses

CALIBRATION_FRACTION = 0.1
CALIBRATION_MIN, CALIBRATION_MAX = 20, 500
# Labelled particles used to measure the data's SNR (enough for a pooled variance).
NOISE_SAMPLE = 512


def needs_calibration(est) -> bool:
    """Whether ``fit`` must hold out labelled particles."""
    return est.refine_cone_deg == "auto" or est.fallback == "search"


def calibration_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows and held-out rows (sorted) of ``n`` labelled particles."""
    k = int(np.clip(round(CALIBRATION_FRACTION * n), CALIBRATION_MIN, CALIBRATION_MAX))
    if n < 2 * k:  # too few to spare: calibrate on the training set (optimistic)
        rows = np.arange(n)
        return rows, rows
    order = np.random.default_rng(seed + 2).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


def attach_simulator(est, X: torch.Tensor, q, shifts_small, ctf) -> None:
    """Measure the labelled images' noise; give ``est.net_`` a :class:`MapSimulator`.

    ``X`` are the raw labelled images at the input box, ``shifts_small`` their
    origins in network pixels. Sets ``est.simulated_noise_``.
    """
    size = est.image_size_
    scale = size / X.shape[-1]
    ctf_small = None if ctf is None else ctf.resampled(scale)
    rng = np.random.default_rng(est._seed() + 1)
    rows = np.sort(rng.permutation(len(q))[:NOISE_SAMPLE])
    sample = X[rows] if X.shape[-1] == size else fourier_resize(X[rows], size)
    noise = estimate_noise(
        est.volume_,
        sample,
        q[rows],
        shifts_small[rows],
        None if ctf_small is None else ctf_small[rows],
    )
    est.simulated_noise_ = noise
    est.net_.simulator = MapSimulator(est.volume_, noise, shifts_small, ctf_small, rng)


def calibrate(est, X: torch.Tensor, q, ctf) -> None:
    """Set ``refine_cone_deg_`` and ``fallback_threshold_`` from held-out particles.

    Also ``calibration_``: a dict with the held-out network and refined errors
    (degrees), the refined scores, the cone and the threshold.
    """
    from skpose.metrics import angular_error

    symmetry = est.symmetry or "C1"
    q_net = est._answers(X, X, np.zeros((len(q), 2)), ctf)
    net_err = angular_error(q, q_net, symmetry)
    auto = est.refine_cone_deg == "auto"
    cone = _fallback.auto_cone_deg(net_err) if auto else est._cone_deg()
    poses = refine_poses(est, X, q_net, None, ctf, cone)
    ref_err = angular_error(q, poses.quaternions, symmetry)
    threshold = _fallback.fallback_threshold(poses.score, ref_err)
    est.refine_cone_deg_, est.fallback_threshold_ = cone, threshold
    est.calibration_ = {
        "network_errors_deg": net_err,
        "refined_errors_deg": ref_err,
        "scores": poses.score,
        "cone_deg": cone,
        "threshold": threshold,
    }


def refine_poses(est, X: torch.Tensor, q, shifts, ctf, cone_deg: float) -> Poses:
    """The estimator's refinement of poses ``q``, scored at the full box (numpy)."""
    device = est.net_.device
    x = X.to(device)
    projector = est._full_projector(device)
    start = np.zeros((len(q), 2)) if shifts is None else shifts
    q, start, _, margin = est._refined(projector, x, q, start, ctf, cone_deg=cone_deg)
    return est._scored(projector, x, q, start, margin, ctf)


def fall_back(est, X: torch.Tensor, ctf, poses: Poses) -> tuple[Poses, np.ndarray]:
    """Search again the particles that score below the threshold.

    Returns the merged poses and the boolean mask of the particles searched.
    """
    from skpose.estimators.matcher import ProjectionMatcher

    mask = poses.score < est.fallback_threshold_
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return poses, mask
    matcher = ProjectionMatcher(
        est._full_volume(),
        angular_step_deg=float(est.fallback_step_deg),
        max_shift_px=float(est.refine_shift_px),
        symmetry=est.symmetry or "C1",
        refine_step_deg=float(est.refine_step_deg),
        device=str(est.net_.device),
    ).fit(X[:1].cpu())
    rows_ctf = None if ctf is None else ctf[rows]
    searched = matcher.predict_poses(X[rows].cpu(), ctf=rows_ctf)
    return _fallback.merge(poses, searched, rows), mask


def quarter_turned(images, turns: int):
    """``images`` ``(..., N, N)`` turned by ``turns`` quarter turns about pixel N/2.

    ``torch.rot90`` of the ``[y, x]`` array turns about its middle, ``(N - 1) / 2``;
    a one-pixel roll along the axes it moved puts the centre back at ``N / 2``. The
    turned projection of a pose ``R`` is then exactly the projection of
    ``R_z(-turns * 90 degrees) R``. Works on numpy arrays and tensors (a tensor
    comes back).
    """
    x = torch.as_tensor(images)
    j = turns % 4
    roll = (int(j in (1, 2)), int(j in (2, 3)))
    return torch.roll(torch.rot90(x, j, dims=(-2, -1)), roll, dims=(-2, -1))


def turned_back(quats: np.ndarray, turns: int) -> np.ndarray:
    """Poses ``(n, 4)`` of quarter-turned images turned back: ``R_z(turns 90) R``."""
    q = torch.as_tensor(quats, dtype=torch.float64)
    axis = torch.tensor([0.0, 0.0, turns * math.pi / 2], dtype=torch.float64)
    return quat_canonical(quat_multiply(axis_angle_to_quat(axis).expand_as(q), q))


def turned_hypotheses(net, inp, k: int, verbose: bool, precision, compile):
    """The network's answers ``(n, k, 4)`` for ``k`` (1, 2 or 4) turned copies.

    ``inp`` is the network input; copy ``j`` is turned ``j * 4 / k`` quarter turns
    and its answer turned back, so every column is a hypothesis for the same pose.
    """
    out = []
    for turns in range(0, 4, 4 // k):
        x = quarter_turned(inp, turns).contiguous()
        out.append(
            turned_back(net.predict_quaternions(x, verbose, precision, compile), turns)
        )
    return torch.stack(out, dim=1).numpy()


def best_hypotheses(
    est, X: torch.Tensor, hyps: np.ndarray, start, ctf, projector=None
) -> np.ndarray:
    """Of hypotheses ``hyps`` ``(n, k, 4)``, each image's best (numpy ``(n, 4)``).

    Scored by :func:`skpose.search._local.best_candidates` on the images ``X`` at the
    full box with origins ``start`` (pixels), at the resolution of the refinement's
    second round (a quarter of the cone: 15 degrees for cone 60), with ``projector``
    (the estimator's full-box projector, built here when None).
    """
    # fit's calibration runs before a cone "auto" is known: the default cone then.
    pending = est.refine_cone_deg == "auto" and not hasattr(est, "refine_cone_deg_")
    cone = est._default_cone_deg() if pending else est._cone_deg()
    device = est.net_.device
    x = X.to(device)
    like = {"dtype": x.dtype, "device": device}
    with torch.no_grad():
        index = best_candidates(
            est._full_projector(device) if projector is None else projector,
            x,
            torch.as_tensor(hyps, **like),
            torch.as_tensor(start, **like),
            ctf,
            step_deg=cone / 4,
        )
    return hyps[np.arange(len(hyps)), index.cpu().numpy()]
