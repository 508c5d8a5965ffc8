"""The async hypercall ring: order, a full ring, stop after a NOTIFY, slots written back to 0xFF."""
from __future__ import annotations

from cuse_lguest import abi
from cuse_lguest.core.contract import RunExit
from test_core_support import boot, symbol


def test_ring_order_full_ring_and_notify_in_the_middle(native_build):
    g = boot(native_build, "asyncring")
    try:
        status_at = symbol(g.elf, "lguest_data") + abi.LGUEST_DATA_HCALL_STATUS
        seen = []
        for _ in range(70):
            why, value = g.guest.run()
            if why is not RunExit.NOTIFY:
                break
            seen.append(g.string_at(value))
            if seen[-1] == "r100":
                # Stopped right after this NOTIFY: the GDT call queued behind it has not run yet.
                assert g.ram.buf[status_at + 1] == 0
        assert g.run_to_end() == "CRASH: async ring test done"
        assert seen == [f"r{i:03d}" for i in range(65)] + ["r100", "r101", "done\n"]
        assert set(g.ram.buf[status_at:status_at + 64]) == {abi.HCALL_STATUS_FREE}
    finally:
        g.close()


def test_claimed_notifies_do_not_return(native_build):
    g = boot(native_build, "asyncring", claim=lambda value: True)
    try:
        assert g.run_to_end() == "CRASH: async ring test done"
        assert [g.string_at(v) for v in g.claimed] == [f"r{i:03d}" for i in range(65)] + ["r100", "r101", "done\n"]
    finally:
        g.close()
