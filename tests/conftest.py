"""Shared fixtures: where the third-party test data lives, devices, dtypes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent


def _find_shared_data() -> Path | None:
    env = os.environ.get("SKPOSE_TEST_DATA")
    candidates = [Path(env)] if env else []
    candidates += [
        _HERE.parent.parent / "shared" / "data",
        _HERE.parent / "shared" / "data",
    ]
    for path in candidates:
        if (path / "README.md").is_file() and (path / "conventions").is_dir():
            return path.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real third-party files (``../shared/data``).

    Skips the test when the folder is absent, unless ``SKPOSE_REQUIRE_TEST_DATA=1``,
    where a missing folder fails (CI sets it).
    """
    path = _find_shared_data()
    if path is None:
        msg = (
            "shared test data not found: set SKPOSE_TEST_DATA or place the folder at "
            "../shared/data beside the checkout"
        )
        if os.environ.get("SKPOSE_REQUIRE_TEST_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every available device: cpu, and cuda when present."""
    return request.param
