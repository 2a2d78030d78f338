"""Where things moved (issue 23) and the old names that keep working: the Driver and the
call wrapper in the core (fanout/driving.py, fanout/calls.py), MapSpec in
fanout/backends/spec.py. In-process."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

import fanout
import fanout.calls
from fanout.backends import base, spec
from fanout.backends.rq.allowlist import restricted_loads
from fanout.errors import TargetNotAllowed
from fanout.targets import resolve_target
from tests import tasks


def test_map_spec_is_one_class_under_its_old_names() -> None:
    assert fanout.MapSpec is base.MapSpec is spec.MapSpec


def test_the_calls_keep_their_earlier_path_as_an_alias() -> None:
    from fanout.dropin import calls as earlier

    assert earlier.Call is fanout.calls.Call
    assert earlier.Init is fanout.calls.Init
    assert earlier.call is fanout.calls.call
    assert fanout.calls.TARGET == "fanout.calls:call"
    assert fanout.calls.TARGETS == ("fanout.calls:call", "fanout.dropin.calls:call")
    for name in fanout.calls.TARGETS:  # what a worker resolves a job's target to
        fn, importable = resolve_target(name)
        assert fn is fanout.calls.call
        assert importable == name


def pickled_as(module: str, item: fanout.calls.Call) -> bytes:
    """``item`` pickled as a fanout whose Call lived in ``module`` pickled it (protocol
    2 names classes as text, which can be rewritten)."""
    data = pickle.dumps(item, protocol=2)
    assert b"cfanout.calls\nCall\n" in data
    return data.replace(b"cfanout.calls\nCall\n", f"c{module}\nCall\n".encode())


def test_an_allowlisted_worker_unpickles_calls_under_both_paths() -> None:
    item = fanout.calls.Call(tasks.square, (7,), {})
    allow = ("tests.tasks",)
    for module in ("fanout.calls", "fanout.dropin.calls"):
        loaded = restricted_loads(pickled_as(module, item), allow)
        assert type(loaded) is fanout.calls.Call, module
        assert fanout.calls.call(loaded) == 49
    outside = fanout.calls.Call(pickle.dumps, (1,), {})
    with pytest.raises(TargetNotAllowed, match=r"_pickle\.dumps"):
        restricted_loads(pickle.dumps(outside), allow)


def test_a_pools_initializer_runs_once_per_process_through_a_call() -> None:
    runs: list[int] = []
    init = fanout.calls.Init("token-test-layout", runs.append, (1,))
    item = fanout.calls.Call(tasks.square, (3,), {}, init)
    assert [fanout.calls.call(item), fanout.calls.call(item)] == [9, 9]
    assert runs == [1]


def test_the_calls_module_imports_nothing_of_fanout() -> None:
    """A worker loads it for every call: it must not pull in the drop-ins or a driver
    (only ``fanout.tracing``, and only for a call that carries a trace context)."""
    tree = ast.parse(Path(fanout.calls.__file__).read_text())
    imported = [
        f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    ours = [name for name in imported if name.startswith("fanout")]
    assert ours == ["fanout.tracing"], imported
    top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert not [node for node in top if (getattr(node, "module", "") or "").startswith("fanout")]


def test_the_driver_lives_in_the_core() -> None:
    import fanout.aio
    import fanout.driving
    from fanout.dropin import executor

    assert fanout.aio.Driver is fanout.driving.Driver
    assert executor.Driver is fanout.driving.Driver


def imports_of(path: Path) -> set[str]:
    """Every fanout module ``path`` imports, at run time or for type checking alone."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {name for name in names if name.startswith("fanout")}


@pytest.mark.parametrize(
    ("module", "other"),
    [
        ("errors.py", "fanout.models"),  # models raises TaskFailed from errors
        ("backends/runstate.py", "fanout.backends.base"),  # base names RunState
        ("backends/spec.py", "fanout.backends"),  # both read it
        ("backends/local/deaths.py", "fanout.backends.local.pool"),  # the pool applies it
    ],
)
def test_the_two_way_dependencies_issue_23_removed_stay_removed(module: str, other: str) -> None:
    """Each was hidden by an import for type checking alone (structure.py found them)."""
    imported = imports_of(Path(fanout.__file__).parent / module)
    assert not {name for name in imported if name == other or name.startswith(other + ".")}
