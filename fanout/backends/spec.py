"""What one ``map`` call asks of a backend, normalised: :class:`MapSpec`.

The contract (:mod:`fanout.backends.base`) takes it, and the run logic
(:mod:`fanout.backends.runstate`) reads it: both depend on it, and it on neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from fanout._memory import parse_size


class MapSpec(NamedTuple):
    """One ``map`` call, normalised: what to call, on what, and with which limits.
    Immutable: ``spec._replace(field=value)`` is a changed copy. (A named tuple, not a
    dataclass: ``dataclasses`` and the ``inspect`` it imports were half of what
    ``import fanout`` cost.)"""

    fn: Callable[..., Any]
    target: str | None  # "module:function" when the callable is importable by name
    items: Iterator[Any]
    star: bool = False
    ordered: bool = True
    timeout: float | None = None
    retries: int = 0
    #: Stop after this many failed tasks: no new input is taken, and tasks not yet
    #: handed to a worker are cancelled (each gets its result, ``Cancelled``).
    max_failures: int | None = None
    #: Attempts already made for each item, by position (None: none yet).
    attempts: Sequence[int] | None = None
    #: Values alone will do (the drop-ins' maps): a backend may hand successes on as
    #: chunks of values (``RunState.ready_values``) instead of a TaskResult each.
    bare: bool = False
    #: How many more items may be read now, given how many were read (None: no limit
    #: beyond the backend's own): a consumer's backpressure.
    room: Callable[[int], int] | None = None
    #: The most tasks a batch (a job, on rq) may hold (None: as the backend sizes them):
    #: the drop-ins' explicit ``chunksize``.
    chunksize: int | None = None
    #: The index of each item, by position (None: its position): a run of part of a
    #: larger one (a ``fanout worker``'s job) numbers its tasks, and their results and
    #: messages, as the larger run does. Unordered runs only.
    indices: Sequence[int] | None = None
    #: The caller's trace context, as W3C headers and the run's id (``fanout.tracing``):
    #: a backend hands it to whatever runs the tasks (None: nothing to trace).
    trace: Mapping[str, str] | None = None
    #: A task whose process grows past this many bytes is ended (``memory-limit``).
    max_memory: int | None = None
    #: Replace a worker process after this many of the run's tasks, or once it holds
    #: more than this many bytes after a task (None: as the backend's own options say).
    #: What a ``fanout worker`` applies to a job's tasks (rq).
    max_tasks_per_worker: int | None = None
    max_memory_per_worker: int | None = None

    def with_worker_limits(self, max_tasks: int | None, max_memory: int | None) -> MapSpec:
        """This spec under a backend's own per-worker limits too (the tighter wins)."""
        return self._replace(
            max_tasks_per_worker=_tighter(self.max_tasks_per_worker, max_tasks),
            max_memory_per_worker=_tighter(self.max_memory_per_worker, max_memory),
        )


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def worker_limits(
    max_tasks_per_worker: int | None, max_memory_per_worker: int | str | None
) -> tuple[int | None, int | None]:
    """A backend's ``max_tasks_per_worker`` and ``max_memory_per_worker`` options,
    checked: a positive int, and bytes or a size such as ``"2G"`` (ValueError else)."""
    if max_tasks_per_worker is not None and (
        not isinstance(max_tasks_per_worker, int) or max_tasks_per_worker < 1
    ):
        raise ValueError(
            f"max_tasks_per_worker must be a positive integer, got {max_tasks_per_worker!r}"
        )
    memory = None if max_memory_per_worker is None else parse_size(max_memory_per_worker)
    return max_tasks_per_worker, memory
