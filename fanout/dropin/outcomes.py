"""How a map's outcomes reach the drop-ins' callers: in chunks, in input order when asked.

A drop-in's map is a *bare* run (``MapSpec.bare``): a backend that can hands its
successes on as chunks of values, without a TaskResult each; failures still come as
TaskResults. Both become chunks here, ``(ok, values)`` (a failure: ``(False,
[exception])``), which :class:`fanout.backends.inorder.InOrder` puts back in input order (a
``fanout.driving.Budget`` keeps the input from running far ahead of what the caller
has taken).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fanout.backends.runstate import RunState
from fanout.driving import Values
from fanout.dropin.common import exception_of
from fanout.models import TaskResult

Chunk = tuple[bool, list[Any]]
# Results a map may hold that its caller has not taken yet (its input waits meanwhile).
DEFAULT_BUFFER = 1 << 16


def spans(indices: Sequence[int], values: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """``values`` cut where ``indices`` stop being consecutive: (first index, values)."""
    if isinstance(indices, range):
        yield indices.start, values
        return
    start = 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            yield indices[start], values[start:k]
            start = k


def chunks_of(
    run: RunState,
    results: list[TaskResult],
    remote: Callable[[str], BaseException],
) -> list[tuple[int, Chunk]]:
    """TaskResults as (index, chunk of one)."""
    return [
        (r.index, (True, [r.value]) if r.ok else (False, [exception_of(r, run, remote)]))
        for r in results
    ]


def value_chunks(values: Values) -> list[tuple[int, Chunk]]:
    return [
        (first, (True, part)) for indices, got, _ in values for first, part in spans(indices, got)
    ]
