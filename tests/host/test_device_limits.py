"""What one user may hold, and what no launcher can make the service wait for (issue 13, finding 5).

The caps answer with the errnos a launcher already knows (limits.py); an
INITIALIZE waits for nobody else's; a launcher's full eventfd never holds
the vCPU or the release of its file.
"""
from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading

import pytest

from cuse_lguest import abi
from cuse_lguest.cpu._native import lib
from cuse_lguest.core.contract import RunExit
from cuse_lguest.device import Device
from cuse_lguest.eventfds import EventfdTable
from cuse_lguest.limits import Limits
from cuse_lguest.testing.guestram import PrivateGuestRam
from cuse_lguest.testing.nomemory import no_memory

TID = threading.get_native_id()
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE       # the largest count an eventfd holds; one more blocks the writer
ALICE, BOB, CAROL = (1000, 1000), (1001, 1001), (1002, 1002)


class IdleGuest:
    """A Guest double: runs until interrupted, NOTIFYs what it is told to."""

    def __init__(self, params) -> None:
        self.params = params
        self.death = None
        self.stop = threading.Event()
        self.destroyed = False

    def run(self):
        self.stop.wait()
        self.stop.clear()
        return RunExit.INTERRUPTED, 0

    def irq(self, n: int) -> None:
        pass

    def interrupt(self) -> None:
        self.stop.set()

    def destroy(self) -> None:
        self.destroyed = True


def device(factory=IdleGuest, **caps) -> Device:
    return Device(factory, caller_word_size=lambda pid: 8, memory=no_memory, limits=Limits(**caps))


def initialize(dev: Device, fh: int, caller=ALICE, base=0x10000000, pages=0x4007) -> int:
    return dev.write(TID, fh, 0, struct.pack("<4Q", abi.LHREQ_INITIALIZE, base, pages, 0x100000), caller=caller)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- open files: EMFILE for one user's share, ENFILE for the service's --------------------

def test_open_files_per_user_and_in_all():
    dev = device(files_per_user=2, files=3)
    a1, a2 = dev.open(ALICE[0]), dev.open(ALICE[0])
    assert a1 > 0 and a2 > 0
    assert dev.open(ALICE[0]) == -errno.EMFILE
    b1 = dev.open(BOB[0])
    assert b1 > 0
    assert dev.open(CAROL[0]) == -errno.ENFILE
    dev.release(a1)
    assert dev.open(CAROL[0]) > 0                 # a released file gives its place back


# ---- live guests: ENOMEM, as the seed's INITIALIZE allocation failure -----------------------

def test_live_guests_per_user_and_in_all():
    dev = device(guests_per_user=1, guests=2)
    a1, a2, b1, c1 = (dev.open(u[0]) for u in (ALICE, ALICE, BOB, CAROL))
    assert initialize(dev, a1, ALICE) == 24
    assert initialize(dev, a2, ALICE) == -errno.ENOMEM
    assert initialize(dev, b1, BOB) == 24
    assert initialize(dev, c1, CAROL) == -errno.ENOMEM
    dev.release(a1)
    assert initialize(dev, c1, CAROL) == 24
    assert initialize(dev, a2, ALICE) == -errno.ENOMEM     # the service is full again


def test_refused_guests_are_not_charged():
    """An INITIALIZE that fails for its own reasons must not use up its caller's share."""
    dev = device(guests_per_user=1)
    fh = dev.open(ALICE[0])
    bad = dev.write(TID, fh, 0, struct.pack("<4Q", abi.LHREQ_INITIALIZE, 0, 0, 0)[:20], caller=ALICE)
    assert bad == -errno.EFAULT
    assert initialize(dev, fh, ALICE) == 24


# ---- eventfds: ENOMEM past the cap, nothing kept ----------------------------------------------

def test_eventfds_per_guest():
    dev = device(eventfds_per_guest=2)
    fh = dev.open(ALICE[0])
    assert initialize(dev, fh) == 24
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        register = struct.pack("<3Q", abi.LHREQ_EVENTFD, 0x4001000, efd)
        assert dev.write(TID, fh, 0, register) == 0
        assert dev.write(TID, fh, 0, register) == 0
        before = open_fds()
        assert dev.write(TID, fh, 0, register) == -errno.ENOMEM
        assert open_fds() == before
    finally:
        dev.release(fh)
        os.close(efd)


# ---- mirror copies: a budget for all of them, ENOMEM at INITIALIZE ------------------------

def test_mirror_copies_share_one_budget():
    """Real launcher memory (private, so mirrored) through the real core."""
    mem = 1 << 20
    pages = (mem >> 12) + abi.DEVICE_PAGES
    budget = pages * abi.PAGE_SIZE + (pages * abi.PAGE_SIZE) // 2      # room for one copy, not two
    dev = Device(limits=Limits(mirror_bytes=budget))
    with PrivateGuestRam(mem) as one, PrivateGuestRam(mem) as two:
        f1, f2 = dev.open(), dev.open()
        try:
            init = struct.Struct("<4Q")
            assert dev.write(TID, f1, 0, init.pack(abi.LHREQ_INITIALIZE, one.base, pages, 0x100000)) == 24
            assert dev.write(TID, f2, 0, init.pack(abi.LHREQ_INITIALIZE, two.base, pages, 0x100000)) \
                == -errno.ENOMEM
            dev.release(f1)
            f3 = dev.open()
            assert dev.write(TID, f3, 0, init.pack(abi.LHREQ_INITIALIZE, two.base, pages, 0x100000)) == 24
            dev.release(f3)
        finally:
            dev.release(f1)
            dev.release(f2)


# ---- nobody's slow memory holds anyone else's INITIALIZE ------------------------------------

def test_initialize_never_waits_for_another_callers_slow_memory():
    """One launcher's memory never answers (a private mapping of a file on its own FUSE mount
    can do that); another launcher's INITIALIZE goes through meanwhile."""
    stuck, release = threading.Event(), threading.Event()

    def factory(params):
        if params.base == 0x66600000:        # the slow one
            stuck.set()
            release.wait()
        return IdleGuest(params)

    dev = device(factory)
    slow_fh, quick_fh = dev.open(ALICE[0]), dev.open(BOB[0])
    results = {}
    slow = threading.Thread(target=lambda: results.update(slow=initialize(dev, slow_fh, ALICE, base=0x66600000)))
    slow.start()
    try:
        assert stuck.wait(30)
        quick = threading.Thread(target=lambda: results.update(quick=initialize(dev, quick_fh, BOB)))
        quick.start()
        quick.join(60)
        assert not quick.is_alive() and results["quick"] == 24, "INITIALIZE waited for another caller's memory"
        assert initialize(dev, slow_fh, ALICE) == -errno.EBUSY     # the same file is still being built
    finally:
        release.set()
        slow.join(60)
        dev.shutdown()
    assert results["slow"] == 24


# ---- a launcher's full eventfd ---------------------------------------------------------------

def full_eventfd() -> int:
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    os.eventfd_write(fd, EVENTFD_MAX)
    return fd


def test_a_full_eventfd_never_holds_the_vcpu():
    """The launcher fills its eventfd to the maximum; a NOTIFY to it must come straight back."""
    fd = full_eventfd()
    table = EventfdTable()
    table.register(0x5E0, os.dup(fd))
    claimed = []
    vcpu = threading.Thread(target=lambda: claimed.append(table.claim(0x5E0)), daemon=True)
    vcpu.start()
    vcpu.join(30)
    try:
        assert not vcpu.is_alive(), "the vCPU blocked in a write to the launcher's eventfd"
        assert claimed == [True]
        assert os.eventfd_read(fd) == EVENTFD_MAX      # the helper still has its wake-up
    finally:
        table.close()
        os.close(fd)


def test_a_post_stuck_on_a_full_eventfd_does_not_hold_the_release():
    """The launcher filled it between our look and our write: the write blocks, and close() ends it."""
    fd = full_eventfd()
    table = EventfdTable()
    table.register(0x5E0, os.dup(fd))
    vcpu = threading.Thread(target=lib.lg_eventfds_claim, args=(table.native, 0x5E0, 0), daemon=True)   # no look
    vcpu.start()
    try:
        closer = threading.Thread(target=table.close, daemon=True)
        closer.start()
        closer.join(30)
        vcpu.join(30)
        assert not closer.is_alive() and not vcpu.is_alive()
    finally:
        os.close(fd)


@pytest.mark.parametrize("stop", ["release", "interrupt"])
def test_a_guest_notifying_a_full_eventfd_is_released_and_interrupted(stop):
    """Through the device: the Guest NOTIFYs the full eventfd; its read and its release still end."""
    def notifier(params):
        guest = IdleGuest(params)
        guest.run = lambda: (params.claim_notify(0x5E0), guest.stop.wait(), (RunExit.INTERRUPTED, 0))[-1]
        return guest

    dev = device(notifier)
    fh = dev.open()
    fd = full_eventfd()
    try:
        assert initialize(dev, fh) == 24
        assert dev.write(TID, fh, 0, struct.pack("<3Q", abi.LHREQ_EVENTFD, 0x5E0, fd)) == 0
        reader = threading.Thread(target=dev.read, args=(TID, fh, 0, 8), daemon=True)
        reader.start()
        (dev.release if stop == "release" else dev.interrupt)(fh)
        reader.join(30)
        assert not reader.is_alive()
    finally:
        dev.release(fh)
        os.close(fd)


# ---- a Guest that cannot be built gives back what it took ----------------------------------

_OUT_OF_FDS = r"""
import errno, os, resource
from cuse_lguest.core.contract import GuestParams, GuestSetupError
from cuse_lguest.core.guest import create_guest
from cuse_lguest.memory.handles import acquire
from cuse_lguest.testing.guestram import PrivateGuestRam

def maps():
    with open("/proc/self/maps") as f:
        return f.read().count("\n")

with PrivateGuestRam(16 << 20) as ram:
    handles = acquire(os.getpid(), ram.base, 4096)
    before = maps()
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    filler = []
    try:
        while True:
            filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE
    try:
        create_guest(GuestParams(pid=os.getpid(), base=ram.base, pfnlimit=4096, start=0x100000,
                                 claim_notify=lambda v: False, memory=handles))
        print("built")
    except GuestSetupError as e:
        print(errno.errorcode[e.errno])
    for fd in filler:
        os.close(fd)
    print("maps", maps() - before)
    print("mem fds", sum(os.readlink(f"/proc/self/fd/{fd}").endswith("/mem") for fd in os.listdir("/proc/self/fd")
                         if os.path.exists(f"/proc/self/fd/{fd}")))
"""


def test_a_guest_without_file_descriptors_is_enomem_and_leaks_nothing():
    """Out of fds while the Guest is built (another user's eventfds could do that): ENOMEM, and the
    guest RAM copy and the memory handle are given back."""
    out = subprocess.run([sys.executable, "-c", _OUT_OF_FDS], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.split("\n")[:3] == ["ENOMEM", "maps 0", "mem fds 0"], out.stdout + out.stderr
