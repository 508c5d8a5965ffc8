"""The shipped unit under a real systemd (PID 1 in the VM), installed by `cuse-lguest install`.

One VM boot of its own (systemd_driver.py); the scenarios build on each
other in this order: install, a launcher unit ordered after the service,
stop, restart after SIGKILL, uninstall, then install, a guest and uninstall
through the FUSE transport.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm


@pytest.mark.systemd_scenario("systemd-install")
def test_install_leaves_a_running_service_and_the_rules_node(booted_scenario):
    f = booted_scenario.facts
    assert f["rc"] == 0, booted_scenario.explain()
    assert not f["module_before"] and f["module_after"], booted_scenario.explain()
    assert f["modules_load"] and f["rule"], booted_scenario.explain()
    unit = f["unit"]
    assert unit["Type"] == "notify" and unit["ActiveState"] == "active", booted_scenario.explain()
    assert unit["UnitFileState"] == "enabled", booted_scenario.explain()
    assert unit["StatusText"] == "serving /dev/lguest: 0 guests alive", booted_scenario.explain()
    assert f["main_nonewprivs"] == ["1"], booted_scenario.explain()
    assert f["node"] == {"mode": "0o660", "uid": 0, "group": "kvm"}, booted_scenario.explain()


@pytest.mark.systemd_scenario("systemd-launcher-after")
def test_a_launcher_unit_after_the_service_runs_a_guest(booted_scenario):
    f = booted_scenario.facts
    assert f["service_before"] == "inactive", booted_scenario.explain()
    assert f["start_rc"] == 0 and f["hello"]["Result"] == "success", booted_scenario.explain()
    assert "tinyguest: hello PASS" in f["output"], booted_scenario.explain()
    assert f["service_after"]["ActiveState"] == "active", booted_scenario.explain()
    assert f["spin_ready"], booted_scenario.explain()
    assert f["status_with_spin"] == "serving /dev/lguest: 1 guests alive", booted_scenario.explain()
    assert f["stats_files"], booted_scenario.explain()   # the sandbox leaves /run/cuse-lguest writable


@pytest.mark.systemd_scenario("systemd-stop")
def test_stop_ends_every_guest_and_removes_the_node(booted_scenario):
    f = booted_scenario.facts
    assert f["spin_active_before"] == "active", booted_scenario.explain()
    assert f["stop_rc"] == 0, booted_scenario.explain()
    assert f["service"]["Result"] == "success" and f["service"]["ExecMainStatus"] == "0", booted_scenario.explain()
    assert f["launcher_gone"] and f["spin"]["ActiveState"] != "active", booted_scenario.explain()
    assert f["node_gone"] and f["journal_stopping"], booted_scenario.explain()


@pytest.mark.systemd_scenario("systemd-restart")
def test_sigkill_of_the_service_is_followed_by_a_restart(booted_scenario):
    f = booted_scenario.facts
    assert f["restarted"], booted_scenario.explain()
    assert int(f["after"]["NRestarts"]) == int(f["before"]["NRestarts"]) + 1, booted_scenario.explain()
    assert f["node"] == {"mode": "0o660", "uid": 0, "group": "kvm"}, booted_scenario.explain()
    assert f["start_rc"] == 0 and "tinyguest: hello PASS" in f["output"], booted_scenario.explain()


@pytest.mark.systemd_scenario("systemd-uninstall")
def test_uninstall_removes_everything_install_added(booted_scenario):
    f = booted_scenario.facts
    assert f["rc"] == 0, booted_scenario.explain()
    assert f["unit"]["LoadState"] == "not-found", booted_scenario.explain()
    assert f["node_gone"] and not f["module_after"], booted_scenario.explain()
    assert f["added"] == [] and f["removed"] == [] and f["changed"] == [], booted_scenario.explain()


@pytest.mark.systemd_scenario("systemd-fuse")
def test_through_fuse_the_node_is_a_mount_everyone_sees_and_uninstall_cleans_up(booted_scenario):
    """The unit for FUSE shares the system's mount namespace: a launcher unit elsewhere opens the node."""
    f = booted_scenario.facts
    assert not f["cuse_loaded"] and f["rc"] == 0, booted_scenario.explain()
    assert f["unit"]["ActiveState"] == "active", booted_scenario.explain()
    assert f["mounts"] == ["fuse.cuse-lguest"], booted_scenario.explain()
    assert f["node"] == {"mode": "0o660", "uid": 0, "group": "kvm"}, booted_scenario.explain()
    assert f["start_rc"] == 0 and "tinyguest: hello PASS" in f["output"], booted_scenario.explain()
    assert f["uninstall_rc"] == 0 and f["mounts_after"] == [] and f["node_gone"], booted_scenario.explain()
    assert f["added"] == [] and f["removed"] == [], booted_scenario.explain()
