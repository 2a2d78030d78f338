"""What the rq backend keeps in Redis, named once for its client and its workers.

Keys of a run (``RunKeys``)::

    rq:job:fanout-<run>-<n>       an RQ job: one batch of tasks (RQ's own hash)
    fanout:run:<run>:results      list of result messages, pushed by workers
    fanout:run:<run>:ended        set when the run ends: late workers push nothing
    fanout:run:<run>:caller       refreshed by the caller while it waits (its writes
                                  are what tells it Redis has become full)

Every key a run creates expires: queued jobs after ``RUN_TTL`` (RQ's job ``ttl``), the
result list ``RUN_TTL`` after its last push, the markers with them; a job taken for lost
has its hash given the same expiry.

A job's function is ``fanout.rqworker.run_batch`` (``RUN_BATCH``) and its arguments are
a :class:`JobArgs`. A result message is the pickle of ``(identity, records)`` — the
identity ``(name, pid, ppid, host)`` of the process that ran the tasks, the records as
in :mod:`fanout._wire` — sealed with the run's key when jobs are signed, so a message
replayed onto another run's list is refused there.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, NamedTuple

from fanout._wire import Record, TaskBatch

if TYPE_CHECKING:
    from fanout.backends.rq.signing import Keyring

RUN_BATCH = "fanout.rqworker.run_batch"  # the RQ function name of every fanout job
RUN_TTL = 3600  # seconds a run's keys outlive its last use (a vanished caller)
FAILURE_TTL = 3600  # failed fanout jobs stay visible in RQ this long

Identity = tuple[str, int, int, str]  # (name, pid, ppid, host)


class RunKeys:
    """The Redis keys of one run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.results = f"fanout:run:{run_id}:results"
        self.ended = f"fanout:run:{run_id}:ended"
        self.caller = f"fanout:run:{run_id}:caller"

    def job_id(self, number: int) -> str:
        return f"fanout-{self.run_id}-{number}"


class JobArgs(NamedTuple):
    """The arguments of a fanout job, in the order RQ passes them to ``run_batch``."""

    run_id: str
    target: str  # "module:function"
    star: bool
    timeout: float | None
    indices: list[int]
    items: list[Any]  # raw values, or pickles at the ``pickled`` positions
    pickled: list[int]

    @classmethod
    def of(cls, run_id: str, target: str, star: bool, timeout: float | None,
           tasks: TaskBatch) -> JobArgs:  # fmt: skip
        return cls(run_id, target, star, timeout, list(tasks.indices), tasks.items, tasks.pickled)


def pack_results(
    keys: RunKeys, identity: Identity, records: list[Record], keyring: Keyring | None
) -> bytes:
    data = pickle.dumps((identity, records), pickle.HIGHEST_PROTOCOL)
    if keyring is not None:
        data = keyring.seal(keys.results.encode() + b"\n" + data)
    return data


def unpack_results(
    data: bytes, keys: RunKeys, keyring: Keyring | None
) -> tuple[Identity, list[Record]]:
    """A result message's contents; SignatureError, before anything is unpickled, when
    it is not sealed for this run."""
    if keyring is not None:
        from fanout.errors import SignatureError

        body = keyring.open(data, "result message")
        run, _, data = body.partition(b"\n")
        if run != keys.results.encode():
            raise SignatureError("the result message was signed for another run")
    message: tuple[Identity, list[Record]] = pickle.loads(data)
    return message


# Push a message unless the run has ended: a job that finishes after its caller is
# gone must not re-create the result list. (A marker of the end, not of life: after a
# Redis restart the run goes on and its pushes must too.)
PUSH_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# Jobs RQ still has as queued, but in neither the queue nor its intermediate list (a
# lost dequeue, a failover that lost the last writes, a hand-run LPOP): put them back at
# the head of the queue. Atomic, so a worker's dequeue cannot fall between the checks.
# KEYS: queue, intermediate list, then one job hash per job; ARGV: the job ids.
REQUEUE_VANISHED_SCRIPT = """
local present = {}
for _, list in ipairs({KEYS[1], KEYS[2]}) do
  for _, id in ipairs(redis.call('LRANGE', list, 0, -1)) do
    present[id] = true
  end
end
local requeued = {}
for i, id in ipairs(ARGV) do
  if not present[id] and redis.call('HGET', KEYS[i + 2], 'status') == 'queued' then
    redis.call('LPUSH', KEYS[1], id)
    table.insert(requeued, id)
  end
end
return requeued
"""

# A job taken for lost: out of the started registry (RQ 3 keeps "<job id>:<execution
# id>" members there), its hash left to expire. KEYS: registry, job hash; ARGV: job id, ttl.
FORGET_JOB_SCRIPT = """
local prefix = ARGV[1] .. ':'
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if member == ARGV[1] or string.sub(member, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[1], member)
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
