"""The node path served through FUSE: a one-file filesystem mounted over a regular file.

A kernel without CUSE cannot create a character device for us, but FUSE can
mount a filesystem whose root is a regular file (`rootmode=100000`) on any
regular file, and launchers open /dev/lguest by path without looking at its
type.  So the service puts an empty placeholder file at the node path and
mounts its session's /dev/fuse over it.  The mount carries
`default_permissions` (the kernel checks the mode and group our GETATTR
reports, as it checks a device node's) and `allow_other` (others than root
may open it at all), which together give what the udev rule gives a CUSE
node.

A service killed with SIGKILL leaves its mount behind: the connection is
gone, so stat() on the node fails with ENOTCONN.  prepare() recognises such
a stale mount (and only ours, by its filesystem type) and detaches it before
mounting afresh; a live one means another service is serving the node.

Root mounts, unmounts and deletes at a path, so nobody else may be able to
change what that path names: the node's directory, and every directory above
it, must be root's (only_root_can_change).  In a directory a user may write,
a symlink planted at the node name would have us mount over a file of their
choosing, and one swapped in while we serve would have us detach any mount
at shutdown.  The node itself is never followed if it is a symlink.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import pathlib
import re
import stat

from cuse_lguest.cuse.binding import TransportUnavailable
from cuse_lguest.cuse.session import FileAttrs

log = logging.getLogger("cuse_lguest.fuse")

FUSE_DEVICE = pathlib.Path("/dev/fuse")
FSTYPE = "fuse.cuse-lguest"       # "fuse.<subtype>": how mountinfo tells our mounts from others
SOURCE = "cuse-lguest"
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_MAX_STACKED = 16                 # stale mounts detached before giving up

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_at(path: str) -> list[str]:
    """The filesystem types mounted at `path`, bottom first (from /proc/self/mountinfo)."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == path:
                found.append(right.split()[0])
    return found


def node_path(path: str | os.PathLike) -> str:
    """`path` with its directory resolved but not itself: how mountinfo names a mount on it
    (resolving the node would stat it, which fails on a dead mount)."""
    given = pathlib.Path(path)
    return str(pathlib.Path(os.path.realpath(given.parent)) / given.name)


def is_served(path: str | os.PathLike) -> bool:
    """True if a live mount of ours is on `path` (a placeholder alone, or a dead mount, is not)."""
    where = node_path(path)
    try:
        os.stat(where)
    except OSError:
        return False
    return FSTYPE in mounts_at(where)


def only_root_can_change(directory: str) -> str | None:
    """Why a user other than root could change what a name in `directory` (absolute,
    without symlinks) refers to, or None if nobody but root can.

    Each directory from / down is opened without following symlinks and must
    belong to root.  `directory` itself must be writable by root alone; one
    above it may also be sticky and writable by all (/tmp), since others then
    cannot rename or remove the root-owned directory below it.
    """
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        where = "/"
        for name in [p for p in directory.split("/") if p] + [None]:
            st = os.fstat(fd)
            last = name is None
            if st.st_uid != 0:
                return f"{where} belongs to uid {st.st_uid}"
            if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
                return f"{where} is writable by {'everyone' if st.st_mode & 0o002 else 'its group'}"
            if last:
                return None
            try:
                nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                return f"{os.path.join(where, name)} cannot be opened as a directory ({e.strerror})"
            os.close(fd)
            fd, where = nxt, os.path.join(where, name)
    finally:
        os.close(fd)
    return None


def _umount(path: str) -> int:
    """Detach the top mount at `path` (never a symlink's target); 0 or the errno."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH | _UMOUNT_NOFOLLOW) == 0:
        return 0
    return ctypes.get_errno()


class FuseNode:
    """The mount of one FUSE session over the node path `path`."""

    def __init__(self, path: str | os.PathLike, attrs: FileAttrs) -> None:
        self.path = node_path(path)
        self.attrs = attrs
        self.mounted = False

    def _state(self) -> str:
        """'missing', 'stale' (a dead FUSE mount), or the file type ('file', 'chardev', ...);
        a symlink is 'other', never followed."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                return "stale"
            raise TransportUnavailable(f"cannot look at {self.path}: {e.strerror}.") from None
        if stat.S_ISREG(st.st_mode):
            return "file"
        if stat.S_ISCHR(st.st_mode):
            return "chardev"
        return "other"

    def prepare(self) -> None:
        """Detach stale mounts of ours, refuse a live one, leave an empty regular file at the path."""
        why = only_root_can_change(os.path.dirname(self.path))
        if why:
            raise TransportUnavailable(f"{self.path} is in a directory that users other than root can "
                                       f"change ({why}); serve it where only root can write, like /dev.")
        for _ in range(_MAX_STACKED):
            state = self._state()
            ours = FSTYPE in mounts_at(self.path)
            if state == "stale" and ours:
                err = _umount(self.path)
                if err:
                    raise TransportUnavailable(
                        f"cannot detach the stale mount at {self.path}: {os.strerror(err)}.")
                log.warning("detached a stale FUSE mount at %s left by a service that died", self.path)
                continue
            if state == "stale":
                raise TransportUnavailable(f"{self.path} is a dead mount that is not ours; unmount it first.")
            if ours:
                raise TransportUnavailable(f"{self.path} is already served by a running cuse-lguest.")
            break
        else:
            raise TransportUnavailable(f"{self.path} has more than {_MAX_STACKED} stale mounts on it.")
        if state == "missing":
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except OSError as e:
                raise TransportUnavailable(f"cannot create {self.path}: {e.strerror}.") from None
        elif state == "chardev":
            raise TransportUnavailable(f"{self.path} is a character device already (a CUSE or kernel "
                                       "lguest); stop what serves it, or choose another --node.")
        elif state != "file" or os.lstat(self.path).st_size != 0:
            raise TransportUnavailable(f"{self.path} exists and is not an empty regular file; "
                                       "remove it, or choose another --node.")

    def mount(self) -> int:
        """Open /dev/fuse and mount it over the node; returns the session's fd."""
        try:
            fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise TransportUnavailable(f"cannot open {FUSE_DEVICE}: {e.strerror}.") from None
        options = (f"fd={fd},rootmode={stat.S_IFREG:o},user_id=0,group_id=0,"
                   "default_permissions,allow_other")
        if _libc.mount(SOURCE.encode(), os.fsencode(self.path), FSTYPE.encode(),
                       _MS_NOSUID | _MS_NODEV, options.encode()) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise TransportUnavailable(f"cannot mount FUSE over {self.path}: {os.strerror(err)}.")
        self.mounted = True
        return fd

    def remove(self) -> None:
        """Detach our mount and delete the placeholder.  Open files keep working until closed."""
        if self.mounted:
            err = _umount(self.path)
            if err not in (0, errno.EINVAL, errno.ENOENT):
                log.warning("cannot detach the FUSE mount at %s: %s", self.path, os.strerror(err))
            self.mounted = False
        try:
            st = os.lstat(self.path)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0 and FSTYPE not in mounts_at(self.path):
                os.unlink(self.path)
        except OSError:
            pass
