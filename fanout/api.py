"""The library API: :func:`run` and :class:`Fanout`."""

from __future__ import annotations

import itertools
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fanout._memory import parse_size
from fanout.backends import Backend, MapSpec, create_backend, get_backend
from fanout.backends.resultstream import ResultStream
from fanout.errors import TargetError
from fanout.targets import resolve_target, why_not_importable

if TYPE_CHECKING:
    from fanout.journal import Resume
    from fanout.models import TaskResult
    from fanout.tracing import RunTrace

DEFAULT_BACKEND = "local"


def run(
    target: Callable[..., Any] | str,
    items: Iterable[Any] | None = None,
    *,
    repeat: int | None = None,
    star: bool = False,
    backend: str | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    ordered: bool = True,
    max_failures: int | None = None,
    max_memory: int | str | None = None,
    journal: str | os.PathLike[str] | None = None,
    resume: Resume = False,
    **backend_options: Any,
) -> list[TaskResult]:
    """Run ``target`` on every item (or ``repeat`` times) and return all results.

    ``backend`` defaults to ``$FANOUT_BACKEND`` or ``"local"``; ``workers`` to
    ``$FANOUT_WORKERS`` or the backend's own default. Task failures come back as failed
    results; configuration problems raise a :class:`~fanout.FanoutError` first.
    """
    with Fanout(backend, workers, **backend_options) as fo:
        return list(
            fo.map(
                target,
                items,
                repeat=repeat,
                star=star,
                ordered=ordered,
                timeout=timeout,
                retries=retries,
                max_failures=max_failures,
                max_memory=max_memory,
                journal=journal,
                resume=resume,
            )
        )


class Fanout:
    """A pool of workers on one backend, started once and reused by every :meth:`map`.

    Use it as a context manager; leaving the block (or :meth:`close`) ends the workers.
    """

    def __init__(
        self, backend: str | None = None, workers: int | None = None, **backend_options: Any
    ) -> None:
        name = backend or os.environ.get("FANOUT_BACKEND") or DEFAULT_BACKEND
        # $FANOUT_WORKERS sets the default; a backend that has no workers ignores it.
        if workers is None and os.environ.get("FANOUT_WORKERS"):
            env_workers = _parse_workers(os.environ["FANOUT_WORKERS"], "FANOUT_WORKERS")
            if not get_backend(name).runs_in_caller:
                workers = env_workers
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.backend_name = name
        self._backend: Backend = create_backend(name, workers, backend_options)
        self._closed = False
        # The unfinished map, weakly: one the caller dropped is closed by the collector.
        self._active: weakref.ref[Iterator[TaskResult]] | None = None

    def map(
        self,
        target: Callable[..., Any] | str,
        items: Iterable[Any] | None = None,
        *,
        ordered: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        star: bool = False,
        repeat: int | None = None,
        max_failures: int | None = None,
        max_memory: int | str | None = None,
        journal: str | os.PathLike[str] | None = None,
        resume: Resume = False,
    ) -> Iterator[TaskResult]:
        """Yield one :class:`~fanout.TaskResult` per item: in input order, or as they finish.

        ``items`` is consumed lazily; the target is checked now, before any task runs.
        ``max_failures``: stop after that many failed tasks. ``max_memory`` (bytes, or
        ``"512M"``): a task whose process grows past it fails (``memory-limit``), its
        worker replaced. ``journal``: append every result to this file (JSON lines);
        ``resume``: skip the indexes it holds (``"failed"``: only its ``ok`` ones).
        """
        self._refuse_if_closed()
        # One unfinished map at a time (backends/base.py): the last one's results have
        # ended once exhausted or closed (_running).
        active = self._active() if self._active is not None else None
        if active is not None and _running(active):
            raise RuntimeError(
                "another map() on this Fanout is still running: consume or close it first"
            )
        spec = self.spec(target, items, ordered=ordered, timeout=timeout, retries=retries,
                         star=star, repeat=repeat, max_failures=max_failures,
                         max_memory=max_memory)  # fmt: skip
        if resume and journal is None:
            raise ValueError("resuming needs the journal to resume from: give journal=PATH")
        spec, trace = self.traced(spec)
        if journal is None:
            results = self._backend.map(spec)
        else:
            from fanout.journal import Journal, journaled

            fn = spec.fn
            label = (
                spec.target or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
            )
            book = Journal(os.fspath(journal), label, resume)
            if resume and self._backend.durable_runs:
                book.take_over(self._backend.attach)  # a killed caller's run, still going

            def run_on(inputs: Iterator[Any]) -> Iterator[TaskResult]:
                run = self._backend.map(spec._replace(items=inputs))
                if (run_id := self._backend.last_run_id()) is not None:
                    book.note_run(run_id)  # resuming, take its results if it goes on
                return run

            results = journaled(book, spec.items, ordered, run_on)
        results = _keeping(self, results, trace)
        self._active = weakref.ref(results)
        return results

    def submit(
        self,
        target: Callable[..., Any] | str,
        items: Iterable[Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        star: bool = False,
        repeat: int | None = None,
    ) -> str:
        """Enqueue every input as a run that goes on without this caller; its id.
        The backend must keep runs (``durable_runs``, as rq does)."""
        spec = self.spec(target, items, ordered=False, timeout=timeout, retries=retries,
                         star=star, repeat=repeat)  # fmt: skip
        spec, trace = self.traced(spec)
        try:
            return self._backend.submit(spec)
        finally:
            if trace is not None:  # its span: the enqueueing; its tasks are its children
                trace.end(self._backend.last_run_id())

    def attach(
        self,
        run_id: str,
        wait: bool = True,
        ordered: bool = False,
        inputs: dict[int, Any] | None = None,
    ) -> Iterator[TaskResult]:
        """The results of run ``run_id``, each index once: those in at once, the rest as
        they finish (``wait``); in the order they were reported, or in index order
        (``ordered``); a complete collection removes the run's data. ``inputs``: see
        :meth:`Backend.attach <fanout.backends.base.Backend.attach>`."""
        self._refuse_if_closed()
        return _keeping(self, self._backend.attach(run_id, wait, ordered, inputs))

    @property
    def run_id(self) -> str | None:
        """The id of the last map's run, on a backend whose runs have ids (rq). Once it
        has been asked for, the run, if cut short, keeps its results an hour for
        collection by id; a run whose id nobody asked for keeps none (nobody could
        collect them)."""
        return self._backend.last_run_id()

    @property
    def backend(self) -> Backend:
        return self._backend

    def detach(self) -> None:
        """Leave the run in progress going when this Fanout closes (rq: collectable by
        its id afterwards)."""
        self._backend.detach()

    @property
    def stop_note(self) -> str:
        """What closing early did (for a message after an interruption)."""
        return self._backend.stop_note()

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RuntimeError("this Fanout is closed")

    def spec(
        self,
        target: Callable[..., Any] | str,
        items: Iterable[Any] | None,
        *,
        ordered: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        star: bool = False,
        repeat: int | None = None,
        max_failures: int | None = None,
        room: Callable[[int], int] | None = None,
        max_memory: int | str | None = None,
    ) -> MapSpec:
        """The :class:`MapSpec` that :meth:`map` runs (before its journal), the target
        and options checked; for whoever drives the run itself too (``fanout.aio``)."""
        self._refuse_if_closed()
        fn, name = self._resolve(target)
        items, star = _inputs(items, repeat, star)
        _check_limits(timeout, retries, max_failures)
        memory = None if max_memory is None else parse_size(max_memory)
        if memory is not None and self.backend.runs_in_caller:
            raise ValueError(
                f"max_memory is not available on the {self.backend_name} backend: its tasks run"
                " in this process, which fanout does not end; use the local backend"
            )
        return MapSpec(fn, name, iter(items), star, ordered, timeout, retries, max_failures,
                       room=room, max_memory=memory)  # fmt: skip

    def traced(self, spec: MapSpec) -> tuple[MapSpec, RunTrace | None]:
        """``spec`` with the caller's trace context, its ``fanout.run`` span begun (with
        a tracer provider configured; see :mod:`fanout.tracing`); as it was, and None,
        where OpenTelemetry is not in use."""
        from fanout import tracing

        trace = tracing.begin_run(spec.target, self.backend_name)
        if trace is None:
            return spec, None
        return spec._replace(trace=trace.carrier), trace

    def _resolve(self, target: Callable[..., Any] | str) -> tuple[Callable[..., Any], str | None]:
        fn, name = resolve_target(target)
        if self._backend.needs_importable_target and name is None:
            raise TargetError(
                f"the {self.backend_name} backend imports the target by name on its workers, "
                f"and {why_not_importable(fn)}; define it at module level in an importable "
                "module"
            )
        return fn, name

    def close(self, cancel: bool = False) -> None:
        """End the workers; ``cancel=True`` does not wait for running tasks. Idempotent."""
        if not self._closed:
            self._closed = True
            self._backend.close(cancel=cancel)

    def __enter__(self) -> Fanout:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel=exc_type is not None)


def _keeping(
    owner: Fanout, results: Iterator[TaskResult], trace: RunTrace | None = None
) -> Iterator[TaskResult]:
    """``results``, holding ``owner`` until they end: ``for r in Fanout().map(...)``
    keeps its Fanout (whose collection would end the workers) for as long as it runs.
    A traced run's results are counted for its span, which ends with them."""
    if trace is None and isinstance(results, ResultStream):
        return results.held_by(owner)  # a result at C speed (backends/resultstream.py)
    return _held(owner, results, trace)


def _held(
    owner: Fanout, results: Iterator[TaskResult], trace: RunTrace | None
) -> Iterator[TaskResult]:
    """``_keeping`` for any iterator: a generator whose frame holds ``owner``."""
    try:
        if trace is None:
            yield from results
        else:
            for result in results:
                trace.count(result)
                yield result
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # ends the run now, as leaving the map early does
        if trace is not None:
            # Asked for once the run has ended, the id changes nothing about it.
            trace.end(owner._backend.last_run_id())


def _running(results: Iterator[TaskResult]) -> bool:
    """Whether a map's results (``_keeping``'s) have not ended yet."""
    if isinstance(results, ResultStream):
        return results.running
    return getattr(results, "gi_frame", None) is not None


def _inputs(
    items: Iterable[Any] | None, repeat: int | None, star: bool
) -> tuple[Iterable[Any], bool]:
    """The items to run on, and whether to unpack them (``repeat=N``: N empty calls)."""
    if repeat is not None:
        if items is not None:
            raise ValueError("give either items or repeat, not both")
        if not isinstance(repeat, int) or repeat < 0:
            raise ValueError(f"repeat must be a non-negative integer, got {repeat!r}")
        return itertools.repeat((), repeat), True
    if items is None:
        raise ValueError("give the items to run on, or repeat=N to call target() N times")
    return items, star


def _check_limits(timeout: float | None, retries: int, max_failures: int | None) -> None:
    if timeout is not None and not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
    ):
        raise ValueError(
            f"timeout must be a number of seconds above 0, got {timeout!r} (None: no limit)"
        )
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if max_failures is not None and (not isinstance(max_failures, int) or max_failures < 1):
        raise ValueError(f"max_failures must be a positive integer, got {max_failures!r}")


def _parse_workers(text: str, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{source} must be an integer, got {text!r}") from None
