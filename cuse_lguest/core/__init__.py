"""The hypervisor core: Guests, their vCPU loop, hypercalls, interrupts, timer."""
from cuse_lguest.core.guest import create_guest

__all__ = ["create_guest"]
