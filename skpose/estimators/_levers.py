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
"""

from __future__ import annotations

import numpy as np
import torch

from skpose.imaging.preprocess import fourier_resize
from skpose.learn._simulated import MapSimulator, estimate_noise
from skpose.search import _fallback
from skpose.search.poses import Poses, refine

CALIBRATION_FRACTION = 0.1
CALIBRATION_MIN, CALIBRATION_MAX = 20, 500
# Labelled particles used to measure the data's SNR (enough for a pooled variance).
NOISE_SAMPLE = 512
# The network's refinement and the fallback search end at the same final step.
FINAL_STEP_DEG = 2.0


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
    q_net = est.net_.predict_quaternions(est._network_input(X, ctf), False)
    net_err = angular_error(q, q_net, symmetry)
    cone = (
        _fallback.auto_cone_deg(net_err)
        if est.refine_cone_deg == "auto"
        else float(est.refine_cone_deg)
    )
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
    """The estimator's refinement of poses ``q`` (numpy :class:`Poses`)."""
    device = est.net_.device
    volume = torch.as_tensor(est._full_volume(), device=device)
    n = X.shape[0]
    poses = refine(
        volume,
        X.to(device),
        q,
        np.zeros((n, 2)) if shifts is None else shifts,
        ctf=ctf,
        cone_deg=cone_deg,
        final_step_deg=FINAL_STEP_DEG,
        max_shift_px=float(getattr(est, "refine_shift_px", 4.0)),
        symmetry=est.symmetry or "C1",
    )
    return Poses(*(t.cpu().numpy() for t in poses))


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
        refine_step_deg=FINAL_STEP_DEG,
        device=str(est.net_.device),
    ).fit(X[:1].cpu())
    rows_ctf = None if ctf is None else ctf[rows]
    searched = matcher.predict_poses(X[rows].cpu(), ctf=rows_ctf)
    return _fallback.merge(poses, searched, rows), mask
