"""Making sure /dev/NAME is there to open once the kernel registered it.

On an ordinary host the kernel's devtmpfs grows the node as soon as CUSE_INIT
is answered, and udev gives it the rule's mode and group.  In a privileged
container (Docker or Podman `--privileged`) /dev is a tmpfs the runtime
filled with copies of the host's nodes at start: the kernel's new node
appears in the host's devtmpfs, never here, so a launcher in the container
would find nothing.  The service then creates the node itself, with the
major and minor the kernel gave the device (sysfs) and the mode and group of
the udev rule, and removes it when it exits.  It does so only where /dev is
not devtmpfs and the node did not appear by itself within a short time:
on a real host, creating or removing nodes in devtmpfs is the kernel's job.
"""
from __future__ import annotations

import grp
import logging
import os
import pathlib
import stat
import time

from cuse_lguest import udev

log = logging.getLogger(__name__)

# How long a node may take to appear by itself where /dev is not devtmpfs
# (a runtime or a helper that mirrors host devices) before we create it.
APPEAR_WAIT = 1.0
DEV_DIR = pathlib.Path("/dev")
CUSE_CLASS = pathlib.Path("/sys/class/cuse")
MOUNTINFO = pathlib.Path("/proc/self/mountinfo")


def fs_type(mount_point: pathlib.Path, mountinfo: pathlib.Path = MOUNTINFO) -> str | None:
    """The file system type mounted at `mount_point` (the topmost mount), or None."""
    found = None
    for line in mountinfo.read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        words = fields.split()
        if len(words) >= 5 and words[4] == str(mount_point) and rest:
            found = rest.split()[0]
    return found


class Node:
    """The node /dev/NAME for the device the kernel registered as NAME."""

    def __init__(self, name: str, *, dev_dir: pathlib.Path = DEV_DIR,
                 cuse_class: pathlib.Path = CUSE_CLASS, mountinfo: pathlib.Path = MOUNTINFO,
                 rules_dir: pathlib.Path = udev.RULES_DIR) -> None:
        self.path = dev_dir / name
        # sysfs spells a '/' in a device name as '!'.
        self._sysfs_dev = cuse_class / name.replace("/", "!") / "dev"
        self.devtmpfs = fs_type(dev_dir, mountinfo) == "devtmpfs"
        self._rules_dir = rules_dir
        self._since: float | None = None
        self._created: int | None = None   # st_rdev of the node we made, if we made one

    @property
    def created(self) -> bool:
        return self._created is not None

    def kernel_rdev(self) -> int | None:
        """The device number the kernel gave NAME, from sysfs ("MAJOR:MINOR")."""
        try:
            major, minor = self._sysfs_dev.read_text().strip().split(":")
            return os.makedev(int(major), int(minor))
        except (OSError, ValueError):
            return None

    def _rdev_at_path(self) -> int | None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        return st.st_rdev if stat.S_ISCHR(st.st_mode) else -1

    def usable(self) -> bool:
        """The path is a character node of the device the kernel registered."""
        rdev = self.kernel_rdev()
        return rdev is not None and self._rdev_at_path() == rdev

    def poll(self, now: float | None = None) -> bool:
        """Called after CUSE_INIT was answered, repeatedly: True once the node is usable.

        Where /dev is not devtmpfs and the node has not appeared within
        APPEAR_WAIT, it is created here.
        """
        now = time.monotonic() if now is None else now
        if self._since is None:
            self._since = now
        if self.usable():
            return True
        if self.devtmpfs or now - self._since < APPEAR_WAIT or self.kernel_rdev() is None:
            return False
        self._create()
        return self.usable()

    def _create(self) -> None:
        rdev = self.kernel_rdev()
        assert rdev is not None
        group, mode = udev.permissions(self.path.name, self._rules_dir)
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("group %r of the udev rule does not exist here; %s stays root-only", group, self.path)
            gid, mode = 0, 0o600
        if self._rdev_at_path() is not None:
            # A node left by a service that was killed: the kernel may have
            # given this registration another minor, so it is stale.
            os.unlink(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0)
        try:
            os.mknod(self.path, stat.S_IFCHR | 0o600, rdev)
        finally:
            os.umask(old)
        os.chown(self.path, 0, gid)
        os.chmod(self.path, mode)
        self._created = rdev
        log.info("%s is not devtmpfs, so the kernel's node is not visible here: created %s "
                 "(%d:%d, mode %o, group %s)", self.path.parent, self.path, os.major(rdev),
                 os.minor(rdev), mode, group if gid else "root")

    def remove(self) -> None:
        """Remove the node if this process created it and it is still that node."""
        if self._created is not None and self._rdev_at_path() == self._created:
            os.unlink(self.path)
            log.info("removed %s", self.path)
        self._created = None
