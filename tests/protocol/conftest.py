"""Protocol tier: the real libfuse session and server, with a Python peer as the kernel."""
from __future__ import annotations

import socket

import pytest

from cuse_lguest.cuse.binding import TransportUnavailable

try:
    from cuse_lguest.cuse.server import Server
except TransportUnavailable as e:  # the binding is not built: say so instead of erroring
    pytest.skip(str(e), allow_module_level=True)

from cuse_lguest.device import Device
from cuse_peer import KernelPeer
import cuse_guest_double


class Served:
    """A Server over a socketpair, its Device, and the peer playing the kernel."""

    def __init__(self, **server_options) -> None:
        kernel_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.device = Device(cuse_guest_double.make_guest)
        self.server = Server(self.device, **server_options)
        self.server.attach_fd(server_end.detach())   # the session owns and closes it
        self.server.start()
        self.peer = KernelPeer(kernel_end)

    def initialized(self) -> "Served":
        self.fields, self.devinfo = self.peer.cuse_init()
        return self

    def close(self) -> int:
        result = self.server.shutdown()
        self.peer.sock.close()
        return result


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
