"""What the rq backend keeps in Redis, named once for its client and its workers.

Keys of a run (``RunKeys``); every one expires, ``result_ttl`` after the run's last
activity (default 7 days), and a completed collection removes them at once::

    fanout:run:<run>              the run's record (hash): target, queue, total inputs
                                  enqueued, whether all are, jobs made, ok / failed /
                                  cancelled counts, state (running, cancelled, halted)
    fanout:run:<run>:results      stream of result messages, each pushed once by a
                                  worker (or the caller); read from any offset, by any
                                  collector, any number of times
    fanout:run:<run>:done         bitmap of the indexes with a result (counts each once)
    fanout:run:<run>:jobs         hash: each job of the run (its number, or the name of
                                  one a worker split off: split.py) -> its task count
    fanout:run:<run>:driver       lease of the process watching the run's jobs
    fanout:run:<run>:caller       refreshed by the driver while it waits (its writes are
                                  what tells it Redis has become full)
    rq:job:fanout-<run>-<n>       an RQ job: one batch of tasks (RQ's own hash; queued
                                  jobs expire with the run, RQ's ``ttl``); ``<n>`` is
                                  the job's field in the jobs hash

A job's function is ``fanout.rqworker.run_batch`` (``RUN_BATCH``) and its arguments are
a :class:`JobArgs`. A result message is the pickle of ``(identity, records, attempts,
moves)`` — the identity ``(name, pid, ppid, host)`` of the process that ran the tasks,
the records as in :mod:`fanout._wire`, the attempts made for each (None: one each), and
the tasks a job gave back as new jobs (``{job id: (indices, attempts)}``, or None;
split.py) —
sealed with the run's key when jobs are signed, so a message replayed onto another
run's stream is refused there. Results in the stream are final: workers retry a task's
own failures themselves.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, NamedTuple

from fanout._wire import FAILED, NOT_RUN, Record, TaskBatch
from fanout.backends.intake import CANCELLED as CANCELLED  # the one error type of a cancel

if TYPE_CHECKING:
    from fanout.backends.rq.signing import Keyring

RUN_BATCH = "fanout.rqworker.run_batch"  # the RQ function name of every fanout job
RESULT_TTL = 7 * 24 * 3600  # a run nobody collects expires whole this long after its last use
FAILURE_TTL = 3600  # failed fanout jobs stay visible in RQ this long
ENDED_TTL = 3600  # late pushes to a run whose data is gone are dropped this long
# A field of a job's RQ hash: the pid of the stock `rq worker` work-horse that runs it
# (RQ keeps none), so that a horse that dies before any push is still named.
HORSE_PID = "fanout_horse_pid"

Identity = tuple[str, int, int, str]  # (name, pid, ppid, host)
Moves = dict[str, tuple[list[int], list[int]]]  # new job id -> (task indices, attempts)
Message = tuple[Identity, list[Record], list[int] | None, Moves | None]


class RunKeys:
    """The Redis keys of one run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.meta = f"fanout:run:{run_id}"
        self.results = f"fanout:run:{run_id}:results"
        self.done = f"fanout:run:{run_id}:done"
        self.jobs = f"fanout:run:{run_id}:jobs"
        self.driver = f"fanout:run:{run_id}:driver"
        self.caller = f"fanout:run:{run_id}:caller"

    def data(self) -> list[str]:
        """The keys holding the run's data (what a completed collection removes)."""
        return [self.meta, self.results, self.done, self.jobs, self.driver, self.caller]

    def job_id(self, name: int | str) -> str:
        """The RQ id of the run's job ``name`` (its field in the jobs hash)."""
        return f"fanout-{self.run_id}-{text(name)}"


class JobArgs(NamedTuple):
    """The arguments of a fanout job, in the order RQ passes them to ``run_batch``."""

    run_id: str
    target: str  # "module:function"
    star: bool
    timeout: float | None
    retries: int
    indices: list[int]
    items: list[Any]  # raw values, or pickles at the ``pickled`` positions
    pickled: list[int]
    attempts: list[int] | None  # attempts already made per task (None: none)
    # Seconds of work the job was sized for (None: not measured yet): a job that runs
    # well past it gives the tasks it has not started back (split.py).
    budget: float | None = None

    @classmethod
    def of(cls, run_id: str, target: str, star: bool, timeout: float | None, retries: int,
           tasks: TaskBatch, budget: float | None = None) -> JobArgs:  # fmt: skip
        return cls(run_id, target, star, timeout, retries, list(tasks.indices), tasks.items,
                   tasks.pickled, tasks.attempts, budget)  # fmt: skip


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def outcome(record: Record) -> int:
    """0 ok, 1 failed, 2 cancelled: what the run's counts add a record to."""
    status, payload = record[1], record[2]
    if status == NOT_RUN and payload.type == CANCELLED:
        return 2
    return 1 if status in (FAILED, NOT_RUN) else 0


def pack_results(
    keys: RunKeys,
    identity: Identity,
    records: list[Record],
    attempts: list[int] | None,
    keyring: Keyring | None,
    moves: Moves | None = None,
) -> bytes:
    data = pickle.dumps((identity, records, attempts, moves), pickle.HIGHEST_PROTOCOL)
    if keyring is not None:
        data = keyring.seal(keys.results.encode() + b"\n" + data)
    return data


def unpack_results(data: bytes, keys: RunKeys, keyring: Keyring | None) -> Message:
    """A result message's contents; SignatureError, before anything is unpickled, when
    it is not sealed for this run."""
    if keyring is not None:
        from fanout.errors import SignatureError

        body = keyring.open(data, "result message")
        run, _, data = body.partition(b"\n")
        if run != keys.results.encode():
            raise SignatureError("the result message was signed for another run")
    message = pickle.loads(data)
    if len(message) == 3:  # pushed by a fanout before jobs could be split
        return (*message, None)
    loaded: Message = message
    return loaded


# Push a message unless the run's data is gone (collected, or expired: a job that ends
# after that must not make its stream again), counting each index once (one BITFIELD per
# 500 records, not a SETBIT each: a command per task was a third of a run's commands);
# the run's keys then live ``result_ttl`` (from the run's record) from now.
# KEYS: stream, done bitmap, run record, jobs hash; ARGV: message, then for each record
# its index and outcome (0 ok, 1 failed, 2 cancelled).
PUSH_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
local counts = {0, 0, 0}
local i = 2
while i <= #ARGV do
  local args, outcomes = {}, {}
  local last = math.min(#ARGV, i + 999)
  for j = i, last, 2 do
    args[#args + 1] = 'SET'
    args[#args + 1] = 'u1'
    args[#args + 1] = ARGV[j]
    args[#args + 1] = 1
    outcomes[#outcomes + 1] = tonumber(ARGV[j + 1]) + 1
  end
  local old = redis.call('BITFIELD', KEYS[2], unpack(args))
  for k = 1, #old do
    if old[k] == 0 then
      counts[outcomes[k]] = counts[outcomes[k]] + 1
    end
  end
  i = last + 1
end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'ok', counts[1])
redis.call('HINCRBY', KEYS[3], 'failed', counts[2])
redis.call('HINCRBY', KEYS[3], 'cancelled', counts[3])
local ttl = tonumber(redis.call('HGET', KEYS[3], 'result_ttl') or '604800')
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}) do
  redis.call('EXPIRE', key, ttl)
end
return redis.call('HGET', KEYS[3], 'state') or 'running'
"""


def push_keys(keys: RunKeys) -> list[str]:
    return [keys.results, keys.done, keys.meta, keys.jobs]


def push_args(data: bytes, records: list[Record]) -> list[Any]:
    args: list[Any] = [data]
    for record in records:
        args += (record[0], outcome(record))
    return args


# Jobs RQ still has as queued, but in neither the queue nor its intermediate list (a
# lost dequeue, a failover that lost the last writes, a hand-run LPOP): put them back at
# the head of the queue. Atomic, so a worker's dequeue cannot fall between the checks.
# Also returns the queued jobs found in the intermediate list: a worker took them
# (BLMOVE) and has not started them yet, or never will (its reply was lost).
# KEYS: queue, intermediate list, then one job hash per job; ARGV: the job ids.
REQUEUE_VANISHED_SCRIPT = """
local in_queue, held = {}, {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do in_queue[id] = true end
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do held[id] = true end
local requeued, taken = {}, {}
for i, id in ipairs(ARGV) do
  if redis.call('HGET', KEYS[i + 2], 'status') == 'queued' then
    if held[id] then
      table.insert(taken, id)
    elseif not in_queue[id] then
      redis.call('LPUSH', KEYS[1], id)
      table.insert(requeued, id)
    end
  end
end
return {requeued, taken}
"""

# Queued jobs a worker took from the queue into the intermediate list and has not
# started since (its dequeue's reply was lost in a partition): back to the queue's head,
# if they are still there and still queued. KEYS: queue, intermediate list, job hashes.
UNSTICK_SCRIPT = """
local moved = {}
for i, id in ipairs(ARGV) do
  if redis.call('HGET', KEYS[i + 2], 'status') == 'queued'
      and redis.call('LREM', KEYS[2], 0, id) > 0 then
    redis.call('LPUSH', KEYS[1], id)
    table.insert(moved, id)
  end
end
return moved
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


class RQJob:
    """A job of this run in Redis, and its tasks without a result yet."""

    __slots__ = ("id", "identity", "remaining", "tasks")

    def __init__(self, job_id: str, tasks: TaskBatch, done: Any = None) -> None:
        self.id = job_id
        self.tasks = tasks
        self.remaining = {
            index: pos for pos, index in enumerate(tasks.indices) if done is None or not done(index)
        }
        self.identity: Identity | None = None  # the last process seen running its tasks
