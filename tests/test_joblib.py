"""joblib's Parallel, and scikit-learn's n_jobs, on fanout (``import fanout.joblib``)."""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import joblib
import joblib.test.test_parallel as joblib_tests
import pytest
from joblib import Parallel, delayed
from joblib.parallel import BatchedCalls
from redis import Redis
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import fanout.joblib
from fanout.joblib import columns_of
from tests.helpers import RQ_WORKERS, RedisServer, gone, wait_until

# joblib's own tests that take a backend name and test Parallel's behaviour, not the
# internals of joblib's process backends. Left out: test_error_capture (reads the
# workers of a loky or multiprocessing pool: `_pool`, `_workers`),
# test_parallel_unordered_generator_returns_fastest_first (fanout batches several calls
# to a worker once they measure quick, so a quick one can wait behind a slow one of the
# same batch), and the memmapping, initializer and threading tests (features of joblib's
# own backends).
JOBLIB_TESTS: list[tuple[str, dict[str, Any]]] = [
    ("test_simple_parallel", {"n_jobs": 2, "verbose": 0}),
    ("test_parallel_timeout_success", {}),
    ("test_parallel_timeout_fail", {}),
    ("test_parallel_timeout_fail_with_generator", {"return_as": "generator"}),
    ("test_lambda_expression", {}),
    ("test_parallel_pretty_print", {"n_jobs": 2}),
    ("test_njobs_converted_to_int", {"n_jobs": 2.0}),
    ("test_error_in_task_iterator", {}),
    ("test_multiple_generator_call", {"return_as": "generator", "n_jobs": 2}),
    ("test_multiple_generator_call_managed", {"return_as": "generator", "n_jobs": 2}),
    ("test_multiple_generator_call_separated",
     {"return_as_1": "generator", "return_as_2": "list", "n_jobs": 2}),
    ("test_nested_exception_dispatch", {}),
    ("test_abort_backend", {"n_jobs": 2}),
    ("test_parallel_as_context_manager", {}),
    ("test_invalid_njobs", {}),
    ("test_deadlock_with_generator", {"return_as": "generator", "n_jobs": 2}),
    ("test_backend_batch_statistics_reset", {}),
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_parked_executor() -> Iterator[None]:
    """Workers kept for the next call end with the test (the leftover check)."""
    yield
    fanout.joblib.parked.shutdown()


@pytest.mark.filterwarnings("ignore::UserWarning")  # joblib's note on cancelled tasks
@pytest.mark.parametrize(("name", "kwargs"), JOBLIB_TESTS, ids=[n for n, _ in JOBLIB_TESTS])
def test_joblibs_own_tests_pass_on_fanout(name: str, kwargs: dict[str, Any]) -> None:
    getattr(joblib_tests, name)(backend=fanout.joblib.NAME, **kwargs)


def test_parallel_with_results_in_order_and_as_a_generator() -> None:
    with joblib.parallel_config(backend="fanout", n_jobs=2):
        assert Parallel()(delayed(abs)(-i) for i in range(100)) == list(range(100))
        gen = Parallel(return_as="generator")(delayed(abs)(-i) for i in range(10))
        assert not isinstance(gen, list)
        assert list(gen) == list(range(10))


def test_a_time_out_stops_the_running_tasks_at_once() -> None:
    began = time.monotonic()
    with (
        joblib.parallel_config(backend="fanout", n_jobs=2),
        pytest.raises((TimeoutError, multiprocessing.TimeoutError)),  # joblib's choice
    ):
        Parallel(timeout=0.5)(delayed(time.sleep)(30) for _ in range(2))
    assert time.monotonic() - began < 10  # the sleeping tasks were not waited for


def test_a_task_error_is_raised_as_its_own_type() -> None:
    with (
        joblib.parallel_config(backend="fanout", n_jobs=2),
        pytest.raises(ValueError, match="math domain error"),
    ):
        Parallel()(delayed(math.sqrt)(x) for x in (1, -1, 4))


def power(x: int, y: int = 2) -> int:
    return int(x**y)


def halve(x: int) -> float:
    if x == 7:
        raise ArithmeticError(f"no half of {x} today")
    return x / 2


def nested_sum(n: int) -> int:
    return sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(n)))


def active_backend(_: int, *, label: str = "") -> tuple[str, int | None]:
    backend, _n_jobs = joblib.parallel.get_active_backend()
    return type(backend).__name__, backend.nesting_level


def batch_of(*calls: tuple[Any, ...]) -> BatchedCalls:
    return BatchedCalls(list(calls), (None, None))


class Always:
    """A callable equal to every other: only the very same object is the same call."""

    def __init__(self, add: int) -> None:
        self.add = add

    def __call__(self, x: int) -> int:
        return x + self.add

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class Raises(Always):
    def __init__(self) -> None:
        super().__init__(0)

    def __eq__(self, other: object) -> bool:
        raise TypeError("no comparing")

    __hash__ = object.__hash__


def test_a_batch_of_one_function_and_positional_arguments_travels_as_columns() -> None:
    assert columns_of(batch_of(*(delayed(power)(i, 3) for i in range(4)))) == (
        power, [[0, 1, 2, 3], [3, 3, 3, 3]],
    )  # fmt: skip
    numbers: list[int] = []  # bound methods of one object are the same call, not the same object
    assert columns_of(batch_of(delayed(numbers.append)(1), delayed(numbers.append)(2))) == (
        numbers.append, [[1, 2]],
    )  # fmt: skip


@pytest.mark.parametrize(
    "calls",
    [
        [delayed(power)(1), delayed(power)(2, y=3)],  # a keyword
        [delayed(power)(1), delayed(abs)(-2)],  # two functions
        [delayed(power)(1), delayed(power)(2, 3)],  # as many arguments
        [delayed(time.time)(), delayed(time.time)()],  # none at all
        [delayed(Always(1))(1), delayed(Always(2))(1)],  # equal, not the same
        [delayed(power)(1), delayed(Always(2))(1)],  # the second says it equals the first
        [delayed(power)(1), delayed(Raises())(1)],  # whose == raises
        [(power, {0: 5}, {})],  # arguments a mapping: *args would pass its keys
        [(power, (1,), {}, "a fourth")],  # not a (function, args, kwargs) triple
    ],
    ids=[
        "kwargs",
        "functions",
        "arity",
        "no-arguments",
        "equal-callables",
        "says-equal",
        "eq-raises",
        "mapping",
        "four",
    ],
)
def test_any_other_batch_travels_as_joblib_made_it(calls: list[tuple[Any, ...]]) -> None:
    assert columns_of(batch_of(*calls)) is None


def test_batches_of_every_shape_give_their_results_in_order() -> None:
    items = range(300)
    calls = [delayed(power)(i) if i % 3 else delayed(power)(i, y=1) for i in items]
    calls[150:200] = [delayed(abs)(-i) for i in range(150, 200)]
    expected = [abs(i) if 150 <= i < 200 else i if i % 3 == 0 else i * i for i in items]
    with joblib.parallel_config(backend="fanout", n_jobs=2):
        for batch_size in (1, 7, "auto"):
            assert Parallel(batch_size=batch_size)(calls) == expected
        assert Parallel()(delayed(power)(i, 3) for i in items) == [i**3 for i in items]


def test_a_failure_in_a_batch_of_columns_is_raised_as_its_own_type() -> None:
    with (
        joblib.parallel_config(backend="fanout", n_jobs=2),
        pytest.raises(ArithmeticError, match="no half of 7 today") as caught,
    ):
        Parallel(batch_size=4)(delayed(halve)(i) for i in range(12))
    remote = str(caught.value.__cause__)
    assert "run_columns" in remote  # it went as columns
    assert "in halve\n    raise ArithmeticError" in remote  # where it was raised


def test_calls_nested_in_a_batch_of_columns_run_in_its_worker() -> None:
    with joblib.parallel_config(backend="fanout", n_jobs=2):
        assert Parallel()(delayed(nested_sum)(n) for n in range(5)) == [0, 0, 1, 3, 6]
        as_columns = Parallel()(delayed(active_backend)(i) for i in range(4))
        as_made = Parallel()(delayed(active_backend)(i, label="kw") for i in range(4))
    assert as_columns == as_made == [("SequentialBackend", 1)] * 4


def worker_pids(backend: str | None = "fanout") -> set[int]:
    """The workers that ran a call (None: the backend of the parallel_config around it)."""
    return set(Parallel(n_jobs=2, backend=backend, batch_size=1)(
        delayed(os.getpid)() for _ in range(40)
    ))  # fmt: skip


def test_the_next_call_takes_the_workers_of_the_last_one() -> None:
    first = worker_pids()
    kept = fanout.joblib.parked.executor
    assert kept is not None
    assert worker_pids() <= first
    with Parallel(n_jobs=2, backend="fanout") as parallel:  # a managed backend too
        assert fanout.joblib.parked.executor is None  # taken
        assert set(parallel(delayed(os.getpid)() for _ in range(40))) <= first
    assert fanout.joblib.parked.executor is kept
    assert set(Parallel(n_jobs=3, backend="fanout")(delayed(os.getpid)() for _ in range(60))
               ).isdisjoint(first)  # fmt: skip
    wait_until(lambda: all(gone(pid) for pid in first), 10, "the 2 workers end: 3 are kept now")
    fanout.joblib.parked.shutdown()


def test_workers_of_a_failed_call_are_not_kept() -> None:
    first = worker_pids()
    with pytest.raises(ValueError, match="math domain error"):
        Parallel(n_jobs=2, backend="fanout")(delayed(math.sqrt)(x) for x in (1, -1, 4))
    wait_until(lambda: all(gone(pid) for pid in first), 10, "the aborted call's workers end")
    assert worker_pids().isdisjoint(first)


def test_workers_left_idle_end() -> None:
    with joblib.parallel_config(backend="fanout", idle_worker_timeout=0.1):
        first = worker_pids(None)
    wait_until(lambda: all(gone(pid) for pid in first), 10, "idle workers end")
    assert fanout.joblib.parked.executor is None
    with joblib.parallel_config(backend="fanout", idle_worker_timeout=0):
        first = worker_pids(None)
        assert fanout.joblib.parked.executor is None  # none kept at all
    wait_until(lambda: all(gone(pid) for pid in first), 10, "the call's workers end with it")


def test_a_forked_child_starts_workers_of_its_own() -> None:
    first = worker_pids()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            ok = fanout.joblib.parked.executor is None and worker_pids().isdisjoint(first)
            fanout.joblib.parked.shutdown()
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(child, 0)
    assert worker_pids() <= first


def grid_search(n_jobs: int) -> GridSearchCV:
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10, 100], "gamma": ["scale", 0.01, 0.1, 1]}
    return GridSearchCV(SVC(), grid, n_jobs=n_jobs).fit(X, y)


def assert_same_search(one: GridSearchCV, other: GridSearchCV) -> None:
    assert other.best_params_ == one.best_params_
    assert list(other.cv_results_["mean_test_score"]) == list(one.cv_results_["mean_test_score"])
    assert list(other.cv_results_["params"]) == list(one.cv_results_["params"])


def test_grid_search_on_local_workers_matches_n_jobs_1() -> None:
    alone = grid_search(1)
    with joblib.parallel_config(backend="fanout"):
        assert_same_search(alone, grid_search(2))


@pytest.mark.slow
def test_grid_search_on_two_rq_workers_matches_n_jobs_1(
    redis_server: RedisServer, rq_workers: list[str]
) -> None:
    def jobs_done() -> dict[str, int]:
        with Redis.from_url(redis_server.url) as connection:
            return {name: int(connection.hget(f"rq:worker:{name}", "successful_job_count") or 0)
                    for name in RQ_WORKERS}  # fmt: skip

    before = jobs_done()
    alone = grid_search(1)
    with joblib.parallel_config(backend="fanout", fanout_backend="rq",
                                redis_url=redis_server.url):  # fmt: skip
        assert_same_search(alone, grid_search(2))
    after = jobs_done()
    assert all(after[name] > before[name] for name in RQ_WORKERS), (before, after)


def test_without_joblib_the_import_says_what_to_install() -> None:
    code = "import sys; sys.modules['joblib'] = None; import fanout.joblib"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode != 0
    assert "pip install 'fanout[joblib]'" in done.stderr.splitlines()[-1]
