"""The Driver, Calls and Budget (fanout/driving.py) on the stub backend
(tests/stub_backend.py): runs started, handed on, ended, abandoned; a backend that
fails; one run serving many calls. Threads only, no process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from fanout._wire import OK_RAW, OUTPUT, PAYLOAD, STATUS, Record
from fanout.backends.runstate import RunState
from fanout.backends.spec import MapSpec
from fanout.calls import Call
from fanout.driving import Budget, Calls, Driver
from fanout.errors import BackendUnavailable, WorkerLost
from fanout.models import TaskResult
from tests import tasks
from tests.stub_backend import Job, StubBackend, Worker

Values = list[tuple[Sequence[int], list[Any], str]]


class Recorder:
    """A Sink that keeps what it is told."""

    def __init__(self) -> None:
        self.results: list[TaskResult] = []
        self.values: Values = []
        self.error: BaseException | None = None
        self.ended = threading.Event()

    def deliver(self, run: RunState, results: list[TaskResult]) -> None:
        self.results += results

    def deliver_values(self, run: RunState, chunks: Values) -> None:
        self.values += chunks

    def finished(self, run: RunState, error: BaseException | None) -> None:
        self.error = error
        self.ended.set()

    def wait(self) -> Recorder:
        assert self.ended.wait(30), "the run did not end"
        return self


class Gate:
    """A task that waits until the test opens the gate (threads cannot be killed)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, x: Any) -> Any:
        self.entered.release()
        assert self.open.wait(30)
        return x

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=30), "no task entered the gate"


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A Gate that calls can carry: a Call is pickled on its way (as to a process), and
    ``gated`` pickles by name, finding this gate again in this process."""
    global GATE
    GATE = Gate()
    yield GATE
    GATE.open.set()


GATE = Gate()


def gated(x: Any) -> Any:
    return GATE(x)


class BareStub(StubBackend):
    """The stub, handing a bare run's successes on as values, as the local backend does."""

    def _receive(self, message: tuple[Worker, Job, list[Record]] | None) -> None:
        if message is not None:
            worker, job, records = message
            if job.run.spec.bare and all(r[STATUS] == OK_RAW for r in records):
                worker.job = None
                output = "".join(r[OUTPUT] for r in records)
                job.run.settle_values(job.batch.indices, [r[PAYLOAD] for r in records], output)
                return
        super()._receive(message)


class FailingStub(StubBackend):
    def pump(self, max_wait: float | None) -> None:
        raise BackendUnavailable("the service went away")


@pytest.fixture
def make_driver() -> Iterator[Callable[..., tuple[Driver, StubBackend]]]:
    made: list[tuple[Driver, StubBackend]] = []

    def make(cls: type[StubBackend] = StubBackend, workers: int = 2, echo: bool = False
             ) -> tuple[Driver, StubBackend]:  # fmt: skip
        backend = cls(workers)
        driver = Driver(backend, "test-driver", echo_output=echo)
        made.append((driver, backend))
        return driver, backend

    yield make
    for driver, backend in made:
        driver.stop(abandon=RuntimeError("the test ended"))
        backend.close(cancel=True)


def spec(fn: Callable[..., Any], items: Any, **options: Any) -> MapSpec:
    return MapSpec(fn, None, iter(items), **{"ordered": False, **options})


def test_a_runs_results_reach_its_sink_and_the_run_ends_once_done(make_driver: Any) -> None:
    driver, backend = make_driver()
    sink = Recorder()
    run = driver.start(spec(tasks.square, range(20)), sink)
    sink.wait()
    assert sorted((r.index, r.value) for r in sink.results) == [(x, x * x) for x in range(20)]
    assert sink.error is None
    assert run not in backend.runs  # end_run once its last result was handed on
    assert not run.ready


def test_a_bare_runs_values_are_handed_on_in_chunks_and_what_they_printed_echoed(
    make_driver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    driver, _ = make_driver(BareStub, echo=True)
    sink = Recorder()
    driver.start(spec(tasks.chatty, [1, 2], bare=True), sink)
    sink.wait()
    assert sink.results == []
    assert sorted((list(i), v) for i, v, _ in sink.values) == [([0], [1]), ([1], [2])]
    out = capsys.readouterr().out
    assert "out 1\nerr 1\n" in out
    assert "out 2\nerr 2\n" in out


def test_what_tasks_print_is_echoed_only_when_asked(
    make_driver: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for echo in (True, False):
        driver, _ = make_driver(echo=echo)
        sink = Recorder()
        driver.start(spec(tasks.chatty, [7]), sink)
        assert [r.output for r in sink.wait().results] == ["out 7\nerr 7\n"]
        assert ("out 7" in capsys.readouterr().out) is echo


def test_the_inputs_error_reaches_the_sink_after_the_results(make_driver: Any) -> None:
    def items() -> Iterator[int]:
        yield from range(3)
        raise OSError("the input broke")

    driver, _ = make_driver()
    sink = Recorder()
    driver.start(spec(tasks.square, items()), sink)
    sink.wait()
    assert sorted(r.value for r in sink.results) == [0, 1, 4]
    assert isinstance(sink.error, OSError)


def test_ending_a_run_early_drops_it_and_frees_its_workers(make_driver: Any) -> None:
    driver, backend = make_driver(workers=1)
    gate, sink = Gate(), Recorder()
    try:
        run = driver.start(spec(gate, range(5)), sink)
        gate.wait_entered()
        driver.end(run)
        assert run not in backend.runs
        assert backend.threads == []  # its busy thread left to finish alone
        again = Recorder()
        driver.start(spec(tasks.square, [3]), again)
        assert [r.value for r in again.wait().results] == [9]
        assert not sink.ended.is_set()  # a run ended by its consumer is not "finished"
    finally:
        gate.open.set()


def test_ask_runs_a_request_in_the_drivers_thread(make_driver: Any) -> None:
    driver, _ = make_driver()
    assert driver.ask(lambda: threading.current_thread().name) == "test-driver"

    def refuse() -> None:
        raise KeyError("no")

    with pytest.raises(KeyError, match="no"):
        driver.ask(refuse)


def test_stop_waits_for_every_run_to_hand_on_its_last_result(make_driver: Any) -> None:
    driver, _ = make_driver()
    gate, sink = Gate(), Recorder()
    driver.start(spec(gate, [1, 2]), sink)
    gate.wait_entered()
    stopper = threading.Thread(target=driver.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # a task of a run still runs
    gate.open.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert sorted(r.value for r in sink.wait().results) == [1, 2]
    assert driver.ended
    caller = threading.current_thread().name
    assert driver.ask(lambda: threading.current_thread().name) == caller  # no thread now


def test_stop_with_abandon_ends_every_run_and_tells_its_sink(make_driver: Any) -> None:
    driver, backend = make_driver()
    gate, sink = Gate(), Recorder()
    try:
        driver.start(spec(gate, [1]), sink)
        gate.wait_entered()
        driver.stop(abandon=WorkerLost("terminated"))
        assert isinstance(sink.wait().error, WorkerLost)
        assert backend.runs == []
    finally:
        gate.open.set()


def test_a_failing_backend_fails_every_waiter_and_every_later_request(make_driver: Any) -> None:
    driver, _ = make_driver(FailingStub)
    sink = Recorder()
    driver.start(spec(tasks.square, [1]), sink)  # its loop pumps once the run is in
    assert isinstance(sink.wait().error, BackendUnavailable)
    with pytest.raises(BackendUnavailable, match="went away"):
        driver.start(spec(tasks.square, [2]), Recorder())
    driver.stop()


class Waiter:
    def __init__(self, cancel: Callable[[], bool]) -> None:
        self.cancel = cancel
        self.result: TaskResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def settle(self, result: TaskResult, run: RunState) -> None:
        self.result = result
        self.done.set()

    def abandon(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def test_one_run_serves_every_call_each_result_to_its_waiter(make_driver: Any) -> None:
    driver, _ = make_driver()
    calls = Calls(driver)
    waiters = [calls.put(Call(tasks.add, (i, 100), {}), Waiter) for i in range(10)]
    for waiter in waiters:
        assert waiter.done.wait(30)
    assert [w.result.value for w in waiters if w.result] == list(range(100, 110))
    calls.close()
    driver.stop()  # returns: the calls' run ends once closed and its results are in


def test_a_call_no_worker_has_is_cancelled_and_gets_its_cancelled_result(
    make_driver: Any, gate: Gate
) -> None:
    driver, _ = make_driver(workers=1)
    calls = Calls(driver)
    busy = calls.put(Call(gated, (1,), {}), Waiter)
    gate.wait_entered()  # the only worker is busy: the other calls wait in the feed
    queued = [calls.put(Call(tasks.square, (i,), {}), Waiter) for i in range(3)]
    assert queued[0].cancel()
    assert {id(w) for w in calls.cancel_pending()} == {id(queued[1]), id(queued[2])}
    assert not busy.cancel()  # a worker has it: it counts as running
    gate.open.set()
    for waiter in [busy, *queued]:
        assert waiter.done.wait(30)
    assert busy.result is not None
    assert busy.result.value == 1
    for waiter in queued:  # taken from the feed once the worker was free: never run
        assert waiter.result is not None
        assert waiter.result.error is not None
        assert (waiter.result.error.type, waiter.result.attempts) == ("Cancelled", 0)


def test_waiters_left_when_the_calls_run_is_abandoned_hear_why(
    make_driver: Any, gate: Gate
) -> None:
    driver, _ = make_driver(workers=1)
    calls = Calls(driver)
    try:
        waiter = calls.put(Call(gated, (1,), {}), Waiter)
        gate.wait_entered()
        driver.stop(abandon=WorkerLost("the pool was terminated"))
        assert waiter.done.wait(30)
        assert isinstance(waiter.error, WorkerLost)
    finally:
        gate.open.set()


def test_a_budget_bounds_reading_ahead_and_wakes_the_run_once_half_is_free() -> None:
    woken: list[bool] = []
    budget = Budget(10, lambda: woken.append(True))
    assert budget.room(0) == 10
    assert budget.room(10) == 0  # ten read, none taken: the run waits
    budget.took(4)
    assert woken == []  # 6 still ahead: more than half the budget
    budget.took(1)
    assert woken == [True]  # half free: the run reads on
    assert budget.room(10) == 5
    budget.took(5)
    assert woken == [True]  # it was not waiting
