"""Who pays for a request: a caller inside a user namespace is charged to the user who made it.

The caps in limits.py are per uid, and the uid a request carries is the
caller's uid as the service's user namespace sees it.  A user who may
create user namespaces (most distributions allow it) and has subordinate
ids (/etc/subuid) can run launchers as 65536 different uids, each with a
fresh share of every cap.  The kernel's /dev/lguest never had this problem:
it charged the caller's own rlimits and memory cgroup, which a namespace
does not multiply.

So a caller whose user namespace is not the service's is charged to the
owner of the outermost namespace below the service's: the uid that created
it, as the service sees that uid.  Root is the exception.  Namespaces root
makes (LXC, Docker's --userns-remap, systemd-nspawn -U) hand each container
its own range of uids, and root chose those ranges: charging them all to
uid 0 would let one container take the share of every other container and
of root's own launchers.  So an owner that is root pays for nobody: the
outermost owner that is not root pays, and where every owner is root the
caller's own uid does, as it did before namespaces counted.  The kernel tells us, for the price of a
few ioctls on /proc/<pid>/ns/user (ioctl_ns(2)): NS_GET_OWNER_UID gives a
namespace's owner, NS_GET_PARENT the namespace it was created in.
"""
from __future__ import annotations

import fcntl
import os
import sys

_NSIO = 0xB7
NS_GET_PARENT = (_NSIO << 8) | 0x2
NS_GET_OWNER_UID = (_NSIO << 8) | 0x4


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def payer(pid: int, uid: int) -> int:
    """The uid to charge for a request by task `pid` whose uid (as the service sees it) is `uid`.

    `uid` itself when the task shares the service's user namespace, when
    its namespace cannot be read (the task is gone: nothing is charged for
    long, as its request ends with it), or when root made every namespace
    between it and the service.  Otherwise the owner of the outermost of
    those namespaces that root did not make.
    """
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return uid
    own = os.stat("/proc/self/ns/user")
    charged = uid
    try:
        while not _same(os.fstat(fd), own):
            owner = bytearray(4)
            fcntl.ioctl(fd, NS_GET_OWNER_UID, owner)
            if owner_uid := int.from_bytes(owner, sys.byteorder):
                charged = owner_uid
            parent = fcntl.ioctl(fd, NS_GET_PARENT)
            os.close(fd)
            fd = parent
    except OSError:
        # EPERM: the parent is outside the service's namespace (a service in a
        # container, a caller beside it): the last owner we could see pays.
        pass
    finally:
        os.close(fd)
    return charged
