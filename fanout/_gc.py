"""Pausing Python's cyclic garbage collector while a batch of results is built.

Every kept TaskResult is a container the collector tracks; building thousands of them
triggers young collections whose survivors pile up for the older generations to
traverse again and again, which cost the caller more than building the results did.
Paused for one batch, the collector runs at most once after it instead.

The pause is safe for the user's process: it is counted (threads that build batches at
once share it, and it lifts when the last one leaves), it never turns on a collector
that was off when it began (the user's own ``gc.disable()``), and it always lifts, an
exception or not. Reference counting frees everything it can meanwhile, as always.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast


class CollectionPause:
    """A reentrant, thread-safe ``with`` block during which the collector does not run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False  # the collector was on when the outermost pause began

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                if self._resume:
                    gc.disable()
            self._depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._resume:
                gc.enable()


#: The process's one pause: every run's batches share it.
paused = CollectionPause()

F = TypeVar("F", bound=Callable[..., Any])


def pausing(fn: F) -> F:
    """``fn`` runs with the collector paused (a method that builds a batch of results)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with paused:
            return fn(*args, **kwargs)

    return cast(F, wrapper)
