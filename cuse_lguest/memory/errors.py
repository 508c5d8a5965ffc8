"""The one exception a misbehaving Guest can cause inside the host.

lguest never lets a Guest crash its host: whatever the Guest does wrong, the
host writes down a reason and kills it.  Every layer (memory, cpu, core)
raises GuestFault with the seed's exact reason text; the core catches it at
the edge of each exit and turns it into the Guest's death.
"""
from __future__ import annotations


class GuestFault(Exception):
    """The Guest must die; `reason` is the text the launcher will read back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
