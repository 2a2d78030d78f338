"""Stable dotted paths that live outside fanout's code: every fanout job in Redis names
``fanout.rqworker.run_batch`` as its function, and a stock ``rq worker`` is started with
``--job-class fanout.rqworker.FanoutJob`` (docs/security.md). The code is in
:mod:`fanout.backends.rq.job`."""

from fanout.backends.rq.job import FanoutJob, run_batch

__all__ = ["FanoutJob", "run_batch"]
