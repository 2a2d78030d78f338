"""The path of earlier releases for :mod:`fanout.rq`'s ``run_batch`` and ``FanoutJob``
(jobs enqueued by them name ``fanout.rqworker.run_batch``): an alias."""

from fanout.rq import FanoutJob, run_batch

__all__ = ["FanoutJob", "run_batch"]
