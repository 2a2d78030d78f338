"""The path of earlier releases for :mod:`fanout.rq`'s ``SignedSerializer``: an alias."""

from fanout.rq import SignedSerializer

__all__ = ["SignedSerializer"]
