"""/dev/lguest as the kernel presents it: errno conformance and permissions."""
from __future__ import annotations

import pytest

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


@pytest.mark.kernel_scenario("non-root-open")
def test_node_is_root_only_by_default(scenario):
    f = scenario.facts
    assert f["node"]["mode"] == "0o600" and f["node"]["uid"] == 0, scenario.explain()
    assert f["nobody"]["open"] == "EACCES", scenario.explain()


@pytest.mark.kernel_scenario("udev")
def test_udev_rule_lets_the_group_in(scenario):
    f = scenario.facts
    assert f["install_rc"] == 0, scenario.explain()
    assert f["node"]["group"] == f["expected_group"], scenario.explain()
    assert f["node"]["mode"] == f["expected_mode"], scenario.explain()
    assert f["member"]["open"] == "OK", scenario.explain()
    assert f["non_member"]["open"] == "EACCES", scenario.explain()
