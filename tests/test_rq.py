"""The rq backend's own points (issue 3), against real redis-servers and real workers.

Every Redis here is a ``redis-server`` started by the tests on a free port: the session's
(with its two named ``fanout worker`` processes) or one of a test's own, for a password,
an ACL user, TLS, a stock ``rq worker`` or a bare server. Nothing touches port 6379.
Commands run as real subprocesses from the repo root, so ``tests.tasks`` imports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis
from rq import Worker

import fanout
from tests import tasks
from tests.helpers import (
    ROOT,
    RQ_WORKERS,
    SESSION_PIDS,
    RedisServer,
    cli_env,
    free_port,
    run_fanout,
    start_cli,
    start_python,
    start_worker,
    stop_workers,
    wait_until,
)

FANOUT = [sys.executable, "-m", "fanout"]
# `rq` on PATH may be a pyenv shim; the module is what the installed console script runs.
RQ_CLI = [sys.executable, "-m", "rq.cli"]
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --------------------------------------------------------------------------- helpers


def fanout_cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``fanout ARGS`` to completion; returns the result and the seconds it took."""
    started = time.monotonic()
    result = run_fanout(*args, timeout=timeout)
    return result, time.monotonic() - started


def end_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def ctrl_c(proc: subprocess.Popen[str], timeout: float = 10) -> str:
    """SIGINT to ``proc`` (killed if it outlives ``timeout``); returns its stderr."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=timeout)
        return stderr
    finally:
        end_process(proc)


def assert_goes_idle(connection: Redis, worker: str, within: float) -> None:
    """``worker`` has no current job within ``within`` s (and is idle before we go on)."""
    try:
        wait_until(lambda: current_job(connection, worker) is None, within, f"{worker} idle")
    finally:
        wait_until(lambda: current_job(connection, worker) is None, 15, f"{worker} idle")


def json_records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_masked_one_line(
    result: subprocess.CompletedProcess[str], code: int, masked: str, secret: str
) -> None:
    """Exit ``code``, one ``fanout: error:`` line showing ``masked``, ``secret`` nowhere."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert secret not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fanout: error: "), lines[0]
    assert masked in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def keys(connection: Redis, pattern: str) -> set[str]:
    return {k.decode() for k in connection.keys(pattern)}


def run_id_of(job_id: str) -> str:
    match = re.fullmatch(r"fanout-([0-9a-f]+)-\d+", job_id)
    assert match, f"not a fanout job id: {job_id}"
    return match.group(1)


def keys_of_run(connection: Redis, run_id: str) -> set[str]:
    """Every key of one run: its record, stream and markers, and its RQ jobs."""
    return keys(connection, f"fanout:run:{run_id}*") | keys(connection, f"rq:job:fanout-{run_id}-*")


def wait_for_registered(url: str, names: list[str], timeout: float = 20.0) -> None:
    """Wait until RQ lists every one of ``names`` as a worker.

    Not conftest's ``wait_for_workers``: its ``current < wanted`` test is already false
    when other workers (the session's) are registered, so it may return at once.
    """
    connection = Redis.from_url(url)
    try:
        wait_until(
            lambda: set(names) <= {w.name for w in Worker.all(connection=connection)},
            timeout,
            f"workers {names} registered",
        )
    finally:
        connection.close()


def current_job(connection: Redis, worker_name: str) -> str | None:
    for worker in Worker.all(connection=connection):
        if worker.name == worker_name:
            return worker.get_current_job_id()
    return None


def session_worker_pids() -> dict[str, int]:
    """``{name: pid}`` of the session's ``fanout worker`` processes."""
    pids = {}
    for pid in SESSION_PIDS:
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            continue
        if "worker" in cmdline and "--name" in cmdline:
            pids[cmdline[cmdline.index("--name") + 1]] = pid
    return pids


def assert_identity_as_seen_inside(results: list[fanout.TaskResult]) -> None:
    """tasks.whoami results: what the task saw of its process is what was reported."""
    for r in results:
        assert r.ok, r.error
        w = r.worker
        assert r.value == {"name": w.name, "pid": w.pid, "ppid": w.ppid, "host": w.host}
        assert w.backend == "rq"


@pytest.fixture
def redis_url(redis_server: RedisServer, rq_workers: list[str]) -> str:
    """The session's Redis, served on queue ``fanout`` by the two session workers."""
    return redis_server.url


@pytest.fixture
def connection(redis_server: RedisServer) -> Iterator[Redis]:
    conn = Redis.from_url(redis_server.url)
    yield conn
    conn.close()


@pytest.fixture
def own_redis() -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers of this test's own (``own_redis(*args)``); stopped at teardown."""
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        servers.append(RedisServer(*args))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def own_workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``fanout worker`` processes of this test's own; stopped at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(url: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        processes.append(start_worker(url, name, *args))
        return processes[-1]

    yield start
    stop_workers(processes)


# --------------------------------------------------------------------------- spreading, identity


@pytest.mark.slow
def test_slow_tasks_spread_over_both_named_session_workers(redis_url: str) -> None:
    results = fanout.run(tasks.sleep_for, [0.3] * 4, backend="rq", redis_url=redis_url)
    assert [r.value for r in results] == [0.3] * 4
    assert all(r.ok for r in results)
    assert {r.worker.name for r in results} == set(RQ_WORKERS)
    assert {r.worker.backend for r in results} == {"rq"}


def test_identity_inside_a_fanout_worker_task_is_the_reported_one(redis_url: str) -> None:
    results = fanout.run(tasks.whoami, range(6), backend="rq", redis_url=redis_url)
    assert_identity_as_seen_inside(results)
    pids = session_worker_pids()
    for r in results:
        # The task runs in the worker's task process, whose parent is the RQ worker.
        assert r.worker.ppid == pids[r.worker.name]


# --------------------------------------------------------------------------- stock rq worker


@pytest.mark.slow
@pytest.mark.parametrize(
    "worker_class", [None, "rq.worker.SimpleWorker"], ids=["forking", "SimpleWorker"]
)
def test_stock_rq_worker_runs_fanout_jobs(
    own_redis: Callable[..., RedisServer], worker_class: str | None
) -> None:
    server = own_redis()
    extra = ["--worker-class", worker_class] if worker_class else []
    # `rq worker` puts its cwd on sys.path (--path defaults to "."): tests.tasks imports.
    stock = subprocess.Popen(
        [*RQ_CLI, "worker", "-u", server.url, "--name", "stock-1", *extra, "fanout"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    connection = Redis.from_url(server.url)
    try:
        wait_for_registered(server.url, ["stock-1"])

        results = fanout.run(tasks.whoami, range(3), backend="rq", redis_url=server.url)
        assert_identity_as_seen_inside(results)
        assert {r.worker.name for r in results} == {"stock-1"}
        if worker_class is None:
            # A forked work-horse per job, child of the RQ worker process.
            assert {r.worker.ppid for r in results} == {stock.pid}
        else:
            assert {r.worker.pid for r in results} == {stock.pid}

        chatty = fanout.run(tasks.chatty, [1, 2], backend="rq", redis_url=server.url)
        assert [r.value for r in chatty] == [1, 2]
        assert [r.output for r in chatty] == ["out 1\nerr 1\n", "out 2\nerr 2\n"]

        squares = fanout.run(tasks.square, range(100), backend="rq", redis_url=server.url)
        assert [r.value for r in squares] == [x * x for x in range(100)]

        wait_until(
            lambda: not keys(connection, "rq:job:fanout-*") | keys(connection, "fanout:run:*"),
            5,
            "the finished runs' jobs and result lists removed",
        )
    finally:
        connection.close()
        stop_workers([stock])


# --------------------------------------------------------------------------- rq info, Ctrl-C


@pytest.mark.slow
def test_rq_info_lists_queued_jobs_and_ctrl_c_removes_them(
    redis_url: str, connection: Redis
) -> None:
    proc = start_cli(
        "run", "tests.tasks:square", "--range", "50", "--backend", "rq",
        "--queue", "lonely", "--redis-url", redis_url,
    )  # fmt: skip
    try:
        wait_until(lambda: connection.llen("rq:queue:lonely") > 0, 10, "jobs queued on lonely")
        queued = [j.decode() for j in connection.lrange("rq:queue:lonely", 0, -1)]
        run_id = run_id_of(queued[0])
        assert keys_of_run(connection, run_id)

        info = subprocess.run(
            [*RQ_CLI, "info", "-u", redis_url, "--only-queues"],
            cwd=ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert info.returncode == 0, info.stderr
        shown = ANSI_ESCAPE.sub("", info.stdout)
        match = re.search(r"^lonely\s+\|█*\s+(\d+),", shown, re.MULTILINE)
        assert match, shown
        assert int(match.group(1)) > 0

        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - started < 10
    finally:
        end_process(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert connection.llen("rq:queue:lonely") == 0
    # The cancelled run stays collectable, every key of it expiring: each task it had
    # enqueued has its one result (Cancelled: no worker serves "lonely").
    assert f"fanout results {run_id}" in stderr
    assert all(connection.ttl(key) > 0 for key in keys_of_run(connection, run_id))
    run = fanout.attach(run_id, redis_url=redis_url, queue="lonely")
    total = run.status()["total"]
    collected = sorted((r.index, r.error.type if r.error else None) for r in run.results())
    assert total >= 1
    assert collected == [(i, "Cancelled") for i in range(total)]
    assert keys_of_run(connection, run_id) == set()  # a complete collection removes them


# --------------------------------------------------------------------------- cleaning up


def test_finished_run_leaves_no_result_list_or_job_in_redis(
    redis_url: str, connection: Redis
) -> None:
    before = keys(connection, "fanout:run:*") | keys(connection, "rq:job:fanout-*")
    results = fanout.run(tasks.square, range(200), backend="rq", redis_url=redis_url)
    assert [r.value for r in results] == [x * x for x in range(200)]

    def new_keys() -> set[str]:
        return (keys(connection, "fanout:run:*") | keys(connection, "rq:job:fanout-*")) - before

    # RQ deletes a job (result_ttl=0) just after its results were pushed: allow it a moment.
    wait_until(lambda: not new_keys(), 5, "no fanout:run:* or rq:job:fanout-* keys of the run")


# --------------------------------------------------------------------------- --workers N


@pytest.mark.slow
def test_cli_workers_3_on_a_bare_redis_server_starts_and_stops_its_workers(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis()
    proc = start_cli(
        "run", "tests.tasks:sleep_for", *["0.5"] * 6, "--backend", "rq", "--workers", "3",
        "--json", "--redis-url", server.url,
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    try:
        me = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                seen.update((p.pid, p) for p in me.children(recursive=True))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        end_process(proc)
    assert proc.returncode == 0, stderr
    records = json_records(stdout)
    assert [r["value"] for r in records] == [0.5] * 6
    names = {r["worker"]["name"] for r in records}
    assert len(names) == 3, names
    assert all(re.fullmatch(rf"fanout-.+-{proc.pid}-[123]", name) for name in names), names
    assert {r["worker"]["backend"] for r in records} == {"rq"}

    assert len(seen) >= 3, "the three workers were never seen running"
    _, alive = psutil.wait_procs(list(seen.values()), timeout=5)
    assert not alive, f"left behind: {alive}"
    connection = Redis.from_url(server.url)
    try:
        wait_until(lambda: not Worker.all(connection=connection), 5, "workers deregistered")
    finally:
        connection.close()


@pytest.fixture(scope="module")
def interrupted_workers_run() -> dict[str, Any]:
    """Ctrl-C on ``fanout run --backend rq --workers 2`` while both workers run a long
    task and a third job is queued, on a bare redis-server; what was seen afterwards.

    Shared by the tests below: the scenario takes seconds. Every process it starts is
    ended before it returns.
    """
    server = RedisServer()
    connection = Redis.from_url(server.url)
    proc = start_cli(
        "run", "tests.tasks:sleep_for", "20", "20", "20", "--backend", "rq", "--workers", "2",
        "--redis-url", server.url,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                sum(bool(w.get_current_job_id()) for w in Worker.all(connection=connection)) == 2
            ),
            20,
            "both local workers running a task",
        )
        queued_before = connection.llen("rq:queue:fanout")
        workers = psutil.Process(proc.pid).children(recursive=True)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
        seconds = time.monotonic() - started
        _, alive = psutil.wait_procs(workers, timeout=5)
        registered = [w.name for w in Worker.all(connection=connection)]
        return {
            "code": proc.returncode,
            "seconds": seconds,
            "stderr": stderr,
            "workers": workers,
            "alive": alive,
            "queued_before": queued_before,
            "queued_after": connection.llen("rq:queue:fanout"),
            "registered": registered,
        }
    finally:
        end_process(proc)
        connection.close()
        server.stop()


@pytest.mark.slow
def test_ctrl_c_with_workers_n_exits_130_and_leaves_no_worker_process(
    interrupted_workers_run: dict[str, Any],
) -> None:
    seen = interrupted_workers_run
    assert seen["code"] == 130, seen["stderr"]
    assert seen["seconds"] < 10
    assert "fanout: interrupted" in seen["stderr"]
    assert len(seen["workers"]) >= 2
    assert not seen["alive"], f"left behind: {seen['alive']}"
    assert seen["queued_before"] == 1
    assert seen["queued_after"] == 0


@pytest.mark.slow
def test_ctrl_c_with_workers_n_leaves_no_registered_worker(
    interrupted_workers_run: dict[str, Any],
) -> None:
    # A worker killed before RQ records its death would be listed (and counted as
    # serving the queue) until its key expires.
    assert interrupted_workers_run["registered"] == []


@pytest.mark.slow
def test_ctrl_c_with_workers_n_prints_no_traceback(
    interrupted_workers_run: dict[str, Any],
) -> None:
    # The local workers' stderr is the run's: stopping their jobs must not spill RQ's
    # exception log into it.
    assert "Traceback" not in interrupted_workers_run["stderr"]


# --------------------------------------------------------------------------- errors: targets


def make_closure(factor: int) -> Callable[[int], int]:
    def times(x: int) -> int:
        return x * factor

    return times


@pytest.mark.parametrize(
    ("make_target", "reason"),
    [
        (lambda: lambda x: x, "lambda"),
        (lambda: make_closure(2), "closure"),
    ],
    ids=["lambda", "closure"],
)
def test_unimportable_target_is_refused_before_anything_is_enqueued(
    redis_url: str, connection: Redis, make_target: Callable[[], Any], reason: str
) -> None:
    queue = f"refused-{reason}"
    with pytest.raises(fanout.TargetError, match=reason):
        fanout.run(make_target(), [1, 2], backend="rq", redis_url=redis_url, queue=queue)
    assert connection.llen(f"rq:queue:{queue}") == 0


def test_main_module_function_is_refused_before_anything_is_enqueued(
    redis_url: str, connection: Redis, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import fanout

            def double(x):
                return 2 * x

            try:
                fanout.run(double, [1], backend="rq", redis_url=sys.argv[1], queue="refused-main")
            except fanout.TargetError as exc:
                print(exc)
                sys.exit(42)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script), redis_url],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 42, (result.stdout, result.stderr)
    assert "__main__" in result.stdout
    assert connection.llen("rq:queue:refused-main") == 0


def test_cli_file_path_target_with_rq_exits_2_before_enqueueing(
    redis_url: str, connection: Redis, tmp_path: Path
) -> None:
    target = tmp_path / "file_target.py"
    target.write_text("def double(x):\n    return 2 * x\n")
    result, _ = fanout_cli(
        "run", f"{target}:double", "1", "--backend", "rq", "--queue", "refused-file",
        "--redis-url", redis_url,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fanout: error: "), result.stderr
    assert "file path" in lines[0]
    assert connection.llen("rq:queue:refused-file") == 0


# --------------------------------------------------------------------------- errors: Redis


@pytest.mark.parametrize(
    "command",
    [
        ["run", "tests.tasks:square", "1", "--backend", "rq"],
        ["status"],
        ["worker", "--name", "never"],
    ],
    ids=["run", "status", "worker"],
)
def test_unreachable_redis_exits_3_in_one_masked_line(command: list[str]) -> None:
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    result, seconds = fanout_cli(*command, "--redis-url", url, timeout=30)
    assert seconds < 10
    assert_masked_one_line(result, 3, f"redis://:***@127.0.0.1:{port}", "s3cret")


@pytest.mark.slow
def test_wrong_password_exits_3_masked_and_the_right_one_works(
    own_redis: Callable[..., RedisServer],
    own_workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    server = own_redis("--requirepass", "rightpass")
    wrong = f"redis://:wrongpass@127.0.0.1:{server.port}/0"
    result, seconds = fanout_cli(
        "run", "tests.tasks:square", "3", "--backend", "rq", "--redis-url", wrong
    )
    assert seconds < 10
    assert_masked_one_line(result, 3, f"redis://:***@127.0.0.1:{server.port}", "wrongpass")

    no_password, _ = fanout_cli("run", "tests.tasks:square", "3", "--backend", "rq",
                                "--redis-url", server.url)  # fmt: skip
    assert no_password.returncode == 3, no_password.stderr

    right = f"redis://:rightpass@127.0.0.1:{server.port}/0"
    own_workers(right, "password-worker", "--queue", "secured")
    wait_for_registered(right, ["password-worker"])
    result, _ = fanout_cli(
        "run", "tests.tasks:square", "3", "--backend", "rq", "--queue", "secured",
        "--redis-url", right, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [record] = json_records(result.stdout)
    assert record["value"] == 9
    assert record["worker"]["name"] == "password-worker"
    assert "rightpass" not in result.stdout + result.stderr


@pytest.mark.slow
def test_acl_user_url_works_and_a_wrong_user_password_exits_3_masked(
    own_redis: Callable[..., RedisServer],
    own_workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    server = own_redis("--requirepass", "rightpass")
    admin = Redis.from_url(f"redis://:rightpass@127.0.0.1:{server.port}/0")
    try:
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "&*", "+@all")
    finally:
        admin.close()

    wrong = f"redis://alice:wrongpw@127.0.0.1:{server.port}/0"
    result, seconds = fanout_cli(
        "run", "tests.tasks:square", "3", "--backend", "rq", "--redis-url", wrong
    )
    assert seconds < 10
    assert_masked_one_line(result, 3, f"redis://alice:***@127.0.0.1:{server.port}", "wrongpw")

    alice = f"redis://alice:alicepw@127.0.0.1:{server.port}/0"
    own_workers(alice, "alice-worker", "--queue", "acl")
    wait_for_registered(alice, ["alice-worker"])
    results = fanout.run(tasks.whoami, range(2), backend="rq", redis_url=alice, queue="acl")
    assert_identity_as_seen_inside(results)
    assert {r.worker.name for r in results} == {"alice-worker"}


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make a TLS certificate"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    files = {name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.crt")}
    csr, ext = directory / "server.csr", directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    commands = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["ca.key"],
         "-out", files["ca.crt"], "-days", "2", "-subj", "/CN=fanout-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["server.key"],
         "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", files["ca.crt"], "-CAkey", files["ca.key"],
         "-CAcreateserial", "-out", files["server.crt"], "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for args in commands:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    return files


@pytest.mark.slow
def test_rediss_tls_url_works(
    own_redis: Callable[..., RedisServer],
    own_workers: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    files = make_tls_files(tmp_path)
    tls_port = free_port()
    # The plain port stays open only for RedisServer's readiness check; runs use TLS.
    own_redis(
        "--tls-port", str(tls_port), "--tls-cert-file", str(files["server.crt"]),
        "--tls-key-file", str(files["server.key"]), "--tls-ca-cert-file", str(files["ca.crt"]),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    unverified = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none"
    verified = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={files['ca.crt']}"
    own_workers(unverified, "tls-worker", "--queue", "tls")
    wait_for_registered(unverified, ["tls-worker"])
    results = fanout.run(tasks.whoami, range(3), backend="rq", redis_url=verified, queue="tls")
    assert_identity_as_seen_inside(results)
    assert {r.worker.name for r in results} == {"tls-worker"}

    # Without the CA the server's certificate is refused: exit 3, one line.
    result, _ = fanout_cli(
        "run", "tests.tasks:square", "1", "--backend", "rq", "--queue", "tls",
        "--redis-url", f"rediss://127.0.0.1:{tls_port}/0",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_password_in_url_query_is_never_printed(own_redis: Callable[..., RedisServer]) -> None:
    server = own_redis("--requirepass", "rightpass")
    url = f"redis://127.0.0.1:{server.port}/0?password=rightpass"
    status, _ = fanout_cli("status", "--redis-url", url, "--json")
    assert status.returncode == 0, status.stderr  # the query password authenticates
    assert "rightpass" not in status.stdout + status.stderr
    assert "password=***" in json.loads(status.stdout)["redis"]
    worker, _ = fanout_cli("worker", "--burst", "--queue", "query-password", "--redis-url", url)
    assert worker.returncode == 0, worker.stderr
    assert "rightpass" not in worker.stdout + worker.stderr

    unreachable = f"redis://127.0.0.1:{free_port()}/0?password=s3cret"
    result, _ = fanout_cli("run", "tests.tasks:square", "1", "--backend", "rq",
                           "--redis-url", unreachable)  # fmt: skip
    assert result.returncode == 3
    assert "s3cret" not in result.stdout + result.stderr


def test_malformed_redis_url_is_a_bad_redis_url() -> None:
    with pytest.raises(fanout.BadRedisURL, match="bad Redis URL") as caught:
        fanout.run(
            tasks.square, [1], backend="rq", redis_url="redis://:s3cret@127.0.0.1:notaport/0"
        )
    assert "s3cret" not in str(caught.value)


# --------------------------------------------------------------------------- fanout status


def test_status_json_lists_the_queue_and_both_session_workers(redis_url: str) -> None:
    fanout.run(tasks.square, [1], backend="rq", redis_url=redis_url)  # the queue is known
    result, _ = fanout_cli("status", "--redis-url", redis_url, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)  # exactly one JSON document
    assert status["redis"] == redis_url
    queues = {q["name"]: q["length"] for q in status["queues"]}
    assert "fanout" in queues
    assert isinstance(queues["fanout"], int)
    assert queues["fanout"] >= 0
    workers = {w["name"]: w for w in status["workers"]}
    pids = session_worker_pids()
    for name in RQ_WORKERS:
        worker = workers[name]
        assert {"name", "pid", "host", "state", "current_job"} <= worker.keys()
        assert worker["pid"] == pids[name]
        assert worker["host"] == socket.gethostname()
        assert worker["state"] in {"idle", "busy"}
        assert "fanout" in worker["queues"]

    human, _ = fanout_cli("status", "--redis-url", redis_url)
    assert human.returncode == 0, human.stderr
    for name in RQ_WORKERS:
        assert re.search(rf"^\s*{name}\s+{pids[name]}\s", human.stdout, re.MULTILINE)
    assert re.search(r"^\s*fanout\s+\d+\s*$", human.stdout, re.MULTILINE), human.stdout


@pytest.mark.slow
def test_status_json_shows_the_current_job_of_a_busy_worker(
    redis_server: RedisServer, own_workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    url = redis_server.url
    own_workers(url, "status-busy", "--queue", "status-busy")
    wait_for_registered(url, ["status-busy"])
    results: list[fanout.TaskResult] = []
    runner = threading.Thread(
        target=lambda: results.extend(
            fanout.run(tasks.sleep_for, [1.5], backend="rq", redis_url=url, queue="status-busy")
        )
    )
    runner.start()
    try:

        def busy_entry() -> dict[str, Any] | None:
            result, _ = fanout_cli("status", "--redis-url", url, "--queue", "status-busy", "--json")
            assert result.returncode == 0, result.stderr
            status = json.loads(result.stdout)
            assert status["queues"][0]["name"] == "status-busy"
            [worker] = [w for w in status["workers"] if w["name"] == "status-busy"]
            return worker if worker["current_job"] else None

        worker = wait_until(busy_entry, 10, "the worker shows its current job")
        assert worker["state"] == "busy"
        assert worker["current_job"].startswith("fanout-")
    finally:
        runner.join(30)
    assert [r.value for r in results] == [1.5]


# --------------------------------------------------------------------------- worker faults


@pytest.mark.slow
def test_task_killing_its_process_is_worker_lost_and_the_worker_serves_on(
    redis_url: str,
) -> None:
    pids = session_worker_pids()
    results = fanout.run(tasks.square_or_die, [1, 2, -1, 3, 4], backend="rq", redis_url=redis_url)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    lost = results[2]
    assert not lost.ok
    assert lost.error is not None
    assert lost.error.type == "WorkerLost"
    assert "task 2" in lost.error.message
    assert [r.value for r in results if r.index != 2] == [1, 4, 9, 16]
    assert all(r.ok for r in results if r.index != 2)

    after = fanout.run(tasks.sleep_for, [0.3] * 4, backend="rq", redis_url=redis_url)
    assert all(r.ok for r in after)
    assert {r.worker.name for r in after} == set(RQ_WORKERS)
    # Still the same RQ worker processes: only their task process was replaced.
    assert session_worker_pids() == pids
    assert all(r.worker.ppid == pids[r.worker.name] for r in after)


@pytest.mark.slow
def test_sigterm_is_a_warm_shutdown_that_finishes_the_running_task(
    redis_server: RedisServer,
    own_workers: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    url = redis_server.url
    worker = own_workers(url, "warm-1", "--queue", "warm")
    wait_for_registered(url, ["warm-1"])
    marker = tmp_path / "started"
    results: list[fanout.TaskResult] = []

    def run() -> None:
        items = [(str(marker), 1.0)]
        options = {"backend": "rq", "redis_url": url, "queue": "warm"}
        results.extend(fanout.run(tasks.touch_then_sleep, items, star=True, **options))

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_until(marker.exists, 10, "the task started")
        children = psutil.Process(worker.pid).children(recursive=True)
        assert children, "the worker runs its task in no task process"
        signalled = time.time()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(5) == 0
    finally:
        runner.join(30)
    assert len(results) == 1, results
    assert results[0].ok, results
    assert results[0].value == 1.0
    assert results[0].worker.name == "warm-1"
    assert results[0].started_at < signalled < results[0].finished_at
    _, alive = psutil.wait_procs(children, timeout=3)
    assert not alive, f"the worker left {alive} behind"


def test_worker_processes_n_hands_its_options_to_each_worker_and_stops_them_all(
    redis_server: RedisServer, own_workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    url = redis_server.url
    parent = own_workers(url, "multi", "--queue", "multi", "--processes", "2", "--quiet",
                         "--redis-wait", "7")  # fmt: skip
    wait_for_registered(url, ["multi-1", "multi-2"])
    children = psutil.Process(parent.pid).children()
    assert len(children) == 2
    for child in children:  # --quiet and --redis-wait were once dropped here
        command = child.cmdline()
        assert "--quiet" in command, command
        assert command[command.index("--redis-wait") + 1] == "7.0", command
    results = fanout.run(tasks.square, range(4), backend="rq", redis_url=url, queue="multi")
    assert [r.value for r in results] == [0, 1, 4, 9]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(10) == 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left behind: {alive}"


GIVE_UP_SCRIPT = """
import sys, time
import fanout
from tests import tasks

started = time.monotonic()
try:
    fanout.run(tasks.square, [1], backend="rq", redis_url=sys.argv[1], queue=sys.argv[2],
               give_up_after=2.0)
except fanout.BackendUnavailable as exc:
    print(f"gave up after {time.monotonic() - started:.1f} s: {exc}")
    sys.exit(3)
"""


@pytest.mark.slow
def test_run_gives_up_when_the_only_worker_of_the_queue_died(
    redis_server: RedisServer, connection: Redis
) -> None:
    url, queue = redis_server.url, "dead-worker"
    worker = start_worker(url, "doomed-1", "--queue", queue)
    try:
        wait_for_registered(url, ["doomed-1"])
    finally:
        worker.kill()  # dies as on a lost machine: no warm shutdown, no death recorded
        worker.wait()
    # What the expiry of its key (worker_ttl + 60 s) does later, done now.
    connection.delete("rq:worker:doomed-1")
    assert "doomed-1" not in {w.name for w in Worker.all(connection=connection)}

    proc = start_python("-c", GIVE_UP_SCRIPT, url, queue)
    try:
        stdout, stderr = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        end_process(proc)
        pytest.fail("with give_up_after=2 the run still waited after 8 s")
    finally:
        end_process(proc)
        connection.delete(f"rq:queue:{queue}")
    assert proc.returncode == 3, (stdout, stderr)
    assert "no worker has served" in stdout


# --------------------------------------------------------------------------- concurrent runs


@pytest.mark.slow
def test_two_runs_on_one_queue_at_once_get_only_their_own_results(redis_url: str) -> None:
    count = 300
    got: dict[str, list[fanout.TaskResult]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(tag: str) -> None:
        try:
            with fanout.Fanout("rq", redis_url=redis_url) as fo:
                barrier.wait(10)
                got[tag] = list(fo.map(tasks.identity, [f"{tag}-{i}" for i in range(count)]))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for tag in ("a", "b"):
        results = got[tag]
        assert [r.index for r in results] == list(range(count))
        assert [r.value for r in results] == [f"{tag}-{i}" for i in range(count)]
        assert all(r.ok for r in results)


# --------------------------------------------------------------------------- Ctrl-C, running job


@pytest.mark.slow
def test_ctrl_c_stops_the_job_running_on_a_fanout_worker_and_leaves_no_run_keys(
    redis_server: RedisServer,
    own_workers: Callable[..., subprocess.Popen[bytes]],
    connection: Redis,
    tmp_path: Path,
) -> None:
    url, queue = redis_server.url, "interrupted-running"
    own_workers(url, "stop-1", "--queue", queue)
    wait_for_registered(url, ["stop-1"])
    marker = tmp_path / "started"
    proc = start_cli(
        "run", "tests.tasks:touch_then_sleep", json.dumps([str(marker), 8]),
        json.dumps([str(tmp_path / "never"), 8]), "--star", "--backend", "rq",
        "--queue", queue, "--redis-url", url,
    )  # fmt: skip
    try:
        wait_until(marker.exists, 10, "the first task started")
        job_id = current_job(connection, "stop-1")
        assert job_id is not None
        assert connection.llen(f"rq:queue:{queue}") == 1  # the second task's job
    finally:
        stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    # end() sends RQ's stop-job: the 8 s task must not keep the worker busy.
    assert_goes_idle(connection, "stop-1", within=2)
    run_id = run_id_of(job_id)
    assert connection.llen(f"rq:queue:{queue}") == 0
    assert not (tmp_path / "never").exists()
    # The run stays collectable until its result_ttl, every key of it expiring; the
    # stopped job, if RQ keeps its record, is "stopped", not a failure of its own.
    assert all(connection.ttl(key) > 0 for key in keys(connection, f"fanout:run:{run_id}*"))
    for key in keys(connection, f"rq:job:fanout-{run_id}-*"):
        assert connection.hget(key, "status") == b"stopped", key
    collected = fanout.attach(run_id, redis_url=url, queue=queue).results()
    assert sorted((r.index, r.error.type if r.error else None) for r in collected) == [
        (0, "Cancelled"),
        (1, "Cancelled"),
    ]
    # The worker serves on.
    after = fanout.run(tasks.square, [3], backend="rq", redis_url=url, queue=queue)
    assert [(r.value, r.worker.name) for r in after] == [(9, "stop-1")]


INTERRUPTED_SCRIPT = """
import sys
import fanout
from tests import tasks

try:
    fanout.run(tasks.sleep_for, [tasks.SlowToUnpickle(1.0, 5.0)], backend="rq",
               redis_url=sys.argv[1], queue=sys.argv[2])
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_job_whose_task_has_not_reached_the_task_process(
    redis_server: RedisServer,
    own_workers: Callable[..., subprocess.Popen[bytes]],
    connection: Redis,
) -> None:
    url, queue = redis_server.url, "interrupted-early"
    own_workers(url, "stop-early", "--queue", queue)
    wait_for_registered(url, ["stop-early"])
    proc = start_python("-c", INTERRUPTED_SCRIPT, url, queue)
    try:
        # The worker has the job, and spends 1 s unpickling its input before the task.
        wait_until(lambda: current_job(connection, "stop-early"), 10, "stop-early has the job")
    finally:
        stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert_goes_idle(connection, "stop-early", within=3)
