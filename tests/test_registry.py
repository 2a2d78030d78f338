"""Backend registry: names, entry points, errors, settings from the environment."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator

import pytest

import fanout
from fanout import Backend, MapSpec, TaskResult, UnknownBackend
from fanout.backends import backend_names, get_backend, unregister_backend
from tests import tasks


def test_unknown_backend_lists_the_valid_names() -> None:
    with pytest.raises(UnknownBackend) as info:
        fanout.run(tasks.square, [1], backend="nope")
    assert isinstance(info.value, ValueError)
    assert "'nope'" in str(info.value)
    assert "inline" in str(info.value)
    assert "local" in str(info.value)


def test_no_silent_fallback_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANOUT_BACKEND", "missing")
    with pytest.raises(UnknownBackend):
        fanout.run(tasks.square, [1])


def test_fanout_backend_and_workers_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FANOUT_BACKEND", "inline")
    (r,) = fanout.run(tasks.whoami, [0])
    assert r.worker.backend == "inline"
    monkeypatch.setenv("FANOUT_BACKEND", "local")
    monkeypatch.setenv("FANOUT_WORKERS", "1")
    results = fanout.run(tasks.whoami, range(20))
    assert len({r.worker.pid for r in results}) == 1
    monkeypatch.setenv("FANOUT_WORKERS", "many")
    with pytest.raises(ValueError, match="FANOUT_WORKERS"):
        fanout.run(tasks.square, [1])


def test_a_third_party_backend_registers_through_the_entry_point_group(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "echo_backend.py"
    package.write_text(
        textwrap.dedent(
            """
            from fanout import Backend, TaskResult, WorkerInfo

            class EchoBackend(Backend):
                name = "echo"

                def __init__(self, workers=None):
                    self.workers = 1

                def map(self, spec):
                    info = WorkerInfo.current(self.name)
                    for i, item in enumerate(spec.items):
                        yield TaskResult(i, True, item, None, info, 1, 0.0, 0.0, 0.0)
            """
        )
    )
    dist = tmp_path / "echo_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fanout.backends]\necho = echo_backend:EchoBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "echo" in backend_names()
    results = fanout.run(tasks.square, [1, 2], backend="echo")
    assert [r.value for r in results] == [1, 2]
    assert all(r.worker.backend == "echo" for r in results)
    sys.modules.pop("echo_backend", None)


def test_register_backend_in_code() -> None:
    class Doubling(Backend):
        name = "doubling"

        def __init__(self, workers: int | None = None) -> None:
            self.workers = 1

        def map(self, spec: MapSpec) -> Iterator[TaskResult]:
            inner = get_backend("inline")()
            yield from inner.map(spec)

    fanout.register_backend("doubling", Doubling)
    try:
        assert get_backend("doubling") is Doubling
        assert [r.value for r in fanout.run(tasks.square, [3], backend="doubling")] == [9]
    finally:
        unregister_backend("doubling")
    assert "doubling" not in backend_names()


def test_import_fanout_does_not_import_the_cli_stack_or_the_records() -> None:
    import subprocess

    code = (
        "import sys, fanout; "
        "print(sorted(m for m in ('typer', 'rich', 'redis', 'rq', 'cloudpickle', 'msgspec') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_option_a_backend_does_not_take_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="inline backend takes no option 'daemon'") as info:
        fanout.Fanout("inline", daemon=True)
    assert isinstance(info.value, fanout.FanoutError)
    with pytest.raises(
        ValueError,
        match=r"its options: daemon, max_memory_per_worker, max_tasks_per_worker, process_name",
    ):
        fanout.Fanout("local", queue="q")


def test_max_memory_on_the_inline_backend_is_refused_before_anything_runs() -> None:
    # Its tasks run in the caller's own process, which fanout does not end.
    with pytest.raises(ValueError, match="max_memory is not available on the inline backend"):
        fanout.run(tasks.square, [1], backend="inline", max_memory="1G")
