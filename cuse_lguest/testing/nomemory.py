"""No memory handles at all, for Guest doubles that never touch guest memory.

Device takes the launcher's memory handles at INITIALIZE before it builds the
Guest (memory/handles.py); a test double behind a fake INITIALIZE has no
memory to take, so it stands this in place of handles.acquire.
"""
from __future__ import annotations


def no_memory(pid: int, base: int, pfnlimit: int, *, caller: tuple[int, int] | None = None) -> None:
    """contract.MemorySource that takes nothing: GuestParams.memory is None."""
    return None
