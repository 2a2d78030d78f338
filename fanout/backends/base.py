"""The backend contract, documented once.

A backend turns a :class:`MapSpec` into one :class:`~fanout.TaskResult` per input item.
The rules every backend keeps:

- Exactly one result per item taken from ``spec.items``, whatever happens to workers;
  task failures (the task's own exception, ``WorkerLost``, ``TaskTimeout``,
  ``SerializationError``) are failed results, never raised.
- ``spec.items`` is consumed lazily, with a bounded number of tasks in flight.
- Results carry the identity of the process that ran the task (``WorkerInfo``).
- When ``spec.items`` raises, the results of tasks already taken are still yielded and
  the exception is raised afterwards.
- ``close()`` is safe to call twice; ``close(cancel=True)`` ends running tasks now.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from fanout.models import TaskResult


@dataclass(frozen=True)
class MapSpec:
    """One ``map`` call, normalised: what to call, on what, and with which limits."""

    fn: Callable[..., Any]
    target: str | None  # "module:function" when the callable is importable by name
    items: Iterator[Any]
    star: bool = False
    ordered: bool = True
    timeout: float | None = None
    retries: int = 0


class Backend(ABC):
    """Base class of backends; subclasses set ``name`` and implement :meth:`map`."""

    name: ClassVar[str]
    #: How many tasks can run at once (set by ``__init__``).
    workers: int
    #: Workers import the target by name (a lambda or closure cannot be sent).
    needs_importable_target: ClassVar[bool] = False

    def __init__(self, workers: int | None = None, **options: Any) -> None:  # noqa: B027
        """Take the worker count (None: the backend's default) and backend options."""

    @abstractmethod
    def map(self, spec: MapSpec) -> Iterator[TaskResult]:
        """Run ``spec.fn`` on every item; yield results in input order if ``spec.ordered``."""

    def close(self, cancel: bool = False) -> None:  # noqa: B027 - optional hook
        """Release workers and connections; ``cancel`` ends running tasks at once."""
