"""tinyguest through the real libfuse session: launcher -> CUSE wire -> Server -> Device -> core.

The Python launcher runs unchanged; only its transport differs.  Here every
read() and write() becomes a FUSE READ or WRITE request on the socketpair,
carrying the calling thread's id as the kernel would, and the reply comes
back from the server's runner thread (reads) or a libfuse worker (writes).
A hung Guest is bounded by the transport's own reply timeout, since a read
through the peer cannot be interrupted the way the in-process one can.
"""
from __future__ import annotations

import select
import socket
import threading

import pytest

from cuse_lguest.cuse.server import Server
from cuse_lguest.device import Device
from cuse_lguest.testing.launcher import Block, Launcher
from cuse_lguest.testing.transport import WORD
from cuse_lguest.testing import blkpattern
from cuse_peer import OUT_HEADER, READ, READ_IN, WRITE, WRITE_IN, WRITE_OUT, KernelPeer


class PeerTransport:
    """The launcher's Transport, spoken as FUSE requests by the kernel peer.

    Several launcher threads use it at once (the read that runs the Guest is
    held while queue threads send LHREQ_IRQ), so one receiver thread owns the
    socket and hands each reply to whoever waits for its `unique`.
    """

    word = WORD
    can_interrupt = False

    def __init__(self, peer: KernelPeer) -> None:
        self.peer = peer
        self.fh = peer.open()
        self._cond = threading.Condition()
        self._replies: dict[int, tuple[int, bytes]] = {}
        self._closed = False
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()

    def _receive(self) -> None:
        while not self._closed:
            ready, _, _ = select.select([self.peer.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                msg = self.peer.sock.recv(1 << 20)
            except OSError:
                return
            if not msg:
                return
            _, error, unique = OUT_HEADER.unpack_from(msg)
            with self._cond:
                self._replies[unique] = (error, msg[OUT_HEADER.size:])
                self._cond.notify_all()

    def _wait(self, unique: int, timeout: float) -> tuple[int, bytes]:
        with self._cond:
            if not self._cond.wait_for(lambda: unique in self._replies, timeout):
                raise AssertionError(f"no reply to request {unique} within {timeout} s")
            return self._replies.pop(unique)

    def write(self, data: bytes) -> int:
        u = self.peer.send(WRITE, WRITE_IN.pack(self.fh, 0, len(data), 0, 0, 0, 0), data)
        error, payload = self._wait(u, 10)
        return error if error else WRITE_OUT.unpack_from(payload)[0]

    def read(self, size: int) -> bytes | int:
        u = self.peer.send(READ, READ_IN.pack(self.fh, 0, size, 0, 0, 0, 0))
        error, payload = self._wait(u, 120)
        return error if error else payload

    def interrupt(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        self._receiver.join()
        self.peer.release(self.fh)


@pytest.fixture
def cuse_transport():
    from tests.conftest import needs_root
    needs_root()
    kernel_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = Device()                      # the real core behind it
    server = Server(device)
    server.attach_fd(server_end.detach())
    server.start()
    peer = KernelPeer(kernel_end)
    fields, devinfo = peer.cuse_init()
    assert b"DEVNAME=lguest\0" in devinfo
    transport = PeerTransport(peer)
    yield transport, device, server
    assert server.shutdown() == 0
    kernel_end.close()


def test_hello_through_the_cuse_session(native_build, cuse_transport):
    transport, device, _ = cuse_transport
    result = Launcher(native_build / "guests" / "tinyguest.elf", mem_mb=32, args=["test=hello"],
                      timeout=None).run(transport)
    assert result.error is None, result.error
    assert "tinyguest: hello from the early console\n" in result.console
    assert "tinyguest: hello PASS console=virtio\n" in result.console
    assert result.death == "CRASH: tinyguest: done"
    assert len(device) == 0                # released: the Guest is gone


def test_blk_through_the_cuse_session(native_build, cuse_transport, tmp_path):
    transport, _, server = cuse_transport
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    result = Launcher(native_build / "guests" / "tinyguest.elf", mem_mb=32, args=["test=blk", "sectors=256"],
                      devices=[Block(disk)], timeout=None).run(transport)
    assert result.error is None, result.error
    assert "tinyguest: blk PASS sectors=256 start=0" in result.console, result.console
    assert result.death == "CRASH: tinyguest: done"
    assert server.session.fast_irqs > 0     # the launcher's LHREQ_IRQs were answered in C
    assert disk.read_bytes()[255 * 512:256 * 512] == blkpattern.sector(255)
