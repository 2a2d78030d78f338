"""Signed jobs and results, allowlists, warnings and secrecy (issue 7).

Unit tests first (keyrings, allowlists, warnings); then real ``redis-server`` processes
of this module's own on free ports, real ``fanout worker`` processes (and one stock
``rq worker``) started with their secrets in the environment, their stdout and stderr
captured to files so that what they print can be checked.

The test secret and password are distinctive strings: every captured output is grepped
for them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

import fanout
from fanout._wire import OK_RAW, PAYLOAD
from fanout.backends.rq.allowlist import (
    allowlist_from_env,
    check_name,
    is_allowed,
    parse_allow,
    target_module,
)
from fanout.backends.rq.protocol import RunKeys, unpack_results
from fanout.backends.rq.signing import MAGIC, Keyring, key_id, load_keyring, serializer_for
from fanout.backends.rq.worker import safety_warnings
from fanout.errors import SignatureError, TargetNotAllowed
from tests import evil_tasks, tasks
from tests.helpers import (
    ROOT,
    SECRETS_IN_TESTS,
    SESSION_PIDS,
    RedisServer,
    cli_env,
    stop_workers,
    wait_for_workers,
    wait_until,
)
from tests.helpers import (
    run_fanout as cli,
)

SECRET = "s3cr3t-for-tests-0123456789abcdef"
OTHER_SECRET = "other-s3cr3t-for-tests-fedcba9876"  # a second deployment's secret
OLD_SECRET = "old-s3cr3t-for-tests-13579bdf2468"  # the one being rotated out
PASSWORD = "pw-for-tests-7f3a9c"
WRONG_PASSWORD = "wrong-pw-for-tests-c9a3f7"
SHORT_SECRET = "short-7f3a9c"  # under 16 bytes

RQ_CLI = [sys.executable, "-m", "rq.cli"]


# --------------------------------------------------------------------------- helpers


def spawn(argv: list[str], env: dict[str, str], logs: Path, name: str) -> subprocess.Popen[bytes]:
    """``argv`` from the repo root with ``env`` (on top of cli_env), stdout and stderr to
    ``logs/NAME.out`` and ``logs/NAME.err``."""
    with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
        return subprocess.Popen(
            argv, cwd=ROOT, env=cli_env(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )


def fanout_worker(
    url: str, name: str, queue: str, logs: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    """A real ``fanout worker``; the Redis URL (and any secret) only in its environment."""
    argv = [sys.executable, "-m", "fanout", "worker", "--name", name, "--queue", queue, *args]
    return spawn(argv, {"FANOUT_REDIS_URL": url, **env}, logs, name)


def output_of(logs: Path, name: str) -> str:
    return (logs / f"{name}.out").read_text() + (logs / f"{name}.err").read_text()


def wait_failed(connection: Redis, queue: str, job_id: str, timeout: float = 15) -> None:
    registry = FailedJobRegistry(queue, connection=connection)
    wait_until(lambda: job_id in registry.get_job_ids(), timeout, f"job {job_id} failed")


def failure_of(connection: Redis, queue: str, job_id: str) -> str:
    """The exception RQ stored for ``job_id``, once it is in the failed registry."""
    wait_failed(connection, queue, job_id)
    return exc_string_of(connection, job_id)


def exc_string_of(connection: Redis, job_id: str) -> str:
    result = Job.fetch(job_id, connection=connection).latest_result()
    assert result is not None, f"job {job_id} has no result"
    return result.exc_string or ""


def errors_of(results: list[fanout.TaskResult]) -> list[tuple[str, str]]:
    return [(r.error.type, r.error.message) if r.error else ("", "") for r in results]


class TouchOnUnpickle:
    """Pickles fine; unpickling it creates ``path`` (so unpickling is visible)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (tasks.touch, (self.path,))


@pytest.fixture(autouse=True)
def no_secret_in_the_test_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients here sign only when a test gives them a secret."""
    for name in ("FANOUT_SECRET", "FANOUT_SECRET_FILE", "FANOUT_ALLOW", evil_tasks.MARKER_ENV):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- keyrings


def test_seal_then_open_gives_the_body_back() -> None:
    keyring = Keyring([SECRET.encode()], "test")
    body = pickle.dumps({"a": [1, 2, 3]})
    sealed = keyring.seal(body)
    assert sealed.startswith(MAGIC + key_id(SECRET.encode()) + b":")
    assert sealed.endswith(body)
    assert keyring.open(sealed) == body
    assert keyring.open(bytearray(sealed)) == body
    assert Keyring([SECRET.encode()], "another source").open(sealed) == body


def test_open_refuses_unsigned_data() -> None:
    keyring = Keyring([SECRET.encode()], "test")
    for data in (pickle.dumps("hello"), b"", MAGIC + b"short"):
        with pytest.raises(SignatureError, match="the job is not signed"):
            keyring.open(data, "job")


def test_open_refuses_data_signed_with_another_key() -> None:
    ours, theirs = Keyring([SECRET.encode()], "ours"), Keyring([OTHER_SECRET.encode()], "theirs")
    sealed = theirs.seal(b"body")
    with pytest.raises(SignatureError) as caught:
        ours.open(sealed, "job")
    message = str(caught.value)
    assert f"key id {key_id(OTHER_SECRET.encode()).decode()}" in message
    assert "not among this side's keys" in message
    assert SECRET not in message
    assert OTHER_SECRET not in message


def test_open_refuses_a_tampered_body_or_signature() -> None:
    keyring = Keyring([SECRET.encode()], "test")
    sealed = keyring.seal(pickle.dumps(("square", 7)))
    tampered = sealed.replace(b"square", b"sqvare")
    assert tampered != sealed
    with pytest.raises(SignatureError, match="signature does not match: it was forged or altered"):
        keyring.open(tampered, "job")
    mac_start = len(MAGIC) + 9
    flipped = bytearray(sealed)
    flipped[mac_start] ^= 1
    with pytest.raises(SignatureError, match="signature does not match"):
        keyring.open(bytes(flipped), "job")


def test_rotation_new_secret_first_signs_and_old_one_still_verifies(tmp_path: Path) -> None:
    secret_file = tmp_path / "secrets"
    secret_file.write_text(f"  {SECRET}  \n\n{OLD_SECRET}\n")
    rotated = load_keyring(secret_file=str(secret_file))
    old = load_keyring(secret=OLD_SECRET)
    assert rotated is not None
    assert old is not None

    assert rotated.open(old.seal(b"from a client not yet rotated")) == (
        b"from a client not yet rotated"
    )
    sealed = rotated.seal(b"from a rotated client")
    assert sealed[len(MAGIC) : len(MAGIC) + 8] == key_id(SECRET.encode())
    assert rotated.open(sealed) == b"from a rotated client"
    with pytest.raises(SignatureError, match="not among"):
        old.open(sealed)  # a side that has only the old secret cannot read the new seal


def test_secret_file_and_env_are_read_and_nothing_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_keyring() is None
    monkeypatch.setenv("FANOUT_SECRET", SECRET)
    from_env = load_keyring()
    assert from_env is not None
    assert from_env.signing_id == key_id(SECRET.encode())
    secret_file = tmp_path / "secret"
    secret_file.write_text(OTHER_SECRET + "\n")
    monkeypatch.setenv("FANOUT_SECRET_FILE", str(secret_file))
    from_file = load_keyring()
    assert from_file is not None
    assert from_file.signing_id == key_id(OTHER_SECRET.encode())


def test_short_empty_or_unreadable_secret_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shorter than 16 bytes") as caught:
        load_keyring(secret=SHORT_SECRET)
    assert SHORT_SECRET not in str(caught.value)
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        Keyring([b"x" * 15], "test")
    Keyring([b"x" * 16], "test")  # 16 bytes is enough

    rotation = tmp_path / "secrets"
    rotation.write_text(f"{SECRET}\n{SHORT_SECRET}\n")
    with pytest.raises(ValueError, match="shorter than 16 bytes") as caught:
        load_keyring(secret_file=str(rotation))
    assert SHORT_SECRET not in str(caught.value)
    assert SECRET not in str(caught.value)

    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no secret"):
        load_keyring(secret_file=str(empty))
    with pytest.raises(ValueError, match="cannot read the secret file"):
        load_keyring(secret_file=str(tmp_path / "missing"))


def test_repr_of_a_keyring_shows_key_ids_never_secrets(tmp_path: Path) -> None:
    secret_file = tmp_path / "secrets"
    secret_file.write_text(f"{SECRET}\n{OLD_SECRET}\n")
    for keyring in (Keyring([SECRET.encode()], "test"), load_keyring(secret_file=str(secret_file))):
        shown = repr(keyring) + str(keyring)
        assert SECRET not in shown
        assert OLD_SECRET not in shown
        assert key_id(SECRET.encode()).decode() in shown


def test_signed_serializer_checks_before_it_unpickles(tmp_path: Path) -> None:
    serializer = serializer_for(Keyring([SECRET.encode()], "test"))
    assert serializer.loads(serializer.dumps(["job", 1])) == ["job", 1]
    marker = tmp_path / "unpickled"
    with pytest.raises(SignatureError, match="not signed"):
        serializer.loads(pickle.dumps(TouchOnUnpickle(marker)))
    other = serializer_for(Keyring([OTHER_SECRET.encode()], "other"))
    with pytest.raises(SignatureError, match="not among"):
        serializer.loads(other.dumps(TouchOnUnpickle(marker)))
    assert not marker.exists()
    pickle.loads(pickle.dumps(TouchOnUnpickle(marker)))  # the check of the check
    assert marker.exists()


# --------------------------------------------------------------------------- allowlists


def test_parse_allow_takes_repeated_and_comma_separated_prefixes() -> None:
    assert parse_allow([]) == ()
    assert parse_allow([""]) == ()
    assert parse_allow(["app.tasks"]) == ("app.tasks",)
    assert parse_allow(["app.tasks, lib.jobs", "reports"]) == ("app.tasks", "lib.jobs", "reports")
    assert parse_allow(["app.tasks.,"]) == ("app.tasks",)
    for bad in ("app-tasks", "app..tasks", "app/tasks", "1app", "app.tasks:square", "app tasks"):
        with pytest.raises(ValueError, match="not a module path"):
            parse_allow([bad])


def test_is_allowed_stops_at_module_boundaries() -> None:
    allow = ("app.tasks",)
    assert is_allowed("app.tasks", allow)
    assert is_allowed("app.tasks.images", allow)
    assert is_allowed("app.tasks.images.thumbs", allow)
    assert not is_allowed("app.tasks_evil", allow)
    assert not is_allowed("app.task", allow)
    assert not is_allowed("app", allow)
    assert not is_allowed("other.app.tasks", allow)
    assert is_allowed("lib.jobs", ("app.tasks", "lib"))


def test_target_module_of_fanout_and_rq_names() -> None:
    assert target_module("app.tasks:square") == "app.tasks"
    assert target_module("app.tasks:Class.method") == "app.tasks"
    assert target_module("app.tasks.square") == "app.tasks"  # an RQ function name


def test_the_allowlist_is_fanout_allow_outside_a_fanout_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def check_allowed(name: str, what: str) -> None:
        check_name(name, what, allowlist_from_env())

    check_allowed("tests.evil_tasks:anything", "target")  # no allowlist: all admitted
    monkeypatch.setenv("FANOUT_ALLOW", "tests.evil,tests.tasks")
    check_allowed("tests.tasks:square", "target")
    check_allowed("tests.tasks.square", "RQ job function")
    with pytest.raises(TargetNotAllowed, match=re.escape("tests.evil_tasks:anything is not in")):
        check_allowed("tests.evil_tasks:anything", "target")


# --------------------------------------------------------------------------- warnings (unit)


def test_safety_warnings_name_unsigned_jobs_and_remote_redis_without_password() -> None:
    keyring = Keyring([SECRET.encode()], "test")
    unsigned = safety_warnings("redis://127.0.0.1:6379/0", None, ())
    assert len(unsigned) == 1
    assert "not signed" in unsigned[0]
    assert safety_warnings("redis://127.0.0.1:6379/0", keyring, ()) == []
    assert safety_warnings("redis://localhost:6379/0", keyring, ()) == []

    remote = safety_warnings("redis://10.1.2.3:6379/0", None, ())
    assert len(remote) == 2
    assert "10.1.2.3" in remote[1]
    assert "without a password" in remote[1]
    assert safety_warnings("redis://10.1.2.3:6379/0", keyring, ()) == [remote[1]]
    assert safety_warnings("redis://:pw@10.1.2.3/0", keyring, ()) == []
    assert safety_warnings("redis://user:pw@10.1.2.3/0", keyring, ()) == []
    assert safety_warnings("redis://10.1.2.3/0?password=pw", keyring, ()) == []
    assert all("pw" not in w for w in safety_warnings("redis://:pw@10.1.2.3/0", None, ()))


# --------------------------------------------------------------------------- shared workers


@dataclass
class Cluster:
    """A redis-server with a signed and an unsigned fanout worker (queue = worker name)."""

    url: str
    logs: Path
    connection: Redis

    def output(self, name: str) -> str:
        return output_of(self.logs, name)

    def evil_marker(self, name: str) -> Path:
        """The file a worker's import of tests.evil_tasks creates."""
        return self.logs / f"{name}.evil-imported"


SIGNED = "signed-1"  # FANOUT_SECRET=SECRET
PLAIN = "plain-1"  # no secret, --allow tests.tasks
ALLOW_ENV = "allow-env-1"  # FANOUT_SECRET=SECRET, FANOUT_ALLOW=tests.evil,tests.tasks


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("security-logs")
    server = RedisServer()
    SESSION_PIDS.add(server.process.pid)
    workers: list[subprocess.Popen[bytes]] = []
    connection = Redis.from_url(server.url)
    try:
        setups = {
            SIGNED: ({"FANOUT_SECRET": SECRET}, ()),
            PLAIN: ({}, ("--allow", "tests.tasks")),
            ALLOW_ENV: ({"FANOUT_SECRET": SECRET, "FANOUT_ALLOW": "tests.evil,tests.tasks"}, ()),
        }
        for name, (env, args) in setups.items():
            marker = {evil_tasks.MARKER_ENV: str(logs / f"{name}.evil-imported")}
            workers.append(fanout_worker(server.url, name, name, logs, {**env, **marker}, *args))
        SESSION_PIDS.update(w.pid for w in workers)
        wait_for_workers(server.url, list(setups))
        yield Cluster(server.url, logs, connection)
    finally:
        connection.close()
        stop_workers(workers)
        server.stop()
        SESSION_PIDS.difference_update([server.process.pid, *(w.pid for w in workers)])
    # Everything the workers printed, refusals and tracebacks included.
    for log in logs.iterdir():
        text = log.read_text(errors="replace")
        assert not [s for s in SECRETS_IN_TESTS if s in text], f"a secret in {log.name}"


# --------------------------------------------------------------------------- signed jobs


def test_unsigned_raw_rq_job_is_refused_in_one_line_and_the_worker_serves_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    # Unpickling the argument creates the marker too: the worker must not even do that.
    job = Queue(SIGNED, connection=cluster.connection).enqueue(tasks.touch, TouchOnUnpickle(marker))
    assert "SignatureError" in failure_of(cluster.connection, SIGNED, job.id)
    assert not marker.exists()

    # The worker serves on; its one-line refusal is written before it takes a new job.
    results = fanout.run(
        tasks.square, [1, 2, 3], backend="rq", redis_url=cluster.url, queue=SIGNED, secret=SECRET
    )
    assert [(r.ok, r.value, r.worker.name) for r in results] == [
        (True, 1, SIGNED),
        (True, 4, SIGNED),
        (True, 9, SIGNED),
    ]
    lines = [line for line in cluster.output(SIGNED).splitlines() if job.id in line]
    assert len(lines) == 1, lines
    assert "refused: SignatureError:" in lines[0], lines[0]
    assert "not signed" in lines[0], lines[0]
    assert not marker.exists()
    assert not cluster.evil_marker(SIGNED).exists()


def test_client_with_a_wrong_secret_gets_signature_errors_and_nothing_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    markers = [tmp_path / f"ran-{i}" for i in range(3)]
    started = time.monotonic()
    results = fanout.run(
        tasks.touch, map(str, markers), backend="rq", redis_url=cluster.url, queue=SIGNED,
        secret=OTHER_SECRET,
    )  # fmt: skip
    assert time.monotonic() - started < 10
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.ok for r in results] == [False] * 3
    for kind, message in errors_of(results):
        assert kind == "SignatureError"
        assert "not among" in message
        assert key_id(OTHER_SECRET.encode()).decode() in message
        assert SECRET not in message
        assert OTHER_SECRET not in message
    assert not any(m.exists() for m in markers)


def test_client_without_a_secret_against_a_signed_worker_gets_signature_errors(
    cluster: Cluster, tmp_path: Path
) -> None:
    markers = [tmp_path / f"ran-{i}" for i in range(2)]
    results = fanout.run(
        tasks.touch, map(str, markers), backend="rq", redis_url=cluster.url, queue=SIGNED
    )
    assert [kind for kind, _ in errors_of(results)] == ["SignatureError"] * 2
    assert all("not signed" in message for _, message in errors_of(results))
    assert not any(m.exists() for m in markers)


def test_signed_client_against_an_unsigned_worker_gets_signature_errors(
    cluster: Cluster, tmp_path: Path
) -> None:
    markers = [tmp_path / f"ran-{i}" for i in range(2)]
    results = fanout.run(
        tasks.touch, map(str, markers), backend="rq", redis_url=cluster.url, queue=PLAIN,
        secret=SECRET,
    )  # fmt: skip
    assert [kind for kind, _ in errors_of(results)] == ["SignatureError"] * 2
    for _, message in errors_of(results):
        assert f"RQ worker {PLAIN} cannot read signed jobs" in message, message
        assert "FANOUT_SECRET" in message
    assert not any(m.exists() for m in markers)


def test_client_refuses_forged_result_messages_without_unpickling_them(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "forgery-unpickled"
    info = ("forger", 1, 1, "forged-host")

    def message(value: Any) -> bytes:
        record = (0, OK_RAW, value, 0.0, 0.0, 0.0, "", None)
        return pickle.dumps((info, [record], None), pickle.HIGHEST_PROTOCOL)

    forged = [
        message(TouchOnUnpickle(marker)),  # unsigned
        Keyring([OTHER_SECRET.encode()], "other").seal(message(TouchOnUnpickle(marker))),
        # Signed with the right key, then altered.
        Keyring([SECRET.encode()], "ours").seal(message("forged")).replace(b"forged", b"FORGED"),
    ]
    ours = Keyring([SECRET.encode()], "ours")
    caplog.set_level("WARNING", logger="fanout")
    with fanout.Fanout("rq", redis_url=cluster.url, queue=SIGNED, secret=SECRET) as fo:
        results = fo.map(tasks.square, [7])
        run = fo._backend.runs[0]  # type: ignore[attr-defined]
        forged += [
            # Validly sealed, but for another run (a replay from another run's list).
            ours.seal(b"fanout:run:another:results\n" + message(TouchOnUnpickle(marker))),
            # Validly sealed for this run, but not a result message.
            ours.seal(run.keys.results.encode() + b"\n" + pickle.dumps("not a result")),
        ]
        # Already waiting on the run's stream when it reads it: the forgeries come
        # before the worker's real result, while index 0 is outstanding.
        for data in forged:
            cluster.connection.xadd(run.keys.results, {"m": data})
        got = list(results)
        refused = run.refused_messages
    assert [(r.index, r.ok, r.value, r.worker.name) for r in got] == [(0, True, 49, SIGNED)]
    assert refused == len(forged)
    assert not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if "refused a result" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "not signed" in warnings[0], warnings


# --------------------------------------------------------------------------- allowlists (real)


@pytest.mark.parametrize("worker", [PLAIN, ALLOW_ENV], ids=["--allow", "FANOUT_ALLOW"])
def test_target_outside_the_allowlist_is_refused_and_never_imported(
    cluster: Cluster, worker: str
) -> None:
    secret = SECRET if worker == ALLOW_ENV else None
    options = {"backend": "rq", "redis_url": cluster.url, "queue": worker, "secret": secret}
    # The client imports tests.evil_tasks too (it resolves the name), but without the
    # marker variable, which only the worker has.
    refused = fanout.run("tests.evil_tasks:anything", [1, 2, 3], **options)
    assert [kind for kind, _ in errors_of(refused)] == ["TargetNotAllowed"] * 3
    for _, message in errors_of(refused):
        assert "tests.evil_tasks:anything is not in this worker's allowlist" in message, message
    allowed = fanout.run("tests.tasks:square", [4, 5], **options)
    assert [(r.ok, r.value, r.worker.name) for r in allowed] == [
        (True, 16, worker),
        (True, 25, worker),
    ]
    assert not cluster.evil_marker(worker).exists()


def test_the_drop_ins_calls_pass_the_allowlist_one_function_at_a_time(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Executor.submit and Pool.apply_async send every call through one trampoline
    target; the worker's allowlist checks the function inside each call instead."""
    options = {"backend": "rq", "redis_url": cluster.url, "queue": PLAIN}
    with fanout.Executor(**options) as ex:
        assert ex.submit(tasks.square, 6).result(timeout=30) == 36
        refused = ex.submit(evil_tasks.touch, str(tmp_path / "ran"))
        with pytest.raises(TargetNotAllowed, match=r"tests\.evil_tasks\.touch, which is not in"):
            refused.result(timeout=30)
    with fanout.Pool(**options) as pool:
        assert pool.apply(tasks.square, (5,)) == 25
        with pytest.raises(TargetNotAllowed):
            pool.apply(evil_tasks.anything, (1,))
    assert not (tmp_path / "ran").exists()
    assert not cluster.evil_marker(PLAIN).exists()


def test_raw_rq_job_outside_the_allowlist_is_refused_and_never_imported(
    cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    job = Queue(PLAIN, connection=cluster.connection).enqueue(evil_tasks.touch, str(marker))
    assert "TargetNotAllowed" in failure_of(cluster.connection, PLAIN, job.id)
    assert not marker.exists()
    assert not cluster.evil_marker(PLAIN).exists()
    # Allowed raw jobs run; by then the refusal's one line is written.
    allowed = Queue(PLAIN, connection=cluster.connection).enqueue(tasks.touch, str(marker))
    wait_until(marker.exists, 15, "the allowed raw job ran")
    assert allowed.id
    wait_until(
        lambda: any(job.id in line for line in cluster.output(PLAIN).splitlines()),
        5,
        "the refusal logged",
    )
    lines = [line for line in cluster.output(PLAIN).splitlines() if job.id in line]
    assert len(lines) == 1, lines
    assert "refused: TargetNotAllowed:" in lines[0], lines


def test_target_reached_through_an_allowed_modules_import_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``tests.tasks:os.mkdir`` is in tests.tasks by name only: the callable is os.mkdir."""
    marker = tmp_path / "made-by-os-mkdir"
    results = fanout.run(
        "tests.tasks:os.mkdir", [str(marker)], backend="rq", redis_url=cluster.url, queue=PLAIN
    )
    assert not marker.exists()
    assert [kind for kind, _ in errors_of(results)] == ["TargetNotAllowed"]
    assert "defined in posix" in errors_of(results)[0][1]


def test_raw_rq_function_reached_through_an_allowed_modules_import_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "made-by-os-mkdir"
    job = Queue(PLAIN, connection=cluster.connection).enqueue("tests.tasks.os.mkdir", str(marker))
    status = wait_until(
        lambda: job.get_status(refresh=True) in ("finished", "failed") and job.get_status(),
        15,
        "the job finished or failed",
    )
    assert not marker.exists()
    assert status == "failed"
    assert "TargetNotAllowed" in exc_string_of(cluster.connection, job.id)


class MkdirOnUnpickle:
    """Pickles as a call of os.mkdir: code that runs when the pickle is read."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def test_pickled_inputs_may_name_only_allowed_modules(cluster: Cluster, tmp_path: Path) -> None:
    """An input is a pickle too: one naming code outside the allowlist is refused
    unread, and its module is not imported; plain data and allowed classes pass."""
    marker = tmp_path / "made-by-unpickling"
    inputs = [MkdirOnUnpickle(marker), evil_tasks.anything, {"plain": [1.5, None]}, 7]
    results = fanout.run(tasks.identity, inputs, backend="rq", redis_url=cluster.url, queue=PLAIN)
    kinds = [kind for kind, _ in errors_of(results)]
    assert kinds == ["TargetNotAllowed", "TargetNotAllowed", "", ""], errors_of(results)
    assert "posix.mkdir" in errors_of(results)[0][1]
    assert "tests.evil_tasks.anything" in errors_of(results)[1][1]
    assert [r.value for r in results[2:]] == [{"plain": [1.5, None]}, 7]
    assert not marker.exists()
    assert not cluster.evil_marker(PLAIN).exists()


def _pushed_error(cluster: Cluster, run_id: str, keyring: Keyring | None) -> tuple[str, str]:
    """The error of the one task a raw run_batch job pushed onto its run's stream."""
    keys = RunKeys(run_id)
    read = cluster.connection.xread({keys.results: "0-0"}, count=1, block=15_000)
    assert read, "the job pushed no result"
    _info, [record], _, _ = unpack_results(read[0][1][0][1][b"m"], keys, keyring)
    return record[PAYLOAD].type, record[PAYLOAD].message


@pytest.mark.parametrize("worker", [PLAIN, SIGNED], ids=["allowlisted", "signed"])
def test_a_file_path_target_never_runs_on_a_worker(
    cluster: Cluster, worker: str, tmp_path: Path
) -> None:
    """``tests.tasks./../../<...>/evil.py:run`` starts with an allowed prefix, but it is
    a path: workers import targets by module name only."""
    marker = tmp_path / "file-ran"
    evil = tmp_path / "evil_file.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\ndef run(x):\n    return x\n")
    target = "tests.tasks." + "/.." * 40 + str(evil) + ":run"
    run_id = f"path-{worker}"
    keyring = Keyring([SECRET.encode()], "ours") if worker == SIGNED else None
    queue = Queue(worker, connection=cluster.connection, serializer=serializer_for(keyring))
    # A run's record, as a client makes it: a job of a run that has none is not run.
    cluster.connection.hset(RunKeys(run_id).meta, mapping={"state": "running", "result_ttl": 60})
    queue.enqueue("fanout.rqworker.run_batch", run_id, target, False, None, 0, [0], [1], [],
                  None)  # fmt: skip
    kind, message = _pushed_error(cluster, run_id, keyring)
    assert kind in ("TargetError", "TargetNotAllowed"), message
    assert not marker.exists()


def test_a_drop_in_job_an_earlier_release_enqueued_runs_on_an_allowlisted_worker(
    cluster: Cluster,
) -> None:
    """Earlier releases named the drop-ins' trampoline ``fanout.dropin.calls:call``: a
    job of theirs still in a queue passes the allowlist as the trampoline does today
    (the function inside the call is what the allowlist checks)."""
    from fanout.calls import Call

    run_id = "earlier-dropin"
    queue = Queue(PLAIN, connection=cluster.connection)
    cluster.connection.hset(RunKeys(run_id).meta, mapping={"state": "running", "result_ttl": 60})
    item = pickle.dumps(Call(tasks.square, (7,), {}))
    queue.enqueue("fanout.rqworker.run_batch", run_id, "fanout.dropin.calls:call", False, None,
                  0, [0], [item], [0], None)  # fmt: skip
    keys = RunKeys(run_id)
    read = cluster.connection.xread({keys.results: "0-0"}, count=1, block=15_000)
    assert read, "the job pushed no result"
    _info, [record], _, _ = unpack_results(read[0][1][0][1][b"m"], keys, None)
    assert (record[0], record[PAYLOAD]) == (0, 49), record


def test_callbacks_and_webhooks_of_an_unsigned_job_never_run_on_a_signed_worker(
    cluster: Cluster,
) -> None:
    """Callbacks and webhooks are job-hash fields outside the signed data."""
    import http.server
    import threading

    from rq import Callback
    from rq.webhook import Webhook

    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(204)
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/from-worker"
        job = Queue(SIGNED, connection=cluster.connection).enqueue(
            tasks.square, 3,
            on_failure=Callback("tests.evil_tasks.anything"),
            webhooks=[Webhook(url, "failed")],
        )  # fmt: skip
        wait_failed(cluster.connection, SIGNED, job.id)
        # The worker says so after the failure is stored: wait for both lines.
        wait_until(
            lambda: (
                "webhooks refused" in cluster.output(SIGNED)
                and "callback tests.evil_tasks.anything refused" in cluster.output(SIGNED)
            ),
            15,
            "the refusals logged",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []
    assert not cluster.evil_marker(SIGNED).exists()


def test_raw_rq_job_data_naming_code_outside_the_allowlist_is_refused_unread(
    cluster: Cluster, tmp_path: Path
) -> None:
    """RQ's job data is read with the same restricted unpickler on an allowlisted worker."""
    marker = tmp_path / "made-by-unpickling"
    queue = Queue(PLAIN, connection=cluster.connection)
    job = queue.enqueue(tasks.identity, MkdirOnUnpickle(marker))
    assert "TargetNotAllowed" in failure_of(cluster.connection, PLAIN, job.id)
    assert not marker.exists()


# --------------------------------------------------------------------------- stock rq worker


def test_the_paths_of_earlier_releases_are_aliases_of_fanout_rq() -> None:
    """Stock workers started as docs/security.md once said, and jobs enqueued by an
    earlier release, name ``fanout.signing`` and ``fanout.rqworker``: the same objects."""
    import fanout.rq
    import fanout.rqworker
    import fanout.signing
    from fanout.backends.rq.protocol import RUN_BATCH, RUN_BATCH_NAMES

    assert fanout.rqworker.FanoutJob is fanout.rq.FanoutJob
    assert fanout.rqworker.run_batch is fanout.rq.run_batch
    assert fanout.signing.SignedSerializer is fanout.rq.SignedSerializer
    assert RUN_BATCH == "fanout.rq.run_batch"
    assert {RUN_BATCH, "fanout.rqworker.run_batch"} == RUN_BATCH_NAMES


@pytest.mark.slow
def test_stock_rq_worker_with_the_signed_serializer(cluster: Cluster, tmp_path: Path) -> None:
    queue, name = "stock", "stock-signed-1"
    stock = spawn(
        [*RQ_CLI, "worker", "-u", cluster.url, "--name", name,
         "--serializer", "fanout.rq.SignedSerializer",
         "--job-class", "fanout.rq.FanoutJob", queue],
        {"FANOUT_SECRET": SECRET}, cluster.logs, name,
    )  # fmt: skip
    try:
        wait_for_workers(cluster.url, [name])
        results = fanout.run(
            tasks.whoami, range(2), backend="rq", redis_url=cluster.url, queue=queue, secret=SECRET
        )
        assert all(r.ok for r in results), errors_of(results)
        assert {r.worker.name for r in results} == {name}
        assert {r.value["ppid"] for r in results} == {stock.pid}  # forked work-horses

        marker = tmp_path / "ran"
        job = Queue(queue, connection=cluster.connection).enqueue(
            tasks.touch, TouchOnUnpickle(marker)
        )
        assert "SignatureError" in failure_of(cluster.connection, queue, job.id)
        assert not marker.exists()

        wrong = fanout.run(
            tasks.touch, [str(marker)], backend="rq", redis_url=cluster.url, queue=queue,
            secret=OTHER_SECRET,
        )  # fmt: skip
        assert [kind for kind, _ in errors_of(wrong)] == ["SignatureError"]
        assert not marker.exists()
    finally:
        stop_workers([stock])
    assert SECRET not in output_of(cluster.logs, name)


# --------------------------------------------------------------------------- worker warnings


def test_unsigned_worker_warns_in_one_line_and_a_signed_one_does_not(cluster: Cluster) -> None:
    env = {"FANOUT_REDIS_URL": cluster.url}
    unsigned = cli("worker", "--burst", "--queue", "warn-empty", env=env)
    assert unsigned.returncode == 0, unsigned.stderr
    warnings = [line for line in unsigned.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, unsigned.stderr
    assert "not signed" in warnings[0]

    signed = cli("worker", "--burst", "--queue", "warn-empty", env={**env, "FANOUT_SECRET": SECRET})
    assert signed.returncode == 0, signed.stderr
    assert "warning" not in (signed.stdout + signed.stderr).lower(), signed.stderr
    assert SECRET not in signed.stdout + signed.stderr


def test_short_secret_is_refused_in_one_line_without_showing_it(tmp_path: Path) -> None:
    env = {"FANOUT_SECRET": SHORT_SECRET, "FANOUT_REDIS_URL": "redis://127.0.0.1:1/0"}
    for args in (["worker"], ["run", "tests.tasks:square", "1", "--backend", "rq"]):
        result = cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "shorter than 16 bytes" in lines[0], result.stderr
        assert SHORT_SECRET not in result.stdout + result.stderr


# --------------------------------------------------------------------------- no secret shown


@pytest.mark.slow
def test_no_password_or_secret_in_any_output(tmp_path: Path) -> None:
    server = RedisServer("--requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = fanout_worker(url, "pw-1", "pw", logs, {"FANOUT_SECRET": SECRET})
    outputs: dict[str, str] = {}
    try:
        wait_for_workers(url, ["pw-1"])
        env = {"FANOUT_REDIS_URL": url, "FANOUT_SECRET": SECRET}
        rq_run = ["run", "--backend", "rq", "--queue", "pw"]

        def record(label: str, result: subprocess.CompletedProcess[str], code: int) -> None:
            outputs[label] = result.stdout + result.stderr
            assert result.returncode == code, (label, result.stdout, result.stderr)

        record("run", cli(*rq_run, "tests.tasks:square", "1", "2", env=env), 0)
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET + "\n")
        record(
            "run --secret-file --redis-url",
            cli(*rq_run, "tests.tasks:square", "3", "--secret-file", str(secret_file),
                "--redis-url", url, env={}),
            0,
        )  # fmt: skip
        wrong_url = url.replace(PASSWORD, WRONG_PASSWORD)
        wrong_password = cli(
            *rq_run, "tests.tasks:square", "1", env={**env, "FANOUT_REDIS_URL": wrong_url}
        )
        record("wrong password", wrong_password, 3)
        assert "***" in wrong_password.stderr

        status = cli("status", env=env)
        record("status", status, 0)
        assert "pw-1" in status.stdout
        assert ":***@" in status.stdout
        status_json = cli("status", "--json", env=env)
        record("status --json", status_json, 0)
        assert json.loads(status_json.stdout)["redis"].startswith("redis://:***@")

        failing = cli(*rq_run, "tests.tasks:fail", '"x"', "--json", env=env)
        record("failing task", failing, 1)
        [failed] = [json.loads(line) for line in failing.stdout.splitlines()]
        assert failed["error"]["type"] == "ValueError"
        assert "Traceback" in failed["error"]["traceback"]

        wrong_secret = cli(
            *rq_run, "tests.tasks:square", "1", "--json", env={**env, "FANOUT_SECRET": OTHER_SECRET}
        )
        record("wrong secret", wrong_secret, 1)
        [refused] = [json.loads(line) for line in wrong_secret.stdout.splitlines()]
        assert refused["error"]["type"] == "SignatureError"
    finally:
        stop_workers([worker])
        server.stop()
    outputs["worker"] = output_of(logs, "pw-1")
    assert "refused: SignatureError" in outputs["worker"]  # the wrong-secret job, logged
    for label, text in outputs.items():
        for secret in (PASSWORD, WRONG_PASSWORD, SECRET, OTHER_SECRET):
            assert secret not in text, f"{secret!r} shown in the output of {label}:\n{text}"
