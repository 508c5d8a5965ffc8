"""Getting interrupts and traps into the Guest, the way lguest's host did.

Unicorn never delivers anything through an IDT: every fault and `int`
arrives in a hook, and the host builds the frame itself (which is exactly
what lguest's host did for reflected traps).  The frame is lguest's: if the
Guest was in user mode (SS RPL != 1) switch to the kernel stack from
SET_STACK and push SS and ESP; then EFLAGS (with IF taken from the Guest's
virtual interrupt flag, irq_enabled bit 0x200), CS, EIP and the error code
for vectors that have one.  The stack is translated once, at its top, and
written downwards word by word, so a bad stack dies with the seed's
"bad write address" text.  Interrupt gates disable the virtual IF.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.x86_const import (UC_X86_REG_CR2, UC_X86_REG_CS, UC_X86_REG_EAX, UC_X86_REG_EFLAGS,
                               UC_X86_REG_EIP, UC_X86_REG_ESP)

from cuse_lguest import abi
from cuse_lguest.core import exitstats
from cuse_lguest.core.handshake import write_time
from cuse_lguest.memory.errors import GuestFault

if TYPE_CHECKING:
    from cuse_lguest.core.vcpu import VCpu

_CLEARED_ON_ENTRY = abi.X86_EFLAGS_TF | abi.X86_EFLAGS_VM | abi.X86_EFLAGS_RF | abi.X86_EFLAGS_NT
_GP_EMULATED_LENGTH = {0xFA: 1, 0xE4: 2, 0xE5: 2, 0xEC: 1, 0xED: 1, 0xE6: 2, 0xE7: 2, 0xEE: 1, 0xEF: 1}


def push_frame(v: "VCpu", gate: tuple[int, int, int], err: int | None, eip: int) -> None:
    """Enter the Guest's handler `gate` = (offset, dpl, type) as the CPU would have."""
    regs, mem = v.regs, v.memory
    cs, ss, esp, eflags = v.frame_regs.read()
    running_flags = eflags            # the live EFLAGS; the frame's copy takes IF from the Guest's flag
    from_user = ss & 3 != abi.GUEST_PL
    if from_user:
        new_ss, new_esp = v.kernel_stack
        words = [ss, esp]
    else:
        new_ss, new_esp = ss, esp
        words = []
    if not mem.read_u32(v.ld.gpa + abi.LGUEST_DATA_IRQ_ENABLED) & abi.X86_EFLAGS_IF:
        eflags &= ~abi.X86_EFLAGS_IF
    words += [eflags, cs, eip]
    if err is not None:
        words.append(err)
    top = (new_esp - 4) & 0xFFFFFFFF
    gpa = v.machine.pgdir.translate(top)
    if gpa is None:
        raise GuestFault(f"Bad address {top:#x}")
    for word in words:
        mem.write_u32(gpa, word)
        gpa -= 4
    if from_user:
        v.machine.enter_ring1(new_ss)
    regs.write(UC_X86_REG_ESP, new_esp - 4 * len(words))
    regs.write(UC_X86_REG_EFLAGS, running_flags & ~_CLEARED_ON_ENTRY)
    regs.write(UC_X86_REG_EIP, gate[0])
    if gate[2] == abi.GATE_INTERRUPT:
        mem.write_u32(v.ld.gpa + abi.LGUEST_DATA_IRQ_ENABLED, 0)


def reflect(v: "VCpu", vector: int, err: int | None, eip: int, cr2: int = 0) -> None:
    """Hand a trap to the Guest's own handler, or kill it if it has none."""
    gate = v.idt[vector] if vector < abi.IDT_ENTRIES else None
    if gate is None:
        shown = cr2 if vector == 14 else (err or 0)
        raise GuestFault(f"unhandled trap {vector} at {eip:#x} ({shown:#x})")
    push_frame(v, gate, err if vector in abi.ERROR_CODE_VECTORS else None, eip)


def deliver_pending_irq(v: "VCpu") -> None:
    """One delivery attempt (spec §4.4): the lowest pending IRQ the Guest has not blocked.

    When the Guest cannot take it right now (its virtual IF is off, or it is
    inside its iret window) the real host simply tried again at its next exit,
    and a host timer tick guaranteed one every few milliseconds even for a
    Guest spinning in a loop.  Unicorn gives us no such exits, and a 3.x Guest
    re-enabling interrupts through `sti` or `iret` never says so (only the
    restore-flags path sends SEND_INTERRUPTS), so we schedule that tick
    ourselves: retry_delivery_soon() kicks the vCPU shortly afterwards.
    """
    mem, ld = v.memory, v.ld.gpa
    pending = v.guest.pending_irqs()
    if not pending:
        return
    candidates = pending & ~mem.read_u32(ld + abi.LGUEST_DATA_BLOCKED_INTERRUPTS)
    if not candidates:
        return
    eip = v.regs.read(UC_X86_REG_EIP)
    if v.ld.noirq_start <= eip < v.ld.noirq_end:
        v.guest.retry_delivery_soon()
        return
    if v.halted:
        mem.write_u32(ld + abi.LGUEST_DATA_IRQ_ENABLED, abi.X86_EFLAGS_IF)
        v.halted = False
    elif not mem.read_u32(ld + abi.LGUEST_DATA_IRQ_ENABLED) & abi.X86_EFLAGS_IF:
        mem.write_u32(ld + abi.LGUEST_DATA_IRQ_PENDING, abi.X86_EFLAGS_IF)
        v.guest.retry_delivery_soon()
        return
    irq = (candidates & -candidates).bit_length() - 1
    gate = v.idt[abi.FIRST_EXTERNAL_VECTOR + irq]
    if gate is not None:
        v.guest.take_irq(irq)
        push_frame(v, gate, None, eip)
        v.stats.add(exitstats.IRQ + irq)
    write_time(mem, ld)
    if not candidates & ~(1 << irq):
        mem.write_u32(ld + abi.LGUEST_DATA_IRQ_PENDING, 0)


def _instruction_length_of_int(v: "VCpu", vector: int, eip_after: int) -> int:
    """`int3` (CC), `into` (CE) and `int1` (F1) are one byte; `int n` (CD nn) two."""
    if vector in (1, 3, 4):
        gpa = v.machine.pgdir.translate((eip_after - 1) & 0xFFFFFFFF)
        if gpa is not None and v.memory.read_u8(gpa) in (0xF1, 0xCC, 0xCE):
            return 1
    return 2


def software_interrupt(v: "VCpu", vector: int, eip_after: int, cpl: int) -> None:
    """`int n` from Guest code: the gate's DPL decides (Unicorn checks nothing)."""
    gate = v.idt[vector]
    if gate is None or gate[1] < cpl:
        start = (eip_after - _instruction_length_of_int(v, vector, eip_after)) & 0xFFFFFFFF
        reflect(v, 13, vector * 8 + 2, start)
    else:
        push_frame(v, gate, None, eip_after)


def page_fault(v: "VCpu", err: int, eip: int) -> None:
    cr2 = v.regs.read(UC_X86_REG_CR2)
    if v.machine.pgdir.sync(cr2 >> 22):
        v.machine.flush_tlb()       # the Guest changed its PDE without telling us: retry
        return
    if v.ld is not None:
        v.memory.write_u32(v.ld.gpa + abi.LGUEST_DATA_CR2, cr2)
    reflect(v, 14, err, eip, cr2)


def general_protection(v: "VCpu", err: int, eip: int) -> None:
    """Emulate what lguest emulated (cli, in, out from the Guest kernel); reflect the rest."""
    if err == 0 and v.regs.read(UC_X86_REG_CS) & 3 == abi.GUEST_PL and _emulate(v, eip):
        return
    reflect(v, 13, err, eip)


def _emulate(v: "VCpu", eip: int) -> bool:
    def byte_at(addr: int) -> int:
        gpa = v.machine.pgdir.translate(addr & 0xFFFFFFFF)
        if gpa is None:
            raise GuestFault(f"Bad address {addr & 0xFFFFFFFF:#x}")
        return v.memory.read_u8(gpa)
    op = byte_at(eip)
    prefix = 0
    if op == 0x66:
        prefix, op = 1, byte_at(eip + 1)
    length = _GP_EMULATED_LENGTH.get(op)
    if length is None:
        return False
    regs = v.regs
    if op in (0xE4, 0xEC):
        regs.write(UC_X86_REG_EAX, regs.read(UC_X86_REG_EAX) | 0xFF)
    elif op in (0xE5, 0xED):
        regs.write(UC_X86_REG_EAX, regs.read(UC_X86_REG_EAX) | 0xFFFF if prefix else 0xFFFFFFFF)
    regs.write(UC_X86_REG_EIP, eip + prefix + length)
    return True


def hardware_trap(v: "VCpu", vector: int, err: int, eip: int) -> None:
    """A real exception (not `int n`) raised by Guest code."""
    if vector == 14:
        page_fault(v, err, eip)
    elif vector == 13:
        general_protection(v, err, eip)
    elif vector == 7 and not v.ts:
        v.machine.set_ts(False)     # lazy FPU state is the host's business: resume silently
    else:
        reflect(v, vector, err, eip)
