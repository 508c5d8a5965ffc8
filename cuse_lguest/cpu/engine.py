"""Every Unicorn x86 instance of the process, with a translation buffer of a size we chose.

Unicorn 2.1.4 reserves a 1 GiB buffer for translated code per instance
unless told otherwise.  Under Linux's default overcommit heuristic a single
1 GiB private mapping is refused on a machine with 512 MiB of RAM, and
Unicorn then prints "Could not allocate dynamic translator buffer" and
exits the whole process.  So each instance gets an explicit size, set right
after Uc() and before anything makes Unicorn initialise itself.

A Guest's working set of translated code is small (tinyguest a few hundred
KiB, a Linux 3.x boot a few MiB); when the buffer fills, TCG throws all
translations away and starts over, which costs a re-translation, not
correctness.  `cuse-lguest serve --translation-buffer` sets the size for
every Guest of the service; scratch CPUs that run a handful of instructions
(the layout check, the cpuid probe) use a small one.
"""
from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc

MIB = 1 << 20
DEFAULT_TRANSLATION_BUFFER = 64 * MIB
SCRATCH_TRANSLATION_BUFFER = 4 * MIB
# Bounds Unicorn accepts (a 32-bit size) and that leave room for a real Guest.
MIN_TRANSLATION_BUFFER = 4 * MIB
MAX_TRANSLATION_BUFFER = 1024 * MIB

_guest_buffer = DEFAULT_TRANSLATION_BUFFER


def set_translation_buffer(size: int) -> None:
    """The buffer size of every Guest CPU made from now on in this process (bytes)."""
    global _guest_buffer
    if not MIN_TRANSLATION_BUFFER <= size <= MAX_TRANSLATION_BUFFER:
        raise ValueError(f"translation buffer of {size} bytes: must be "
                         f"{MIN_TRANSLATION_BUFFER // MIB}-{MAX_TRANSLATION_BUFFER // MIB} MiB")
    _guest_buffer = size


def translation_buffer() -> int:
    """The size a Guest CPU gets now (bytes)."""
    return _guest_buffer


def new_x86(*, scratch: bool = False) -> Uc:
    """A 32-bit x86 Unicorn whose translation buffer is bounded (a Guest's, or a small scratch one)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(SCRATCH_TRANSLATION_BUFFER if scratch else _guest_buffer)
    return uc
