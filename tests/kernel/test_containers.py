"""The service in a privileged OCI container (crun, set up as Docker's --privileged).

One VM boot of its own (container_driver.py).  The container's /dev is a
tmpfs, so the kernel's node is not visible there and the service must make
it; launchers run in the same container and in a second one given the device.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm


@pytest.mark.container_scenario("container-same")
def test_service_makes_the_node_and_a_launcher_beside_it_runs_a_guest(booted_scenario):
    f = booted_scenario.facts
    assert f["dev_fstype"] == "tmpfs", booted_scenario.explain()
    assert f["appeared"], booted_scenario.explain()
    node = f["node"]
    assert node["mode"] == "0o660" and node["uid"] == 0 and node["group"] == "kvm", booted_scenario.explain()
    assert node["rdev"] == f["sysfs_dev"], booted_scenario.explain()
    assert "tinyguest: hello PASS" in f["launch"]["output"], booted_scenario.explain()


@pytest.mark.container_scenario("container-second")
def test_a_launcher_in_a_second_container_given_the_device_runs_a_guest(booted_scenario):
    """Given the device and the service's PID namespace (docker --pid container:NAME), as the docs say."""
    f = booted_scenario.facts
    assert "tinyguest: hello PASS" in f["service_pid_ns"]["output"], booted_scenario.explain()


@pytest.mark.container_scenario("container-second")
def test_a_launcher_outside_the_services_pid_namespace_is_refused_with_a_reason(booted_scenario):
    """FUSE names it pid 0 to the service, which cannot reach its memory: ESRCH, and the log says why."""
    f = booted_scenario.facts
    assert "No such process" in f["own_pid_ns"]["output"], booted_scenario.explain()
    assert "outside the service's PID namespace" in booted_scenario.server_log, booted_scenario.explain()


@pytest.mark.container_scenario("container-stop")
def test_stopping_the_container_ends_its_guests_cleanly(booted_scenario):
    f = booted_scenario.facts
    assert f["spinning"], booted_scenario.explain()
    assert f["service_rc"] == 0, booted_scenario.explain()
    assert "removed /dev/lguest" in f["service_log"], booted_scenario.explain()
    assert f["other"]["returncode"] not in (0, None), booted_scenario.explain()
    assert f["inner"]["returncode"] not in (0, None), booted_scenario.explain()
    assert f["kernel_node_gone"], booted_scenario.explain()
