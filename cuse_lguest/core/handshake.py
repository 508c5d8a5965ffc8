"""LHCALL_LGUEST_INIT: the Guest tells us where its lguest_data lives.

Until this call the Guest can do nothing else (every other hypercall kills
it) and no interrupt can reach it.  We check the structure lies inside Guest
memory, agree on the syscall vector, learn the "never interrupt here" EIP
window and the kernel's base address, and tell the Guest how much of the top
of its address space belongs to us (reserve_mem) and that it must not trust
the TSC (tsc_khz 0: Unicorn's TSC rate is not something we measure
reliably, so the Guest uses lguest_data.time as its clock).
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from cuse_lguest import abi
from cuse_lguest.cpu.switcher import RESERVE_MEM, SWITCHER_BASE
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory


@dataclass(frozen=True)
class LguestData:
    """What the handshake learned; the structure itself stays in Guest memory."""
    gpa: int
    noirq_start: int
    noirq_end: int


_TIMESPEC = struct.Struct("<II")      # tv_sec, tv_nsec


def write_time(memory: GuestMemory, ld: int) -> None:
    """lguest_data.time = the wall clock (CLOCK_REALTIME timespec), in one write: every IRQ does it."""
    memory.write_bytes(ld + abi.LGUEST_DATA_TIME, _TIMESPEC.pack(*divmod(time.time_ns(), 1_000_000_000)))


def lguest_init(memory: GuestMemory, gpa: int) -> LguestData:
    """The handshake, in the 3.10 host's order; raises GuestFault with its kill texts."""
    if gpa + abi.LGUEST_DATA_SIZE > memory.limit:
        raise GuestFault(f"bad guest page {gpa:#x}")
    memory.write_u32(gpa + abi.LGUEST_DATA_TSC_KHZ, 0)
    if memory.read_u32(gpa + abi.LGUEST_DATA_SYSCALL_VEC) != abi.SYSCALL_VECTOR:
        raise GuestFault("bad syscall vector")
    data = LguestData(gpa, memory.read_u32(gpa + abi.LGUEST_DATA_NOIRQ_START),
                      memory.read_u32(gpa + abi.LGUEST_DATA_NOIRQ_END))
    write_time(memory, gpa)
    kernel_address = memory.read_u32(gpa + abi.LGUEST_DATA_KERNEL_ADDRESS)
    memory.write_u32(gpa + abi.LGUEST_DATA_RESERVE_MEM, RESERVE_MEM)
    if kernel_address >= SWITCHER_BASE:
        raise GuestFault(f"bad kernel address {kernel_address:#x}")
    return data
