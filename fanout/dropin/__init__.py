"""Drop-in replacements for the stdlib's process pools, on any fanout backend:
``fanout.Executor`` (``concurrent.futures``) and ``fanout.Pool`` (``multiprocessing``).

Loaded on first use: a worker that only needs ``calls`` imports nothing else of them.
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
