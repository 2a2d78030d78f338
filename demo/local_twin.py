"""The docker-compose demo without Docker: the same commands, run as local processes.

    python demo/local_twin.py

It reads ``docker-compose.yml`` (so the two cannot drift apart), starts a redis-server
on a free port with the compose file's password, starts the ``worker`` service's command
once per replica, waits for every worker to register, runs the ``submit`` service's
command and prints its table, then stops everything it started, on Ctrl-C too.

As root on Linux each worker runs in a UTS namespace of its own (``unshare --uts``)
under its own hostname, so the results show distinct hosts as compose's containers
would; elsewhere the workers differ by name and pid. ``--redis-url`` uses a running
Redis instead of starting one (the compose file's host is replaced by that one's; a
``redis+sentinel://`` URL replaces the compose file's URL whole). ``--sentinel`` starts
a master, a replica and three ``redis-sentinel`` processes instead of one Redis, and
gives every process their ``redis+sentinel://`` URL: the compose file's
``FANOUT_REDIS_URL`` takes such a URL just the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fanout.backends.rq.connection import is_sentinel, mask_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
REDIS_HOST = "redis"  # the compose service name that the URLs point at
SENTINEL_SERVICE = "fanout-master"  # --sentinel: the master's name among the Sentinels
REGISTER_SECONDS = 30.0
STOP_SECONDS = 10.0

# Children get SIGTERM if this script is killed outright, so nothing is left behind.
# (Not a preexec_fn: Python code between fork and exec can deadlock on a Ctrl-C.)
_DIE_WITH_US = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []

# ${VAR}, ${VAR:-default} (unset or empty), ${VAR-default} (unset), and $$ for "$".
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)")


@dataclass
class Service:
    """One compose service as a local process would run it."""

    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    replicas: int = 1


@dataclass
class Demo:
    """What the compose file says to run: the workers, the submit, Redis's password."""

    worker: Service
    submit: Service
    redis_password: str | None


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose ``.env`` file (comments and blanks skipped)."""
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand variables as ``docker compose`` does."""

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        value = env.get(name)
        if match.group(2) == ":-" and not value:
            return match.group(3)
        if match.group(2) == "-" and value is None:
            return match.group(3)
        return value or ""

    return _VARIABLE.sub(expand, text)


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def _service(spec: dict[str, Any]) -> Service:
    command = spec.get("command", [])
    if isinstance(command, str):
        command = shlex.split(command)
    environment = spec.get("environment") or {}
    if isinstance(environment, list):  # the KEY=VALUE list form
        environment = dict(item.split("=", 1) for item in environment)
    replicas = int((spec.get("deploy") or {}).get("replicas", 1))
    return Service([str(c) for c in command], {k: str(v) for k, v in environment.items()}, replicas)


def load_demo(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> Demo:
    """The worker and submit services of the compose file, variables expanded
    from ``env`` (default: the environment over the file's ``.env``)."""
    try:
        import yaml  # only the demo needs it
    except ImportError:
        raise SystemExit("demo: PyYAML is missing: pip install -e '.[dev]'") from None

    if env is None:
        env = {**read_dotenv(path.parent / ".env"), **os.environ}
    services = _expand(yaml.safe_load(path.read_text())["services"], env)
    redis_command = [str(c) for c in services["redis"].get("command", [])]
    password = None
    if "--requirepass" in redis_command:
        password = redis_command[redis_command.index("--requirepass") + 1]
    return Demo(_service(services["worker"]), _service(services["submit"]), password)


def rehost(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port`` instead of the compose service, the rest kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def service_environment(
    service: Service, host: str, port: int, url: str | None = None
) -> dict[str, str]:
    """The service's own variables, its Redis URLs pointed at host:port (or replaced by
    ``url``, credentials and all)."""
    env = {}
    for key, value in service.environment.items():
        if value.startswith(("redis://", "rediss://")) and _host_of(value) == REDIS_HOST:
            value = url or rehost(value, host, port)
        env[key] = value
    return env


def local_command(service: Service) -> list[str]:
    """The service's command for a local process: the image's entry point is ``fanout``."""
    return [sys.executable, "-m", "fanout", *service.command]


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_unshare() -> bool:
    """Whether workers can have hostnames of their own here (root, Linux, unshare)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, check=False)
    return probe.returncode == 0


class Twin:
    """The processes of one demo run; :meth:`stop` ends every one of them."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.redis: list[subprocess.Popen[bytes]] = []  # servers and Sentinels, stopped last

    def start(
        self, command: list[str], env: dict[str, str] | None = None, service: bool = False
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            _DIE_WITH_US + command,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if service else None,
            # Ctrl-C in a terminal reaches the whole foreground group: the workers take
            # it as a warm shutdown, but Redis must outlive them, so it gets a session
            # of its own and is stopped last.
            start_new_session=service,
        )
        self.processes.append(process)
        return process

    def start_redis(self, password: str | None, workdir: str, extra: str = "") -> int:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("demo: redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        # The password goes in a config file only we can read, not argv: ps would show it.
        config = Path(workdir) / f"redis-{port}.conf"
        config.write_text((f"requirepass {password}\n" if password else "") + extra)
        config.chmod(0o600)
        command = [server, str(config), "--port", str(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", workdir,
                   "--maxmemory-policy", "noeviction"]  # fmt: skip
        process = self.start(command, service=True)
        self.redis.append(process)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return port
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("demo: redis-server did not start")
            time.sleep(0.02)

    def start_sentinel_set(self, password: str | None, workdir: str) -> str:
        """A master, a replica and three Sentinels (quorum 2) on loopback, as a deployment
        that survives its master's machine would have; their ``redis+sentinel://`` URL."""
        master = self.start_redis(password, workdir)
        auth = f"masterauth {password}\n" if password else ""
        # The replica is found through the Sentinels, as the clients find the master.
        self.start_redis(password, workdir, f"replicaof 127.0.0.1 {master}\n{auth}")
        ports = []
        for number in range(3):
            port = free_port()
            config = Path(workdir) / f"sentinel-{number}.conf"
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {workdir}",
                     f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master} 2",
                     f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 2000",
                     f"sentinel failover-timeout {SENTINEL_SERVICE} 10000"]  # fmt: skip
            if password:
                lines.append(f"sentinel auth-pass {SENTINEL_SERVICE} {password}")
            config.write_text("\n".join(lines) + "\n")
            config.chmod(0o600)
            sentinel = shutil.which("redis-sentinel")
            if sentinel is None:
                raise SystemExit("demo: redis-sentinel is not installed (apt-get install"
                                 " redis-sentinel)")  # fmt: skip
            self.redis.append(self.start([sentinel, str(config)], service=True))
            ports.append(port)
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        userinfo = f":{password}@" if password else ""
        return f"redis+sentinel://{userinfo}{hosts}/{SENTINEL_SERVICE}/0"

    def start_workers(
        self, service: Service, env: dict[str, str], hostnames: bool
    ) -> list[subprocess.Popen[bytes]]:
        workers = []
        for i in range(1, service.replicas + 1):
            command = local_command(service)
            if hostnames:
                hostname = f"worker-{i}"
                command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                           hostname, *command]  # fmt: skip
            workers.append(self.start(command, env))
        return workers

    def stop(self) -> None:
        """SIGTERM (a worker's warm shutdown) to everything still running, then SIGKILL;
        Redis last, so that workers finishing a job can still report it."""
        clients = [p for p in self.processes if p not in self.redis]
        self._stop(clients)
        self._stop(self.redis)

    @staticmethod
    def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
        running = [p for p in processes if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_workers(url: str, processes: list[subprocess.Popen[bytes]]) -> list[str]:
    """Wait until each worker process has registered with RQ; their hosts."""
    from rq import Worker

    from fanout.backends.rq.connection import connect

    pids = [p.pid for p in processes]
    deadline = time.monotonic() + REGISTER_SECONDS
    with contextlib.closing(connect(url)) as connection:
        while True:
            workers = {w.pid: w for w in Worker.all(connection=connection)}
            if all(pid in workers for pid in pids):
                return [str(workers[pid].hostname) for pid in pids]
            if any(p.poll() is not None for p in processes):
                raise SystemExit("demo: a process exited early; see its message above")
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the workers did not register within {REGISTER_SECONDS} s")
            time.sleep(0.1)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does: through the clean-up."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compose", type=Path, default=COMPOSE_FILE, help="the compose file")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument(
        "--no-unshare", action="store_true", help="no hostname of their own for the workers"
    )
    parser.add_argument(
        "--sentinel",
        action="store_true",
        help="a master, a replica and three Sentinels instead of one Redis; every process"
        " gets their redis+sentinel:// URL",
    )
    args = parser.parse_args(argv)
    demo = load_demo(args.compose)
    twin = Twin()
    say = lambda text: print(f"demo: {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        with _terminate_as_interrupt(), tempfile.TemporaryDirectory() as workdir:
            if args.sentinel:
                args.redis_url = twin.start_sentinel_set(demo.redis_password, workdir)
                say(f"redis-server master and replica, 3 Sentinels: {mask_url(args.redis_url)}")
                host, port = "127.0.0.1", 0
            elif args.redis_url and is_sentinel(args.redis_url):
                host, port = "127.0.0.1", 0  # the URL replaces the compose file's
            elif args.redis_url:
                parts = urlsplit(args.redis_url)
                host, port = parts.hostname or "127.0.0.1", parts.port or 6379
            else:
                host, port = "127.0.0.1", twin.start_redis(demo.redis_password, workdir)
                say(f"redis-server on {host}:{port}")
            own = service_environment(demo.worker, host, port, args.redis_url)
            worker_env = {**os.environ, **own}
            hostnames = not args.no_unshare and can_unshare()
            workers = twin.start_workers(demo.worker, worker_env, hostnames)
            url = worker_env.get("FANOUT_REDIS_URL") or f"redis://{host}:{port}/0"
            hosts = wait_for_workers(url, workers)
            up = ", ".join(f"{h}[{w.pid}]" for h, w in zip(hosts, workers, strict=True))
            say(f"{len(workers)} workers up: {up}")
            say("running: fanout " + shlex.join(demo.submit.command))
            submit_env = {
                **os.environ,
                **service_environment(demo.submit, host, port, args.redis_url),
            }
            submit = twin.start(local_command(demo.submit), submit_env)
            return submit.wait()
    except KeyboardInterrupt:
        # A second Ctrl-C while stopping must not cut the stopping short (or print a
        # traceback): everything the demo started is stopped either way.
        _ignore_signals()
        say("interrupted; stopping what the demo started")
        return 130
    finally:
        _ignore_signals()
        twin.stop()


if __name__ == "__main__":
    sys.exit(main())
