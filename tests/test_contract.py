"""The backend contract (``fanout.testing.contract``) on every built-in backend of
``conftest.BACKENDS``: the same tests a third-party backend's author runs."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.testing.contract import BackendContract


class TestContract(BackendContract):
    @pytest.fixture
    def fanout_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return options


class TestContractOnFakeRedis(BackendContract):
    """The fast tier: the rq backend's contract on fakeredis (``fanout.testing``'s
    ``fanout_rq_url``), with real ``fanout worker`` processes and no redis-server. Every
    fault, chaos and security test keeps a real redis-server."""

    @pytest.fixture
    def fanout_options(self, fanout_rq_url: str) -> dict[str, Any]:
        return {"backend": "rq", "redis_url": fanout_rq_url}
