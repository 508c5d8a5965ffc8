"""A Guest's exit profile: how often it left the emulated CPU, for what, and what each exit cost the host.

Every way out of guest code is a kind of exit with a slot: each trap vector
from each ring, each hypercall (synchronous, or drained from the async ring),
each IRQ delivered, timer ticks, the memory sync points, and the time spent
inside Unicorn.  A slot holds a count and the host nanoseconds spent on it.
The numbers live in a small native struct (struct lg_exit_stats in
cpu/_native_build.py) in a shared mapping of a file or memfd, for three
readers: the benchmarks in the same process, `cuse-lguest stat` in another
one, and the root front end of a Guest that runs in its own worker process
(the worker maps the block from an fd it was given: `ExitStats.from_fd`).

It stays on: a slot update is one native call of two relaxed atomic adds,
and the host time of an exit is two clock reads around its handler.  What an
exit's time does *not* include is Unicorn's own cost of leaving translated
code and coming back (longjmp, exception dispatch, finding the next block):
that is inside the EMU slot, which is all of emu_start.  So:
  guest code and Unicorn ~ EMU.ns - the exits' ns (they run inside emu_start),
  outside Unicorn        ~ RUN.ns - EMU.ns.
"""
from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass

from cuse_lguest import abi
from cuse_lguest.cpu._native import ffi, lib

# Slots (the file format; see struct lg_exit_stats).
TRAP = 0                   # + 2 * vector + 1 if the trap came from ring 3
HCALL = 512                # + call number: `int $0x1f` from the Guest kernel
HCALL_SLOTS = 64
ASYNC = HCALL + HCALL_SLOTS  # + call number: drained from the async ring (its time is inside an exit's)
IRQ = ASYNC + HCALL_SLOTS  # + IRQ number: an interrupt delivered to the Guest's handler (count only)
TIMER_TICK = IRQ + 32      # the clock event fired (count only)
SYNC_RUN_ENTRY = TIMER_TICK + 1   # memory sync points that do work (mirror mode)
SYNC_IRQ = SYNC_RUN_ENTRY + 1
SYNC_NOTIFY = SYNC_IRQ + 1
EMU = SYNC_NOTIFY + 1      # emu_start calls: time inside Unicorn, exits included
RUN = EMU + 1              # Guest.run() calls: all of it
HALT_SLEEP = RUN + 1       # asleep in HALT (left out of the HALT exit's own time)

SIZE = ffi.sizeof("struct lg_exit_stats")
_NAME_LEN = lib.LG_STAT_NAME

_TRAP_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
               10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC",
               19: "#XM", abi.SYSCALL_VECTOR: "system call"}
_MISC_NAMES = {TIMER_TICK: "timer tick", SYNC_RUN_ENTRY: "sync: run entry",
               SYNC_IRQ: "sync: LHREQ_IRQ", SYNC_NOTIFY: "sync: notify", EMU: "inside Unicorn (emu_start)",
               RUN: "run() (all host time)", HALT_SLEEP: "asleep in HALT"}


def trap_slot(vector: int, from_user: bool) -> int:
    return TRAP + 2 * (vector & 0xFF) + (1 if from_user else 0)


def hcall_slot(nr: int) -> int:
    return HCALL + min(nr, HCALL_SLOTS - 1)


def async_slot(nr: int) -> int:
    return ASYNC + min(nr, HCALL_SLOTS - 1)


def slot_name(slot: int) -> str:
    """What a slot counts, as `cuse-lguest stat` shows it."""
    if slot < HCALL:
        vector, user = divmod(slot - TRAP, 2)
        mnemonic = _TRAP_NAMES.get(vector)
        return f"trap {vector:#x}{' ' + mnemonic if mnemonic else ''} from ring {3 if user else 1}"
    if slot < IRQ:
        base, what = (HCALL, "hypercall") if slot < ASYNC else (ASYNC, "async hypercall")
        nr = slot - base
        return f"{what} {nr} {abi.LHCALL_NAMES.get(nr, '?')}"
    if slot < TIMER_TICK:
        return f"irq {slot - IRQ} delivered"
    return _MISC_NAMES.get(slot, f"slot {slot}")


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment: count and host ns per slot, plus who they belong to."""
    name: str
    service_pid: int
    launcher_pid: int
    count: tuple[int, ...]
    ns: tuple[int, ...]

    def rows(self) -> list[tuple[int, int, int]]:
        """(slot, count, ns) of every slot that has happened, in slot order."""
        return [(i, c, self.ns[i]) for i, c in enumerate(self.count) if c]

    def exits_ns(self) -> int:
        """Host time in exit handlers (traps and synchronous hypercalls), all inside emu_start."""
        return sum(self.ns[TRAP:ASYNC])

    def guest_ns(self) -> int:
        """Inside Unicorn and not in an exit handler: guest code and Unicorn's own work."""
        return max(0, self.ns[EMU] - self.exits_ns() + self.ns[HALT_SLEEP])

    def minus(self, before: "Snapshot") -> "Snapshot":
        return Snapshot(self.name, self.service_pid, self.launcher_pid,
                        tuple(a - b for a, b in zip(self.count, before.count)),
                        tuple(a - b for a, b in zip(self.ns, before.ns)))


class ExitStats:
    """One Guest's stats block, mapped shared.  Writers call add(); anyone may snapshot()."""

    def __init__(self, fd: int, *, writable: bool = True) -> None:
        """Map the block behind `fd` (which the caller keeps: the mapping outlives its closing)."""
        if os.fstat(fd).st_size < SIZE:
            raise ValueError("not an exit stats block: too short")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, prot)
        self._buf = ffi.from_buffer("char[]", self._map, require_writable=writable)
        self.native = ffi.cast("struct lg_exit_stats *", self._buf)
        if self.native.magic != lib.LG_STAT_MAGIC or self.native.version != lib.LG_STAT_VERSION:
            self.close()
            raise ValueError("not an exit stats block: bad magic or version")

    # ---- making one ---------------------------------------------------------------
    @staticmethod
    def format(fd: int, name: str, launcher_pid: int) -> None:
        """Size and stamp a new, empty block in `fd` (a fresh file or memfd)."""
        os.ftruncate(fd, SIZE)
        with mmap.mmap(fd, SIZE, mmap.MAP_SHARED) as m:
            s = ffi.cast("struct lg_exit_stats *", ffi.from_buffer("char[]", m))
            s.service_pid = os.getpid()
            s.launcher_pid = launcher_pid
            raw = name.encode("utf-8", "replace")[:_NAME_LEN - 1]
            ffi.memmove(s.name, raw, len(raw))
            s.version = lib.LG_STAT_VERSION
            s.magic = lib.LG_STAT_MAGIC          # last: a reader never sees a half-made header as valid
            del s

    @classmethod
    def anonymous(cls, name: str = "guest", launcher_pid: int = 0) -> "ExitStats":
        """A block nobody else can find (in-process use: tests and benchmarks read it directly)."""
        fd = os.memfd_create("lguest-exit-stats", os.MFD_CLOEXEC)
        try:
            cls.format(fd, name, launcher_pid)
            return cls(fd)
        finally:
            os.close(fd)

    @classmethod
    def from_fd(cls, fd: int) -> "ExitStats":
        """The block another party created and handed over as `fd` (a worker's view)."""
        return cls(fd)

    @classmethod
    def open(cls, path: str) -> "ExitStats":
        """A read-only view of a published block (`cuse-lguest stat`)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(fd, writable=False)
        finally:
            os.close(fd)

    # ---- using it -------------------------------------------------------------------
    def add(self, slot: int, ns: int = 0) -> None:
        lib.lg_stat_add(self.native, slot, ns)

    def slot_arrays(self) -> tuple[int, int]:
        """Where the count and ns arrays are in this process (the native exits add to them)."""
        s = self.native
        return int(ffi.cast("uintptr_t", s.count)), int(ffi.cast("uintptr_t", s.ns))

    def snapshot(self) -> Snapshot:
        s = self.native
        return Snapshot(ffi.string(s.name).decode("utf-8", "replace"), s.service_pid, s.launcher_pid,
                        tuple(s.count), tuple(s.ns))

    def close(self) -> None:
        if self._map is None:
            return
        self.native = None
        ffi.release(self._buf)
        self._buf = None
        try:
            self._map.close()
        except BufferError:
            pass        # a cffi view still alive somewhere: the mapping goes with it
        self._map = None


class StatsDirectory:
    """Where a service publishes its Guests' blocks, one name each, for `cuse-lguest stat`.

    Each block is a memfd the service made and sealed at its size before
    anyone else got it: the worker that counts into it is the launcher's
    user (and a Guest may take a worker over), and with a file it could
    shrink, `cuse-lguest stat` (root, the block mapped) would die of SIGBUS,
    and growing one could fill /run.  The seals refuse both, as for the IRQ
    page.  The name `<service pid>.<guest number>` is a symbolic link to the
    service's own descriptor of the block, /proc/<service pid>/fd/<n>, which
    only root may follow (the counts are the service's business, like kvm's
    debugfs); it is
    made once the block is formatted (so a reader never opens a half-made
    one) and removed when its Guest goes.  A service that died leaves its
    names behind: readers skip names whose service is gone, and the next
    service removes them.
    """

    DEFAULT = "/run/cuse-lguest/guests"

    def __init__(self, path: str = DEFAULT) -> None:
        self.path = path
        self._seq = 0

    def prepare(self) -> None:
        """Create the directory and remove what dead services left (the service, at start), among
        them one that had our pid."""
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        ours = f"{os.getpid()}."
        for name in os.listdir(self.path):
            if name.startswith(ours) or not _service_alive(name):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass

    def publish(self, name: str, launcher_pid: int) -> tuple[int, str]:
        """A new, formatted block for one Guest: (its fd, its path).  The caller closes and withdraws."""
        self._seq += 1
        final = os.path.join(self.path, f"{os.getpid()}.{self._seq}")
        fd = os.memfd_create("lguest-exit-stats", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            ExitStats.format(fd, name, launcher_pid)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            os.symlink(f"/proc/{os.getpid()}/fd/{fd}", final)
        except BaseException:
            os.close(fd)
            raise
        return fd, final

    @staticmethod
    def withdraw(fd: int, path: str) -> None:
        """The name first: it names the descriptor's number, which the next open may reuse."""
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)

    def live(self) -> list[str]:
        """Paths of the published blocks whose service still runs, oldest first."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = [n for n in names if _service_alive(n)]
        return [os.path.join(self.path, n) for n in sorted(found, key=_order)]


def _order(name: str) -> tuple[int, int]:
    pid, _, seq = name.partition(".")
    return (int(pid), int(seq)) if pid.isdigit() and seq.isdigit() else (0, 0)


def _service_alive(name: str) -> bool:
    pid = name.split(".", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
