"""Prediction over many particles: chunk by chunk here, or on a dask cluster.

:func:`predict_particles` runs an estimator's ``predict_poses`` on a particle set cut
into chunks of STAR rows (or of images in memory). Without a client the chunks run
here, the next chunk's images read in a background thread. With a
``dask.distributed.Client`` each chunk is one task: the estimator and its map go once
to each worker, the workers read their own images from the stacks (no image is sent
from here), and the poses come back in input order, equal to those computed here. A
worker lost mid-run has its chunks run elsewhere. :func:`map_chunks` is the same
machinery for any function of ``(images, origins, CTF)``: ``skpose predict
--scheduler`` runs on it. :func:`connect` reaches a scheduler or fails within a
timeout. Running a cluster by hand or on SLURM: ``docs/cluster.md``.

dask is optional (``pip install 'skpose[dask]'``) and imported only when a client is
asked for.
"""

from skpose.estimators._chunks import DEFAULT_CHUNK_SIZE, map_chunks, worker_state
from skpose.estimators._cluster import connect
from skpose.estimators._distributed import predict_particles

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "connect",
    "map_chunks",
    "predict_particles",
    "worker_state",
]
