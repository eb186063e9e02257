"""Training particles simulated on the fly from the map, like the labelled ones.

Private to :mod:`skpose.learn`; :class:`skpose.OrientationEstimator` uses it when
``simulate_from_map > 0``.

The labelled particles say where real data lives; the map can make unlimited
particles there. :func:`estimate_noise` measures the data's signal and noise at the
network's box: each labelled image ``x`` (mean removed) is compared with the
CTF-modulated projection ``p`` of the map at its labelled pose and origin (mean
removed), one least-squares amplitude ``a`` pooled over the images
(``a = <x, p> / <p, p>``); the signal variance is that of ``a p``, the noise
variance that of the residual ``x - a p``, both over all pixels pooled over the
images, and ``snr`` their ratio (the definition of :mod:`skpose.simulate`). Pose
errors in the labels count as noise, so the estimate errs low (the conservative
side). :class:`MapSimulator` then draws particles ``a p + n`` at uniformly random
rotations, with CTFs (rows of the labelled particles' CTF parameters) and origins
(rows of their origins) drawn independently with replacement, and white Gaussian
noise ``n`` of the measured variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from skpose.geometry.rotations import random_quaternions
from skpose.imaging.preprocess import normalize_images, phase_flip
from skpose.imaging.projection import project

__all__ = ["MapSimulator", "NoiseModel", "estimate_noise"]


@dataclass(frozen=True)
class NoiseModel:
    """Signal amplitude and noise of the labelled images at the network's box.

    Attributes
    ----------
    amplitude : float
        Least-squares scale from the map's projections to the images.
    noise_std : float
        Standard deviation of the white noise (image units).
    snr : float
        Signal variance over noise variance (``inf`` for noise-free images).
    """

    amplitude: float
    noise_std: float
    snr: float


def _centred(t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(dim=(-2, -1), keepdim=True)


def estimate_noise(volume, images, quaternions, shifts_px, ctf=None) -> NoiseModel:
    """Amplitude, noise and SNR of images against the map at their poses.

    Parameters
    ----------
    volume : torch.Tensor of shape (N, N, N)
        The map at the images' box.
    images : torch.Tensor of shape (n, N, N)
        Raw (not phase-flipped) images.
    quaternions : array of shape (n, 4)
        Their poses ``(w, x, y, z)``.
    shifts_px : array of shape (n, 2)
        Their RELION origins in pixels of this box.
    ctf : CTFParams, optional
        Their CTF (pixel size of this box).

    Returns
    -------
    NoiseModel
    """
    x = _centred(torch.as_tensor(images, dtype=torch.float64))
    vol = torch.as_tensor(volume, dtype=torch.float64)
    q, t = torch.as_tensor(quaternions), torch.as_tensor(shifts_px)
    p = _centred(project(vol, q.to(vol.dtype), t.to(vol.dtype), ctf))
    amplitude = float((x * p).sum() / (p * p).sum().clamp_min(1e-30))
    residual = x - amplitude * p
    noise_var = float(residual.var())
    signal_var = float((amplitude * p).var())
    snr = signal_var / noise_var if noise_var > 0 else float("inf")
    return NoiseModel(amplitude, noise_var**0.5, snr)


class MapSimulator:
    """Network-ready particles drawn on the fly from a map.

    Parameters
    ----------
    volume : torch.Tensor of shape (S, S, S)
        The map at the network's input size ``S``.
    noise : NoiseModel
        From :func:`estimate_noise` on the labelled images at that size.
    shifts_px : array of shape (m, 2)
        Labelled origins in pixels of the network's box; drawn with replacement.
    ctf : CTFParams, optional
        Labelled CTFs at the network's pixel size; rows drawn with replacement.
        Images are then phase-flipped, as :class:`OrientationEstimator` does.
    random_state : int or numpy.random.Generator
        Seeds poses, CTF and origin draws, and noise.
    """

    def __init__(self, volume, noise: NoiseModel, shifts_px, ctf=None, random_state=0):
        self.volume = torch.as_tensor(volume, dtype=torch.float32)
        self.noise = noise
        self.shifts_px = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        self.ctf = ctf
        self.rng = np.random.default_rng(random_state)
        # Multiplies the noise (a curriculum lowers it early in training).
        self.noise_scale = 1.0

    def draw(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` simulated particles and their targets.

        Returns
        -------
        images : numpy.ndarray of shape (k, S, S), float32
            Phase-flipped (with a CTF) and normalised as the network's input.
        targets : numpy.ndarray of shape (k, 6), float32
            Quaternions ``(w, x, y, z)`` and origins ``(ox, oy)`` (network pixels),
            as the estimator packs them.
        """
        raw, q, t, ctf = self.draw_raw(k)
        if ctf is not None:
            raw = phase_flip(raw, ctf)
        images = normalize_images(raw, constant="whole")
        targets = np.concatenate([q, t], axis=1).astype(np.float32)
        return images.numpy().astype(np.float32, copy=False), targets

    def draw_raw(self, k: int):
        """``k`` raw particles (CTF-modulated, noisy): images, poses, origins, CTF."""
        rng = self.rng
        q = random_quaternions(k, rng).numpy()
        t = self.shifts_px[rng.integers(0, len(self.shifts_px), k)]
        ctf = None
        if self.ctf is not None:
            ctf = self.ctf[rng.integers(0, len(self.ctf), k)]
        clean = project(self.volume, torch.as_tensor(q, dtype=torch.float32),
                        torch.as_tensor(t, dtype=torch.float32), ctf)  # fmt: skip
        noise = rng.standard_normal(clean.shape, dtype=np.float32)
        images = self.noise.amplitude * clean.detach()
        std = self.noise.noise_std * self.noise_scale
        images = images + torch.from_numpy(noise) * std
        return images, q, t, ctf

    def mix(self, X: torch.Tensor, y: torch.Tensor, fraction: float):
        """Replace the first ``round(fraction * len(X))`` rows by simulated ones."""
        k = round(fraction * X.shape[0])
        if k == 0:
            return X, y
        sim_x, sim_y = self.draw(k)
        X, y = X.clone(), y.clone()
        X[:k] = torch.from_numpy(sim_x).to(device=X.device, dtype=X.dtype)
        y[:k] = torch.from_numpy(sim_y).to(device=y.device, dtype=y.dtype)
        return X, y
