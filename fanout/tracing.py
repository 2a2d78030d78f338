"""Tracing with OpenTelemetry (the extra ``fanout[otel]``), all of it in this module.

The caller's trace context travels with every task as W3C headers (``traceparent``,
``tracestate``, ``baggage``) in a plain dict, the *carrier*, plus the run's id
(``fanout-run-id``)::

    caller   Fanout.map / run / submit, AsyncFanout.map -- begin_run() --> MapSpec.trace
             Executor.map, Pool.map ...                  -- carrier() ---> MapSpec.trace
             Executor.submit, Pool.apply_async           -- carrier() ---> Call.trace
                                                            (only where it differs)
    local    the run's first message to a worker (FN) --> TaskSpans in the worker process
    rq       JobArgs.trace --> the fanout worker's job --> its task process, as local
    inline   the caller itself                        --> TaskSpans in the caller

With a tracer provider configured, the caller records a ``fanout.run`` span (the
parent of its tasks') and each worker a ``fanout.task`` span per task, whose parent is
the caller's context (or the submitting call's); inside a task the current span is
that one, so its trace id is the caller's. Without a provider the caller's context is
made current inside each task all the same.

Cheap when unused: a run is traced only where its caller has a tracer provider set or
a current span (:func:`active`, which imports nothing: both need
``opentelemetry.trace`` loaded already); a worker imports OpenTelemetry only for a run
that carries a context, or where a tracer provider was set up in its own process
(``FANOUT_OTEL_SETUP``). Without the extra installed nothing changes at all.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fanout._wire import FAILED, NOT_RUN, PAYLOAD, STATUS, Record
from fanout.models import NOT_RUN as NOT_RUN_NAME
from fanout.models import TaskError, TaskResult

#: Loaded in any process that traces (and in some that do not: redis-py 8 loads it
#: where OpenTelemetry is installed, for its metrics).
TRACE_MODULE = "opentelemetry.trace"
#: The carrier's key for the run's id (the span attribute ``fanout.run_id``).
RUN_ID = "fanout-run-id"
TRACER = "fanout"
CALLS = "fanout.dropin.calls"
#: How each of fanout's own error types ends a task, where an error has no ``cause``.
CAUSES = {"TaskTimeout": "timeout", "WorkerLost": "lost", "Cancelled": "cancelled"}
Carrier = dict[str, str]


def provider_set() -> bool:
    """Has this process set a tracer provider (spans are recorded here)?"""
    trace = sys.modules.get(TRACE_MODULE)
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def active() -> bool:
    """Does this caller trace: a tracer provider set, or a current span (one that came
    from elsewhere, without a provider here)?"""
    trace = sys.modules.get(TRACE_MODULE)
    if trace is None:
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return True
    return bool(trace.get_current_span().get_span_context().is_valid)


def cause_of(error: TaskError, ran: bool = True) -> str:
    """Why a task failed, in ``TaskError.cause``'s words: its own ``cause`` where it has
    one, else derived from its type (``ran``: False for a task no process ran)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, str):
        return cause
    if not ran or error.type == "NotRun":
        return "not-run"
    return CAUSES.get(error.type, "raised")


def carrier(run: Mapping[str, str] | None = None) -> Carrier | None:
    """The current context as a carrier; None when there is none, or when it is the one
    ``run`` already carries (a drop-in's submit inside the context its run has)."""
    if not active():
        return None
    from opentelemetry import propagate

    headers: Carrier = {}
    propagate.inject(headers)
    if not headers:
        return None
    if run is not None and all(run.get(key) == value for key, value in headers.items()):
        return None
    return headers


def map_carrier() -> Carrier | None:
    """The carrier of a drop-in's map (``Executor.map``, ``Pool.map``...): the current
    context and a run id, or None without a context."""
    headers = carrier()
    if headers is not None:
        headers[RUN_ID] = uuid.uuid4().hex
    return headers


def run_carrier() -> Carrier | None:
    """The carrier of a drop-in's long-lived run (each call brings its own context):
    its id alone, where the caller traces."""
    return {RUN_ID: uuid.uuid4().hex} if active() else None


class RunTrace:
    """The caller's side of one run: its ``fanout.run`` span (None without a recording
    tracer provider), the carrier its tasks take, and the run's counts for the span."""

    def __init__(self, span: Any, headers: Carrier) -> None:
        self.span = span
        self.carrier = headers
        self.tasks = 0
        self.failed = 0

    def count(self, result: TaskResult) -> None:
        """One result of the run: failures become events of the run's span (the task's
        own span may never have ended: a killed process, a timeout)."""
        self.tasks += 1
        if result.error is not None:
            self.failed += 1
            if self.span is not None:
                error = result.error
                ran = result.worker.name != NOT_RUN_NAME
                self.span.add_event("fanout.task.failed", {
                    "fanout.index": result.index, "fanout.cause": cause_of(error, ran),
                    "error.type": error.type, "fanout.worker.name": result.worker.name,
                })  # fmt: skip

    def end(self, run_id: str | None = None) -> None:
        """The run is over (``run_id``: the backend's own, where it has one)."""
        span = self.span
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("fanout.run_id", run_id or self.carrier[RUN_ID])
        span.set_attribute("fanout.tasks", self.tasks)
        span.set_attribute("fanout.failed", self.failed)
        if self.failed:
            span.set_status(Status(StatusCode.ERROR, f"{self.failed} of {self.tasks} tasks"
                                                     " failed"))  # fmt: skip
        span.end()


def begin_run(target: str | None, backend: str) -> RunTrace | None:
    """A run starts: its ``fanout.run`` span, with a tracer provider configured, and the
    carrier of its context (the span's, else the caller's). None: nothing to carry."""
    if not active():
        return None
    from opentelemetry import propagate, trace

    attributes = {"fanout.backend": backend, "fanout.target": target or "(callable)"}
    span = trace.get_tracer(TRACER).start_span("fanout.run", kind=trace.SpanKind.PRODUCER,
                                               attributes=attributes)  # fmt: skip
    headers: Carrier = {}
    if not span.is_recording():  # no provider: no span; the caller's context, if any
        propagate.inject(headers)
        if not headers:
            return None
        headers[RUN_ID] = uuid.uuid4().hex
        return RunTrace(None, headers)
    propagate.inject(headers, context=trace.set_span_in_context(span))
    headers[RUN_ID] = uuid.uuid4().hex
    return RunTrace(span, headers)


class TaskSpans:
    """A worker's side of a run: each task runs with the caller's context current, in a
    ``fanout.task`` span where a tracer provider is configured in this process."""

    def __init__(self, headers: Mapping[str, str] | None) -> None:
        from opentelemetry import context, propagate, trace

        self._context, self._trace = context, trace
        self._extract = propagate.extract
        self.parent = propagate.extract(headers) if headers else context.Context()
        self.tracer = trace.get_tracer(TRACER)
        self.attributes: dict[str, Any] = {
            "fanout.worker.name": multiprocessing.current_process().name,
            "process.pid": os.getpid(),
            "host.name": socket.gethostname(),
        }
        run_id = (headers or {}).get(RUN_ID)
        if run_id:
            self.attributes["fanout.run_id"] = run_id

    def run(self, index: int, item: Any, task: Callable[[], Record]) -> Record:
        """``task()`` (the task ``index`` of input ``item``) in its span; its record."""
        parent = self.parent
        # A drop-in's call (fanout.dropin.calls.Call, named, not imported: it imports
        # this module) may carry its submitter's context.
        kind = type(item)
        if kind.__name__ == "Call" and kind.__module__ == CALLS and item.trace is not None:
            parent = self._extract(item.trace)  # a drop-in's call: its submitter's context
            item.trace = None  # made current here: the call itself need not (calls.py)
        attributes = {**self.attributes, "fanout.index": index}
        span = self.tracer.start_span("fanout.task", context=parent, attributes=attributes,
                                      kind=self._trace.SpanKind.CONSUMER)  # fmt: skip
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        try:
            record = task()
        finally:
            self._context.detach(token)
        if span.is_recording():
            if record[STATUS] in (FAILED, NOT_RUN):
                self._failed(span, record[PAYLOAD], record[STATUS] == FAILED)
            span.end()
        return record

    def _failed(self, span: Any, error: TaskError, ran: bool) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("fanout.cause", cause_of(error, ran))
        span.set_attribute("error.type", error.type)
        span.set_status(Status(StatusCode.ERROR, f"{error.type}: {error.message}"))


_unavailable = False  # OpenTelemetry could not be imported here: never try again


def task_spans(headers: Mapping[str, str]) -> TaskSpans | None:
    """The spans of the tasks of a run that carries ``headers`` (its context and id), in
    this process: None where OpenTelemetry is not installed."""
    global _unavailable
    if _unavailable:
        return None
    try:
        return TaskSpans(headers)
    except ImportError:
        _unavailable = True
        return None


@contextlib.contextmanager
def attached(headers: Mapping[str, str]) -> Iterator[None]:
    """The context ``headers`` carry, current meanwhile (a drop-in's call in a run that
    its worker does not trace: see ``calls.call``); nothing where OpenTelemetry is not
    installed."""
    try:
        from opentelemetry import context, propagate
    except ImportError:
        yield
        return
    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def flush() -> None:
    """Export what this process's tracer provider holds (a worker about to exit)."""
    if not provider_set():
        return
    from opentelemetry import trace

    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush()


def setup_from_env() -> None:
    """``FANOUT_OTEL_SETUP=package.module:function``: call it once, in a ``fanout worker``
    before it serves (it sets the tracer provider, e.g. with an OTLP exporter)."""
    name = os.environ.get("FANOUT_OTEL_SETUP")
    if not name:
        return
    from fanout.errors import TargetError
    from fanout.targets import resolve_target

    setup, _ = resolve_target(name)
    try:
        setup()
    except Exception as exc:
        raise TargetError(f"FANOUT_OTEL_SETUP={name} failed: {type(exc).__name__}: {exc}") from exc
