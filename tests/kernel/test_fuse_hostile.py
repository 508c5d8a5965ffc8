"""The FUSE node against a hostile member of the device's group, through this host's kernel.

A service of our own (`serve --transport fuse`, in a fresh root-owned
directory) and a client running as `nobody` with the node's group, as any
member of `kvm` could.  No VM: FUSE is in every kernel.
"""
from __future__ import annotations

import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cuse_lguest import children

REPO = pathlib.Path(__file__).resolve().parents[2]
AIO_CLIENT = pathlib.Path(__file__).with_name("aio_client.py")
HOSTILE_CLIENT = pathlib.Path(__file__).with_name("hostile_client.py")
NOBODY = 65534
MOUNT_WAIT_S = 60
STOPPED_FOR_S = 5       # how long io_submit() gets to return while the service is stopped

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="needs root and /dev/fuse: the service mounts FUSE over its node")


@pytest.fixture
def fuse_service():
    """(the service's Popen, its node) for a service serving a node in a fresh directory."""
    from cuse_lguest.cuse.fusenode import is_served, mounts_at
    where = pathlib.Path(tempfile.mkdtemp(prefix="cuse-lguest-hostile-"))
    where.chmod(0o755)                 # the member must reach the node
    node = where / "lguest"
    log = open(where / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "cuse_lguest.cli", "serve", "--transport", "fuse",
                             "--node", str(node), "--stats-dir", "none", "-v"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not is_served(node):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.skip(f"the service could not serve {node} here: {log.read()[-500:]}")
            time.sleep(0.05)
        yield proc, node
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        children.stop(proc, 30)
        while mounts_at(str(node)):
            subprocess.run(["umount", "-l", str(node)], check=False)
        log.close()
        shutil.rmtree(where, ignore_errors=True)


def _as_member(gid: int) -> list[str]:
    # nobody cannot run an interpreter under /root; the system one serves the client.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={gid}", python]


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def test_async_direct_write_is_answered_while_its_caller_waits(fuse_service):
    """An O_DIRECT io_submit() write must hold its thread until we answer.

    The device maps the request's thread id to a process (INITIALIZE takes
    that process's memory, LHREQ_EVENTFD copies its fd).  With FUSE's async
    direct I/O the write was queued, io_submit() returned, and the thread
    could exit and its id be reused by someone else's process before we
    looked.  With the service stopped, the write must stay in io_submit();
    once it runs, it must see the live caller (EFAULT for unmapped memory,
    not ESRCH for a thread that is gone).  The service must also live
    through being stopped and continued.
    """
    proc, node = fuse_service
    client = subprocess.Popen([*_as_member(node.stat().st_gid), str(AIO_CLIENT), str(node)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    grown = client.stdout.readline()
    assert grown.startswith("grown"), grown + client.communicate(timeout=60)[0]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        client.stdin.write("go\n")
        client.stdin.flush()
        ready, _, _ = select.select([client.stdout], [], [], STOPPED_FOR_S)
        early = client.stdout.readline() if ready else ""
        if early.startswith("submitted"):
            # Let the submitting thread finish exiting before the service looks.
            deadline = time.monotonic() + STOPPED_FOR_S
            while _threads(client.pid) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    rest, _ = client.communicate(timeout=60)
    assert early == "", f"io_submit returned while the service was stopped: {early!r}"
    assert "result EFAULT" in rest, rest
    assert proc.poll() is None, "the service died of a SIGSTOP/SIGCONT"


def test_an_eventfd_whose_close_never_ends_holds_no_thread_of_the_service(fuse_service):
    """LHREQ_EVENTFD with an fd on the member's own FUSE file, whose FLUSH is never answered, from
    24 threads: each is refused (EINVAL), and another guest still starts and takes its IRQs.  Before,
    the service closed its copy of that fd on the thread serving the write, which then waited for
    ever, and 16 such writes held every thread of the service."""
    proc, node = fuse_service
    done = subprocess.run([*_as_member(node.stat().st_gid), str(HOSTILE_CLIENT), "unflushed-eventfd"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, LGUEST_DEVICE=str(node)))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    out = json.loads(lines[-1])
    assert out["initialize"] == "OK", out
    assert set(out["eventfd"]) == {"EINVAL"}, out
    assert out["second"]["initialize"] == "OK" and out["second"]["irq"] == ["OK"] * 3, out
    assert proc.poll() is None, "the service died"
