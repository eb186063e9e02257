"""Files in and out: MRC volumes and image stacks, RELION STAR, cryoSPARC ``.cs``.

numpy lives here, at the edge. Arrays are laid out as mrcfile returns them: a volume
``[z, y, x]``, an image ``[y, x]``, a stack ``[n, y, x]``; the centre of a box of side
``N`` is index ``N // 2``.

Image stacks are memory-mapped and read a few rows at a time; particle images named
``index@stack.mrcs`` in a STAR file load through :class:`ParticleImageLoader`, which
keeps a bounded number of stacks open.

Examples
--------
>>> import numpy as np, tempfile, os
>>> folder = tempfile.mkdtemp()
>>> write_volume(os.path.join(folder, "v.mrc"), np.random.rand(8, 8, 8), 2.5)
>>> volume, voxel_size = read_volume(os.path.join(folder, "v.mrc"))
>>> volume.shape, voxel_size
((8, 8, 8), 2.5)
"""

from skpose.io._cryosparc import CryoSparcParticles, read_cryosparc
from skpose.io._mrc import (
    ParticleImageLoader,
    iter_particle_images,
    load_particle_images,
    read_images,
    read_volume,
    write_images,
    write_volume,
)
from skpose.io._star import Particles, require_columns, require_unique_images
from skpose.io._star_io import read_particles, write_particles

__all__ = [
    "CryoSparcParticles",
    "ParticleImageLoader",
    "Particles",
    "iter_particle_images",
    "load_particle_images",
    "read_cryosparc",
    "read_images",
    "read_particles",
    "read_volume",
    "require_columns",
    "require_unique_images",
    "write_images",
    "write_particles",
    "write_volume",
]
