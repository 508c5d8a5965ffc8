"""/dev/lguest as the kernel presents it: errno and offset conformance, and permissions."""
from __future__ import annotations

import pytest

from cuse_lguest import udev

pytestmark = pytest.mark.vm

# Spec §1.9, asked through the kernel by a 64-bit client.
EXPECTED_ERRNO = {
    "irq_before_initialize": "EINVAL",
    "initialize": "OK",
    "second_initialize": "EBUSY",
    "irq_32": "EINVAL",
    "irq_31": "OK",
    "eventfd_closed_fd": "EBADF",
    "eventfd_not_an_eventfd": "EINVAL",
    "unknown_request": "EINVAL",
    "read_from_other_thread": "EPERM",
}


@pytest.mark.kernel_scenario("errno")
@pytest.mark.parametrize("case", sorted(EXPECTED_ERRNO))
def test_errno_through_the_kernel(scenario, case):
    assert scenario.facts.get(case) == EXPECTED_ERRNO[case], scenario.explain()


@pytest.mark.transports("fuse")
@pytest.mark.kernel_scenario("offsets")
def test_offset_reaches_the_device(scenario):
    """The offset names the vCPU.  CUSE always sends 0 (so a read "at offset 1" would run
    the Guest there); FUSE sends the caller's, so offset 1 gets the seed's EINVAL, while a
    plain write() after INITIALIZE, which moved the file position to 24, still names
    vCPU 0 (cuse/positions.py)."""
    f = scenario.facts
    assert f["initialize"] == "OK" and f["position_after_initialize"] == "24", scenario.explain()
    assert f["pwrite_irq_offset_1"] == "EINVAL" and f["pread_offset_1"] == "EINVAL", scenario.explain()
    for case in ("write_irq", "pwrite_irq_offset_0", "write_irq_again"):
        assert f[case] == "OK", scenario.explain()


@pytest.mark.kernel_scenario("non-root-open")
def test_node_permissions_as_the_service_leaves_them(scenario):
    """CUSE: root-only until the udev rule runs.  FUSE: the service sets the rule's mode and group."""
    f = scenario.facts
    assert f["node"]["uid"] == 0 and f["nobody"]["open"] == "EACCES", scenario.explain()
    if scenario.transport == "cuse":
        assert f["node"]["mode"] == "0o600", scenario.explain()
    else:
        assert f["node"]["mode"] == oct(int(udev.DEFAULT_MODE, 8)), scenario.explain()
        assert f["node"]["group"] == udev.DEFAULT_GROUP, scenario.explain()
        assert f["member"]["open"] == "OK", scenario.explain()


@pytest.mark.transports("cuse")
@pytest.mark.kernel_scenario("udev")
def test_udev_rule_lets_the_group_in(scenario):
    f = scenario.facts
    assert f["install_rc"] == 0, scenario.explain()
    assert f["node"]["group"] == f["expected_group"], scenario.explain()
    assert f["node"]["mode"] == f["expected_mode"], scenario.explain()
    assert f["member"]["open"] == "OK", scenario.explain()
    assert f["non_member"]["open"] == "EACCES", scenario.explain()
