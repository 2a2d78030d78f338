"""Faults on the local backend: every submitted task yields exactly one result, nothing
hangs (pytest-timeout is the outer watchdog), nothing is left running (conftest)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import psutil
import pytest

from fanout import Fanout
from tests import tasks


def exactly_one_each(results, count: int) -> None:
    indices = sorted(r.index for r in results)
    assert indices == list(range(count)), "not exactly one result per input"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chaos_random_sigkills_with_retries_lose_nothing() -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    stop = threading.Event()
    kills = []

    def killer() -> None:
        rng = random.Random(1)
        while not stop.wait(0.05):
            workers = [p for p in me.children() if p.pid not in before]
            if workers:
                victim = rng.choice(workers)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                    kills.append(victim.pid)
                except ProcessLookupError:
                    pass

    items = [random.Random(i).uniform(0.005, 0.02) for i in range(300)]
    with Fanout("local", workers=2) as fo:
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            results = list(fo.map(tasks.sleep_for, items, retries=10, ordered=False))
        finally:
            stop.set()
            thread.join()
    exactly_one_each(results, len(items))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert len(kills) >= 10, f"only {len(kills)} kills: the chaos did not happen"
    # Kills landed mid-task: those tasks were retried, and their attempts say so.
    assert any(r.attempts > 1 for r in results), "no task was ever retried"


@pytest.mark.timeout(60)
def test_every_fault_kind_in_one_run_gives_one_result_each(tmp_path) -> None:
    import threading as th

    def mixed(kind: str):
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "exit":
            os._exit(3)
        if kind == "hang":
            time.sleep(60)
        if kind == "raise":
            raise ValueError(kind)
        if kind == "unpicklable":
            return th.Lock()
        return kind

    kinds = ["ok", "kill", "ok", "exit", "hang", "raise", "unpicklable", "ok"] * 3
    with Fanout("local", workers=2) as fo:
        results = list(fo.map(mixed, kinds, timeout=1.0, ordered=True))
    exactly_one_each(results, len(kinds))
    expected = {
        "ok": None,
        "kill": "WorkerLost",
        "exit": "WorkerLost",
        "hang": "TaskTimeout",
        "raise": "ValueError",
        "unpicklable": "SerializationError",
    }
    for r, kind in zip(results, kinds, strict=True):
        assert (r.error.type if r.error else None) == expected[kind], (kind, r.error)
