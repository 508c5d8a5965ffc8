"""The hypervisor core.  `create_guest` is the contract.GuestFactory the device uses."""
from __future__ import annotations

from cuse_lguest.core.contract import GuestParams


def create_guest(params: GuestParams):
    """Build a Guest for one INITIALIZE (raises contract.GuestSetupError).

    The import happens here, not at module level, because the layers below
    (memory, cpu) import `core.contract` for its exception type, and the
    Guest imports those layers in turn.
    """
    from cuse_lguest.core.guest import create_guest as build
    return build(params)
