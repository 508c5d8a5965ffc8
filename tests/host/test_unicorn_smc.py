"""Self-modifying code still works on the installed Unicorn (stock or our fast-store build).

Our patch lets stores skip Unicorn's slow path on pages that hold no translated
code.  The danger is running stale translations after code is rewritten, so these
are the four ways a 32-bit guest rewrites code that we care about:

* inside the very translation block that is running;
* from another page, after that page's stores have been warmed onto the fast path;
* written through one virtual alias and executed through another (Linux writes
  through its linear map at 0xC0000000 and runs code through user mappings);
* the guest loading its own code through the alias, then reloading it twice.

A build of the patch without its re-arming step (part 3 in docs/performance.md)
fails the last two.  Code is hand-encoded so the tests need no assembler.
"""
from __future__ import annotations

import struct

import pytest

unicorn = pytest.importorskip("unicorn")
from unicorn import Uc  # noqa: E402
from unicorn.x86_const import (  # noqa: E402
    UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_EAX, UC_X86_REG_EDI, UC_X86_REG_EDX, UC_X86_REG_ESI)

from cuse_lguest.testing import flatx86  # noqa: E402
from cuse_lguest.testing.flatx86 import RAM  # noqa: E402

PGD, PAGE_TABLES = 0x2000, 0x10000
CODE = 0x200000          # the test's driver code
FN = 0x300000            # the code being rewritten (guest-physical and identity-mapped)
ALIAS = 0xC0000000       # with paging on, VA ALIAS+x maps the same physical page as VA x


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


# The few instructions the tests need, in AT&T names.
def mov_imm_eax(v: int) -> bytes: return b"\xb8" + u32(v)        # mov $v, %eax
def movb_abs(addr: int, v: int) -> bytes: return b"\xc6\x05" + u32(addr) + bytes([v])
def movl_abs(addr: int, v: int) -> bytes: return b"\xc7\x05" + u32(addr) + u32(v)
def movw_abs(addr: int, v: int) -> bytes: return b"\x66\xc7\x05" + u32(addr) + struct.pack("<H", v)


CALL_EDI = b"\xff\xd7"   # call *%edi
EAX_TO_EDX = b"\x89\xc2"  # mov %eax, %edx
EAX_TO_ESI = b"\x89\xc6"  # mov %eax, %esi
RET = b"\xc3"
NOP = b"\x90"
FUNCTION_RETURNING_1 = mov_imm_eax(1) + RET


def machine(paging: bool) -> Uc:
    """The flat ring-0 machine with all RAM read-write-execute, like a lguest guest's.

    With paging: non-PAE 4 KiB pages mapping VA x and VA ALIAS+x to physical x.
    """
    uc = flatx86.machine()
    if paging:
        tables = RAM >> 22
        uc.mem_write(PAGE_TABLES, b"".join(u32((frame << 12) | 7) for frame in range(tables * 1024)))
        pgd = bytearray(4096)
        for t in range(tables):
            entry = u32((PAGE_TABLES + t * 4096) | 7)
            pgd[4 * t:4 * t + 4] = entry
            pgd[4 * ((ALIAS >> 22) + t):4 * ((ALIAS >> 22) + t) + 4] = entry
        uc.mem_write(PGD, bytes(pgd))
        uc.reg_write(UC_X86_REG_CR3, PGD)
        uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | 0x80000001)
    return uc


def run(uc: Uc, code: bytes) -> None:
    """Run `code` at CODE up to its last byte, which must be a nop."""
    assert code.endswith(NOP)
    uc.mem_write(CODE, code)
    uc.reg_write(UC_X86_REG_EDI, FN)
    uc.emu_start(CODE, CODE + len(code) - 1)


def test_rewrite_inside_the_running_block() -> None:
    code = (b"\x31\xf6"                       # 0x00 xor %esi, %esi
            + mov_imm_eax(1)                  # 0x02 insn: mov $1, %eax
            + b"\x46"                         # 0x07 inc %esi
            + b"\x83\xfe\x02"                 # 0x08 cmp $2, %esi
            + b"\x74\x09"                     # 0x0b je done
            + movb_abs(CODE + 3, 2)           # 0x0d rewrite insn's immediate to 2
            + b"\xeb\xec"                     # 0x14 jmp insn
            + NOP)                            # 0x16 done
    uc = machine(paging=False)
    run(uc, code)
    assert uc.reg_read(UC_X86_REG_EAX) == 2


def test_rewrite_from_another_page_after_warm_stores() -> None:
    code = (CALL_EDI + EAX_TO_EDX             # 0x00 translate and run FN
            + b"\x31\xdb"                     # 0x04 xor %ebx, %ebx
            + b"\xb9" + u32(1000)             # 0x06 mov $1000, %ecx
            + b"\x89\x83" + u32(0x100000)     # 0x0b loop: mov %eax, 0x100000(%ebx)
            + b"\x83\xc3\x04"                 # 0x11 add $4, %ebx
            + b"\x49"                         # 0x14 dec %ecx
            + b"\x75\xf4"                     # 0x15 jnz loop
            + movb_abs(FN + 1, 3)             # 0x17 rewrite FN's immediate...
            + movb_abs(FN + 1, 2)             # 0x1e ...twice: the second may take the fast path
            + CALL_EDI
            + NOP)
    uc = machine(paging=False)
    uc.mem_write(FN, FUNCTION_RETURNING_1)
    run(uc, code)
    assert (uc.reg_read(UC_X86_REG_EDX), uc.reg_read(UC_X86_REG_EAX)) == (1, 2)


def test_write_through_one_alias_execute_through_another() -> None:
    code = (movl_abs(ALIAS + FN + 0x800, 0)   # stores to FN's page through the alias
            + movl_abs(ALIAS + FN + 0x804, 0)  # while it holds no translated code yet
            + movl_abs(ALIAS + FN + 0x808, 0)
            + CALL_EDI + EAX_TO_EDX           # first translation from the page, via VA FN
            + movb_abs(ALIAS + FN + 1, 2)     # rewrite through the alias
            + CALL_EDI
            + NOP)
    uc = machine(paging=True)
    uc.mem_write(FN, FUNCTION_RETURNING_1)
    run(uc, code)
    assert (uc.reg_read(UC_X86_REG_EDX), uc.reg_read(UC_X86_REG_EAX)) == (1, 2)


def test_guest_loads_and_reloads_its_own_code_through_the_alias() -> None:
    code = (movl_abs(ALIAS + FN, 0x000001B8)  # b8 01 00 00 | 00 c3: mov $1, %eax; ret
            + movw_abs(ALIAS + FN + 4, 0xC300)
            + CALL_EDI + EAX_TO_EDX
            + movl_abs(ALIAS + FN, 0x000002B8)  # reload: mov $2, %eax
            + CALL_EDI + EAX_TO_ESI
            + movl_abs(ALIAS + FN, 0x000003B8)  # and again: mov $3, %eax
            + CALL_EDI
            + NOP)
    uc = machine(paging=True)
    run(uc, code)
    results = (uc.reg_read(UC_X86_REG_EDX), uc.reg_read(UC_X86_REG_ESI), uc.reg_read(UC_X86_REG_EAX))
    assert results == (1, 2, 3)
