"""Local backend: a pool of named worker processes on this machine.

Data flow::

        caller thread: each run's results generator drives one event loop (pool.py)
        |  run.py + runstate: batches of tasks (a bad argument fails its own task here)
        |
        +-- task pipe 1 --> worker-1 --+   each worker (worker.py): read a batch, run
        +-- task pipe 2 --> worker-2 --+   its tasks with stdout/stderr captured, write
        |       ...                    |   the result records to its own result pipe
        +-- task pipe N --> worker-N --+
        ^                              |
        +-- result pipes, pidfds <-----+   selector: results, deaths (deaths.py),
                                           writable task pipes

Modules: ``backend`` (the adapter), ``run`` (batch sizing of one map), ``pool`` (the event
loop, serving any number of runs), ``handles`` (a worker's pipes, pidfd and marker, and
taking work back from it), ``deaths`` (what a dead or timed-out worker leaves, decided
from its handle; the pool applies it to the runs),
``protocol`` (messages and the shared marker), ``barrier`` (a memory barrier on every
worker's CPU), ``worker`` (the child process's side), ``claim`` (how many tasks a worker
takes on at a time).

Why a pipe pair per worker and no shared queue: a worker killed while holding a
shared queue's lock (blocked in ``get()``, or half-way through a ``put()``) takes the
lock with it and starves every other worker; with private pipes a death only closes
that worker's own pipes. The caller writes to the task pipes without blocking (a
buffer per worker, flushed when the pipe is writable), so a worker that is blocked
writing results can never deadlock with a caller blocked writing tasks.

Batching: a run starts with one task per batch; once durations are measured, batches
grow so that each takes about ``TARGET_BATCH_SECONDS`` (as joblib's auto batching),
up to ``MAX_BATCH`` tasks. A worker is fed a second batch while it runs the first, so
it never waits for the caller, unless tasks are slow enough for that not to matter.

Taking back: a batch is a guess, and uneven work makes it wrong. No task waits while a
worker that could run it is idle: a worker starts tasks only under a claim it makes in
the shared marker, and when another worker is idle with nothing to do, the caller takes
back what a busy worker holds past its claim (all of it from one whose task runs longer
than its run assumed) and hands it to whoever is free (``handles.WorkerHandle.take_back``;
the agreement is in ``protocol``).

Deaths: every worker has a pidfd (or sentinel) in the selector. When one dies, the
task it was running fails with ``WorkerLost`` (or ``TaskTimeout`` when the pool killed
it for over-running; both are retried while ``retries`` allow), the tasks it had not
started are dispatched again without counting an attempt, and a fresh worker takes its
place on demand. Workers run in their own process group, so a kill takes the task's
own children too, and they die with the caller (``PR_SET_PDEATHSIG`` on Linux, and
end-of-file on the task pipe elsewhere).
"""

from fanout.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
