"""Scale-out on one Redis, measured: ``python benchmarks/scale.py [--quick]`` (root, Linux).

Redis runs in the root network namespace; each of W ``fanout worker``s runs in a network
namespace of its own, joined to the root namespace by a veth pair on a bridge made for
the run (10.231.0.0/16), and in a UTS namespace of its own under its own hostname
(``scale-N``): W separate hosts, as far as Redis, RQ and fanout can tell. For W = 1, 2,
4, 8, 16, 32 (``--quick``: 1, 2, 4 on a tenth of the tasks) the caller (this process)
runs ``fanout.run`` over 1,000·W tasks of 10 ms (sleep), about 10 s of ideal work, and
over 2,000·W trivial tasks, workers started and warmed up outside the timing. Per row:
tasks/s, % of the ideal W / 10 ms, distinct hosts in the results, Redis commands and
bytes per task (``INFO commandstats`` / ``INFO stats`` before and after), Redis's own
CPU per task (``INFO cpu``) and the caller's CPU per task (``getrusage``). One Redis's
ceiling for fanout is 1 / (Redis CPU per task): the rate at which its one thread is busy
all the time.

Everything it makes (namespaces, links, the bridge, processes) it removes at the end, on
Ctrl-C too; it uses no address outside the bridge's private range and loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402

PREFIX = "fos"  # every namespace and link this benchmark makes starts with it
BRIDGE = f"{PREFIX}-br"
REDIS_IP = "10.231.0.1"
SIZES = (1, 2, 4, 8, 16, 32)


def sh(*command: str) -> None:
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL, capture_output=False,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"scale: {' '.join(command)}: {done.stderr.strip()}")


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux (network and UTS namespaces)"
    for tool in ("ip", "unshare", "redis-server"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, check=False)
    return None if probe.returncode == 0 else "cannot make namespaces here"


class Hosts:
    """The bridge and W namespaces, each a 'host' with one veth to the bridge."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.cleanup()  # leftovers of an earlier run killed before it could clean up
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{REDIS_IP}/16", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")

    def add(self, number: int) -> str:
        name = f"{PREFIX}-{number}"
        outer, inner = f"{PREFIX}-{number}a", f"{PREFIX}-{number}b"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", outer, "master", BRIDGE, "up")
        sh("ip", "link", "set", inner, "netns", name)
        address = f"10.231.{1 + number // 250}.{1 + number % 250}/16"
        sh("ip", "-n", name, "addr", "add", address, "dev", inner)
        sh("ip", "-n", name, "link", "set", inner, "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def cleanup() -> None:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=False).stdout  # fmt: skip
        for line in listed.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{PREFIX}-"):
                subprocess.run(["ip", "netns", "del", name], check=False)
        # A namespace lives on while a process in it does: its veth may outlast `del`.
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                               check=False).stdout  # fmt: skip
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{PREFIX}-"):
                subprocess.run(["ip", "link", "del", name], check=False, stderr=subprocess.DEVNULL)


@dataclass
class Row:
    workers: int
    kind: str
    tasks: int
    seconds: float
    hosts: int
    commands: float
    bytes: float
    redis_cpu: float
    caller_cpu: float
    workers_cpu: float
    ideal: float | None

    def cells(self) -> str:
        rate = self.tasks / self.seconds
        of_ideal = f"{rate / self.ideal * 100:.0f}%" if self.ideal else "-"
        return (f"| {self.workers} | {self.kind} | {self.tasks:,} | {rate:,.0f} | {of_ideal} |"
                f" {self.hosts} | {self.commands:.2f} | {self.bytes:,.0f} |"
                f" {self.redis_cpu * 1e6:.1f} | {self.caller_cpu * 1e6:.1f} |"
                f" {self.workers_cpu * 1e6:,.0f} |")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", REDIS_IP,
                             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise SystemExit("scale: redis-server did not start")
            time.sleep(0.05)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(10)


def start_workers(hosts: Hosts, count: int, port: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, FANOUT_REDIS_URL=f"redis://{REDIS_IP}:{port}/0")
    workers = []
    for number in range(count):
        netns = hosts.add(number)
        host = f"scale-{number}"
        command = ["ip", "netns", "exec", netns, "unshare", "--uts", "sh", "-c",
                   'hostname "$0" && exec "$@"', host,
                   sys.executable, "-m", "fanout", "worker", "--name", host]  # fmt: skip
        workers.append(subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True,
                                        stderr=subprocess.DEVNULL))  # fmt: skip
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for worker in workers:
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def redis_figures(connection: object) -> tuple[int, int, float]:
    """(commands, network bytes in and out, CPU seconds) Redis has counted so far."""
    stats = connection.info("stats")  # type: ignore[attr-defined]
    commands = sum(v["calls"] for k, v in connection.info("commandstats").items()  # type: ignore[attr-defined]
                   if k.startswith("cmdstat_"))  # fmt: skip
    cpu = connection.info("cpu")  # type: ignore[attr-defined]
    return (commands, stats["total_net_input_bytes"] + stats["total_net_output_bytes"],
            cpu["used_cpu_user"] + cpu["used_cpu_sys"])  # fmt: skip


def workers_cpu() -> float:
    """CPU seconds used so far by every ``fanout worker`` process and its task process."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "worker" in cmdline and any(arg.startswith("scale-") for arg in cmdline):
            with contextlib.suppress(psutil.Error):
                for member in [proc, *proc.children(recursive=True)]:
                    times = member.cpu_times()
                    total += times.user + times.system
    return total


def measure(url: str, connection: object, workers: int, kind: str, count: int) -> Row:
    target, items = (("fanout.testing.tasks:sleep_for", [0.01] * count) if kind == "10 ms"
                     else ("fanout.testing.tasks:square", range(count)))  # fmt: skip
    fanout.run(target, items[: 20 * workers], backend="rq", redis_url=url)  # warm up
    before = redis_figures(connection)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    workers_before = workers_cpu()
    began = time.perf_counter()
    results = fanout.run(target, items, backend="rq", redis_url=url)
    seconds = time.perf_counter() - began
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    workers_used = workers_cpu() - workers_before
    after = redis_figures(connection)
    assert len(results) == count
    assert all(r.ok for r in results)
    caller = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return Row(workers, kind, count, seconds, len({r.worker.host for r in results}),
               (after[0] - before[0]) / count, (after[1] - before[1]) / count,
               (after[2] - before[2]) / count, caller / count, workers_used / count,
               workers / 0.01 if kind == "10 ms" else None)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="W = 1, 2, 4, a tenth of the tasks")
    parser.add_argument("--sizes", type=int, nargs="*", help="worker counts (default: all)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--plot", type=Path, help="draw tasks/s against workers here (PNG)")
    args = parser.parse_args(argv)
    reason = why_not()
    if reason is not None:
        print(f"scale: skipped: {reason}")
        # CI as root on Linux has everything it takes: not running there is a failure.
        can = sys.platform.startswith("linux") and os.geteuid() == 0
        return 1 if os.environ.get("CI") and can else 0
    from redis import Redis

    sizes = args.sizes or ((1, 2, 4) if args.quick else SIZES)
    scale = 100 if args.quick else 1000
    rows: list[Row] = []
    hosts = Hosts()
    try:
        with redis_server() as (_, port):
            url = f"redis://127.0.0.1:{port}/0"
            connection = Redis(port=port)
            for count in sizes:
                workers = start_workers(hosts, count, port)
                try:
                    deadline = time.monotonic() + 60
                    while len(connection.smembers("rq:workers")) < count:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"scale: {count} workers did not register")
                        time.sleep(0.1)
                    for kind, per in (("10 ms", scale), ("trivial", 2 * scale)):
                        row = measure(url, connection, count, kind, per * count)
                        rows.append(row)
                        print(row.cells(), flush=True)
                finally:
                    stop_workers(workers)
                    Hosts.cleanup()
                    hosts = Hosts()
    except KeyboardInterrupt:
        print("scale: interrupted; removing what it made", file=sys.stderr)
        return 130
    finally:
        Hosts.cleanup()
    table = render(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


def plot(rows: list[Row], path: Path) -> None:
    """10 ms tasks/s against workers, beside the ideal W / 10 ms (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scale: plot skipped: pip install matplotlib")
        return
    sleepy = [row for row in rows if row.kind == "10 ms"]
    counts = [row.workers for row in sleepy]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(counts, [w / 0.01 for w in counts], "--", color="grey", label="ideal (W / 10 ms)")
    ax.plot(counts, [row.tasks / row.seconds for row in sleepy], "o-", label="fanout on rq")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("workers, each in its own network namespace")
    ax.set_ylabel("10 ms tasks per second")
    ax.set_title("One Redis, W workers (2-core machine)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def render(rows: list[Row]) -> str:
    head = (f"Python {platform.python_version()}, 2 cores, one redis-server, each worker in"
            " its own network and UTS namespace (veth to a bridge in the root namespace).\n\n"
            "| workers | tasks | count | tasks/s | of ideal | hosts | Redis commands/task |"
            " Redis bytes/task | Redis CPU µs/task | caller CPU µs/task | workers' CPU µs/task"
            " |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    return "\n".join([head, *(row.cells() for row in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
