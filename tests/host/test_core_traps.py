"""Traps from both rings: page faults with CR2 and error code, syscalls, #GP rules, emulation."""
from __future__ import annotations

from test_core_support import boot


def test_ring1_and_ring3_traps(native_build):
    g = boot(native_build, "traps")
    try:
        assert g.run_to_end() == "CRASH: user program finished"
        text = "".join(g.console)
    finally:
        g.close()
    # Kernel (CS 0x61): read of an unmapped page, write to a read-only page (WP), ud2.
    assert "trap vector=0x0000000e\n err=0x00000000\n cr2=0x00302020\n cs=0x00000061\n" in text
    assert "trap vector=0x0000000e\n err=0x00000003\n cr2=0x00301004\n cs=0x00000061\n" in text
    assert "trap vector=0x00000006\n err=0x00000000\n cs=0x00000061\n" in text
    # cli was skipped and in returned all ones (AL only / whole EAX).
    assert "kernel in al=0x123456ff\n" in text
    assert "kernel in eax=0xffffffff\n" in text
    # Ring 3 (CS 0x73): syscall, then faults on supervisor, read-only and unmapped pages.
    assert "user: hello via int $0x80\n" in text
    assert "trap vector=0x0000000e\n err=0x00000005\n cr2=0x00300000\n cs=0x00000073\n" in text
    assert "trap vector=0x0000000e\n err=0x00000007\n cr2=0x00301000\n cs=0x00000073\n" in text
    assert "trap vector=0x0000000e\n err=0x00000004\n cr2=0x00302010\n cs=0x00000073\n" in text
    # int $0x1f and int $0x40 from ring 3 hit gates with DPL < 3: #GP(vector*8+2).  cli, in and out
    # are not emulated for ring 3: each is a #GP(0) the Guest's own handler sees.
    assert "trap vector=0x0000000d\n err=0x000000fa\n cs=0x00000073\n" in text
    assert "trap vector=0x0000000d\n err=0x00000202\n cs=0x00000073\n" in text
    assert text.count("trap vector=0x0000000d\n err=0x00000000\n cs=0x00000073\n") == 3
