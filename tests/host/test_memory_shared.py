"""Shared mode: the launcher's pages are used as they are, and private RAM is refused."""
from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os

import pytest

from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.handles import MIRROR, acquire
from cuse_lguest.memory.shared import open_guest_memory
from cuse_lguest.testing.guestram import GuestRam


def test_same_pages_both_ways_and_bounds():
    with GuestRam(1 << 20) as ram:
        mem = open_guest_memory(acquire(os.getpid(), ram.base, 16))
        try:
            mem.write_u32(0x1000, 0xDEADBEEF)
            assert ram.buf[0x1000:0x1004] == b"\xef\xbe\xad\xde"
            ram.buf[0x2000:0x2002] = b"\x34\x12"
            assert mem.read_u16(0x2000) == 0x1234
            assert mem.read_bytes(16 * 4096 - 4, 4) == bytes(4)        # the last bytes are allowed
            with pytest.raises(GuestFault, match="^bad read address 0xfffe len 4$"):
                mem.read_u32(16 * 4096 - 2)
            with pytest.raises(GuestFault, match="^bad write address 0x10000 len 1$"):
                mem.write_u8(16 * 4096, 0)
        finally:
            mem.close()


def test_private_memory_is_never_shared_and_says_why_in_one_line(caplog):
    """Shared mode never runs on a copy: private RAM is mirrored instead, and the log says why."""
    private = mmap.mmap(-1, 1 << 16, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(private))
    try:
        with caplog.at_level(logging.INFO, logger="cuse_lguest.memory"):
            handles = acquire(os.getpid(), base, 16)
        handles.close()
        assert handles.mode == MIRROR
        assert len(caplog.records) == 1 and "MAP_PRIVATE" in caplog.records[0].getMessage()
    finally:
        private.close()
