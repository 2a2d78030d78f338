"""The multi-worker demo: docker-compose.yml, the Dockerfile and the local twin in step.

No Docker engine runs here, so the compose file is checked by parsing it and by running
the commands it holds as local processes against a redis-server of the test's own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest
import yaml

from tests.helpers import ROOT, RedisServer, cli_env, start_python, stop_workers

COMPOSE = ROOT / "docker-compose.yml"


def _load_twin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_twin", ROOT / "demo" / "local_twin.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


twin = _load_twin()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_redis_three_workers_and_a_submit(compose: dict) -> None:
    services = compose["services"]
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis"  # the official image
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    assert "noeviction" in redis["command"]

    worker = services["worker"]
    assert worker["command"][0] == "worker"
    assert worker["deploy"]["replicas"] == 3
    assert worker["restart"] == "on-failure"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"

    submit = services["submit"]
    command = submit["command"]
    assert command[0] == "run"
    assert command[command.index("--backend") + 1] == "rq"
    assert submit["depends_on"]["redis"]["condition"] == "service_healthy"
    for service in (worker, submit):
        assert service["build"] == "."
        url = service["environment"]["FANOUT_REDIS_URL"]
        assert twin._host_of(twin.interpolate(url, {})) == "redis"


def test_no_password_is_committed_beyond_the_local_default() -> None:
    demo = twin.load_demo(COMPOSE, env={})
    assert demo.redis_password == "local-demo-only"
    # Every mention of the password is the overridable ${REDIS_PASSWORD:-...} default.
    text = COMPOSE.read_text()
    assert text.count("local-demo-only") == text.count(
        "${REDIS_PASSWORD:-local-demo-only}"
    ) + text.count("${FANOUT_SECRET:-local-demo-only-signing-secret}")
    assert demo.worker.environment["FANOUT_SECRET"] == "local-demo-only-signing-secret"
    assert demo.submit.environment["FANOUT_SECRET"] == "local-demo-only-signing-secret"
    overridden = twin.load_demo(COMPOSE, env={"REDIS_PASSWORD": "from-dotenv"})
    assert overridden.redis_password == "from-dotenv"
    assert "from-dotenv" in overridden.worker.environment["FANOUT_REDIS_URL"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_dotenv_is_read_under_the_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# comment\nREDIS_PASSWORD='from-file'\nOTHER=1\n")
    assert twin.read_dotenv(tmp_path / ".env") == {"REDIS_PASSWORD": "from-file", "OTHER": "1"}
    assert twin.interpolate("a${X:-d}b${Y-e}$$c", {"X": "", "Y": ""}) == "adb$c"


def test_dockerfile_is_slim_non_root_with_fanout_as_entry_point() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert re.fullmatch(r"FROM python:3\.\d+-slim", instructions[0])
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["fanout"]' in instructions
    assert any(line.startswith("RUN pip install .") for line in instructions)


@pytest.fixture
def demo_redis() -> Iterator[tuple[RedisServer, object]]:
    """A redis-server of the test's own with the compose file's password."""
    demo = twin.load_demo(COMPOSE, env={})
    server = RedisServer("--requirepass", demo.redis_password)
    yield server, demo
    server.stop()


@pytest.mark.slow
def test_compose_commands_run_as_local_processes_on_every_worker(demo_redis) -> None:
    server, demo = demo_redis
    worker_env = cli_env(twin.service_environment(demo.worker, "127.0.0.1", server.port))
    url = worker_env["FANOUT_REDIS_URL"]
    assert url.startswith("redis://:local-demo-only@127.0.0.1:")
    workers = [
        subprocess.Popen(twin.local_command(demo.worker), cwd=ROOT, env=worker_env)
        for _ in range(demo.worker.replicas)
    ]
    try:
        registered = twin.wait_for_workers(url, workers)
        assert len(registered) == 3
        submit_env = twin.service_environment(demo.submit, "127.0.0.1", server.port)
        submit = start_python(*twin.local_command(demo.submit)[1:], "--json", env=submit_env)
        out, err = submit.communicate(timeout=60)
        assert submit.returncode == 0, err
    finally:
        stop_workers(workers)
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in results] == list(range(12))
    assert all(r["ok"] and r["worker"]["backend"] == "rq" for r in results)
    # Every worker ran tasks: the task processes' parents are the three worker pids.
    assert {r["worker"]["ppid"] for r in results} == {w.pid for w in workers}
    assert "local-demo-only" not in out + err


def _start_twin(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_python(str(ROOT / "demo" / "local_twin.py"), *args, env=env, new_session=True)


def _with_mark(process: psutil.Process, mark: str) -> bool:
    """Whether ``process`` has ``mark`` in its environment (what this test's demo
    started, not another test suite's on the same machine)."""
    with contextlib.suppress(psutil.Error):
        return process.environ().get("FANOUT_TEST_DEMO") == mark
    return False


@pytest.mark.slow
def test_local_twin_runs_the_demo_and_stops_everything() -> None:
    process = _start_twin()
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    assert "12 tasks: 12 ok, 0 failed" in out
    assert "on 3 rq workers" in out
    if twin.can_unshare():  # each worker under a hostname of its own
        assert "on 3 hosts" in out
        assert {f"worker-{i}" for i in (1, 2, 3)} <= set(out.split())
    assert "local-demo-only" not in out + err
    assert "warning" not in err  # the demo signs its jobs and Redis has a password


@pytest.mark.slow
def test_local_twin_runs_the_demo_on_sentinel_and_stops_everything() -> None:
    process = _start_twin("--sentinel", "--no-unshare")
    started: list[psutil.Process] = []
    said = []
    assert process.stderr is not None
    for line in process.stderr:
        said.append(line)
        if "workers up" in line:
            started = psutil.Process(process.pid).children(recursive=True)
            break
    out, rest = process.communicate(timeout=90)
    err = "".join(said) + rest
    assert process.returncode == 0, err
    assert "master and replica, 3 Sentinels: redis+sentinel://:***@127.0.0.1:" in err
    assert "12 tasks: 12 ok, 0 failed" in out
    assert "local-demo-only" not in out + err
    assert "Error" not in err  # the workers' warm shutdown through the Sentinels is clean
    # Redis, its replica, three Sentinels and three workers, all stopped.
    assert len(started) >= 8
    _gone, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"the demo left {alive} running"


@pytest.mark.slow
def test_local_twin_stops_everything_on_ctrl_c() -> None:
    mark = uuid.uuid4().hex
    process = _start_twin(env={"FANOUT_TEST_DEMO": mark})
    assert process.stderr is not None
    for line in process.stderr:  # an event, not a sleep: the workers have registered
        if "workers up" in line:
            break
    else:
        pytest.fail(f"the demo never started its workers: {process.communicate()}")
    started = psutil.Process(process.pid).children(recursive=True)
    assert len(started) >= 4  # redis-server and three workers (and their task processes)
    # As a terminal's Ctrl-C does: SIGINT to the whole foreground process group; and a
    # second one, impatient, while the demo is stopping what it started.
    os.killpg(process.pid, signal.SIGINT)
    said = []
    for line in process.stderr:
        said.append(line)
        if "stopping what the demo started" in line:
            break
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGINT)
    _out, rest = process.communicate(timeout=30)
    err = "".join(said) + rest
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    _gone, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"the demo left {alive} running"
    # Nor a submit started after the snapshot above.
    submits = [
        p for p in psutil.process_iter(["cmdline"])
        if "fanout.examples:hello" in (p.info["cmdline"] or []) and _with_mark(p, mark)
    ]  # fmt: skip
    assert not submits, submits
