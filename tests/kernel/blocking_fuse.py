"""A FUSE file whose reads are never answered: slow memory, as a hostile user makes it.

Any user may mount a FUSE filesystem of their own (fusermount3 is setuid
root), and a private mapping of one of its files is ordinary memory to
everyone else, until a page of it is first touched: then whoever touches it
waits for the filesystem's answer, which this one never gives.  A launcher
whose guest RAM is such a mapping makes the service's mirror pull wait for
as long as it likes (issue 13, finding 5).

`mount()` mounts one regular file over a file of the caller's own, the way
fusermount3 hands out a FUSE connection: over a socket named in
_FUSE_COMMFD.  `serve()` then speaks just enough of the FUSE protocol (a
few fixed-size answers) for open() and mmap() to work, and drops every READ
on the floor.  The kernel learns the file's size from GETATTR only: fstat()
the open file before mapping it, or every page is past its end (SIGBUS, EIO
through /proc/<pid>/mem) and nothing waits.  It needs nothing beyond the standard library, so it runs as
any user.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import subprocess

IN_HEADER = struct.Struct("<IIQQIIIHH")     # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")          # len, error, unique
ATTR = struct.Struct("<6Q10I")              # ino size blocks a/m/ctime, their nsecs, mode nlink uid gid rdev blksize flags
GETATTR, OPEN, READ, RELEASE, FLUSH, INIT, INTERRUPT, FORGET, BATCH_FORGET = 3, 14, 15, 18, 25, 26, 36, 2, 42
NO_ANSWER = (READ, INTERRUPT, FORGET, BATCH_FORGET)
KERNEL_MINOR = 31
BUFFER = 1 << 20


def mount(path: str) -> int:
    """Mount a FUSE connection over `path` (a regular file the caller owns); its /dev/fuse fd."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        done = subprocess.run(["fusermount3", "-o", "fsname=blocking", "--", path],
                              env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                              pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise OSError(errno.EPERM, f"fusermount3 failed: {done.stderr.strip()}")
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    if not fds:
        raise OSError(errno.EPROTO, "fusermount3 sent no fd")
    return fds[0]


def _attr(size: int) -> bytes:
    return ATTR.pack(1, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, 0o100600, 1, os.getuid(), os.getgid(),
                     0, 4096, 0)


def _answer(opcode: int, body: bytes, size: int) -> bytes | None:
    if opcode == INIT:
        major, _minor, readahead = struct.unpack_from("<III", body)
        # major minor max_readahead flags max_background congestion max_write time_gran max_pages
        # map_alignment flags2 unused[7]: no features, libfuse's default queue limits
        return struct.pack("<IIIIHHIIHHI7I", major, KERNEL_MINOR, readahead, 0, 12, 9, 4096, 1, 0, 0, 0,
                           *[0] * 7)
    if opcode == GETATTR:
        return struct.pack("<QII", 3600, 0, 0) + _attr(size)
    if opcode == OPEN:
        return struct.pack("<QII", 0, 0, 0)      # fh, open_flags (page cache: mmap works), padding
    if opcode in (RELEASE, FLUSH):
        return b""
    return None


def serve(fd: int, size: int, on_read=None, never: tuple[int, ...] = ()) -> None:
    """Answer the FUSE connection `fd` as one file of `size` bytes whose READs never end.

    `on_read()` is called on the first READ.  Opcodes in `never` (FLUSH: every
    close() of the file, by anyone) are never answered either.  Returns when
    the connection goes (unmounted: ENODEV).
    """
    told = False
    while True:
        try:
            request = os.read(fd, BUFFER)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return
            if e.errno in (errno.EINTR, errno.ENOENT):
                continue
            raise
        length, opcode, unique, _node, _uid, _gid, _pid, _ext, _pad = IN_HEADER.unpack_from(request)
        if opcode in NO_ANSWER or opcode in never:
            if opcode == READ and not told and on_read is not None:
                told = True
                on_read()
            continue
        body = _answer(opcode, request[IN_HEADER.size:length], size)
        error = 0 if body is not None else -errno.ENOSYS
        body = body or b""
        try:
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body)
        except OSError as e:
            if e.errno != errno.ENOENT:         # the request was interrupted meanwhile
                raise


def serve_in_child(path: str, size: int, never: tuple[int, ...] = ()) -> int:
    """Mount over `path` and serve it (see serve) from a forked child; the child's pid, for stop()."""
    conn = mount(path)
    server = os.fork()
    if server == 0:
        try:
            serve(conn, size, never=never)
        finally:
            os._exit(0)
    os.close(conn)
    return server


def stop(server: int, path: str) -> None:
    """Kill serve_in_child's filesystem, which aborts its connection (every close() waiting on it
    returns, with ECONNABORTED), and unmount it."""
    os.kill(server, signal.SIGKILL)
    os.waitpid(server, 0)
    subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
