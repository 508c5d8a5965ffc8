"""Guest-physical memory: the launcher's RAM, bounds-checked, mapped into Unicorn.

`shared.open_guest_memory` is the entry point; it is not re-exported here so
that the lower layers (cpu) can import the memory types without pulling in
the core's contract module.
"""
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory

__all__ = ["GuestFault", "GuestMemory"]
