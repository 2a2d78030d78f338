"""RQ backend: the same task functions as plain RQ jobs on Redis, run by RQ workers.

Data flow (docs/architecture.md, "RQ backend", draws it whole and lists every key and
number)::

    caller (run.py: RQRun.advance)             Redis                      RQ workers
      | jobs --enqueue_many--> rq:queue:<queue> + rq:job:fanout-<run>-<n> --> run_batch
      |                        fanout:run:<run> (record.py: RunRecord)   (job.py) | tasks
      | <-- XREAD ---------- fanout:run:<run>:results (a stream) <-- push script (pusher.py)
      | every CHECK_SECONDS, by the lease's holder (watch.py): RQ's registries, lost
      | jobs, workers -> verdicts, which the run applies

One RQ job carries a batch of tasks: one task per job until durations are measured,
then about ``TARGET_JOB_SECONDS`` of work, so trivial tasks do not pay RQ's per-job
cost each while slow ones still spread over every worker. Results are pushed onto the
run's stream, which is read, never consumed: the caller, or a collector by the run's
id, reads it from any offset. Whoever drives the run (its caller, else a collector:
the lease says who) turns what RQ did with a job into a verdict and every task still
gets one result. A job that runs slower than its size assumed gives the tasks it has
not started back as new jobs (``split``).

Modules, the client's side: ``backend`` (RQBackend: connection, queue, local workers,
one read over all its runs), ``settings`` (RunSettings: what a run gets), ``run``
(RQRun: the drive loop), ``watch`` (JobWatch: the verdicts), ``record`` (RunRecord: a
run's keys, by its id; Lease), ``collect`` (a run collected by id), ``feeder`` (the
caller's word that it feeds its runs), ``status`` (``fanout status``). The workers'
side: ``worker`` (``fanout worker``), ``context`` (WorkerContext), ``job``
(``run_batch`` and ``FanoutJob``), ``pusher`` (results onto the stream), ``split`` (a
job's rest given back). Both sides: ``protocol`` (keys, job arguments, result
messages, Lua scripts), ``connection`` (URLs, the one translation of Redis errors,
reconnecting), ``signing`` and ``allowlist`` (the trust boundary, docs/security.md).
"""

from fanout.backends.rq.backend import RQBackend

__all__ = ["RQBackend"]
