"""The exit profiler (core/exitstats.py): each exit a test guest makes is counted once, in its own slot."""
from __future__ import annotations

import os

import pytest

from cuse_lguest import abi
from cuse_lguest.core import exitstats
from cuse_lguest.core.exitstats import ExitStats, StatsDirectory
from test_core_support import boot


def counts(g) -> dict[int, int]:
    return {slot: count for slot, count, _ in g.guest.vcpu.stats.snapshot().rows()}


def test_every_trap_is_counted_by_vector_and_ring(native_build):
    """traps.c, exit by exit: what the Guest does and what its handler reports, and nothing more."""
    g = boot(native_build, "traps")
    try:
        assert g.run_to_end() == "CRASH: user program finished"
        seen = counts(g)
    finally:
        g.close()
    traps = {slot: n for slot, n in seen.items() if slot < exitstats.HCALL}
    assert traps == {
        exitstats.trap_slot(14, False): 2,      # kernel: unmapped read, read-only write
        exitstats.trap_slot(6, False): 1,       # kernel: ud2
        exitstats.trap_slot(13, False): 3,      # kernel: cli, in al, in eax (emulated)
        exitstats.trap_slot(0x80, True): 2,     # user: two system calls
        exitstats.trap_slot(14, True): 3,       # user: supervisor, read-only, unmapped
        exitstats.trap_slot(0x1F, True): 1,     # user: int $0x1f (DPL 1): #GP for the Guest
        exitstats.trap_slot(0x40, True): 1,     # user: int $0x40 (DPL 1): #GP for the Guest
        exitstats.trap_slot(13, True): 3,       # user: cli, inb, outb
    }
    # One NOTIFY per console line, one INIT, one SHUTDOWN (the second system call's).
    assert seen[exitstats.hcall_slot(abi.LHCALL_NOTIFY)] == len(g.console)
    assert seen[exitstats.hcall_slot(abi.LHCALL_LGUEST_INIT)] == 1
    assert seen[exitstats.hcall_slot(abi.LHCALL_SHUTDOWN)] == 1


def test_async_and_synchronous_hypercalls_are_told_apart(native_build):
    """asyncring.c queues 66 NOTIFYs and one LOAD_GDT_ENTRY; two NOTIFYs and a FLUSH_ASYNC trap."""
    g = boot(native_build, "asyncring")
    try:
        assert g.run_to_end() == "CRASH: async ring test done"
        seen = counts(g)
    finally:
        g.close()
    notify = abi.LHCALL_NOTIFY
    assert seen[exitstats.async_slot(notify)] + seen[exitstats.hcall_slot(notify)] == len(g.console) == 68
    assert seen[exitstats.hcall_slot(notify)] == 2      # the 65th, with the ring full, and "done"
    assert seen[exitstats.async_slot(abi.LHCALL_LOAD_GDT_ENTRY)] == 1
    assert seen[exitstats.hcall_slot(abi.LHCALL_FLUSH_ASYNC)] == 1


def test_time_is_split_between_unicorn_and_the_rest(native_build):
    g = boot(native_build, "hello")
    try:
        g.run_to_end()
        snap = g.guest.vcpu.stats.snapshot()
    finally:
        g.close()
    assert snap.count[exitstats.RUN] == 2 and snap.count[exitstats.EMU] == 2
    assert 0 < snap.exits_ns() < snap.ns[exitstats.EMU] < snap.ns[exitstats.RUN]
    assert snap.guest_ns() > 0


def test_a_block_is_shared_through_its_fd(tmp_path):
    """What a worker does with the fd its front end hands it: both sides see the same counters."""
    directory = StatsDirectory(str(tmp_path))
    directory.prepare()
    fd, path = directory.publish("launcher 42", 42)
    try:
        worker = ExitStats.from_fd(fd)
        reader = ExitStats.open(path)
        worker.add(exitstats.trap_slot(0x80, True), 1500)
        worker.add(exitstats.trap_slot(0x80, True), 500)
        snap = reader.snapshot()
        assert (snap.name, snap.launcher_pid, snap.service_pid) == ("launcher 42", 42, os.getpid())
        assert snap.rows() == [(exitstats.trap_slot(0x80, True), 2, 2000)]
        assert directory.live() == [path]
        worker.close()
        reader.close()
    finally:
        directory.withdraw(fd, path)
    assert directory.live() == [] and os.listdir(tmp_path) == []


def test_not_a_block_is_refused(tmp_path):
    junk = tmp_path / "1.1"
    junk.write_bytes(b"\0" * exitstats.SIZE)
    with pytest.raises(ValueError):
        ExitStats.open(str(junk))
    (tmp_path / "2.1").write_bytes(b"short")
    with pytest.raises(ValueError):
        ExitStats.open(str(tmp_path / "2.1"))


def test_files_of_dead_services_are_skipped_and_cleaned(tmp_path):
    dead = 2 ** 22 + 12345               # above pid_max's default range: never a live process
    (tmp_path / f"{dead}.1").write_bytes(b"x")
    directory = StatsDirectory(str(tmp_path))
    assert directory.live() == []
    directory.prepare()
    assert os.listdir(tmp_path) == []
