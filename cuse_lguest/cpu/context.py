"""The hidden CPU state we must read and patch, and the start-up check that it is where we think.

Unicorn 2.1.4 has no API for three things a lguest host needs:
  * the page-fault error code (QEMU keeps it in CPUX86State.error_code);
  * whether an exception came from a software `int n` (exception_is_int),
    which decides if the gate's DPL must be checked;
  * resetting old_exception: Unicorn never runs QEMU's do_interrupt, so
    after one fault the next is promoted to a double fault, and the one after
    that silently ends emu_start.  We reset it in the hook of every fault
    and after an emu_start that ends in an error (see machine.py).
And one thing it refuses: raising the CPL (ring 3 -> ring 1 for interrupt
delivery), because reg_write(SS) insists that RPL == DPL == current CPL.

All four live in the CPUX86State copy that uc_context_save() produces.
The layout below is that of the stock unicorn 2.1.4 wheel (x86_64 host,
TARGET_X86_64 build).  `check_layout()` verifies it on a scratch instance
once per process and refuses to run if anything is off.
"""
from __future__ import annotations

import ctypes
import dataclasses
import struct
import threading

from unicorn import UC_HOOK_INTR, UC_PROT_ALL, Uc
from unicorn.x86_const import (UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CS, UC_X86_REG_DR0,
                               UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3, UC_X86_REG_DS,
                               UC_X86_REG_EAX, UC_X86_REG_ECX, UC_X86_REG_EIP, UC_X86_REG_GDTR,
                               UC_X86_REG_SS)

from cuse_lguest.cpu import engine

# Fixed part of CPUX86State: regs[16] (8 bytes each), eip, eflags, cc_*, then:
OFF_EIP = 128
OFF_HFLAGS = 176
OFF_SEGS = 184          # SegmentCache segs[6] = {u32 selector, pad, u64 base, u32 limit, u32 flags}
SEG_SIZE = 24
SEG_CS, SEG_SS = 1, 2   # index in segs[] (ES, CS, SS, DS, FS, GS)
HF_CPL_MASK = 3

# The tail (error_code ... old_exception) moves with build options, so it is
# found relative to dr[0..7], which we can plant marker values in.
ERROR_CODE_FROM_DR = -16      # int error_code; int exception_is_int; u64 exception_next_eip; dr[8]
IS_INT_FROM_DR = -12
OLD_EXCEPTION_FROM_DR = 8 * 8 + 4 * 8   # after dr[8] and the 4 breakpoint pointers


class LayoutError(RuntimeError):
    """The running Unicorn is not the one these offsets were measured on."""


class Layout:
    """Offsets inside the uc_context allocation, found and verified at start-up."""

    def __init__(self, data: int, dr: int) -> None:
        self.data = data                       # start of CPUX86State in the allocation
        self.error_code = dr + ERROR_CODE_FROM_DR
        self.is_int = dr + IS_INT_FROM_DR
        self.old_exception = dr + OLD_EXCEPTION_FROM_DR


_layout: Layout | None = None
_layout_lock = threading.Lock()


def _ctx_address(ctx) -> int:
    return ctypes.cast(ctx.context, ctypes.c_void_p).value


def _find(raw: bytes, marker: bytes, what: str) -> int:
    at = raw.find(marker)
    if at < 0 or raw.find(marker, at + 1) >= 0:
        raise LayoutError(f"unicorn context layout check failed: cannot locate {what} uniquely")
    return at


def _locate(uc: Uc) -> Layout:
    """Plant markers in EAX/ECX and DR0-3, find them in a saved context."""
    uc.reg_write(UC_X86_REG_EAX, 0xCAFEBABE)
    uc.reg_write(UC_X86_REG_ECX, 0x5EED5EED)
    marks = (0x1122A0A0, 0x1122A1A1, 0x1122A2A2, 0x1122A3A3)
    for reg, m in zip((UC_X86_REG_DR0, UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3), marks):
        uc.reg_write(reg, m)
    ctx = uc.context_save()
    raw = ctypes.string_at(_ctx_address(ctx), 64 + ctx.size)
    data = _find(raw, struct.pack("<QQ", 0xCAFEBABE, 0x5EED5EED), "the general registers")
    dr = _find(raw, b"".join(struct.pack("<Q", m) for m in marks), "dr[0..3]") - data
    for reg in (UC_X86_REG_DR0, UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3):
        uc.reg_write(reg, 0)
    return Layout(data, dr)


def _flat(dpl: int, code: bool) -> int:
    access = 0x80 | (dpl << 5) | 0x10 | (0xB if code else 0x3)
    return 0xFFFF | (access << 40) | (0xF << 48) | (0xC << 52)


def _check(layout: Layout) -> None:
    """Verify every offset we rely on against observable behaviour of a scratch CPU."""
    uc = engine.new_x86(scratch=True)
    try:
        uc.mem_map(0, 0x10000, UC_PROT_ALL)
        gdt = b"".join(struct.pack("<Q", d) for d in (0, _flat(0, True), _flat(0, False)))
        uc.mem_write(0x3000, gdt)
        uc.reg_write(UC_X86_REG_GDTR, (0, 0x3000, len(gdt) - 1, 0))
        uc.reg_write(UC_X86_REG_CS, 0x08)
        uc.reg_write(UC_X86_REG_SS, 0x10)
        uc.reg_write(UC_X86_REG_DS, 0x10)
        uc.reg_write(UC_X86_REG_EIP, 0x12345678)
        ctx = uc.context_save()
        d = _ctx_address(ctx) + layout.data
        i32 = lambda off: ctypes.c_int32.from_address(d + off).value  # noqa: E731
        u32 = lambda off: ctypes.c_uint32.from_address(d + off).value  # noqa: E731
        problems = []
        if i32(layout.old_exception) != -1:
            problems.append(f"old_exception of a fresh CPU reads {i32(layout.old_exception)}, not -1")
        if u32(OFF_EIP) != 0x12345678:
            problems.append("eip is not where expected")
        if u32(OFF_SEGS + SEG_CS * SEG_SIZE) != 0x08 or u32(OFF_SEGS + SEG_SS * SEG_SIZE) != 0x10:
            problems.append("segment caches are not where expected")
        if u32(OFF_HFLAGS) & 0xB3 != 0xB0:   # PE | ADDSEG | SS32 | CS32, CPL 0
            problems.append(f"hflags reads {u32(OFF_HFLAGS):#x}")
        # Paging on, then a write to an unmapped page: a #PF with error code 2 (write, not present).
        uc.mem_write(0x1000, struct.pack("<I", 0x2000 | 3))       # PDE 0 -> page table at 0x2000
        uc.mem_write(0x2000, struct.pack("<I", 0x0000 | 3))       # PTE 0 -> code page 0
        uc.mem_write(0x0, bytes.fromhex("c70500004000" "01000000") + b"\xcd\x20")  # movl $1,0x400000; int $0x20
        uc.reg_write(UC_X86_REG_CR3, 0x1000)
        uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | 0x80000000)
        seen = []

        def on_intr(uc_, intno, _):
            c = uc_.context_save()
            dd = _ctx_address(c) + layout.data
            seen.append((intno, ctypes.c_int32.from_address(dd + layout.error_code).value,
                         ctypes.c_int32.from_address(dd + layout.is_int).value))
            ctypes.c_int32.from_address(dd + layout.old_exception).value = -1
            uc_.context_restore(c)
            if intno == 14:
                uc_.reg_write(UC_X86_REG_EIP, 10)   # skip the store
            else:
                uc_.emu_stop()
        uc.hook_add(UC_HOOK_INTR, on_intr)
        uc.emu_start(0, 0xFFF0)
        if seen != [(14, 2, 0), (0x20, seen[1][1] if len(seen) > 1 else 0, 1)]:
            problems.append(f"provoked #PF / int $0x20 read back as {seen}, expected (14, err 2, is_int 0), (0x20, is_int 1)")
        if problems:
            raise LayoutError("unicorn 2.1.4 context layout check failed: " + "; ".join(problems)
                              + ". This host needs the stock unicorn==2.1.4 build; refusing to run.")
    finally:
        uc._Uc__finalizer()


def layout() -> Layout:
    """The verified layout (checked once per process; raises LayoutError if it does not match)."""
    global _layout
    with _layout_lock:
        if _layout is None:
            scratch = engine.new_x86(scratch=True)
            try:
                found = _locate(scratch)
            finally:
                scratch._Uc__finalizer()
            _check(found)
            _layout = found
        return _layout


@dataclasses.dataclass(frozen=True)
class NativeView:
    """Where C code finds what the properties below read: the context's address and byte offsets in it."""
    address: int
    error_code: int
    is_int: int
    old_exception: int
    hflags: int
    segs: int
    seg_size: int = SEG_SIZE
    seg_cs: int = SEG_CS
    seg_ss: int = SEG_SS


class SavedContext:
    """One pre-allocated context per vCPU, used from inside hooks.

    snapshot() copies the CPU state out; the properties read it; the patch
    methods edit it; restore() writes it back.  Registers written with
    reg_write must be written *after* restore(), which overwrites them all.
    """

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._lay = layout()
        self._ctx = uc.context_save()
        d = _ctx_address(self._ctx) + self._lay.data
        self._error_code = ctypes.c_int32.from_address(d + self._lay.error_code)
        self._is_int = ctypes.c_int32.from_address(d + self._lay.is_int)
        self._old_exception = ctypes.c_int32.from_address(d + self._lay.old_exception)
        self._hflags = ctypes.c_uint32.from_address(d + OFF_HFLAGS)
        self._segs = d + OFF_SEGS

    def native_view(self) -> NativeView:
        """The same context for native code (cpu/exits.py), which saves and restores it itself."""
        lay = self._lay
        return NativeView(_ctx_address(self._ctx), lay.data + lay.error_code, lay.data + lay.is_int,
                          lay.data + lay.old_exception, lay.data + OFF_HFLAGS, lay.data + OFF_SEGS)

    def snapshot(self) -> None:
        self._uc.context_update(self._ctx)

    def restore(self) -> None:
        self._uc.context_restore(self._ctx)

    @property
    def error_code(self) -> int:
        return self._error_code.value & 0xFFFFFFFF

    @property
    def is_int(self) -> bool:
        return self._is_int.value != 0

    @property
    def old_exception(self) -> int:
        return self._old_exception.value

    def clear_old_exception(self) -> None:
        self._old_exception.value = -1

    def set_segment(self, index: int, selector: int, base: int, limit: int, flags: int) -> None:
        at = self._segs + index * SEG_SIZE
        ctypes.c_uint32.from_address(at).value = selector
        ctypes.c_uint64.from_address(at + 8).value = base
        ctypes.c_uint32.from_address(at + 16).value = limit
        ctypes.c_uint32.from_address(at + 20).value = flags

    def set_cpl(self, cpl: int) -> None:
        self._hflags.value = (self._hflags.value & ~HF_CPL_MASK) | cpl
