"""Tracing with OpenTelemetry (issue 26): the caller's trace context reaches every task
on local, inline and rq, the spans exist with their attributes, and without
OpenTelemetry nothing changes.

The callers run as subprocesses: a tracer provider is set once per process, and this
one must stay untraced for the other tests. Every process (caller, local workers, a
``fanout worker`` and its task process) appends its spans to one JSON-lines file as
each span ends (tests/spans.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fanout
from tests import tasks
from tests.helpers import (
    ROOT,
    RedisServer,
    finish,
    start_python,
    start_worker,
    stop_workers,
    wait_until,
)

# Looked for, not imported: this process must not use OpenTelemetry (the other tests).
if importlib.util.find_spec("opentelemetry") is None or importlib.util.find_spec(
    "opentelemetry.sdk"
) is None:  # fmt: skip
    pytest.skip("needs the otel extra and opentelemetry-sdk", allow_module_level=True)

# Blocks every import of OpenTelemetry, as if it were not installed.
BLOCKER = """
import sys
class _NoOtel:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _NoOtel())
"""

# A caller with a tracer provider: runs tests.tasks.trace_id under a span of its own and
# prints what it saw as one JSON object. {backend}, {options}: filled in by each test.
CALLER = """
import json, os, sys
import fanout
from opentelemetry import trace
from tests import tasks
from tests.spans import use_file_exporter

use_file_exporter(os.environ["FANOUT_TEST_SPANS"])
out = {{}}
with trace.get_tracer("test").start_as_current_span("caller") as span:
    out["trace_id"] = trace.format_trace_id(span.get_span_context().trace_id)
    out["span_id"] = trace.format_span_id(span.get_span_context().span_id)
    with fanout.Fanout({backend!r}, **{options!r}) as fo:
        results = list(fo.map(tasks.trace_id, range(4)))
        out["run_id"] = fo.backend.last_run_id()
        failed = list(fo.map(tasks.fail, ["boom"]))
    out["values"] = [r.value for r in results]
    out["workers"] = [[r.worker.name, r.worker.pid, r.worker.host] for r in results]
    out["failed"] = failed[0].error.type
print(json.dumps(out))
"""


def spans_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_caller(script: str, spans: Path, timeout: float = 60) -> dict[str, Any]:
    proc = start_python("-c", script, env={"FANOUT_TEST_SPANS": str(spans)})
    out, err = finish(proc, timeout)
    assert proc.returncode == 0, err
    return dict(json.loads(out.splitlines()[-1]))


def check_spans(seen: dict[str, Any], spans: list[dict[str, Any]], backend: str) -> None:
    """The caller's ``fanout.run`` spans are children of its own span; each task has a
    ``fanout.task`` span in the caller's trace, child of its run's, with its identity."""
    runs = [s for s in spans if s["name"] == "fanout.run"]
    assert len(runs) == 2, spans
    run, failed_run = runs
    assert run["trace_id"] == seen["trace_id"]
    assert run["parent"] == seen["span_id"]
    assert run["attributes"]["fanout.backend"] == backend
    assert run["attributes"]["fanout.target"] == "tests.tasks:trace_id"
    assert run["attributes"]["fanout.tasks"] == 4
    if seen["run_id"] is not None:  # rq: the run's own id
        assert run["attributes"]["fanout.run_id"] == seen["run_id"]
    tasks = [s for s in spans if s["name"] == "fanout.task" and s["parent"] == run["span_id"]]
    assert sorted(s["attributes"]["fanout.index"] for s in tasks) == [0, 1, 2, 3]
    by_index = {s["attributes"]["fanout.index"]: s for s in tasks}
    for index, (name, pid, host) in enumerate(seen["workers"]):
        attributes = by_index[index]["attributes"]
        assert by_index[index]["trace_id"] == seen["trace_id"]
        assert attributes["fanout.run_id"] == run["attributes"]["fanout.run_id"]
        assert (attributes["fanout.worker.name"], attributes["process.pid"],
                attributes["host.name"]) == (name, pid, host)  # fmt: skip
        assert "fanout.cause" not in attributes
    [failure] = [s for s in spans if s["parent"] == failed_run["span_id"]]
    assert failure["status"] == "ERROR"
    assert failure["attributes"]["fanout.cause"] == "raised"
    assert failure["attributes"]["error.type"] == "ValueError"
    assert failed_run["status"] == "ERROR"
    assert failed_run["events"] == ["fanout.task.failed"]


@pytest.mark.parametrize(
    ("backend", "options"), [("local", {"workers": 2}), ("inline", {})], ids=["local", "inline"]
)
def test_tasks_run_in_the_callers_trace_with_a_span_each(
    backend: str, options: dict[str, Any], tmp_path: Path
) -> None:
    spans = tmp_path / "spans.jsonl"
    seen = run_caller(CALLER.format(backend=backend, options=options), spans)
    assert seen["values"] == [seen["trace_id"]] * 4
    assert seen["failed"] == "ValueError"
    check_spans(seen, spans_in(spans), backend)


@pytest.fixture
def traced_worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """A ``fanout worker`` whose tracer provider FANOUT_OTEL_SETUP sets up."""
    env = {"FANOUT_OTEL_SETUP": "tests.tasks:otel_setup",
           "FANOUT_TEST_SPANS": str(tmp_path / "spans.jsonl")}  # fmt: skip
    worker = start_worker(redis_server.url, "traced-1", "--queue", "traced", env=env)
    from tests.test_drain import names

    wait_until(lambda: "traced-1" in names(redis_server.url), 20, "the worker registers")
    yield "traced-1"
    stop_workers([worker])


def test_tasks_on_rq_run_in_the_callers_trace_with_a_span_each(
    redis_server: RedisServer, traced_worker: str, tmp_path: Path
) -> None:
    spans = tmp_path / "spans.jsonl"  # the worker's too
    options = {"redis_url": redis_server.url, "queue": "traced"}
    seen = run_caller(CALLER.format(backend="rq", options=options), spans)
    assert seen["values"] == [seen["trace_id"]] * 4
    assert {name for name, _, _ in seen["workers"]} == {traced_worker}
    check_spans(seen, spans_in(spans), "rq")

    # A caller that does not trace (this process): the worker's spans are roots.
    before = len(spans_in(spans))
    with fanout.Fanout("rq", redis_url=redis_server.url, queue="traced") as fo:
        assert [r.value for r in fo.map(tasks.square, [2, 3])] == [4, 9]
        run_id = fo.backend.last_run_id()
    roots = spans_in(spans)[before:]
    assert sorted(s["attributes"]["fanout.index"] for s in roots) == [0, 1]
    assert {(s["name"], s["parent"], s["attributes"]["fanout.run_id"]) for s in roots} == {
        ("fanout.task", None, run_id)
    }


def test_a_stock_rq_worker_runs_tasks_in_the_callers_trace(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    command = [sys.executable, "-m", "rq.cli", "worker", "-u", url, "--name", "stock-traced",
               "traced-stock"]  # fmt: skip
    stock = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        from tests.test_drain import names

        wait_until(lambda: "stock-traced" in names(url), 20, "the stock worker registers")
        options = {"redis_url": url, "queue": "traced-stock"}
        seen = run_caller(CALLER.format(backend="rq", options=options), tmp_path / "s.jsonl")
    finally:
        stop_workers([stock])  # type: ignore[list-item]
    assert seen["values"] == [seen["trace_id"]] * 4
    assert {name for name, _, _ in seen["workers"]} == {"stock-traced"}


SUBMITS = """
import json, os
import fanout
from opentelemetry import trace
from tests import tasks
from tests.spans import use_file_exporter

use_file_exporter(os.environ["FANOUT_TEST_SPANS"])
tracer = trace.get_tracer("test")
out = []
with fanout.Executor(2, **{options!r}) as ex, fanout.Pool(2, **{options!r}) as pool:
    for name in ("first", "second"):
        with tracer.start_as_current_span(name) as span:
            want = trace.format_trace_id(span.get_span_context().trace_id)
            got = [ex.submit(tasks.trace_id).result(),
                   pool.apply_async(tasks.trace_id).get(),
                   *ex.map(tasks.trace_id, range(2))]
        out.append([want, got])
    untraced = ex.submit(tasks.trace_id).result()
print(json.dumps({{"calls": out, "untraced": untraced}}))
"""


@pytest.mark.parametrize("options", [{}, {"backend": "inline"}], ids=["local", "inline"])
def test_each_submit_runs_in_its_submitters_trace(options: dict[str, Any], tmp_path: Path) -> None:
    if options:  # the inline backend takes no worker count
        script = SUBMITS.replace("fanout.Executor(2, ", "fanout.Executor(").replace(
            "fanout.Pool(2, ", "fanout.Pool("
        )
    else:
        script = SUBMITS
    seen = run_caller(script.format(options=options), tmp_path / "spans.jsonl")
    (first, got_first), (second, got_second) = seen["calls"]
    assert first != second
    assert got_first == [first] * 4
    assert got_second == [second] * 4
    assert seen["untraced"] not in (first, second)


ASYNC = """
import asyncio, json, os
import fanout
from opentelemetry import trace
from tests import tasks
from tests.spans import use_file_exporter

use_file_exporter(os.environ["FANOUT_TEST_SPANS"])

async def main():
    async with fanout.AsyncFanout(workers=2) as fo:
        with trace.get_tracer("test").start_as_current_span("caller") as span:
            want = trace.format_trace_id(span.get_span_context().trace_id)
            got = [r.value async for r in fo.map(tasks.trace_id, range(3))]
    return {"want": want, "got": got}

print(json.dumps(asyncio.run(main())))
"""


def test_an_async_map_runs_in_its_consumers_trace(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    seen = run_caller(ASYNC, spans)
    assert seen["got"] == [seen["want"]] * 3
    [run] = [s for s in spans_in(spans) if s["name"] == "fanout.run"]
    assert run["trace_id"] == seen["want"]


NO_PROVIDER = """
import json
import fanout
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from tests import tasks

# A context that came from elsewhere (an incoming request), no tracer provider here.
remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
with fanout.Executor(2) as ex:
    first = ex.submit(tasks.trace_id).result()  # no context yet: the run carries none
    with trace.use_span(NonRecordingSpan(remote)):
        values = [r.value for r in fanout.run(tasks.trace_id, range(3), workers=2)]
        values.append(ex.submit(tasks.trace_id).result())  # the call carries its own
print(json.dumps({"values": values, "want": trace.format_trace_id(0x1234), "first": first}))
"""


def test_without_a_tracer_provider_the_context_still_travels(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    seen = run_caller(NO_PROVIDER, spans)
    assert seen["values"] == [seen["want"]] * 4
    assert seen["first"] == "0" * 32  # no span inside that task
    assert not spans.exists()  # nobody records anything


def test_import_fanout_loads_no_opentelemetry() -> None:
    importtime = subprocess.run([sys.executable, "-X", "importtime", "-c", "import fanout"],
                                capture_output=True, text=True, check=True)  # fmt: skip
    assert "opentelemetry" not in importtime.stderr
    script = textwrap.dedent("""
        import sys, fanout
        from tests import tasks
        for backend in ("local", "inline"):
            results = fanout.run(tasks.square, range(3), backend=backend)
            assert [r.value for r in results] == [0, 1, 4]
        with fanout.Executor(1) as ex:
            assert ex.submit(tasks.square, 3).result() == 9
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)  # fmt: skip
    proc = start_python("-c", script)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert out == "[]\n"  # installed, but nobody uses it: nothing of it is loaded


def test_everything_runs_with_opentelemetry_not_installed(tmp_path: Path) -> None:
    script = BLOCKER + textwrap.dedent("""
        import fanout
        from tests import tasks
        for backend in ("local", "inline"):
            results = fanout.run(tasks.square, range(3), backend=backend)
            assert [r.value for r in results] == [0, 1, 4]
        with fanout.Executor(1) as ex:
            assert ex.submit(tasks.square, 3).result() == 9
        # A context that arrives anyway (a job from a traced caller) is ignored.
        from fanout import tracing
        parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        assert tracing.task_spans({"traceparent": parent}) is None
        print("ok")
    """)  # fmt: skip
    proc = start_python("-c", script)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert out == "ok\n"


def test_a_failing_otel_setup_stops_the_worker_in_one_line(redis_server: RedisServer) -> None:
    from tests.helpers import run_fanout

    result = run_fanout("worker", "--redis-url", redis_server.url, "--burst",
                        env={"FANOUT_OTEL_SETUP": "tests.tasks:fail"})  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("fanout: error: FANOUT_OTEL_SETUP=tests.tasks:fail failed:"
                           " TypeError:")  # fmt: skip
