"""``fanout.Pool``: ``multiprocessing.pool.Pool``'s API on any fanout backend.

``apply_async`` calls share one long-lived run (``fanout.driving.Calls``); every ``map_async``,
``imap`` and ``imap_unordered`` is a run of its own. One driver thread serves them all on
one set of workers. A Pool's ``initializer`` travels with its tasks and runs once in
each process that runs them (``fanout.calls.Init``).
"""

from __future__ import annotations

import itertools
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fanout.calls import Call, Init
from fanout.driving import Budget, Calls, Driver
from fanout.dropin.common import (
    CHUNKSIZE_UNSET,
    backend_class,
    check_picklable,
    chunk_limit,
    map_spec,
    open_fanout,
)
from fanout.dropin.outcomes import DEFAULT_BUFFER
from fanout.dropin.results import ApplyResult, Callback, IMapIterator, MapResult
from fanout.errors import WorkerLost

# multiprocessing.pool's states (the same strings), for code that reads Pool._state.
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


class Pool:
    """``multiprocessing.pool.Pool`` on a fanout backend.

    ``processes`` means what ``workers`` means for ``fanout.run`` (on rq: local workers
    to start, default 0: the queue's own). ``initializer(*initargs)`` runs once in each
    process that runs the pool's tasks, before its first one. ``maxtasksperchild``:
    local workers are replaced after that many tasks (rq workers are long-lived: use
    ``rq worker --max-jobs``). ``context`` is accepted and unused: fanout starts its
    own workers.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: object = None,
        *,
        backend: str | None = None,
        **options: Any,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        name, cls = backend_class(backend)
        if maxtasksperchild is not None and not cls.runs_in_caller:
            if "max_tasks_per_worker" not in (cls.option_names() or ["max_tasks_per_worker"]):
                raise ValueError(
                    f"maxtasksperchild is not available on the {name} backend: its workers"
                    " serve many callers and are not replaced per task; start them with a"
                    " limit of their own (rq worker --max-jobs N) instead"
                )
            options["max_tasks_per_worker"] = maxtasksperchild
        self._fanout = open_fanout(name, processes, options)
        self._init: Init | None = None
        if initializer is not None:
            check_picklable(self._fanout.backend, initializer)
            self._init = Init(uuid.uuid4().hex, initializer, tuple(initargs))
        self._driver = Driver(self._fanout.backend, "fanout-pool")
        self._calls = Calls(self._driver)
        self._state = RUN

    # -- one call -------------------------------------------------------------------

    def apply(
        self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> ApplyResult:
        self._check_running()
        try:
            check_picklable(self._fanout.backend, func)
        except Exception as exc:
            failed = ApplyResult(callback, error_callback)
            failed._set(False, exc)
            return failed
        call = Call(func, tuple(args), dict(kwds or {}), self._init)

        def waiter(cancel: Callable[[], bool]) -> ApplyResult:
            return ApplyResult(callback, error_callback)

        return self._calls.put(call, waiter)

    # -- many calls -----------------------------------------------------------------

    def map(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        result: list[Any] = self._map_async(func, iterable, False, chunksize).get()
        return result

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[Any]:
        result: list[Any] = self._map_async(func, iterable, True, chunksize).get()
        return result

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> MapResult:
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> MapResult:
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        star: bool,
        chunksize: int | None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> MapResult:
        self._check_running()
        _check_chunksize(chunksize)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)  # as the stdlib does: its errors are raised here
        size = len(iterable)  # type: ignore[arg-type]
        result = MapResult(size, callback, error_callback)
        spec = map_spec(self._fanout.backend, func, iterable, star=star, init=self._init,
                        chunksize=chunk_limit(chunksize))  # fmt: skip
        self._driver.start(spec, result)
        return result

    def imap(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = CHUNKSIZE_UNSET
    ) -> IMapIterator:
        """Values in input order as they come; the input is read lazily."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = CHUNKSIZE_UNSET
    ) -> IMapIterator:
        """Values in the order they finish; the input is read lazily."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int,
        ordered: bool,
    ) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        inputs = whole_chunks(iterable, chunksize)
        budget = Budget(DEFAULT_BUFFER, self._driver.wake)
        it = IMapIterator(ordered, budget)
        spec = map_spec(self._fanout.backend, func, inputs, star=False, init=self._init,
                        room=budget.room, chunksize=chunk_limit(chunksize))  # fmt: skip
        self._driver.start(spec, it)
        return it

    # -- the pool's life ------------------------------------------------------------

    def close(self) -> None:
        """No more tasks: the workers end once those given have run."""
        if self._state == RUN:
            self._state = CLOSE
            self._calls.close()

    def terminate(self) -> None:
        """End now: running tasks are stopped; results not yet in fail with WorkerLost."""
        if self._state == TERMINATE:
            return
        self._state = TERMINATE
        self._calls.close()
        self._driver.stop(abandon=WorkerLost("the pool was terminated before this task finished"))
        self._fanout.close(cancel=True)

    def join(self) -> None:
        """Wait for the tasks given to finish and the workers to end (after close())."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._driver.stop()
        self._fanout.close()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()  # as multiprocessing.Pool does

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        backend = getattr(getattr(self, "_fanout", None), "backend_name", "?")
        return f"<fanout.Pool state={getattr(self, '_state', '?')} backend={backend!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")


def whole_chunks(iterable: Iterable[Any], chunksize: int) -> Iterator[Any]:
    """The items, read ``chunksize`` at a time: when reading fails, the items of the
    chunk being read are dropped, as ``multiprocessing.Pool.imap`` drops them."""
    it = iter(iterable)
    if chunksize == 1:
        return it
    chunks = iter(lambda: list(itertools.islice(it, chunksize)), [])
    return itertools.chain.from_iterable(chunks)  # item by item at C speed
