"""Connecting to Redis: URL defaults, password masking, errors translated at the boundary."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fanout.errors import BackendUnavailable

if TYPE_CHECKING:
    from redis import Redis

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CONNECT_TIMEOUT = 5.0


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
        conn.ping()
    except redis.AuthenticationError as exc:
        raise BackendUnavailable(
            f"Redis at {mask_url(url)} refused the credentials: {scrub(str(exc), url)}"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BackendUnavailable(
            f"cannot reach Redis at {mask_url(url)}: {scrub(str(exc), url)}"
        ) from None
    except redis.ResponseError as exc:  # NOAUTH and friends
        raise BackendUnavailable(f"Redis at {mask_url(url)}: {scrub(str(exc), url)}") from None
    except ValueError as exc:
        raise BackendUnavailable(f"bad Redis URL {mask_url(url)}: {scrub(str(exc), url)}") from None
    return conn
