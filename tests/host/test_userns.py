"""A caller in a user namespace is charged to the user who made it (userns.py).

The launcher here is a real process in a real user namespace: made by an
ordinary user (uid 1234), with subordinate ids mapped into it the way
newuidmap would map a user's /etc/subuid range, and then running as one of
them (kernel uid 100005).  The service must charge 1234, not 100005.
"""
from __future__ import annotations

import errno
import os
import subprocess

import psutil
import pytest

from cuse_lguest.device import Device
from cuse_lguest.limits import Limits
from cuse_lguest.testing.standin import PYTHON
from cuse_lguest.userns import payer

OWNER = 1234
SUBORDINATE = 100000
INSIDE = 5

# Unshares a user namespace, waits for its maps, becomes uid INSIDE there, then waits to be looked at.
_CHILD = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:                   # CLONE_NEWUSER
    print("unshare", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
print("unshared", flush=True)
sys.stdin.readline()
os.setgid({INSIDE})
os.setuid({INSIDE})
print("inside", flush=True)
sys.stdin.readline()
"""


def _in_namespace(owner: int):
    """A process running as subordinate uid INSIDE of a namespace `owner` made (its pid)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: to be user OWNER, and to map subordinate ids as newuidmap does")
    become = ["setpriv", f"--reuid={owner}", f"--regid={owner}", "--clear-groups"] if owner else []
    child = subprocess.Popen(become + [PYTHON, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd="/")
    try:
        said = child.stdout.readline().strip()
        if said != "unshared":
            pytest.skip(f"this machine does not let a user make a user namespace: {said}")
        for name, line in (("uid_map", f"0 {SUBORDINATE} 65536\n"), ("setgroups", "deny\n"),
                           ("gid_map", f"0 {SUBORDINATE} 65536\n")):
            with open(f"/proc/{child.pid}/{name}", "w") as f:
                f.write(line)
        child.stdin.write("mapped\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "inside"
        yield child.pid
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def subordinate():
    """A process running as subordinate uid INSIDE of a namespace OWNER made."""
    yield from _in_namespace(OWNER)


@pytest.fixture
def container():
    """The same in a namespace root made, as LXC or Docker's --userns-remap make one per container."""
    yield from _in_namespace(0)


def test_the_kernel_uid_is_subordinate_and_the_owner_pays(subordinate):
    assert psutil.Process(subordinate).uids().real == SUBORDINATE + INSIDE
    assert payer(subordinate, SUBORDINATE + INSIDE) == OWNER


def test_in_a_namespace_root_made_the_callers_own_uid_pays(container):
    """Root chose that container's uid range: its uids are not all root's, nor one share between them."""
    assert psutil.Process(container).uids().real == SUBORDINATE + INSIDE
    assert payer(container, SUBORDINATE + INSIDE) == SUBORDINATE + INSIDE


def test_a_caller_in_the_services_namespace_pays_itself():
    assert payer(os.getpid(), 4321) == 4321


def test_a_gone_caller_pays_what_its_request_said():
    assert payer(2 ** 22 + 1, 4321) == 4321          # above pid_max's default: no such task


def test_subordinate_uids_share_their_owners_open_files(subordinate):
    """Through the device: the owner's share is used up, so its subordinate uid gets EMFILE."""
    dev = Device(lambda params: None, limits=Limits(files_per_user=1))
    mine = dev.open(OWNER, pid=os.getpid())
    assert mine > 0
    assert dev.open(SUBORDINATE + INSIDE, pid=subordinate) == -errno.EMFILE
    dev.release(mine)
    theirs = dev.open(SUBORDINATE + INSIDE, pid=subordinate)
    assert theirs > 0
    assert dev.accounts.files.held(OWNER) == 1
    dev.release(theirs)
