"""What the Executor and the Pool share: their Fanout, and how a failed task's outcome
becomes the exception the stdlib would raise."""

from __future__ import annotations

import os
import pickle
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fanout import errors, tracing
from fanout.api import Fanout
from fanout.backends import get_backend
from fanout.backends.base import Backend, MapSpec
from fanout.backends.runstate import RunState
from fanout.calls import TARGET, Call, Init, call
from fanout.errors import RemoteTraceback, SerializationError, TaskFailed
from fanout.models import TaskResult
from fanout.targets import importable_name, why_not_importable

DEFAULT_BACKEND = "local"


class _Unset(int):
    """The stdlib's default ``chunksize=1``, told apart from a 1 the caller passed: left
    unset, fanout sizes batches itself (slow tasks one at a time, quick ones many); a
    chunksize passed is the most tasks a batch holds."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "1"


CHUNKSIZE_UNSET: int = _Unset(1)


def chunk_limit(chunksize: int | None) -> int | None:
    """The most tasks a batch may hold for a drop-in's ``chunksize`` (None: no limit)."""
    return None if chunksize is None or chunksize is CHUNKSIZE_UNSET else chunksize


def backend_class(backend: str | None) -> tuple[str, type[Backend]]:
    """The backend's name (``$FANOUT_BACKEND``, else local) and its class."""
    name = backend or os.environ.get("FANOUT_BACKEND") or DEFAULT_BACKEND
    return name, get_backend(name)


def open_fanout(backend: str | None, workers: int | None, options: dict[str, Any]) -> Fanout:
    """A Fanout for a drop-in: a worker count means nothing to a backend that runs tasks
    in the caller, so the stdlib's ``max_workers``/``processes`` are not an error there."""
    name, cls = backend_class(backend)
    return Fanout(name, None if cls.runs_in_caller else workers, **options)


def exception_of(
    result: TaskResult, run: RunState, remote: Callable[[str], BaseException] = RemoteTraceback
) -> BaseException:
    """What a failed task raises in the caller: its own exception when it travelled, with
    ``remote(traceback text)`` as ``__cause__`` (the stdlib pool's own class for it);
    fanout's for fanout's failures."""
    error = result.error
    assert error is not None
    local = run.exceptions.pop(result.index, None)
    if local is not None:  # its input could not be pickled: what the stdlib raises
        local.__cause__ = SerializationError(error.message)
        return local
    exc = error.exception()
    if exc is None:
        own = getattr(errors, error.type, None)  # fanout's own: WorkerLost, TaskTimeout, ...
        if (
            isinstance(own, type)
            and issubclass(own, errors.FanoutError)
            and own.__init__ is Exception.__init__  # made from a message alone
        ):
            return own(error.message)
        return TaskFailed(result.index, error)
    if error.traceback:
        exc.__cause__ = remote(error.traceback)
    return exc


def futures_traceback(tb: str) -> BaseException:
    """The ``__cause__`` ``ProcessPoolExecutor`` gives a task's exception."""
    from concurrent.futures import process

    made: BaseException = process._RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[arg-type]
    return made


def pool_traceback(tb: str) -> BaseException:
    """The ``__cause__`` ``multiprocessing.Pool`` gives a task's exception."""
    from multiprocessing import pool

    made: BaseException = pool.RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[attr-defined]
    return made


def check_picklable(backend: Backend, fn: Callable[..., Any]) -> None:
    """On a backend whose workers import functions by name (rq), raise what pickling
    one that cannot be imported raises (``pickle.PicklingError``), with the reason.
    Other callables (a bound method, a ``functools.partial``) go if pickle takes them."""
    if not backend.needs_importable_target or importable_name(fn) is not None:
        return
    if isinstance(fn, types.FunctionType):
        raise pickle.PicklingError(
            f"Can't pickle {fn!r}: workers import functions by name, and {why_not_importable(fn)}"
        )
    pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)  # the stdlib's own error if it will not


def map_spec(
    backend: Backend,
    fn: Callable[..., Any],
    inputs: Iterable[Any],
    *,
    star: bool,
    init: Init | None = None,
    room: Callable[[int], int] | None = None,
    chunksize: int | None = None,
) -> MapSpec:
    """A drop-in's map of ``fn`` over ``inputs``: a bare run (values as they come, put in
    order by the caller's side), reading no further ahead than ``room`` allows, at most
    ``chunksize`` tasks a batch when the caller gave one. ``fn``
    itself is the run's target when the backend can take it (by name on rq); otherwise,
    or with a Pool's initializer, each item travels as a Call that carries it."""
    name = importable_name(fn)
    trace = tracing.map_carrier()  # the caller's context, for every task of the map
    if init is None and (name is not None or not backend.needs_importable_target):
        return MapSpec(fn, name, iter(inputs), star=star, ordered=False, bare=True, room=room,
                       chunksize=chunksize, trace=trace)  # fmt: skip
    check_picklable(backend, fn)
    items: Iterator[Call] = (
        Call(fn, tuple(item) if star else (item,), {}, init) for item in inputs
    )
    return MapSpec(call, TARGET, items, ordered=False, bare=True, room=room, chunksize=chunksize,
                   trace=trace)  # fmt: skip
