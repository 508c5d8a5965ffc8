"""A throwaway VM with a genuine /dev/cuse: Debian's stock kernel under QEMU/TCG.

Hosts whose kernel lacks CUSE (or lacks VT-x) still get the real device
path: the VM shares the host's / read-only over 9p and runs one command as
root, with `cuse` loaded.  Used by `cuse-lguest demo` and the kernel test
tier.  About 4 s from start to the command running.
"""
from .runner import DEFAULT_CACHE, VMOptions, VMResult, run

__all__ = ["DEFAULT_CACHE", "VMOptions", "VMResult", "run"]
