"""Drop-in replacements for the stdlib's process pools, on any fanout backend:
``fanout.Executor`` (``concurrent.futures``) and ``fanout.Pool`` (``multiprocessing``).
"""

from fanout.dropin.executor import Executor, TaskFuture
from fanout.dropin.pool import Pool

__all__ = ["Executor", "Pool", "TaskFuture"]
