"""A real Redis Sentinel deployment on loopback ports, for the failover tests: a master,
a replica and three ``redis-sentinel`` processes (quorum 2), all the test's own."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

from redis import Redis

from tests.helpers import (
    CuttableProxy,
    RedisServer,
    accepts_connections,
    free_port,
    require,
    wait_until,
)

SERVICE = "fanout-master"


class SentinelSet:
    """Master, replica and Sentinels; stopped (every process) by :meth:`stop`."""

    def __init__(self, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        binary = require("redis-sentinel", "redis-sentinel")
        self.dir = tempfile.TemporaryDirectory(prefix="fanout-sentinel-")
        # Redis waits 5 s by default before a full sync, for more replicas to share it.
        self.master = RedisServer("--repl-diskless-sync-delay", "0")
        # The replica reaches its master through a link the test can cut: writes the
        # master acknowledges after the cut never reach the replica, as with
        # asynchronous replication when a master dies.
        self.link = CuttableProxy(self.master.port)
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.link.port))
        self.sentinel_ports: list[int] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        try:
            # Each Sentinel is told of the replica and of the others up front, as the
            # config files Sentinels rewrite for themselves do: finding them by their
            # hello messages takes seconds, which every test here would wait.
            ids = [f"{number + 1:040x}" for number in range(sentinels)]
            while len(set(self.sentinel_ports)) < sentinels:  # distinct, or a peer is lost
                self.sentinel_ports = [free_port() for _ in ids]
            for number, (port, myid) in enumerate(zip(self.sentinel_ports, ids, strict=True)):
                others = "".join(
                    f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {other_id}\n"
                    for other, other_id in zip(self.sentinel_ports, ids, strict=True)
                    if other != port
                )
                conf = Path(self.dir.name) / f"sentinel-{number}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir.name}\nsentinel myid {myid}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                    f"sentinel failover-timeout {SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                    f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}\n{others}"
                )
                process = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL)
                self.sentinels.append(process)
            for port in self.sentinel_ports:
                wait_until(lambda port=port: accepts_connections(port), 10, "a Sentinel listens")
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def url(self, db: int = 0, scheme: str = "redis+sentinel", service: str = SERVICE) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{scheme}://{hosts}/{service}/{db}"

    def ask(self, port: int) -> dict:
        with Redis(port=port, socket_timeout=2) as sentinel:
            return sentinel.sentinel_master(SERVICE)  # type: ignore[no-any-return]

    def master_port(self) -> int | None:
        """The master every Sentinel agrees on (None while they do not agree)."""
        ports = {int(self.ask(port)["port"]) for port in self.sentinel_ports}
        return ports.pop() if len(ports) == 1 else None

    def wait_until_ready(self) -> None:
        """Every Sentinel has reached the replica and the other Sentinels, and the replica
        is in sync: a failover can happen."""

        def ready() -> bool:
            # Told of each other by their config files, they count their peers and the
            # replica at once: what matters is that each has reached them.
            others = len(self.sentinel_ports) - 1
            try:
                for port in self.sentinel_ports:
                    with Redis(port=port, socket_timeout=2) as sentinel:
                        peers = sentinel.sentinel_sentinels(SERVICE)
                        replicas = sentinel.sentinel_slaves(SERVICE)
                    if len(peers) < others or any(p["flags"] != "sentinel" for p in peers):
                        return False
                    if not replicas or any(r["master-link-status"] != "ok" or r["flags"] != "slave"
                                           for r in replicas):  # fmt: skip
                        return False
            except Exception:
                return False
            return True

        wait_until(ready, 30, "the Sentinels know the master, the replica and each other")
        wait_until(self._replica_in_sync, 10, "the replica is in sync")

    def _replica_in_sync(self) -> bool:
        with Redis(port=self.replica.port) as replica:
            info = replica.info("replication")
        return info.get("master_link_status") == "up"

    def stop(self) -> None:
        self.link.cut()  # before the master goes: the replica would reconnect through it
        for process in self.sentinels:
            process.kill()
        for process in self.sentinels:
            process.wait()
        for server in (self.master, self.replica):
            if server.process.poll() is None:
                server.process.kill()
            server.process.wait()
            server.dir.cleanup()
        with contextlib.suppress(OSError):
            self.dir.cleanup()
