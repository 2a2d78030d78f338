"""RQ backend: the same task functions as plain RQ jobs on Redis, run by RQ workers.

Data flow::

    caller (run.py: RQRun)                    Redis                     RQ workers
      | batches of tasks --enqueue_many--> rq:queue:<name> --dequeue--> run_batch(...)
      |                                                          (job.py)  | runs tasks
      | <---------- BLPOP / LPOP ------- fanout:run:<id>:results <-- RPUSH records
      | every few seconds (watch.py): FailedJobRegistry, lost jobs, worker count

One RQ job carries a batch of tasks: one task per job until durations are measured,
then batches of about ``TARGET_JOB_SECONDS`` of work, so trivial tasks do not pay RQ's
per-job cost each while slow ones still spread over every worker. Results come back on
a per-run list that the caller waits on with a blocking pop: no polling of jobs. A job
that fails as a whole (its work-horse killed, its target not importable on the worker)
is found in RQ's FailedJobRegistry; its tasks without a result are then reported or
enqueued again. The caller knows what it submitted, so every task gets one result. A job
that turns out slower than its size assumed gives the tasks it has not started back to
the queue as new jobs (``split``), which the run's stream tells the caller of.

Modules, the client's side: ``backend`` (RQBackend: connection, queue, local workers),
``run`` (one map: dispatch, results, the end), ``watch`` (registries, lost jobs,
workers), ``status`` (``fanout status``). The workers' side: ``job`` (``run_batch`` and
``FanoutJob``), ``split`` (a slow job's rest given back), ``worker`` (``fanout
worker``). Both sides: ``protocol`` (keys, job arguments, result messages),
``connection`` (URLs, the one translation of Redis errors, reconnecting), ``signing``
and ``allowlist`` (the trust boundary, docs/security.md).
"""

from fanout.backends.rq.backend import RQBackend

__all__ = ["RQBackend"]
