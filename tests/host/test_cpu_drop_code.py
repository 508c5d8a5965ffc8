"""Machine.drop_code: code rewritten behind Unicorn's back is re-translated, under paging too.

The launcher (shared mode) and the mirror (private mode) both write Guest
RAM without Unicorn seeing the stores, and a block read may land on a page
the Guest executed before.  Unicorn's own invalidation takes virtual
addresses; drop_code must hit the physical page whatever maps it, and only
the pages it is given: a block read scatters buffers around the kernel's code.
"""
from __future__ import annotations

import os
import struct

from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_EIP

from cuse_lguest.cpu.machine import Machine, page_runs
from cuse_lguest.memory.handles import acquire
from cuse_lguest.memory.shared import SharedGuestMemory
from cuse_lguest.testing.guestram import GuestRam

PD, PT_LOW, PT_HIGH = 0x1000, 0x2000, 0x5000
CODE_PA, CODE_VA, CALLER = 0x3000, 0x400000, 0x8000


def test_drop_code_under_paging_reaches_the_physical_page():
    from tests.conftest import needs_root
    needs_root()
    with GuestRam(4 << 20, device_pages=0) as ram:
        buf = ram.buf
        struct.pack_into("<I", buf, PD, PT_LOW | 7)
        for i in range(1024):
            struct.pack_into("<I", buf, PT_LOW + 4 * i, (i << 12) | 7)
        struct.pack_into("<I", buf, PD + 4, PT_HIGH | 7)
        struct.pack_into("<I", buf, PT_HIGH, CODE_PA | 7)      # the code page only at VA 0x400000
        buf[CODE_PA:CODE_PA + 6] = bytes([0xB8, 1, 0, 0, 0, 0xC3])           # mov $1,%eax; ret
        call_at = CALLER + 7
        rel = CODE_VA - (call_at + 5)
        buf[CALLER:CALLER + 14] = (bytes([0xBC]) + struct.pack("<I", 0x100000)  # mov $0x100000,%esp
                                   + bytes([0xCD, 0x1F])                        # int $0x1f: booted
                                   + bytes([0xE8]) + struct.pack("<i", rel)     # call CODE_VA
                                   + bytes([0xCD, 0x1F]))                       # int $0x1f: back to us
        memory = SharedGuestMemory(acquire(os.getpid(), ram.base, (4 << 20) // 4096))
        machine = Machine(memory, CALLER)
        try:
            machine.install_hooks(lambda vector: machine.uc.emu_stop(), lambda: False)
            assert machine.enter() == 0                # boots in linear mode, as a Guest does
            machine.new_pgtable(PD)                    # then paging, through the host's mirror

            def call() -> int:
                machine.regs.write(UC_X86_REG_EIP, call_at)
                assert machine.enter() == 0
                return machine.regs.read(UC_X86_REG_EAX)

            assert call() == 1
            buf[CODE_PA + 1] = 2                       # a write Unicorn never sees
            assert call() == 1                         # it still runs its old translation
            machine.drop_code([(CODE_PA - 0x1000, 0x1000), (CODE_PA + 0x1000, 16)])
            assert call() == 1                         # pages on both sides: the code page keeps its translation
            machine.drop_code([(CODE_PA + 2, 1), (0x100000, 4)])
            assert call() == 2
        finally:
            machine.close()
            memory.close()


def test_page_runs_merge_touching_pages_only():
    assert page_runs([]) == []
    assert page_runs([(0x5000, 0)]) == []
    assert page_runs([(0x3001, 1), (0x1000, 0x1000), (0x2fff, 2)]) == [(0x1000, 0x4000)]
    assert page_runs([(0x9000, 0x10), (0x1000, 0x1001)]) == [(0x1000, 0x3000), (0x9000, 0xA000)]
