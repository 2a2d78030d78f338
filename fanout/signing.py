"""Stable dotted path for a stock ``rq worker --serializer fanout.signing.SignedSerializer``
(docs/security.md). The code is in :mod:`fanout.backends.rq.signing`."""

from fanout.backends.rq.signing import SignedSerializer

__all__ = ["SignedSerializer"]
