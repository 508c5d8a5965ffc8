"""Shared helpers for the core tests: load a test guest into launcher-shaped RAM and run it.

(Named test_core_*.py to stay inside the core's test namespace; it holds no tests.)
"""
from __future__ import annotations

import os
import pathlib
import threading
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from cuse_lguest import abi
from cuse_lguest.core import create_guest
from cuse_lguest.core.contract import GuestParams, RunExit
from cuse_lguest.memory.handles import acquire
from cuse_lguest.testing.guestram import GuestRam, load_elf

MEM = 8 << 20
PFNLIMIT = MEM // abi.PAGE_SIZE + 7


def guest_elf(build: pathlib.Path, name: str) -> pathlib.Path:
    return build / "guests" / "core" / f"{name}.elf"


def symbol(path: pathlib.Path, name: str) -> int:
    with open(path, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        return sym[0]["st_value"]


@dataclass
class Booted:
    """One test guest in its RAM, and what its runs produced."""
    ram: GuestRam
    guest: object
    elf: pathlib.Path
    claimed: list[int] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def string_at(self, gpa: int) -> str:
        end = self.ram.buf.find(b"\0", gpa)
        return self.ram.buf[gpa:end].decode()

    def run_to_end(self, max_runs: int = 100000) -> object:
        """Run, collecting NOTIFY strings, until the Guest dies; return its death."""
        for _ in range(max_runs):
            why, value = self.guest.run()
            if why is RunExit.DEAD:
                return self.guest.death
            assert why is RunExit.NOTIFY, why
            self.console.append(self.string_at(value))
        raise AssertionError("guest did not finish")

    def close(self) -> None:
        self.guest.destroy()
        self.ram.close()


def boot(build: pathlib.Path, name: str, cmdline: str = "", claim=None) -> Booted:
    ram = GuestRam(MEM)
    elf = guest_elf(build, name)
    entry = load_elf(ram.buf, elf)
    ram.buf[abi.CMDLINE_GPA:abi.CMDLINE_GPA + len(cmdline) + 1] = cmdline.encode() + b"\0"
    claimed: list[int] = []

    def claim_notify(value: int) -> bool:
        if claim is not None and claim(value):
            claimed.append(value)
            return True
        return False
    memory = acquire(os.getpid(), ram.base, PFNLIMIT)
    guest = create_guest(GuestParams(pid=os.getpid(), base=ram.base, pfnlimit=PFNLIMIT,
                                     start=entry, claim_notify=claim_notify, memory=memory))
    return Booted(ram, guest, elf, claimed)


def wait_until_halted(g: "Booted") -> None:
    """Until the vCPU sleeps in HALT (no timing involved: it is waited for, however long it takes)."""
    while not g.guest.vcpu.halted:
        threading.Event().wait(0.001)
