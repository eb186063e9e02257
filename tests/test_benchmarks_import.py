"""Every benchmark script imports: a name one of them takes from another still exists.

The scripts are run by hand, not in CI; importing them (no ``main()``) catches what a
refactor breaks without running their minutes of work.
"""

import importlib
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


def test_there_are_benchmarks():
    assert "search_vs_network" in SCRIPTS and "throughput" in SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # how they import each other
    monkeypatch.setattr(os, "environ", dict(os.environ))  # one sets GOMP_SPINCOUNT
    for loaded in [m for m in sys.modules if m in SCRIPTS]:
        monkeypatch.delitem(sys.modules, loaded)
    module = importlib.import_module(name)
    assert callable(module.main)
