"""A task module a worker's allowlist must keep out: importing it is visible.

On import it creates the file named by ``FANOUT_TEST_MARKER`` (when that is set), so a
test can tell whether any process imported it. Tests set that variable only in a
worker's environment: the test process imports this module too (the client resolves
the target by name) without leaving a mark.
"""

from __future__ import annotations

import os
from typing import Any

MARKER_ENV = "FANOUT_TEST_MARKER"

_marker = os.environ.get(MARKER_ENV)
if _marker:
    with open(_marker, "a") as fh:
        fh.write(f"imported by pid {os.getpid()}\n")


def anything(x: Any = None) -> Any:
    return x


def touch(path: str) -> str:
    with open(path, "w"):
        pass
    return path
