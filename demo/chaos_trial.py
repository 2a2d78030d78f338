"""Chaos trial: five fault scenarios against a real redis-server and real fanout workers.

    .venv/bin/python demo/chaos_trial.py        # as root: scenario 1 uses `ip netns`

Each scenario has its own redis-server on a free port and its own workers, injects one
fault mid-run and reports: tasks submitted, results received, one per index or not,
ok/failed, wall time, processes it started still alive afterwards, and run keys
(``fanout:run:*``, ``rq:job:fanout-*``) without a TTL. Every wait has a deadline; all
that a scenario starts (netns included) is stopped in ``finally``. Logs: see first line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # workers and callers import tests.tasks from here
sys.path.insert(0, str(ROOT))
import fanout  # noqa: E402

LOGS = Path(tempfile.mkdtemp(prefix="fanout-chaos-"))
KEY_PATTERNS = ("fanout:run:*", "rq:job:fanout-*")
TAG = os.getpid() % 100000
NS, VETH_ROOT, VETH_NS = f"fochaos{TAG}", f"foc{TAG}r", f"foc{TAG}n"
# Our children get SIGTERM if this script dies outright (setpriv execs: same pid).
DIE_WITH_US = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
Report = dict[str, Any]
NETNS_SETUP = (
    f"ip netns add {NS}",
    f"ip link add {VETH_ROOT} type veth peer name {VETH_NS}",
    f"ip link set {VETH_NS} netns {NS}",
    f"ip addr add 10.200.0.1/24 dev {VETH_ROOT}",
    f"ip link set {VETH_ROOT} up",
    f"ip netns exec {NS} ip addr add 10.200.0.2/24 dev {VETH_NS}",
    f"ip netns exec {NS} ip link set {VETH_NS} up",
    f"ip netns exec {NS} ip link set lo up",
)


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if value := check():
                return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting until {what}")


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True, capture_output=True, timeout=20)


def child_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}, **extra}


class RedisServer:
    def __init__(self, binds: tuple[str, ...] = ("127.0.0.1",)) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        log = str(LOGS / f"redis-{self.port}.log")
        self.proc = subprocess.Popen(
            [*DIE_WITH_US, "redis-server", "--port", str(self.port), "--bind", *binds,
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--logfile", log],
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)
        wait_until(self.client.ping, 10, "redis-server answers")

    def no_ttl(self) -> tuple[int, list[bytes]]:
        keys = [k for pattern in KEY_PATTERNS for k in self.client.scan_iter(pattern)]
        return len(keys), [k for k in keys if self.client.ttl(k) == -1]

    def check_keys(self, rep: Report, settle: float = 5.0) -> None:
        """The run's keys without a TTL, right away and ``settle`` seconds later (a
        worker deletes a finished job a moment after pushing its last result)."""
        count, first = self.no_ttl()
        deadline = time.monotonic() + settle
        while (left := self.no_ttl()[1]) and time.monotonic() < deadline:
            time.sleep(0.25)
        rep["keys"] = (count, len(first), [self.describe(k) for k in left], settle)

    def describe(self, key: bytes) -> str:
        fields = ("status", "worker_name", "started_at", "ended_at", "description")
        values = [v.decode() if v else "-" for v in self.client.hmget(key, *fields)]
        return f"{key.decode()} ({', '.join(values)})"

    def stop(self) -> None:
        stop_processes([self.proc], grace=5)


def start_worker(name: str, url: str, logdir: Path, ns: str = "") -> subprocess.Popen[bytes]:
    inside = ["ip", "netns", "exec", ns] if ns else []
    cmd = [*DIE_WITH_US, *inside, sys.executable, "-m", "fanout", "worker", "--name", name,
           "--queue", "fanout"]  # fmt: skip
    with open(logdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, env=child_env(FANOUT_REDIS_URL=url),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # fmt: skip


def wait_for_workers(server: RedisServer, names: list[str]) -> None:
    want = {f"rq:worker:{n}".encode() for n in names}
    wait_until(lambda: want <= server.client.smembers("rq:workers"), 30, f"{names} register")


def stop_processes(procs: list[Any], rep: Report | None = None, grace: float = 10.0) -> None:
    """SIGCONT and SIGTERM, then SIGKILL after ``grace`` (a finding, if ``rep``)."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    killed, deadline = [], time.monotonic() + grace
    for p in alive:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(p.pid)
            p.kill()
            p.wait(5)
    if killed and rep is not None:
        rep["findings"].append(f"pid(s) {killed} ignored SIGTERM for {grace:.0f} s: SIGKILLed")


class Tracker:
    """Every process below this one seen during a scenario (sampled every 0.2 s)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.stopped = threading.Event()
        threading.Thread(target=self.loop, daemon=True).start()

    def sample(self, root: int | None = None) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            found = psutil.Process(root).children(recursive=True)
        for p in found:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault((p.pid, p.create_time()), p)
        return found

    def loop(self) -> None:
        while not self.stopped.wait(0.2):
            self.sample()

    def alive(self, among: list[psutil.Process] | None = None) -> list[str]:
        left = []
        for p in self.seen.values() if among is None else among:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {p.pid}: {' '.join(p.cmdline())[:100]}")
        return left

    def kill_all(self) -> None:
        self.stopped.set()
        for p in self.seen.values():  # psutil refuses a pid reused since we saw it
            with contextlib.suppress(psutil.Error):
                p.resume()
                p.kill()


def run_in_thread(items: list[Any], url: str, **options: Any) -> tuple[threading.Thread, Report]:
    box: Report = {"started": time.monotonic(), "n": len(items)}

    def go() -> None:
        try:
            box["results"] = fanout.run("tests.tasks:sleep_for", items, backend="rq",
                                        redis_url=url, **options)  # fmt: skip
        except BaseException as exc:  # reported, never raised out of the thread
            box["error"] = f"{type(exc).__name__}: {exc}"
        box["finished"] = time.monotonic()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, box


def finish(thread: threading.Thread, box: Report, timeout: float, rep: Report) -> None:
    """Wait for a library run (at most ``timeout`` s from its start) and record it."""
    thread.join(max(0.0, timeout - (time.monotonic() - box["started"])))
    if thread.is_alive():
        rep["findings"].append(f"HANG: the run had not returned after {timeout:.0f} s")
    elif "error" in box:
        rep["findings"].append(f"the run raised {box['error']}")
    rows = [(r.index, r.ok, r.error and r.error.type, r.worker.name, r.attempts)
            for r in box.get("results", [])]  # fmt: skip
    rep.update(n=box["n"], rows=rows, wall=box.get("finished", time.monotonic()) - box["started"])


def json_rows(path: Path) -> list[tuple[Any, ...]]:
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut short by a SIGKILL
            r = json.loads(line)
            error = (r["error"] or {}).get("type")
            rows.append((r["index"], r["ok"], error, r["worker"]["name"], r["attempts"]))
    return rows


def print_report(title: str, rep: Report) -> None:
    rows, n = rep.get("rows", []), rep.get("n", 0)
    per_index = Counter(r[0] for r in rows)
    dups = sorted(i for i, c in per_index.items() if c > 1)
    missing = n - len(set(per_index) & set(range(n)))
    one_each = "yes" if not dups and not missing and len(rows) == n else "NO"
    failed = Counter(r[2] for r in rows if not r[1])
    retried = sum(1 for r in rows if (r[4] or 1) > 1)
    count, first, left, settle = rep.get("keys", (0, 0, [], 0))
    print(f"\n== {title} ==")
    print(
        f"  tasks submitted {n}, results received {len(rows)}, exactly one per index:"
        f" {one_each} ({missing} missing, duplicated indices {dups[:10] or 'none'})"
    )
    print(
        f"  ok {len(rows) - sum(failed.values())}, failed {sum(failed.values())}"
        f"{f' {dict(failed)}' if failed else ''}; retried (attempts > 1) {retried}"
    )
    print(f"  served by {dict(Counter(r[3] for r in rows))}")
    print(f"  wall time {rep.get('wall', 0):.1f} s")
    print(f"  processes it started still alive afterwards: {rep.get('left') or 'none'}")
    print(f"  run keys: {count}, without TTL right after the run: {first}, still without TTL"
          f" {settle:.0f} s later: {left or 'none'}")  # fmt: skip
    for line in rep["facts"]:
        print(f"  - {line}")
    for line in rep["findings"]:
        print(f"  ! {line}")


def read_logs(logdir: Path, rep: Report) -> None:
    """Tracebacks in any log, and what each worker said besides its start-up banner."""
    for log in sorted([*logdir.glob("*.log"), *logdir.glob("cli.err")]):
        text = log.read_text(errors="replace")
        if count := text.count("Traceback (most recent call last)"):
            last = [ln for ln in text.splitlines() if ln and not ln.startswith(" ")][-1]
            rep["findings"].append(f"{count} traceback(s) in {log.name}; last line: {last[:160]}")
        banner = ("serving queue", "warning: jobs are not", "warning: Redis at")
        said = [ln for ln in text.splitlines() if not any(m in ln for m in banner)]
        if log.suffix == ".log":
            rep["facts"] += [f"{log.stem} said: {ln[:200]}" for ln in said[:4]]


def run_scenario(title: str, body: Callable[[Report, Path, Tracker], None]) -> None:
    """One scenario, with a fresh report, log directory, process tracker and log capture."""
    rep: Report = {"facts": [], "findings": []}
    logdir = LOGS / body.__name__
    logdir.mkdir()
    capture, tracker = logging.handlers.BufferingHandler(10_000), Tracker()
    logging.getLogger("fanout").addHandler(capture)
    try:
        body(rep, logdir, tracker)
    except Exception as exc:
        rep["findings"].append(f"scenario aborted: {type(exc).__name__}: {exc}")
    finally:
        logging.getLogger("fanout").removeHandler(capture)
        time.sleep(0.5)
        tracker.sample()
        rep.setdefault("left", tracker.alive())  # after the scenario's own cleanup
        tracker.kill_all()
    read_logs(logdir, rep)
    rep["facts"] += [f"caller logged {r.getMessage()[:200]}" for r in capture.buffer[:6]]
    print_report(title, rep)


def partition(rep: Report, logdir: Path, tracker: Tracker) -> None:
    if "10.200.0." in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout:
        raise RuntimeError("10.200.0.0/24 is already in use on this machine")
    workers: list[subprocess.Popen[bytes]] = []
    server = None
    try:
        for cmd in NETNS_SETUP:
            sh(cmd)
        server = RedisServer(binds=("10.200.0.1", "127.0.0.1"))
        workers.append(start_worker("ns-1", f"redis://10.200.0.1:{server.port}/0", logdir, NS))
        workers.append(start_worker("root-1", server.url, logdir))
        wait_for_workers(server, ["ns-1", "root-1"])
        thread, box = run_in_thread([0.05] * 200, server.url, retries=2)
        time.sleep(2)
        sh(f"ip link set {VETH_ROOT} down")
        cut = time.monotonic()
        thread.join(40)
        if not thread.is_alive():
            server.check_keys(rep)  # while the link is still down
        time.sleep(max(0.0, cut + 45 - time.monotonic()))
        sh(f"ip link set {VETH_ROOT} up")
        up = time.monotonic()
        t0 = box["started"]
        rep["facts"].append(f"link cut at {cut - t0:.1f} s, up at {up - t0:.1f} s")
        finish(thread, box, 180, rep)
        if "keys" not in rep:
            server.check_keys(rep)
        rep["facts"].append(f"ns-1 alive after the partition: {workers[0].poll() is None}")
        for round_ in range(1, 7):  # 10 more tasks, until ns-1 serves some (<= ~60 s)
            more, box2 = run_in_thread([0.3] * 10, server.url, retries=2)
            more.join(60)
            results = box2.get("results", [])
            served = Counter(r.worker.name for r in results)
            if more.is_alive() or "error" in box2 or served["ns-1"] or time.monotonic() - up > 60:
                rep["facts"].append(
                    f"follow-up 10 tasks, round {round_} ({time.monotonic() - up:.1f} s after link"
                    f" up): {box2.get('error') or ('HANG, ' if more.is_alive() else '')}"
                    f"{sum(r.ok for r in results)} ok, served by {dict(served)}"
                )
                if not served["ns-1"]:
                    rep["findings"].append("the namespaced worker served none of the follow-up")
                break
        count, no_ttl = server.no_ttl()
        described = [server.describe(k) for k in no_ttl]
        rep["facts"].append(f"after the follow-up: {count} run keys, without TTL: {described}")
    finally:
        stop_processes(workers, rep)
        if server:
            server.stop()
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", VETH_ROOT], capture_output=True, timeout=20)


def frozen(rep: Report, logdir: Path, tracker: Tracker) -> None:
    server = RedisServer()
    workers = [start_worker(name, server.url, logdir) for name in ("w-1", "w-2")]
    try:
        wait_for_workers(server, ["w-1", "w-2"])
        thread, box = run_in_thread([0.05] * 200, server.url, retries=2)
        time.sleep(2)
        os.kill(server.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(45)  # (server.stop() in finally sends SIGCONT too)
        os.kill(server.proc.pid, signal.SIGCONT)
        rep["facts"].append(f"Redis stopped at {stopped - box['started']:.1f} s, resumed at"
                            f" {time.monotonic() - box['started']:.1f} s")  # fmt: skip
        finish(thread, box, 180, rep)
        server.check_keys(rep)
        rep["facts"].append(f"workers alive afterwards: {[w.poll() is None for w in workers]}")
    finally:
        stop_processes(workers, rep)
        server.stop()


def start_cli(items: list[Any], url: str, logdir: Path) -> subprocess.Popen[bytes]:
    (logdir / "input.jsonl").write_text("".join(f"{json.dumps(i)}\n" for i in items))
    cmd = [sys.executable, "-m", "fanout", "run", "tests.tasks:sleep_for", "--input",
           str(logdir / "input.jsonl"), "--backend", "rq", "--redis-url", url, "--workers", "2",
           "--json"]  # fmt: skip
    with open(logdir / "cli.out", "wb") as out, open(logdir / "cli.err", "wb") as err:
        return subprocess.Popen(
            cmd, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )


def full(rep: Report, logdir: Path, tracker: Tracker) -> None:
    server = RedisServer()
    cli = start_cli([0.05] * 200, server.url, logdir)
    try:
        started = time.monotonic()
        wait_until(lambda: b"\n" in (logdir / "cli.out").read_bytes() or cli.poll() is not None,
                   60, "the CLI prints a result")  # fmt: skip
        family = tracker.sample(cli.pid)
        for i in range(300):  # 3 MB of filler keys: Redis stays above 2mb
            server.client.set(f"filler:{i}", "x" * 10_000)
        server.client.config_set("maxmemory-policy", "noeviction")
        server.client.config_set("maxmemory", "2mb")
        full_at = time.monotonic()
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            server.client.set("probe", "x")
            rep["findings"].append("Redis still took a write after CONFIG SET maxmemory 2mb")
        while cli.poll() is None and time.monotonic() - full_at < 90:
            family += [p for p in tracker.sample(cli.pid) if p not in family]
            time.sleep(0.2)
        if cli.poll() is None:
            rep["findings"].append("HANG: the CLI had not exited 90 s after Redis became full")
        rep.update(n=200, rows=json_rows(logdir / "cli.out"), wall=time.monotonic() - started)
        rep["left"] = tracker.alive(family)  # right when the CLI has exited
        err = (logdir / "cli.err").read_text(errors="replace").splitlines()
        rep["facts"].append(
            f"Redis full at {full_at - started:.1f} s; CLI exit code {cli.poll()}"
            f" {time.monotonic() - full_at:.1f} s later; stderr lines: {len(err)}"
        )
        rep["facts"] += [f"stderr: {line[:230]}" for line in err[:6]]
        if cli.poll() != 3 or len(err) != 1 or any("Traceback" in line for line in err):
            rep["findings"].append("expected exit code 3 and one stderr line without traceback")
        server.check_keys(rep)
    finally:
        stop_processes([cli], rep)
        server.stop()


def lost_job(rep: Report, logdir: Path, tracker: Tracker) -> None:
    server = RedisServer()
    workers = [start_worker("solo-1", server.url, logdir)]
    try:
        wait_for_workers(server, ["solo-1"])
        thread, box = run_in_thread([1.0] * 6, server.url, retries=2)
        popped = wait_until(
            lambda: server.client.lpop("rq:queue:fanout"), 20, "a job is queued", 0.02
        )
        rep["facts"].append(
            f"LPOPed {popped.decode()} {time.monotonic() - box['started']:.1f} s in"
        )
        finish(thread, box, 40, rep)
        if rep["wall"] > 20:
            rep["findings"].append(f"the run took {rep['wall']:.1f} s (over ~20 s)")
        server.check_keys(rep)
    finally:
        stop_processes(workers, rep)
        server.stop()


def killed_caller(rep: Report, logdir: Path, tracker: Tracker) -> None:
    server = RedisServer()
    cli = start_cli([0.5] * 100, server.url, logdir)
    try:
        started, family = time.monotonic(), []
        while time.monotonic() - started < 2:
            family += [p for p in tracker.sample(cli.pid) if p not in family]
            time.sleep(0.1)
        family += [p for p in tracker.sample(cli.pid) if p not in family]
        cli.kill()
        cli.wait(10)
        killed = time.monotonic()
        count, no_ttl = server.no_ttl()
        rep["facts"].append(f"caller's descendants at the kill: {[p.pid for p in family]}")
        rep["facts"].append(f"right after the kill: {count} run keys, {len(no_ttl)} without TTL")
        try:
            wait_until(lambda: not tracker.alive(family), 15, "the caller's workers are gone")
            rep["facts"].append(f"its workers were gone {time.monotonic() - killed:.1f} s after it")
        except TimeoutError as exc:
            rep["findings"].append(str(exc))
        rep.update(n=100, rows=json_rows(logdir / "cli.out"), wall=killed - started)
        rep["left"] = tracker.alive(family)  # 15 s after the kill at most
        server.check_keys(rep)
        rep["facts"].append("results: what the caller printed before it was killed")
    finally:
        stop_processes([cli], rep)
        server.stop()


SCENARIOS = {
    1: ("1. network partition: a worker in a netns cut off for 45 s mid-run", partition),
    2: ("2. Redis frozen (SIGSTOP) for 45 s mid-run, two workers", frozen),
    3: ("3. Redis full (maxmemory 2mb, noeviction) mid-run, CLI with --workers 2", full),
    4: ("4. a queued job removed by hand (LPOP rq:queue:fanout) mid-run, one worker", lost_job),
    5: ("5. caller SIGKILLed 2 s into a CLI run with --workers 2", killed_caller),
}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every finally runs
    logging.getLogger("fanout").propagate = False  # captured per scenario, else dropped
    logging.getLogger("fanout").addHandler(logging.NullHandler())
    print(f"fanout chaos trial, pid {os.getpid()}, logs in {LOGS}")
    started = time.monotonic()
    for number in [int(arg) for arg in sys.argv[1:]] or SCENARIOS:  # `chaos_trial.py 1 3`
        run_scenario(*SCENARIOS[number])
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
