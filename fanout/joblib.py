"""joblib on fanout: ``import fanout.joblib`` registers the joblib backend ``"fanout"``::

    import fanout.joblib
    with joblib.parallel_config(backend="fanout", n_jobs=2, fanout_backend="rq",
                                redis_url="redis://..."):
        GridSearchCV(..., n_jobs=2).fit(X, y)  # scikit-learn's n_jobs paths, on fanout

Keywords other than joblib's own go to ``fanout.Executor`` (``fanout_backend`` is its
``backend``). Batching is joblib's: it groups calls into batches sized from their measured
duration, and each batch is one ``Executor.submit``; fanout then batches those submits
per worker as it batches any run. joblib's own sizing stays because ``Parallel`` reports
progress, applies time-outs and returns generators per batch, and keeps the order of
results by batch: fanout's batching underneath changes none of that.

A batch whose calls all make one function with positional arguments only (the common
``delayed(f)(x) for x in ...``) travels as that function and its argument columns
(:func:`columns_of`, :func:`run_columns`): a few plain lists to pickle rather than a
``(function, args, kwargs)`` triple per call. Any other batch, and every batch on rq,
travels as joblib made it. Either way the results, their order and the exceptions are
joblib's own.

Between ``Parallel`` calls the executor and its workers are kept (:class:`Parked`), as
loky keeps its own: the next call with the same options takes them. ``idle_worker_timeout``
(loky's keyword, with ``parallel_config``) is how long: 300 s by default, 0 keeps none.

Calls nested inside a task run sequentially in that task's process (as loky does for
nested calls beyond its own workers).
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from itertools import repeat
from operator import countOf, is_, itemgetter
from typing import Any

try:
    import joblib
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend
    from joblib.parallel import BatchedCalls
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fanout.joblib needs joblib: pip install 'fanout[joblib]'") from exc

from fanout.dropin.common import backend_class
from fanout.dropin.executor import Executor

NAME = "fanout"

# Callables whose ``==`` between two of the type means "the same call": a function or a
# partial (identity), a bound method (the same function of the same object: a new one
# each time ``delayed(obj.method)`` is written). Another callable's ``__eq__`` (a
# subclass of partial's too) may say anything, so a batch of those must hold the very
# same object.
_EQUAL_IS_SAME = (
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, partial,
)  # fmt: skip
_length = len
_FUNCTION = itemgetter(0)


def columns_of(batch: Any) -> tuple[Callable[..., Any], list[list[Any]]] | None:
    """A joblib batch whose calls all make the same function with as many positional
    arguments and no keywords, as that function and its argument columns (the first
    arguments, the second ones...); None for any other batch.

    Such a batch travels as the function and its columns, whose pickle is a few plain
    lists, instead of a ``(function, args, kwargs)`` triple per call: a list of numbers
    unpickles without a Python object per call for the worker's collector to traverse,
    and the worker makes the calls with ``map`` rather than a loop of its own.
    """
    items = getattr(batch, "items", None)
    if type(batch) is not BatchedCalls or not isinstance(items, list) or not items:
        return None
    try:
        return _columns(items)
    except Exception:  # a callable whose == raises, args whose len() does: as joblib made it
        return None


def _columns(items: list[Any]) -> tuple[Callable[..., Any], list[list[Any]]] | None:
    # A pass of C or a comprehension per check, each unpacking a call in place (and
    # raising, caught by columns_of, unless it has that many parts). Not zip(*items): it
    # makes an iterator per call, and so many new objects wake the collector, which then
    # walks all the caller's calls.
    n = len(items)
    fn = items[0][0]
    if not all(map(is_, map(_FUNCTION, items), repeat(fn))):  # the same call, if bound methods
        fns = list(map(_FUNCTION, items))
        kind = type(fn)
        if kind not in _EQUAL_IS_SAME or countOf(map(type, fns), kind) != n:
            return None
        if fns.count(fn) != n:
            return None
    if not callable(fn):
        return None
    args = [args for _, args, kwargs in items if not kwargs]  # each a (fn, args, kwargs)
    if len(args) != n or type(args[0]) is not tuple or not args[0]:
        return None  # a call with keywords, or none to put in columns
    arity = len(args[0])
    if arity == 1:  # the common delayed(f)(x): f(*args) is f(x) whatever args is
        return fn, [[x for (x,) in args]]
    if countOf(map(type, args), tuple) != n or countOf(map(_length, args), arity) != n:
        return None
    columns = [list(map(itemgetter(i), args)) for i in range(arity)]
    return fn, columns


def run_columns(
    fn: Callable[..., Any], columns: Sequence[list[Any]], nested: Any, n_jobs: int | None
) -> list[Any]:
    """(On a worker.) A batch sent by :func:`columns_of`: ``fn`` over its columns, the
    results in order; calls nested in ``fn`` on ``nested`` as joblib's own batches set."""
    with joblib.parallel_config(backend=nested, n_jobs=n_jobs):
        return list(map(fn, *columns))


class Parked:
    """The one executor kept idle between ``Parallel`` calls, as loky keeps its workers:
    the next call with the same options takes it instead of starting workers anew. A
    local worker is a fork of the caller, so a new one also makes the caller copy every
    page of its memory it writes to next (a refcount is a write): ~40 ms for 200,000
    joblib calls made before the fork, here. One left idle its backend's
    ``idle_worker_timeout`` (loky's name; 300 s, loky's default) is shut down.

    While one is kept, a process forked from the caller with ``os.fork`` that exits
    normally ends its workers, as it ends those of any open ``fanout.Executor`` (the
    local backend's shutdown runs at that child's exit); the next call starts new ones.
    ``idle_worker_timeout=0`` keeps none."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: tuple[Any, ...] | None = None
        self.executor: Executor | None = None
        self.timer: threading.Timer | None = None
        self.inherited: list[Executor] = []  # a forked child's copies of its parent's

    def take(self, key: tuple[Any, ...]) -> Executor | None:
        """The parked executor if it was parked with ``key`` (else it is shut down)."""
        with self.lock:
            executor, self.executor = self.executor, None
            same, self.key = _same(self.key, key), None
            self._cancel_timer()
        if executor is not None and not same:
            executor.shutdown(wait=True)
            return None
        return executor

    def park(self, key: tuple[Any, ...], executor: Executor, seconds: float) -> None:
        """Keep ``executor`` for the next call, at most ``seconds`` (the one parked
        before it is shut down)."""
        if seconds <= 0:
            executor.shutdown(wait=True)
            return
        with self.lock:
            old, self.executor, self.key = self.executor, executor, key
            self._cancel_timer()
            self.timer = threading.Timer(seconds, self._expire, (executor,))
            self.timer.daemon = True
            self.timer.start()
        if old is not None:
            old.shutdown(wait=True)

    def shutdown(self) -> None:
        """Shut down the parked executor, if any (its workers end)."""
        with self.lock:
            executor, self.executor, self.key = self.executor, None, None
            self._cancel_timer()
        if executor is not None:
            executor.shutdown(wait=True)

    def forget(self) -> None:
        """(In a forked child.) The parent's executor is not this process's to use; it
        is kept referenced, never collected here, so that nothing of it runs here."""
        if self.executor is not None:
            self.inherited.append(self.executor)
        self.lock = threading.Lock()
        self.executor = self.key = self.timer = None

    def _expire(self, executor: Executor) -> None:
        with self.lock:
            if self.executor is not executor:
                return
            self.executor = self.key = self.timer = None
        executor.shutdown(wait=True)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _same(key: tuple[Any, ...] | None, other: tuple[Any, ...]) -> bool:
    try:
        return bool(key == other)
    except Exception:  # options whose == will not say
        return False


parked = Parked()
os.register_at_fork(after_in_child=parked.forget)


class FanoutBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``Parallel`` on a ``fanout.Executor`` (local processes, or RQ workers)."""

    supports_timeout = True
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_inner_max_num_threads = False
    default_n_jobs = 2

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        fanout_backend: str | None = None,
        idle_worker_timeout: float = 300.0,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.fanout_backend = fanout_backend
        self.idle_worker_timeout = idle_worker_timeout  # how long Parked keeps its executor
        self.options = options
        self.executor: Executor | None = None
        self.key: tuple[Any, ...] = ()  # what its executor was made with (Parked)
        self.n_jobs = 1
        self.columns = False  # batches may go as columns (columns_of)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return self.default_n_jobs
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
        **backend_kwargs: Any,
    ) -> int:  # fmt: skip
        # backend_kwargs are joblib's own (max_nbytes, mmap_mode, context...): fanout's
        # options came with parallel_config, to __init__.
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if self.executor is None or self.n_jobs != n_jobs:
            self.terminate()
            backend = self.fanout_backend
            self.key = (backend, n_jobs, self.options)
            # On rq the workers are the ones serving the queue: n_jobs sizes joblib's
            # batches and how far ahead it dispatches, not a pool.
            workers = None if backend == "rq" else n_jobs
            self.executor = parked.take(self.key) or Executor(
                workers, backend=backend, **self.options
            )
            # Where workers vet what they unpickle (rq's allowlists), a batch goes as
            # joblib made it: its columns would name a function of fanout's as well.
            self.columns = not backend_class(backend)[1].needs_importable_target
        self.n_jobs = n_jobs
        return n_jobs

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
               ) -> Future[Any]:  # fmt: skip
        assert self.executor is not None, "configure() comes first"
        found = columns_of(func) if self.columns else None
        if found is None:
            future = self.executor.submit(func)
        else:
            nested, n_jobs = self.get_nested_backend()
            future = self.executor.submit(run_columns, *found, nested, n_jobs)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def retrieve_result(self, out: Future[Any], timeout: float | None = None) -> Any:
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed or timed out: drop what is queued, stop what runs."""
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.terminate()  # not shutdown(): a timed-out task must not be waited for
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        """The call is over: its executor is parked for the next one (shut down if a
        call of it is still out)."""
        executor, self.executor = self.executor, None
        if executor is not None and executor.busy():
            executor.shutdown(wait=True)
        elif executor is not None:
            parked.park(self.key, executor, self.idle_worker_timeout)
        self.reset_batch_stats()  # the next Parallel call sizes its batches afresh

    def get_nested_backend(self) -> tuple[Any, int | None]:
        return SequentialBackend(nesting_level=self.nesting_level + 1), None


joblib.register_parallel_backend(NAME, FanoutBackend)
