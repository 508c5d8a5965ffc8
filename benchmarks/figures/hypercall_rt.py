"""Hypercall round trips through the core's dispatch against a bare Unicorn's fastest hook.

The Guest issues SEND_INTERRUPTS (a call that does nothing) in a loop; each
one exits to the core's interrupt hook, runs the core's service steps (ring
drain, dispatch, notify, IRQ delivery checks) and resumes.  The baseline is
the same loop on a bare Unicorn whose UC_HOOK_INTR hook only reads the five
argument registers with raw ctypes uc_reg_read (cpu/regs.py), the least any
hypercall can do.  Goal: >= 0.6 of it.
"""
from __future__ import annotations

from unicorn.x86_const import (UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX,
                               UC_X86_REG_ESI)

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._guest import BareBench, CoreBench
from cuse_lguest import unicorn_build
from cuse_lguest.cpu.regs import RawRegs

NAME = "hypercall_rt"
SUMMARY = "hypercalls/s through the core vs a bare Unicorn raw-register hook (goal >= 0.6)"


def _bare(elf) -> BareBench:
    bare = BareBench(elf)
    read = RawRegs(bare.uc).read

    def hook() -> None:
        read(UC_X86_REG_EAX), read(UC_X86_REG_EBX), read(UC_X86_REG_ECX)
        read(UC_X86_REG_EDX), read(UC_X86_REG_ESI)
    bare.hook_intr(hook)
    return bare


def run(ctx: Context) -> list[Measurement]:
    elf = _build.bench_guest()
    n = 5_000 if ctx.quick else 30_000
    bare = _bare(elf)
    core_k, bare_k = [], []
    with CoreBench(elf) as guest:
        guest.run("hcalls", 100)
        bare.call("bench_hcalls", 100)
        for i in range(ctx.repeats):
            ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
            core_k.append(n / guest.run("hcalls", n) / 1e3)
            bare_k.append(n / bare.call("bench_hcalls", n) / 1e3)
    return [Measurement(figure=NAME, name="SEND_INTERRUPTS round trip", unit="k/s", samples=core_k,
                        build=unicorn_build.current().describe(),
                        baseline_name="bare raw-register hook", baseline_samples=bare_k,
                        goal="ratio >= 0.6", goal_ratio=0.6)]
