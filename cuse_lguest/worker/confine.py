"""What a fresh worker does to itself before it touches a Guest.

The worker is forked by the zygote, which is root.  Before it builds the
Guest it becomes its launcher, in everything that decides what it may do:

* only the descriptors it was given stay open (the zygote's socket and the
  other workers' handles must not leak into it);
* rlimits of its own: no core dumps (a core would hold the launcher's guest
  RAM in a root-owned file), a small descriptor table, and an address-space
  bound that still leaves room for Unicorn's translation buffer and the
  Guest's RAM, so a runaway worker meets its own limit before the OOM killer
  looks at anyone else;
* the launcher's uid, gid and supplementary groups, then no capabilities
  at all (a root launcher's worker is uid 0 without privilege) and
  `no_new_privs`, so nothing it could exec would give any back;
* not dumpable, so /proc/<worker> stays root's and the launcher cannot
  ptrace the process that holds the handles;
* dies with the zygote (PR_SET_PDEATHSIG, set last: a credential change
  clears it), which dies with the front end: no Guest outlives the service.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_CLOSE_RANGE = 436        # x86-64
_SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_LAST_CAP = 63             # drop every bounding-set bit the kernel knows (EINVAL ends it)

OPEN_FILES = 256              # a Guest, its handles, eventfds and Python's own few
ADDRESS_SPACE_SLACK = 512 << 20


@dataclass(frozen=True)
class Identity:
    """Whom a worker runs as: the launcher's effective ids and supplementary groups."""
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of_process(cls, pid: int) -> "Identity":
        """Read from /proc/<pid>/status (effective uid and gid).  Raises ProcessLookupError."""
        fields: dict[str, list[str]] = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key] = value.split()
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        return cls(int(fields["Uid"][1]), int(fields["Gid"][1]), tuple(int(g) for g in fields["Groups"]))


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def keep_only(fds: list[int]) -> list[int]:
    """Move `fds` to 3, 4, ... in order and close every other descriptor from 3 up.  Returns the new numbers.

    0-2 stay: they are the service's own standard streams (the log).
    """
    moved = []
    high = max([*fds, 2]) + 1
    parked = [os.dup2(fd, high + i, inheritable=False) for i, fd in enumerate(fds)]
    for i, fd in enumerate(parked):
        moved.append(os.dup2(fd, 3 + i, inheritable=False))
    first_free = 3 + len(fds)
    if _libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first_free), ctypes.c_uint(0xFFFFFFFF), 0) != 0:
        os.closerange(first_free, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return moved


def limit(address_space: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))


def address_space_for(translation_buffer: int, guest_bytes: int) -> int:
    """What a worker may map: what it has now, Unicorn's buffer, the Guest's RAM twice
    (the shared view or a mirror copy, and the CPU's view of it), and slack for threads."""
    with open("/proc/self/status") as f:
        now = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    return now + translation_buffer + 2 * guest_bytes + ADDRESS_SPACE_SLACK


def become(who: Identity) -> None:
    """The launcher's ids, then no capability and no way to gain one."""
    for cap in range(CAP_LAST_CAP + 1):   # while we still hold CAP_SETPCAP
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            break                     # EINVAL: past the last capability this kernel knows
    os.setgroups(list(who.groups))
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()    # effective, permitted, inheritable: all zero (two 32-bit words)
    if _libc.syscall(_SYS_CAPSET, header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)


def die_with_parent(parent: int) -> None:
    """SIGKILL when the zygote goes; if it already went, now."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
