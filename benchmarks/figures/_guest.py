"""The benchmark guest (benchmarks/guests/bench.c), under the full core and on a bare Unicorn.

`CoreBench` boots it the way a launcher would, through the in-process
Device (INITIALIZE, then read() runs it), so every figure that uses it pays
for the whole host path: Device, core, hooks, memory layer.  `BareBench`
loads the same ELF into a bare Unicorn and calls one of its functions
directly: the same instructions with nothing of ours around them.
"""
from __future__ import annotations

import os
import pathlib
import struct
import time
from typing import Callable

from elftools.elf.elffile import ELFFile
from unicorn import UC_HOOK_INTR
from unicorn.x86_const import UC_X86_REG_ESP

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestFactory
from cuse_lguest.cpu._native import ffi as _ffi
from cuse_lguest.device import Device
from cuse_lguest.testing import flatx86
from cuse_lguest.testing.guestram import GuestRam, load_elf
from cuse_lguest.testing.transport import DeviceTransport

# bench.c's modes and the offsets of `struct bench`'s fields.
MODES = {"stop": 0, "compute": 1, "hcalls": 2, "pte_sync": 3, "pte_ring": 4,
         "notify": 5, "irq_spin": 6, "irq_halt": 7}
FIELDS = {"mode": 0, "n": 4, "irq": 8, "notify": 12, "seq": 16, "ack": 20, "handled": 24,
          "stamp_lo": 28, "stamp_hi": 32, "result": 36}


def symbols(elf: pathlib.Path, *names: str) -> list[int]:
    with open(elf, "rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        return [table.get_symbol_by_name(name)[0]["st_value"] for name in names]


class CoreBench:
    """One benchmark guest under the core.  Use it from the thread that created it (the owner)."""

    def __init__(self, elf: pathlib.Path, mem_mb: int = 8, factory: GuestFactory | None = None) -> None:
        """`factory`: where the Guest runs (default: the core, in this process)."""
        self.ram = GuestRam(mem_mb << 20)
        self.bench, self.ready, self.lguest_data = symbols(elf, "bench", "ready", "lguest_data")
        start = load_elf(self.ram.buf, elf)
        self.device = Device(factory)
        self.transport = DeviceTransport(self.device)
        word = self.transport.word
        fmt = "<4I" if word == 4 else "<4Q"
        started = time.perf_counter()
        got = self.transport.write(struct.pack(fmt, abi.LHREQ_INITIALIZE, self.ram.base,
                                               self.ram.size // abi.PAGE_SIZE, start))
        if got < 0:
            self.close()
            raise RuntimeError(f"INITIALIZE failed: {os.strerror(-got)}")
        self._resume()                       # boot up to the first "ready"
        self.startup = time.perf_counter() - started   # INITIALIZE to the first NOTIFY (figure `startup`)

    def __getitem__(self, field: str) -> int:
        return struct.unpack_from("<I", self.ram.buf, self.bench + FIELDS[field])[0]

    def __setitem__(self, field: str, value: int) -> None:
        struct.pack_into("<I", self.ram.buf, self.bench + FIELDS[field], value)

    def irq_blocked(self, line: int) -> bool:
        """Has the Guest still blocked IRQ `line` (lguest_data.blocked_interrupts)?"""
        at = self.lguest_data + abi.LGUEST_DATA_BLOCKED_INTERRUPTS
        return bool(struct.unpack_from("<I", self.ram.buf, at)[0] >> line & 1)

    @property
    def stamp(self) -> int:
        return self["stamp_hi"] << 32 | self["stamp_lo"]

    def write(self, words: tuple[int, ...]) -> int:
        fmt = "<" + ("I" if self.transport.word == 4 else "Q") * len(words)
        return self.transport.write(struct.pack(fmt, *words))

    def irq(self, line: int) -> int:
        return self.write((abi.LHREQ_IRQ, line))

    def irq_shortcut(self, line: int) -> int:
        """LHREQ_IRQ as `serve` answers it: the transport's C call into the line the device offers.

        0 when the line took it, -1 when it left it to Device.write (as the
        transport would then do).
        """
        shortcut = self.device.irq_shortcut(self.transport.fh)
        if shortcut is None:
            return -1
        inject = _ffi.cast("int (*)(void *, uint64_t)", shortcut.line.inject)   # cl_irq_fn
        return inject(_ffi.cast("void *", shortcut.line.target), line)

    def _resume(self) -> None:
        got = self.transport.read(self.transport.word)
        if isinstance(got, int) or int.from_bytes(got, "little") != self.ready:
            death = self.transport.read(1023)
            raise RuntimeError(f"bench guest: read gave {got!r}, death {death!r}")

    def run(self, mode: str, n: int, clock=time.perf_counter) -> float:
        """Do one operation in the Guest; its time in seconds by `clock` (including one exit).

        The Guest runs on the calling thread, so time.thread_time gives its CPU time."""
        self["mode"], self["n"] = MODES[mode], n
        start = clock()
        self._resume()
        return clock() - start

    def close(self) -> None:
        self.transport.close()               # release destroys the Guest
        self.ram.close()

    def __enter__(self) -> "CoreBench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BareBench:
    """The benchmark guest's code on a bare 32-bit Unicorn (flat segments, no paging, no hooks)."""

    RETURN = 0x8000                          # where emu_start stops: a called function returned

    def __init__(self, elf: pathlib.Path) -> None:
        self.uc = flatx86.machine()
        with open(elf, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    self.uc.mem_write(seg["p_paddr"], seg.data())
        self.elf = elf

    def hook_intr(self, handler: Callable[[], None]) -> None:
        self.uc.hook_add(UC_HOOK_INTR, lambda _uc, _intno, _ud: handler())

    def call(self, function: str, n: int, clock=time.perf_counter) -> float:
        """Call `function(n)`; its time in seconds by `clock` (wall time unless told)."""
        (address,) = symbols(self.elf, function)
        esp = 0x90000 - 8
        self.uc.mem_write(esp, struct.pack("<II", self.RETURN, n))
        self.uc.reg_write(UC_X86_REG_ESP, esp)
        start = clock()
        self.uc.emu_start(address, self.RETURN)
        return clock() - start
