"""The backend contract (``fanout.testing.contract``) on every built-in backend of
``conftest.BACKENDS``: the same tests a third-party backend's author runs. The stub
backend's run of it, in-process, is tests/unit/test_stub_contract.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from fanout.testing.contract import BackendContract


def slow(name: str) -> Callable[..., None]:
    """The contract's test ``name``, marked slow (it takes seconds on this backend: the
    fast tier leaves it out)."""
    inherited = getattr(BackendContract, name)

    @pytest.mark.slow
    @functools.wraps(inherited)
    def test(self: BackendContract, *args: Any, **kwargs: Any) -> None:
        inherited(self, *args, **kwargs)

    return test


class TestContract(BackendContract):
    @pytest.fixture
    def fanout_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return options

    # About 2 s on rq: the run's running jobs are stopped, and report, first.
    test_cancelling_a_run_by_its_id_ends_every_task_of_it = slow(
        "test_cancelling_a_run_by_its_id_ends_every_task_of_it"
    )


class TestContractOnFakeRedis(BackendContract):
    """The fast tier: the rq backend's contract on fakeredis (``fanout.testing``'s
    ``fanout_rq_url``), with real ``fanout worker`` processes and no redis-server. Every
    fault, chaos and security test keeps a real redis-server. Fakeredis serves Redis
    from a thread of this process: the drive interface's longer tests take 2 to 3 s
    here, and run in the full tier (TestContract runs them on a real redis-server in
    the fast one)."""

    @pytest.fixture
    def fanout_options(self, fanout_rq_url: str) -> dict[str, Any]:
        return {"backend": "rq", "redis_url": fanout_rq_url}

    test_cancelling_a_run_by_its_id_ends_every_task_of_it = slow(
        "test_cancelling_a_run_by_its_id_ends_every_task_of_it"
    )
    test_pool_apply_imap_and_starmap_run_on_the_backend = slow(
        "test_pool_apply_imap_and_starmap_run_on_the_backend"
    )
    test_async_map_and_arun_run_on_the_backend = slow("test_async_map_and_arun_run_on_the_backend")


@pytest.mark.slow
def test_the_plugins_fixture_runs_the_whole_contract_on_a_third_party_backend(
    fanout_backend_contract: Callable[..., None],
) -> None:
    """``fanout_backend_contract`` (fanout.testing.plugin), as a backend's author calls
    it: the contract in a pytest of its own, on the stub backend registered by import."""
    fanout_backend_contract({"backend": "stub", "workers": 2}, imports=["tests.stub_registered"])
