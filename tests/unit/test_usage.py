"""How a usage reading's CPU is shared among the tasks it covers (fanout/_usage.py)."""

from __future__ import annotations

import math

import pytest

from fanout._usage import UNEVEN, runs


def spread(found: list[tuple[int, float]]) -> list[float]:
    """Each task's CPU, from runs."""
    return [each for count, each in found for _ in range(count)]


def test_tasks_of_like_durations_are_one_run_however_many() -> None:
    durations = [1e-6 * (1 + (k % 3)) for k in range(1000)]  # none over 4x the mean
    assert runs(0.5, durations) == [(1000, 0.5 / 1000)]


def test_a_task_that_took_longer_is_a_run_of_its_own_charged_by_duration() -> None:
    durations = [1e-6] * 10 + [1e-3] + [1e-6] * 20
    found = runs(0.002, durations)
    assert [count for count, _ in found] == [10, 1, 20]
    cpu = spread(found)
    assert math.isclose(sum(cpu), 0.002)
    total = sum(durations)
    assert cpu[10] == pytest.approx(0.002 * 1e-3 / total)
    assert cpu[0] == pytest.approx(0.002 * 1e-6 / total)


def test_outliers_first_last_and_side_by_side_each_stand_alone() -> None:
    durations = [1e-3, 1e-3] + [1e-6] * 30 + [5e-4]
    assert min(1e-3, 5e-4) > UNEVEN * sum(durations) / len(durations)
    found = runs(1.0, durations)
    assert [count for count, _ in found] == [1, 1, 30, 1]
    assert math.isclose(sum(spread(found)), 1.0)


def test_nothing_measured_and_no_time_taken() -> None:
    assert runs(1.0, []) == []
    ((count, each),) = runs(0.3, [0.0, 0.0, 0.0])
    assert (count, each) == (3, pytest.approx(0.1))
