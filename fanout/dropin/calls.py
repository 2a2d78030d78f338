"""The drop-ins' calls under the path an earlier fanout gave them: jobs it enqueued on
rq name ``fanout.dropin.calls:call`` as their target and pickle
``fanout.dropin.calls.Call``. They live in :mod:`fanout.calls`; this alias keeps those
jobs running (the same objects, under both names)."""

from fanout.calls import TARGET, Call, Init, call

__all__ = ["TARGET", "Call", "Init", "call"]
