"""Every kill reason the core can produce, with the seed's exact text, and nothing left behind."""
from __future__ import annotations

import psutil
import pytest

from cuse_lguest import abi

from test_core_support import PFNLIMIT, boot, symbol

LIMIT = PFNLIMIT * 4096

CASES = {
    "before-init": "hypercall 17 before INIT",
    "bad-guest-page": "bad guest page 0xfffff000",
    "bad-syscall-vector": "bad syscall vector",
    "bad-kernel-address": "bad kernel address 0xffc00000",
    "init-twice": "already have lguest_data",
    "hypercall-3": "Bad hypercall 3\n",
    "hypercall-13": "Bad hypercall 13\n",
    "hypercall-99": "Bad hypercall 99\n",
    "bad-stack-segment": "bad stack segment 104",
    "bad-stack-pages": "bad stack pages 3",
    "bad-stack-page": "bad stack page 0xefffffff",
    "bad-idt-type": "bad IDT type 5",
    "idt-entry-256": "Setting idt entry 256",
    "gdt-entry-32": "too many gdt entries 32",
    "bad-read": "bad read address 0xffffff00 len 24",
    "shutdown-past-end": f"bad read address {LIMIT - 0x10:#x} len 128",
    "reboot-past-end": abi.ERESTART,   # the failed read kills, and the restart still makes it ERESTART
    "shutdown-at-end": "CRASH: ",      # the last 128 bytes are readable (3.18 rule), and zero
    "bad-write": "bad write address 0x7fffffec len 4",
    "bad-pde": "bad page directory entry",
    "bad-pte": "bad page table entry",
    "switcher-pte": "attempt to set pte into Switcher pages",
    "pgd-1024": "Attempt to set pgd 1024/1024",
    "wild-pte": "bad page table entry",
    "bad-address": "Bad address 0xbffffc",
}


@pytest.mark.parametrize("deed", sorted(CASES))
def test_kill_reason_text(native_build, deed):
    g = boot(native_build, "kills", deed)
    try:
        assert g.run_to_end() == CASES[deed]
    finally:
        g.close()


def test_unhandled_trap_names_vector_and_eip(native_build):
    g = boot(native_build, "kills", "unhandled-trap")
    try:
        assert g.run_to_end() == f"unhandled trap 6 at {symbol(g.elf, 'ud2_here'):#x} (0x0)"
    finally:
        g.close()


def test_dead_guest_stays_dead_and_first_reason_wins(native_build):
    g = boot(native_build, "kills", "hypercall-3")
    try:
        assert g.run_to_end() == "Bad hypercall 3\n"
        g.guest.kill("a later reason")
        assert g.guest.run()[1] == 0 and g.guest.death == "Bad hypercall 3\n"
    finally:
        g.close()


@pytest.mark.parametrize("deed", sorted(CASES))
def test_killed_guest_leaves_nothing_behind(native_build, deed):
    """Whatever killed it, destroy() leaves no thread, fd, timer or Unicorn instance.

    A Unicorn instance reserves a large translation buffer, so one left alive
    shows as virtual memory that did not come back; a timer as a thread.
    """
    me = psutil.Process()
    before_threads, before_fds = {t.id for t in me.threads()}, me.num_fds()
    before_vms = me.memory_info().vms
    g = boot(native_build, "kills", deed)
    g.run_to_end()
    g.close()
    assert {t.id for t in me.threads()} <= before_threads
    assert me.num_fds() <= before_fds
    assert me.memory_info().vms - before_vms < 64 << 20
