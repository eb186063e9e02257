"""Thread count and OpenMP wait policy: skpose._threads and ``skpose --threads``."""

import os

import pytest
import torch

from skpose import _threads, available_cpus, set_threads
from skpose.cli import main


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_available_cpus_is_the_affinity_mask_at_most():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000", "cpu/cpu.cfs_period_us": "100000"}, 4.0),
        ({}, None),
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _threads._cgroup_cpu_quota(tmp_path) == quota


def test_a_quota_caps_the_cpus(monkeypatch):
    monkeypatch.setattr(_threads, "_cgroup_cpu_quota", lambda: 0.5)
    assert available_cpus() == 1


def test_default_threads_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # nested lists: not a count
    assert _threads.default_threads() == available_cpus()


def test_set_threads(restore_threads):
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="'n_threads' to be None or an int >= 1"):
        set_threads(0)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "PASSIVE"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
        ({"GOMP_SPINCOUNT": "10000"}, None),  # the user's choice: left alone
    ],
)
def test_wait_policy_is_passive_unless_chosen(monkeypatch, env, expected):
    for name in _threads._WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _threads._set_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_cli_threads_option(restore_threads, capsys):
    assert main(["split", "missing.star", "--out", "x", "--threads", "1"]) == 2
    assert torch.get_num_threads() == 1
    with pytest.raises(SystemExit) as exit_:
        main(["split", "missing.star", "--out", "x", "--threads", "0"])
    assert exit_.value.code == 2
    assert "argument --threads: expected an integer > 0, got '0'" in (
        capsys.readouterr().err
    )
