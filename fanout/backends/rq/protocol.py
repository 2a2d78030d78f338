"""What the rq backend keeps in Redis, named once for its client and its workers.

Keys of a run (``RunKeys``); every one expires, ``result_ttl`` after the run's last
activity (default 7 days) unless a shorter time is said below, and a completed
collection removes them at once (a cancelled run's live an hour at most; one nobody can
collect is dropped at once, its record left as a marker for an hour)::

    fanout:run:<run>              the run's record (hash): target, queue, total inputs
                                  enqueued, whether all are, jobs made, ok / failed /
                                  cancelled counts, state (running, cancelled, halted),
                                  ``dropped`` once it is only a marker. Only its caller
                                  makes it: every later write wants it to exist, so a
                                  run removed is never made again by halves
    fanout:run:<run>:results      stream of result messages, each pushed once by a
                                  worker (or the caller); read from any offset, by any
                                  collector, any number of times
    fanout:run:<run>:done         bitmap of the indexes with a result (counts each once)
    fanout:run:<run>:jobs         hash: each job of the run (its number, or the name of
                                  one a worker split off: split.py) -> its task count
    fanout:run:<run>:driver       lease of the process that drives the run (watches its
                                  jobs): ``record.Lease``, ``LEASE_MS``
    fanout:run:<run>:caller       written at each check by whoever reads the run (its
                                  writes are what tells it Redis has become full); a
                                  minute
    fanout:run:<run>:feeder       set while the run's caller lives and still has inputs
                                  to enqueue (a thread of its own refreshes it every
                                  ``FEEDER_BEAT``, for ``FEEDER_MS``): a collector never
                                  ends a run that its caller still feeds
    fanout:run:<run>:readers      sorted set: the collectors reading the run now (score:
                                  until when, ``READER_MS`` on); a collection that
                                  completes while another reads leaves the run's data to
                                  that one
    rq:job:fanout-<run>-<n>       an RQ job: one batch of tasks (RQ's own hash; queued
                                  jobs expire with the run, RQ's ``ttl``); ``<n>`` is
                                  the job's field in the jobs hash

Beside them, each caller's backend has a wake stream, ``fanout:wake:<id>`` (backend.py),
that its driver thread's read also waits on. docs/architecture.md lists every key with
its expiry.

A job's function is ``fanout.rq.run_batch`` (``RUN_BATCH``) and its arguments are
a :class:`JobArgs`. A result message is the pickle of ``(identity, records, attempts,
moves)`` — the identity ``(name, pid, ppid, host)`` of the process that ran the tasks,
the records as in :mod:`fanout._wire`, the attempts made before each record's (None
when all are first tries; as everywhere, ``RunState.settle``), and the tasks a job
gave back as new jobs (``{job id: (indices, attempts)}``, or None; split.py) — sealed
with the run's key when jobs are signed, so a message replayed onto another run's
stream is refused there. Results in the stream are final: workers retry a task's own
failures themselves.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, NamedTuple

from fanout._wire import FAILED, NOT_RUN, USAGE, Record, TaskBatch
from fanout.errors import Cancelled

if TYPE_CHECKING:
    from fanout.backends.rq.signing import Keyring
    from fanout.backends.spec import MapSpec

DEFAULT_QUEUE = "fanout"
RUN_BATCH = "fanout.rq.run_batch"  # the RQ function name of every fanout job
# ... and the names it has had: a job enqueued by an earlier release runs as fanout's own
RUN_BATCH_NAMES = frozenset({RUN_BATCH, "fanout.rqworker.run_batch"})
RESULT_TTL = 7 * 24 * 3600  # a run nobody collects expires whole this long after its last use
FAILURE_TTL = 3600  # failed fanout jobs stay visible in RQ this long
ENDED_TTL = 3600  # a dropped run's record stays this long, as a marker of what happened
CANCELLED_TTL = 3600  # a cancelled run's results stay collectable this long at most
CALLER_TTL = 60  # the key a driver writes as it checks (what tells it Redis is full)
WAKE_TTL = 3600  # a backend's wake stream lives this long after its last wake
WAKE_MAXLEN = 8  # ... and holds about this many entries (only the latest is read)
TARGET_JOB_SECONDS = 1.0  # a job holds about this much work once tasks are measured
FEEDER_MS = 10_000  # a caller silent this long no longer feeds its run (it died)
FEEDER_BEAT = 2.0  # seconds between two refreshes of a feeding caller's key
READER_MS = 30_000  # a collector silent this long is no longer reading the run
# A field of a job's RQ hash: the pid of the stock `rq worker` work-horse that runs it
# (RQ keeps none), so that a horse that dies before any push is still named.
HORSE_PID = "fanout_horse_pid"

Identity = tuple[str, int, int, str]  # (name, pid, ppid, host)
Moves = dict[str, tuple[list[int], list[int]]]  # new job id -> (task indices, attempts)
Message = tuple[Identity, list[Record], list[int] | None, Moves | None]


def in_words(seconds: int) -> str:
    """A TTL as messages say it: "an hour", "2 hours", "30 minutes", "7 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{'an' if unit == 'hour' else 'a'} {unit}" if count == 1 else f"{count} {unit}s"
    return f"{seconds} seconds"


def wake_key(token: str) -> str:
    """The stream a backend's driver thread waits on besides its runs' (``wake()``)."""
    return f"fanout:wake:{token}"


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
        self.feeder = f"fanout:run:{run_id}:feeder"
        self.readers = f"fanout:run:{run_id}:readers"

    def data(self) -> list[str]:
        """The keys holding the run's data (what a completed collection removes): the
        record first."""
        return [self.meta, *self.parts()]

    def parts(self) -> list[str]:
        """Every key of the run but its record."""
        return [self.results, self.done, self.jobs, self.driver, self.caller, self.feeder,
                self.readers]  # fmt: skip

    def job_id(self, name: int | str) -> str:
        """The RQ id of the run's job ``name`` (its field in the jobs hash)."""
        return f"fanout-{self.run_id}-{text(name)}"


# A run's limits as a job carries them, MapSpec's fields LIMITS (bytes, tasks, bytes;
# None: no limit).
Limits = tuple[int | None, int | None, int | None]


LIMITS = ("max_memory", "max_tasks_per_worker", "max_memory_per_worker")


def limits_of(spec: MapSpec) -> Limits | None:
    """``spec``'s limits for its jobs, None where it sets none."""
    limits = (spec.max_memory, spec.max_tasks_per_worker, spec.max_memory_per_worker)
    return None if limits == (None, None, None) else limits


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
    # The workers that could not load the target for these tasks, once each time they
    # gave them back for another (split.py): a job the caller makes has none.
    refused: tuple[str, ...] = ()
    # The caller's trace context (fanout.tracing's carrier), None where it has none.
    trace: dict[str, str] | None = None
    # The run's limits on the process that runs its tasks (MapSpec's max_memory,
    # max_tasks_per_worker, max_memory_per_worker), None where it has none.
    limits: Limits | None = None

    def wire(self) -> tuple[Any, ...]:
        """The job's arguments as RQ stores them: without the trailing ones that are at
        their default (``refused``, ``trace``), so that a worker older than they are
        still runs the job."""
        fields = tuple(self)
        end = len(fields)
        while end > _REQUIRED and fields[end - 1] == self._field_defaults[self._fields[end - 1]]:
            end -= 1
        return fields[:end]

    @classmethod
    def of(cls, run_id: str, target: str, star: bool, timeout: float | None, retries: int,
           tasks: TaskBatch, budget: float | None = None, trace: dict[str, str] | None = None,
           limits: Limits | None = None) -> JobArgs:  # fmt: skip
        return cls(run_id, target, star, timeout, retries, list(tasks.indices), tasks.items,
                   tasks.pickled, tasks.attempts, budget, (), trace, limits)  # fmt: skip


_REQUIRED = len(JobArgs._fields) - len(JobArgs._field_defaults)


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def outcome(record: Record) -> int:
    """0 ok, 1 failed, 2 cancelled (also a task stopped while it ran): what the run's
    counts add a record to."""
    status, payload = record[1], record[2]
    if status not in (FAILED, NOT_RUN):
        return 0
    return 2 if payload.type == Cancelled.__name__ else 1


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
        message = (*message, None)
    records = message[1]
    if records and len(records[0]) == USAGE:  # pushed by a fanout before usage
        message = (message[0], [(*r, None) for r in records], *message[2:])
    loaded: Message = message
    return loaded


# Push a message unless the run's data is gone (collected, dropped, or expired: a job
# that ends after that must not make its stream again), counting each index once (one BITFIELD per
# 500 records, not a SETBIT each: a command per task was a third of a run's commands);
# the run's keys then live ``result_ttl`` (from the run's record) from now.
# KEYS: stream, done bitmap, run record, jobs hash[, the pushing job's hash]; ARGV:
# message, then for each record its index and outcome (0 ok, 1 failed, 2 cancelled).
PUSH_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HEXISTS', KEYS[3], 'dropped') == 1 then
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
for _, key in ipairs(KEYS) do
  redis.call('EXPIRE', key, ttl)
end
return redis.call('HGET', KEYS[3], 'state') or 'running'
"""


def push_keys(keys: RunKeys, job: str | None = None) -> list[str]:
    """The push script's keys; ``job``: the RQ hash of the job pushing, which then lives
    as long as the run does (RQ keeps a running job's hash without an expiry)."""
    return [keys.results, keys.done, keys.meta, keys.jobs, *([job] if job else [])]


def push_args(data: bytes, records: list[Record]) -> list[Any]:
    args: list[Any] = [data]
    for record in records:
        args += (record[0], outcome(record))
    return args


# The run's record, changed only if it exists (a write that made it again would make a
# run without its target or state, whose jobs no worker would run). KEYS: record;
# ARGV: 'set' or 'incr', then field, value pairs. Returns 0 if the record is gone, else
# 1 ('set') or the field's new value ('incr', one field).
RECORD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == 'incr' then
  return redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# A cancelled run kept for its collectors: every key of it expires within ARGV[1]
# seconds, and so do later pushes (its result_ttl). KEYS: the record, then the others.
SHORTEN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local ttl = math.min(tonumber(ARGV[1]),
                     tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or ARGV[1]))
redis.call('HSET', KEYS[1], 'result_ttl', ttl)
for _, key in ipairs(KEYS) do
  redis.call('EXPIRE', key, ttl)
end
return 1
"""

# A run nobody can collect: its data goes, its record stays ARGV[2] seconds as a marker
# (marked dropped at ARGV[1]: pushes are refused, status and results say what happened).
# KEYS: the record, then the others.
DROP_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'dropped', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
return 1
"""

# A collection that has every result: it stops reading (ARGV[1]: its token, '' for the
# caller's own run), and removes the run's data unless another collector still reads it
# (ARGV[2]: now, in ms), which then will; the data meanwhile lives ARGV[3] s at most.
# KEYS: the readers set, the record, the others. Returns 1 if removed.
REMOVE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) > 0 then
  for i = 2, #KEYS do
    if redis.call('TTL', KEYS[i]) > tonumber(ARGV[3]) then
      redis.call('EXPIRE', KEYS[i], ARGV[3])
    end
  end
  return 0
end
redis.call('DEL', unpack(KEYS))
return 1
"""

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
