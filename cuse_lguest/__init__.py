"""cuse-lguest: the 3.x `/dev/lguest` host, served from userspace through CUSE.

Layers, top to bottom (each talks only to the one below):

    cuse_lguest.cuse     libfuse3's CUSE low-level API through cffi
    cuse_lguest.device   the seed's per-open-file semantics (lguest_user.c)
    cuse_lguest.core     the hypervisor: Guest, VCpu, hypercalls, interrupts
    cuse_lguest.cpu      Unicorn: registers, switcher region, traps
    cuse_lguest.memory   guest-physical memory borrowed from the launcher
"""
__version__ = "0.1.0"
