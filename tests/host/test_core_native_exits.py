"""Native exits (cpu/exits.py) against the Python path: the same Guest code, frame by frame.

Each test guest runs twice, with native exits on and off.  For traps, a code hook on
the Guest's trap stubs records, at the first instruction of every handler,
what the delivery left behind: EIP, ESP, CS, SS, EFLAGS, the six words at
the top of the new stack, and lguest_data's irq_enabled and cr2.  The two
traces must be identical, and the native run must really have taken the C
path (its count of natively handled exits), or the comparison proves nothing.
For the page-table hypercalls, what the Guest read back after each call, its
death, the async ring (cursor and status bytes), our page directory mirror
and the profiler's hypercall counts must be identical.  For task switches
and kernel (ring 1) page faults, all of that plus the frames, the live GDT
and the kernel stack, including runs that end on a bad call queued among
good ones.
"""
from __future__ import annotations

import threading
import time

import pytest
from unicorn import UC_HOOK_CODE
from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_EFLAGS, UC_X86_REG_ESP, UC_X86_REG_SS)

from cuse_lguest import abi
from cuse_lguest.core import exitstats, interrupts
from cuse_lguest.cpu import exits
from cuse_lguest.cpu.switcher import GDT_ADDR, PD_ADDR, SWITCHER_BASE
from test_core_support import boot, symbol, wait_until_halted

STUBS = 129            # native/guests/core/entry.S: one 16-byte stub per vector 0..128
FRAME_WORDS = 6
USER_CS = 0x73         # the ring-3 code segment the core guests use


def record_frames(g) -> list[dict]:
    """At the first instruction of every handler the Guest loaded, what the delivery left behind."""
    v = g.guest.vcpu
    table = symbol(g.elf, "trap_stubs_table")
    frames = []

    def word(vaddr: int) -> int | None:
        gpa = v.machine.pgdir.translate(vaddr & 0xFFFFFFFF)
        return v.memory.read_u32(gpa) if gpa is not None and gpa + 4 <= v.memory.limit else None

    def at_handler(_uc, address: int, _size: int, _ud) -> None:
        if address not in {gate[0] for gate in v.idt if gate is not None}:
            return
        r = v.regs
        esp = r.read(UC_X86_REG_ESP)
        frames.append({
            "eip": address, "esp": esp, "cs": r.read(UC_X86_REG_CS), "ss": r.read(UC_X86_REG_SS),
            "eflags": r.read(UC_X86_REG_EFLAGS),
            "stack": tuple(word(esp + 4 * i) for i in range(FRAME_WORDS)),
            "irq_enabled": v.memory.read_u32(v.ld.gpa + abi.LGUEST_DATA_IRQ_ENABLED),
            "cr2": v.memory.read_u32(v.ld.gpa + abi.LGUEST_DATA_CR2),
        })
    v.machine.uc.hook_add(UC_HOOK_CODE, at_handler, None, table, table + 16 * STUBS - 1)
    return frames


def trace(build, name: str, native: bool) -> dict:
    g = boot(build, name)
    v = g.guest.vcpu
    v.exits.enabled = native
    frames = record_frames(g)
    try:
        death = g.run_to_end()
        counts = v.stats.snapshot().count
    finally:
        g.close()
    return {"death": death, "console": g.console, "frames": frames, "handled": v.exits.handled,
            "trap_counts": counts[exitstats.TRAP:exitstats.HCALL]}


def test_user_traps_deliver_the_same_frames_natively(native_build):
    python, native = trace(native_build, "usertraps", False), trace(native_build, "usertraps", True)
    assert python["handled"] == 0
    # usertraps.c: 8 rounds of three system calls, an int3 through a DPL 3 interrupt gate, two page
    # faults, #GP, #DE and #NM; then two demand-paging faults and three system calls.
    assert native["handled"] >= 8 * 9 + 2 + 3
    assert python["death"] == native["death"] == "CRASH: user program finished"
    assert native["console"] == python["console"]
    assert len(native["frames"]) == len(python["frames"]) > 0
    for i, (want, got) in enumerate(zip(python["frames"], native["frames"])):
        assert got == want, f"trap #{i}: native {got} != python {want}"
    # The profiler counts the same exits in the same slots either way.
    assert native["trap_counts"] == python["trap_counts"]
    # The guest turned its virtual IF off between system calls: some frame shows it.
    # (A frame without error code from ring 3: EIP, CS, EFLAGS, ESP, SS.)
    from_user = [f["stack"] for f in native["frames"] if f["stack"][1] == USER_CS]
    assert any(not stack[2] & abi.X86_EFLAGS_IF for stack in from_user)
    assert any(stack[2] & abi.X86_EFLAGS_IF for stack in from_user)


def test_environment_switches_native_exits_off(native_build, monkeypatch):
    monkeypatch.setenv(exits.ENV, "0")
    g = boot(native_build, "usertraps")
    try:
        assert not g.guest.vcpu.exits.enabled
        assert g.run_to_end() == "CRASH: user program finished"
        assert g.guest.vcpu.exits.handled == 0
    finally:
        g.close()


def page_table_run(build, cmdline: str, native: bool) -> dict:
    g = boot(build, "pagetables", cmdline)
    v = g.guest.vcpu
    v.exits.enabled = native
    try:
        death = g.run_to_end()
        counts = v.stats.snapshot().count
        region = v.machine.region
        ld = v.ld.gpa
        seen = {"death": death, "console": g.console, "cursor": v.ring.cursor,
                "status": v.memory.read_bytes(ld + abi.LGUEST_DATA_HCALL_STATUS, abi.LHCALL_RING_SIZE),
                "host_pd": bytes(region.view[PD_ADDR - SWITCHER_BASE:PD_ADDR - SWITCHER_BASE + abi.PAGE_SIZE]),
                "hcall_counts": counts[exitstats.HCALL:exitstats.IRQ], "handled": v.exits.handled}
    finally:
        g.close()
    return seen


@pytest.mark.parametrize("cmdline, death", [("", "CRASH: page tables done"),
                                            ("bad", "bad page table entry"),
                                            ("badpgd", "bad page directory entry")])
def test_page_table_hypercalls_end_the_same_natively(native_build, cmdline, death):
    python, native = page_table_run(native_build, cmdline, False), page_table_run(native_build, cmdline, True)
    assert python.pop("handled") == 0
    # pagetables.c: two SET_PTE, a FLUSH_ASYNC, 40 rounds of FLUSH_ASYNC or SEND_INTERRUPTS, a SET_PGD,
    # a TS and a FLUSH_TLB.
    assert native.pop("handled") >= 2 + 1 + 40 + 1 + 2
    assert python["death"] == death
    assert native == python
    assert python["console"][1:5] == ["announced=0x0000aaaa\n", "after SET_PTE 0=0x0000bbbb\n",
                                      "window=0x0000dddd\n", "window2=0x0000cccc\n"]
    assert python["console"][6] == "after FLUSH_TLB=0x0000bbbb\n"


def halted_irq_run(build, cmdline: str, native: bool, inject: int | None = None) -> dict:
    """timer.c with `cmdline`; `inject`: LHREQ_IRQ that line once the Guest is halted.

    At each IRQ handler's first instruction: the frame (as trace() records
    it), irq_enabled, irq_pending and lguest_data.time."""
    g = boot(build, "timer", cmdline)
    v = g.guest.vcpu
    v.exits.enabled = native
    frames, times = [], []
    table = symbol(g.elf, "trap_stubs_table")

    def at_handler(_uc, address: int, _size: int, _ud) -> None:
        stub = (address - table) // 16
        if (address - table) % 16 or not abi.FIRST_EXTERNAL_VECTOR <= stub < abi.FIRST_EXTERNAL_VECTOR + 32:
            return
        r, ld = v.regs, v.ld.gpa
        esp = r.read(UC_X86_REG_ESP)
        gpa = v.machine.pgdir.translate(esp)
        frames.append({
            "vector": stub, "esp": esp, "cs": r.read(UC_X86_REG_CS), "eflags": r.read(UC_X86_REG_EFLAGS),
            "stack": tuple(v.memory.read_u32(gpa + 4 * i) for i in range(3)),
            "irq_enabled": v.memory.read_u32(ld + abi.LGUEST_DATA_IRQ_ENABLED),
            "irq_pending": v.memory.read_u32(ld + abi.LGUEST_DATA_IRQ_PENDING),
        })
        sec, nsec = v.memory.read_u32(ld + abi.LGUEST_DATA_TIME), v.memory.read_u32(ld + abi.LGUEST_DATA_TIME + 4)
        times.append(sec * 1_000_000_000 + nsec)
    v.machine.uc.hook_add(UC_HOOK_CODE, at_handler, None, table, table + 16 * STUBS - 1)
    python_calls = []
    execute = v.calls.execute

    def spy_execute(nr, *args):
        python_calls.append(nr)
        execute(nr, *args)
    v.calls.execute = spy_execute
    injector = None
    if inject is not None:
        injector = threading.Thread(target=lambda: (wait_until_halted(g), g.guest.irq(inject)))
        injector.start()
    try:
        death = g.run_to_end()
        counts = v.stats.snapshot().count
    finally:
        if injector is not None:
            injector.join()
        g.close()
    return {"death": death, "console": g.console, "frames": frames, "times": times, "handled": v.exits.handled,
            "halts": counts[exitstats.HCALL + abi.LHCALL_HALT],
            "clockevents": counts[exitstats.HCALL + abi.LHCALL_SET_CLOCKEVENT],
            "python_clockevents": python_calls.count(abi.LHCALL_SET_CLOCKEVENT),
            "irqs": counts[exitstats.IRQ:exitstats.IRQ + abi.LGUEST_IRQS]}


def test_native_halt_delivers_an_injected_irq_as_python_does(native_build):
    python, native = (halted_irq_run(native_build, "halt-for-irq=5", on, inject=5) for on in (False, True))
    assert python["death"] == native["death"] == "CRASH: timer test done"
    assert native["console"] == python["console"]
    assert len(native["frames"]) == len(python["frames"]) == 1
    assert native["frames"] == python["frames"]
    assert native["frames"][0]["vector"] == abi.FIRST_EXTERNAL_VECTOR + 5
    assert native["irqs"] == python["irqs"] and native["halts"] == python["halts"] >= 1
    assert native["handled"] >= 1 and python["handled"] == 0
    for run in (python, native):             # lguest_data.time is the wall clock, written at delivery
        assert abs(run["times"][0] - time.time_ns()) < 60 * 1_000_000_000


def test_native_halt_takes_timer_ticks_as_python_does(native_build):
    python, native = (halted_irq_run(native_build, "hz=200 ticks=20", on) for on in (False, True))
    assert python["death"] == native["death"] == "CRASH: timer test done"
    assert native["console"] == python["console"]
    # Every tick is IRQ 0, delivered to the same handler with the same virtual IF; the stack
    # frame's return address is the instruction after a HALT when the tick woke one.
    for run in (python, native):
        assert len(run["frames"]) == run["irqs"][0] >= 20
        assert {f["vector"] for f in run["frames"]} == {abi.FIRST_EXTERNAL_VECTOR}
        assert {f["irq_enabled"] for f in run["frames"]} == {0}
        assert run["times"] == sorted(run["times"])
    assert native["handled"] >= 10 and python["handled"] == 0
    # Every tick's SET_CLOCKEVENT re-armed the timerfd from C natively (but the first, which makes
    # it), from Python otherwise.
    assert python["python_clockevents"] == python["clockevents"] >= 20
    assert native["python_clockevents"] == 1 and native["clockevents"] >= 20
    # Nearly every tick wakes the HALT loop (a tick may land while the Guest runs, under load):
    # the commonest frame is the one a HALT's wake-up builds, identical both ways.
    def commonest(run: dict) -> tuple:
        kinds = [(f["esp"], f["cs"], f["eflags"], f["stack"]) for f in run["frames"]]
        return max(set(kinds), key=kinds.count)
    assert commonest(native) == commonest(python)


TASK_SWITCH_CALLS = (abi.LHCALL_LOAD_TLS, abi.LHCALL_SET_STACK, abi.LHCALL_NEW_PGTABLE)
HARDWARE_TRAP = interrupts.hardware_trap      # the real one, under each run's spy


def task_switch_run(build, cmdline: str, native: bool, monkeypatch) -> dict:
    """taskswitch.c with `cmdline`: every frame, the state a task switch leaves, and what reached Python.

    The state: the live GDT, the kernel stack, our page directory mirror and
    the Guest table it copies, the async ring (cursor and status bytes), and
    the profiler's counts of traps, hypercalls and queued hypercalls.  What
    reached Python: each hypercall Hypercalls.execute ran and each trap
    interrupts.hardware_trap saw from ring 1 (spies that change nothing)."""
    g = boot(build, "taskswitch", cmdline)
    v = g.guest.vcpu
    v.exits.enabled = native
    frames = record_frames(g)
    python_calls, python_ring1 = [], []
    execute = v.calls.execute

    def spy_execute(nr, *args):
        python_calls.append((nr, *args))
        execute(nr, *args)
    v.calls.execute = spy_execute

    def spy_trap(vcpu, vector, err, eip):
        if vcpu.regs.read(UC_X86_REG_CS) & 3 == abi.GUEST_PL:
            python_ring1.append(vector)
        HARDWARE_TRAP(vcpu, vector, err, eip)
    monkeypatch.setattr(interrupts, "hardware_trap", spy_trap)
    try:
        death = g.run_to_end()
        counts = v.stats.snapshot().count
        region, ld, gdt = v.machine.region, v.ld.gpa, GDT_ADDR - SWITCHER_BASE
        seen = {"death": death, "console": g.console, "frames": frames,
                "gdt": bytes(region.view[gdt:gdt + 8 * abi.GDT_ENTRIES]),
                "kernel_stack": v.kernel_stack, "guest_pgd": v.machine.pgdir.guest_pgd,
                "host_pd": bytes(region.view[PD_ADDR - SWITCHER_BASE:PD_ADDR - SWITCHER_BASE + abi.PAGE_SIZE]),
                "cursor": v.ring.cursor,
                "status": v.memory.read_bytes(ld + abi.LGUEST_DATA_HCALL_STATUS, abi.LHCALL_RING_SIZE),
                "counts": counts[exitstats.TRAP:exitstats.IRQ]}
    finally:
        g.close()
    return seen, python_calls, python_ring1


def test_task_switches_and_kernel_page_faults_end_the_same_natively(native_build, monkeypatch):
    (python, py_calls, py_ring1), (native, c_calls, c_ring1) = (
        task_switch_run(native_build, "", on, monkeypatch) for on in (False, True))
    assert python["death"] == "CRASH: task switches done"
    # Each task saw its own TLS segment and page; the kernel's reads (a demand-paged kernel page,
    # the TLS entry loaded with DPL 0) came out the same.
    assert python["console"][:4] == ["tls=0x00007150\n", "window=0x00001000\n",
                                     "tls=0x00007151\n", "window=0x00001001\n"]
    assert len(native["frames"]) == len(python["frames"]) > 12 * 4
    for i, (want, got) in enumerate(zip(python["frames"], native["frames"])):
        assert got == want, f"trap #{i}: native {got} != python {want}"
    assert native == python
    # Kernel page faults from ring 1 reached the handler, with CR2, on the kernel's own stack
    # (error code, EIP, CS 0x61): the demand-paged page read, and the read-only page written.
    kernel_faults = [(f["stack"][0], f["cr2"] & ~0xFFF) for f in python["frames"] if f["stack"][2] == abi.GUEST_CS]
    assert kernel_faults.count((0, 0x3F0000)) == kernel_faults.count((3, 0x3F1000)) == 12
    pf_slot = exitstats.trap_slot(14, False)
    # Python ran every task-switch call and every ring-1 fault; natively it saw only the first
    # NEW_PGTABLE (paging on) and the one fault whose page directory slot changed behind its back.
    py_nrs, c_nrs = [call[0] for call in py_calls], [call[0] for call in c_calls]
    assert sum(py_nrs.count(nr) for nr in TASK_SWITCH_CALLS) >= 12 * 3
    assert [nr for nr in c_nrs if nr in TASK_SWITCH_CALLS] == [abi.LHCALL_NEW_PGTABLE]
    assert abi.LHCALL_FLUSH_ASYNC not in c_nrs and abi.LHCALL_FLUSH_ASYNC in py_nrs
    assert py_ring1.count(14) == python["counts"][pf_slot] and c_ring1 == [14]


@pytest.mark.parametrize("cmdline, bad_call, death", [
    ("badtls", abi.LHCALL_LOAD_TLS, "bad read address 0xfffffff0 len 24"),
    ("badtls-sync", abi.LHCALL_LOAD_TLS, "bad read address 0xfffffff0 len 24"),
    ("badstack", abi.LHCALL_SET_STACK, "bad stack segment 104"),
    ("stackpages", abi.LHCALL_SET_STACK, "bad stack pages 3"),
    ("badstackpage", abi.LHCALL_SET_STACK, "bad stack page 0x40001fff"),
    ("badpgd", abi.LHCALL_NEW_PGTABLE, "bad page directory entry"),
    ("pgdout", abi.LHCALL_NEW_PGTABLE, "bad read address 0xf0000000 len 4096"),
    ("kpfstack", None, "Bad address 0x4000003c"),
])
def test_a_bad_task_switch_kills_the_same_natively(native_build, monkeypatch, cmdline, bad_call, death):
    """The bad call sits among good ones: C runs those before it, Python the bad one and its kill."""
    (python, _, _), (native, c_calls, _) = (task_switch_run(native_build, cmdline, on, monkeypatch)
                                            for on in (False, True))
    assert python["death"] == death
    assert native == python
    # Natively, Python saw the first NEW_PGTABLE and then only the bad call of the fatal round
    # (twice: the run loop looks at the pending call again after the kill, as without C).
    switches = [call for call in c_calls if call[0] in TASK_SWITCH_CALLS]
    assert switches[0][0] == abi.LHCALL_NEW_PGTABLE
    assert {call[0] for call in switches[1:]} == ({bad_call} if bad_call is not None else set())
    assert len(set(switches[1:])) <= 1


def blk_run(elf, disk, native: bool, private: bool, monkeypatch) -> dict:
    """tinyguest's blk scenario through the Python launcher and the Device; what the Guest and the
    launcher saw, and how many NOTIFYs Python executed (Hypercalls._notify) against the profiler's."""
    from cuse_lguest.core.guest import create_guest
    from cuse_lguest.core.hypercalls import Hypercalls
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Block, Launcher
    from cuse_lguest.testing.transport import DeviceTransport

    disk.write_bytes(b"\xAB" * (1 << 20))
    python_notifies, seen = [], {}

    def factory(params):
        guest = create_guest(params)
        destroy = guest.destroy

        def noted() -> None:                 # the profile and the count, before they are freed
            v = guest.vcpu
            seen.update(handled=v.exits.handled,
                        notify_exits=v.stats.snapshot().count[exitstats.HCALL + abi.LHCALL_NOTIFY])
            destroy()
        guest.destroy = noted
        return guest
    real_notify = Hypercalls._notify
    monkeypatch.setattr(Hypercalls, "_notify", lambda self, value, *rest: (python_notifies.append(value),
                                                                         real_notify(self, value, *rest))[1])
    monkeypatch.setenv(exits.ENV, "1" if native else "0")
    result = Launcher(elf, mem_mb=32, args=["test=blk"], devices=[Block(disk)], timeout=120, private=private,
                      ).run(DeviceTransport(Device(factory)))
    return {"death": result.death, "error": result.error, "console": result.console, "disk": disk.read_bytes(),
            "returned": result.notifies, "python_notifies": python_notifies, **seen}


@pytest.mark.parametrize("private", [False, True], ids=["shared", "mirror"])
def test_native_notify_claims_eventfds_as_python_does(tinyguest_elf, tmp_path, monkeypatch, private):
    python, native = (blk_run(tinyguest_elf, tmp_path / "disk.img", on, private, monkeypatch) for on in (False, True))
    for run in (python, native):
        assert run["error"] is None and run["death"] == "CRASH: tinyguest: done", run["console"]
        # Kicks of the block and console queues went to eventfds: more NOTIFY exits than values
        # the launcher read (status changes and early-console strings).
        assert run["notify_exits"] > len(run["returned"]) > 0
    assert native["console"] == python["console"]
    assert native["disk"] == python["disk"]
    assert native["returned"] == python["returned"]
    # Python executed every NOTIFY in one run; in the other, only those the launcher read.
    assert len(python["python_notifies"]) >= python["notify_exits"]
    assert python["handled"] == 0
    assert native["python_notifies"] == native["returned"]
    assert native["handled"] >= native["notify_exits"] - len(native["returned"]) > 0
