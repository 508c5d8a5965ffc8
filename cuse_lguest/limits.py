"""How much of the service one user, and everyone together, may hold.

The kernel's /dev/lguest charged each open file and each Guest to the
process that made it, so RLIMIT_NOFILE, the memory cgroup and the OOM killer
kept one user from starving the others.  A service in userspace gets none of
that for free: every open file, Guest, eventfd and mirror copy is the
service's own.  So it counts them, per user (the uid the request carries)
and in total, and answers with the errno a launcher already understands:

* an open file over the caps is what open(2) says when a table is full:
  EMFILE for the caller's share, ENFILE for the service's;
* a Guest, an eventfd entry or a mirror copy over its cap is the seed's
  allocation failure at INITIALIZE or LHREQ_EVENTFD: ENOMEM.

Each cap is a `serve` option; the defaults are in docs/operations.md.
"""
from __future__ import annotations

import errno
import threading
from dataclasses import dataclass


def _half_of_ram() -> int:
    """Half the machine's memory, in bytes (the default budget for mirror copies)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 1 << 30


@dataclass(frozen=True)
class Limits:
    """The caps.  Every one applies to root's launchers too: the service cannot tell them apart."""
    files_per_user: int = 64
    files: int = 1024
    guests_per_user: int = 16
    guests: int = 128
    eventfds_per_guest: int = 64
    mirror_bytes: int = -1          # all mirror copies together; -1: half the machine's memory

    def mirror_budget(self) -> int:
        return _half_of_ram() if self.mirror_bytes < 0 else self.mirror_bytes


class Ledger:
    """One kind of resource, counted per uid and in total under two caps."""

    def __init__(self, per_user: int | None, total: int, *, user_errno: int, total_errno: int) -> None:
        self.per_user = per_user
        self.total = total
        self._user_errno = user_errno
        self._total_errno = total_errno
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        self._sum = 0

    def take(self, uid: int, amount: int = 1) -> int:
        """Charge `amount` to `uid`: 0, or the errno (positive) of the cap it would break."""
        with self._lock:
            mine = self._held.get(uid, 0)
            if self.per_user is not None and mine + amount > self.per_user:
                return self._user_errno
            if self._sum + amount > self.total:
                return self._total_errno
            self._held[uid] = mine + amount
            self._sum += amount
            return 0

    def give(self, uid: int, amount: int = 1) -> None:
        """Return what take() charged."""
        with self._lock:
            left = self._held.get(uid, 0) - amount
            if left > 0:
                self._held[uid] = left
            else:
                self._held.pop(uid, None)
            self._sum -= amount

    def held(self, uid: int | None = None) -> int:
        with self._lock:
            return self._sum if uid is None else self._held.get(uid, 0)


class Accounts:
    """The service's ledgers, built from one Limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.files = Ledger(limits.files_per_user, limits.files, user_errno=errno.EMFILE, total_errno=errno.ENFILE)
        self.guests = Ledger(limits.guests_per_user, limits.guests, user_errno=errno.ENOMEM,
                             total_errno=errno.ENOMEM)
        self.mirror = Ledger(None, limits.mirror_budget(), user_errno=errno.ENOMEM, total_errno=errno.ENOMEM)
