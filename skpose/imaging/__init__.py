"""Image formation: the CTF, the projector, preprocessing, reconstruction, maps.

Above :mod:`skpose.geometry`; below :mod:`skpose.io`, :mod:`skpose.search` and the
estimators. :mod:`skpose.imaging.models` (maps from atomic models, needs gemmi) is
imported on use.
"""

from skpose.imaging.ctf import CTFParams, compute_ctf
from skpose.imaging.preprocess import (
    fourier_crop,
    fourier_pad,
    fourier_resize,
    normalize_images,
    phase_flip,
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

__all__ = [
    "BackProjector",
    "CTFParams",
    "FourierProjector",
    "compute_ctf",
    "fourier_crop",
    "fourier_pad",
    "fourier_resize",
    "fsc",
    "fsc_resolution",
    "half_maps",
    "normalize_images",
    "phase_flip",
    "project",
    "project_real_space",
    "reconstruct",
    "resolution_at",
]
