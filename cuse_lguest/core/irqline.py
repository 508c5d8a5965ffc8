"""A Guest's IRQ line: its pending-IRQ word and stop flag in a shared page, and a wake-up pipe.

What other threads and processes may do to a Guest reduces to "change the
state, then kick" (core/guest.py).  The state is a page of native memory
(struct lg_stop and struct lg_irq_shared, cpu/_native_build.py) in a memfd,
so the process that runs the vCPU and the process that injects IRQs can map
the same page: the service's front end answers a hot LHREQ_IRQ in C, with
no Python and no system call while the vCPU runs, even when the Guest runs
in a worker process (cuse_lguest/worker/).

The page is sealed at its size before anyone else sees it: a worker that
shrank it would otherwise make the front end's next store a SIGBUS.

A halted vCPU sleeps in a read of a pipe and each kicker writes one byte.
A pipe rather than an eventfd, because the two processes must not share
the descriptor a kicker writes to: an eventfd copy shares its file flags,
and a worker could clear O_NONBLOCK on it and fill it up, so that the front
end's next kick blocks a transport thread.  A pipe's write end can be
opened a second time (through /proc/self/fd), which gives the worker a
write end of its own, and the front end keeps one only it holds, non-
blocking: a full pipe means a wake-up is pending anyway.
"""
from __future__ import annotations

import fcntl
import mmap
import os

from cuse_lguest.cpu._native import ffi, lib

PAGE = 4096
_STOP_AT = 0        # struct lg_stop
_IRQS_AT = 64       # struct lg_irq_shared
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
assert ffi.sizeof("struct lg_stop") <= _IRQS_AT and _IRQS_AT + ffi.sizeof("struct lg_irq_shared") <= PAGE


class IrqPage:
    """The shared page: a sealed one-page memfd, mapped here."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._base = ffi.from_buffer(self._map)
        self.stop = ffi.cast("struct lg_stop *", self._base + _STOP_AT)
        self.irqs = ffi.cast("struct lg_irq_shared *", self._base + _IRQS_AT)

    @classmethod
    def create(cls) -> "IrqPage":
        fd = os.memfd_create("lguest-irq", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, PAGE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._map is not None:
            self.stop = self.irqs = None
            ffi.release(self._base)
            self._map.close()
            self._map = None
            os.close(self.fd)


class IrqLine:
    """One process's handle on a Guest's IRQ line (struct lg_irqs).

    Opaque to the device, which hands it to its transport: `inject` is the
    address of lg_irq_inject(target, irq), and `target` the address of the
    state it changes.  A transport that calls it must stop before the file's
    release destroys the Guest (close() then frees the descriptors).
    Python's own raises run under the Guest's lock, which close() also takes.
    """

    inject = int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_irq_inject")))

    def __init__(self, page: IrqPage, post_fd: int, wait_fd: int) -> None:
        self.page = page
        self._wait_fd = wait_fd           # -1 where no vCPU runs (the front end)
        self._state = ffi.new("struct lg_irqs *")
        self._state.sh = page.irqs
        self._state.stop = ffi.addressof(page.stop, "flag")
        self._state.wake_fd = post_fd
        self.target = int(ffi.cast("uintptr_t", self._state))

    @classmethod
    def create(cls) -> "IrqLine":
        """A new line, alive, for a Guest in this process (or, after hand_over, in a worker)."""
        page = IrqPage.create()
        try:
            wait_fd, post_fd = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            page.close()
            raise
        os.set_blocking(post_fd, False)
        page.irqs.alive = 1
        return cls(page, post_fd, wait_fd)

    def hand_over(self) -> list[int]:
        """The fds a worker adopts the line with: [page, wait end, a write end of its own].

        This side keeps only its own write end from now on.  The caller
        sends the returned fds and closes them.
        """
        own_post = os.open(f"/proc/self/fd/{self._state.wake_fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        wait_fd, self._wait_fd = self._wait_fd, -1
        return [os.dup(self.page.fd), wait_fd, own_post]

    @classmethod
    def adopt(cls, fds: list[int]) -> "IrqLine":
        """The worker's side of hand_over()."""
        page_fd, wait_fd, post_fd = fds
        return cls(IrqPage(page_fd), post_fd, wait_fd)

    @property
    def stop(self):
        """The `struct lg_stop *` the vCPU's block hook reads (cpu/stopper.py)."""
        return self.page.stop

    def word_addresses(self) -> tuple[int, int, int, int]:
        """Where (pending, from_launcher, alive, interrupt) are in this process (the native exits read them)."""
        sh = self._state.sh
        return tuple(int(ffi.cast("uintptr_t", ffi.addressof(sh, f)))
                     for f in ("pending", "from_launcher", "alive", "interrupt"))

    @property
    def pending(self) -> int:
        return self._state.sh.pending

    @property
    def from_launcher(self) -> bool:
        return bool(self._state.sh.from_launcher)

    @property
    def alive(self) -> bool:
        return bool(self._state.sh.alive)

    def raise_irqs(self, bits: int, *, from_launcher: bool = False) -> None:
        lib.lg_irq_raise(self._state, bits, from_launcher)

    def kick(self) -> None:
        lib.lg_irq_kick(self._state)

    def take(self, bits: int) -> None:
        lib.lg_irq_take(self._state, bits)

    def take_launcher_mark(self) -> bool:
        """Was there an LHREQ_IRQ since the last call?  (Clears the mark.)"""
        return bool(lib.lg_irq_take_launcher_mark(self._state))

    @property
    def interrupt_requested(self) -> bool:
        """The lock-free peek at an interrupt request (the vCPU looks at every exit)."""
        return bool(self._state.sh.interrupt)

    def request_interrupt(self) -> None:
        """Make the current (or next) run() return INTERRUPTED: the request, then a kick."""
        lib.lg_irq_interrupt(self._state)

    def take_interrupt(self) -> bool:
        """vCPU thread: was an interrupt requested?  (Clears the request.)"""
        return bool(lib.lg_irq_take_interrupt(self._state))

    def retire(self) -> None:
        """The Guest died: from now on lg_irq_inject leaves every IRQ to Python."""
        self._state.sh.alive = 0

    def sleep(self, blocked_address: int) -> None:
        """vCPU thread, HALT: sleep in C, without the GIL, until an interrupt is
        requested or an IRQ is pending that the u32 at host address
        `blocked_address` (lguest_data.blocked_interrupts) does not block.

        Kicks write the pipe only while this sleeps (cpu/_native_build.py).
        """
        err = lib.lg_irq_sleep(self._state, self._wait_fd, ffi.cast("uint32_t *", blocked_address))
        if err:
            raise OSError(-err, os.strerror(-err))

    def sleep_target(self) -> tuple[int, int, int]:
        """(lg_irq_sleep's address, this line's state, the wait fd): the native HALT sleeps as sleep() does."""
        return int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_irq_sleep"))), self.target, self._wait_fd

    def stop_address(self) -> int:
        """Where the vCPU's stop flag is (the native HALT clears it after a sleep, as Python does)."""
        return int(ffi.cast("uintptr_t", ffi.addressof(self.page.stop, "flag")))

    def close(self) -> None:
        fds = (self._state.wake_fd, self._wait_fd)
        self._state.wake_fd, self._wait_fd = -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        # A late caller (a bug, but not one that may crash the service) finds
        # a dead line in private memory instead of an unmapped page.
        self._tomb = ffi.new("struct lg_irq_shared *"), ffi.new("int *")
        self._state.sh, self._state.stop = self._tomb
        self.page.close()
