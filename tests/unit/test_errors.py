"""The error vocabulary (fanout/errors.py): every ``error.type`` fanout itself puts in a
result is a class there, made from its message alone, so the drop-ins raise it as
itself. In-process, no worker started."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import fanout
from fanout import errors
from fanout.backends.base import MapSpec
from fanout.backends.runstate import RunState
from fanout.dropin.common import exception_of
from fanout.models import TaskError, TaskResult, WorkerInfo

PACKAGE = Path(fanout.__file__).parent


def vocabulary() -> list[str]:
    """The names errors.py's docstring lists, a bullet each, as the vocabulary of
    failed results."""
    bullets = re.findall(r"^- (.*)$", errors.__doc__ or "", flags=re.M)
    return sorted({name for line in bullets for name in re.findall(r"``([A-Z]\w+)``", line)})


def error_types_in_the_source() -> set[str]:
    """Every error type fanout's own code builds a TaskError with, by name: a string,
    or ``SomeClass.__name__``."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "TaskError"):
                continue
            if not node.args:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
            elif (
                isinstance(first, ast.Attribute)
                and first.attr == "__name__"
                and isinstance(first.value, ast.Name)
            ):
                found.add(first.value.id)
    return found


def test_the_vocabulary_is_listed_once_and_each_name_is_a_class_of_the_tree() -> None:
    names = vocabulary()
    assert {"Cancelled", "JobCanceled", "JobStopped", "WorkerLost", "TaskTimeout"} <= set(names)
    for name in names:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.FanoutError), name
        assert cls.__doc__, name
        assert cls.__doc__.strip(), name


def test_every_error_type_fanout_reports_is_a_class_in_errors() -> None:
    """``TaskError("JobCanceled", ...)`` was a string with no class behind it: the
    drop-ins raised TaskFailed for it instead of the error itself."""
    reported = error_types_in_the_source()
    assert {"Cancelled", "SerializationError", "WorkerLost"} <= reported, reported
    for name in reported:
        assert name in vocabulary(), f"{name} is reported but not in errors.py's list"


@pytest.mark.parametrize("name", ["Cancelled", "JobCanceled", "JobStopped"])
def test_new_classes_are_made_from_a_message_and_exported(name: str) -> None:
    cls = getattr(fanout, name)
    assert cls is getattr(errors, name)
    assert cls.__init__ is Exception.__init__
    assert str(cls("why")) == "why"
    assert name in fanout.__all__


@pytest.mark.parametrize("name", ["Cancelled", "JobCanceled", "JobStopped", "WorkerLost"])
def test_a_drop_in_raises_fanouts_own_failure_as_its_class(name: str) -> None:
    run = RunState(MapSpec(abs, None, iter(())), "inline")
    info = WorkerInfo.not_run("inline")
    result = TaskResult(3, False, None, TaskError(name, "it stopped"), info, 0, 0.0, 0.0, 0.0)
    raised = exception_of(result, run)
    assert type(raised) is getattr(errors, name)
    assert str(raised) == "it stopped"


def test_task_failed_carries_the_task_error_it_was_given() -> None:
    error = TaskError("ValueError", "bad", "Traceback ...\n")
    failed = errors.TaskFailed(2, error)
    assert failed.error is error
    assert str(failed) == "task 2 failed: ValueError: bad"
    assert isinstance(failed.__cause__, errors.RemoteTraceback)


def test_every_backend_makes_a_cancelled_tasks_error_in_one_place() -> None:
    """``models.cancelled`` is the one maker of a cancel's error: no module builds a
    ``Cancelled`` TaskError of its own, or names the type as a string."""
    import pathlib
    import re

    from fanout.models import cancelled

    error = cancelled("the run was cancelled before this task started")
    assert (error.type, error.message) == (
        "Cancelled",
        "the run was cancelled before this task started",
    )
    root = pathlib.Path(errors.__file__).parent
    own = re.compile(r"TaskError\(\s*(Cancelled\.__name__|CANCELLED|\"Cancelled\")")
    makers = [str(p.relative_to(root)) for p in root.rglob("*.py") if own.search(p.read_text())]
    makers.remove("models.py")  # cancelled() itself
    assert makers == [], makers


def test_every_task_error_fanout_makes_says_its_cause() -> None:
    """DESIGN: 100% of failures carry a cause. Every ``TaskError(...)`` in fanout's own
    code names one (``cause=``, or the fifth positional argument, after the pickle),
    and it is one of CAUSES where it is written out; the exceptions are the places that
    copy one (the journal, the wire) and ``from_exception`` (cause="raised")."""
    from fanout.models import CAUSES

    missing = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "TaskError"):
                continue
            cause = next((k.value for k in node.keywords if k.arg == "cause"), None)
            if cause is None and len(node.args) >= 5:
                cause = node.args[4]
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
            if cause is None:
                missing.append(where)
            elif isinstance(cause, ast.Constant):
                assert cause.value in CAUSES, where
    assert missing == []


@pytest.mark.parametrize(
    ("said", "code"),
    [
        ("Work-horse terminated unexpectedly; waitpid returned 9 (signal 9); ", -9),
        ("Work-horse terminated unexpectedly; waitpid returned 768; ", 3),
        ("Work-horse terminated unexpectedly; ", None),
        ("", None),
    ],
)
def test_a_stock_workers_horse_end_is_read_from_rqs_words(said: str, code: int | None) -> None:
    from fanout.backends.rq.watch import _horse_exit

    assert _horse_exit(said) == code
