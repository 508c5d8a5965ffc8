"""Stopping the vCPU from other threads without corrupting it.

See _native_build.py for why a stop may only take effect at the start of a
translated block.  This module owns one `struct lg_stop` per Unicorn instance
and hands its flag to whichever mechanism this Unicorn offers:

* `uc_set_block_stop_flag` (native/unicorn/block-stop.patch): libunicorn reads
  the flag in the check it already makes at every block start, so a Guest
  nobody stops pays nothing per block.  Used only on a build that also carries
  stale-pc.patch: without that fix, a stop at a block start that no block hook
  preceded could leave a stale EIP behind, and a Linux Guest resumed at it
  crashed (docs/performance.md, guest_compute);
* otherwise a native UC_HOOK_BLOCK callback that reads the flag and calls
  uc_emu_stop() on the vCPU thread: just as safe, but every block calls into
  the hook, about a fifth of guest compute.

Either way the flag lives in memory this object keeps alive (the IRQ line's
shared page), not inside Unicorn, so a request() that races with
Machine.close() writes nowhere it should not.

Protocol (it cannot lose a request):
  * any thread:  set pending state, then request()      (flag = 1)
  * vCPU thread: clear() *before* it checks pending state, then emu_start
  * Unicorn / the hook: flag set -> stop; neither ever clears the flag
A request landing after the vCPU's check leaves the flag set, so the very
first block of the next emu_start stops again and the vCPU looks once more.
"""
from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_BLOCK, Uc
from unicorn.unicorn_py3.unicorn import uclib

from cuse_lguest import unicorn_build
from cuse_lguest.cpu._native import ffi, lib

BLOCK_STOP_ENTRY = "uc_set_block_stop_flag"
STALE_PC_FIX = "stale-pc"         # the patch the flag needs (its name in the build's marker)
FLAG = "block-stop flag"          # StopFlag.kind: Unicorn reads the flag at block starts
HOOK = "block hook"               # StopFlag.kind: a UC_HOOK_BLOCK callback reads the flag


def library_symbol(name: str) -> int | None:
    """Address of `name` in the libunicorn the binding loaded, or None if it has none."""
    try:
        return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def block_stop_available() -> bool:
    """Whether the loaded libunicorn can read our stop flag at block starts, safely (see above)."""
    return library_symbol(BLOCK_STOP_ENTRY) is not None and unicorn_build.current().has(STALE_PC_FIX)



class StopFlag:
    """The per-Guest stop request, wired to Unicorn's block-start check or to a native block hook.

    Unicorn keeps a pointer to `state` either way (the flag, or the hook's
    user data), so it must live as long as `uc` may run: Machine holds the
    flag, and the flag the owner of `state`.  `state` is a `struct lg_stop *`
    in memory an injector can reach too, the IRQ line's shared page
    (core/irqline.py); a private one when none is given.  `use_hook=True`
    forces the block hook where the flag would do, so that tests and the
    benchmark's diagnostic row can run both on one build.
    """

    def __init__(self, uc: Uc, state=None, owner: object = None, *, use_hook: bool = False) -> None:
        self._owner = owner
        self._state = state if state is not None else ffi.new("struct lg_stop *")
        handle = ctypes.cast(uc._uch, ctypes.c_void_p).value
        if not use_hook and block_stop_available():
            set_flag = ffi.cast("int (*)(void *, volatile int *)", library_symbol(BLOCK_STOP_ENTRY))
            err = set_flag(ffi.cast("void *", handle), ffi.addressof(self._state, "flag"))
            what, self.kind = BLOCK_STOP_ENTRY, FLAG
        else:
            self._state.uc = ffi.cast("void *", handle)
            self._state.emu_stop = ffi.cast("int (*)(void *)", library_symbol("uc_emu_stop"))
            hook = ctypes.c_size_t()
            cb = int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_block_hook")))
            user = int(ffi.cast("uintptr_t", self._state))
            err = uclib.uc_hook_add(uc._uch, ctypes.byref(hook), UC_HOOK_BLOCK,
                                    ctypes.c_void_p(cb), ctypes.c_void_p(user), 1, 0)
            what, self.kind = "uc_hook_add", HOOK
        if err:
            raise RuntimeError(f"cannot install the vCPU stop flag ({what} error {err})")

    def request(self) -> None:
        """Any thread: make the vCPU leave emulation at its next block boundary."""
        self._state.flag = 1

    def clear(self) -> None:
        """vCPU thread only, before it checks its pending work."""
        lib.lg_stop_clear(self._state)
