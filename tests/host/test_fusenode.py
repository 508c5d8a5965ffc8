"""The FUSE node path: root mounts, unmounts and deletes there, so no other user may steer it.

These run as root (the service does) with a real unprivileged user, `nobody`,
planting what an attacker could; nothing here mounts, because every refusal
comes before the mount.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile

import pytest

from cuse_lguest.cuse.binding import TransportUnavailable
from cuse_lguest.cuse.fusenode import FuseNode, mounts_at, only_root_can_change
from cuse_lguest.cuse.session import FileAttrs

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the service's view, and chown to nobody")

ATTRS = FileAttrs(mode=0o660, uid=0, gid=0)


@pytest.fixture
def top():
    """A root-owned 0755 directory under /tmp, as the kernel tier uses."""
    where = pathlib.Path(tempfile.mkdtemp(prefix="cuse-lguest-fusenode-"))
    where.chmod(0o755)
    yield where
    subprocess.run(["rm", "-rf", str(where)], check=False)


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv], check=True)


def test_symlink_planted_in_a_users_directory_is_not_mounted_over(top):
    """A node in a directory nobody owns: nobody's symlink must not make root mount over root's file."""
    users = top / "users"
    users.mkdir()
    os.chown(users, NOBODY, NOBODY)
    victim = top / "victim"
    victim.write_text("")
    as_nobody("ln", "-s", str(victim), str(users / "lguest"))
    node = FuseNode(users / "lguest", ATTRS)
    with pytest.raises(TransportUnavailable, match="belongs to uid 65534"):
        node.prepare()
    assert mounts_at(str(victim)) == []
    assert (users / "lguest").is_symlink()       # nothing of nobody's was touched either


def test_group_writable_directory_is_refused(top):
    shared = top / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(TransportUnavailable, match="writable by its group"):
        FuseNode(shared / "lguest", ATTRS).prepare()
    assert not (shared / "lguest").exists()


def test_a_users_directory_higher_up_is_refused(top):
    """nobody could rename its directory away and put a symlink in its place."""
    users = top / "users"
    (users / "roots").mkdir(parents=True)
    os.chown(users, NOBODY, NOBODY)
    assert "belongs to uid 65534" in only_root_can_change(str(users / "roots"))
    with pytest.raises(TransportUnavailable):
        FuseNode(users / "roots" / "lguest", ATTRS).prepare()


def test_symlink_at_the_node_is_never_followed(top):
    """Even root's own symlink: the node path itself is not followed."""
    target = top / "target"
    target.write_text("")
    (top / "lguest").symlink_to(target)
    with pytest.raises(TransportUnavailable, match="not an empty regular file"):
        FuseNode(top / "lguest", ATTRS).prepare()


def test_root_directory_under_sticky_tmp_is_accepted(top):
    """/tmp is writable by all but sticky: others cannot move root's directory in it."""
    assert only_root_can_change("/dev") is None
    assert only_root_can_change(str(top)) is None
    assert "writable by everyone" in only_root_can_change("/tmp")
    node = FuseNode(top / "lguest", ATTRS)
    node.prepare()
    assert (top / "lguest").is_file() and (top / "lguest").stat().st_size == 0
    node.remove()
    assert not (top / "lguest").exists()
