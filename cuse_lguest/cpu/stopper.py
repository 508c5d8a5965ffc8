"""Stopping the vCPU from other threads without corrupting it.

See _native_build.py for why a stop may only take effect at the start of a
translated block.  This module owns one `struct lg_stop` per Unicorn instance
and hands its flag to whichever mechanism this Unicorn offers:

* the default: a native UC_HOOK_BLOCK callback that reads it and calls
  uc_emu_stop();
* only when asked for (`use_flag=True`, tests and investigation):
  `uc_set_block_stop_flag` (our block-stop patch), where libunicorn reads the
  flag in the check it already makes at every block start.  It is NOT the
  default: with it a Linux 3.18 Guest crashes at random during boot (oops in
  apply_paravirt, copy_page_range, ...) while the block hook boots it; see
  docs/performance.md (guest_compute).

Either way the flag lives in memory this object owns, not inside Unicorn, so a
request() that races with Machine.close() writes nowhere it should not.

Protocol (it cannot lose a request):
  * any thread:  set pending state, then request()      (flag = 1)
  * vCPU thread: clear() *before* it checks pending state, then emu_start
  * Unicorn / the hook: flag set -> stop; neither ever clears the flag
A request landing after the vCPU's check leaves the flag set, so the very
first block of the next emu_start stops again and the vCPU looks once more.
"""
from __future__ import annotations

import ctypes
import logging

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib

from cuse_lguest.cpu._native import ffi, lib

log = logging.getLogger("cuse_lguest.cpu")

BLOCK_STOP_ENTRY = "uc_set_block_stop_flag"
FLAG = "block-stop flag"          # StopFlag.kind: Unicorn reads the flag at block starts
HOOK = "block hook"               # StopFlag.kind: a UC_HOOK_BLOCK callback reads it
_logged = False


def _symbol(name: str) -> int | None:
    """Address of `name` in the libunicorn the binding loaded, or None if it has none."""
    try:
        return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def block_stop_available() -> bool:
    """Whether the loaded libunicorn has our block-boundary stop flag (block-stop.patch)."""
    return _symbol(BLOCK_STOP_ENTRY) is not None


class StopFlag:
    """The per-Guest stop request, wired to Unicorn's block-start check or to a native block hook.

    Unicorn keeps a pointer into this object either way (the flag, or the
    hook's user data), so it must live as long as `uc` may run: Machine holds
    both.  The block hook is used unless `use_flag=True` asks for the patched
    entry point (and the loaded Unicorn has it); `use_hook` is kept for callers
    that force the hook explicitly.
    """

    def __init__(self, uc: Uc, *, use_hook: bool = False, use_flag: bool = False) -> None:
        self._state = ffi.new("struct lg_stop *")
        handle = ctypes.cast(uc._uch, ctypes.c_void_p).value
        entry = _symbol(BLOCK_STOP_ENTRY) if use_flag and not use_hook else None
        if entry is not None:
            set_flag = ffi.cast("int (*)(void *, volatile int *)", entry)
            err = set_flag(ffi.cast("void *", handle), ffi.addressof(self._state, "flag"))
            what, self.kind = BLOCK_STOP_ENTRY, FLAG
        else:
            self._state.uc = ffi.cast("void *", handle)
            self._state.emu_stop = ffi.cast("int (*)(void *)", _symbol("uc_emu_stop"))
            hook = ctypes.c_size_t()
            cb = int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_block_hook")))
            user = int(ffi.cast("uintptr_t", self._state))
            err = uclib.uc_hook_add(uc._uch, ctypes.byref(hook), UC_HOOK_BLOCK,
                                    ctypes.c_void_p(cb), ctypes.c_void_p(user), 1, 0)
            what, self.kind = "uc_hook_add", HOOK
        if err:
            raise RuntimeError(f"cannot install the vCPU stop flag ({what} error {err})")
        _log_once(self.kind, forced=use_hook or use_flag)

    def request(self) -> None:
        """Any thread: make the vCPU leave emulation at its next block boundary."""
        self._state.flag = 1

    def clear(self) -> None:
        """vCPU thread only, before it checks its pending work."""
        lib.lg_stop_clear(self._state)


def _log_once(kind: str, *, forced: bool) -> None:
    """Say once per process which stop mechanism the vCPUs use (forced test hooks say nothing)."""
    global _logged
    if _logged or forced:
        return
    _logged = True
    if kind == FLAG:
        log.info("vCPU stops: Unicorn's block-start check reads the stop flag (%s): no per-block cost",
                 BLOCK_STOP_ENTRY)
    else:
        log.info("vCPU stops: a native block hook that calls uc_emu_stop() (about a fifth of guest compute)")
