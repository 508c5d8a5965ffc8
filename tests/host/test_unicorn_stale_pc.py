"""A stop reports the PC it stopped at, even after a hook has moved the PC (native/unicorn/stale-pc.patch).

uc_reg_write() of the PC from a hook tells Unicorn that the *next* exit from
translated code must not rebuild the PC from the block (the caller set it).
In Unicorn 2.1.4 that request outlives its exit when the exit is taken
between blocks, which is what happens after an interrupt hook: a later stop,
blocks further on, then skips the rebuild and leaves whatever PC was last
stored, which with chained blocks is an earlier block's.  Resuming there
re-runs instructions: how a Linux Guest crashed without a block hook (whose
per-block PC store hid the bug), docs/performance.md, guest_compute.

The program: an `int3` whose hook writes EIP (as the core does when it
enters a Guest's trap handler), then a loop of two chained blocks, T (`dec
%ecx; jmp L`) and L (a load, `test`, `jnz T`).  The last PC stored before the
chain closes is T's; a memory-read hook in L stops emulation on the 50th
load.  The stop must report the load's own address, and so must the hook.

It fails on every Unicorn without the fix (checked on the stock 2.1.4 wheel
and on our build before it).  CI always runs it, on the build ./bootstrap
makes from native/unicorn; elsewhere an installed Unicorn built before the
fix (or the stock wheel, which a developer may use) skips it, saying so.
"""
from __future__ import annotations

import ctypes
import os

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_MEM_READ, UC_MODE_32, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_EIP, UC_X86_REG_ESP

from cuse_lguest import unicorn_build
from cuse_lguest.cpu.stopper import STALE_PC_FIX

CODE_AT, DATA, END = 0x1000, 0x3000, 0x1016
CODE = bytes.fromhex(
    "cc"                  # 1000: int3           (the hook writes EIP = 0x1001)
    "b964000000"          # 1001: mov $100, %ecx
    "eb00"                # 1006: jmp T
    "49"                  # 1008: T: dec %ecx
    "eb00"                # 1009: jmp L
    "8b1500300000"        # 100b: L: mov 0x3000, %edx  (the load that stops)
    "85c9"                # 1011: test %ecx, %ecx
    "75f3"                # 1013: jnz T
    "90")                 # 1015: nop
LOAD = 0x100B
STOP_AT_LOAD = 50


def run(write_pc_in_hook: bool) -> tuple[int, int, set[int]]:
    """(EIP after the stop, ECX after the stop, EIPs the read hook saw)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE_AT, CODE)
    uc.reg_write(UC_X86_REG_ESP, 0x8000)
    loads, seen = [0], set()

    def on_int3(uc_: Uc, _intno: int, _ud: object) -> None:
        if write_pc_in_hook:      # the single-register call, as cpu/regs.py makes it
            pc = ctypes.c_uint32(CODE_AT + 1)
            assert uclib.uc_reg_write(uc_._uch, UC_X86_REG_EIP, ctypes.byref(pc)) == 0

    def on_load(uc_: Uc, _access: int, _addr: int, _size: int, _value: int, _ud: object) -> None:
        loads[0] += 1
        seen.add(uc_.reg_read(UC_X86_REG_EIP))
        if loads[0] == STOP_AT_LOAD:
            uc_.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_int3)
    uc.hook_add(UC_HOOK_MEM_READ, on_load, begin=DATA, end=DATA + 3)
    uc.emu_start(CODE_AT, END)
    return uc.reg_read(UC_X86_REG_EIP), uc.reg_read(UC_X86_REG_ECX), seen


def test_control_without_a_pc_write_in_a_hook() -> None:
    assert run(False) == (LOAD, 100 - STOP_AT_LOAD, {LOAD})


def _fix_installed() -> bool:
    return unicorn_build.current().has(STALE_PC_FIX)


@pytest.mark.skipif(os.environ.get("CI") != "true" and not _fix_installed(),
                    reason="the installed Unicorn predates native/unicorn/stale-pc.patch: "
                           "run ./bootstrap install (CI always runs this test)")
def test_a_stop_after_a_hook_moved_the_pc_reports_where_it_stopped() -> None:
    eip, ecx, seen = run(True)
    assert seen == {LOAD}, f"the read hook saw EIP {sorted(map(hex, seen))}: a stale PC"
    assert (eip, ecx) == (LOAD, 100 - STOP_AT_LOAD), \
        f"stopped at EIP {eip:#x}, ECX {ecx}: resuming there re-runs instructions (stale PC)"
