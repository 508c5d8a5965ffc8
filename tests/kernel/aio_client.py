"""A group member's O_DIRECT io_submit() write to the FUSE node, from a thread that exits at once.

Run as `aio_client.py NODE` by test_fuse_hostile.py.  The kernel sends an
async direct write only when it does not extend the file, and our file's
size is 0, so first a plain INITIALIZE of real memory at offset 4096 (which
the device accepts at any offset) is answered 24 bytes, and the kernel
grows the size it believes to 4120; the script prints "grown".  After a line
on stdin it submits, on a second open file, an INITIALIZE (8-byte words) of
memory that is not mapped, prints "submitted" once io_submit() has returned
(the submitting thread then exits), and at the end "result <errno name or
count>" from io_getevents().  A service that looks at the live caller answers
EFAULT; one that looks after the thread is gone answers ESRCH (or, with the
id recycled, looks at another process).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import sys
import threading

_SYS_IO_SETUP, _SYS_IO_GETEVENTS, _SYS_IO_SUBMIT = 206, 208, 209   # x86-64
_IOCB_CMD_PWRITE = 1
_libc = ctypes.CDLL(None, use_errno=True)


class _Iocb(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32), ("rw_flags", ctypes.c_int32),
                ("opcode", ctypes.c_uint16), ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("offset", ctypes.c_int64),
                ("reserved2", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class _Event(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


def main(node: str) -> int:
    fd = os.open(node, os.O_RDWR | os.O_DIRECT)
    grower = os.open(node, os.O_RDWR)
    ram = mmap.mmap(-1, 16 * 4096)
    base = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    os.pwrite(grower, struct.pack("<4Q", 0, base, 16, 0x1000), 4096)
    print("grown", flush=True)      # no stat: a GETATTR would give the kernel our size 0 again
    sys.stdin.readline()
    ctx = ctypes.c_ulong(0)
    if _libc.syscall(_SYS_IO_SETUP, 8, ctypes.byref(ctx)) != 0:
        print("io_setup failed", os.strerror(ctypes.get_errno()), flush=True)
        return 1
    words = ctypes.create_string_buffer(struct.pack("<4Q", 0, 0x100000, 16, 0x100000))
    iocb = _Iocb(opcode=_IOCB_CMD_PWRITE, fildes=fd, buf=ctypes.addressof(words), nbytes=32, offset=0)
    iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))

    def submit() -> None:
        submitted = _libc.syscall(_SYS_IO_SUBMIT, ctx, 1, iocbs)
        print("submitted", submitted, flush=True)

    thread = threading.Thread(target=submit)
    thread.start()
    thread.join()
    event = _Event()
    if _libc.syscall(_SYS_IO_GETEVENTS, ctx, 1, 1, ctypes.byref(event), None) != 1:
        print("io_getevents failed", os.strerror(ctypes.get_errno()), flush=True)
        return 1
    res = event.res
    print("result", errno.errorcode.get(-res, str(res)) if res < 0 else res, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
