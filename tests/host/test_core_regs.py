"""The register batches the core's exits read (cpu/regs.py): values, order, and 16-bit selectors."""
from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_EAX, UC_X86_REG_EFLAGS, UC_X86_REG_ESI,
                               UC_X86_REG_ESP, UC_X86_REG_SS)

from cuse_lguest.cpu.regs import RawRegs


@pytest.fixture
def uc():
    u = Uc(UC_ARCH_X86, UC_MODE_32)
    yield u
    u._Uc__finalizer()


def test_batch_reads_what_single_reads_read_in_its_own_order(uc):
    regs = RawRegs(uc)
    for reg, value in ((UC_X86_REG_EAX, 0xDEADBEEF), (UC_X86_REG_ESI, 7), (UC_X86_REG_ESP, 0x8000FFFC),
                       (UC_X86_REG_EFLAGS, 0x246)):
        regs.write(reg, value)
    batch = regs.batch(UC_X86_REG_ESI, UC_X86_REG_EFLAGS, UC_X86_REG_EAX, UC_X86_REG_ESP, UC_X86_REG_CS)
    singles = tuple(regs.read(r) for r in (UC_X86_REG_ESI, UC_X86_REG_EFLAGS, UC_X86_REG_EAX,
                                           UC_X86_REG_ESP, UC_X86_REG_CS))
    assert batch.read() == singles == (7, 0x246, 0xDEADBEEF, 0x8000FFFC, 0)
    regs.write(UC_X86_REG_EAX, 1)
    assert batch.read()[2] == 1         # every read() is a fresh one


def test_selectors_are_16_bits_whatever_their_slot_held_before(uc):
    """Unicorn writes two bytes of a selector's slot; the rest of it must not leak into the value."""
    regs = RawRegs(uc)
    batch = regs.batch(UC_X86_REG_CS, UC_X86_REG_SS)
    batch._vals[0] = batch._vals[1] = 0xFFFFFFFFFFFFFFFF
    assert batch.read() == (0, 0)
