"""The backend contract (``fanout.testing.contract``) on the stub backend
(tests/stub_backend.py), whose workers are threads of this process: a backend written
against the contract alone passes it whole and serves fanout.Executor, fanout.Pool and
fanout.AsyncFanout. No process is started."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fanout.testing.contract import BackendContract
from tests.stub_backend import registered


class TestStubBackendContract(BackendContract):
    @pytest.fixture
    def fanout_options(self) -> Iterator[dict[str, Any]]:
        with registered() as name:
            yield {"backend": name, "workers": 2}
