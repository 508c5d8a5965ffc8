"""A launcher stand-in that lays out its memory the way a hostile launcher would, on command.

Security tests need a *separate* process, often an unprivileged one, whose
address space the service reads: a launcher that maps a file it may only
read beside its RAM, swaps a mapping while INITIALIZE looks at it, or execs
another program under the same pid.  This module is that process.  It reads
one command per line on stdin and answers one line on stdout:

  shared PAGES [PATH]   RAM = PAGES pages of a MAP_SHARED memfd; PATH (if given)
                        mapped MAP_SHARED read-only right after it, one page.
                        Answers the base address in hex.
  private PAGES         RAM = PAGES pages of private anonymous memory.  Answers base.
  fill OFF BYTE         write BYTE (hex) over the page at base+OFF.  Answers ok.
  swap OFF PATH         map all of PATH (MAP_SHARED read-write) over base+OFF.
                        Answers ok.
  peek OFF N            answers the N bytes at base+OFF in hex.
  exec                  exec a fresh stand-in under the same pid, with private
                        RAM at the same base filled with 0x5a; it answers
                        "ready" when its memory is in place.
  exit                  exit at once.

It uses nothing but ctypes, so it runs as any user from any directory.
`StandIn` drives it from a test.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys

PAGE = 4096
_MAP_FIXED = 0x10
# The system's Python, which any user may run (ours may live under /root); ctypes is all we need.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def libc():
    """libc with mmap declared for placing mappings at chosen addresses (also for other hostile programs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    return libc


def map_at(libc, addr: int | None, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap, exactly at `addr` (MAP_FIXED) when one is given; the address.  Raises OSError."""
    got = libc.mmap(addr, size, prot, flags | (_MAP_FIXED if addr else 0), fd, offset)
    if got in (None, ctypes.c_void_p(-1).value) or (addr and got != addr):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return got


def serve(argv: list[str]) -> None:
    """The stand-in's own main loop (runs in the child)."""
    lc = libc()
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    base = 0
    if argv[:1] == ["reborn"]:                   # after `exec`: the same RAM address, other bytes
        base, pages = int(argv[1], 16), int(argv[2])
        map_at(lc, base, pages * PAGE, rw, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        ctypes.memset(base, 0x5A, pages * PAGE)
        print("ready", flush=True)
    pages = 0
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "shared":
            pages = int(cmd[1])
            extra = 1 if len(cmd) > 2 else 0
            base = map_at(lc, None, (pages + extra) * PAGE, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            fd = os.memfd_create("standin-ram")
            os.ftruncate(fd, pages * PAGE)
            map_at(lc, base, pages * PAGE, rw, mmap.MAP_SHARED, fd)
            if extra:
                other = os.open(cmd[2], os.O_RDONLY)
                map_at(lc, base + pages * PAGE, PAGE, mmap.PROT_READ, mmap.MAP_SHARED, other)
            print(f"{base:x}", flush=True)
        elif cmd[0] == "private":
            pages = int(cmd[1])
            base = map_at(lc, None, pages * PAGE, rw, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            print(f"{base:x}", flush=True)
        elif cmd[0] == "fill":
            ctypes.memset(base + int(cmd[1], 16), int(cmd[2], 16), PAGE)
            print("ok", flush=True)
        elif cmd[0] == "swap":
            fd = os.open(cmd[2], os.O_RDWR)
            map_at(lc, base + int(cmd[1], 16), os.fstat(fd).st_size, rw, mmap.MAP_SHARED, fd)
            print("ok", flush=True)
        elif cmd[0] == "peek":
            print(ctypes.string_at(base + int(cmd[1], 16), int(cmd[2])).hex(), flush=True)
        elif cmd[0] == "exec":
            os.execv(sys.executable, [sys.executable, "-c", _BOOT, "reborn", f"{base:x}", str(pages)])
        elif cmd[0] == "exit":
            os._exit(0)


# How the child starts: this file is run by path, so no package import is needed.
_BOOT = f"import runpy; runpy.run_path({__file__!r}, run_name='__standin__')"


class StandIn:
    """A running stand-in.  `user` = (uid, gid, groups) to drop to before it starts, or None."""

    def __init__(self, user: tuple[int, int, list[int]] | None = None) -> None:
        def drop() -> None:
            if user is not None:
                os.setgroups(user[2])
                os.setgid(user[1])
                os.setuid(user[0])
        self.proc = subprocess.Popen([PYTHON, "-c", _BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/", preexec_fn=drop)
        self.pid = self.proc.pid

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"stand-in {self.pid} gave no answer to {line!r} (exit {self.proc.poll()})")
        return answer

    def shared(self, pages: int, read_only_path: str | None = None) -> int:
        return int(self.ask(f"shared {pages}" + (f" {read_only_path}" if read_only_path else "")), 16)

    def private(self, pages: int) -> int:
        return int(self.ask(f"private {pages}"), 16)

    def peek(self, offset: int, n: int) -> bytes:
        return bytes.fromhex(self.ask(f"peek {offset:x} {n}"))

    def exec(self) -> None:
        """Replace the program under the same pid (its RAM comes back at the same base, all 0x5a)."""
        if self.ask("exec") != "ready":
            raise RuntimeError("the re-exec'd stand-in did not come up")

    def exit(self) -> None:
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()

    def __enter__(self) -> "StandIn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__standin__":
    serve(sys.argv[1:])
