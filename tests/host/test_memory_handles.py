"""Memory handles: the service never gets more of a launcher's memory than the launcher has.

Each test runs a real launcher stand-in (testing/standin.py), often as
`nobody`, with real files, and takes its handles the way INITIALIZE does.
"""
from __future__ import annotations

import errno
import os
import pwd
import subprocess
import sys
import tempfile

import pytest

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.memory import handles as handles_module
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.handles import MAX_PFNLIMIT, MIRROR, SHARED, MemoryHandles, acquire
from cuse_lguest.memory.shared import open_guest_memory
from cuse_lguest.testing.standin import StandIn

PAGES = 16
NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = (NOBODY.pw_uid, NOBODY.pw_gid, [])


@pytest.fixture(autouse=True)
def as_root():
    """Every test here plays root's service against another user's process (setuid, map_files)."""
    from tests.conftest import needs_root
    needs_root()


@pytest.fixture
def public_dir():
    """A directory `nobody` can reach, holding root's files."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        os.chmod(d, 0o755)
        yield d


def root_file(directory: str, name: str, fill: bytes, mode: int, pages: int = 1) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(fill * abi.PAGE_SIZE * pages)
    os.chmod(path, mode)
    return path


def guest_memory(pid: int, base: int, pfnlimit: int):
    """What INITIALIZE builds: the handles, then the Guest's memory from them."""
    return open_guest_memory(acquire(pid, base, pfnlimit))


# ---- finding 1: a file the caller can only read ------------------------------------------

def test_a_file_the_launcher_may_only_read_is_never_written(public_dir):
    """Read-only MAP_SHARED of root's 0444 file inside the range: not shared, and never written."""
    victim = root_file(public_dir, "victim", b"V", 0o444)
    with StandIn(AS_NOBODY) as launcher:
        base = launcher.shared(PAGES, victim)
        mem = guest_memory(launcher.pid, base, PAGES + 1)
        try:
            assert mem.read_bytes(PAGES * abi.PAGE_SIZE, 4) == b"VVVV"    # reading is the launcher's right
            mem.write_bytes(PAGES * abi.PAGE_SIZE, b"PWND\0")              # the Guest stores there...
            with pytest.raises(GuestFault, match="^launcher memory gone"):
                mem.before_notify(PAGES * abi.PAGE_SIZE)                  # ...and makes us send it
        finally:
            mem.close()
    with open(victim, "rb") as f:
        assert f.read() == b"V" * abi.PAGE_SIZE


def test_a_file_the_launcher_may_write_is_shared(public_dir):
    mine = root_file(public_dir, "mine", b"M", 0o666)
    with StandIn(AS_NOBODY) as launcher:
        base = launcher.shared(PAGES)
        launcher.ask(f"swap {(PAGES - 1) * abi.PAGE_SIZE:x} {mine}")
        handles = acquire(launcher.pid, base, PAGES)
        assert handles.mode == SHARED and len(handles.fds()) == 2
        mem = open_guest_memory(handles)
        try:
            mem.write_bytes((PAGES - 1) * abi.PAGE_SIZE, b"ours")
        finally:
            mem.close()
    with open(mine, "rb") as f:
        assert f.read(5) == b"oursM"


# ---- a mapping swapped while INITIALIZE looks at it --------------------------------------

@pytest.mark.parametrize("when", ["before the open", "after the open"])
def test_a_mapping_swapped_during_initialize_is_refused(public_dir, monkeypatch, when):
    """The launcher replaces its RAM with another (writable) file at the worst moment."""
    other = root_file(public_dir, "other", b"O", 0o666, pages=PAGES)
    with StandIn(AS_NOBODY) as launcher:
        base = launcher.shared(PAGES)
        real_open = os.open

        def racing_open(path, flags, *args):
            # The new mapping covers exactly the old one, so the name we open still exists.
            if "/map_files/" in str(path) and when == "before the open":
                launcher.ask(f"swap 0 {other}")
            fd = real_open(path, flags, *args)
            if "/map_files/" in str(path) and when == "after the open":
                launcher.ask(f"swap 0 {other}")
            return fd

        monkeypatch.setattr(handles_module.os, "open", racing_open)
        fds_before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(GuestSetupError) as err:
            acquire(launcher.pid, base, PAGES)
        assert err.value.errno == errno.EFAULT and "changed" in str(err.value)
        assert len(os.listdir("/proc/self/fd")) == fds_before      # nothing opened stays open


# ---- finding 2: a mirror handle reaches one address space, never a pid's next one ---------

def test_after_exec_the_mirror_reaches_nothing():
    """Same pid, new program, RAM at the same address: the old handle must not touch it."""
    with StandIn(AS_NOBODY) as launcher:
        base = launcher.private(PAGES)
        launcher.ask("fill 0 41")
        mem = guest_memory(launcher.pid, base, PAGES)
        try:
            assert mem.read_bytes(0, 2) == b"AA"
            launcher.exec()
            assert launcher.peek(0, 4) == b"ZZZZ"                     # the new program's bytes
            mem.write_bytes(0, b"PWND\0")
            with pytest.raises(GuestFault, match="^launcher memory gone"):
                mem.before_notify(0)                                 # a push to the launcher
            with pytest.raises(GuestFault, match="^launcher memory gone"):
                mem.remote.pull([(0, mem.host_address, abi.PAGE_SIZE)])
            assert mem.read_bytes(0, 4) == b"PWND"                   # nothing of theirs came in
            assert launcher.peek(0, 4) == b"ZZZZ"                     # and nothing of ours went out
        finally:
            mem.close()


def test_after_exit_the_mirror_reaches_nothing():
    with StandIn() as launcher:
        base = launcher.private(PAGES)
        mem = guest_memory(launcher.pid, base, PAGES)
        try:
            launcher.exit()
            with pytest.raises(GuestFault, match="^launcher memory gone"):
                mem.at_run_entry() if mem.devpage else mem.remote.pull([(0, mem.host_address, 8)])
        finally:
            mem.close()


# ---- the INITIALIZE words, and transfer ----------------------------------------------------

@pytest.mark.parametrize("pfnlimit", [0, MAX_PFNLIMIT + 1, 1 << 20])
def test_pfnlimit_reaching_the_switcher_is_refused_before_anything_is_read(pfnlimit):
    """No process 0 exists: the refusal must come from the words alone."""
    with pytest.raises(GuestSetupError) as err:
        acquire(0, 0x10000000, pfnlimit)
    assert err.value.errno == errno.EFAULT and "pfnlimit" in str(err.value)


def test_handles_travel_as_plain_data_and_fds():
    with StandIn() as launcher:
        base = launcher.private(PAGES)
        launcher.ask("fill 0 42")
        handles = acquire(launcher.pid, base, PAGES)
        assert handles.mode == MIRROR
        # What a socket would carry: the description and duplicates of the fds.
        received = MemoryHandles.received(handles.description(), [os.dup(fd) for fd in handles.fds()])
        handles.close()
        mem = open_guest_memory(received)
        try:
            assert mem.read_bytes(0, 2) == b"BB"
        finally:
            mem.close()


_OUT_OF_ADDRESS_SPACE = r"""
import errno, mmap, os, resource, ctypes
from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.memory.handles import acquire
from cuse_lguest.memory.shared import open_guest_memory
from cuse_lguest.testing.guestram import GuestRam, PrivateGuestRam
size = 256 << 20
with GuestRam(size) as shared, PrivateGuestRam(size) as private:
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.RLIM_INFINITY))
    for ram in (shared, private):
        try:
            open_guest_memory(acquire(os.getpid(), ram.base, size // 4096))
        except GuestSetupError as e:
            print(errno.errorcode[e.errno])
"""


def test_no_host_memory_for_the_guest_is_enomem():
    """Reserving the shared view or allocating the mirror fails: the seed's ENOMEM, not an OSError."""
    out = subprocess.run([sys.executable, "-c", _OUT_OF_ADDRESS_SPACE], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.split() == ["ENOMEM", "ENOMEM"], out.stderr
