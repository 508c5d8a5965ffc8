"""A worker: one Guest, in a process of its own, served to the front end over two sockets.

The zygote forks it and calls main() with the spawn request and the
descriptors that came with it, in this order:

    run socket, control socket, IRQ line (page, wait end, write end),
    the exit stats block (if "stats"), memory handles...

main() confines the process (confine.py), builds the Guest from the handles
and answers the control socket once: {"ok": true} or {"error": errno,
"message": ...}, the errno INITIALIZE returns.  Then two threads serve:

* the vCPU thread takes {"op": "run"} on the run socket and answers with how
  run() came back: {"exit": "notify"|"dead"|"interrupted", "value": n,
  "death": reason};
* the main thread takes {"op": "eventfd", "value": v} with the launcher's
  eventfd on the control socket, adds it to the Guest's own table so NOTIFY
  to it never leaves this process, and acknowledges it.

IRQs and interrupt requests need no message: they arrive through the IRQ
line's shared page and pipe.  When the control socket ends (the front end
destroys the Guest, or is gone) the worker exits 0 at once.
Anything else that ends it (a signal, an abort inside Unicorn, a Python
error: exit status 70) is what the zygote reports and the launcher reads.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import traceback

from cuse_lguest.core.contract import GuestParams, GuestSetupError
from cuse_lguest.core.guest import LguestGuest
from cuse_lguest.core.irqline import IrqLine
from cuse_lguest.cpu import engine
from cuse_lguest.eventfds import EventfdTable
from cuse_lguest.memory.handles import MemoryHandles
from cuse_lguest.worker import channel, confine

log = logging.getLogger("cuse_lguest.worker")

BROKEN = 70         # exit status when the worker itself failed (a bug, not the Guest)


def main(request: dict, fds: list[int], zygote: int) -> None:
    """The worker's life.  Never returns: the process exits."""
    fds = confine.keep_only(fds)
    run_fd, ctl_fd, *rest = fds
    line_fds, rest = rest[:3], rest[3:]
    stats_fd = rest.pop(0) if request["stats"] else None
    guest_bytes = int(request["pfnlimit"]) * 4096
    confine.limit(confine.address_space_for(int(request["translation_buffer"]), guest_bytes))
    confine.become(confine.Identity(int(request["uid"]), int(request["gid"]),
                                    tuple(int(g) for g in request["groups"])))
    confine.die_with_parent(zygote)
    engine.set_translation_buffer(int(request["translation_buffer"]))
    run_sock = socket.socket(fileno=run_fd)
    ctl_sock = socket.socket(fileno=ctl_fd)
    table = EventfdTable()
    _, memory_fds = channel.recv(ctl_sock)      # from the front end itself (proxy.py says why)
    guest = _build(request, line_fds, stats_fd, memory_fds, ctl_sock, table)
    if guest is None:
        os._exit(0)
    threading.Thread(target=_serve_runs, args=(guest, run_sock), name="lguest-vcpu", daemon=True).start()
    _serve_control(ctl_sock, table)
    # The Guest is over.  Exiting frees everything it held at once (Unicorn,
    # mappings, descriptors, threads); an orderly destroy() first would only
    # make the launcher's last close(), which waits for this exit, slower.
    os._exit(0)


def _build(request: dict, line_fds: list[int], stats_fd: int | None, memory_fds: list[int],
           ctl: socket.socket, table: EventfdTable) -> LguestGuest | None:
    try:
        handles = MemoryHandles.received(request["memory"], memory_fds)
        params = GuestParams(pid=int(request["pid"]), base=int(request["base"]),
                             pfnlimit=int(request["pfnlimit"]), start=int(request["start"]),
                             claim_notify=table.claim, eventfds=table, memory=handles, name=str(request["name"]),
                             stats_fd=stats_fd)
        guest = LguestGuest(params, IrqLine.adopt(line_fds))
    except GuestSetupError as e:
        channel.send(ctl, {"error": e.errno, "message": str(e)})
        return None
    except MemoryError:
        channel.send(ctl, {"error": errno.ENOMEM, "message": "out of memory building the Guest"})
        return None
    channel.send(ctl, {"ok": True, "pid": os.getpid()})
    return guest


def _serve_runs(guest: LguestGuest, sock: socket.socket) -> None:
    try:
        while True:
            msg, fds = channel.recv(sock)
            for fd in fds:
                os.close(fd)
            if msg.get("op") != "run":
                continue
            how, value = guest.run()
            channel.send(sock, {"exit": how.value, "value": value, "death": guest.death})
    except channel.PeerGone:
        return
    except BaseException:
        traceback.print_exc()
        os._exit(BROKEN)


def _serve_control(sock: socket.socket, table: EventfdTable) -> None:
    while True:
        try:
            msg, fds = channel.recv(sock)
        except channel.PeerGone:
            return
        if msg.get("op") == "eventfd" and len(fds) == 1:
            table.register(int(msg["value"]), fds[0])
            channel.send(sock, {"ok": True})
        else:
            for fd in fds:
                os.close(fd)
