"""TaskResult as users see it (a frozen slotted dataclass), and the collector pause that
building many of them runs under."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import threading
import tracemalloc
from collections.abc import Iterator
from itertools import repeat

import pytest

import fanout
from fanout import _gc
from fanout.models import FIELDS, TaskError, TaskResult, WorkerInfo, make_result, results_of

WHO = WorkerInfo("worker-1", 10, 9, "host", "local")


def a_result(**changes: object) -> TaskResult:
    fields = dict(index=3, ok=True, value=[1, 2], error=None, worker=WHO, attempts=1,
                  started_at=1.0, finished_at=2.0, duration=1.0, output="hi")  # fmt: skip
    fields.update(changes)
    return make_result(**fields)  # type: ignore[arg-type]


def test_made_fast_it_is_the_dataclass_users_know() -> None:
    made = a_result()
    built = TaskResult(3, True, [1, 2], None, WHO, 1, 1.0, 2.0, 1.0, "hi")
    assert made == built
    assert repr(made) == repr(built)
    assert tuple(f.name for f in dataclasses.fields(TaskResult)) == FIELDS
    assert dataclasses.asdict(made)["worker"]["host"] == "host"
    assert dataclasses.replace(made, index=4).index == 4
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.deepcopy(made) == made
    assert made.unwrap() == [1, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.index = 5  # type: ignore[misc]
    assert not hasattr(made, "__dict__")  # slots: the one change users can see


def test_a_failure_unwraps_to_task_failed() -> None:
    failed = a_result(ok=False, value=None, error=TaskError("ValueError", "bad"))
    with pytest.raises(fanout.TaskFailed, match="bad"):
        failed.unwrap()


def test_results_of_fills_every_field_a_column_at_a_time() -> None:
    results = results_of(3, ([0, 1, 2], repeat(True), "abc", repeat(None), repeat(WHO),
                             repeat(1), [1.0] * 3, [2.0] * 3, [1.0] * 3, repeat("")))  # fmt: skip
    assert [r.value for r in results] == ["a", "b", "c"]
    assert results[2] == TaskResult(2, True, "c", None, WHO, 1, 1.0, 2.0, 1.0, "")


def test_a_kept_result_costs_at_most_260_bytes() -> None:
    count = 20_000
    values = list(range(1000, 1000 + count))  # made before: not the result's cost
    columns = (values, repeat(True), values, repeat(None), repeat(WHO),
               repeat(1), repeat(1.0), repeat(2.0), repeat(1.0), repeat(""))  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = results_of(count, columns)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    assert used / count <= 260


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_pause_lifts_after_an_exception(collector_on: None) -> None:
    during: list[bool] = []

    def build() -> None:
        with _gc.paused:
            during.append(gc.isenabled())
            raise RuntimeError("while a batch was built")

    with pytest.raises(RuntimeError):
        build()
    assert during == [False]
    assert gc.isenabled()


def test_a_run_whose_batch_fails_to_build_leaves_the_collector_on(
    collector_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> list[TaskResult]:
        raise MemoryError("no room for the results")

    monkeypatch.setattr("fanout.backends.runstate.results_of", broken)
    with pytest.raises(MemoryError):
        fanout.run(abs, range(100), backend="inline")
    assert gc.isenabled()


def test_the_pause_never_turns_on_a_collector_the_user_turned_off(collector_on: None) -> None:
    gc.disable()
    with _gc.paused:
        with _gc.paused:
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled()
    results = fanout.run(abs, range(-50, 50))  # a whole run leaves it as the user set it
    assert len(results) == 100
    assert not gc.isenabled()


def test_threads_share_the_pause_until_the_last_leaves(collector_on: None) -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other_thread() -> None:
        with _gc.paused:
            entered.set()
            release.wait(10)
        seen.append(gc.isenabled())

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert entered.wait(10)
    with _gc.paused:
        pass
    assert not gc.isenabled()  # the other thread is still building its batch
    release.set()
    thread.join(10)
    assert seen == [True]
    assert gc.isenabled()


def test_a_run_leaves_the_collector_on(collector_on: None) -> None:
    results = fanout.run(abs, range(-500, 500))
    assert [r.value for r in results] == [abs(i) for i in range(-500, 500)]
    assert gc.isenabled()


def test_a_result_pickled_before_slots_still_loads() -> None:
    # pickle.dumps of a result by fanout at a39cf1f (Python 3.11), when TaskResult had a
    # __dict__: the class, then that dict as the state.
    old = (
        b"\x80\x04\x95\xdb\x00\x00\x00\x00\x00\x00\x00\x8c\rfanout.models\x94\x8c\nTaskR"
        b"esult\x94\x93\x94)\x81\x94}\x94(\x8c\x05index\x94K\x01\x8c\x02ok\x94\x88\x8c"
        b"\x05value\x94K\x02\x8c\x05error\x94N\x8c\x06worker\x94h\x00\x8c\nWorkerInfo"
        b"\x94\x93\x94)\x81\x94]\x94(\x8c\x01a\x94K\x01K\x02\x8c\x01h\x94\x8c\x05local"
        b"\x94eb\x8c\x08attempts\x94K\x01\x8c\nstarted_at\x94G?\xf0\x00\x00\x00\x00\x00"
        b"\x00\x8c\x0bfinished_at\x94G@\x00\x00\x00\x00\x00\x00\x00\x8c\x08duration\x94G"
        b"?\xf0\x00\x00\x00\x00\x00\x00\x8c\x06output\x94\x8c\x00\x94ub."
    )
    loaded = pickle.loads(old)
    assert loaded == TaskResult(1, True, 2, None, WorkerInfo("a", 1, 2, "h", "local"), 1,
                                1.0, 2.0, 1.0, "")  # fmt: skip
