"""A Server over a socketpair, its Device, and the peer playing the kernel."""
from __future__ import annotations

import socket

import cuse_guest_double
from cuse_lguest.cuse.server import Server
from cuse_lguest.device import Device
from cuse_peer import KernelPeer


class Served:
    """A Server over a socketpair, its Device, and the peer playing the kernel."""

    def __init__(self, device: Device | None = None, **server_options) -> None:
        kernel_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.device = device if device is not None else Device(cuse_guest_double.make_guest,
                                                                memory=cuse_guest_double.acquire_memory)
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
