"""Stopping a running vCPU from another thread (cpu/stopper.py), in the spirit of the lab's repro.

The Guest loop is `incl (%ebx); inc %ecx; jmp loop`: one translated block whose
first instruction is a read-modify-write.  A stop that lands after that
instruction's store and rewinds EIP to it (what uc_emu_stop() from another
thread does in Unicorn 2.1.4) runs it twice, and the two counters part.  A stop
at a block boundary leaves EIP at the loop's start and the counters equal.
Every test runs on both mechanisms of cpu/stopper.py: the one StopFlag picks
(the block-stop flag on our build, the block hook elsewhere) and the forced
block hook.
"""
from __future__ import annotations

import os
import struct
import threading
import time

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_MEM_WRITE_UNMAPPED, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EIP

from cuse_lguest import unicorn_build
from cuse_lguest.cpu.stopper import FLAG, HOOK, StopFlag, block_stop_available

LOOP = 0x1000
COUNTER = 0x2000
NEVER = 0x8000                                # the `until` address: never reached
CODE = bytes.fromhex("ff03" "41" "ebfb")      # loop: incl (%ebx); inc %ecx; jmp loop
STOPS = 3000
LOST_AFTER_S = 30.0                           # only to turn a lost request into a failure, not a hang


def loop_machine() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(LOOP, CODE)
    uc.reg_write(UC_X86_REG_EBX, COUNTER)
    return uc


def counters(uc: Uc) -> tuple[int, int]:
    """(the memory counter, ECX)."""
    return struct.unpack("<I", uc.mem_read(COUNTER, 4))[0], uc.reg_read(UC_X86_REG_ECX)


@pytest.fixture(params=[False, True], ids=["picked", "block-hook"])
def use_hook(request: pytest.FixtureRequest) -> bool:
    return request.param


def test_thousands_of_foreign_stops_never_rerun_an_instruction(use_hook: bool) -> None:
    uc = loop_machine()
    stop = StopFlag(uc, use_hook=use_hook)
    cond = threading.Condition()
    state = {"asked": 0, "handled": 0, "done": False, "lost": 0}

    def requester() -> None:
        """Like an interrupt source: pending work first, then the flag; waits until the vCPU saw it."""
        for ticket in range(1, STOPS + 1):
            with cond:
                state["asked"] = ticket
            stop.request()
            with cond:
                if not cond.wait_for(lambda: state["handled"] >= ticket, timeout=LOST_AFTER_S):
                    state["lost"] = ticket
                    break
        with cond:
            state["done"] = True
        stop.request()
        if state["lost"]:
            uc.emu_stop()             # the flag failed: get the vCPU out anyway, safety no longer matters

    thread = threading.Thread(target=requester, daemon=True)
    thread.start()
    returns, bad = 0, []
    eip = LOOP
    while True:
        stop.clear()                  # the vCPU protocol: clear, then look at pending work, then run
        with cond:
            if state["done"]:
                break
            state["handled"] = state["asked"]
            cond.notify_all()
        uc.emu_start(eip, NEVER)
        returns += 1
        eip = uc.reg_read(UC_X86_REG_EIP)
        mem, ecx = counters(uc)
        if mem != ecx or eip != LOOP:
            bad.append((returns, eip, mem, ecx))
    thread.join()
    assert not state["lost"], f"request {state['lost']} was never seen by the vCPU"
    assert not bad, f"{len(bad)} of {returns} stops left the loop mid-instruction, e.g. {bad[:3]}"
    assert returns >= STOPS // 2, f"only {returns} stops for {STOPS} requests"
    assert counters(uc)[0] > 0


def test_a_request_before_emu_start_stops_it_before_the_first_instruction(use_hook: bool) -> None:
    uc = loop_machine()
    stop = StopFlag(uc, use_hook=use_hook)
    stop.request()
    for _ in range(2):                # Unicorn never clears the flag: every entry stops at once
        uc.emu_start(LOOP, NEVER)
        assert uc.reg_read(UC_X86_REG_EIP) == LOOP
        assert counters(uc) == (0, 0)
    stop.clear()                      # now it runs, until the next request
    later = threading.Timer(0.05, stop.request)
    later.start()
    uc.emu_start(LOOP, NEVER)
    later.join()
    mem, ecx = counters(uc)
    assert mem == ecx > 0


def foreign_emu_stops_rerun(uc: Uc, rounds: int) -> bool:
    """uc_emu_stop() from another thread, up to `rounds` times: did a stop ever re-run `incl`?"""
    quit_ = threading.Event()

    def ticker() -> None:
        while not quit_.is_set():
            uc.emu_stop()
            time.sleep(0.0002)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    eip, caught = LOOP, False
    try:
        for _ in range(rounds):
            uc.emu_start(eip, NEVER)
            eip = uc.reg_read(UC_X86_REG_EIP)
            mem, ecx = counters(uc)
            if mem != ecx:
                caught = True
                break
    finally:
        quit_.set()
        thread.join()
    return caught


def test_the_harness_catches_a_foreign_emu_stop() -> None:
    """The control: where Unicorn checks for a stop after every guest store, uc_emu_stop() from another
    thread re-runs `incl`, and the check above would see it.  Since native/unicorn/mem-exit.patch that
    check exists only while a memory hook does, so the control installs one that never fires."""
    uc = loop_machine()
    uc.hook_add(UC_HOOK_MEM_WRITE_UNMAPPED, lambda *_: False)
    assert foreign_emu_stops_rerun(uc, 20 * STOPS), \
        "no double increment seen: the harness may no longer detect an unsafe stop"


@pytest.mark.skipif(os.environ.get("CI") != "true" and not unicorn_build.current().has("mem-exit"),
                    reason="the installed Unicorn predates native/unicorn/mem-exit.patch: run ./bootstrap install "
                           "(CI always runs this test)")
def test_without_memory_hooks_a_foreign_emu_stop_lands_at_a_block_start() -> None:
    """With no check after guest stores (mem-exit.patch), uc_emu_stop() from another thread is taken at a
    block start, like the flag: it no longer re-runs an instruction.  (cpu/stopper.py keeps the flag,
    which uc_emu_start() does not clear: a stop asked for just before it is not lost.)"""
    assert not foreign_emu_stops_rerun(loop_machine(), STOPS)


def test_the_flag_is_picked_where_it_is_safe() -> None:
    """Our build (block-stop with the stale-pc fix) stops through the flag; CI must run it."""
    picked = StopFlag(loop_machine()).kind
    assert picked == (FLAG if block_stop_available() else HOOK)
    assert StopFlag(loop_machine(), use_hook=True).kind == HOOK
    if os.environ.get("CI") == "true":
        assert picked == FLAG, "CI runs our Unicorn build, which has the block-stop flag"
