"""Connecting to Redis: URL defaults, password masking, and the one place where Redis
errors become fanout's (:func:`translate`), with a reconnecting wait (:class:`Outage`).

No message fanout prints ever holds a password: URLs are shown through
:func:`mask_url`, and library error text goes through :func:`scrub`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fanout.errors import BackendUnavailable, BadRedisURL

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("fanout")

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CONNECT_TIMEOUT = 5.0
FAILOVER_WAIT = 30.0  # a Sentinel URL's master may be failing over: how long to wait


class RedisLost(BackendUnavailable):
    """The connection to Redis broke or timed out (it may come back)."""


class NoSentinel(RedisLost):
    """No Redis Sentinel of a Sentinel URL answers."""


class RedisFull(BackendUnavailable):
    """Redis is at its maxmemory and refuses writes (it may be freed)."""


SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


def redis_url(url: str | None = None) -> str:
    """The URL to use: the one given, else ``$FANOUT_REDIS_URL``, else the default;
    checked (:func:`check_url`)."""
    url = url or os.environ.get("FANOUT_REDIS_URL") or DEFAULT_REDIS_URL
    check_url(url)
    return url


def check_url(url: str) -> None:
    """:class:`BadRedisURL` unless ``url`` has a scheme fanout connects with, a port and
    a database that are numbers (redis-py would take ``/abc`` for database 0)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        schemes = ", ".join(f"{name}://" for name in SCHEMES)
        raise BadRedisURL(f"bad Redis URL {mask_url(url)}: it must start with one of {schemes}")
    try:
        if is_sentinel(url):
            SentinelURL.parse(url)
            return
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises ValueError
        db = parts.path.strip("/") if scheme.lower() != "unix" else ""
        db = next((v for k, v in parse_qsl(parts.query) if k == "db"), db)
        _check_db(db)
    except ValueError as exc:
        raise BadRedisURL(f"bad Redis URL {mask_url(url)}: {scrub(str(exc), url)}") from None


def _check_db(db: str) -> None:
    if db and not db.isdigit():
        raise ValueError(f"the database must be a number (0, 1, ...), not {db!r}")


def mask_url(url: str) -> str:
    """``url`` with any password (userinfo, ``?password=``, ``?sentinel_password=``)
    replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if not is_sentinel(url):
            parts.port  # noqa: B018 - a port that is not a number makes the URL unparsable
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in _PASSWORD_KEYS for key, _ in query):
        masked = [(key, "***" if key in _PASSWORD_KEYS else value) for key, value in query]
        query_text = urlencode(masked, safe="*")
    else:
        query_text = parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query_text, parts.fragment))


_PASSWORD_KEYS = ("password", "sentinel_password")


def url_passwords(url: str) -> list[str]:
    """The passwords in ``url``: its userinfo's and any ``?password=`` (and, for
    Sentinel, ``?sentinel_password=``)."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query) if k in _PASSWORD_KEYS and v]
    except ValueError:
        return []
    return found


# -- Redis Sentinel ------------------------------------------------------------------------

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB][?...]``
    (``rediss+sentinel`` for TLS): the Sentinels to ask, the master's service name, and
    what to connect to the master with (database, credentials, TLS options)."""

    sentinels: list[tuple[str, int]]
    service: str
    master: dict[str, Any]  # keyword arguments for the master's connections
    sentinel_password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        from redis.connection import parse_url

        parts = urlsplit(url)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        sentinels = [_host_port(host) for host in hosts.split(",") if host]
        segments = [s for s in parts.path.split("/") if s]
        if not sentinels or not 1 <= len(segments) <= 2:
            raise ValueError(
                "a Sentinel URL is redis+sentinel://[:password@]host:port[,host:port...]"
                "/SERVICE[/DB]"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        sentinel_password = next((v for k, v in query if k == "sentinel_password"), None)
        rest = urlencode([(k, v) for k, v in query if k != "sentinel_password"])
        # redis-py reads credentials, the database and TLS options as for any URL.
        scheme = "rediss" if parts.scheme.lower().startswith("rediss") else "redis"
        db = segments[1] if len(segments) == 2 else "0"
        _check_db(db)
        plain = f"{scheme}://{userinfo}{at}localhost/{db}" + (f"?{rest}" if rest else "")
        master: dict[str, Any] = parse_url(plain)  # type: ignore[no-untyped-call]
        for key in ("host", "port", "connection_class"):
            master.pop(key, None)
        master["ssl"] = scheme == "rediss"
        return cls(sentinels, segments[0], master, sentinel_password or None)

    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not host:  # no port given
        host, port = text, ""
    host = host.strip("[]")
    if not port.isdigit():
        if port:
            raise ValueError(f"the Sentinel address {text!r} has no port number")
        return host, SENTINEL_PORT
    return host, int(port)


def _sentinel_master(url: str, socket_timeout: float | None) -> Redis:
    """The master of a Sentinel URL's service: a client whose every new connection asks
    the Sentinels where the master is, so it follows a failover."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    config = SentinelURL.parse(url)
    ssl_options = {k: v for k, v in config.master.items() if k.startswith("ssl")}
    sentinel_kwargs: dict[str, Any] = dict(
        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT,
        # A Sentinel that does not answer is passed over for the next one; redis-py's
        # default (ten tries, backing off: about 4 s a Sentinel, and they are asked twice)
        # made "no Sentinel answers" take 15 s with two of them.
        retry=Retry(NoBackoff(), 0), **ssl_options,
    )  # fmt: skip
    if config.sentinel_password:
        sentinel_kwargs["password"] = config.sentinel_password
    # redis-py types Sentinel from 8.2 on (untyped before): called as Any, the same code
    # checks on both.
    sentinel_class: Any = Sentinel
    sentinel = sentinel_class(config.sentinels, sentinel_kwargs=sentinel_kwargs)
    config.master["connection_class"] = _connection_class(ssl=config.master.pop("ssl"))
    master: Redis = sentinel.master_for(
        config.service,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        **config.master,
    )
    return master


@functools.cache  # one class for every connect() of the process
def _connection_class(ssl: bool) -> type:
    """redis-py's Sentinel-managed connection, but one that an error mid-read (RQ's
    SIGTERM handler raises while a worker waits on BLMOVE) disconnects, as its plain
    connection does: redis-py 8.1 keeps it, its late reply then answers the next command
    (a warm shutdown failed with "Wrong number of response items")."""
    from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

    base = SentinelManagedSSLConnection if ssl else SentinelManagedConnection

    class Connection(base):  # type: ignore[misc, valid-type]
        def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
            return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)

    return Connection


def _no_master(url: str, conn: Redis) -> BackendUnavailable:
    """Why no master was found: no Sentinel answers, or none knows the service."""
    config = SentinelURL.parse(url)
    manager = conn.connection_pool.sentinel_manager  # type: ignore[attr-defined]
    known: set[str] = set()
    answered = False
    for sentinel in manager.sentinels:
        try:
            known.update(sentinel.sentinel_masters())
            answered = True
        except Exception:  # noqa: S112 - the next Sentinel may answer
            continue
    if not answered:
        return NoSentinel(f"no Redis Sentinel answers at {config.where()} (service"
                         f" {config.service!r}, {mask_url(url)})")  # fmt: skip
    if config.service not in known:
        names = ", ".join(repr(n) for n in sorted(known)) or "none"
        return BackendUnavailable(
            f"the Redis Sentinels at {config.where()} know no service {config.service!r}"
            f" (they know: {names}); check the service name in {mask_url(url)}"
        )
    where = f"{config.where()} ({mask_url(url)})"
    return RedisLost(f"the Redis Sentinels at {where} know service {config.service!r},"
                     " but no master of it is up")  # fmt: skip


def _ping_master(url: str, conn: Redis, not_found: type[Exception]) -> None:
    """Ping the master the Sentinels name. While they answer but the master they name
    does not (it died and they have not failed over yet), ask again for up to
    ``FAILOVER_WAIT`` seconds; with no Sentinel answering, or the service unknown to
    them, fail at once."""
    deadline = time.monotonic() + FAILOVER_WAIT
    while True:
        try:
            with translate(url, "cannot reach Redis at"):
                try:
                    conn.ping()
                    return
                except not_found:
                    raise _no_master(url, conn) from None
        except RedisLost as exc:
            lost = exc
        if isinstance(lost, NoSentinel) or time.monotonic() >= deadline:
            raise lost
        conn.connection_pool.reset()  # the next connection asks the Sentinels again
        time.sleep(0.5)


def master_address(conn: Redis) -> str | None:
    """``host:port`` of the master a Sentinel-managed client found, else None."""
    pool = conn.connection_pool
    if not hasattr(pool, "get_master_address"):
        return None
    host, port = pool.get_master_address()
    return f"{host}:{port}"


def scrub(text: str, url: str) -> str:
    """Remove every password of ``url`` from ``text``, wherever a library put it."""
    for password in url_passwords(url):
        text = text.replace(password, "***")
    return text


@contextlib.contextmanager
def translate(url: str, doing: str = "lost Redis at") -> Iterator[None]:
    """Redis errors become :class:`BackendUnavailable` (:class:`RedisLost` for a broken
    connection), said in one line with the URL's password masked."""
    import redis

    where = mask_url(url)
    try:
        yield
    except redis.AuthenticationError as exc:
        raise BackendUnavailable(
            f"Redis at {where} refused the credentials: {scrub(str(exc), url)}"
        ) from None
    except redis.exceptions.OutOfMemoryError as exc:
        # At maxmemory with noeviction Redis refuses writes: say so, and what to do.
        raise RedisFull(
            f"Redis at {where} is full and refuses writes ({scrub(str(exc), url)});"
            " free memory or raise its maxmemory, then run again"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisLost(f"{doing} {where}: {scrub(str(exc), url)}") from None
    except redis.ResponseError as exc:  # NOAUTH and friends
        raise BackendUnavailable(f"Redis at {where}: {scrub(str(exc), url)}") from None
    except redis.exceptions.InvalidResponse as exc:  # an HTTP server, a proxy, ...
        raise BackendUnavailable(
            f"the server at {where} does not speak Redis's protocol ({scrub(str(exc), url)});"
            " is the URL's host and port a Redis server's?"
        ) from None
    except redis.RedisError as exc:
        raise BackendUnavailable(f"Redis at {where}: {scrub(str(exc), url)}") from None


def connect(url: str, *, socket_timeout: float | None = 30.0) -> Redis:
    """A checked connection to ``url``; :class:`BackendUnavailable` within seconds if not."""
    import redis
    from redis.sentinel import MasterNotFoundError

    try:
        if is_sentinel(url):
            conn = _sentinel_master(url, socket_timeout)
        else:
            conn = redis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=socket_timeout,
                health_check_interval=30,
            )
        if is_sentinel(url):
            _ping_master(url, conn, MasterNotFoundError)
        else:
            with translate(url, "cannot reach Redis at"):
                conn.ping()
    except ValueError as exc:
        raise BadRedisURL(f"bad Redis URL {mask_url(url)}: {scrub(str(exc), url)}") from None
    return conn


class Outage:
    """Waiting out a lost or full Redis: each failure sleeps a growing backoff (at most
    2 s) and logs once; after ``wait`` seconds without success it raises the last error."""

    def __init__(self, url: str, wait: float, what: str = "") -> None:
        self.url = url
        self.wait = wait
        self.what = what
        self.since: float | None = None
        self.pause = 0.1

    def hit(self, exc: RedisLost | RedisFull) -> None:
        """One more failure: back off, or raise once Redis has been gone too long."""
        now = time.monotonic()
        if self.since is None:
            self.since, self.pause = now, 0.1
            log.warning("%s%s; trying again", self.what, exc)
        if now - self.since >= self.wait:
            raise type(exc)(f"{exc} (for {now - self.since:.0f} s)") from None
        time.sleep(self.pause)
        self.pause = min(2.0, self.pause * 2)

    def over(self) -> bool:
        """After a success: True if it ended an outage (which is then logged)."""
        if self.since is None:
            return False
        self.since = None
        log.warning("%sRedis at %s answers again", self.what, mask_url(self.url))
        return True
