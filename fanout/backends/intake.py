"""A run's fresh input as a batch to send: plain values as they are, others pickled in
the caller, so that an input that cannot be pickled fails its own task and no other."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fanout import _task
from fanout._task import RAW_TYPES
from fanout._wire import TaskBatch
from fanout.backends.feed import CANCELLED_ITEM
from fanout.models import TaskError, cancelled

_DROPPED = object()  # marks an input that failed to pickle in the caller

#: Fails one input in the caller: (its index, the error, the exception if one was raised).
Refuse = Callable[[int, TaskError, "BaseException | None"], None]


def batch_of(
    start: int,
    fresh: list[Any],
    prior: Sequence[int] | None,
    refuse: Refuse,
    numbers: Sequence[int] | None = None,
) -> TaskBatch | None:
    """``fresh`` (from position ``start``; ``prior``: the run's attempts so far, by
    position; ``numbers``: each position's index, None: the position itself) as a batch;
    the inputs that cannot go are refused and left out (None: none can)."""
    if not fresh:
        return None
    indices = (range(start, start + len(fresh)) if numbers is None
               else list(numbers[start : start + len(fresh)]))  # fmt: skip
    if set(map(type, fresh)) <= RAW_TYPES:  # the common case, at C speed
        attempts = None if prior is None else list(prior[start : start + len(fresh)])
        return TaskBatch(indices, fresh, [], attempts)
    pickled: list[int] = []
    failed = False
    for pos, item in enumerate(fresh):
        if type(item) in RAW_TYPES or _task.is_raw(item):
            continue
        if item is CANCELLED_ITEM:  # cancelled in the feed before it was taken
            refuse(indices[pos], cancelled("cancelled before it ran"), None)
            fresh[pos] = _DROPPED
            failed = True
            continue
        try:
            fresh[pos] = _task.dumps(item)
            pickled.append(pos)
        except Exception as exc:
            refuse(indices[pos], _task.input_error(indices[pos], exc), exc)
            fresh[pos] = _DROPPED
            failed = True
    if not failed:
        attempts = None if prior is None else list(prior[start : start + len(fresh)])
        return TaskBatch(indices, fresh, pickled, attempts)
    keep = [pos for pos, item in enumerate(fresh) if item is not _DROPPED]
    if not keep:
        return None
    renumber = {pos: i for i, pos in enumerate(keep)}
    return TaskBatch(
        [indices[pos] for pos in keep],
        [fresh[pos] for pos in keep],
        [renumber[pos] for pos in pickled],
        None if prior is None else [prior[start + pos] for pos in keep],
    )
