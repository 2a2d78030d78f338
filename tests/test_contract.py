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
