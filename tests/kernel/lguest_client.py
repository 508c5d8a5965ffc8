#!/usr/bin/env python3
"""A tiny /dev/lguest client for the kernel tier; prints one JSON object.

`errno`: the error codes the spec's errno table promises, asked through the
genuine kernel CUSE path (a 64-bit caller, so 8-byte words).  The guest RAM
is the launcher-shaped MAP_SHARED memfd of cuse_lguest.testing.guestram, so
INITIALIZE succeeds exactly as it does for the project's launcher.

`offsets`: the offset is the vCPU number and 3.x Guests have only vCPU 0, so
pwrite()/pread() at offset 1 get EINVAL where the offset reaches the device
(FUSE), while plain write()/read() after INITIALIZE still name vCPU 0 even
though through FUSE the file position has moved (see cuse/positions.py).
Through CUSE the kernel sends every request at offset 0.

`open`: just open the node read-write and report the errno, for the
permission checks.  It runs under setpriv as another user, who may not be
able to read root's site-packages, so it needs nothing beyond the standard
library and the project's modules are imported only by `errno`.
"""
from __future__ import annotations

import errno
import json
import os
import struct
import sys
import threading

NODE = os.environ.get("LGUEST_DEVICE", "/dev/lguest")   # the launcher's own override
WORD = "<Q"


def _words(*values: int) -> bytes:
    return b"".join(struct.pack(WORD, v) for v in values)


def _attempt(fn) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "OK"


def errno_checks() -> dict[str, str]:
    from cuse_lguest import abi
    from cuse_lguest.testing.guestram import GuestRam

    out: dict[str, str] = {}
    with GuestRam(1 << 20) as ram:
        fd = os.open(NODE, os.O_RDWR)
        try:
            out["irq_before_initialize"] = _attempt(lambda: os.write(fd, _words(abi.LHREQ_IRQ, 1)))
            init = _words(abi.LHREQ_INITIALIZE, ram.base, ram.size // abi.PAGE_SIZE, 0)
            out["initialize"] = _attempt(lambda: os.write(fd, init))
            out["second_initialize"] = _attempt(lambda: os.write(fd, init))
            out["irq_32"] = _attempt(lambda: os.write(fd, _words(abi.LHREQ_IRQ, 32)))
            out["irq_31"] = _attempt(lambda: os.write(fd, _words(abi.LHREQ_IRQ, 31)))
            closed = os.dup(fd)
            os.close(closed)
            out["eventfd_closed_fd"] = _attempt(
                lambda: os.write(fd, _words(abi.LHREQ_EVENTFD, ram.mem, closed)))
            out["eventfd_not_an_eventfd"] = _attempt(
                lambda: os.write(fd, _words(abi.LHREQ_EVENTFD, ram.mem, fd)))
            out["unknown_request"] = _attempt(lambda: os.write(fd, _words(abi.LHREQ_BREAK, 0)))
            result: list[str] = []
            reader = threading.Thread(target=lambda: result.append(_attempt(lambda: os.read(fd, 8))))
            reader.start()
            reader.join(timeout=30)
            out["read_from_other_thread"] = result[0] if result else "HUNG"
        finally:
            os.close(fd)
    return out


def offset_checks() -> dict[str, str]:
    from cuse_lguest import abi
    from cuse_lguest.testing.guestram import GuestRam

    out: dict[str, str] = {}
    with GuestRam(1 << 20) as ram:
        fd = os.open(NODE, os.O_RDWR)
        try:
            init = _words(abi.LHREQ_INITIALIZE, ram.base, ram.size // abi.PAGE_SIZE, 0)
            out["initialize"] = _attempt(lambda: os.write(fd, init))
            out["position_after_initialize"] = str(os.lseek(fd, 0, os.SEEK_CUR))
            out["pwrite_irq_offset_1"] = _attempt(lambda: os.pwrite(fd, _words(abi.LHREQ_IRQ, 1), 1))
            out["pread_offset_1"] = _attempt(lambda: os.pread(fd, 8, 1))
            out["write_irq"] = _attempt(lambda: os.write(fd, _words(abi.LHREQ_IRQ, 1)))
            out["pwrite_irq_offset_0"] = _attempt(lambda: os.pwrite(fd, _words(abi.LHREQ_IRQ, 2), 0))
            out["write_irq_again"] = _attempt(lambda: os.write(fd, _words(abi.LHREQ_IRQ, 3)))
        finally:
            os.close(fd)
    return out


def open_check() -> dict[str, str]:
    def try_open() -> None:
        os.close(os.open(NODE, os.O_RDWR))
    return {"open": _attempt(try_open), "uid": str(os.getuid()), "groups": str(os.getgroups())}


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    checks = {"errno": errno_checks, "offsets": offset_checks, "open": open_check}
    if what not in checks:
        print(f"usage: {sys.argv[0]} {{{'|'.join(checks)}}}", file=sys.stderr)
        return 2
    print(json.dumps(checks[what]()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
