"""cuse/positions.py: which FUSE offset names vCPU 0 (the kernel-side check is the kernel tier's `offsets`)."""
from __future__ import annotations

from cuse_lguest.cuse.positions import FilePositions


def test_plain_calls_follow_the_position_the_kernel_keeps():
    p = FilePositions()
    p.opened(7)
    assert p.incoming(7, 0) == (0, True)                 # INITIALIZE by write() at position 0
    assert p.advance(7, 0, 24) == 24                      # answered 24: the kernel's position is now 24
    assert p.incoming(7, 24) == (0, True)                 # the next write() is still vCPU 0
    assert p.advance(7, 24, 0) is None and p.position(7) == 24   # LHREQ_IRQ answers 0: nothing moves


def test_explicit_offsets_reach_the_device_unchanged():
    p = FilePositions()
    p.opened(7)
    p.advance(7, 0, 12)
    assert p.incoming(7, 1) == (1, False)                 # pwrite/pread at 1: vCPU 1, refused by the device
    assert p.incoming(7, 0) == (0, False)                 # pread at 0: vCPU 0, and the position stays
    assert p.position(7) == 12


def test_files_are_separate_and_forgotten_on_release():
    p = FilePositions()
    p.opened(1)
    p.opened(2)
    p.advance(1, 0, 12)
    assert p.incoming(2, 0) == (0, True) and p.incoming(2, 12) == (12, False)
    p.released(1)
    assert p.incoming(1, 12) == (12, False)               # an unknown file: every offset is explicit
    assert p.advance(1, 12, 4) is None
