"""Helpers for testing code that uses fanout, and backends written for it.

- :mod:`fanout.testing.contract`: the backend contract's tests, for a third-party
  backend's own test suite (see :mod:`fanout.backends.base`): ``map``, and where the
  backend has them the drive interface (``fanout.Executor``, ``fanout.Pool`` and
  ``fanout.AsyncFanout`` run on it) and durable runs.
- :mod:`fanout.testing.tasks`: the task functions those tests run, importable by name on
  any worker where fanout is installed.

Nothing here is imported by ``import fanout``; the contract needs pytest.
"""
