"""The in-process tier: ``pytest tests/unit`` runs the run logic's unit tests (RunState,
Feed, Driver, the local deaths' decisions, the error vocabulary) and the backend
contract on the stub backend, whose workers are threads. No test here may start a
process: this fixture makes every way of starting one fail the test."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def no_process_started(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a test of the in-process tier (tests/unit) started a process")

    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
