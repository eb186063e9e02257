"""Training losses of the paper (eqs. 12, 14, 15) and a symmetry-aware QD loss.

- :func:`qd_loss` (eq. 12): ``1 - <q_pred, q_true>^2``, cheap and sign-invariant
  (``q`` and ``-q`` score alike) but blind to the particle's symmetry.
- :func:`symmetric_qd_loss` (our addition): the minimum of the QD loss over the
  symmetry mates ``q_true * s``, for users who know their point group.
- :func:`reprojection_l1_loss` (eq. 14): the mean absolute difference between the
  projections at the predicted and the true orientation (same shifts, no CTF or noise),
  through the differentiable projector. Symmetry mates project alike, so it does not
  penalise them: it handles symmetric particles without knowing the group.
- :func:`weighted_loss` (eq. 15): ``w * QD + (1 - w) * reprojection``.

**Scale of the reprojection term.** METHOD.md's trials showed that the term's raw scale
decides what ``w`` means. skpose divides the mean absolute difference by ``scale``,
which the estimator sets to the mean absolute deviation between projections at two
independent random orientations (see :func:`reprojection_scale`): the term is then ~1
for a random guess, like the QD loss (whose mean over random rotations is 3/4), and
``w`` carries over between maps, box sizes and intensity scales.
"""

from __future__ import annotations

import torch

from skpose.geometry.rotations import quat_multiply, random_quaternions
from skpose.geometry.symmetry import symmetry_group
from skpose.imaging.projection import FourierProjector

__all__ = [
    "qd_loss",
    "reprojection_l1_loss",
    "reprojection_scale",
    "symmetric_qd_loss",
    "weighted_loss",
]


def qd_loss(q_pred: torch.Tensor, q_true: torch.Tensor) -> torch.Tensor:
    """Quaternion-distance loss (paper eq. 12), averaged over the batch.

    Parameters
    ----------
    q_pred, q_true : torch.Tensor of shape (n, 4)
        Unit quaternions ``(w, x, y, z)``.

    Returns
    -------
    torch.Tensor, scalar
        ``mean(1 - <q_pred, q_true>^2)``, in [0, 1].
    """
    dot = (q_pred * q_true.to(q_pred.dtype)).sum(dim=-1)
    return (1 - dot * dot).mean()


def symmetric_qd_loss(
    q_pred: torch.Tensor, q_true: torch.Tensor, symmetry: str
) -> torch.Tensor:
    """QD loss to the nearest symmetry mate ``q_true * s`` (our addition).

    Parameters
    ----------
    q_pred, q_true : torch.Tensor of shape (n, 4)
        Unit quaternions.
    symmetry : str
        Point group (see :func:`skpose.geometry.symmetry.symmetry_group`).

    Returns
    -------
    torch.Tensor, scalar
    """
    group = symmetry_group(symmetry, dtype=q_pred.dtype, device=q_pred.device)
    mates = quat_multiply(q_true.to(q_pred.dtype)[:, None, :], group[None])  # (n, G, 4)
    dot = (q_pred[:, None, :] * mates).sum(dim=-1)
    return (1 - dot * dot).min(dim=1).values.mean()


def reprojection_l1_loss(
    projector: FourierProjector,
    q_pred: torch.Tensor,
    q_true: torch.Tensor,
    shifts_px: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
) -> torch.Tensor:
    """Mean absolute difference of projections at predicted and true poses (eq. 14).

    Parameters
    ----------
    projector : FourierProjector
        The map's projector (its cached transform is reused for every batch).
    q_pred, q_true : torch.Tensor of shape (n, 4)
        Unit quaternions; gradients flow to ``q_pred``.
    shifts_px : torch.Tensor of shape (n, 2), optional
        True RELION origins, applied to both projections (the paper's ``t``).
    scale : float, default 1.0
        Divides the result (see the module docstring).

    Returns
    -------
    torch.Tensor, scalar
        ``mean |X(R_pred, t) - X(R_true, t)| / scale`` over pixels and images.
    """
    n = q_pred.shape[0]
    quats = torch.cat((q_pred.to(projector.dtype), q_true.to(projector.dtype)))
    shifts = None if shifts_px is None else torch.cat((shifts_px, shifts_px))
    images = projector(quats, shifts)
    return (images[:n] - images[n:].detach()).abs().mean() / scale


def weighted_loss(
    q_pred: torch.Tensor,
    q_true: torch.Tensor,
    *,
    w: float,
    projector: FourierProjector | None = None,
    shifts_px: torch.Tensor | None = None,
    scale: float = 1.0,
    symmetry: str | None = None,
) -> torch.Tensor:
    """The paper's objective (eq. 15): ``w * QD + (1 - w) * reprojection``.

    Parameters
    ----------
    q_pred, q_true : torch.Tensor of shape (n, 4)
        Unit quaternions.
    w : float
        Weight of the QD term, in [0, 1]. With ``w == 1`` no projection is computed.
    projector : FourierProjector, optional
        Needed when ``w < 1``.
    shifts_px : torch.Tensor of shape (n, 2), optional
        True RELION origins.
    scale : float, default 1.0
        Divides the reprojection term.
    symmetry : str, optional
        Use :func:`symmetric_qd_loss` with this group instead of the plain QD loss.

    Returns
    -------
    torch.Tensor, scalar

    Raises
    ------
    ValueError
        When ``q_pred`` holds NaN or inf (training diverged) or zero quaternions
        (blank inputs): the message names the network's predictions, not the
        training labels.
    """
    _check_predictions(q_pred)
    if symmetry is None or symmetry.upper() == "C1":
        qd = qd_loss(q_pred, q_true)
    else:
        qd = symmetric_qd_loss(q_pred, q_true, symmetry)
    if w >= 1:
        return qd
    if projector is None:
        raise ValueError("weighted_loss needs a 'projector' when w < 1.")
    reproj = reprojection_l1_loss(projector, q_pred, q_true, shifts_px, scale=scale)
    return w * qd + (1 - w) * reproj


def _check_predictions(q_pred: torch.Tensor) -> None:
    """Refuse network outputs that are not rotations, saying why they are not."""
    with torch.no_grad():
        finite = torch.isfinite(q_pred).all(dim=-1)
        zero = torch.linalg.vector_norm(q_pred.nan_to_num(1.0), dim=-1) < 1e-12
        n_bad, n_zero = int((~finite).sum()), int(zero.sum())
    if n_bad:
        raise ValueError(
            f"Training diverged: the network predicted NaN or inf quaternions for "
            f"{n_bad} of {len(q_pred)} images of a batch. Lower the learning rate "
            "('lr'), or look for extreme values in the images."
        )
    if n_zero:
        raise ValueError(
            f"The network predicted zero quaternions, which name no rotation, for "
            f"{n_zero} of {len(q_pred)} images of a batch: are those images "
            "constant (blank, every pixel equal)? Remove them."
        )


def reprojection_scale(
    projector: FourierProjector, n_pairs: int = 256, random_state=0
) -> float:
    """Mean absolute difference between projections at random orientation pairs.

    The typical size of the reprojection term for a random guess: divide by it so that
    the term is ~1 for a random guess (see the module docstring).

    Parameters
    ----------
    projector : FourierProjector
        The map's projector.
    n_pairs : int, default 256
        Pairs of independent uniform rotations averaged over.
    random_state : int, default 0

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When every projection is the same (an all-zero map): the reprojection term
        could not tell orientations apart.
    """
    q = random_quaternions(
        2 * n_pairs, random_state, dtype=projector.dtype, device=projector.device
    )
    with torch.no_grad():
        images = projector(q)
    value = float((images[:n_pairs] - images[n_pairs:]).abs().mean())
    if not value > 0:
        raise ValueError(
            "Every projection of the map is the same (an all-zero map?): the "
            "reprojection loss and score cannot tell orientations apart; pass the "
            "particles' map as 'volume'."
        )
    return value
