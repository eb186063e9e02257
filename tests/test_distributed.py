"""Prediction on a dask cluster: a real LocalCluster (2 worker processes, loopback).

The cluster's results must equal this process's, in input order, with refinement, for
a STAR file whose images lie in several stacks that the workers read themselves; a
worker killed mid-run loses nothing; GridSearchCV runs on the cluster through joblib's
dask backend with the same best parameters. The workers compute with 1 thread (dask
sets OMP_NUM_THREADS=1 for them), so this process predicts with 1 thread too: the
refinement's float rounding depends on the thread count.
"""

import contextlib
import importlib
import os
import signal
import threading
import time

import joblib
import numpy as np
import pytest
import torch

import skpose
from skpose import OrientationEstimator, ProjectionMatcher
from skpose.cli import main
from skpose.distributed import connect, predict_particles, worker_state
from skpose.estimators import _inference
from skpose.io import load_particle_images
from skpose.search import Poses

distributed = pytest.importorskip("distributed")

N_PARTICLES, N_STACKS, BOX = 2000, 4, 24


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2000 particles (24 px, CTF, shifts) in 4 stacks, and a small model from fit.

    The model (20 iterations) is far from accurate: equality, not accuracy, is tested.
    """
    d = tmp_path_factory.mktemp("distributed")
    volume = skpose.phantom_volume(BOX)
    skpose.write_volume(d / "map.mrc", volume, 4.0)
    sim = skpose.simulate_particles(
        volume, N_PARTICLES, snr=2, ctf=True, max_shift=2, pixel_size_angstrom=4.0,
        random_state=0,
    )  # fmt: skip
    sim.to_relion(d / "one.star")
    particles = skpose.read_particles(d / "one.star")
    per = N_PARTICLES // N_STACKS
    names = []
    for k in range(N_STACKS):
        skpose.write_images(d / f"stack_{k}.mrcs", sim.images[k * per : (k + 1) * per])
        names += [f"{i + 1:06d}@stack_{k}.mrcs" for i in range(per)]
    particles.data["rlnImageName"] = names
    skpose.write_particles(d / "particles.star", particles)
    argv = ["fit", str(d / "particles.star"), "--volume", str(d / "map.mrc")]
    argv += ["--out", str(d / "model.joblib"), "--max-iter", "20", "--verbose", "0"]
    assert main([*argv, "--threads", "1"]) == 0
    model = joblib.load(d / "model.joblib")
    est = model["estimator"].set_params(refine=True)  # volume: the map's path
    assert est.input_box_ == BOX and est.image_size_ == 32
    return {"dir": d, "star": d / "particles.star", "est": est, "sim": sim}


@pytest.fixture(scope="module")
def local_poses(data):
    with one_thread():
        return predict_particles(data["est"], data["star"], chunk_size=256)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with cluster, distributed.Client(cluster) as c:
        c.run(importlib.import_module, "skpose")  # workers import torch once, here
        yield c


def assert_same_poses(a, b, atol=1e-4):
    np.testing.assert_allclose(a.quaternions, b.quaternions, atol=atol)
    np.testing.assert_allclose(a.shifts_px, b.shifts_px, atol=10 * atol)
    np.testing.assert_allclose(a.score, b.score, atol=atol)


# --------------------------------------------------------------------------------------
# Here, in chunks
# --------------------------------------------------------------------------------------


def test_chunks_here_equal_predict_poses_on_the_images(data, local_poses):
    # The STAR's own values (its text rounds the CTF and origins), read here at once.
    # Chunks of a multiple of the batch size (256) make the same batches as one call,
    # so the result is the same: float32 rounding in a batch depends on its size.
    particles, rows = skpose.read_particles(data["star"]), slice(0, 512)  # two chunks
    images = load_particle_images(particles, np.arange(512))
    origins, ctf = particles.origins_px[rows], particles.ctf[rows]
    with one_thread():
        direct = data["est"].predict_poses(images, origins, ctf)
    assert_same_poses(Poses(*(a[rows] for a in local_poses)), direct, atol=1e-5)


def test_prefetch_changes_nothing(data):
    star = data["star"]
    runs = [
        predict_particles(data["est"], star, refine=False, prefetch=prefetch)
        for prefetch in (False, True)
    ]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_prefetched_keeps_order_and_closes_its_source():
    closed = []

    def numbers():
        try:
            yield from range(5)
        finally:
            closed.append(True)

    assert list(_inference.prefetched(numbers(), lambda x: 2 * x)) == [0, 2, 4, 6, 8]
    first = next(_inference.prefetched(numbers()))
    assert first == 0
    assert closed  # the first generator ran out and closed


def test_prefetched_stop_does_not_wait_for_a_read_in_flight():
    release, closed = threading.Event(), []

    def stuck():
        try:
            yield 0
            release.wait(10)  # a slow disk
            yield 1
        finally:
            closed.append(True)

    items = _inference.prefetched(stuck())
    assert next(items) == 0  # item 1 is being read
    start = time.monotonic()
    items.close()  # e.g. an interrupt: returns at once
    assert time.monotonic() - start < 1 and not closed
    release.set()  # the read returns: its thread closes the source
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed


def test_device_copies():
    x = np.ones((2, 3), dtype=np.float32)
    assert _inference.to_device(x, "cpu") is x  # today's CPU path: untouched
    assert _inference.pinned(x, "cpu") is x  # pinning is for CUDA only
    moved = _inference.to_device(x, "meta")  # any other device: a tensor there
    assert moved.device.type == "meta" and moved.shape == (2, 3)


def test_tensor_images_give_the_numpy_result(data):
    sim, est = data["sim"], data["est"]
    images, ctf = sim.images[:50], sim.ctf[:50]
    np.testing.assert_array_equal(
        est.predict(torch.as_tensor(images), ctf=ctf), est.predict(images, ctf=ctf)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp16"}, "'precision' of OrientationEstimator.predict to"),
        ({"compile": 1}, "'compile' of OrientationEstimator.predict to"),
    ],
)
def test_estimator_checks_its_inference_options(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data["est"].predict(data["sim"].images[:2], ctf=data["sim"].ctf[:2], **kwargs)


def test_bf16_is_close_to_fp32_and_unit(data):
    sim, est = data["sim"], data["est"].set_params(refine=False)
    try:
        fp32 = est.predict(sim.images[:300], ctf=sim.ctf[:300])
        bf16 = est.predict(sim.images[:300], ctf=sim.ctf[:300], precision="bf16")
    finally:
        est.set_params(refine=True)
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-12)
    # bfloat16 keeps 8 bits of mantissa: a network pose moves by about a degree.
    assert np.median(skpose.angular_error(fp32, bf16)) < 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp16"}, "'precision' of predict_particles"),
        ({"compile": "yes"}, "'compile' of predict_particles"),
        ({"chunk_size": 0}, "'chunk_size' to be an int >= 1"),
        ({"retries": -1}, "'retries' to be an int >= 0"),
        ({"refine": "yes"}, "'refine' to be None, True or False"),
        ({"shifts_px": np.zeros((N_PARTICLES, 2))}, "bring their own origins"),
    ],
)
def test_bad_options_are_named(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_particles(data["est"], data["star"], **kwargs)


def test_matcher_takes_no_network_options(data):
    sim = data["sim"]
    matcher = ProjectionMatcher(skpose.phantom_volume(BOX), angular_step_deg=30)
    matcher.fit(sim.images[:2])
    with pytest.raises(ValueError, match="apply to OrientationEstimator"):
        predict_particles(matcher, sim.images[:4], precision="bf16")


def test_tasks_carry_rows_of_the_table_with_an_absolute_folder(data, monkeypatch):
    from skpose.estimators._chunks import _Source

    monkeypatch.chdir(data["dir"])
    source = _Source.of("particles.star")
    payload = source.chunk(np.arange(10, 20))
    assert payload.path.is_absolute() and payload.blocks == {}
    assert len(payload) == 10 and payload.image_files[0].parent == data["dir"]


def test_dask_malloc_setting_gets_an_mmap_threshold(monkeypatch):
    from skpose.estimators import _chunks

    monkeypatch.setitem(_chunks._STATS, "malloc_tuned", False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    _chunks._restore_mmap_threshold()
    assert not _chunks._STATS["malloc_tuned"]  # not under dask: left alone
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    _chunks._restore_mmap_threshold()  # calls glibc's mallopt
    assert _chunks._STATS["malloc_tuned"]


def test_wrong_box_fails_before_any_chunk(data):
    images = np.zeros((10, 32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match="fitted on 24 px images"):
        predict_particles(data["est"], images, client="tcp://127.0.0.1:1")


def test_unreachable_scheduler_is_a_one_line_error_within_seconds(data, capsys):
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="Cannot reach the dask scheduler"):
        connect("tcp://127.0.0.1:1", timeout_s=1)
    assert time.perf_counter() - start < 10
    d = data["dir"]
    argv = ["predict", str(data["star"]), "--model", str(d / "model.joblib")]
    argv += ["--out", str(d / "never.star"), "--scheduler", "tcp://127.0.0.1:1"]
    start = time.perf_counter()
    assert main([*argv, "--scheduler-timeout", "1", "--threads", "1"]) == 2
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skpose: error: Cannot reach")
    assert not (d / "never.star").exists()


# --------------------------------------------------------------------------------------
# On a LocalCluster
# --------------------------------------------------------------------------------------


def test_cluster_equals_here_with_refinement(client, data, local_poses):
    before = client.run(worker_state)
    remote = predict_particles(data["est"], data["star"], client=client, chunk_size=256)
    assert_same_poses(remote, local_poses)
    after = client.run(worker_state)
    # Both workers computed chunks, reading images from the stacks themselves.
    for address, state in after.items():
        assert state["chunks"] > before[address]["chunks"]
        assert state["open_stacks"] >= 1


def test_client_keyword_scatters_arrays(client, data):
    sim, est = data["sim"], data["est"]
    images, shifts, ctf = sim.images[:300], sim.shifts_px[:300], sim.ctf[:300]
    with one_thread():
        here = est.predict_poses(images, shifts, ctf)
    there = est.predict_poses(images, shifts, ctf, client=True)  # the active client
    assert_same_poses(there, here)
    est.set_params(refine=False)
    try:
        q_here = est.predict(images, ctf=ctf)
        q_there = est.predict(images, ctf=ctf, client=client)
    finally:
        est.set_params(refine=True)
    np.testing.assert_array_equal(q_there, q_here)  # the network alone: exact


def test_matcher_splits_particles_the_same_way(client, data):
    sim = data["sim"]
    matcher = ProjectionMatcher(
        skpose.phantom_volume(BOX), angular_step_deg=30, max_shift_px=2,
        refine_step_deg=5,
    ).fit(sim.images[:2])  # fmt: skip
    with one_thread():
        here = matcher.predict_poses(sim.images[:300])
    there = predict_particles(matcher, sim.images[:300], client=client, chunk_size=64)
    assert_same_poses(there, here)
    assert_same_poses(matcher.predict_poses(sim.images[:300], client=client), here)


def test_cli_predict_on_the_cluster_equals_here(client, data):
    d = data["dir"]
    subset = skpose.read_particles(data["star"]).select(np.arange(300, 800))
    skpose.write_particles(d / "subset.star", subset)  # rows of two stacks
    argv = ["predict", str(d / "subset.star"), "--model", str(d / "model.joblib")]
    argv += ["--refine", "--batch-size", "200", "--threads", "1"]
    assert main([*argv, "--out", str(d / "here.star")]) == 0
    address = ["--scheduler", client.scheduler.address]
    assert main([*argv, "--out", str(d / "there.star"), *address]) == 0
    here = skpose.read_particles(d / "here.star")
    there = skpose.read_particles(d / "there.star")
    assert list(here.data["rlnImageName"]) == list(there.data["rlnImageName"])
    # Angles are written with 6 decimals.
    np.testing.assert_allclose(there.angles_deg, here.angles_deg, atol=2e-3)
    np.testing.assert_allclose(there.origins_px, here.origins_px, atol=2e-3)
    conf = "rlnSkposeConfidence"
    np.testing.assert_allclose(there.data[conf], here.data[conf], atol=1e-4)


def test_grid_search_on_the_cluster_same_best_params(client, data):
    from sklearn.model_selection import GridSearchCV

    sim = data["sim"]
    est = OrientationEstimator(
        skpose.phantom_volume(BOX), architecture="small", image_size=32,
        max_iter=4, batch_size=16, random_state=0,
    )  # fmt: skip
    grid = {"w": [0.2, 0.8], "lr": [1e-4, 1e-2]}
    images, quats = sim.images[:96], sim.quaternions[:96]
    with one_thread():
        here = GridSearchCV(est, grid, cv=2).fit(images, quats)
    with distributed.get_task_stream(client) as stream:
        with joblib.parallel_backend("dask"):
            there = GridSearchCV(est, grid, cv=2).fit(images, quats)
    assert len(stream.data) >= 8  # the 8 fits (4 candidates x 2 folds) ran there
    assert there.best_params_ == here.best_params_
    np.testing.assert_allclose(
        there.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"]
    )


# --------------------------------------------------------------------------------------
# A worker lost mid-run (last: the cluster restarts the worker)
# --------------------------------------------------------------------------------------


def _kill_a_worker_after(client, chunks_done: int, killed: list) -> threading.Thread:
    """Kill (SIGKILL) the busiest worker once the workers have run ``chunks_done``."""
    before = {a: s["chunks"] for a, s in client.run(worker_state).items()}

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = {
                a: s["chunks"] - before.get(a, 0)
                for a, s in client.run(worker_state).items()
            }
            if sum(done.values()) >= chunks_done:
                address = max(done, key=done.get)
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                killed.append((address, sum(done.values())))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow  # 7-8 s on the VM lightly loaded, 25-60 s heavily: a worker restarts
@pytest.mark.parametrize("source", ["star", "arrays"])
def test_lost_worker_loses_nothing(client, data, local_poses, source):
    particles, kwargs = skpose.read_particles(data["star"]), {}  # rows of 4 stacks
    if source == "arrays":  # the STAR's values, in memory
        kwargs = {"shifts_px": particles.origins_px, "ctf": particles.ctf}
        particles = load_particle_images(particles)
    client.wait_for_workers(2, timeout=120)
    killed = []
    watcher = _kill_a_worker_after(client, 2, killed)
    poses = predict_particles(
        data["est"], particles, client=client, chunk_size=256, **kwargs
    )
    watcher.join()
    assert killed, "no worker was killed"
    assert killed[0][1] < 8  # mid-run: of 8 chunks
    # Complete, in order, nothing duplicated.
    assert_same_poses(poses, local_poses)


class _Future:
    status = "finished"

    def __init__(self, key, value, lost=False):
        self.key, self.value, self.lost = key, value, lost

    def result(self):
        if self.lost:
            from concurrent.futures import CancelledError

            raise CancelledError(f"{self.key} cancelled: already forgotten")
        return self.value

    def release(self):
        pass


class _AsCompleted:
    def __init__(self):
        self.queue = []

    def add(self, future):
        self.queue.append(future)

    @property
    def futures(self):
        return set(self.queue)

    def __iter__(self):
        while self.queue:
            yield self.queue.pop(0)


class _Client:
    """Runs chunks at once; the first try of chunk 0 loses its result."""

    def __init__(self):
        self.submitted = []

    def scatter(self, data, broadcast=False, hash=True):
        return _Future("scattered", data)

    def submit(self, task, shared, payload, key, retries):
        self.submitted.append(key)
        lost = key.startswith("skpose-chunk-0-0-")
        return _Future(key, ("rows", list(payload.value)), lost)

    def nthreads(self):
        return {"worker": 1}

    def cancel(self, futures):
        pass


class _Rows:
    table = None

    @staticmethod
    def chunk(rows):
        return rows


def test_a_result_lost_after_it_finished_is_computed_again(monkeypatch):
    """A chunk reported finished whose result then died with its worker (dask's
    scheduler forgets it and ``result()`` raises ``CancelledError``, seen when a
    worker is killed under load) is submitted again, not raised."""
    from skpose.estimators import _cluster

    fake = type("distributed", (), {"as_completed": _AsCompleted})
    monkeypatch.setattr(_cluster, "_distributed", lambda: fake)
    client = _Client()
    run = _cluster.Cluster(client, "job", _Rows(), [[0, 1], [2, 3]], retries=2)
    results = dict(run.results())
    assert results == {0: ("rows", [0, 1]), 1: ("rows", [2, 3])}
    assert [k.rsplit("-", 1)[0] for k in client.submitted] == [
        "skpose-chunk-0-0", "skpose-chunk-1-0", "skpose-chunk-0-1",
    ]  # fmt: skip
