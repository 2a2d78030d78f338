"""TaskResult as users see it: a frozen C-built record, untracked by the collector."""

from __future__ import annotations

import base64
import copy
import gc
import json
import pickle
import tracemalloc
from itertools import repeat
from pathlib import Path

import msgspec
import pytest

import fanout
from fanout.models import FIELDS, TaskError, TaskResult, WorkerInfo

WHO = WorkerInfo("worker-1", 10, 9, "host", "local")


def a_result(**changes: object) -> TaskResult:
    fields = dict(index=3, ok=True, value=[1, 2], error=None, worker=WHO, attempts=1,
                  started_at=1.0, finished_at=2.0, duration=1.0, output="hi")  # fmt: skip
    fields.update(changes)
    return TaskResult(**fields)  # type: ignore[arg-type]


def test_a_result_is_the_record_users_know() -> None:
    made = a_result()
    built = TaskResult(3, True, [1, 2], None, WHO, 1, 1.0, 2.0, 1.0, "hi")
    assert made == built
    assert repr(made) == (
        "TaskResult(index=3, ok=True, value=[1, 2], error=None, worker=WorkerInfo("
        "name='worker-1', pid=10, ppid=9, host='host', backend='local'), attempts=1,"
        " started_at=1.0, finished_at=2.0, duration=1.0, output='hi', usage=None)"
    )
    assert FIELDS == ("index", "ok", "value", "error", "worker", "attempts", "started_at",
                      "finished_at", "duration", "output", "usage")  # fmt: skip
    assert msgspec.structs.asdict(made)["worker"].host == "host"
    assert msgspec.structs.replace(made, index=4).index == 4
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.deepcopy(made) == made
    assert made.unwrap() == [1, 2]
    with pytest.raises(AttributeError):
        made.index = 5  # type: ignore[misc]
    assert not hasattr(made, "__dict__")
    assert not gc.is_tracked(made)  # what a run keeps costs the collector nothing
    assert hash(WHO) == hash(WorkerInfo("worker-1", 10, 9, "host", "local"))


def test_an_errors_pickled_exception_is_left_out_of_eq_hash_and_repr() -> None:
    raised = TaskError("ValueError", "bad", "tb", pickled=pickle.dumps(ValueError("bad")))
    plain = TaskError("ValueError", "bad", "tb")
    assert raised == plain
    assert hash(raised) == hash(plain)
    assert repr(raised) == (
        "TaskError(type='ValueError', message='bad', traceback='tb', cause=None, signal=None,"
        " exit_code=None)"
    )
    assert isinstance(raised.exception(), ValueError)
    assert plain.exception() is None
    assert raised != TaskError("ValueError", "other", "tb")
    assert pickle.loads(pickle.dumps(raised)).pickled == raised.pickled


def test_why_and_what_it_cost_are_part_of_a_result() -> None:
    """Usage and the error's cause, signal and exit code: compared, printed, pickled,
    in to_dict() (the --json shape)."""
    usage = fanout.Usage(0.25, 64 * 2**20)
    killed = TaskError("WorkerLost", "killed", cause="killed", signal=9)
    result = a_result(ok=False, value=None, error=killed, usage=usage)
    assert pickle.loads(pickle.dumps(result)) == result
    assert killed != TaskError("WorkerLost", "killed", cause="oom-killed", signal=9)
    assert "cause='killed', signal=9, exit_code=None" in repr(killed)
    assert repr(usage) == "Usage(cpu=0.25, max_rss=67108864)"
    as_json = result.to_dict()
    assert as_json["usage"] == {"cpu": 0.25, "max_rss": 64 * 2**20}
    assert as_json["error"]["cause"] == "killed"
    assert (as_json["error"]["signal"], as_json["error"]["exit_code"]) == (9, None)
    assert not gc.is_tracked(usage)
    with pytest.raises(AttributeError):
        usage.cpu = 1.0  # type: ignore[misc]


def test_a_failure_unwraps_to_task_failed() -> None:
    failed = a_result(ok=False, value=None, error=TaskError("ValueError", "bad"))
    with pytest.raises(fanout.TaskFailed, match="bad"):
        failed.unwrap()


EARLIER = json.loads((Path(__file__).parent / "data" / "earlier_pickles.json").read_text())


@pytest.mark.parametrize("protocol", ["2", "5"])
@pytest.mark.parametrize("commit", sorted(EARLIER["pickles"]))
def test_results_pickled_by_an_earlier_release_load_as_todays(commit: str, protocol: str) -> None:
    """a39cf1f: TaskResult a dataclass without slots (its state a dict); 26260d8, the
    last release of dataclasses: every record slotted (its state the field values);
    e7d3722: msgspec Structs before usage and causes (they load with None for both)."""
    ok, bad, who, error = pickle.loads(base64.b64decode(EARLIER["pickles"][commit][protocol]))
    worker = WorkerInfo("worker-2", 4242, 4241, "box-a", "local")
    assert who == worker
    assert type(who) is WorkerInfo
    assert ok == TaskResult(3, True, [1, 2], None, worker, 1, 1.5, 2.5, 1.0, "hi\n")
    assert bad == TaskResult(4, False, None, error, worker, 2, 3.0, 3.25, 0.25, "")
    assert (error.type, error.message) == ("ValueError", "bad input")
    assert isinstance(error.exception(), ValueError)
    assert bad.error is not None
    assert bad.error.exception() is not None
    assert type(ok) is TaskResult
    assert (ok.usage, bad.usage, error.cause, error.signal, error.exit_code) == (None,) * 5
    assert not gc.is_tracked(ok)
    assert pickle.loads(pickle.dumps(ok)) == ok  # and they pickle as today's


def test_a_kept_result_costs_at_most_260_bytes() -> None:
    count = 20_000
    values = list(range(1000, 1000 + count))  # made before: not the result's cost
    cpu, rss = [n * 1e-7 for n in values], [n * 4096 for n in values]
    usages = map(fanout.Usage, cpu, rss)
    columns = (values, repeat(True), values, repeat(None), repeat(WHO), repeat(1),
               repeat(1.0), repeat(2.0), repeat(1.0), repeat(""), usages)  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = list(map(TaskResult, *columns))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    assert used / count <= 260


def test_building_many_results_never_wakes_the_collector() -> None:
    """Results are not tracked by the cyclic collector: a run keeping 200,000 of them
    triggers no collection (a dataclass per result triggered dozens, and the caller
    paused the collector while it built each batch)."""
    count = 200_000
    values = list(range(count))
    gc.collect()
    before = gc.get_stats()[0]["collections"]
    kept = list(map(TaskResult, values, repeat(True), values, repeat(None), repeat(WHO),
                    repeat(1), repeat(1.0), repeat(2.0), repeat(1.0), repeat("")))  # fmt: skip
    assert gc.get_stats()[0]["collections"] == before
    assert len(kept) == count


def test_results_pickled_by_an_earlier_release_load_on_python_3_13_too() -> None:
    """Loading them reaches into the record types (fanout/_records.py): the same on the
    newest Python the suite runs, in an interpreter of its own."""
    import subprocess

    from tests.test_cpython_suites import python313

    check = (
        "import base64, json, pickle, sys; from fanout.models import TaskResult;"
        " data = json.load(open(sys.argv[1]))['pickles'];"
        " loaded = [pickle.loads(base64.b64decode(p)) for c in data.values() for p in c.values()];"
        " assert all(type(ok) is TaskResult and ok.value == [1, 2] for ok, *_ in loaded), loaded"
    )
    path = Path(__file__).parent / "data" / "earlier_pickles.json"
    subprocess.run([python313(), "-c", check, str(path)], check=True, timeout=60)
