"""Helpers for testing code that uses fanout, and backends written for it.

- :mod:`fanout.testing.contract`: the backend contract's tests, for a third-party
  backend's own test suite (see :mod:`fanout.backends.base`).
- :mod:`fanout.testing.tasks`: the task functions those tests run, importable by name on
  any worker where fanout is installed.

Nothing here is imported by ``import fanout``; the contract needs pytest.
"""
