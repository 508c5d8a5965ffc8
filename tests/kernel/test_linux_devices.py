"""A real Linux 3.18 Guest's every device through real launchers on the genuine /dev/lguest (issue 14).

Launchers (linux_guests.py): `hist`, the unmodified 3.18 tools/lguest
(LGUEST_HISTORICAL_LAUNCHER; private RAM, so mirror mode), and the project's
32-bit launcher in shared (`32`) and private (`32-private`) mode.  The Guest
is LGUEST_LINUX_KERNEL on LGUEST_LINUX_INITRD; every test skips, naming the
variable, without them (as in CI).  Through FUSE on this host by default: the
genuine kernel path without nested emulation, where a boot takes seconds.
LGUEST_LINUX_TRANSPORTS=cuse,fuse adds the VM, where each boot takes
minutes.  LGUEST_LINUX_BLK_REPEAT=N runs the 4 MiB blk scenario N times
per launcher (at most 10).
"""
from __future__ import annotations

import os
import re
import signal

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.linux,
              pytest.mark.transports(*os.environ.get("LGUEST_LINUX_TRANSPORTS", "fuse").split(","))]

LAUNCHERS = pytest.mark.parametrize("which", ["hist", "32", "32-private"])
POWEROFF = "CRASH: Power down"
REPEAT = min(10, int(os.environ.get("LGUEST_LINUX_BLK_REPEAT", "1")))


def _powered_off(scenario) -> str:
    """The Guest powered off, the service recorded it, and the launcher ended as launchers do."""
    facts = scenario.facts
    assert not facts["timed_out"], scenario.explain()
    out = facts["output"]
    assert "LGUEST-GUEST-UP" in out and "LGUEST-GUEST-POWEROFF" in out, scenario.explain()
    assert "reboot: Power down" in out and f"died: {POWEROFF}" in scenario.server_log, scenario.explain()
    # The launcher reads the death and exits 1 with its text.  On its way out it stops its device
    # helpers, and a helper's exit can make it signal its own process group first (SIGCHLD ->
    # SIGTERM).  And the historical launcher's helpers may send one more LHREQ_IRQ after the
    # death: the device answers ENOENT, as the 3.x host did, and that helper's err() ends the
    # launcher before its read reports the death (the project's launcher waits instead).
    assert facts["returncode"] in (1, -signal.SIGTERM), scenario.explain()
    helper_raced = "-hist" in scenario.name and re.search(r"Triggering irq \d+: No such file", out)
    assert POWEROFF in out or helper_raced, scenario.explain()
    return out


def _blk_passed(scenario) -> None:
    out = _powered_off(scenario)
    facts = scenario.facts
    assert "BLK-SECTORS: 8192\n" in out and "BLK-RO: 0\n" in out, scenario.explain()
    assert f"BLK-MD5-BEFORE: {facts['md5_before']}\n" in out, scenario.explain()
    assert "BLK-SECTOR0: " + b"LGBLK0000000000".hex() in out, scenario.explain()
    assert "BLK-READBACK: LGUEST-BLK-WRITE-OK\n" in out, scenario.explain()
    assert f"BLK-MD5-AFTER: {facts['md5_after']}\n" in out, scenario.explain()
    assert facts["image_as_expected"], scenario.explain()


@LAUNCHERS
@pytest.mark.kernel_scenario("linux-blk-{which}")
def test_blk_checksums_writes_and_the_host_file_agrees(scenario, which):
    _blk_passed(scenario)


@LAUNCHERS
@pytest.mark.parametrize("n", range(2, REPEAT + 1))
@pytest.mark.kernel_scenario("linux-blk-{which}-{n}")
def test_blk_again(scenario, which, n):
    _blk_passed(scenario)


@LAUNCHERS
@pytest.mark.kernel_scenario("linux-big-{which}")
def test_32_mib_written_and_read_back(scenario, which):
    out = _powered_off(scenario)
    facts = scenario.facts
    assert "BIG-COPIED rc=0\n" in out, scenario.explain()
    assert f"BIG-MD5: {facts['md5_written']}" in out, scenario.explain()         # what the Guest read back
    assert facts["md5_host_second_half"] == facts["md5_written"], scenario.explain()   # what reached the file
    assert facts["first_half_kept"], scenario.explain()


@LAUNCHERS
@pytest.mark.kernel_scenario("linux-console-{which}")
def test_interactive_shell_on_hvc0(scenario, which):
    out = _powered_off(scenario)
    after = out.split("LGUEST-SHELL", 1)[-1]
    assert "MARK:42\n" in after and "virtio_console" in after, scenario.explain()


@LAUNCHERS
@pytest.mark.kernel_scenario("linux-rng-{which}")
def test_rng_gives_bytes(scenario, which):
    out = _powered_off(scenario)
    assert "RNG-CURRENT: virtio_rng.0\n" in out, scenario.explain()
    assert re.search(r"^RNG-BYTES: [0-9a-f]{32}$", out, re.M), scenario.explain()


@LAUNCHERS
@pytest.mark.kernel_scenario("linux-reboot-{which}")
def test_reboot_restarts_and_the_second_boot_powers_off(scenario, which):
    out = _powered_off(scenario)
    assert "LGUEST-REBOOT-FIRST-BOOT" in out and "reboot: Restarting system" in out, scenario.explain()
    assert out.index("LGUEST-REBOOT-SECOND-BOOT") > out.index("LGUEST-REBOOT-FIRST-BOOT"), scenario.explain()
    assert out.count("LGUEST-GUEST-UP") == 2, scenario.explain()
    assert scenario.facts["disk_head_after"] == "00" * 16, scenario.explain()


@LAUNCHERS
@pytest.mark.kernel_scenario("linux-net-{which}")
def test_net_through_a_tap(scenario, which):
    out = _powered_off(scenario)
    facts = scenario.facts
    assert facts["server_ready"] == "READY", scenario.explain()
    assert "NET-ETH0-UP\n" in out and "NET-PING-OK\n" in out, scenario.explain()
    assert f"NET-UPLOAD-ANSWER: {facts['upload_md5']}\n" in out, scenario.explain()     # Guest -> host
    assert f"RECEIVED {facts['upload_bytes']} {facts['upload_md5']}" in facts["server"], scenario.explain()
    assert f"NET-DOWNLOAD-MD5: {facts['download_md5']}" in out, scenario.explain()      # host -> Guest
