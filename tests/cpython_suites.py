"""CPython's own tests of ``ProcessPoolExecutor`` and ``multiprocessing.Pool``, run against
``fanout.Executor`` and ``fanout.Pool`` — the way loky binds them to its executor.

Python 3.13 ships its test package (``import test.test_concurrent_futures``); this module
needs it, so it runs under Python 3.13 (``tests/test_cpython_suites.py`` starts it there;
by hand: ``.venv313/bin/python -m pytest tests/cpython_suites.py``). The backend comes
from ``FANOUT_SUITE_BACKEND`` (``local`` by default; ``rq`` also needs
``FANOUT_SUITE_REDIS_URL`` and ``FANOUT_SUITE_QUEUE``, served by workers started for it).

Bound here, unchanged: ``executor.ExecutorTest``, ``test_wait.WaitTests``,
``test_as_completed.AsCompletedTests``, ``test_shutdown.ExecutorShutdownTest`` and
``_test_multiprocessing._TestPool``. What does not run, and why, is in ``EXCLUDED``.
"""

from __future__ import annotations

import os
import sys
import unittest
from typing import Any

from test import _test_multiprocessing as mp_suite
from test.support.script_helper import assert_python_ok
from test.test_concurrent_futures import executor as cf_executor
from test.test_concurrent_futures import test_as_completed, test_shutdown, test_wait
from test.test_concurrent_futures import util as cf_util

import fanout

BACKEND = os.environ.get("FANOUT_SUITE_BACKEND", "local")
OPTIONS: dict[str, Any] = {}
if BACKEND == "rq":
    OPTIONS = {
        "redis_url": os.environ["FANOUT_SUITE_REDIS_URL"],
        "queue": os.environ["FANOUT_SUITE_QUEUE"],
    }

# Tests that cannot pass against another implementation, each with its reason.
EXCLUDED = {
    "test_make_pool": "its last assertion counts multiprocessing.Pool's private _pool list"
    " (fanout starts workers on demand and keeps no such list); the ValueError checks of"
    " processes=0 and -1 run in test_dropin.py",
}


def _executor(max_workers: int | None = None, **kwargs: Any) -> fanout.Executor:
    if BACKEND == "rq":
        # The module's workers serve the queue: max_workers=N would start N more per test.
        # It is still checked (test_max_workers_negative).
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        max_workers = None
    return fanout.Executor(max_workers, backend=BACKEND, **OPTIONS, **kwargs)


def _pool(processes: int | None = None, *args: Any, **kwargs: Any) -> fanout.Pool:
    if BACKEND == "rq" and processes is not None:
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        processes = None
    return fanout.Pool(processes, *args, backend=BACKEND, **OPTIONS, **kwargs)


class FanoutExecutorMixin(cf_util.ExecutorMixin):
    executor_type = staticmethod(_executor)


_SCRIPT_HEAD = """if 1:
    import sys
    sys.path[:0] = {path!r}
    import os
    os.environ.update({env!r})
    import fanout
    from test.test_concurrent_futures.test_shutdown import sleep_and_print
    backend = {backend!r}
    options = {options!r}
"""


class FanoutShutdownTest(test_shutdown.ExecutorShutdownTest):
    """The generic shutdown tests; three of them start an interpreter that names
    ``concurrent.futures``' class: here the same scripts name fanout's."""

    def _script(self, body: str) -> tuple[int, bytes, bytes]:
        head = _SCRIPT_HEAD.format(path=sys.path, env={}, backend=BACKEND, options=OPTIONS)
        return assert_python_ok("-c", head + body)  # type: ignore[no-any-return]

    def test_interpreter_shutdown(self) -> None:
        _rc, out, err = self._script("""
    if __name__ == "__main__":
        t = fanout.Executor(5 if backend != "rq" else None, backend=backend, **options)
        t.submit(sleep_and_print, 1.0, "apple")
""")
        assert not err
        assert out.strip() == b"apple"

    def test_submit_after_interpreter_shutdown(self) -> None:
        _rc, out, err = self._script("""
    import atexit
    @atexit.register
    def run_last():
        try:
            t.submit(id, None)
        except RuntimeError:
            print("runtime-error")
            raise
    if __name__ == "__main__":
        t = fanout.Executor(5 if backend != "rq" else None, backend=backend, **options)
        t.submit(id, 42).result()
""")
        assert "RuntimeError: cannot schedule new futures" in err.decode()
        assert out.strip() == b"runtime-error"

    def test_hang_gh83386(self) -> None:
        _rc, out, err = self._script("""
    if __name__ == "__main__":
        t = fanout.Executor(3 if backend != "rq" else None, backend=backend, **options)
        t.submit(sleep_and_print, 1.0, "apple")
        t.shutdown(wait=False)
""")
        assert not err
        assert out.strip() == b"apple"


def _bind(name: str, *bases: type) -> None:
    cls = type(name, bases, {"__module__": __name__})
    for test in EXCLUDED:
        if hasattr(cls, test):
            reason = EXCLUDED[test]
            setattr(cls, test, unittest.skip(reason)(getattr(cls, test)))
    globals()[name] = cls


class FanoutPoolMixin(mp_suite.BaseMixin):
    TYPE = "processes"
    Pool = staticmethod(_pool)


# As CPython binds them: the tests first, then the mixin that makes the executor or pool.
_bind("ExecutorTest", cf_executor.ExecutorTest, FanoutExecutorMixin, cf_util.BaseTestCase)
_bind("WaitTests", test_wait.WaitTests, FanoutExecutorMixin, cf_util.BaseTestCase)
_bind(
    "AsCompletedTests",
    test_as_completed.AsCompletedTests,
    FanoutExecutorMixin,
    cf_util.BaseTestCase,
)
_bind("ShutdownTest", FanoutShutdownTest, FanoutExecutorMixin, cf_util.BaseTestCase)
_bind("PoolTest", mp_suite._TestPool, FanoutPoolMixin, unittest.TestCase)
