"""Shared fixtures: the ``backend`` fixture runs the contract tests on every backend."""

from __future__ import annotations

import os

import psutil
import pytest

BACKENDS = ["local", "inline"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every test must leave no child process of ours running."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    _gone, alive = psutil.wait_procs(
        [p for p in me.children(recursive=True) if p.pid not in before], timeout=5
    )
    assert not alive, f"processes left behind: {alive}"
