"""Messages between the front end, the zygote and the workers: JSON plus descriptors.

Each message is one SOCK_SEQPACKET record, so the kernel keeps the
boundaries and a peer's death is an end of file.  Descriptors travel with
the record that names them (SCM_RIGHTS) and belong to the receiver.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Any

MAX_MESSAGE = 64 * 1024
MAX_FDS = 32


class PeerGone(Exception):
    """The other end closed or died."""


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of SOCK_SEQPACKET sockets (close-on-exec)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:
    """Send one message (and copies of `fds`; the caller keeps its own).  Raises PeerGone."""
    data = json.dumps(message).encode()
    try:
        if fds:
            socket.send_fds(sock, [data], list(fds))
        else:
            sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError) as e:
        raise PeerGone(str(e)) from None


def recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next message and the descriptors that came with it.  Raises PeerGone at end of file."""
    try:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except ConnectionResetError as e:
        raise PeerGone(str(e)) from None
    if not data:
        for fd in fds:
            os.close(fd)
        raise PeerGone("end of file")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise PeerGone("a message was truncated")
    return json.loads(data), fds


def recv_from_worker(sock: socket.socket) -> dict[str, Any]:
    """The next message from a worker, which never sends descriptors.  Raises PeerGone.

    A worker is the launcher's user without privilege; descriptors it attached
    are dropped by the kernel, because we give no room for them (which closes
    nothing of ours: a close() of the worker's choosing could wait for ever),
    and the message is taken for a broken worker's.
    """
    try:
        data, _, flags, _ = sock.recvmsg(MAX_MESSAGE)
    except ConnectionResetError as e:
        raise PeerGone(str(e)) from None
    if not data:
        raise PeerGone("end of file")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise PeerGone("a message was truncated, or came with descriptors")
    return json.loads(data)
