"""The docs give the rq backend's Redis keys and numbers as the code has them (issue 23,
point 6), so that a constant changed in the code, or a key added, fails here until the
docs say so too.

- Keys: the key list in ``protocol.py``'s docstring and the key table of
  docs/architecture.md name exactly the keys ``RunKeys`` makes (and a job's RQ key).
- Numbers: docs/architecture.md's table of numbers gives each constant it names its
  value in the code; the numbers other pages state are tied to their constant by the
  phrases of ``PHRASES`` below.
- Relations between the numbers that the docs state (a lease outlives several checks,
  ...) hold in the code.

All in this process: no Redis, no worker.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from rq.job import Job

from fanout.backends.rq import protocol
from fanout.backends.rq.backend import RQBackend
from fanout.backends.rq.protocol import RunKeys
from tests.helpers import ROOT

ARCHITECTURE = ROOT / "docs" / "architecture.md"
RQ_PACKAGE = "fanout.backends.rq"

# -- reading the docs ---------------------------------------------------------------------


def rq_section() -> str:
    text = ARCHITECTURE.read_text()
    start = text.index("## RQ backend")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row is ``header``, as cells."""
    lines = text.splitlines()
    start = lines.index(header) + 2  # past the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert rows, f"the table {header!r} is empty"
    return rows


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces as one space (markdown wraps)."""
    return " ".join(text.split())


UNITS = {"days": 86400, "h": 3600, "min": 60, "s": 1, "ms": 1e-3, "µs": 1e-6,
         "KiB": 2**10, "MiB": 2**20}  # fmt: skip
WORDS = {"an hour": 3600, "a minute": 60, "a second": 1, "twice": 2, "four": 4}


def quantity(text: str) -> float:
    """``"7 days"``, ``"200 ms"``, ``"1 MiB"``, ``"2,000"``, ``"an hour"``: seconds, bytes
    or a plain number."""
    text = text.strip().strip("`")
    if text in WORDS:
        return WORDS[text]
    match = re.fullmatch(r"(\d[\d,]*(?:\.\d+)?)\s*(\S+)?", text)
    assert match, f"not a quantity: {text!r}"
    number = float(match[1].replace(",", ""))
    return number * UNITS[match[2]] if match[2] else number


# -- reading the code ---------------------------------------------------------------------


def constant(ref: str) -> float:
    """The value of constant ``ref`` in seconds (a ``*_MS`` or ``*_NS`` one converted),
    bytes or a plain number. ``ref``: ``module.NAME`` or ``module.Class.attr`` under
    fanout.backends.rq, ``local.…`` or ``runstate.…`` under fanout.backends, or
    ``backend.RQBackend(option=)`` for an option's default."""
    option = re.fullmatch(r"backend\.RQBackend\((\w+)=\)", ref)
    if option:
        value = inspect.signature(RQBackend.__init__).parameters[option[1]].default
    else:
        package = "fanout.backends" if ref.startswith(("local.", "runstate.")) else RQ_PACKAGE
        parts = f"{package}.{ref}".split(".")
        value = None
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module first
            try:
                value = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                value = getattr(value, attr)
            break
    assert isinstance(value, int | float), (ref, value)
    assert not isinstance(value, bool), (ref, value)
    name = ref.rpartition(".")[2]
    if name.endswith("_MS"):
        return value / 1000
    if name.endswith("_NS"):
        return value / 1e9
    return float(value)


def literal(function: Callable[..., Any], pattern: str) -> float:
    """A number written in ``function``'s source (no constant names it)."""
    found = re.search(pattern, inspect.getsource(function))
    assert found, f"{pattern!r} is not in {function.__qualname__} any more"
    return float(found[1])


def run_keys() -> dict[str, str]:
    """Every Redis key of a run, as the code makes them, with ``<run>`` and ``<n>`` as
    the docs write them: attribute name -> key."""
    keys = RunKeys("<run>")
    made = {name: value for name, value in vars(keys).items() if name != "run_id"}
    assert set(keys.data()) == set(made.values()), "RunKeys.data() misses a key"
    made["job"] = Job.key_for(keys.job_id("<n>"))
    return made


# -- keys ---------------------------------------------------------------------------------


def test_protocols_docstring_names_every_key_of_a_run_and_no_other() -> None:
    assert protocol.__doc__ is not None
    documented = set(re.findall(r"^    ((?:fanout|rq):\S+)", protocol.__doc__, re.M))
    assert documented == set(run_keys().values())


def test_the_architecture_key_table_names_every_key_of_a_run_and_no_other() -> None:
    rows = table(rq_section(), "| key | type | what it holds | expires |")
    documented = {row[0].strip("`") for row in rows}
    wake = protocol.wake_key("<id>")  # a backend's, not a run's: RQBackend.__init__ makes it
    assert "wake_key(" in inspect.getsource(RQBackend.__init__)
    assert documented == {*run_keys().values(), wake}


# -- numbers ------------------------------------------------------------------------------


NUMBERS = table(rq_section(), "| constant | value | what it is |")


@pytest.mark.parametrize(("ref", "value"), [(row[0].strip("`"), row[1]) for row in NUMBERS],
                         ids=[row[0].strip("`") for row in NUMBERS])  # fmt: skip
def test_each_number_in_the_architecture_table_is_the_codes(ref: str, value: str) -> None:
    said, code = quantity(value), constant(ref)
    assert math.isclose(said, code), (
        f"docs/architecture.md gives {ref} as {value}, the code as {code}: change the one"
        " that is wrong (and the pages that repeat it: this module's PHRASES)"
    )


# Constants of the rq package that the table need not give: not a time, size or count
# that says how the backend behaves.
NOT_IN_THE_TABLE = {
    "signing.KEY_ID_SIZE", "signing.MAC_SIZE", "signing.HEADER_SIZE",  # the seal's layout
    "signing.MIN_SECRET_BYTES",  # docs/security.md says it
    "connection.SENTINEL_PORT",  # Redis Sentinel's own default port
    "protocol._REQUIRED",  # JobArgs' fields without a default, counted
}  # fmt: skip


def defined_numbers() -> set[str]:
    """``module.NAME`` of every number a module of the rq package defines at its top (not
    one it imports)."""
    found = set()
    for path in sorted((ROOT / "fanout" / "backends" / "rq").glob("*.py")):
        module = importlib.import_module(f"{RQ_PACKAGE}.{path.stem}")
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    value = getattr(module, target.id)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        found.add(f"{path.stem}.{target.id}")
    return found


def test_every_number_the_rq_package_defines_is_in_the_architecture_table() -> None:
    tabled = {row[0].strip("`") for row in NUMBERS}
    missing = defined_numbers() - tabled - NOT_IN_THE_TABLE
    assert not missing, f"say what these are in docs/architecture.md's numbers: {missing}"


def _outage_hit() -> Callable[..., Any]:
    from fanout.backends.rq.connection import Outage

    return Outage.hit


def _push_script_part() -> float:
    """Records per BITFIELD in the push script: ARGV pairs (index, outcome) 1000 at a
    time."""
    found = re.search(r"math\.min\(#ARGV, i \+ (\d+)\)", protocol.PUSH_SCRIPT)
    assert found, "the push script no longer takes its ARGV in parts"
    return (int(found[1]) + 1) / 2


# Numbers the pages under docs/ state in their prose: page -> (a phrase with the number
# as its group, the constant it must be: a ``constant()`` reference, or a function for a
# number the code writes out). A phrase that is gone fails too: the page was reworded,
# so find the number again and update the phrase here.
Ref = str | Callable[[], float]
PHRASES: dict[str, list[tuple[str, Ref]]] = {
    "architecture.md": [
        (r"a job holds about (1 s) of work, at most", "protocol.TARGET_JOB_SECONDS"),
        (r"of work, at most (5,000) tasks and about", "run.MAX_JOB_TASKS"),
        (r"5,000 tasks and about (1 MiB) of result messages", "run.MAX_JOB_BYTES"),
        (r"down to 1/(8) of a full job's work", "run.TAIL_SHRINK"),
        (r"measured: meanwhile \((1 s) at most\)", "run.MEASURING_SECONDS"),
        (r"refused waits (0.5 s) first, doubling", "split.REFUSED_PAUSE"),
        (r"first, doubling up to (5 s)", "split.MAX_REFUSED_PAUSE"),
        (r"or after (20) give-backs", "split.MAX_REFUSALS"),
        (r"batches of about (0.1 s) of work", "context.TaskProcess.batch_seconds"),
        (r"sent back once (50 ms) of work", "context.TaskProcess.flush_seconds"),
        (r"A fanout worker heartbeats every (2 s)", "worker.HEARTBEAT_SECONDS"),
        (r"registration lives (60 s) past the last heartbeat", "worker.REGISTRATION_TTL"),
        (r"before it unsubscribes \(waiting (2 s) at most\)", "worker.LISTENER_STOP_SECONDS"),
        (r"push for up to `--redis-wait` \((60 s)\)", "context.REDIS_WAIT"),
        (r"\(`RunRecord.publish`, (1,000) a message at most\)", "record.PUBLISH_PART"),
        (r"A map advances with `block` (1 s)", "run.WAIT_SECONDS"),
        (r"blocking `max_wait` \((1 s) by default", "run.WAIT_SECONDS"),
        (r"within (15 s) it lapses", "record.LEASE_MS"),
        (r"the data lives (an hour) at most meanwhile", "protocol.CANCELLED_TTL"),
        (r"its keys then live (an hour) at most", "protocol.CANCELLED_TTL"),
        (r"its record stays (an hour) as a marker", "protocol.ENDED_TTL"),
        (r"refreshed at each check, for (30 s)", "protocol.READER_MS"),
        (r"and waits up to (5 s) for the running tasks", "backend.STOP_WAIT"),
        (r"runs (1.5) times that plus", "split.SPLIT_FACTOR"),
        (r"times that plus (0.2 s)", "split.SPLIT_SLACK"),
        (r"result for (four) times a task's share", "split.STALL_FACTOR"),
        (r"budget \((0.1 s) at least", "split.STALL_SECONDS"),
        (r"looking every (50 ms)", "split.PACE_CHECK_SECONDS"),
        (r"has not started for (5 s)", "watch.STUCK_SECONDS"),
        (r"logs a warning after `warn_after` \((10 s)\)", "backend.RQBackend(warn_after=)"),
        (r"older than `dead_after` \((30 s)\)", "backend.RQBackend(dead_after=)"),
        (r"reached \((5 s) to connect\)", "connection.CONNECT_TIMEOUT"),
        (
            r"a backoff of (0.1 s) doubling",
            lambda: literal(_outage_hit(), r"self\.since, self\.pause = now, ([\d.]+)"),
        ),
        (
            r"0.1 s doubling up to (2 s)",
            lambda: literal(_outage_hit(), r"self\.pause = min\(([\d.]+), self\.pause \* 2\)"),
        ),
        (
            r"an idle worker tries again at least every (5 s)",
            "worker.FanoutWorker.max_connection_wait_time",
        ),
        (r"`enqueue_ahead` tasks \((10,000)\) enqueued", "backend.RQBackend(enqueue_ahead=)"),
        (r"at most (500) jobs a round", "run.ENQUEUE_ROUND"),
        (r"up to (1,000) messages, blocking 1 s", "run.READ_MESSAGES"),
        (r"1,000 messages, blocking (1 s) at most", "run.WAIT_SECONDS"),
        (r"\*\*The check\*\* \(`RQRun.check`, every (2 s)\)", "watch.CHECK_SECONDS"),
        (r"set with a token of its own for (15 s)", "record.LEASE_MS"),
        (r"sets the run's `feeder` key every (2 s)", "protocol.FEEDER_BEAT"),
        (r"every 2 s, to expire in (10 s)", "protocol.FEEDER_MS"),
        (r"at least every (200 ms), or once", "pusher.PUSH_SECONDS"),
        (r"or once (2,000) records are waiting", "pusher.PUSH_RECORDS"),
        (r"one `BITFIELD` per (500) records", lambda: _push_script_part()),
        (r"`failure_ttl` (1 h)", "protocol.FAILURE_TTL"),
        (r"for `redis_wait` \((30 s)\)", "backend.RQBackend(redis_wait=)"),
        (r"\| `fanout:run:<run>:driver` \|[^|]*\|[^|]*\| (15 s) after", "record.LEASE_MS"),
        (
            r"\| `fanout:run:<run>:caller` \|[^|]*\|[^|]*\| (60 s) \|",
            "protocol.CALLER_TTL",
        ),
        (r"\| `fanout:run:<run>:feeder` \|[^|]*\|[^|]*\| (10 s) after", "protocol.FEEDER_MS"),
        (
            r"\| `fanout:run:<run>:readers` \|[^|]*\|[^|]*\| (60 s) after",
            lambda: 2 * constant("protocol.READER_MS"),
        ),
        (
            r"\| `fanout:wake:<id>` \|[^|]*\|[^|]*\| (an hour) after",
            "protocol.WAKE_TTL",
        ),
        (r"`MAXLEN ~ (8)`", "protocol.WAKE_MAXLEN"),
        (r"holds about (10 ms) of work, up to 1,024 tasks", "local.run.TARGET_BATCH_SECONDS"),
        (r"of work, up to (1,024) tasks", "local.run.MAX_BATCH"),
        (r"\((16,384) in a bare run", "local.run.MAX_BARE_BATCH"),
        (r"record each\) and about (4 MiB)", "local.run.MAX_BATCH_BYTES"),
        (r"kept to about (128 MiB) of measured", "local.run.MAX_WINDOW_BYTES"),
        (r"The window is (10,000) tasks or more", "runstate.ORDER_WINDOW"),
        (r"when batches are quick \(under (50 ms)\)", "local.run.SLOW_TASK_SECONDS"),
        (r"result pipe once (1 ms) has passed", "local.run.FLUSH_WORK_SECONDS"),
        (r"so at least every (0.1 s)\. With a", "local.worker.FLUSH_SECONDS"),
        (r"while a stretch takes under (0.2 ms)", "local.protocol.STRETCH_NS"),
        (r"takes under 0.2 ms, up to (4,096)\)", "local.protocol.MAX_CLAIM"),
        (r"while tasks take under (20 µs) each", "local.protocol.QUICK_TASK_NS"),
        (r"measured time per task, (20 ms) at least", "local.run.OVERDUE_SECONDS"),
        (r"\((twice) the measured time per task", "local.run.OVERDUE_FACTOR"),
        (r"holding more than (4 ms) of quick work", "local.pool.SHARE_SECONDS"),
        (r"after a (2 s) grace period", "local.pool.STOP_GRACE_SECONDS"),
        (r"After (3) such deaths", "runstate.MAX_FREE_REQUEUES"),
    ],
    "reliability.md": [
        (r"within the worker's (2 s) idle heartbeat", "worker.HEARTBEAT_SECONDS"),
        (r"checks the registry every (2 s)", "watch.CHECK_SECONDS"),
        (r"fanout workers heartbeat every (2 s)", "worker.HEARTBEAT_SECONDS"),
        (r"is silent for `dead_after` \((30 s)\)", "backend.RQBackend(dead_after=)"),
        (r"tries again at least every (5 s)", "worker.FanoutWorker.max_connection_wait_time"),
        (r"after `redis_wait` \(default (30 s)\)", "backend.RQBackend(redis_wait=)"),
        (r"refreshes its `feeder` key every (2 s)", "protocol.FEEDER_BEAT"),
        (r"lapses within (15 s)", "record.LEASE_MS"),
        (r"a warning after `warn_after` \((10 s)\)", "backend.RQBackend(warn_after=)"),
        (r"refused waits (0.5 s), doubling", "split.REFUSED_PAUSE"),
        (r"doubling up to (5 s)", "split.MAX_REFUSED_PAUSE"),
        (r"after (20) give-backs", "split.MAX_REFUSALS"),
        (r"every (2 s) the run's driver checks", "watch.CHECK_SECONDS"),
        (r"up to `--redis-wait` \((60 s)\)", "context.REDIS_WAIT"),
        (r"expires `result_ttl` \((7 days)\)", "protocol.RESULT_TTL"),
        (r"A cancelled run's keys live (an hour) at most", "protocol.CANCELLED_TTL"),
        (r"keeps only its record, (an hour)", "protocol.ENDED_TTL"),
        (r"silent in Redis for over (10 s)", "protocol.FEEDER_MS"),
    ],
    "runs.md": [
        (r"`enqueue_ahead` tasks \(default (10,000)\)", "backend.RQBackend(enqueue_ahead=)"),
        (r"then jobs of about (1 s) of work", "protocol.TARGET_JOB_SECONDS"),
        (r"tasks \(at most (a second)\)", "run.MEASURING_SECONDS"),
        (r"from a thread of its own every (2 s)", "protocol.FEEDER_BEAT"),
        (r"read the run \(every (2 s)\)", "watch.CHECK_SECONDS"),
        (r"meanwhile \(silent over (30 s)", "protocol.READER_MS"),
        (r"`result_ttl` \(default (7 days), per run\)", "protocol.RESULT_TTL"),
        (r"stay collectable for (an hour), no more", "protocol.CANCELLED_TTL"),
        (r"state and counts\) stays (an hour)", "protocol.ENDED_TTL"),
        (r"has lapsed, within (15 s)\)", "record.LEASE_MS"),
        (r"been silent for (10 s), `fanout results`", "protocol.FEEDER_MS"),
        (r"\(within about (0.2 s)\)", "pusher.PUSH_SECONDS"),
    ],
    "deployment.md": [
        (r"registration lives (60 s) past its last heartbeat", "worker.REGISTRATION_TTL"),
        (r"heartbeats every (2 s), idle or busy", "worker.HEARTBEAT_SECONDS"),
        (r"heartbeats stopped \((6 s)\)", "worker.TAKE_OVER_AFTER"),
        (r"A job holds about (1 s) of work, or a single slow task", "protocol.TARGET_JOB_SECONDS"),
        (r"heartbeats after `dead_after` \((30 s)\)", "backend.RQBackend(dead_after=)"),
        (r"until they can push them \(up to (60 s)\)", "context.REDIS_WAIT"),
        (r"reconnects for `redis_wait` \((30 s)\)", "backend.RQBackend(redis_wait=)"),
        (r"for `warn_after` \((10 s)\) warns", "backend.RQBackend(warn_after=)"),
        (r"`enqueue_ahead` tasks \(default (10,000)\) ahead", "backend.RQBackend(enqueue_ahead=)"),
        (r"at most (5,000) tasks and about 1 MiB", "run.MAX_JOB_TASKS"),
        (r"5,000 tasks and about (1 MiB) of results", "run.MAX_JOB_BYTES"),
        (r"`result_ttl` \((7 days) by default", "protocol.RESULT_TTL"),
        (r"failed jobs, which RQ keeps for (an hour)", "protocol.FAILURE_TTL"),
        (r"a cancelled run's results, kept (an hour) at most", "protocol.CANCELLED_TTL"),
        (r"a few hundred bytes\), kept (an hour)", "protocol.ENDED_TTL"),
        (r"for `--redis-wait` \((60 s)\), heartbeating", "context.REDIS_WAIT"),
        (
            r"idle worker tries again at least every (5 s)",
            "worker.FanoutWorker.max_connection_wait_time",
        ),
    ],
}


STATED = [(page, phrase, ref) for page, phrases in PHRASES.items() for phrase, ref in phrases]


@pytest.mark.parametrize(("page", "phrase", "ref"), STATED,
                         ids=[f"{page}:{phrase[:40]}" for page, phrase, _ in STATED])  # fmt: skip
def test_each_number_a_page_states_is_the_codes(page: str, phrase: str, ref: Ref) -> None:
    text = flat((ROOT / "docs" / page).read_text())
    found = re.search(phrase, text)
    assert found, f"docs/{page} no longer says {phrase!r}: find the number, fix the phrase"
    said, code = quantity(found[1]), (constant(ref) if isinstance(ref, str) else ref())
    assert math.isclose(said, code), f"docs/{page}: {found[0]!r} says {said}, the code {code}"


# -- how the numbers relate ---------------------------------------------------------------


def test_the_numbers_relate_as_the_architecture_says() -> None:
    from fanout.backends.rq import run, split

    check = constant("watch.CHECK_SECONDS")
    heartbeat = constant("worker.HEARTBEAT_SECONDS")
    dead_after = constant("backend.RQBackend(dead_after=)")
    assert constant("record.LEASE_MS") >= 3 * check  # a lease outlives a missed check
    assert constant("protocol.READER_MS") >= 3 * check  # a reader's mark, likewise
    assert constant("protocol.FEEDER_MS") >= 3 * constant("protocol.FEEDER_BEAT")
    assert constant("run.WAIT_SECONDS") < check  # a blocking read keeps checks on time
    assert constant("worker.REGISTRATION_TTL") > dead_after >= 3 * heartbeat
    assert constant("watch.STUCK_SECONDS") >= 2 * check
    assert constant("split.PACE_CHECK_SECONDS") < constant("split.STALL_SECONDS")
    assert split.TARGET_JOB_SECONDS is run.TARGET_JOB_SECONDS is protocol.TARGET_JOB_SECONDS
    default = re.search(r"HGET', KEYS\[3\], 'result_ttl'\) or '(\d+)'", protocol.PUSH_SCRIPT)
    assert default, "the push script has no default expiry any more"
    assert int(default[1]) == protocol.RESULT_TTL
    assert constant("backend.RQBackend(result_ttl=)") == protocol.RESULT_TTL
    assert max(protocol.FAILURE_TTL, protocol.ENDED_TTL, protocol.CANCELLED_TTL) <= (
        protocol.RESULT_TTL
    )


def test_the_job_function_the_docs_name_is_the_one_jobs_carry() -> None:
    import fanout.rq
    from fanout.backends.rq.job import run_batch

    assert protocol.RUN_BATCH == "fanout.rq.run_batch"
    assert fanout.rq.run_batch is run_batch
    assert "`fanout.rq.run_batch`" in rq_section()


def test_the_package_docstring_points_to_the_architecture() -> None:
    import fanout.backends.rq

    assert fanout.backends.rq.__doc__ is not None
    assert "docs/architecture.md" in fanout.backends.rq.__doc__
    for stale in ("BLPOP", "LPOP", "RPUSH", "control"):
        assert stale not in fanout.backends.rq.__doc__, stale
