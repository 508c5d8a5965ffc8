"""Protocol tier: the real libfuse session and server, with a Python peer as the kernel."""
from __future__ import annotations

import pytest

import cuse_guest_double
from served import Served


@pytest.fixture
def serve():
    """serve(**server_options) -> a started Served, CUSE_INIT done; shut down afterwards."""
    made: list[Served] = []

    def start(init: bool = True, **options) -> Served:
        s = Served(**options)
        made.append(s)
        return s.initialized() if init else s

    yield start
    for s in made:
        s.close()


@pytest.fixture(autouse=True)
def _fresh_doubles():
    cuse_guest_double.made.clear()
    yield
