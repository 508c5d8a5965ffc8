"""The device layer's file semantics, path by path (spec §1).

These tests drive `Device` directly.  The Guest behind it is `ScriptedGuest`,
a test double for the core's small interface: it replays the run() results a
test gives it, so each errno path of the seed can be reached on purpose.
End-to-end tests (tests/host/test_launcher*, tests/protocol, tests/kernel)
use the real core instead.
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings, strategies as st

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestSetupError, RunExit
from cuse_lguest.device import Device
from cuse_lguest.testing.nomemory import no_memory

TID = threading.get_native_id()


class ScriptedGuest:
    """Replays scripted run() results; records irqs, interrupts and destroy."""

    def __init__(self, params, script=()):
        self.params = params
        self.script = list(script)
        self.death = None
        self.irqs: list[int] = []
        self.interrupted = threading.Event()
        self.destroyed = False

    def run(self):
        step = self.script.pop(0) if self.script else ("block",)
        if step[0] == "notify":
            if self.params.claim_notify(step[1]):
                return self.run()
            return RunExit.NOTIFY, step[1]
        if step[0] == "die":
            self.death = step[1]
            return RunExit.DEAD, 0
        self.interrupted.wait()
        self.interrupted.clear()
        return RunExit.INTERRUPTED, 0

    def irq(self, n):
        self.irqs.append(n)

    def interrupt(self):
        self.interrupted.set()

    def destroy(self):
        self.destroyed = True


class Harness:
    """A Device with ScriptedGuests, speaking words of a chosen size."""

    def __init__(self, word=8, script=()):
        self.word = word
        self.guests: list[ScriptedGuest] = []

        def factory(params):
            g = ScriptedGuest(params, script)
            self.guests.append(g)
            return g

        self.dev = Device(factory, caller_word_size=lambda pid: word, memory=no_memory)
        self.fh = self.dev.open()

    def words(self, *ws):
        return struct.pack("<%d%s" % (len(ws), "I" if self.word == 4 else "Q"), *ws)

    def write(self, *ws, offset=0, tid=TID):
        return self.dev.write(tid, self.fh, offset, self.words(*ws))

    def init(self):
        return self.write(abi.LHREQ_INITIALIZE, 0x10000000, 0x4007, 0x100000)

    def read(self, size=None, offset=0, tid=TID):
        return self.dev.read(tid, self.fh, offset, self.word if size is None else size)


@pytest.fixture(params=[4, 8], ids=["32bit", "64bit"])
def h(request):
    return Harness(word=request.param)


# ---------------------------------------------------------------- spec §1.9, case by case
def test_initialize_returns_three_words(h):
    assert h.init() == 3 * h.word
    p = h.guests[0].params
    assert (p.base, p.pfnlimit, p.start, p.pid) == (0x10000000, 0x4007, 0x100000, os.getpid())


@pytest.mark.parametrize("req", [abi.LHREQ_IRQ, abi.LHREQ_EVENTFD, abi.LHREQ_GETDMA, abi.LHREQ_BREAK, 99])
def test_any_request_before_initialize_is_einval(h, req):
    assert h.write(req, 1, 1) == -errno.EINVAL


def test_read_before_initialize_is_einval(h):
    assert h.read() == -errno.EINVAL


def test_unreadable_request_word_is_efault(h):
    assert h.dev.write(TID, h.fh, 0, b"\0\0") == -errno.EFAULT
    h.init()
    assert h.dev.write(TID, h.fh, 0, b"\2" * (h.word - 1)) == -errno.EFAULT


def test_short_initialize_payload_is_efault(h):
    assert h.dev.write(TID, h.fh, 0, h.words(0, 1, 2)) == -errno.EFAULT


def test_initialize_of_the_other_word_size_is_einval(h):
    other = 8 if h.word == 4 else 4
    data = struct.pack("<4" + ("I" if other == 4 else "Q"), 0, 1, 2, 3)
    expected = -errno.EFAULT if len(data) < 4 * h.word else -errno.EINVAL
    assert h.dev.write(TID, h.fh, 0, data) == expected


def test_initialize_with_a_start_beyond_32_bits_is_einval():
    """A 64-bit launcher's start word can be wider than a Guest eip: refused before any
    Guest is built (the real one raised building its boot stub, and the request got EIO)."""
    h = Harness(word=8)
    assert h.write(abi.LHREQ_INITIALIZE, 0x10000000, 0x4007, 1 << 32) == -errno.EINVAL
    assert h.guests == []
    assert h.init() == 24


def test_second_initialize_is_ebusy(h):
    h.init()
    assert h.init() == -errno.EBUSY


def test_initialize_on_dead_guest_is_ebusy():
    h = Harness(script=[("die", "CRASH: bye")])
    h.init()
    assert h.read() == -errno.ENOENT
    assert h.init() == -errno.EBUSY


def test_setup_error_errno_is_returned():
    def refuse(params):
        raise GuestSetupError(errno.EFAULT, "guest RAM is a private mapping")
    dev = Device(refuse, caller_word_size=lambda pid: 8, memory=no_memory)
    fh = dev.open()
    assert dev.write(TID, fh, 0, struct.pack("<4Q", 0, 1, 2, 3)) == -errno.EFAULT
    # Nothing was attached: the file is still fresh.
    assert dev.read(TID, fh, 0, 8) == -errno.EINVAL


@pytest.mark.parametrize("req", [abi.LHREQ_GETDMA, abi.LHREQ_BREAK, 5, 0xFFFF])
def test_obsolete_and_unknown_requests_are_einval(h, req):
    h.init()
    assert h.write(req, 0) == -errno.EINVAL


def test_bad_vcpu_offset_is_einval(h):
    h.init()
    assert h.write(abi.LHREQ_IRQ, 1, offset=1) == -errno.EINVAL
    assert h.read(offset=1) == -errno.EINVAL


def test_irq_is_delivered_and_returns_zero(h):
    h.init()
    assert h.write(abi.LHREQ_IRQ, 31) == 0
    assert h.guests[0].irqs == [31]


def test_irq_32_is_einval(h):
    h.init()
    assert h.write(abi.LHREQ_IRQ, abi.LGUEST_IRQS) == -errno.EINVAL
    assert h.guests[0].irqs == []


def test_wrong_shape_after_initialize(h):
    h.init()
    assert h.dev.write(TID, h.fh, 0, h.words(abi.LHREQ_IRQ)) == -errno.EFAULT      # payload missing
    assert h.dev.write(TID, h.fh, 0, h.words(abi.LHREQ_IRQ, 1, 0)) == -errno.EINVAL  # one word too many


def test_eventfd_addr_zero_is_einval(h):
    h.init()
    efd = os.eventfd(0)
    try:
        assert h.write(abi.LHREQ_EVENTFD, 0, efd) == -errno.EINVAL
    finally:
        os.close(efd)


def test_eventfd_closed_fd_is_ebadf(h):
    h.init()
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    assert h.write(abi.LHREQ_EVENTFD, 0x4001000, fd) == -errno.EBADF


def test_eventfd_not_an_eventfd_is_einval(h):
    h.init()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert h.write(abi.LHREQ_EVENTFD, 0x4001000, fd) == -errno.EINVAL
    finally:
        os.close(fd)


def test_read_from_another_thread_is_eperm(h):
    h.init()
    out = []
    t = threading.Thread(target=lambda: out.append(h.read(tid=threading.get_native_id())))
    t.start()
    t.join()
    assert out == [-errno.EPERM]


def test_read_returns_one_word_notify(h):
    h.guests.clear()
    scripted = Harness(word=h.word, script=[("notify", 0x4001000)])
    scripted.init()
    assert scripted.read(size=64) == scripted.words(0x4001000)


# ---------------------------------------------------------------- death (spec §1.5)
@pytest.mark.parametrize("word", [4, 8])
def test_dead_guest_sequence(word):
    h = Harness(word=word, script=[("die", "CRASH: Power down")])
    h.init()
    assert h.read() == -errno.ENOENT                       # the read during which it died
    assert h.read(size=1023) == b"CRASH: Power down\0"      # then the reason, NUL included
    assert h.read(size=5) == b"CRASH"                       # min(count, len+1)
    assert h.read(size=1023) == b"CRASH: Power down\0"      # again and again
    assert h.write(abi.LHREQ_IRQ, 1) == -errno.ENOENT
    assert h.write(abi.LHREQ_EVENTFD, 1, 0) == -errno.ENOENT


def test_reboot_gives_erestart_forever():
    h = Harness(script=[("die", abi.ERESTART)])
    h.init()
    assert h.read() == -abi.ERESTART
    assert h.read() == -abi.ERESTART
    assert h.read() == -abi.ERESTART


def test_interrupt_ends_a_running_read_with_eintr():
    h = Harness()
    h.init()
    out = []
    t = threading.Thread(target=lambda: out.append(h.dev.read(TID, h.fh, 0, 8)))
    # The owner check uses the thread id, so run the read as "TID" from a worker
    # (the CUSE server does the same: its runner thread serves the owner's read).
    t.start()
    while not h.dev._files[h.fh].reading:
        pass
    h.dev.interrupt(h.fh)
    t.join(5)
    assert out == [-errno.EINTR]


def test_interrupt_without_a_read_does_not_poison_the_next_read():
    h = Harness(script=[("notify", 7)])
    h.init()
    h.dev.interrupt(h.fh)
    assert h.read() == h.words(7)


def test_release_destroys_the_guest_and_closes_eventfds():
    h = Harness()
    h.init()
    efd = os.eventfd(0)
    assert h.write(abi.LHREQ_EVENTFD, 0x1000, efd) == 0
    ours = h.dev._files[h.fh].eventfds._fds[0]
    os.close(efd)
    h.dev.release(h.fh)
    assert h.guests[0].destroyed
    with pytest.raises(OSError):
        os.fstat(ours)
    assert len(h.dev) == 0


def test_release_during_a_read_interrupts_it_first():
    h = Harness()
    h.init()
    out = []
    t = threading.Thread(target=lambda: out.append(h.dev.read(TID, h.fh, 0, 8)))
    t.start()
    while not h.dev._files[h.fh].reading:
        pass
    h.dev.release(h.fh)
    t.join(5)
    assert out == [-errno.EINTR] and h.guests[0].destroyed


# ---------------------------------------------------------------- eventfd table (spec §1.6)
def test_eventfd_claims_notify_first_registered_wins():
    h = Harness(script=[("notify", 0x5000), ("notify", 0x6000)])
    h.init()
    a, b = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert h.write(abi.LHREQ_EVENTFD, 0x5000, a) == 0
        assert h.write(abi.LHREQ_EVENTFD, 0x5000, b) == 0   # no de-duplication; never signalled
        # 0x5000 goes to `a` and the Guest keeps running; 0x6000 has no eventfd.
        assert h.read() == h.words(0x6000)
        assert os.eventfd_read(a) == 1
        with pytest.raises(BlockingIOError):
            os.eventfd_read(b)
    finally:
        os.close(a)
        os.close(b)


def test_eventfd_survives_the_callers_close():
    """The launcher closes its copy right after registering; ours must live on."""
    h = Harness(script=[("notify", 0x5000), ("notify", 1)])
    h.init()
    efd = os.eventfd(0)
    dup = os.dup(efd)
    assert h.write(abi.LHREQ_EVENTFD, 0x5000, efd) == 0
    os.close(efd)
    assert h.read() == h.words(1)
    assert os.eventfd_read(dup) == 1
    os.close(dup)


CHILD = r"""
import os, sys, struct, threading
r, w = int(sys.argv[1]), int(sys.argv[2])
efd = os.eventfd(0)
def worker():
    os.write(w, struct.pack("<ii", threading.get_native_id(), efd))
    os.read(r, 1)  # stay alive until the parent has copied the fd
    print(os.eventfd_read(efd))
t = threading.Thread(target=worker); t.start(); t.join()
"""


def test_eventfd_from_a_thread_of_another_process():
    """pidfd_open refuses a thread id that is not a leader: the device maps tid to tgid."""
    h = Harness(script=[("notify", 0x7000), ("notify", 2)])
    h.init()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(r1), str(w2)],
                             pass_fds=(r1, w2), stdout=subprocess.PIPE, text=True)
    try:
        ctid, cfd = struct.unpack("<ii", os.read(r2, 8))
        assert ctid != child.pid
        data = h.words(abi.LHREQ_EVENTFD, 0x7000, cfd)
        assert h.dev.write(ctid, h.fh, 0, data) == 0
        os.write(w1, b"x")
        assert h.read() == h.words(2)
        out, _ = child.communicate(timeout=10)
        assert out.strip() == "1"
    finally:
        child.kill()
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_eventfd_fd_out_of_range_is_ebadf():
    h = Harness(word=8)
    h.init()
    assert h.write(abi.LHREQ_EVENTFD, 0x1000, 1 << 40) == -errno.EBADF


# ---------------------------------------------------------------- hostile bytes
ALLOWED = {-errno.EFAULT, -errno.EINVAL, -errno.EBADF, -errno.EBUSY, -errno.ENOENT, 0}


@settings(max_examples=400, deadline=None)
@given(word=st.sampled_from([4, 8]), init=st.booleans(), offset=st.integers(0, 2**64 - 1),
       data=st.binary(max_size=64))
def test_random_writes_never_raise(word, init, offset, data):
    h = Harness(word=word)
    if init:
        h.init()
    result = h.dev.write(TID, h.fh, offset, data)
    assert result in ALLOWED or result == 3 * word
    h.dev.release(h.fh)


@settings(max_examples=200, deadline=None)
@given(reqs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 2**32 - 1),
                               st.integers(0, 2**32 - 1)), max_size=8))
def test_random_word_requests_never_raise(reqs):
    h = Harness(word=4)
    h.init()
    for req, a, b in reqs:
        for n in (1, 2, 3):
            result = h.dev.write(TID, h.fh, 0, h.words(req, a, b)[:4 * n])
            assert result in ALLOWED or result == 12
    h.dev.release(h.fh)


def test_allocation_failure_is_enomem():
    def exhausted(params):
        raise MemoryError
    dev = Device(exhausted, caller_word_size=lambda pid: 4, memory=no_memory)
    fh = dev.open()
    assert dev.write(TID, fh, 0, struct.pack("<4I", 0, 1, 2, 3)) == -errno.ENOMEM


def test_default_word_size_comes_from_the_callers_elf_class():
    """No injected probe: this 64-bit Python must be refused a 16-byte INITIALIZE."""
    dev = Device(lambda params: ScriptedGuest(params), memory=no_memory)
    fh = dev.open()
    assert dev.write(TID, fh, 0, struct.pack("<4I", 0, 1, 2, 3)) == -errno.EFAULT
    assert dev.write(TID, fh, 0, struct.pack("<4Q", 0, 1, 2, 3)) == 24


@pytest.fixture
def unflushed_fuse_file(tmp_path):
    """An open fd on a FUSE file (the caller's own mount) whose FLUSH is never answered.

    Every close() of such a file, by anyone holding a copy, waits in the kernel
    for that answer: a hostile user's way to hold whoever closes it.  Killing
    the filesystem at the end aborts the connection, so nothing stays stuck.
    """
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs fusermount3 and /dev/fuse")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "kernel"))
    import blocking_fuse
    path = str(tmp_path / "f")
    open(path, "w").close()
    server = blocking_fuse.serve_in_child(path, 4096, never=(blocking_fuse.FLUSH,))
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        blocking_fuse.stop(server, path)
        try:
            os.close(fd)
        except OSError:
            pass                # ECONNABORTED: its filesystem is gone


def _eventfd_within(h, fd: int, seconds: float) -> list[int]:
    """LHREQ_EVENTFD of `fd` on a thread: [its result], or [] if it has not come back in `seconds`."""
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(h.write(abi.LHREQ_EVENTFD, 0x4001000, fd)), daemon=True)
    t.start()
    t.join(seconds)
    return out


def test_eventfd_of_a_file_whose_close_never_ends_is_refused_without_closing_it(h, unflushed_fuse_file):
    """A service worker must never close() a copy of a caller's non-eventfd: on the caller's FUSE
    file that close waits for the caller's filesystem for ever (FUSE_FLUSH), and a few such
    LHREQ_EVENTFDs would hold every worker of the service."""
    h.init()
    assert _eventfd_within(h, unflushed_fuse_file, 10) == [-errno.EINVAL], "it waited on the caller's filesystem"


def test_a_file_swapped_in_after_the_look_is_closed_off_the_request(h, unflushed_fuse_file, monkeypatch):
    """The caller may dup2() another file over the eventfd between our look and our copy: that copy
    is still refused, and closed where its close() may wait."""
    h.init()
    monkeypatch.setattr("cuse_lguest.procs.names_eventfd", lambda tid, fd: True)
    assert _eventfd_within(h, unflushed_fuse_file, 10) == [-errno.EINVAL], "it waited on the caller's filesystem"
