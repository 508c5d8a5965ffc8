"""Stopping the vCPU from other threads without corrupting it.

See _native_build.py for why a stop may only take effect at the start of a
translated block.  This module owns one `struct lg_stop` per Unicorn instance
and installs a native UC_HOOK_BLOCK callback that reads its flag and calls
uc_emu_stop() on the vCPU thread.  Every block calls into the hook, which
costs about a fifth of guest compute; a patch that let Unicorn read the flag
itself at block starts was tried and reverted, because Linux Guests crashed
with it (docs/performance.md, guest_compute).

The flag lives in memory this object owns, not inside Unicorn, so a request()
that races with Machine.close() writes nowhere it should not.

Protocol (it cannot lose a request):
  * any thread:  set pending state, then request()      (flag = 1)
  * vCPU thread: clear() *before* it checks pending state, then emu_start
  * the hook: flag set -> uc_emu_stop(); it never clears the flag
A request landing after the vCPU's check leaves the flag set, so the very
first block of the next emu_start stops again and the vCPU looks once more.
"""
from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib

from cuse_lguest.cpu._native import ffi, lib

HOOK = "block hook"               # StopFlag.kind: a UC_HOOK_BLOCK callback reads the flag


def _symbol(name: str) -> int | None:
    """Address of `name` in the libunicorn the binding loaded, or None if it has none."""
    try:
        return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


class StopFlag:
    """The per-Guest stop request, read by a native block hook.

    Unicorn keeps a pointer into this object (the hook's user data), so it
    must live as long as `uc` may run: Machine holds both.
    """

    kind = HOOK

    def __init__(self, uc: Uc) -> None:
        self._state = ffi.new("struct lg_stop *")
        self._state.uc = ffi.cast("void *", ctypes.cast(uc._uch, ctypes.c_void_p).value)
        self._state.emu_stop = ffi.cast("int (*)(void *)", _symbol("uc_emu_stop"))
        hook = ctypes.c_size_t()
        cb = int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_block_hook")))
        user = int(ffi.cast("uintptr_t", self._state))
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(hook), UC_HOOK_BLOCK,
                                ctypes.c_void_p(cb), ctypes.c_void_p(user), 1, 0)
        if err:
            raise RuntimeError(f"cannot install the vCPU stop hook (uc_hook_add error {err})")

    @property
    def native(self):
        """The `struct lg_stop *` itself, for native code that must raise the flag without Python
        (the IRQ line of core/guest.py, which the transport's C fast path writes to)."""
        return self._state

    def request(self) -> None:
        """Any thread: make the vCPU leave emulation at its next block boundary."""
        self._state.flag = 1

    def clear(self) -> None:
        """vCPU thread only, before it checks its pending work."""
        lib.lg_stop_clear(self._state)
