"""Memory cgroups of a test's own, v1 or v2, for the kernel's OOM killer to act in
(tests/test_causes_local.py, tests/test_causes_rq.py). Root only; a machine has the
memory controller on one of the two hierarchies, and the test of the other skips saying
why (under ``CI`` too: the first runs); any other reason to skip fails under ``CI``."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, NoReturn

import pytest

from tests.helpers import wait_until

MB = 2**20
OOM_LIMIT = 150 * MB  # the test cgroup's memory limit


def v1_limits(limit: int = OOM_LIMIT) -> dict[str, int]:
    return {"memory.limit_in_bytes": limit, "memory.memsw.limit_in_bytes": limit}


def v2_limits(limit: int = OOM_LIMIT) -> dict[str, int]:
    return {"memory.max": limit, "memory.swap.max": 0}


class Hierarchy(NamedTuple):
    """A mounted cgroup hierarchy, and this process's cgroup in it."""

    mount: Path
    own: Path


def hierarchy(version: int) -> Hierarchy | None:
    """The cgroup v1 hierarchy with the memory controller, or the cgroup v2 one."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, (kind, _source, options) = left.split(), right.split()[:3]
        if (version, kind) == (2, "cgroup2") or (
            (version, kind) == (1, "cgroup") and "memory" in options.split(",")
        ):
            mount, root = Path(fields[4]), fields[3]
            for entry in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, path = entry.split(":", 2)
                if controllers == "" if version == 2 else "memory" in controllers.split(","):
                    inside = os.path.relpath(path, root) if path.startswith(root) else path
                    return Hierarchy(mount, (mount / inside.lstrip("/")).resolve())
            return Hierarchy(mount, mount)
    return None


def v2_memory() -> bool:
    """Whether cgroup v2 has the memory controller here (its root cgroup.controllers)."""
    v2 = hierarchy(2)
    return v2 is not None and "memory" in (v2.mount / "cgroup.controllers").read_text().split()


def cannot(reason: str, covered_by_the_other: bool = False) -> NoReturn:
    """Skip, saying ``reason``; fail instead when ``CI`` is set, unless the other cgroup
    version's test runs here (a machine has the memory controller on one of them)."""
    if os.environ.get("CI") and not covered_by_the_other:
        pytest.fail(reason)
    pytest.skip(reason)


def v1_parent() -> Path:
    """Where the test's cgroup v1 memory cgroup goes: in this process's own."""
    v1 = hierarchy(1)
    if v1 is None:
        on_v2 = v2_memory()
        cannot("no cgroup v1 hierarchy has the memory controller"
               + (" (cgroup v2 has it: the v2 test runs)" if on_v2 else ""),
               covered_by_the_other=on_v2)  # fmt: skip
    return v1.own


def v2_parent() -> Path:
    """Where the test's cgroup v2 cgroup goes: in this process's own cgroup or the
    nearest ancestor with memory in its ``cgroup.subtree_control`` (so that a child
    gets ``memory.max``), else in the root, where the test enables memory."""
    v2, v1 = hierarchy(2), hierarchy(1)
    if v2 is None:
        cannot("no cgroup v2 hierarchy is mounted", covered_by_the_other=v1 is not None)
    if not v2_memory():
        bound = f": the memory controller is bound to cgroup v1 ({v1.mount})" if v1 else ""
        reason = (f"cgroup v2 ({v2.mount}) cannot limit memory here: its cgroup.controllers"
                  f" lists no memory controller{bound}")  # fmt: skip
        cannot(reason, covered_by_the_other=v1 is not None)
    for parent in (v2.own, *v2.own.parents):
        if not parent.is_relative_to(v2.mount) or parent == v2.mount:
            break
        if "memory" in (parent / "cgroup.subtree_control").read_text().split():
            return parent
    try:
        (v2.mount / "cgroup.subtree_control").write_text("+memory")
    except OSError as exc:
        cannot(f"cannot enable the memory controller in {v2.mount}: {exc}")
    return v2.mount


@contextlib.contextmanager
def memory_cgroup(parent: Path, limits: dict[str, int]) -> Iterator[Path]:
    """A cgroup of the test's own under ``parent`` (unique name) with ``limits`` written
    to its files (those that exist, in order); removed after, once empty."""
    if os.geteuid() != 0:
        cannot("making a memory cgroup needs root")
    path = parent / f"fanout-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        cannot(f"cannot make a cgroup in {parent}: {exc}")
    try:
        for name, value in limits.items():
            if (path / name).exists():
                (path / name).write_text(str(value))
        yield path
    finally:
        procs = path / "cgroup.procs"
        for pid in procs.read_text().split():  # what the test started, if it failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        wait_until(lambda: not procs.read_text().split(), 10, f"{path} empty")
        path.rmdir()
