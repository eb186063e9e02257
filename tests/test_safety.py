"""Never lose a file: atomic writes, inputs never overwritten, outputs checked early,
interrupts that end in one line and a non-zero exit.

Fault injection runs real subprocesses (``kill -9`` mid-write, SIGINT/SIGTERM during
``fit`` and ``predict``) and, where the test may mount one, a full tmpfs.
"""

import errno
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest

import skpose
from skpose.cli import main
from skpose.io._atomic import TEMP_TAG, atomic_path, remove_stale_temps

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds for a subprocess to reach a marker (a loaded 2-core CI box)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _temps(folder) -> list:
    return sorted(p.name for p in Path(folder).iterdir() if TEMP_TAG in p.name)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env


def _spawn(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"subprocess ended (rc {proc.returncode}) first:\n{out}{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in {TIMEOUT} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny RELION set (32 px, 64 particles, CTF), split, and a 2-iteration model."""
    d = tmp_path_factory.mktemp("safety")
    skpose.write_volume(d / "map.mrc", skpose.phantom_volume(32), 3.0)
    sim = ["simulate", str(d / "map.mrc"), "--n", "64", "--snr", "2", "--ctf"]
    assert main([*sim, "--seed", "0", "--out", str(d / "sim")]) == 0
    split = ["split", str(d / "sim/particles.star"), "--fraction", "0.5"]
    assert main([*split, "--out", str(d / "split")]) == 0
    assert main([*_fit_argv(d), "--out", str(d / "model.joblib")]) == 0
    return d


def _fit_argv(d: Path, max_iter: int = 2) -> list:
    return [
        "fit",
        str(d / "split/train.star"),
        "--volume",
        str(d / "map.mrc"),
        "--max-iter",
        str(max_iter),
        "--batch-size",
        "8",
        "--verbose",
        "0",
    ]


def _one_error_line(capsys, match: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skpose: error: "), err
    assert match in err[0], err[0]


# --------------------------------------------------------------------------------------
# atomic_path
# --------------------------------------------------------------------------------------


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a" / "report.json"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".json")
        assert tmp.name.startswith(f".report.json{TEMP_TAG}{os.getpid()}-")
        tmp.write_text("old")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_path(target) as tmp:
            tmp.write_text("half")
            raise exc
        assert target.read_text() == "old" and _temps(target.parent) == []


def test_atomic_path_keeps_permissions_and_follows_links(tmp_path):
    real = tmp_path / "real.star"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.star"
    link.symlink_to(real)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"
    assert real.stat().st_mode & 0o777 == 0o640


def test_a_failed_sync_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "m.mrc"
    skpose.write_volume(target, np.zeros((4, 4, 4)))
    before = _sha(target)

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        skpose.write_volume(target, np.ones((4, 4, 4)))
    assert _sha(target) == before and _temps(tmp_path) == []


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "train.star"
    dead_pid = subprocess.check_output(  # a process that has exited (and been reaped)
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True
    ).strip()
    stale = tmp_path / f".train.star{TEMP_TAG}{dead_pid}-0000.star"
    alive = tmp_path / f".train.star{TEMP_TAG}{os.getppid()}-0000.star"
    other = tmp_path / f".rest.star{TEMP_TAG}{dead_pid}-0000.star"
    for p in (stale, alive, other):
        p.write_text("partial")
    assert remove_stale_temps(target) == [stale]
    assert alive.exists() and other.exists() and not stale.exists()


# --------------------------------------------------------------------------------------
# kill -9 in the middle of a write
# --------------------------------------------------------------------------------------

# Runs ``skpose`` with every write into a skpose temporary file stalling halfway
# through its first chunk (flushed to the file, then a marker, then asleep).
_STALLING = r"""
import builtins, pathlib, sys, time
marker, argv = sys.argv[1], sys.argv[2:]
real_open = builtins.open

class Stalling:
    def __init__(self, f):
        self._f = f
    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        pathlib.Path(marker).touch()
        time.sleep(600)
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._f.close()

def stalling_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Stalling(f) if ".skpose-tmp-" in str(file) and "w" in mode else f

def write_text(self, data, *args, **kwargs):
    with stalling_open(self, "w") as f:
        return f.write(data)

builtins.open = stalling_open
pathlib.Path.write_text = write_text
from skpose.cli import main
sys.exit(main(argv))
"""


def _kill_mid_write(argv, marker: Path) -> None:
    proc = _spawn(["-c", _STALLING, str(marker), *argv])
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_mid_star_write_keeps_the_previous_star(work, tmp_path):
    particles = str(work / "sim/particles.star")
    assert main(["split", particles, "--out", str(tmp_path)]) == 0
    before = _sha(tmp_path / "train.star")
    argv = ["split", particles, "--seed", "1", "--out", str(tmp_path)]
    _kill_mid_write(argv, tmp_path.parent / f"{tmp_path.name}.marker")
    assert _sha(tmp_path / "train.star") == before
    assert len(_temps(tmp_path)) == 1  # the killed writer's half-written temp
    assert main(argv) == 0  # the next write of that target removes it
    assert _temps(tmp_path) == [] and _sha(tmp_path / "train.star") != before
    assert len(skpose.read_particles(tmp_path / "train.star")) == 13  # 20 % of 64


def test_kill_9_mid_model_write_keeps_the_previous_model(work, tmp_path):
    model = tmp_path / "model.joblib"
    shutil.copy(work / "model.joblib", model)
    before = _sha(model)
    argv = [*_fit_argv(work, max_iter=1), "--out", str(model)]
    _kill_mid_write(argv, tmp_path.parent / f"{tmp_path.name}.marker")
    assert _sha(model) == before and len(_temps(tmp_path)) == 1
    assert joblib.load(model)["estimator"].n_iter_ == 2  # still the old, whole model
    assert main(argv) == 0
    assert _temps(tmp_path) == [] and joblib.load(model)["estimator"].n_iter_ == 1


# --------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (skips where the test may not mount one)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_tmpfs_keeps_the_previous_files(work, small_tmpfs):
    particles = skpose.read_particles(work / "split/rest.star")
    star, volume, model = (small_tmpfs / n for n in ("p.star", "v.mrc", "m.joblib"))
    skpose.write_particles(star, particles.select(np.arange(4)))
    skpose.write_volume(volume, np.zeros((8, 8, 8)))
    with atomic_path(model) as tmp:
        joblib.dump({"weights": np.zeros(8)}, tmp)
    before = {p: _sha(p) for p in (star, volume, model)}
    big = particles.select(np.tile(np.arange(len(particles)), 60))  # ~1 MB of STAR

    def dump_model():
        with atomic_path(model) as tmp:
            joblib.dump({"weights": np.zeros(100_000)}, tmp)  # 800 kB

    for write in (
        lambda: skpose.write_particles(star, big),
        lambda: skpose.write_volume(volume, np.zeros((64, 64, 64))),  # 1 MB
        dump_model,
    ):
        with pytest.raises(OSError) as info:
            write()
        assert info.value.errno == errno.ENOSPC
    assert {p: _sha(p) for p in before} == before
    assert sorted(p.name for p in small_tmpfs.iterdir()) == [
        "m.joblib",
        "p.star",
        "v.mrc",
    ]


def _enospc_halfway(real):
    def write(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    return write


def _dump_enospc_halfway(value, filename, **kwargs):
    Path(filename).write_bytes(b"\x80\x04partial")
    raise OSError(errno.ENOSPC, "No space left on device", str(filename))


def test_enospc_mid_write_keeps_the_previous_star_and_model(
    work, tmp_path, capsys, monkeypatch
):
    # Without a mountable tmpfs: the write itself fails halfway, as on a full disk.
    star, model = tmp_path / "p.star", tmp_path / "model.joblib"
    shutil.copy(work / "split/rest.star", star)
    shutil.copy(work / "model.joblib", model)
    before = (_sha(star), _sha(model))
    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", _enospc_halfway(pathlib.Path.write_text))
        with pytest.raises(OSError, match="No space left"):
            skpose.write_particles(
                star, skpose.read_particles(work / "split/train.star")
            )
    monkeypatch.setattr(joblib, "dump", _dump_enospc_halfway)
    assert main([*_fit_argv(work, max_iter=1), "--out", str(model)]) == 2
    _one_error_line(capsys, "No space left on device")
    assert (_sha(star), _sha(model)) == before and _temps(tmp_path) == []


# --------------------------------------------------------------------------------------
# Never over an input
# --------------------------------------------------------------------------------------


def test_predict_over_its_input_is_refused_unless_force(work, capsys):
    star = work / "split/rest-copy.star"  # beside it: its image names still resolve
    shutil.copy(work / "split/rest.star", star)
    before = _sha(star)
    argv = ["predict", str(star), "--model", str(work / "model.joblib")]
    assert main([*argv, "--out", str(star)]) == 2
    _one_error_line(capsys, "is this command's input particles")
    assert _sha(star) == before
    assert main([*argv, "--out", str(star), "--force"]) == 0
    assert _sha(star) != before and _temps(star.parent) == []
    assert skpose.read_particles(star).has_column("rlnSkposeConfidence")


def test_predict_over_a_link_to_its_input_the_model_or_its_map(work, tmp_path, capsys):
    star = tmp_path / "rest.star"
    shutil.copy(work / "split/rest.star", star)
    os.link(star, tmp_path / "hard.star")
    (tmp_path / "soft.star").symlink_to(star)
    model = str(work / "model.joblib")
    argv = ["predict", str(star), "--model", model, "--out"]
    for out, what in (
        (tmp_path / "hard.star", "input particles"),
        (tmp_path / "soft.star", "input particles"),
        (Path(model), "input model"),
        (work / "map.mrc", "input map"),  # the map recorded in the model
    ):
        before = _sha(out)
        assert main([*argv, str(out)]) == 2
        _one_error_line(capsys, what)
        assert _sha(out) == before


def test_split_into_its_own_folder_is_refused_unless_force(work, tmp_path, capsys):
    assert (
        main(["split", str(work / "sim/particles.star"), "--out", str(tmp_path)]) == 0
    )
    train = tmp_path / "train.star"
    before, n = _sha(train), len(skpose.read_particles(train))
    argv = ["split", str(train), "--out", str(tmp_path)]
    assert main(argv) == 2
    _one_error_line(capsys, "train.star (written into --out")
    assert _sha(train) == before
    assert main([*argv, "--force"]) == 0
    assert len(skpose.read_particles(train)) == round(0.2 * n)  # split again


def test_other_commands_refuse_their_inputs(work, tmp_path, capsys):
    star = str(work / "split/rest.star")
    ref = tmp_path / "ref.mrc"
    shutil.copy(work / "map.mrc", ref)
    poses = tmp_path / "particles.star"
    shutil.copy(star, poses)
    cases = [
        (["reconstruct", star, "--reference", str(ref), "--out", str(ref)], ref),
        (["simulate", str(ref), "--poses", str(poses), "--out", str(tmp_path)], poses),
        (["simulate", str(ref), "--n", "4", "--out", str(tmp_path)], None),
    ]
    (tmp_path / "particles.mrcs").symlink_to(ref)  # simulate's stack is the map
    for argv, victim in cases:
        victim = victim or ref
        before = _sha(victim)
        assert main(argv) == 2
        _one_error_line(capsys, "is this command's input")
        assert _sha(victim) == before


# --------------------------------------------------------------------------------------
# Outputs checked before any work
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "out, flags",
    [
        ("/proc/skpose-not-creatable/model.joblib", []),
        ("{tmp}/a-file/model.joblib", []),
        ("{tmp}/model.joblib", ["--checkpoint-dir", "/proc/skpose-not-creatable"]),
        ("{tmp}", []),  # a folder
    ],
)
def test_fit_with_an_unwritable_out_fails_within_a_second(
    work, tmp_path, capsys, out, flags
):
    (tmp_path / "a-file").write_text("")
    argv = [*_fit_argv(work, max_iter=100_000), "--out", out.format(tmp=tmp_path)]
    start = time.perf_counter()
    assert main([*argv, *flags]) == 2
    assert time.perf_counter() - start < 1.0  # no training, no image loading
    _one_error_line(capsys, "Cannot write")
    assert not (tmp_path / "model.joblib").exists() and _temps(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_fit_into_a_read_only_folder_fails_within_a_second(work, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    start = time.perf_counter()
    assert main([*_fit_argv(work), "--out", str(folder / "sub/m.joblib")]) == 2
    assert time.perf_counter() - start < 1.0
    _one_error_line(capsys, "Permission denied")


def test_the_writability_probe_leaves_no_trace(work, tmp_path):
    argv = ["predict", str(work / "split/rest.star"), "--model", "nope.joblib"]
    assert main([*argv, "--out", str(tmp_path / "new/deeper/p.star")]) == 2
    assert list(tmp_path.iterdir()) == []  # folders probed, then removed


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--checkpoint-dir", "ck", "--checkpoint-every", "0"], "must be >= 1"),
        (["--checkpoint-dir", "ck", "--grid-w", "0.5,1"], "not to a grid search"),
        (["--save-on-interrupt", "--grid-lr", "1e-3"], "not to a grid search"),
    ],
)
def test_fit_checkpoint_options_are_checked_first(work, tmp_path, capsys, flags, match):
    argv = [*_fit_argv(work), "--out", str(tmp_path / "m.joblib"), *flags]
    assert main(argv) == 2
    _one_error_line(capsys, match)


def test_help_shows_the_safety_flags(capsys):
    for command in ("simulate", "split", "fit", "predict", "evaluate", "reconstruct"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--force" in text
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint-dir", "--checkpoint-every", "--resume"):
        assert flag in text
    assert "--save-on-interrupt" in text


# --------------------------------------------------------------------------------------
# Interrupts
# --------------------------------------------------------------------------------------


def _interrupt_fit(work, tmp_path, signum, *flags):
    """Run ``skpose fit`` (effectively endless), signal it once training is running."""
    out, ck = tmp_path / "m.joblib", tmp_path / "ck"
    argv = [*_fit_argv(work, max_iter=100_000), "--out", str(out)]
    argv += ["--checkpoint-dir", str(ck), "--checkpoint-every", "1", *flags]
    proc = _spawn(["-m", "skpose", *argv])
    _wait_for(ck / "checkpoint.pt", proc)  # the first iteration is done
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err.strip().splitlines(), out


def test_sigint_during_fit_exits_130_and_saves_nothing(work, tmp_path):
    rc, err, out = _interrupt_fit(work, tmp_path, signal.SIGINT)
    assert rc == 130
    assert len(err) == 1 and err[0].startswith("skpose: interrupted by SIGINT after ")
    assert err[0].endswith(f"of 100000 iterations; nothing written to {out}")
    assert not out.exists() and _temps(tmp_path) == []


def test_sigterm_during_fit_with_save_on_interrupt_saves_a_partial_model(
    work, tmp_path
):
    rc, err, out = _interrupt_fit(work, tmp_path, signal.SIGTERM, "--save-on-interrupt")
    assert rc == 143 and len(err) == 1
    model = joblib.load(out)
    n_iter = model["estimator"].n_iter_
    assert 1 <= n_iter < 100_000
    assert model["interrupted"] == {
        "signal": "SIGTERM",
        "n_iter": n_iter,
        "max_iter": 100_000,
    }
    assert f"partial model of {n_iter} iterations saved to {out}" in err[0]
    assert _temps(tmp_path) == []


# ``skpose predict`` whose image batches stall after the first (a marker, then asleep).
_SLOW_PREDICT = r"""
import pathlib, sys, time
from skpose.cli import main
from skpose.estimators import _chunks
marker, argv = sys.argv[1], sys.argv[2:]
real = _chunks.iter_particle_images

def slow(*args, **kwargs):
    for batch in real(*args, **kwargs):
        yield batch
        pathlib.Path(marker).touch()
        time.sleep(600)

_chunks.iter_particle_images = slow  # where predict reads its chunks
sys.exit(main(argv))
"""


@pytest.mark.parametrize(
    "signum, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_signal_during_predict_one_line_no_output(work, tmp_path, signum, rc):
    out = tmp_path / "predicted.star"
    argv = ["predict", str(work / "split/rest.star"), "--model"]
    argv += [str(work / "model.joblib"), "--out", str(out), "--batch-size", "4"]
    marker = tmp_path / "marker"
    proc = _spawn(["-c", _SLOW_PREDICT, str(marker), *argv])
    _wait_for(marker, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == rc
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [
        f"skpose: interrupted by {name}; no partial file was written"
    ]
    assert not out.exists() and _temps(tmp_path) == []


def test_predict_warns_about_a_partial_model(work, tmp_path, capsys):
    model = joblib.load(work / "model.joblib")
    model["interrupted"] = {"signal": "SIGINT", "n_iter": 2, "max_iter": 50}
    joblib.dump(model, tmp_path / "partial.joblib")
    argv = ["predict", str(work / "split/rest.star"), "--model"]
    argv += [str(tmp_path / "partial.joblib"), "--out", str(tmp_path / "p.star")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "partial model (2 of 50 iterations, saved on SIGINT)" in err
