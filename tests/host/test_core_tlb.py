"""The TLB policy: flushes happen for SET_PTE(0), FLUSH_TLB and NEW_PGTABLE, also inside a batch."""
from __future__ import annotations

from test_core_support import boot


def test_guest_never_sees_a_stale_mapping(native_build):
    g = boot(native_build, "tlb")
    try:
        assert g.run_to_end() == "CRASH: tlb test done"
    finally:
        g.close()
    assert g.console == ["first=0x0000aaaa\n", "after SET_PTE 0=0x0000bbbb\n",
                         "after async SET_PTE 0=0x0000cccc\n", "after FLUSH_TLB=0x0000aaaa\n",
                         "after NEW_PGTABLE=0x00000000\n"]
