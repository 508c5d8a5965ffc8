"""The front end's Guest for a Guest that runs in a worker, and the factory that makes them.

WorkerGuest is a contract.Guest like the core's LguestGuest, so the device
cannot tell them apart.  What crosses the process boundary, and how:

* run(): one message each way on the run socket, from the reading thread;
* irq() and interrupt(): the IRQ line's shared page and a kick (no message),
  and the line itself is what the transport's C fast path injects into, so
  a hot LHREQ_IRQ costs what it costs in-process;
* eventfd_added(): the launcher's eventfd goes to the worker (SCM_RIGHTS),
  so a NOTIFY to it is signalled there and never reaches this process;
* death: what run() reported, or, when the worker itself ended, how it
  ended, in words ("guest process killed by SIGBUS").  A dead worker is only
  a dead Guest: the launcher reads ENOENT, then that reason.

destroy() closes the sockets (the worker then exits) and hands the worker
to the zygote's reaper, which SIGKILLs it through its pidfd if it has not
gone within two seconds.  destroy() does not wait for that: CUSE makes the
launcher's last close() wait for the release.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import threading

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestParams, GuestSetupError, RunExit
from cuse_lguest.core.irqline import IrqLine
from cuse_lguest.cpu import engine
from cuse_lguest.worker import channel
from cuse_lguest.worker.confine import Identity
from cuse_lguest.worker.zygote import Zygote, ZygoteGone

log = logging.getLogger("cuse_lguest.worker")

REAP_WAIT = 5.0          # seconds to wait for the zygote's word that a dead worker was reaped
# Seconds LHREQ_EVENTFD waits for the worker to take its copy of the eventfd.  The
# launcher may SIGSTOP its own worker (same uid), and the wait holds a libfuse worker
# thread: it must end.  A worker that let it end in vain is never waited for again.
ACK_WAIT = 5.0


def describe_end(status: int | None) -> str:
    """A worker's wait status as the launcher reads it."""
    if status is None:
        return "guest process lost"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"guest process killed by {name}"
    return f"guest process exited with status {os.waitstatus_to_exitcode(status)}"


class WorkerGuest:
    """contract.Guest for a Guest in a worker process."""

    def __init__(self, zygote: Zygote, params: GuestParams) -> None:
        self.name = params.name
        self._zygote = zygote
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._destroyed = False
        self._death: str | int | None = None
        self._reaped = False
        self._ctl_stalled = False     # the worker once failed to answer within ACK_WAIT
        try:
            who = Identity.of_process(params.pid)
        except (ProcessLookupError, KeyError, ValueError):
            raise GuestSetupError(errno.ESRCH, f"cannot read who {params.name} is") from None
        self.irq_line = IrqLine.create()
        self._run, run_theirs = channel.pair()
        self._ctl, ctl_theirs = channel.pair()
        handed = self.irq_line.hand_over()
        memory = params.memory
        request = {"uid": who.uid, "gid": who.gid, "groups": list(who.groups), "pid": params.pid,
                   "base": params.base, "pfnlimit": params.pfnlimit, "start": params.start,
                   "name": params.name, "translation_buffer": engine.translation_buffer(),
                   "memory": memory.description(), "stats": params.stats_fd is not None}
        stats = [] if params.stats_fd is None else [params.stats_fd]
        try:
            self.pid, self._pidfd = zygote.spawn(request, [run_theirs.fileno(), ctl_theirs.fileno(),
                                                           *handed, *stats])
            # The launcher's memory goes straight to its worker, never through the zygote:
            # closing a copy of a file can wait for ever (a member's own FUSE file never
            # answers FLUSH), and the zygote serves every launch.
            channel.send(self._ctl, {"op": "memory"}, memory.fds())
        except (ZygoteGone, channel.PeerGone) as e:
            self._close_ends()
            self.irq_line.close()
            raise GuestSetupError(errno.EAGAIN, f"no worker process: {e}") from None
        finally:
            run_theirs.close()
            ctl_theirs.close()
            for fd in handed:
                os.close(fd)
            memory.close()        # the worker holds the launcher's memory now; we keep nothing of it
        try:
            reply = channel.recv_from_worker(self._ctl)
        except channel.PeerGone:
            reply = {"error": errno.ENOMEM, "message": describe_end(self._wait_exit(REAP_WAIT))}
        if "error" in reply:
            self._close_ends()
            self.irq_line.close()
            raise GuestSetupError(int(reply["error"]), str(reply["message"]))
        zygote.watch(self.pid, self._ended)
        log.info("guest %s runs in worker %d as uid %d gid %d", self.name, self.pid, who.uid, who.gid)

    # ---- contract.Guest ---------------------------------------------------------
    @property
    def death(self) -> str | int | None:
        return self._death

    def run(self) -> tuple[RunExit, int]:
        with self._run_lock:
            if self._death is not None or self._destroyed:
                return RunExit.DEAD, 0
            try:
                channel.send(self._run, {"op": "run"})
                reply = channel.recv_from_worker(self._run)
            except (channel.PeerGone, OSError):
                if not self._destroyed:
                    self._ended(self._wait_exit(REAP_WAIT))
                return RunExit.DEAD, 0
            how = RunExit(reply["exit"])
            if how is RunExit.DEAD:
                self._die(reply["death"])
            return how, int(reply["value"])

    def irq(self, irq: int) -> None:
        if not 0 <= irq < abi.LGUEST_IRQS:
            raise ValueError(f"irq {irq} out of range")
        with self._lock:
            if not self._destroyed:
                self.irq_line.raise_irqs(1 << irq, from_launcher=True)

    def interrupt(self) -> None:
        with self._lock:
            if not self._destroyed:
                self.irq_line.request_interrupt()

    def eventfd_added(self, value: int, fd: int) -> None:
        """LHREQ_EVENTFD: the worker gets its own copy, and has registered it when this returns."""
        with self._lock:
            if self._destroyed or self._death is not None:
                return
            try:
                channel.send(self._ctl, {"op": "eventfd", "value": value}, [fd])
                if self._ctl_stalled:
                    return
                if select.select([self._ctl], [], [], ACK_WAIT)[0]:
                    channel.recv_from_worker(self._ctl)
                else:
                    self._ctl_stalled = True
                    log.warning("guest %s: worker %d did not take an eventfd within %.0f s (stopped?); "
                                "its eventfds are no longer waited for", self.name, self.pid, ACK_WAIT)
            except (channel.PeerGone, OSError):
                pass          # the worker is gone: its death reaches the launcher's next read

    def destroy(self) -> None:
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            self.irq_line.retire()
            self.irq_line.request_interrupt()
            for sock in (self._run, self._ctl):
                try:
                    sock.shutdown(2)          # the worker's end of file, and ours for a read in flight
                except OSError:
                    pass
        with self._run_lock:
            self._close_ends()
        with self._lock:
            self.irq_line.close()

    # ---- the worker's end -------------------------------------------------------
    def _ended(self, status: int | None) -> None:
        """The zygote reaped the worker (listener thread), or a run found it gone."""
        if not self._destroyed:
            reason = describe_end(status)
            log.warning("guest %s: worker %d ended: %s", self.name, self.pid, reason)
            self._die(reason)

    def _die(self, death: str | int) -> None:
        with self._lock:
            if self._death is None:
                self._death = death
            if not self._destroyed:
                self.irq_line.retire()

    def _wait_exit(self, timeout: float) -> int | None:
        status = self._zygote.wait_exit(self.pid, timeout)
        self._reaped = self._reaped or status is not None
        return status

    def _close_ends(self) -> None:
        """The sockets (the worker's end of file: it exits), and the worker handed to the reaper."""
        for sock in (self._run, self._ctl):
            sock.close()
        pidfd, self._pidfd = getattr(self, "_pidfd", -1), -1
        if pidfd < 0:
            return
        if self._reaped:
            os.close(pidfd)
        else:
            self._zygote.retire(self.pid, pidfd)


class WorkerFactory:
    """contract.GuestFactory: every Guest in a worker forked from one zygote, started now."""

    def __init__(self) -> None:
        self.zygote = Zygote()

    def __call__(self, params: GuestParams) -> WorkerGuest:
        if params.memory is None:
            raise GuestSetupError(errno.EFAULT, "a worker needs the launcher's memory handles")
        return WorkerGuest(self.zygote, params)

    def close(self) -> None:
        self.zygote.close()
