"""Stopping the vCPU from other threads without corrupting it.

See _native_build.py for why only a block-start hook may stop a running
Guest.  This module owns one `struct lg_stop` per Unicorn instance and
registers the native hook with it as user data.

Protocol (it cannot lose a request):
  * any thread:  set pending state, then request()      (flag = 1)
  * vCPU thread: clear() *before* it checks pending state, then emu_start
  * hook:        flag set -> uc_emu_stop(); it never clears the flag
A request landing after the vCPU's check leaves the flag set, so the very
first block of the next emu_start stops again and the vCPU looks once more.
"""
from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib

from cuse_lguest.cpu._native import ffi, lib


class StopFlag:
    """The per-Guest stop request and its native block hook."""

    def __init__(self, uc: Uc) -> None:
        self._state = ffi.new("struct lg_stop *")
        self._state.uc = ffi.cast("void *", ctypes.cast(uc._uch, ctypes.c_void_p).value)
        stop_addr = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self._state.emu_stop = ffi.cast("int (*)(void *)", stop_addr)
        hook = ctypes.c_size_t()
        cb = int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_block_hook")))
        user = int(ffi.cast("uintptr_t", self._state))
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(hook), UC_HOOK_BLOCK,
                                ctypes.c_void_p(cb), ctypes.c_void_p(user), 1, 0)
        if err:
            raise RuntimeError(f"cannot install the native stop hook (uc_hook_add error {err})")

    def request(self) -> None:
        """Any thread: make the vCPU leave emulation at its next block boundary."""
        self._state.flag = 1

    def clear(self) -> None:
        """vCPU thread only, before it checks its pending work."""
        self._state.flag = 0

    @property
    def stops(self) -> int:
        """How often the hook actually stopped the vCPU (for tests and statistics)."""
        return self._state.stops
