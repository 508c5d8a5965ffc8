"""Guest-physical memory: the launcher's RAM, bounds-checked, mapped into Unicorn."""
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory
from cuse_lguest.memory.shared import SharedGuestMemory


def open_guest_memory(pid: int, base: int, pfnlimit: int) -> GuestMemory:
    """The launcher's range as a GuestMemory (shared mode; raises GuestSetupError if impossible)."""
    return SharedGuestMemory(pid, base, pfnlimit)


__all__ = ["GuestFault", "GuestMemory", "SharedGuestMemory", "open_guest_memory"]
