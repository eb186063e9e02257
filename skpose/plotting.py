"""The figures users look at: angular errors, FSC curves, projections, training loss.

Every function returns a :class:`matplotlib.figure.Figure` built without
:mod:`matplotlib.pyplot` (no global state, no GUI backend: it works headless, in
threads and in tests) and, when ``path`` is given, also writes it to that file (PNG
unless the suffix names another format matplotlib knows). Show one in a notebook by
leaving it as the cell's value, or with ``fig.savefig``.

matplotlib is an optional dependency: ``pip install skpose[plot]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
except ImportError as exc:
    raise ImportError(
        "skpose.plotting needs matplotlib: pip install skpose[plot]"
    ) from exc

from skpose._validation import as_quaternions, check_images, check_volume, to_numpy
from skpose.geometry.rotations import quat_to_matrix
from skpose.geometry.symmetry import group_order
from skpose.imaging.projection import project
from skpose.io._atomic import atomic_path
from skpose.metrics import angular_error, error_summary

__all__ = [
    "plot_error_by_direction",
    "plot_error_histogram",
    "plot_fsc",
    "plot_projection_panels",
    "plot_training_history",
]

_DPI = 150


def _finish(fig: Figure, path) -> Figure:
    """Write ``fig`` to ``path`` (atomically; a file object as given) and return it."""
    if isinstance(path, (str, os.PathLike)):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=_DPI, format=Path(path).suffix[1:] or "png")
    elif path is not None:
        fig.savefig(path, dpi=_DPI)
    return fig


def _errors(errors_deg, name: str = "errors_deg") -> np.ndarray:
    e = np.asarray(errors_deg, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(
            f"Expected '{name}' to be a non-empty 1-D array of angles in degrees, got "
            f"shape {e.shape}."
        )
    if not np.isfinite(e).all() or e.min() < 0:
        raise ValueError(f"Expected '{name}' to be finite angles >= 0 degrees.")
    return e


def plot_error_histogram(
    errors_deg, *, symmetry=None, bins=None, path=None, title=None
) -> Figure:
    """Histogram of angular errors, with the median and the fractions under 5 and 10°.

    Parameters
    ----------
    errors_deg : array of shape (n,)
        Angular errors in degrees, e.g. from
        :func:`skpose.metrics.angular_error` (symmetry-aware when given a point group).
    symmetry : str, optional
        The point group the errors were computed with, shown on the x label.
    bins : int or array of bin edges, optional
        Default: 5° bins from 0 to 180° (the first bar is then the "< 5°" fraction).
        An int gives that many equal bins from 0 to 180°.
    path : str or path-like, optional
        Also write the figure there (PNG).
    title : str, optional
        Figure title; default ``"Angular error (n particles)"``.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: the bars, a solid line at the median and dotted lines at 5° and
        10°, whose legend entries give the percentages below them.

    Examples
    --------
    >>> fig = plot_error_histogram([1.0, 3.0, 7.0, 40.0], symmetry="D2")
    >>> len(fig.axes)
    1
    """
    e = _errors(errors_deg)
    if symmetry is not None:
        group_order(symmetry)  # validates the name
    if bins is None:
        bins = np.arange(0.0, 181.0, 5.0)
    elif isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise ValueError(f"Expected 'bins' to be an integer >= 1, got {bins}.")
        bins = np.linspace(0.0, 180.0, int(bins) + 1)
    summary = error_summary(e)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(e, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(
        summary["median_deg"], color="k", label=f"median {summary['median_deg']:.1f}°"
    )
    for limit, key, color in (
        (5, "pct_below_5", "tab:green"),
        (10, "pct_below_10", "tab:orange"),
    ):
        ax.axvline(
            limit, color=color, ls=":", label=f"< {limit}°: {summary[key]:.1f} %"
        )
    group = f", {symmetry.strip().upper()}-aware" if symmetry else ""
    ax.set_xlabel(f"angular error (degrees{group})")
    ax.set_ylabel("particles")
    ax.set_xlim(0, max(float(np.max(bins)), 10.0))
    ax.legend(loc="upper right")
    ax.set_title(title or f"Angular error ({e.size} particles)")
    return _finish(fig, path)


def _viewing_directions(quaternions, n: int) -> np.ndarray:
    """Unit vectors ``R^T z`` (the projection axis in the volume frame), ``(n, 3)``."""
    q = as_quaternions(quaternions, "quaternions_true")
    if q.ndim != 2 or q.shape[0] != n:
        raise ValueError(
            f"Expected 'quaternions_true' to have shape ({n}, 4) to match "
            f"'errors_deg', got {tuple(q.shape)}."
        )
    return to_numpy(quat_to_matrix(q)[:, 2, :])


def plot_error_by_direction(
    quaternions_true, errors_deg, *, vmax_deg=None, path=None
) -> Figure:
    """Angular error by viewing direction, on a Mollweide map of the sphere.

    The viewing direction of a particle at rotation ``R`` is the projection axis in
    the volume frame, ``R^T z`` (the third row of ``R``): in RELION's angles
    ``(cos rot sin tilt, sin rot sin tilt, cos tilt)``. The map's longitude is
    ``rot``, its latitude ``90° - tilt`` (the top is the view down +z).

    Parameters
    ----------
    quaternions_true : array of shape (n, 4)
        Reference orientations ``(w, x, y, z)``.
    errors_deg : array of shape (n,)
        Angular errors in degrees, one per particle.
    vmax_deg : float, optional
        Top of the colour scale; default the largest error.
    path : str or path-like, optional
        Also write the figure there (PNG).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the Mollweide map (one dot per particle, coloured by its error, the
        largest errors drawn on top) and the colour bar.

    Examples
    --------
    >>> q = np.array([[1.0, 0, 0, 0], [0.0, 1, 0, 0]])
    >>> fig = plot_error_by_direction(q, [2.0, 30.0])
    >>> len(fig.axes)
    2
    """
    e = _errors(errors_deg)
    view = _viewing_directions(quaternions_true, e.size)
    lon = np.arctan2(view[:, 1], view[:, 0])
    lat = np.arcsin(np.clip(view[:, 2], -1.0, 1.0))
    order = np.argsort(e, kind="stable")
    vmax = float(e.max()) if vmax_deg is None else float(vmax_deg)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot(projection="mollweide")
    dots = ax.scatter(
        lon[order],
        lat[order],
        c=e[order],
        s=float(np.clip(12000.0 / e.size, 1.5, 25.0)),  # dot area shrinks with n
        cmap="viridis",
        vmin=0,
        vmax=max(vmax, 1e-6),
        linewidths=0,
    )
    ax.set_longitude_grid(60)
    ax.set_latitude_grid(30)
    ax.grid(True, alpha=0.4)
    ax.set_xlabel("rot (degrees)")
    ax.set_ylabel("90° - tilt (degrees)")
    fig.colorbar(dots, ax=ax, shrink=0.7, label="angular error (degrees)")
    ax.set_title(f"Angular error by viewing direction ({e.size} particles)", pad=12)
    return _finish(fig, path)


def _fsc_label(freq: np.ndarray, fsc: np.ndarray, threshold: float) -> str:
    """Where ``fsc`` first drops below ``threshold``, in Angstrom (linear crossing).

    The same rule as :func:`skpose.imaging.reconstruction.resolution_at`.
    """
    below = np.flatnonzero(fsc < threshold)
    if below.size == 0:
        return "does not cross"
    i = below[0]
    if i == 0:
        return "below at 0"
    f0, f1, c0, c1 = freq[i - 1], freq[i], fsc[i - 1], fsc[i]
    cross = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)
    return f"{1 / cross:.2f} Å" if cross > 0 else "below at 0"


def _angstrom_label(freq: float, _pos=None) -> str:
    return "∞" if freq <= 0 else f"{1.0 / freq:.3g}"


def _check_fsc(frequencies, curves) -> tuple[np.ndarray, dict]:
    freq = np.asarray(frequencies, dtype=np.float64)
    if freq.ndim != 1 or freq.size < 2 or not np.isfinite(freq).all():
        raise ValueError(
            "Expected 'frequencies' to be a 1-D array of at least 2 finite "
            f"frequencies, got shape {freq.shape}."
        )
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(
            "Expected 'curves' to be a non-empty dict {label: FSC values}, got "
            f"{type(curves).__name__}."
        )
    out = {}
    for label, values in curves.items():
        fsc = np.asarray(values, dtype=np.float64)
        if fsc.shape != freq.shape:
            raise ValueError(
                f"Expected 'curves[{label!r}]' to have shape {freq.shape} like "
                f"'frequencies', got {fsc.shape}."
            )
        out[str(label)] = fsc
    return freq, out


def plot_fsc(
    frequencies, curves, *, threshold=0.143, pixel_size_angstrom=None, path=None
) -> Figure:
    """Fourier shell correlation curves, the 0.143 line, and each curve's resolution.

    Parameters
    ----------
    frequencies : array of shape (m,)
        Spatial frequency of each shell: in 1/Å, or in cycles per pixel (0 to 0.5)
        when ``pixel_size_angstrom`` is given.
    curves : dict of str to array of shape (m,)
        FSC values per curve label, e.g. ``{"half maps": fsc1, "vs reference":
        fsc2}``.
    threshold : float or None, default 0.143
        Draws this horizontal line and gives, in each legend entry, the resolution
        (Å) where the curve first falls below it. None: neither.
    pixel_size_angstrom : float, optional
        Pixel size, to convert ``frequencies`` from cycles per pixel to 1/Å.
    path : str or path-like, optional
        Also write the figure there (PNG).

    Returns
    -------
    matplotlib.figure.Figure
        One axes, x in 1/Å (bottom) with the resolution in Å on a secondary axis
        (top); one line per curve, plus the threshold line.

    Examples
    --------
    >>> f = np.linspace(0, 0.5, 33)
    >>> curves = {"half maps": np.exp(-((f / 0.25) ** 2))}
    >>> fig = plot_fsc(f, curves, pixel_size_angstrom=2.0)
    >>> len(fig.axes)
    1
    """
    freq, fscs = _check_fsc(frequencies, curves)
    if pixel_size_angstrom is not None:
        if not pixel_size_angstrom > 0:
            raise ValueError(
                "Expected 'pixel_size_angstrom' to be a number > 0, got "
                f"{pixel_size_angstrom!r}."
            )
        freq = freq / float(pixel_size_angstrom)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, fsc in fscs.items():
        text = label
        if threshold is not None:
            text += f" ({_fsc_label(freq, fsc, threshold)})"
        ax.plot(freq, fsc, lw=1.5, label=text)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"FSC = {threshold:g}")
    ax.set_xlim(0, float(freq.max()) or 1.0)
    ax.set_ylim(min(-0.05, float(min(c.min() for c in fscs.values()))), 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    top = ax.secondary_xaxis("top")
    top.xaxis.set_major_formatter(FuncFormatter(_angstrom_label))
    top.set_xlabel("resolution (Å)")
    ax.legend(loc="best")
    return _finish(fig, path)


def _check_panel_inputs(images, volume, q_true, q_pred, shifts_px, n):
    """The first ``rows = min(n, m)`` particles, validated (a memmap is not read)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Expected 'n' to be an integer >= 1, got {n!r}.")
    shape = np.shape(images)
    m = shape[0] if len(shape) == 3 else 0
    rows = min(int(n), m) if m else None
    imgs = to_numpy(check_images(images[:rows] if rows else images))
    vol = to_numpy(check_volume(volume))
    if imgs.shape[-1] != vol.shape[-1]:
        raise ValueError(
            f"Expected 'images' ({imgs.shape[-1]} px) and 'volume' "
            f"({vol.shape[-1]} px) to share the box size."
        )
    out = []
    for name, value in (("q_true", q_true), ("q_pred", q_pred)):
        t = to_numpy(as_quaternions(value, name)).astype(np.float64)
        if t.shape != (m, 4):
            raise ValueError(
                f"Expected '{name}' to have shape ({m}, 4) like 'images', got "
                f"{t.shape}."
            )
        out.append(t[:rows])
    if shifts_px is not None:
        shifts_px = np.asarray(shifts_px, dtype=np.float64)
        if shifts_px.shape != (m, 2):
            raise ValueError(
                f"Expected 'shifts_px' to have shape ({m}, 2) like 'images', got "
                f"{shifts_px.shape}."
            )
        shifts_px = shifts_px[:rows]
    return imgs, vol, out[0], out[1], shifts_px


def plot_projection_panels(
    images, volume, q_true, q_pred, *, shifts_px=None, n=6, symmetry="C1", path=None
) -> Figure:
    """The paper's Fig. 4 panels: input, projection at the reference and predicted pose.

    Row ``i`` shows particle ``i`` (the first ``n``): the input image, the projection
    of ``volume`` at ``q_true`` and at ``q_pred`` (both shifted by ``shifts_px``, no
    CTF, see :func:`skpose.imaging.projection.project`), titled with the angular error.
    Images are drawn with ``y`` up (``origin="lower"``), each on its own grey scale.

    Parameters
    ----------
    images : array of shape (m, N, N)
        Particle images ``[y, x]``.
    volume : array of shape (N, N, N)
        The map, ``[z, y, x]``.
    q_true, q_pred : array of shape (m, 4)
        Reference and predicted quaternions ``(w, x, y, z)``.
    shifts_px : array of shape (m, 2), optional
        RELION origins ``(ox, oy)`` in pixels, applied to both projections.
    n : int, default 6
        Number of particles (rows); at most ``m`` are drawn.
    symmetry : str, default "C1"
        Point group for the angular error (the minimum over symmetry mates).
    path : str or path-like, optional
        Also write the figure there (PNG).

    Returns
    -------
    matplotlib.figure.Figure
        ``min(n, m) x 3`` axes, row by row.

    Examples
    --------
    >>> vol = np.random.default_rng(0).random((16, 16, 16))
    >>> q = np.array([[1.0, 0, 0, 0], [0.0, 0, 0, 1]])
    >>> fig = plot_projection_panels(np.zeros((2, 16, 16)), vol, q, q, n=2)
    >>> len(fig.axes)
    6
    """
    imgs, vol, qt, qp, shifts = _check_panel_inputs(
        images, volume, q_true, q_pred, shifts_px, n
    )
    rows = imgs.shape[0]
    both = project(
        vol,
        np.concatenate([qt, qp]),
        None if shifts is None else np.concatenate([shifts, shifts]),
    )
    errors = angular_error(qt, qp, symmetry=symmetry)
    fig = Figure(figsize=(6.0, 2.0 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        panels = (imgs[i], both[i], both[rows + i])
        titles = (
            f"particle {i}: input",
            "reference pose",
            f"predicted: {errors[i]:.1f}°",
        )
        for ax, img, text in zip(axes[i], panels, titles, strict=True):
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_title(text, fontsize=9)
            ax.set_axis_off()
    return _finish(fig, path)


def _history_column(history, key: str) -> np.ndarray:
    return np.array([row.get(key, np.nan) for row in history], dtype=np.float64)


def plot_training_history(history, *, path=None) -> Figure:
    """Training (and validation) loss against epoch.

    Parameters
    ----------
    history : skorch.History or list of dict
        One dict per epoch with ``"train_loss"`` and optionally ``"epoch"``
        (default 1, 2, ...), ``"valid_loss"`` and ``"dur"`` (seconds), e.g. a fitted
        estimator's ``history_``.
    path : str or path-like, optional
        Also write the figure there (PNG).

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a line per loss present; the title gives the total training time.

    Examples
    --------
    >>> hist = [{"epoch": 1, "train_loss": 0.9, "dur": 1.0},
    ...         {"epoch": 2, "train_loss": 0.5, "dur": 1.1}]
    >>> len(plot_training_history(hist).axes[0].lines)
    1
    """
    rows = list(history) if history is not None else []
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(
            "Expected 'history' to be a non-empty list of dicts, one per epoch (a "
            "skorch History)."
        )
    train = _history_column(rows, "train_loss")
    if np.isnan(train).all():
        raise ValueError("Expected 'history' to hold 'train_loss' for each epoch.")
    epoch = _history_column(rows, "epoch")
    if np.isnan(epoch).any():
        epoch = np.arange(1, len(rows) + 1, dtype=np.float64)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epoch, train, "o-", ms=3, label="train loss")
    valid = _history_column(rows, "valid_loss")
    if not np.isnan(valid).all():
        ax.plot(epoch, valid, "s-", ms=3, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    total = np.nansum(_history_column(rows, "dur"))
    ax.set_title(f"Training loss ({len(rows)} epochs, {total:.1f} s)")
    return _finish(fig, path)
