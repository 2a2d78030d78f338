"""Importing this registers the stub backend (tests/stub_backend.py) as "stub" for the
whole process: for ``fanout_backend_contract``'s pytest of its own, which imports the
modules that register a backend before it runs the contract."""

from fanout.backends import register_backend
from tests.stub_backend import NAME, StubBackend

register_backend(NAME, StubBackend)
