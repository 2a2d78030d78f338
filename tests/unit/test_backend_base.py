"""The contract's base class (fanout/backends/base.py): capability flags and the drive
interface's defaults. In-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import fanout
from fanout.backends import get_backend, register_backend, unregister_backend
from fanout.backends.base import Backend, MapSpec
from fanout.models import TaskResult, WorkerInfo
from tests import tasks


class MapOnly(Backend):
    """A backend with ``map`` alone: every task in the caller, one by one."""

    name = "map-only"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = 1

    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        info = WorkerInfo.current(self.name)
        for i, item in enumerate(spec.items):
            yield TaskResult(i, True, spec.fn(item), None, info, 1, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("name", ["local", "inline", "rq"])
def test_the_built_in_backends_have_the_drive_interface(name: str) -> None:
    assert get_backend(name).drive_interface


def test_a_backend_with_map_alone_says_it_has_no_drive_interface() -> None:
    assert not MapOnly.drive_interface
    backend = MapOnly()
    spec = MapSpec(abs, None, iter(()))
    for call in (lambda: backend.start_run(spec), lambda: backend.pump(0.0)):
        with pytest.raises(NotImplementedError, match="map-only backend has no drive interface"):
            call()
    backend.wake()  # optional: does nothing
    assert [r.value for r in backend.map(MapSpec(abs, None, iter([-2])))] == [2]


def test_the_flag_follows_the_methods_unless_set() -> None:
    class Driven(MapOnly):
        def start_run(self, spec: MapSpec) -> Any:
            raise AssertionError

        def pump(self, max_wait: float | None) -> None: ...

        def end_run(self, run: Any) -> None: ...

    class Refused(Driven):
        drive_interface = False

    class Heir(Driven):
        pass

    assert Driven.drive_interface
    assert not Refused.drive_interface
    assert Heir.drive_interface


def test_an_executor_on_a_backend_without_it_says_so_at_the_first_call() -> None:
    register_backend("map-only", MapOnly)
    try:
        with fanout.Executor(backend="map-only") as ex:
            with pytest.raises(NotImplementedError, match=r"cannot serve fanout\.Executor"):
                ex.submit(tasks.square, 2)
            with pytest.raises(NotImplementedError, match=r"cannot serve fanout\.Executor"):
                ex.map(tasks.square, [1])
    finally:
        unregister_backend("map-only")
