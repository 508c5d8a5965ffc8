"""What each hypercall does (spec §3.2).  One method per call number.

Calls arrive here from two places, with identical semantics: the
synchronous `int $0x1f` trap and the async ring.  Nothing returns a value to
the Guest; a malformed call kills it with the seed's text.  TLB flushes are
only *requested* here (vcpu.need_flush) and done once after the whole batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from cuse_lguest import abi
from cuse_lguest.cpu.switcher import SWITCHER_BASE
from cuse_lguest.memory.errors import GuestFault

if TYPE_CHECKING:
    from cuse_lguest.core.vcpu import VCpu

_FRAME = 0xFFFFF000


class Hypercalls:
    """The dispatch table, bound to one vCPU."""

    def __init__(self, vcpu: "VCpu") -> None:
        self.v = vcpu
        self.table: dict[int, Callable[[int, int, int, int], None]] = {
            abi.LHCALL_FLUSH_ASYNC: self._nothing,
            abi.LHCALL_LGUEST_INIT: self._init_again,
            abi.LHCALL_SHUTDOWN: self._shutdown,
            abi.LHCALL_NEW_PGTABLE: self._new_pgtable,
            abi.LHCALL_FLUSH_TLB: self._flush_tlb,
            abi.LHCALL_LOAD_IDT_ENTRY: self._load_idt_entry,
            abi.LHCALL_SET_STACK: self._set_stack,
            abi.LHCALL_TS: self._ts,
            abi.LHCALL_SET_CLOCKEVENT: self._set_clockevent,
            abi.LHCALL_HALT: self._halt,
            abi.LHCALL_SET_PTE: self._set_pte,
            abi.LHCALL_SET_PGD: self._set_pgd,
            abi.LHCALL_LOAD_TLS: self._load_tls,
            abi.LHCALL_NOTIFY: self._notify,
            abi.LHCALL_LOAD_GDT_ENTRY: self._load_gdt_entry,
            abi.LHCALL_SEND_INTERRUPTS: self._nothing,
        }

    def execute(self, nr: int, a1: int, a2: int, a3: int, a4: int) -> None:
        handler = self.table.get(nr)
        if handler is None:       # includes the retired 3, 11, 12 and PAE-only SET_PMD (13)
            raise GuestFault(f"Bad hypercall {nr}\n")
        handler(a1, a2, a3, a4)

    # ---- the calls ----------------------------------------------------------
    def _nothing(self, *_: int) -> None:
        """FLUSH_ASYNC and SEND_INTERRUPTS: the exit itself was the point."""

    def _init_again(self, *_: int) -> None:
        raise GuestFault("already have lguest_data")

    def _shutdown(self, msg_gpa: int, how: int, *_: int) -> None:
        """Power off or reboot.  A reboot stays a reboot even when the message is unreadable.

        Linux's `reboot -f` passes __pa(NULL) as the message, which lies past
        Guest memory.  The real host's read of it failed and killed the Guest
        with "bad read address ...", and then the restart flag still turned
        the death into ERESTART, so the launcher re-executed.  We do the same.
        """
        restart = how == abi.LGUEST_SHUTDOWN_RESTART
        try:
            raw = self.v.memory.read_bytes(msg_gpa, abi.SHUTDOWN_MSG_LEN)[:abi.SHUTDOWN_MSG_LEN - 1]
        except GuestFault as fault:
            self.v.shutdown(fault.reason, restart=restart)
            return
        message = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        self.v.shutdown(f"CRASH: {message}", restart=restart)

    def _new_pgtable(self, pgd_gpa: int, *_: int) -> None:
        self.v.machine.new_pgtable(pgd_gpa)

    def _flush_tlb(self, *_: int) -> None:
        self.v.need_flush = True

    def _load_idt_entry(self, vector: int, lo: int, hi: int, _: int) -> None:
        if vector in abi.IDT_IGNORED_VECTORS:
            return
        if vector >= abi.IDT_ENTRIES:
            raise GuestFault(f"Setting idt entry {vector}")
        if not hi & 0x8000:
            self.v.set_gate(vector, None)
            return
        gate_type = (hi >> 8) & 0xF
        if gate_type not in (abi.GATE_INTERRUPT, abi.GATE_TRAP):
            raise GuestFault(f"bad IDT type {gate_type}")
        self.v.set_gate(vector, ((lo & 0xFFFF) | (hi & 0xFFFF0000), (hi >> 13) & 3, gate_type))

    def _set_stack(self, ss: int, esp: int, pages: int, _: int) -> None:
        if ss & 3 != abi.GUEST_PL:
            raise GuestFault(f"bad stack segment {ss}")
        if pages > abi.KERNEL_STACK_PAGES_MAX:
            raise GuestFault(f"bad stack pages {pages}")
        for i in range(pages):
            page = (esp - 1 - i * abi.PAGE_SIZE) & 0xFFFFFFFF
            gpa = self.v.machine.pgdir.translate(page)
            if gpa is None or gpa >= self.v.memory.limit:
                raise GuestFault(f"bad stack page {page:#x}")
        self.v.set_kernel_stack(ss, esp)

    def _ts(self, on: int, *_: int) -> None:
        self.v.set_task_switched(bool(on))

    def _set_clockevent(self, delta_ns: int, *_: int) -> None:
        self.v.set_clockevent(delta_ns)

    def _halt(self, *_: int) -> None:
        self.v.halted = True

    def _set_pte(self, _pgd: int, vaddr: int, pte: int, _: int) -> None:
        """The Guest already wrote its PTE and Unicorn reads it directly: this is only news.

        Value 0 is the Guest's "flush this address"; a non-zero value is an
        announcement we validate (as the real host did when pre-installing an
        accessed or dirty entry) but need not flush for.
        """
        if vaddr >= SWITCHER_BASE:
            raise GuestFault("attempt to set pte into Switcher pages")
        if pte == 0:
            self.v.need_flush = True
        elif pte & abi.PTE_PRESENT and pte & (abi.PTE_ACCESSED | abi.PTE_DIRTY):
            if pte & abi.PTE_PSE or (pte >> 12) >= self.v.memory.pfnlimit:
                raise GuestFault("bad page table entry")

    def _set_pgd(self, pgd_gpa: int, index: int, *_: int) -> None:
        if index >= abi.PTRS_PER_PGD:
            raise GuestFault(f"Attempt to set pgd {index}/{abi.PTRS_PER_PGD}")
        pgdir = self.v.machine.pgdir
        if pgdir.guest_pgd == pgd_gpa & _FRAME and pgdir.sync(index):
            self.v.need_flush = True

    def _load_tls(self, gpa: int, *_: int) -> None:
        self.v.machine.gdt.load_tls(self.v.memory.read_bytes(gpa, 8 * abi.GDT_ENTRY_TLS_ENTRIES))

    def _notify(self, value: int, *_: int) -> None:
        self.v.notify = value

    def _load_gdt_entry(self, index: int, lo: int, hi: int, _: int) -> None:
        self.v.machine.gdt.load_entry(index, lo, hi)
