"""Guests in worker processes (cuse_lguest/worker/): isolation, identity, and nothing left behind.

The launcher here is the Python one, in this process, talking to an
in-process Device whose factory forks a worker per Guest from a zygote, as
`cuse-lguest serve` does.  test_tinyguest_scenarios.py runs every scenario
through workers too; this file covers what only a process boundary has.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import mmap
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from cuse_lguest.core.contract import GuestParams, RunExit
from cuse_lguest.device import Device
from cuse_lguest.memory.handles import acquire
from cuse_lguest.testing.guestram import load_kernel
from cuse_lguest.testing.launcher import Launcher
from cuse_lguest.testing.layout import write_boot_params
from cuse_lguest.testing.transport import DeviceTransport
from cuse_lguest.worker.proxy import WorkerFactory, WorkerGuest


RAM = 16 << 20


def _memfd_guest(kernel, *args: str) -> tuple[int, mmap.mmap, int]:
    """tinyguest with `args` (early console only) in a shared memfd: (fd, its mapping, entry point)."""
    fd = os.memfd_create("lguest-test-ram", 0)
    os.ftruncate(fd, RAM)
    buf = mmap.mmap(fd, RAM, mmap.MAP_SHARED)
    start = load_kernel(buf, kernel)
    write_boot_params(buf, RAM, [*args, "nodev=1"])
    return fd, buf, start


def _params(pid: int, base: int, start: int) -> GuestParams:
    pfnlimit = RAM // 4096
    return GuestParams(pid=pid, base=base, pfnlimit=pfnlimit, start=start, claim_notify=lambda value: False,
                       memory=acquire(pid, base, pfnlimit), name=f"test[{pid}]")


def _run_until(guest, buf: mmap.mmap, text: bytes | None = None) -> tuple[RunExit, bytes]:
    """Run, collecting early-console strings, until the Guest prints `text` or stops notifying."""
    console = b""
    while True:
        how, value = guest.run()
        if how is not RunExit.NOTIFY:
            return how, console
        console += buf[value:buf.find(b"\0", value)]
        if text is not None and text in console:
            return how, console


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _fds() -> dict[int, str]:
    found = {}
    for n in os.listdir("/proc/self/fd"):
        try:
            found[int(n)] = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            pass                    # the listing's own descriptor, gone by now
    return found


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            found |= {int(c) for c in f.read().split()}
    return found


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """A Launcher run on a thread, through a Device of its own, so the test can reach its worker meanwhile."""

    def __init__(self, kernel, workers: WorkerFactory, *args: str) -> None:
        self.guests: list[WorkerGuest] = []
        self.device = Device(self._record(workers))
        self.transport = DeviceTransport(self.device)
        self.seen = bytearray()
        self.launcher = Launcher(kernel, mem_mb=16, args=list(args), timeout=120,
                                 on_output=self.seen.extend)
        self.result = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _record(self, workers: WorkerFactory):
        def factory(params):
            guest = workers(params)
            self.guests.append(guest)
            return guest
        return factory

    def _run(self) -> None:
        self.result = self.launcher.run(self.transport)

    def worker(self) -> WorkerGuest:
        return _wait(lambda: self.guests and self.guests[0], "INITIALIZE")

    def wait_for(self, text: bytes) -> None:
        _wait(lambda: text in self.seen, repr(text))

    def finish(self):
        self.thread.join(150)
        assert not self.thread.is_alive()
        return self.result


def test_a_guest_runs_in_a_worker_of_its_own(tinyguest_elf, workers):
    a = Running(tinyguest_elf, workers, "test=halt", "hz=100", "irqs=30")
    b = Running(tinyguest_elf, workers, "test=halt", "hz=100", "irqs=30")
    a.wait_for(b"halt ready")
    b.wait_for(b"halt ready")
    pa, pb = a.worker().pid, b.worker().pid
    assert pa != pb and {pa, pb} <= _children(workers.zygote.pid)
    for run in (a, b):
        result = run.finish()
        assert result.death == "CRASH: tinyguest: done", result.console
        assert "halt PASS" in result.console


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGBUS, signal.SIGABRT])
def test_a_dead_worker_ends_only_its_guest(tinyguest_elf, workers, sig):
    """Killed, a bus error, an abort: ENOENT and a reason that names it; the other Guest finishes."""
    victim = Running(tinyguest_elf, workers, "test=halt", "hz=100", "irqs=1000000")
    bystander = Running(tinyguest_elf, workers, "test=timer", "ms=300")
    victim.wait_for(b"halt ready")
    os.kill(victim.worker().pid, sig)
    result = victim.finish()
    assert result.errno == errno.ENOENT, result
    assert result.death == f"guest process killed by {sig.name}"
    other = bystander.finish()
    assert other.death == "CRASH: tinyguest: done" and "timer PASS" in other.console, other.console
    # ...and the service still makes new Guests.
    again = Running(tinyguest_elf, workers, "test=hello").finish()
    assert "hello PASS" in again.console


def test_the_worker_is_the_launcher_without_privilege(tinyguest_elf, workers):
    """uid, gid and groups of the caller; no capability; no_new_privs; no core; its own fds only;
    and it still runs the Guest to the end, as that user, with nothing it did not preload."""
    fd, buf, start = _memfd_guest(tinyguest_elf, "test=hello")
    # The launcher: a process of nobody's with the RAM mapped shared.  Python lives
    # under /root here, so it becomes nobody only once it runs.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import mmap, os, sys, ctypes\n"
         f"m = mmap.mmap({fd}, {RAM}, mmap.MAP_SHARED); os.close({fd})\n"
         "os.setgroups([65533, 100]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
         "ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\n"      # dumpable again, as a launcher started by nobody is
         "print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=[fd])
    os.close(fd)
    try:
        base = int(holder.stdout.readline())
        guest = workers(_params(holder.pid, base, start))
        try:
            st = _status(guest.pid)
            assert st["Uid"].split() == ["65534"] * 4 and st["Gid"].split() == ["65534"] * 4
            assert sorted(int(g) for g in st["Groups"].split()) == [100, 65533]
            for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(st[caps], 16) == 0, caps
            assert st["NoNewPrivs"] == "1"
            # Not in the service's session, so never under its controlling terminal (TIOCSTI).
            assert os.getsid(guest.pid) != os.getsid(0)
            with open(f"/proc/{guest.pid}/limits") as f:
                limits = f.read()
            assert "Max core file size        0" in limits
            # Undumpable: its /proc files are root's, not the launcher's to open or ptrace.
            assert os.stat(f"/proc/{guest.pid}/mem").st_uid == 0
            # Beyond 0-2: its two sockets, the IRQ line's page and pipe ends, the memory handle
            # (until it is mapped), and what it made itself (its exit stats block, mmap's copies): nothing of the
            # zygote's or of other workers' (a third socket, a pidfd, another launcher's RAM).
            fds = [os.readlink(f"/proc/{guest.pid}/fd/{n}") for n in os.listdir(f"/proc/{guest.pid}/fd")
                   if int(n) > 2]
            kinds = collections.Counter(name.split(" ")[0] if name.startswith("/memfd:") else name.split(":")[0]
                                        for name in fds)
            assert kinds["socket"] == 2 and kinds["pipe"] == 2, fds
            assert set(kinds) <= {"socket", "pipe", "/memfd:lguest-irq", "/memfd:lguest-exit-stats",
                                  "/memfd:lguest-test-ram"}, fds
            # The Guest runs as nobody: its early console, then its power-off.
            how, console = _run_until(guest, buf)
            assert how is RunExit.DEAD and guest.death == "CRASH: tinyguest: done", console
            assert b"hello PASS" in console
        finally:
            guest.destroy()
    finally:
        holder.stdin.close()
        holder.wait()
        buf.close()


def test_a_file_truncated_under_the_guest_kills_only_its_worker(tinyguest_elf, workers):
    """Finding 3 of issue 13: the launcher shrinks its own shared RAM; the bus error is the worker's."""
    fd, buf, start = _memfd_guest(tinyguest_elf, "test=halt", "hz=100", "irqs=1000000")
    bystander = Running(tinyguest_elf, workers, "test=timer", "ms=300")
    guest = workers(_params(os.getpid(), ctypes.addressof(ctypes.c_char.from_buffer(buf)), start))
    try:
        how, console = _run_until(guest, buf, b"halt ready")
        assert how is RunExit.NOTIFY, console
        os.ftruncate(fd, 0)                 # from here on, nothing here touches buf
        assert guest.run() == (RunExit.DEAD, 0)
        assert guest.death == "guest process killed by SIGBUS"
    finally:
        guest.destroy()
        os.close(fd)
    other = bystander.finish()
    assert other.death == "CRASH: tinyguest: done" and "timer PASS" in other.console, other.console


def test_nothing_is_left_after_destroy(tinyguest_elf, workers):
    """No worker process, zombie, descriptor or thread outlives its Guest."""
    Running(tinyguest_elf, workers, "test=hello").finish()              # warm up: lazily started threads
    fds, threads = _fds(), threading.active_count()
    runs = [Running(tinyguest_elf, workers, "test=hello") for _ in range(3)]
    pids = [run.worker().pid for run in runs]
    for run in runs:
        run.finish()
    # The release does not wait for the worker's exit; the zygote reaps it right after.
    _wait(lambda: not _children(workers.zygote.pid) & set(pids), "the workers to be reaped", 10)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} still exists"
    try:
        _wait(lambda: not set(_fds().items()) - set(fds.items()), "the reaper to close the pidfds", 10)
    except AssertionError:
        raise AssertionError(f"descriptors left: {set(_fds().items()) - set(fds.items())}") from None
    _wait(lambda: threading.active_count() <= threads, "threads to end", 10)


def test_a_worker_that_will_not_go_is_killed(tinyguest_elf, workers):
    """A stopped worker that will not exit after its release is SIGKILLed (and reaped) after a bounded wait."""
    run = Running(tinyguest_elf, workers, "test=halt", "hz=100", "irqs=1000000")
    run.wait_for(b"halt ready")
    pid = run.worker().pid
    os.kill(pid, signal.SIGSTOP)
    run.device.release(run.transport.fh)      # the last close, with the read still in the stopped worker
    run.finish()
    _wait(lambda: not os.path.exists(f"/proc/{pid}"), "the stopped worker to be killed and reaped", 15)
    assert pid not in _children(workers.zygote.pid)


def test_guest_ram_on_a_file_whose_close_never_ends_holds_no_other_launch(tinyguest_elf, tmp_path):
    """Guest RAM shared with a FUSE file whose FLUSH is never answered (a member's own mount, where
    fusermount3 may give it allow_other): every close() of a copy of that file waits for ever.  The
    zygote serves every launch, so it must never hold such a copy: another launcher's Guest is
    still made."""
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs fusermount3 and /dev/fuse")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "kernel"))
    import blocking_fuse
    path = str(tmp_path / "ram")
    open(path, "w").close()
    server = blocking_fuse.serve_in_child(path, RAM, never=(blocking_fuse.FLUSH,))
    workers = WorkerFactory()          # a zygote of its own: the old code leaves it stuck until the end
    made: dict[str, object] = {}

    def launch(which: str, base: int, start: int) -> None:
        try:
            made[which] = workers(_params(os.getpid(), base, start))
        except Exception as e:         # noqa: BLE001  (reported through `made`)
            made[which] = e
    try:
        ram = os.open(path, os.O_RDWR)
        os.fstat(ram)                  # the size, from GETATTR
        slow = mmap.mmap(ram, RAM, mmap.MAP_SHARED)
        slow_base = ctypes.addressof(ctypes.c_char.from_buffer(slow))
        threading.Thread(target=launch, args=("slow", slow_base, 0x100000), daemon=True).start()
        time.sleep(2)                  # its spawn reached the zygote
        fd, buf, start = _memfd_guest(tinyguest_elf, "test=halt")
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        other = threading.Thread(target=launch, args=("other", base, start), daemon=True)
        other.start()
        other.join(30)
        assert isinstance(made.get("other"), WorkerGuest), f"the other launch: {made.get('other', 'waiting')}"
        made["other"].destroy()
    finally:
        blocking_fuse.stop(server, path)
        time.sleep(1)
        if isinstance(made.get("slow"), WorkerGuest):
            made["slow"].destroy()
        workers.close()


def test_a_stopped_worker_holds_an_lhreq_eventfd_for_a_bounded_time_once(tinyguest_elf, workers):
    """The launcher may SIGSTOP its worker (same uid).  LHREQ_EVENTFD waits for the worker to take
    its copy, on a libfuse worker thread: that wait must end, or a few such writes hold every thread
    that serves requests, of every user.  After one wait in vain, later ones do not wait at all."""
    fd, buf, start = _memfd_guest(tinyguest_elf, "test=halt")
    guest = workers(_params(os.getpid(), ctypes.addressof(ctypes.c_char.from_buffer(buf)), start))
    efds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(3)]
    os.kill(guest.pid, signal.SIGSTOP)
    try:
        calls = [threading.Thread(target=guest.eventfd_added, args=(0x1000 * (i + 1), efd), daemon=True)
                 for i, efd in enumerate(efds)]
        for t in calls:
            t.start()
        deadline = time.monotonic() + 30
        for t in calls:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in calls), "LHREQ_EVENTFD still waits on a stopped worker"
    finally:
        os.kill(guest.pid, signal.SIGCONT)
        guest.destroy()
        for efd in efds:
            os.close(efd)
        os.close(fd)
