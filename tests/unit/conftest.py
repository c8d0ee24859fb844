"""Fixtures many unit tests share; a test module that needs other settings defines its own."""

import pytest

from services.common.events import InProcessEventBus
from services.common.storage import LocalObjectStore


@pytest.fixture
def bus():
    """An in-process event bus with the default retry rules, closed after the test."""
    bus = InProcessEventBus()
    yield bus
    bus.close()


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "store")
