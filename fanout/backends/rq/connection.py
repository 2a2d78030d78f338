"""Connecting to Redis: URL defaults, password masking, and the one place where Redis
errors become fanout's (:func:`translate`), with a reconnecting wait (:class:`Outage`).

No message fanout prints ever holds a password: URLs are shown through
:func:`mask_url`, and library error text goes through :func:`scrub`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fanout.errors import BackendUnavailable

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("fanout")

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CONNECT_TIMEOUT = 5.0


class RedisLost(BackendUnavailable):
    """The connection to Redis broke or timed out (it may come back)."""


class RedisFull(BackendUnavailable):
    """Redis is at its maxmemory and refuses writes (it may be freed)."""


def redis_url(url: str | None = None) -> str:
    """The URL to use: the one given, else ``$FANOUT_REDIS_URL``, else the default."""
    return url or os.environ.get("FANOUT_REDIS_URL") or DEFAULT_REDIS_URL


def mask_url(url: str) -> str:
    """``url`` with any password (userinfo or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if port is not None:
            host = f"{host}:{port}"
        netloc = f"{parts.username or ''}:***@{host}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        masked = [(key, "***" if key == "password" else value) for key, value in query]
        query_text = urlencode(masked, safe="*")
    else:
        query_text = parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query_text, parts.fragment))


def url_passwords(url: str) -> list[str]:
    """The passwords in ``url``: its userinfo's and any ``?password=``."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
        found += [v for k, v in parse_qsl(parts.query) if k == "password" and v]
    except ValueError:
        return []
    return found


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

    try:
        conn = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=socket_timeout,
            health_check_interval=30,
        )
        with translate(url, "cannot reach Redis at"):
            conn.ping()
    except ValueError as exc:
        raise BackendUnavailable(f"bad Redis URL {mask_url(url)}: {scrub(str(exc), url)}") from None
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
