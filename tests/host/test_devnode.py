"""cuse_lguest.node: when the service makes /dev/NAME itself, and how.

A temporary directory plays /dev, another sysfs' /sys/class/cuse, and a
written mountinfo says what is mounted on the fake /dev.  The "kernel's"
device number is /dev/null's, so the nodes made here are harmless.
"""
from __future__ import annotations

import grp
import os
import stat

import pytest

from cuse_lguest import node as node_mod
from cuse_lguest.node import Node

NULL = os.stat("/dev/null").st_rdev
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


@pytest.fixture
def world(tmp_path):
    dev, cls, rules = tmp_path / "dev", tmp_path / "class", tmp_path / "rules"
    dev.mkdir()
    rules.mkdir()
    (cls / "lguest").mkdir(parents=True)
    (cls / "lguest" / "dev").write_text(f"{os.major(NULL)}:{os.minor(NULL)}\n")

    def make(fstype: str) -> Node:
        mountinfo = tmp_path / "mountinfo"
        mountinfo.write_text(f"30 1 0:5 / {dev} rw,nosuid - {fstype} {fstype} rw\n")
        return Node("lguest", dev_dir=dev, cuse_class=cls, mountinfo=mountinfo, rules_dir=rules)
    return make, dev, rules


def test_where_dev_is_devtmpfs_the_node_is_the_kernels_business(world):
    make, dev, _ = world
    n = make("devtmpfs")
    assert n.devtmpfs
    assert not n.poll(now=0.0) and not n.poll(now=60.0)
    assert not (dev / "lguest").exists()


@needs_root
def test_where_dev_is_a_tmpfs_the_node_is_made_after_a_short_wait_and_removed(world):
    make, dev, rules = world
    group = grp.getgrgid(os.getgid()).gr_name
    (rules / "99-lguest.rules").write_text(f'SUBSYSTEM=="cuse", KERNEL=="lguest", MODE="0640", GROUP="{group}"\n')
    n = make("tmpfs")
    assert not n.devtmpfs
    assert not n.poll(now=0.0) and not (dev / "lguest").exists()
    assert n.poll(now=node_mod.APPEAR_WAIT + 0.1)
    st = os.stat(dev / "lguest")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == os.getgid() and st.st_uid == 0
    n.remove()
    assert not (dev / "lguest").exists()


@needs_root
def test_a_stale_node_from_a_killed_service_is_replaced(world):
    make, dev, _ = world
    os.mknod(dev / "lguest", stat.S_IFCHR | 0o600, os.makedev(10, 250))
    n = make("tmpfs")
    n.poll(now=0.0)
    assert n.poll(now=node_mod.APPEAR_WAIT + 0.1)
    assert os.stat(dev / "lguest").st_rdev == NULL


@needs_root
def test_a_node_that_appears_by_itself_is_used_and_left_alone(world):
    make, dev, _ = world
    n = make("tmpfs")
    os.mknod(dev / "lguest", stat.S_IFCHR | 0o600, NULL)
    assert n.poll(now=0.0) and not n.created
    n.remove()
    assert (dev / "lguest").exists()


def test_no_node_without_a_registered_device(world, tmp_path):
    make, dev, _ = world
    (tmp_path / "class" / "lguest" / "dev").unlink()
    n = make("tmpfs")
    assert not n.poll(now=0.0) and not n.poll(now=60.0)
    assert not (dev / "lguest").exists()
