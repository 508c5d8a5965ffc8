"""How the in-process launcher talks to an lguest device: the seam between launcher and host tier.

A launcher needs four things from `/dev/lguest`: write a request, pread the
next notify (which runs the Guest), interrupt that read, and close.  Both
transports answer with what the device said: bytes, a count, or -errno.

* `DeviceTransport` calls `cuse_lguest.device.Device` directly, in this
  process (the host tier).  The caller's native thread id goes with every
  call, as the CUSE layer would pass the requester's tid.
* `FdTransport` uses a real node (`/dev/lguest`, or a CUSE node) through
  os.pread/os.write, exactly like a C launcher.
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Protocol

WORD = struct.calcsize("L")   # this process's `unsigned long`: 8 in a 64-bit Python


class Transport(Protocol):
    word: int
    can_interrupt: bool

    def write(self, data: bytes) -> int:
        """Count accepted (>= 0) or -errno."""

    def read(self, size: int) -> bytes | int:
        """pread(size, offset 0): runs the Guest.  Bytes or -errno."""

    def interrupt(self) -> None:
        """Make a read in flight return (EINTR).  Only if `can_interrupt`."""

    def close(self) -> None: ...


class DeviceTransport:
    """One open file of an in-process `Device`."""

    word = WORD
    can_interrupt = True

    def __init__(self, device) -> None:
        self.device = device
        self.fh = device.open()

    def write(self, data: bytes) -> int:
        return self.device.write(threading.get_native_id(), self.fh, 0, data)

    def read(self, size: int) -> bytes | int:
        return self.device.read(threading.get_native_id(), self.fh, 0, size)

    def interrupt(self) -> None:
        self.device.interrupt(self.fh)

    def close(self) -> None:
        self.device.release(self.fh)


class FdTransport:
    """A device node opened O_RDWR.  A blocked pread cannot be interrupted from Python, so no timeouts."""

    word = WORD
    can_interrupt = False

    def __init__(self, path: str | os.PathLike) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def write(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except OSError as e:
            return -e.errno

    def read(self, size: int) -> bytes | int:
        try:
            return os.pread(self.fd, size, 0)
        except OSError as e:
            return -e.errno

    def interrupt(self) -> None:
        raise NotImplementedError("a read on a device node is interrupted by a signal, not from Python")

    def close(self) -> None:
        os.close(self.fd)
