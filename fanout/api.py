"""The library API: :func:`run` and :class:`Fanout`."""

from __future__ import annotations

import contextlib
import itertools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from fanout.backends import Backend, MapSpec, create_backend, get_backend
from fanout.errors import TargetError
from fanout.models import TaskResult
from fanout.targets import resolve_target, why_not_importable

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
    ) -> Iterator[TaskResult]:
        """Yield one :class:`~fanout.TaskResult` per item: in input order, or as they finish.

        ``items`` is consumed lazily; the target is checked now, before any task runs.
        """
        if self._closed:
            raise RuntimeError("this Fanout is closed")
        # One unfinished map at a time (backends/base.py): a generator's frame is gone
        # once it is exhausted or closed.
        active = self._active() if self._active is not None else None
        if getattr(active, "gi_frame", None) is not None:
            raise RuntimeError(
                "another map() on this Fanout is still running: consume or close it first"
            )
        fn, name = resolve_target(target)
        if self._backend.needs_importable_target and name is None:
            raise TargetError(
                f"the {self.backend_name} backend imports the target by name on its workers, "
                f"and {why_not_importable(fn)}; define it at module level in an importable "
                "module"
            )
        if repeat is not None:
            if items is not None:
                raise ValueError("give either items or repeat, not both")
            if not isinstance(repeat, int) or repeat < 0:
                raise ValueError(f"repeat must be a non-negative integer, got {repeat!r}")
            items, star = itertools.repeat((), repeat), True
        elif items is None:
            raise ValueError("give the items to run on, or repeat=N to call target() N times")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        spec = MapSpec(fn, name, iter(items), star, ordered, timeout, retries)
        results = self._backend.map(spec)
        with contextlib.suppress(TypeError):  # an iterator that takes no weak reference
            self._active = weakref.ref(results)
        return results

    @property
    def stop_note(self) -> str:
        """What closing early did (for a message after an interruption)."""
        return self._backend.stop_note()

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


def _parse_workers(text: str, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{source} must be an integer, got {text!r}") from None
