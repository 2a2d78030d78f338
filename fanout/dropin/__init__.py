"""Drop-in replacements for the stdlib's process pools, on any fanout backend:
``fanout.Executor`` (``concurrent.futures``) and ``fanout.Pool`` (``multiprocessing``).

Both are built on the core's driven runs (:mod:`fanout.driving`: one thread drives
every run of an executor or pool) and calls as tasks (:mod:`fanout.calls`):
executor.py (TaskFuture, Executor), pool.py (Pool), results.py (ApplyResult, MapResult,
IMapIterator), outcomes.py (values back in order), common.py (backends, the stdlib's
exceptions). ``fanout.dropin.calls`` is an alias of :mod:`fanout.calls` for jobs an
earlier fanout enqueued. Loaded on first use: a worker that runs calls imports none of
this package but that alias.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fanout.dropin.executor import Executor, TaskFuture
    from fanout.dropin.pool import Pool

_WHERE = {"Executor": "executor", "TaskFuture": "executor", "Pool": "pool"}


def __getattr__(name: str) -> object:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"fanout.dropin.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fanout.dropin' has no attribute {name!r}")


__all__ = ["Executor", "Pool", "TaskFuture"]
