"""Checkpoints and resume: a run interrupted at iteration k and resumed is the
uninterrupted run, bit for bit, on the CPU; interrupts surface from ``fit``.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

import skpose
from skpose.cli import main
from skpose.estimators._training import CHECKPOINT_NAME, TrainingRun

ROOT = Path(__file__).resolve().parent.parent
MAX_ITER = 10  # 48 images in batches of 16: 3 iterations an epoch, the last one short


@pytest.fixture(scope="module")
def data():
    vol = skpose.phantom_volume(32)
    sim = skpose.simulate_particles(vol, 48, max_shift=1, random_state=0)
    return vol, sim


def _estimator(vol, **params):
    defaults = {"max_iter": MAX_ITER, "batch_size": 16, "lr": 1e-3, "random_state": 0}
    return skpose.OrientationEstimator(
        vol,
        architecture="small",
        image_size=32,
        w=0.5,  # both losses
        **{**defaults, **params},
    )


@pytest.fixture(scope="module")
def uninterrupted(data):
    vol, sim = data
    return _estimator(vol).fit(sim.images, sim.quaternions, sim.shifts_px)


def _weights(est) -> dict:
    return {k: v.clone() for k, v in est.net_.module_.state_dict().items()}


def _assert_same_model(est, ref, images, ctf=None) -> None:
    assert est.n_iter_ == ref.n_iter_
    a, b = _weights(est), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(
        est.predict(images, ctf=ctf), ref.predict(images, ctf=ctf)
    )
    losses = [h["train_loss"] for h in ref.net_.history]
    assert est.net_.history[-1]["train_loss"] == losses[-1]


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(k)``: a real SIGINT to this process during iteration ``k``."""
    state = {"at": None}
    original = TrainingRun.after_iteration

    def after_iteration(self, net):
        if self.base + self.done + 1 == state["at"]:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, net)

    monkeypatch.setattr(TrainingRun, "after_iteration", after_iteration)
    return lambda k: state.update(at=k)


@pytest.mark.parametrize(
    "every, stop, resumed_from",
    [
        (4, 6, 4),  # mid-epoch checkpoint (one iteration into the second epoch)
        (3, 7, 6),  # checkpoint at an epoch's end
        (5, 5, 5),  # interrupted right at a mid-epoch checkpoint
    ],
)
def test_interrupted_and_resumed_equals_uninterrupted(
    data, uninterrupted, tmp_path, interrupt_at, every, stop, resumed_from
):
    vol, sim = data
    params = {"checkpoint_dir": tmp_path, "checkpoint_every": every}
    interrupt_at(stop)
    est = _estimator(vol, **params)
    with pytest.raises(KeyboardInterrupt):
        est.fit(sim.images, sim.quaternions, sim.shifts_px)
    assert est.n_iter_ == stop  # the interrupt lands at the iteration's end
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["n_iter"] == resumed_from
    interrupt_at(None)
    resumed = _estimator(vol, resume=True, **params)
    resumed.fit(sim.images, sim.quaternions, sim.shifts_px)
    _assert_same_model(resumed, uninterrupted, sim.images)


def test_resume_without_a_checkpoint_trains_from_scratch(data, uninterrupted, tmp_path):
    vol, sim = data
    folder = tmp_path / "new"
    est = _estimator(vol, checkpoint_dir=folder, checkpoint_every=MAX_ITER, resume=True)
    est.fit(sim.images, sim.quaternions, sim.shifts_px)
    _assert_same_model(est, uninterrupted, sim.images)
    assert torch.load(folder / CHECKPOINT_NAME, weights_only=True)["n_iter"] == MAX_ITER
    assert "skpose_training" not in dict(est.net_.callbacks_)  # clean model pickles


def test_resume_refuses_another_trainings_checkpoint(data, tmp_path):
    vol, sim = data
    _estimator(vol, checkpoint_dir=tmp_path, checkpoint_every=5).fit(
        sim.images, sim.quaternions
    )
    other = _estimator(vol, checkpoint_dir=tmp_path, resume=True, random_state=1)
    with pytest.raises(ValueError, match=r"another training \(random_state=0 \(now 1"):
        other.fit(sim.images, sim.quaternions)
    same_params = _estimator(vol, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="the training images, poses or map"):
        same_params.fit(sim.images[::-1], sim.quaternions[::-1])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"resume": True}, "'resume' parameter .*False when 'checkpoint_dir' is None"),
        ({"checkpoint_dir": ".", "checkpoint_every": 0}, "'checkpoint_every' param"),
        ({"checkpoint_dir": 3}, "'checkpoint_dir' parameter"),
    ],
)
def test_bad_checkpoint_parameters(data, params, match):
    vol, sim = data
    with pytest.raises(ValueError, match=match):
        _estimator(vol, **params).fit(sim.images, sim.quaternions)


def test_fit_raises_what_skorch_would_swallow(data, monkeypatch):
    vol, sim = data
    original = TrainingRun.after_iteration

    def after_iteration(self, net):
        original(self, net)
        if self.done == 3:
            raise KeyboardInterrupt  # skorch's fit catches this and returns

    monkeypatch.setattr(TrainingRun, "after_iteration", after_iteration)
    est = _estimator(vol)
    with pytest.raises(KeyboardInterrupt, match="stopped after 3 of 10 iterations"):
        est.fit(sim.images, sim.quaternions)
    assert est.n_iter_ == 3 and est.predict(sim.images[:2]).shape == (2, 4)


def test_a_second_sigint_is_delivered_at_once(data, monkeypatch):
    vol, sim = data
    original = TrainingRun.after_iteration

    def after_iteration(self, net):
        if self.done == 1:  # two signals within one iteration
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # let the handlers run before the iteration ends
            pytest.fail("the second SIGINT should have raised at once")
        original(self, net)

    monkeypatch.setattr(TrainingRun, "after_iteration", after_iteration)
    with pytest.raises(KeyboardInterrupt):
        _estimator(vol).fit(sim.images, sim.quaternions)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------------------
# The command line: kill -9 after a checkpoint, then --resume
# --------------------------------------------------------------------------------------


def test_cli_fit_killed_and_resumed_equals_uninterrupted(tmp_path):
    skpose.write_volume(tmp_path / "map.mrc", skpose.phantom_volume(32), 3.0)
    sim = ["simulate", str(tmp_path / "map.mrc"), "--n", "24", "--snr", "2", "--ctf"]
    assert main([*sim, "--max-shift", "1", "--seed", "0", "--out", str(tmp_path)]) == 0
    fit = [
        "fit",
        str(tmp_path / "particles.star"),
        "--volume",
        str(tmp_path / "map.mrc"),
    ]
    fit += ["--max-iter", "16", "--batch-size", "8", "--w", "1", "--verbose", "0"]
    ck = tmp_path / "ck"
    checkpoints = ["--checkpoint-dir", str(ck), "--checkpoint-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    killed = tmp_path / "killed.joblib"
    proc = subprocess.Popen(
        [sys.executable, "-m", "skpose", *fit, *checkpoints, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (ck / CHECKPOINT_NAME).exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    k = torch.load(ck / CHECKPOINT_NAME, weights_only=True)["n_iter"]
    assert 0 < k < 16 and not killed.exists()
    resumed, whole = tmp_path / "resumed.joblib", tmp_path / "whole.joblib"
    # Bitwise only at one thread count: the killed run had one thread, so here too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*fit, *checkpoints, "--resume", "--out", str(resumed)]) == 0
        assert main([*fit, "--out", str(whole)]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = joblib.load(resumed)["estimator"], joblib.load(whole)["estimator"]
    particles = skpose.read_particles(tmp_path / "particles.star")
    images = skpose.io.load_particle_images(particles)
    _assert_same_model(a, b, images, particles.ctf)  # trained with the STAR's CTF
