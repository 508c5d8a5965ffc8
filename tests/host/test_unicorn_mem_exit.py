"""A guest store that fails leaves at the store itself (native/unicorn/mem-exit.patch).

Stock Unicorn 2.1.4 calls an exit check from translated code after every guest
load and store, a tenth of a Linux Guest's shell loop (docs/performance.md,
peer_emulator).  The check exists because a store that cannot be done
(unmapped or read-only memory that no hook handled) only records the error and
asks for an exit, then returns into the block as if it had stored.  The patch
makes such a store leave the block at once, EIP on the storing instruction (as
a failed load already did), and emits the check only while a memory hook or an
MMIO region exists, which can stop emulation inside an access that completes.

The cases marked `needs_patch` fail without it, on the stock wheel too: a
store made inside a helper (here `fnsave`, 108 bytes) never had a check after
it, so the block ran on past the failed instruction, stored elsewhere and
stopped on a later one, and a hook declining the access was asked once per
piece; and a memory hook added after a block was translated was ignored in
that block (the patch drops blocks translated without checks when the first
memory hook arrives, so the hook is seen and its stop lands at its access).
The others hold with and without it and guard what the patch must keep: the
error code, EIP and untouched state for inline stores, read-modify-write and
string instructions, and exactly one call to a hook that handles the access.

CI always runs the cases that need the patch, on the build ./bootstrap makes
from native/unicorn; elsewhere an older installed Unicorn skips them, saying so.
"""
from __future__ import annotations

import os

import pytest
from unicorn import (UC_ARCH_X86, UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED, UC_HOOK_MEM_WRITE,
                     UC_HOOK_MEM_WRITE_UNMAPPED, UC_MODE_32, UC_PROT_READ, Uc, UcError)
from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_EDI, UC_X86_REG_EIP

from cuse_lguest import unicorn_build

MEM_EXIT = "mem-exit"              # the patch's name in the build's marker
CODE_AT = 0x1000
FLAG = 0x8000                      # the "visible side effect": a store that must not happen
RAM_END = 0x10000
READ_ONLY = 0x20000                # one read-only page
UNMAPPED = 0x50000


def program(ebx: int, op: str) -> bytes:
    """`mov $ebx, %ebx; <op>; mov $7, %ecx; movl $1, FLAG; nop`: op at 0x1005, the side effects after it."""
    return (bytes.fromhex("bb") + ebx.to_bytes(4, "little") + bytes.fromhex(op)
            + bytes.fromhex("b907000000" "c70500800000" "01000000" "90"))


FNSAVE = "dd33"                    # fnsave (%ebx): 108 bytes, stored by a helper
STORE = "8903"                     # mov %eax, (%ebx)
INCL = "ff03"                      # incl (%ebx): load, then store
OP_AT = CODE_AT + 5


class Run:
    """One emu_start of a program: the error it ended with, EIP, ECX, the flag word, hook calls."""

    def __init__(self, code: bytes, on_write_unmapped=None, *, regs: dict[int, int] | None = None) -> None:
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, RAM_END)
        uc.mem_map(READ_ONLY, 0x1000, UC_PROT_READ)
        uc.mem_write(CODE_AT, code)
        for reg, value in (regs or {}).items():
            uc.reg_write(reg, value)
        self.calls: list[int] = []
        if on_write_unmapped is not None:
            def hook(uc_: Uc, _access: int, address: int, _size: int, _value: int, _ud: object) -> bool:
                self.calls.append(address)
                return on_write_unmapped(uc_, address)
            uc.hook_add(UC_HOOK_MEM_WRITE_UNMAPPED, hook)
        self.error = 0
        try:
            uc.emu_start(CODE_AT, CODE_AT + len(code))
        except UcError as e:
            self.error = e.errno
        self.uc = uc
        self.eip = uc.reg_read(UC_X86_REG_EIP)
        self.ecx = uc.reg_read(UC_X86_REG_ECX)
        self.flag = int.from_bytes(uc.mem_read(FLAG, 4), "little")

    def stopped_at_op(self, error: int) -> None:
        assert self.error == error, f"emu_start ended with error {self.error}, expected {error}"
        assert (self.eip, self.ecx, self.flag) == (OP_AT, 0, 0), (
            f"stopped at EIP {self.eip:#x} with ECX {self.ecx} and the flag {self.flag}: the "
            f"instructions after the failed store at {OP_AT:#x} ran")


def _patch_installed() -> bool:
    return unicorn_build.current().has(MEM_EXIT)


needs_patch = pytest.mark.skipif(
    os.environ.get("CI") != "true" and not _patch_installed(),
    reason="the installed Unicorn predates native/unicorn/mem-exit.patch: run ./bootstrap install "
           "(CI always runs this test)")


@needs_patch
def test_a_helper_store_to_unmapped_memory_stops_on_its_instruction() -> None:
    Run(program(UNMAPPED, FNSAVE)).stopped_at_op(UC_ERR_WRITE_UNMAPPED)


@needs_patch
def test_a_helper_store_to_read_only_memory_stops_on_its_instruction() -> None:
    run = Run(program(READ_ONLY, FNSAVE))
    run.stopped_at_op(UC_ERR_WRITE_PROT)
    assert bytes(run.uc.mem_read(READ_ONLY, 108)) == bytes(108)


@needs_patch
def test_a_hook_that_declines_a_helper_store_is_asked_once() -> None:
    run = Run(program(UNMAPPED, FNSAVE), lambda _uc, _address: False)
    run.stopped_at_op(UC_ERR_WRITE_UNMAPPED)
    assert run.calls == [UNMAPPED]


def test_an_inline_store_to_unmapped_memory_stops_on_its_instruction() -> None:
    Run(program(UNMAPPED, STORE)).stopped_at_op(UC_ERR_WRITE_UNMAPPED)
    run = Run(program(UNMAPPED, STORE), lambda _uc, _address: False)
    run.stopped_at_op(UC_ERR_WRITE_UNMAPPED)
    assert run.calls == [UNMAPPED]


def test_read_modify_write_on_read_only_memory_changes_nothing() -> None:
    run = Run(program(READ_ONLY, INCL))
    run.stopped_at_op(UC_ERR_WRITE_PROT)
    assert bytes(run.uc.mem_read(READ_ONLY, 4)) == bytes(4)


def test_rep_stos_into_unmapped_memory_stops_at_the_failing_round() -> None:
    # rep stosl, four rounds from 8 bytes below the end of RAM: two land, the third fails.
    run = Run(program(0, "f3ab"), regs={UC_X86_REG_EDI: RAM_END - 8, UC_X86_REG_ECX: 4})
    assert run.error == UC_ERR_WRITE_UNMAPPED
    assert (run.eip, run.ecx, run.uc.reg_read(UC_X86_REG_EDI), run.flag) == (OP_AT, 2, RAM_END, 0)


def test_a_hook_that_maps_the_page_is_asked_once_and_the_store_lands() -> None:
    def map_it(uc: Uc, address: int) -> bool:
        uc.mem_map(address & ~0xFFF, 0x1000)
        return True
    for op in (STORE, FNSAVE):
        run = Run(program(UNMAPPED, op), map_it)
        assert run.error == 0 and run.calls == [UNMAPPED]
        assert (run.ecx, run.flag) == (7, 1)


@needs_patch
def test_a_write_hook_added_after_the_block_ran_stops_at_its_store() -> None:
    # 1000: movl $1, FLAG; 100a: mov $7, %ecx; 100f: movl $2, FLAG+4; 1019: jmp 1020; 1020: nop.
    # The stop address lies in another block, so the first one stays translated between the runs.
    code = (bytes.fromhex("c70500800000" "01000000" "b907000000" "c70504800000" "02000000" "eb05")
            + bytes.fromhex("90") * 6)
    run = Run(code)
    assert (run.error, run.ecx, run.flag) == (0, 7, 1)
    uc, seen = run.uc, []

    def on_write(uc_: Uc, _access: int, address: int, _size: int, _value: int, _ud: object) -> None:
        seen.append(address)
        uc_.emu_stop()
    uc.reg_write(UC_X86_REG_ECX, 0)
    uc.hook_add(UC_HOOK_MEM_WRITE, on_write, begin=FLAG, end=FLAG + 3)
    uc.emu_start(CODE_AT, CODE_AT + len(code))
    assert seen == [FLAG]
    assert (uc.reg_read(UC_X86_REG_EIP), uc.reg_read(UC_X86_REG_ECX)) == (CODE_AT, 0), \
        "the stop from the write hook did not land at the store"
