"""tinyguest booted by the project's 32- and 64-bit launchers on the genuine /dev/lguest.

Every tinyguest scenario ends by powering off, which the spec turns into the
death reason "CRASH: <message>": the launcher prints it and exits 1.
"""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.vm

BITS = pytest.mark.parametrize("bits", ["32", "64"])
POWEROFF_REASON = "CRASH: tinyguest: done"


def _passed(scenario, test: str, facts: dict | None = None) -> None:
    facts = scenario.facts if facts is None else facts
    assert not facts["timed_out"], scenario.explain(facts)
    assert f"tinyguest: {test} PASS" in facts["output"], scenario.explain(facts)


@BITS
@pytest.mark.kernel_scenario("hello-{bits}")
def test_hello(scenario, bits):
    _passed(scenario, "hello")


@BITS
@pytest.mark.kernel_scenario("hello-{bits}")
def test_poweroff_exits_1_with_the_crash_reason(scenario, bits):
    assert scenario.facts["returncode"] == 1, scenario.explain()
    assert POWEROFF_REASON in scenario.facts["output"], scenario.explain()


@BITS
@pytest.mark.kernel_scenario("echo-{bits}")
def test_echo_over_virtio_console(scenario, bits):
    _passed(scenario, "echo")
    out = scenario.facts["output"]
    assert "ping" in out.split("tinyguest: echo ready", 1)[-1], scenario.explain()
    assert "tinyguest: echo PASS lines=2 " in out, scenario.explain()


@BITS
@pytest.mark.kernel_scenario("blk-{bits}")
def test_blk_against_a_scratch_file(scenario, bits):
    """The guest's CRC of what it wrote must be what the backing file now holds."""
    _passed(scenario, "blk")
    m = re.search(r"tinyguest: blk PASS .*\bcrc=([0-9a-fA-F]+)", scenario.facts["output"])
    assert m, scenario.explain()
    assert int(m.group(1), 16) == int(scenario.facts["image_crc"], 16), scenario.explain()


@BITS
@pytest.mark.parametrize("memory", ["", "private-"], ids=["shared", "private"])
@pytest.mark.kernel_scenario("{memory}reboot-{bits}")
def test_reboot_reexecutes_and_boots_again(scenario, bits, memory):
    """The re-executed launcher opens the device afresh; with --private, mirror mode starts over too."""
    out = scenario.facts["output"]
    assert "tinyguest: reboot first boot, restarting" in out, scenario.explain()
    assert out.count("tinyguest: boot test=reboot") == 2, scenario.explain()
    assert "tinyguest: reboot PASS second boot" in out, scenario.explain()
    assert scenario.facts["returncode"] == 1 and POWEROFF_REASON in out, scenario.explain()


@BITS
@pytest.mark.kernel_scenario("two-guests-{bits}")
def test_two_guests_at_once_without_crosstalk(scenario, bits):
    mine, other = scenario.facts["tokens"]
    for run, token, foreign in zip(scenario.facts["runs"], (mine, other), (other, mine)):
        _passed(scenario, "echo", run)
        assert token in run["output"], scenario.explain(run)
        assert foreign not in run["output"], scenario.explain(run)


@BITS
@pytest.mark.parametrize("test", ["hello", "echo", "blk"])
@pytest.mark.kernel_scenario("private-{test}-{bits}")
def test_private_memory(scenario, bits, test):
    """--private is the historical launcher's memory layout: the service must mirror it."""
    _passed(scenario, test)
