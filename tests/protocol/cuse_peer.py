"""A Python peer that plays the kernel's side of CUSE over a SOCK_SEQPACKET socket.

It speaks the FUSE/CUSE wire format exactly as /dev/cuse carries it (layouts
from <linux/fuse.h>, restated in the lab README): every request is a 40-byte
fuse_in_header plus the opcode's struct plus payload, every reply a 16-byte
fuse_out_header plus payload, one message per datagram.  Replies can come out
of order (a held READ is answered after later WRITEs), so replies are kept by
`unique` until asked for.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

IN_HEADER = struct.Struct("<IIQQIIIHH")      # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")           # len error unique
CUSE_INIT_IN = struct.Struct("<IIII")        # major minor unused flags
CUSE_INIT_OUT = struct.Struct("<8I40x")      # major minor unused flags max_read max_write dev_major dev_minor spare[10]
OPEN_IN = struct.Struct("<II")               # flags open_flags
OPEN_OUT = struct.Struct("<QII")             # fh open_flags padding
READ_IN = struct.Struct("<QQIIQII")          # fh offset size read_flags lock_owner flags padding
WRITE_IN = READ_IN                           # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")             # size padding
RELEASE_IN = struct.Struct("<QIIQ")          # fh flags release_flags lock_owner
INTERRUPT_IN = struct.Struct("<Q")           # unique

OPEN, READ, WRITE, RELEASE, INTERRUPT, DESTROY, IOCTL, CUSE_INIT = 14, 15, 16, 18, 36, 38, 39, 4096
assert IN_HEADER.size == 40 and OUT_HEADER.size == 16 and CUSE_INIT_OUT.size == 72
assert READ_IN.size == 40 and RELEASE_IN.size == 24


@dataclass
class Reply:
    unique: int
    error: int        # 0 or -errno
    payload: bytes
    at: float         # time.monotonic() when it was received

    @property
    def errno(self) -> int:
        return -self.error


class KernelPeer:
    """The "kernel" end of the socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._unique = 0
        self._replies: dict[int, Reply] = {}
        self._lock = threading.Lock()
        self.max_write = 0

    # ------------------------------------------------------------ raw
    def next_unique(self) -> int:
        with self._lock:
            self._unique += 2          # the kernel's uniques are even; odd ones mark interrupts
            return self._unique

    def send(self, opcode: int, arg: bytes = b"", data: bytes = b"", *, unique: int | None = None,
             pid: int | None = None, length: int | None = None) -> int:
        unique = self.next_unique() if unique is None else unique
        body = arg + data
        total = IN_HEADER.size + len(body) if length is None else length
        pid = threading.get_native_id() if pid is None else pid
        header = IN_HEADER.pack(total, opcode, unique, 0, os.getuid(), os.getgid(), pid, 0, 0)
        self.sock.send(header + body)
        return unique

    def send_raw(self, message: bytes) -> None:
        self.sock.send(message)

    def _receive_one(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        msg = self.sock.recv(1 << 20)
        if not msg:
            raise EOFError("the server closed its end")
        length, error, unique = OUT_HEADER.unpack_from(msg)
        assert length == len(msg), f"reply length field {length} != message {len(msg)}"
        self._replies[unique] = Reply(unique, error, msg[OUT_HEADER.size:], time.monotonic())
        return True

    def reply(self, unique: int, timeout: float = 5.0) -> Reply:
        """The reply to request `unique`; AssertionError if none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        while unique not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive_one(left):
                raise AssertionError(f"no reply to request {unique} within {timeout} s")
        return self._replies.pop(unique)

    def no_reply(self, unique: int, wait: float) -> bool:
        """True if request `unique` is still unanswered after `wait` seconds."""
        deadline = time.monotonic() + wait
        while unique not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive_one(left):
                return True
        return False

    # ------------------------------------------------------------ requests
    def cuse_init(self, major: int = 7, minor: int = 37) -> tuple[tuple[int, ...], bytes]:
        """CUSE_INIT; returns (cuse_init_out fields, dev_info bytes)."""
        r = self.reply(self.send(CUSE_INIT, CUSE_INIT_IN.pack(major, minor, 0, 0)))
        assert r.error == 0, f"CUSE_INIT failed: {r.errno}"
        fields = CUSE_INIT_OUT.unpack_from(r.payload)
        self.max_write = fields[5]
        return fields, r.payload[CUSE_INIT_OUT.size:]

    def open(self) -> int:
        r = self.reply(self.send(OPEN, OPEN_IN.pack(os.O_RDWR, 0)))
        assert r.error == 0, f"OPEN failed: {r.errno}"
        return OPEN_OUT.unpack_from(r.payload)[0]

    def write(self, fh: int, data: bytes, *, offset: int = 0, pid: int | None = None) -> int:
        return self.send(WRITE, WRITE_IN.pack(fh, offset, len(data), 0, 0, 0, 0), data, pid=pid)

    def write_result(self, unique: int, timeout: float = 5.0) -> int:
        """What write() would return to the launcher: a count, or -errno."""
        r = self.reply(unique, timeout)
        return r.error if r.error else WRITE_OUT.unpack_from(r.payload)[0]

    def read(self, fh: int, size: int, *, offset: int = 0, pid: int | None = None) -> int:
        return self.send(READ, READ_IN.pack(fh, offset, size, 0, 0, 0, 0), pid=pid)

    def release(self, fh: int) -> Reply:
        return self.reply(self.send(RELEASE, RELEASE_IN.pack(fh, os.O_RDWR, 0, 0), pid=0))

    def interrupt(self, unique: int) -> int:
        """FUSE_INTERRUPT for request `unique`; the server never answers it."""
        return self.send(INTERRUPT, INTERRUPT_IN.pack(unique), unique=self.next_unique() | 1)


def words(*values: int, size: int = 8) -> bytes:
    """A launcher request made of `size`-byte words."""
    return struct.pack("<%d%s" % (len(values), "Q" if size == 8 else "I"), *values)

