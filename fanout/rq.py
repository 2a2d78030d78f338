"""What a stock RQ worker and RQ's own tools name: the stable dotted paths of fanout's
rq backend, in one public module (the code is in :mod:`fanout.backends.rq`).

- ``fanout.rq.run_batch`` is the function of every fanout job in Redis;
- ``rq worker --job-class fanout.rq.FanoutJob`` adds fanout's allowlist to a stock
  worker and lets it run fanout jobs;
- ``rq worker --serializer fanout.rq.SignedSerializer`` reads and writes signed jobs
  (with ``FANOUT_SECRET`` or ``FANOUT_SECRET_FILE`` in its environment).

docs/security.md shows them together. The paths of earlier releases,
``fanout.rqworker.run_batch``, ``fanout.rqworker.FanoutJob`` and
``fanout.signing.SignedSerializer``, are aliases of these and keep working.
"""

from fanout.backends.rq.job import FanoutJob, run_batch
from fanout.backends.rq.signing import SignedSerializer

__all__ = ["FanoutJob", "SignedSerializer", "run_batch"]
