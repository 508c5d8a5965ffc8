#!/usr/bin/env python3
"""A hostile launcher for the kernel tier: it shrinks its own guest RAM under its running Guest.

Issue 13, finding 3: guest RAM shared with the service is the launcher's
file, and the launcher may truncate it whenever it likes.  Before Guests ran
in workers, the service's next touch of those pages was a SIGBUS that killed
the service and every Guest in it.  Now it must kill exactly this Guest.

    truncating_launcher.py IMAGE START PATTERN

IMAGE is a guest RAM image the driver prepared (tinyguest loaded, its
command line written; early console only), START its entry point.  The
image is copied into a memfd mapped MAP_SHARED, as the project's launcher
keeps guest RAM; INITIALIZE goes to /dev/lguest; reads run the Guest, and
once its early console printed PATTERN the memfd is truncated to 0 bytes
and the reads go on.  Nothing here touches the mapping after that.  Prints
one JSON object: the console, the errno that ended the reads, and the
reason read after it.

It runs as an unprivileged user, so it needs only the standard library and
the project's `abi`.
"""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import struct
import sys

from cuse_lguest import abi

NODE = "/dev/lguest"
WORD = "<Q"                # a 64-bit Python sends 8-byte words


def main() -> int:
    image, start, pattern = sys.argv[1], int(sys.argv[2], 0), sys.argv[3].encode()
    with open(image, "rb") as f:
        data = f.read()
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.write(fd, data)
    ram = mmap.mmap(fd, len(data), mmap.MAP_SHARED)
    base = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    dev = os.open(NODE, os.O_RDWR | os.O_CLOEXEC)
    words = [abi.LHREQ_INITIALIZE, base, len(data) // abi.PAGE_SIZE, start]
    out: dict = {"initialize": os.write(dev, b"".join(struct.pack(WORD, w) for w in words)),
                 "console": "", "truncated": False}
    console = b""
    while True:
        try:
            got = os.pread(dev, 8, 0)
        except OSError as e:
            out["errno"] = errno.errorcode.get(e.errno, str(e.errno))
            break
        value = struct.unpack(WORD, got)[0]
        if out["truncated"]:
            out["late_notify"] = value          # the Guest ran on without its RAM: should not happen
            break
        console += ram[value:ram.find(b"\0", value)]
        if pattern in console:
            os.ftruncate(fd, 0)
            out["truncated"] = True
    try:
        out["reason"] = os.pread(dev, 1024, 0).rstrip(b"\0").decode(errors="replace")
    except OSError as e:
        out["reason_errno"] = errno.errorcode.get(e.errno, str(e.errno))
    out["console"] = console.decode(errors="replace")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
