"""The check at every block start still sees both of its stop requests (native/unicorn/tb-start-inline.patch).

Unicorn checks for a stop before the first instruction of every translated
block.  Stock 2.1.4 makes that check a helper call, a tenth of a Linux
Guest's shell loop (docs/performance.md, peer_emulator); the patch tests its
two conditions inline and calls the helper only when one is set: the exit
request that uc_emu_stop() raises (here from Unicorn's own timeout thread),
and our block-stop flag (stopper.py; native/unicorn/block-stop.patch).

The Guest spins in two blocks chained to each other (`dec %ecx; jmp` and
`jnz`), with no memory access, so nothing but the block-start check can end
it: a check that missed a request would spin for four billion rounds.  Each case therefore runs in a child
process with a deadline, and a hang fails the test instead of hanging it.
These are correctness guards: stock Unicorn passes them too (the patch is for
speed, which benchmarks/ measures); they fail if the inline test is wrong.
Checked on two deliberately broken builds: with the exit-request branch never
taken the timeout case fails, with the flag branch skipped the flag case does
(each Guest ran all four billion rounds, about 20 s, and ended with ECX 0).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cuse_lguest.cpu.stopper import BLOCK_STOP_ENTRY, library_symbol

DEADLINE_S = 60.0
BLOCK_STARTS = (0x1005, 0x1008)     # L1 and L2 below: where a stop at a block start leaves EIP
END = 0x100B

CHILD = r"""
import ctypes, json, sys, threading, time
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_EIP

CODE_AT, SPINS = 0x1000, 0xFFFFFFFF
CODE = bytes.fromhex("b9ffffffff"   # 1000: mov $0xffffffff, %ecx
                     "49"           # 1005: L1: dec %ecx
                     "eb00"         # 1006: jmp L2
                     "75fb"         # 1008: L2: jnz L1
                     "90")          # 100a: nop
uc = Uc(UC_ARCH_X86, UC_MODE_32)
uc.mem_map(0, 0x10000)
uc.mem_write(CODE_AT, CODE)
set_flag = uclib.uc_set_block_stop_flag if hasattr(uclib, "uc_set_block_stop_flag") else None
case = sys.argv[1]
flag = ctypes.c_int(0)
if case == "timeout":               # uc_emu_stop() from Unicorn's timeout thread: the exit request
    uc.emu_start(CODE_AT, CODE_AT + len(CODE), timeout=200_000)
elif case == "flag":                # our flag, raised by another thread while the Guest spins
    set_flag(uc._uch, ctypes.byref(flag))
    threading.Timer(0.2, lambda: setattr(flag, "value", 1)).start()
    uc.emu_start(CODE_AT, CODE_AT + len(CODE))
elif case == "flag-removed":        # a flag set, then removed: nothing is left to stop a short run
    set_flag(uc._uch, ctypes.byref(flag))
    set_flag(uc._uch, None)
    flag.value = 1
    uc.reg_write(UC_X86_REG_ECX, 1000)
    uc.emu_start(CODE_AT + 5, CODE_AT + len(CODE))
print(json.dumps([uc.reg_read(UC_X86_REG_EIP), uc.reg_read(UC_X86_REG_ECX)]))
"""


def run(case: str) -> tuple[int, int]:
    """(EIP, ECX) after the child's emu_start returned; fails the test if it never does."""
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True,
                              timeout=DEADLINE_S, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: emu_start never returned: the block-start check missed the stop")
    eip, ecx = json.loads(done.stdout)
    return eip, ecx


def test_an_exit_request_stops_a_spinning_guest_at_a_block_start() -> None:
    eip, ecx = run("timeout")
    assert eip in BLOCK_STARTS and 0 < ecx < 0xFFFFFFFF - 1


needs_flag = pytest.mark.skipif(library_symbol(BLOCK_STOP_ENTRY) is None,
                                reason="the installed Unicorn has no block-stop flag (native/unicorn/block-stop.patch)")


@needs_flag
def test_the_block_stop_flag_stops_a_spinning_guest_at_a_block_start() -> None:
    eip, ecx = run("flag")
    assert eip in BLOCK_STARTS and 0 < ecx < 0xFFFFFFFF - 1


@needs_flag
def test_a_removed_flag_stops_nothing() -> None:
    assert run("flag-removed") == (END, 0)      # ran to its end, past the nop
