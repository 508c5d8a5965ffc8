"""The zygote: a process that has already loaded everything a Guest needs, and forks workers.

Importing Unicorn, the core and the cffi modules, checking Unicorn's hidden
CPU layout and probing its cpuid table take a good part of a second.  Doing
that once, in a process started with the service, and forking a worker from
it per INITIALIZE keeps INITIALIZE fast (docs/performance.md, "worker").

The zygote is exec'd fresh (`python -m cuse_lguest.worker.zygote FD`), not
forked from the service, so it inherits no thread, lock or descriptor of the
front end; it is single-threaded, so forking it is safe.  It speaks over one
SOCK_SEQPACKET socket:

* front end -> zygote: {"op": "spawn", ...} with the worker's descriptors;
* zygote -> front end: {"spawned": pid} with a pidfd of the new worker,
  in the order of the spawns; later {"exited": pid, "status": wait status}.

Workers are the zygote's children, so the zygote reaps them (no zombies)
and only it learns how each ended: killed by which signal, or its exit
status.  That is the reason the launcher reads.  With the pidfd it gets per
worker, the front end's reaper thread SIGKILLs a worker that outlives its
Guest by two seconds, with no risk of hitting a reused pid.  When the front
end goes, the socket ends, the zygote exits, and every worker dies with it
(PR_SET_PDEATHSIG, confine.py).
"""
from __future__ import annotations

import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

from cuse_lguest.worker import channel

log = logging.getLogger("cuse_lguest.worker")

EXIT_WAIT = 2.0          # seconds a retired worker gets to exit before SIGKILL
REAP_WAIT = 5.0          # seconds after SIGKILL before we stop expecting its end


class ZygoteGone(Exception):
    """The zygote is not running (it died, or the service is shutting down)."""


class Zygote:
    """The front end's side: start the zygote, spawn workers, hear how they ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()           # one spawn at a time: replies come in order
        self._cond = threading.Condition()
        self._exits: dict[int, int] = {}
        self._watchers: dict[int, Callable[[int], None]] = {}
        self._retired: dict[int, list] = {}     # pid -> [deadline, pidfd, SIGKILL sent]
        self._closed = False
        self._spawned: queue.Queue = queue.Queue()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._start()
        self._reaper = threading.Thread(target=self._reap, name="lguest-reaper", daemon=True)
        self._reaper.start()

    def _start(self) -> None:
        ours, theirs = channel.pair()
        # A session of its own: the service's controlling terminal (root's, when
        # serve runs in one) must not be its workers', or a worker could push
        # keystrokes into root's shell with TIOCSTI through the stderr it keeps.
        self._proc = subprocess.Popen([sys.executable, "-m", "cuse_lguest.worker.zygote", str(theirs.fileno())],
                                      pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        theirs.close()
        self._sock = ours
        threading.Thread(target=self._listen, args=(ours,), name="lguest-zygote", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def spawn(self, request: dict, fds: list[int]) -> tuple[int, int]:
        """Fork a worker given `request` and copies of `fds`.  Returns (pid, pidfd).  Raises ZygoteGone."""
        with self._lock:
            if self._sock is None or self._proc.poll() is not None:
                self._restart()
            try:
                channel.send(self._sock, {"op": "spawn", **request}, fds)
            except (channel.PeerGone, OSError) as e:
                raise ZygoteGone(str(e)) from None
            reply = self._spawned.get()
            if reply is None:
                raise ZygoteGone("the zygote ended")
            return reply

    def _restart(self) -> None:
        """The zygote died (its workers with it): start another, once per spawn that finds it gone."""
        log.error("the worker zygote (pid %d) is gone (%s); starting a new one",
                  self._proc.pid, self._proc.poll())
        self._stop()
        self._spawned = queue.Queue()
        self._start()

    def watch(self, pid: int, on_exit: Callable[[int], None]) -> None:
        """Call on_exit(status) from the listener thread when worker `pid` has been reaped."""
        with self._cond:
            status = self._exits.get(pid)
            if status is None:
                self._watchers[pid] = on_exit
        if status is not None:
            on_exit(status)

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """The wait status of worker `pid` once reaped (and forgotten), or None after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._exits, timeout):
                return None
            self._watchers.pop(pid, None)
            return self._exits.pop(pid)

    def retire(self, pid: int, pidfd: int) -> None:
        """Worker `pid` has lost its Guest and should exit by itself: SIGKILL it if it has not
        within EXIT_WAIT seconds.  Takes `pidfd`.  Returns at once, so that the launcher's last
        close(), which CUSE makes wait for the release, does not wait for the worker too."""
        with self._cond:
            self._retired[pid] = [time.monotonic() + EXIT_WAIT, pidfd, False]
            self._cond.notify_all()

    def _reap(self) -> None:
        """The reaper thread: forget retired workers once the zygote reaped them, SIGKILL laggards."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for pid, entry in list(self._retired.items()):
                    deadline, pidfd, killed = entry
                    if pid in self._exits or (killed and now >= deadline):
                        if pid not in self._exits:
                            log.error("worker %d did not go after SIGKILL", pid)
                        self._exits.pop(pid, None)
                        del self._retired[pid]
                        os.close(pidfd)
                    elif now >= deadline:
                        try:
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        entry[0], entry[2] = now + REAP_WAIT, True
                deadlines = [entry[0] for entry in self._retired.values()]
                self._cond.wait(max(0.0, min(deadlines) - now) if deadlines else None)

    def _listen(self, sock: socket.socket) -> None:
        spawned = self._spawned
        while True:
            try:
                msg, fds = channel.recv(sock)
            except (channel.PeerGone, OSError):
                spawned.put(None)
                return
            if "spawned" in msg:
                spawned.put((msg["spawned"], fds[0]))
            elif "exited" in msg:
                pid, status = msg["exited"], msg["status"]
                with self._cond:
                    self._exits[pid] = status
                    watcher = self._watchers.pop(pid, None)
                    self._cond.notify_all()
                if watcher is not None:
                    watcher(status)

    def close(self) -> None:
        """End the zygote (and with it any worker still running) and the reaper."""
        self._stop()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._reaper.join()
        for _, pidfd, _ in self._retired.values():
            os.close(pidfd)
        self._retired.clear()

    def _stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


# ---------------------------------------------------------------- the zygote process
def _preload() -> None:
    """Everything a worker would otherwise load or compute after INITIALIZE."""
    import cuse_lguest.core.guest  # noqa: F401  (Unicorn, the core, the cffi modules)
    import cuse_lguest.memory.shared  # noqa: F401
    import cuse_lguest.worker.worker  # noqa: F401
    from cuse_lguest.cpu import context, cpuid
    context.layout()
    cpuid.answer(0, 0)


def serve(sock: socket.socket) -> None:
    """Fork a worker per spawn request; report each worker's end.  Returns when the front end goes."""
    from cuse_lguest.worker import worker
    children: dict[int, int] = {}          # pidfd -> pid
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd != sock.fileno():
                pid = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                channel.send(sock, {"exited": pid, "status": status})
                continue
            try:
                msg, fds = channel.recv(sock)
            except channel.PeerGone:
                return
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                try:
                    worker.main(msg, fds, me)
                finally:
                    os._exit(70)
            for f in fds:
                os.close(f)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            poller.register(pidfd, select.POLLIN)
            channel.send(sock, {"spawned": pid}, [pidfd])


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the service's terminal is not ours to obey
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    _preload()
    serve(sock)


if __name__ == "__main__":
    main()
