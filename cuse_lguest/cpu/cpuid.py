"""What `cpuid` tells a Guest: Unicorn's CPU, masked the way lguest masked it.

The lguest Guest masks cpuid itself, but its decompressor and its user
programs execute the raw instruction.  So the host answers every cpuid from a
table: Unicorn's own answers (probed once per process on a scratch CPU, as a
UC_HOOK_INSN cpuid hook can only replace the result, not post-process it),
with the lguest mask applied: at most leaf 5, family 5, few feature bits but
PGE, no hypervisor leaves, no NX.
"""
from __future__ import annotations

import threading

from unicorn import UC_HOOK_INTR, UC_PROT_ALL
from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX

from cuse_lguest.cpu import engine

MAX_BASIC_LEAF = 5
LEAF1_ECX_MASK = 0x00002201
LEAF1_EDX_MASK = 0x07808151
LEAF1_EDX_PGE = 0x2000
EXT_NX = 1 << 20
_EXT_LEAVES = range(0x80000000, 0x80000009)
_SUBLEAF_LEAVES = {4: 4}     # leaf -> number of sub-leaves worth probing

_table: dict[tuple[int, int], tuple[int, int, int, int]] | None = None
_lock = threading.Lock()


def _probe() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    uc = engine.new_x86(scratch=True)
    try:
        uc.mem_map(0, 0x1000, UC_PROT_ALL)
        uc.mem_write(0, b"\x0f\xa2\xcd\x20")          # cpuid; int $0x20
        uc.hook_add(UC_HOOK_INTR, lambda u, n, _: u.emu_stop())
        out = {}
        for leaf in [*range(MAX_BASIC_LEAF + 1), *_EXT_LEAVES]:
            for sub in range(_SUBLEAF_LEAVES.get(leaf, 1)):
                uc.reg_write(UC_X86_REG_EAX, leaf)
                uc.reg_write(UC_X86_REG_ECX, sub)
                uc.emu_start(0, 0xF00)
                out[leaf, sub] = tuple(uc.reg_read(r) for r in (UC_X86_REG_EAX, UC_X86_REG_EBX,
                                                                 UC_X86_REG_ECX, UC_X86_REG_EDX))
        return out
    finally:
        uc._Uc__finalizer()


def _masked(leaf: int, sub: int, raw: dict) -> tuple[int, int, int, int]:
    if leaf <= MAX_BASIC_LEAF:
        a, b, c, d = raw.get((leaf, sub), raw.get((leaf, 0)))
        if leaf == 0:
            a = min(a, MAX_BASIC_LEAF)
        elif leaf == 1:
            a = (a & ~0x0FF00F00) | 0x500                   # family 5, no extended family/model
            c &= LEAF1_ECX_MASK
            d = (d & LEAF1_EDX_MASK) | LEAF1_EDX_PGE
        return a, b, c, d
    if leaf in _EXT_LEAVES:
        a, b, c, d = raw[leaf, 0]
        if leaf == 0x80000001:
            d &= ~EXT_NX
        return a, b, c, d
    return 0, 0, 0, 0                                        # hypervisor and unknown leaves


def answer(leaf: int, sub: int) -> tuple[int, int, int, int]:
    """EAX, EBX, ECX, EDX for cpuid(leaf, sub) as a lguest Guest should see them."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                _table = _probe()
    return _masked(leaf, sub, _table)
