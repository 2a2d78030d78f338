"""The backend contract for ``fanout_backend_contract`` (fanout.testing.plugin): run by a
pytest of its own, on the backend that ``FANOUT_CONTRACT_OPTIONS`` (JSON: the keywords of
``fanout.run``) selects, after importing ``FANOUT_CONTRACT_IMPORTS`` (comma-separated
modules that register it)."""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import pytest

from fanout.testing.contract import BackendContract

for _module in filter(None, os.environ.get("FANOUT_CONTRACT_IMPORTS", "").split(",")):
    importlib.import_module(_module)


class TestBackendContract(BackendContract):
    @pytest.fixture
    def fanout_options(self) -> dict[str, Any]:
        options: dict[str, Any] = json.loads(os.environ["FANOUT_CONTRACT_OPTIONS"])
        return options
