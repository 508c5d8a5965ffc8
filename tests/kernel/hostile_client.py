#!/usr/bin/env python3
"""A hostile /dev/lguest user for the kernel tier (issue 13); prints one JSON object.

It runs as `nobody` in the device group, against the genuine node, and does
what the issue's findings describe, each as its own command.  Its guests are
a few hand-assembled 32-bit instructions run in linear mode (no page tables
yet, so virtual = physical): enough to store to a chosen guest-physical
address, do LGUEST_INIT and NOTIFY, and die on `ud2`.  It reports what the
service answered; the driver (root) looks at files and the service itself.

  readonly-file PATH   RAM is a shared memfd with PATH (root's, 0444) mapped
                       read-only MAP_SHARED as its last page; the guest stores
                       there (finding 1)
  exec                 mirror-mode RAM; after INITIALIZE the launcher execs a
                       new program (same pid) with a secret at the same
                       address, which then runs the guest; the guest NOTIFYs
                       a string the service pushes to "the launcher" (finding 2)
  limits               open files, eventfds, live guests until refused (finding 5)
  full-eventfd         the guest NOTIFYs an eventfd the launcher filled to its
                       maximum; the read must still end (finding 5)
  switcher             pfnlimit reaching the switcher region (finding 6)
  devpage              shared RAM; the guest writes garbage over its device page,
                       then the launcher sends LHREQ_IRQ (finding 6)
  caps-hold            open files, then live guests, until refused; report, hold
                       them until stdin says so (finding 5, the global caps)
  caps-second          the same from another user while the first holds its share:
                       the service's caps answer (finding 5)
  mirror-budget        private (mirror-mode) guests until the budget for their
                       copies refuses one; a shared one still fits; closing one
                       gives its copy back (finding 5)
  huge-mirror MIB      INITIALIZE private (mirror-mode) RAM of MIB MiB, mapped
                       MAP_NORESERVE so that this process need not commit it:
                       more than the machine can commit for the service's copy
                       (finding 6)
  slow-memory          guest RAM is a private mapping of a file on this user's own
                       FUSE mount, whose reads are never answered, for 16 guests;
                       their INITIALIZEs wait until the driver kills that
                       filesystem (finding 5)
  quick                INITIALIZE a guest and send it LHREQ_IRQs, each bounded by
                       WAIT_S: another user's, beside slow-memory (finding 5)
  unflushed-eventfd    a live guest, then LHREQ_EVENTFD from 24 threads at once with an fd on a file of this
                       user's own FUSE mount that never answers FLUSH; then a second guest and its
                       LHREQ_IRQs (the service's threads must all be free)
  userns               open files until refused and hold them; then a child makes
                       a user namespace, prints `unshared PID`, waits for a line on
                       stdin (the driver maps subordinate ids into it, as newuidmap
                       would), becomes uid 5 there and opens the node (finding 5)
"""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import pathlib
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from cuse_lguest import abi  # noqa: E402
from lguest_client import _attempt as attempt, _words as words  # noqa: E402  (this directory)
from cuse_lguest.testing.standin import PYTHON, libc, map_at  # noqa: E402
import blocking_fuse  # noqa: E402  (this directory)

NODE = os.environ.get("LGUEST_DEVICE", "/dev/lguest")
PAGE = abi.PAGE_SIZE
MEM = 1 << 20                                # guest RAM below the device pages
PAGES = MEM // PAGE + abi.DEVICE_PAGES
CODE, LDATA, STRING = 0x1000, 0x3000, 0x5000 # guest-physical layout of the hand-made guest
NOTIFY_VALUE = 0x7000
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE
MAP_FIXED_NOREPLACE = 0x100000               # never over whatever the new program already has there
MAP_NORESERVE = 0x4000                       # (Python's mmap module lacks it before 3.13)
WAIT_S = 30.0
RETRY_S = 10.0          # how long a close may take to reach the service (FUSE releases asynchronously)


# ---- the guest ---------------------------------------------------------------------------

def mov_eax(v: int) -> bytes:
    return b"\xB8" + struct.pack("<I", v)


def mov_ebx(v: int) -> bytes:
    return b"\xBB" + struct.pack("<I", v)


def store(gpa: int, value: int) -> bytes:
    """mov dword [gpa], value"""
    return b"\xC7\x05" + struct.pack("<II", gpa, value)


HYPERCALL = bytes([0xCD, abi.LGUEST_TRAP_ENTRY])
UD2 = b"\x0F\x0B"
SPIN = b"\xEB\xFE"
LGUEST_INIT = mov_eax(abi.LHCALL_LGUEST_INIT) + mov_ebx(LDATA) + HYPERCALL


def notify(value: int) -> bytes:
    return mov_eax(abi.LHCALL_NOTIFY) + mov_ebx(value) + HYPERCALL


def load(buf, code: bytes) -> None:
    """The guest's code at CODE and an lguest_data the handshake accepts at LDATA."""
    buf[CODE:CODE + len(code)] = code
    struct.pack_into("<I", buf, LDATA + abi.LGUEST_DATA_SYSCALL_VEC, abi.SYSCALL_VECTOR)


# ---- the device -----------------------------------------------------------------------------

def initialize(fd: int, base: int, pfnlimit: int = PAGES) -> str:
    return attempt(lambda: os.write(fd, words(abi.LHREQ_INITIALIZE, base, pfnlimit, CODE)))


def read_once(fd: int) -> dict:
    """One read by this thread (it must be the one that sent INITIALIZE), and the reason after ENOENT.

    pread at 0, as the project's launcher reads: a plain read() would hold the file's position lock
    (a FUSE node is a regular file) and keep the IRQ writes of other threads out while it runs.
    """
    try:
        return {"read": os.pread(fd, 8, 0).hex()}
    except OSError as e:
        out = {"read": errno.errorcode.get(e.errno, str(e.errno))}
        if e.errno == errno.ENOENT:
            out["reason"] = attempt_text(fd)
        return out


def run_guest(fd: int, base: int, out: dict, before_read=None) -> dict:
    """INITIALIZE and one read, on a thread of their own, so that a read the service never answers
    is reported as BLOCKED instead of holding this program (only the INITIALIZE thread may read)."""
    def go() -> None:
        out["initialize"] = initialize(fd, base)
        if out["initialize"] != "OK":
            return
        if before_read is not None:
            before_read()
        out.update(read_once(fd))
    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    runner.join(WAIT_S)
    if runner.is_alive():
        out["read"] = "BLOCKED"
    return out


def attempt_text(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).rstrip(b"\0").decode(errors="replace")
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def shared_ram(pages: int = PAGES, extra: int = 0):
    """A MAP_SHARED memfd of `pages` pages (plus `extra` reserved pages after it): (buf, base)."""
    lc = libc()
    base = map_at(lc, None, (pages + extra) * PAGE, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ram = os.memfd_create("hostile-ram")
    os.ftruncate(ram, pages * PAGE)
    map_at(lc, base, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, ram)
    return memoryview(mmap.mmap(ram, pages * PAGE, mmap.MAP_SHARED)), base


# ---- the findings ---------------------------------------------------------------------------

def readonly_file(path: str) -> dict:
    """Finding 1: the guest stores into a page that is root's read-only file."""
    ram_pages = PAGES - 1
    buf, base = shared_ram(ram_pages, extra=1)
    victim = os.open(path, os.O_RDONLY)
    map_at(libc(), base + ram_pages * PAGE, PAGE, mmap.PROT_READ, mmap.MAP_SHARED, victim)
    target = ram_pages * PAGE
    load(buf, store(target, 0x444E5750) + UD2)                 # "PWND"
    fd = os.open(NODE, os.O_RDWR)
    out = run_guest(fd, base, {"victim_gpa": target})
    if out.get("read") != "BLOCKED":
        os.close(fd)
    return out


def exec_reuse() -> dict:
    """Finding 2, first program: private RAM, INITIALIZE, then exec under the same pid."""
    lc = libc()
    base = map_at(lc, None, PAGES * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = memoryview((ctypes.c_char * (PAGES * PAGE)).from_address(base)).cast("B")
    load(buf, LGUEST_INIT + notify(STRING) + UD2)
    buf[STRING:STRING + 5] = b"PWND\0"
    fd = os.open(NODE, os.O_RDWR)
    result = initialize(fd, base)
    if result != "OK":
        return {"initialize": result}
    os.set_inheritable(fd, True)
    os.execv(PYTHON, [PYTHON, __file__, "exec-reborn", str(fd), str(base), result])


def exec_reborn(fd: int, base: int, initialized: str) -> dict:
    """Finding 2, the program after exec: its own secret where the old RAM was, then the guest runs."""
    lc = libc()
    map_at(lc, base, PAGES * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
           mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    ctypes.memset(base, 0x53, PAGES * PAGE)                      # "SSSS..."
    out = {"initialize": initialized, "pid": os.getpid()}
    signal.alarm(int(WAIT_S))                 # only this thread may read: a read that never ends kills us
    out.update(read_once(fd))
    signal.alarm(0)
    out["secret_at_string"] = ctypes.string_at(base + STRING, 5).decode(errors="replace")
    out["secret_intact"] = ctypes.string_at(base, PAGES * PAGE) == b"S" * (PAGES * PAGE)
    return out


def limits() -> dict:
    """Finding 5: what one user can make the service hold."""
    out: dict = {}
    files = open_until_refused(out, 300)
    for fd in files[1:]:
        os.close(fd)
    fd = files[0]
    buf, base = shared_ram()
    out["initialize"] = initialize(fd, base)
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    registered = 0
    try:
        while registered < 300:
            os.write(fd, words(abi.LHREQ_EVENTFD, NOTIFY_VALUE + registered, efd))
            registered += 1
    except OSError as e:
        out["eventfd_error"] = errname(e)
    out["eventfds"] = registered
    os.close(efd)
    os.close(fd)
    guests = open_until_refused({}, 20)          # more than the guests a user may have
    guests_until_refused(out, guests)
    for g in guests:
        os.close(g)
    return out


def full_eventfd() -> dict:
    """Finding 5: the guest NOTIFYs an eventfd the launcher filled to its maximum."""
    buf, base = shared_ram()
    load(buf, LGUEST_INIT + notify(NOTIFY_VALUE) + UD2)
    fd = os.open(NODE, os.O_RDWR)
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    os.eventfd_write(efd, EVENTFD_MAX)
    out: dict = {}

    def register() -> None:
        out["eventfd"] = attempt(lambda: os.write(fd, words(abi.LHREQ_EVENTFD, NOTIFY_VALUE, efd)))
    run_guest(fd, base, out, before_read=register)
    if out.get("read") != "BLOCKED":
        out["count_kept"] = os.eventfd_read(efd) == EVENTFD_MAX
        os.close(fd)
    return out


def switcher() -> dict:
    """Finding 6: pfnlimit over the switcher region, with memory that covers it (a sparse memfd)."""
    pfnlimit = (0xFFC00000 >> 12) + 1
    ram = os.memfd_create("hostile-big")
    os.ftruncate(ram, pfnlimit * PAGE)
    base = map_at(libc(), None, pfnlimit * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, ram)
    fd = os.open(NODE, os.O_RDWR)
    out = {"initialize": initialize(fd, base, pfnlimit)}
    os.close(fd)
    return out


def devpage() -> dict:
    """Finding 6: garbage over the device page in shared mode, then an LHREQ_IRQ."""
    buf, base = shared_ram()
    buf[abi.BP_E820_ENTRIES] = 1
    abi.E820_ENTRY.pack_into(buf, abi.BP_E820_MAP, 0, MEM, abi.E820_RAM)
    big = abi.device_record_size(255, 255, 255)
    header = int.from_bytes(bytes([abi.VIRTIO_ID_BLOCK, 255, 255, 255]), "little")
    load(buf, LGUEST_INIT + store(MEM, header) + store(MEM + big, header) + SPIN)
    fd = os.open(NODE, os.O_RDWR)
    out: dict = {}
    stop = threading.Event()

    def kick() -> None:
        while not stop.wait(0.1):
            try:
                os.write(fd, words(abi.LHREQ_IRQ, 1))
            except OSError as e:
                out.setdefault("irq_errors", []).append(errno.errorcode.get(e.errno, str(e.errno)))
                if len(out["irq_errors"]) > 5:
                    return
    kicker = threading.Thread(target=kick, daemon=True)
    run_guest(fd, base, out, before_read=kicker.start)
    stop.set()
    if out.get("read") != "BLOCKED":
        kicker.join(5)
        os.close(fd)
    return out


# ---- the caps, as two users -------------------------------------------------------------------

def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


def open_until_refused(out: dict, most: int = 40) -> list[int]:
    """Open the node until the service refuses (or `most`); out gets `opens` and `open_error`."""
    files: list[int] = []
    try:
        while len(files) < most:
            files.append(os.open(NODE, os.O_RDWR))
    except OSError as e:
        out["open_error"] = errname(e)
    out["opens"] = len(files)
    return files


def guests_until_refused(out: dict, files: list[int]) -> None:
    """INITIALIZE a small shared-RAM guest on each file until one is refused; out gets `guests`
    and `guest_error`.  The guests never run: being alive is enough to be counted."""
    out["guests"] = 0
    for fd in files:
        _, base = shared_ram(MEM // PAGE + 1)
        result = initialize(fd, base, MEM // PAGE + 1)
        if result != "OK":
            out["guest_error"] = result
            return
        out["guests"] += 1


def caps_hold() -> dict:
    """The first user takes all it may, reports, and holds it until the driver has looked."""
    out: dict = {"uid": os.getuid()}
    files = open_until_refused(out)
    guests_until_refused(out, files)
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
    for fd in files:
        os.close(fd)
    return {"released": len(files)}


def caps_second() -> dict:
    """A second user, while the first holds its share: what is left of the service's."""
    out: dict = {}
    files = open_until_refused(out)
    guests_until_refused(out, files)
    for fd in files:
        os.close(fd)
    return out


def until_ok(attempt_once, within: float = RETRY_S) -> str:
    """Try until "OK" or `within` seconds: what a refused attempt said last."""
    deadline = time.monotonic() + within
    while True:
        result = attempt_once()
        if result == "OK" or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def private_ram() -> int:
    """Private anonymous RAM (mirror mode: the service keeps a copy); its base."""
    return map_at(libc(), None, PAGES * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def mirror_budget() -> dict:
    """Two mirror copies against a budget for one and a half."""
    out: dict = {}
    first, second = os.open(NODE, os.O_RDWR), os.open(NODE, os.O_RDWR)
    out["first_private"] = initialize(first, private_ram())
    out["second_private"] = initialize(second, private_ram())
    out["second_shared"] = initialize(second, shared_ram()[1])     # no copy, so no budget
    os.close(first)
    third = os.open(NODE, os.O_RDWR)
    out["third_private_after_close"] = until_ok(lambda: initialize(third, private_ram()))
    for fd in (second, third):
        os.close(fd)
    return out


def huge_mirror(mib: int) -> dict:
    """Finding 6: a mirror copy the machine cannot commit; the service's mmap fails with ENOMEM."""
    size = mib << 20
    base = map_at(libc(), None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    fd = os.open(NODE, os.O_RDWR)
    out = {"initialize": initialize(fd, base, size // PAGE)}
    os.close(fd)
    return out


# ---- slow memory ------------------------------------------------------------------------------

def slow_memory(count: int = 16) -> dict:
    """Guest RAM on our own FUSE file, which never answers a read, for `count` guests at once (as
    many as a user may have, and as many as the service once had threads for all requests).

    The filesystem runs in a child process: the launcher's address space is
    what the service's pulls wait on, and this process only waits in its
    INITIALIZEs.  Prints `server PID PATH` first and, from the child,
    `read-blocked` when the first read of the RAM arrived.
    """
    where = tempfile.mkdtemp(prefix="hostile-fuse-")
    path = os.path.join(where, "ram")
    open(path, "w").close()
    size = PAGES * PAGE
    conn = blocking_fuse.mount(path)
    server = os.fork()
    if server == 0:
        try:
            blocking_fuse.serve(conn, size, on_read=lambda: os.write(1, b"read-blocked\n"))
        finally:
            os._exit(0)
    os.close(conn)
    print(f"server {server} {path}", flush=True)
    ram = os.open(path, os.O_RDONLY)
    os.fstat(ram)                       # the size, from GETATTR: without it every page is past the end
    results: list[str] = [""] * count

    def one(i: int) -> None:
        base = map_at(libc(), None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, ram)
        fd = os.open(NODE, os.O_RDWR)
        results[i] = initialize(fd, base)       # until the filesystem is gone
        os.close(fd)
    waiting = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in waiting:
        t.start()
    for t in waiting:
        t.join()
    os.waitpid(server, 0)
    subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    return {"initialize": results}


def quick() -> dict:
    """INITIALIZE and three LHREQ_IRQs; whatever does not come back within WAIT_S is BLOCKED."""
    buf, base = shared_ram()
    load(buf, LGUEST_INIT + SPIN)
    fd = os.open(NODE, os.O_RDWR)
    out: dict = {"initialize": "BLOCKED"}

    def go() -> None:
        out["initialize"] = initialize(fd, base)
        if out["initialize"] == "OK":
            out["irq"] = "BLOCKED"
            out["irq"] = [attempt(lambda: os.write(fd, words(abi.LHREQ_IRQ, 1))) for _ in range(3)]
    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    runner.join(WAIT_S)
    if not runner.is_alive():
        os.close(fd)
    return out


def unflushed_eventfd(count: int = 24) -> dict:
    """A close() of any copy of our FUSE file waits for ever: the service must never close one on a
    thread that serves requests.  Each attempt and the second guest are bounded by WAIT_S."""
    where = tempfile.mkdtemp(prefix="hostile-flush-")
    path = os.path.join(where, "f")
    open(path, "w").close()
    server = blocking_fuse.serve_in_child(path, PAGE, never=(blocking_fuse.FLUSH,))
    stuck = os.open(path, os.O_RDONLY)
    buf, base = shared_ram()
    load(buf, LGUEST_INIT + SPIN)
    fd = os.open(NODE, os.O_RDWR)
    out: dict = {"initialize": initialize(fd, base)}
    results = ["BLOCKED"] * count

    def one(i: int) -> None:
        # pwrite: a plain write() holds the file's position lock, and only one would reach the service.
        results[i] = attempt(lambda: os.pwrite(fd, words(abi.LHREQ_EVENTFD, NOTIFY_VALUE + 8 * i, stuck), 0))
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out["eventfd"] = results
    out["second"] = quick()
    blocking_fuse.stop(server, path)
    return out


def userns() -> dict:
    """One user's share of open files, then the same user again as a subordinate uid."""
    out: dict = {}
    files = open_until_refused(out, 300)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    said_r, said_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            if libc().unshare(0x10000000) != 0:          # CLONE_NEWUSER
                raise OSError(ctypes.get_errno(), "unshare")
            os.write(ready_w, b"u")
            os.read(go_r, 1)
            os.setgid(5)
            os.setuid(5)
            try:
                os.open(NODE, os.O_RDWR)
                said = "OK"
            except OSError as e:
                said = errname(e)
        except OSError as e:
            said = f"setup {errname(e)}"
        os.write(said_w, said.encode())
        os._exit(0)
    for theirs in (ready_w, go_r, said_w):
        os.close(theirs)
    if os.read(ready_r, 1) == b"u":
        print(f"unshared {child}", flush=True)
        sys.stdin.readline()
    os.write(go_w, b"g")
    out["subordinate_open"] = os.read(said_r, 64).decode()
    os.waitpid(child, 0)
    for fd in files:
        os.close(fd)
    return out


COMMANDS = {"limits": limits, "full-eventfd": full_eventfd, "switcher": switcher, "devpage": devpage,
            "caps-hold": caps_hold, "caps-second": caps_second, "mirror-budget": mirror_budget,
            "slow-memory": slow_memory, "quick": quick, "userns": userns,
            "unflushed-eventfd": unflushed_eventfd}


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "readonly-file":
        out = readonly_file(sys.argv[2])
    elif what == "exec":
        out = exec_reuse()
    elif what == "huge-mirror":
        out = huge_mirror(int(sys.argv[2]))
    elif what == "exec-reborn":
        out = exec_reborn(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif what in COMMANDS:
        out = COMMANDS[what]()
    else:
        print(f"usage: {sys.argv[0]} readonly-file PATH | exec | huge-mirror MIB | {' | '.join(COMMANDS)}", file=sys.stderr)
        return 2
    out["uid"], out["groups"] = os.getuid(), os.getgroups()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
