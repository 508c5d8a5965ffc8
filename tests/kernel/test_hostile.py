"""A hostile member of the device group, on the genuine /dev/lguest (issue 13, findings 1, 2, 5, 6).

Each scenario runs tests/kernel/hostile_client.py as `nobody` in group kvm
(the group the shipped udev rule opens the node to) and records what the
service answered, whether it is still running, and whether its threads and
fds came back to where they were.  Every test here failed on the code before
issue 13 (see docs/security.md for how that was checked).
"""
from __future__ import annotations

import pytest

from cuse_lguest.limits import Limits

pytestmark = pytest.mark.vm


def clean(facts: dict) -> bool:
    """The service is still there, with the threads and fds it had before the scenario, and the
    hostile program could exit (its last close was answered)."""
    return facts["service_alive"] and facts["after"] == facts["baseline"] and not facts["client"]["exit_hung"]


@pytest.mark.kernel_scenario("hostile-readonly-file")
def test_a_file_the_user_may_only_read_stays_unchanged(scenario):
    """Finding 1: root's 0444 file mapped read-only MAP_SHARED in the guest's range; the guest stores there."""
    f, c = scenario.facts, scenario.facts["client"]
    assert c["uid"] == 65534, scenario.explain()
    assert c["initialize"] == "OK" and c["read"] == "ENOENT", scenario.explain()     # the guest ran, and died
    assert f["victim_unchanged"], scenario.explain()
    assert clean(f), scenario.explain()


@pytest.mark.kernel_scenario("hostile-exec")
def test_the_memory_of_the_program_exec_d_under_the_same_pid_stays_untouched(scenario):
    """Finding 2: after exec the guest's string must not land in the new program (mirror mode)."""
    f, c = scenario.facts, scenario.facts["client"]
    assert c["initialize"] == "OK", scenario.explain()
    assert c["secret_intact"] and c["secret_at_string"] == "SSSSS", scenario.explain()
    assert c["read"] == "ENOENT" and c["reason"].startswith("launcher memory gone"), scenario.explain()
    assert clean(f), scenario.explain()


@pytest.mark.kernel_scenario("hostile-limits")
def test_one_user_holds_no_more_than_the_limits(scenario):
    """Finding 5: open files (EMFILE), eventfds (ENOMEM), live guests (ENOMEM) at the default caps."""
    f, c, caps = scenario.facts, scenario.facts["client"], Limits()
    assert (c["opens"], c.get("open_error")) == (caps.files_per_user, "EMFILE"), scenario.explain()
    assert c["initialize"] == "OK", scenario.explain()
    assert (c["eventfds"], c.get("eventfd_error")) == (caps.eventfds_per_guest, "ENOMEM"), scenario.explain()
    assert (c["guests"], c.get("guest_error")) == (caps.guests_per_user, "ENOMEM"), scenario.explain()
    assert clean(f), scenario.explain()


@pytest.mark.kernel_scenario("hostile-full-eventfd")
def test_a_full_eventfd_holds_neither_the_guest_nor_the_service(scenario):
    """Finding 5: a NOTIFY to an eventfd the launcher filled to its maximum."""
    f, c = scenario.facts, scenario.facts["client"]
    assert c["initialize"] == "OK" and c["eventfd"] == "OK", scenario.explain()
    assert c["read"] == "ENOENT", scenario.explain()          # the guest went on to its ud2 and died
    assert c["count_kept"], scenario.explain()
    assert clean(f), scenario.explain()


@pytest.mark.kernel_scenario("hostile-switcher")
def test_pfnlimit_into_the_switcher_region_is_efault_at_once(scenario):
    """Finding 6: refused from the words alone, with the seed's EFAULT, not EIO after the work."""
    f, c = scenario.facts, scenario.facts["client"]
    assert c["initialize"] == "EFAULT", scenario.explain()
    assert clean(f), scenario.explain()


@pytest.mark.kernel_scenario("hostile-devpage")
def test_a_malformed_device_page_kills_only_its_guest(scenario):
    """Finding 6: the guest scribbles over its device page (shared mode); the launcher's IRQ finds it."""
    f, c = scenario.facts, scenario.facts["client"]
    assert c["initialize"] == "OK", scenario.explain()
    assert c["read"] == "ENOENT" and c["reason"].startswith("malformed device page"), scenario.explain()
    assert set(c.get("irq_errors", [])) <= {"ENOENT"}, scenario.explain()
    assert clean(f), scenario.explain()
