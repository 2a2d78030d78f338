"""Signed payloads on Redis: HMAC-SHA256 over the serialised bytes, with a key id.

Anyone who can write to Redis can otherwise make every RQ worker unpickle (and so run)
what they like. With a secret set, every job and every result is sealed::

    b"fanout-hmac1:" + key id (8 hex) + b":" + HMAC-SHA256(key, body) (32 bytes) + body

and a worker checks the seal *before* the body is unpickled or anything is imported.
Jobs stay plain RQ jobs: :class:`SignedSerializer` is an RQ serializer, so a stock
``rq worker --serializer fanout.rq.SignedSerializer --job-class
fanout.rq.FanoutJob`` (with ``FANOUT_SECRET`` or ``FANOUT_SECRET_FILE`` in its
environment) checks them too; the job class refuses RQ callbacks and webhooks, which
live outside the signed data.

Rotation: a secret file holds one secret per line; the first signs, every line is
accepted. Add the new secret as a second line everywhere, move it first, then drop the
old one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import pickle
from pathlib import Path
from typing import Any

from fanout.backends.rq.allowlist import allowlist_from_env, restricted_loads
from fanout.errors import SignatureError

MAGIC = b"fanout-hmac1:"
KEY_ID_SIZE = 8
MAC_SIZE = 32
HEADER_SIZE = len(MAGIC) + KEY_ID_SIZE + 1 + MAC_SIZE
MIN_SECRET_BYTES = 16
# A help text, not a secret.
SECRET_HELP = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105


def key_id(secret: bytes) -> bytes:
    """A short public name for a secret, so a verifier knows which key to use."""
    return hashlib.sha256(b"fanout key id\0" + secret).hexdigest()[:KEY_ID_SIZE].encode()


class Keyring:
    """The secrets of one deployment: the first signs, all of them verify."""

    def __init__(self, secrets: list[bytes], source: str) -> None:
        if not secrets:
            raise ValueError(f"{source} holds no secret; {SECRET_HELP}")
        for secret in secrets:
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"a secret in {source} is shorter than {MIN_SECRET_BYTES} bytes; {SECRET_HELP}"
                )
        self.source = source
        self.keys = {key_id(secret): secret for secret in secrets}
        self.signing_id = key_id(secrets[0])

    def __repr__(self) -> str:  # never the secrets themselves
        return f"Keyring(source={self.source!r}, key ids={sorted(k.decode() for k in self.keys)})"

    def seal(self, body: bytes) -> bytes:
        """``body`` with the header that proves who wrote it."""
        mac = hmac.new(self.keys[self.signing_id], body, hashlib.sha256).digest()
        return b"".join((MAGIC, self.signing_id, b":", mac, body))

    def open(self, data: bytes, what: str = "payload") -> bytes:
        """The body of a sealed ``data``; :class:`SignatureError` unless the seal is ours."""
        data = bytes(data)
        if not data.startswith(MAGIC) or len(data) < HEADER_SIZE:
            raise SignatureError(f"the {what} is not signed; it was not sent by a fanout client "
                                 "with FANOUT_SECRET set")  # fmt: skip
        start = len(MAGIC)
        kid = data[start : start + KEY_ID_SIZE]
        mac = data[start + KEY_ID_SIZE + 1 : HEADER_SIZE]
        body = data[HEADER_SIZE:]
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(
                f"the {what} is signed with key id {kid.decode(errors='replace')}, which is not "
                f"among this side's keys ({', '.join(sorted(k.decode() for k in self.keys))}); "
                "give both sides the same FANOUT_SECRET"
            )
        if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
            raise SignatureError(f"the {what}'s signature does not match: it was forged or altered")
        return body


def load_keyring(
    secret: str | bytes | None = None, secret_file: str | None = None
) -> Keyring | None:
    """The keyring given, else from ``FANOUT_SECRET_FILE`` or ``FANOUT_SECRET``; None if none.

    Raises ValueError (a user mistake, said in one line) for an unreadable file or a
    secret too short to be one.
    """
    if secret is not None:
        value = secret.encode() if isinstance(secret, str) else secret
        return Keyring([value], "the secret given")
    secret_file = secret_file or os.environ.get("FANOUT_SECRET_FILE") or None
    if secret_file:
        try:
            text = Path(secret_file).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {secret_file}: {exc.strerror}") from None
        lines = [line.strip() for line in text.splitlines()]
        return Keyring([line for line in lines if line], f"secret file {secret_file}")
    env = os.environ.get("FANOUT_SECRET")
    if env:
        return Keyring([env.encode()], "FANOUT_SECRET")
    return None


class JobSerializer:
    """The RQ serializer of a fanout client or worker: seals with ``keyring`` and
    unpickles only what ``allow`` admits (RQ takes any object with dumps and loads)."""

    def __init__(self, keyring: Keyring | None, allow: tuple[str, ...] = ()) -> None:
        self.keyring = keyring
        self.allow = allow
        # RQ's worker records ``serializer.__module__ + "." + serializer.__qualname__``.
        self.__qualname__ = type(self).__qualname__

    def __repr__(self) -> str:
        return f"JobSerializer({self.keyring!r}, allow={self.allow!r})"

    def dumps(self, obj: Any) -> bytes:
        body = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        return body if self.keyring is None else self.keyring.seal(body)

    def loads(self, data: bytes) -> Any:
        body = data if self.keyring is None else self.keyring.open(data, "RQ job data")
        return restricted_loads(body, self.allow)


def serializer_for(keyring: Keyring | None, allow: tuple[str, ...] = ()) -> JobSerializer | None:
    """The serializer for ``keyring`` and ``allow``; None (RQ's default pickle) when
    neither is set."""
    if keyring is None and not allow:
        return None
    return JobSerializer(keyring, allow)


def secret_env(secret: str | None, secret_file: str | None) -> dict[str, str]:
    """The environment that gives a worker process started here the same keyring."""
    if secret is not None:
        return {"FANOUT_SECRET": secret, "FANOUT_SECRET_FILE": ""}  # the file would win
    if secret_file is not None:
        return {"FANOUT_SECRET_FILE": secret_file}
    return {}


def keyring_of(serializer: Any) -> Keyring | None:
    """The keyring a job was read with: its results are sealed with the same one."""
    if serializer is SignedSerializer:
        return _env_keyring()
    keyring = getattr(serializer, "keyring", None)
    return keyring if isinstance(keyring, Keyring) else None


class SignedSerializer:
    """For a stock ``rq worker --serializer fanout.rq.SignedSerializer``: the keyring
    comes from ``FANOUT_SECRET_FILE`` or ``FANOUT_SECRET`` in the worker's environment."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _env_keyring().seal(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def loads(data: bytes) -> Any:
        return restricted_loads(_env_keyring().open(data, "RQ job data"), allowlist_from_env())


@functools.cache  # a stock worker's environment does not change while it runs
def _env_keyring() -> Keyring:
    keyring = load_keyring()
    if keyring is None:
        raise SignatureError(
            "fanout.rq.SignedSerializer needs FANOUT_SECRET or FANOUT_SECRET_FILE set"
        )
    return keyring
