"""One process per Guest, on the genuine device (issue 13, findings 3 and 4).

Finding 3: a launcher truncating its own shared guest RAM under its running
Guest killed the whole service (SIGBUS), and every Guest with it.  Now the
bus error is its worker's: the launcher reads ENOENT and a reason naming
SIGBUS, while the service and a Guest beside it go on.  The hostile launcher
is a non-root member of the device group (tests/kernel/truncating_launcher.py).

Finding 4: in a 512 MiB VM the first INITIALIZE killed the service, because
Unicorn could not reserve its default 1 GiB translation buffer.  A second VM
of that size boots for this file alone, and there the service also survives
one worker SIGKILLed and one Guest's RAM truncated, while a third Guest
finishes its scenario.  Both scenarios also check that the service gave back
what the dead Guests held: threads, fds, processes (their workers), memory.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm

INITIALIZE_OK = 3 * 8         # a 64-bit caller's INITIALIZE answers its three words


def _died_of(run: dict, reason: str) -> bool:
    return run["returncode"] == 1 and f": {reason}" in run["output"]


@pytest.mark.transports("cuse")
@pytest.mark.kernel_scenario("truncate-hostile")
def test_a_truncated_file_kills_only_its_guest(scenario):
    f, hostile = scenario.facts, scenario.facts["hostile"]
    assert hostile["returncode"] == 0 and hostile["initialize"] == INITIALIZE_OK, scenario.explain()
    assert "halt ready" in hostile["console"] and hostile["truncated"], scenario.explain()
    assert hostile["errno"] == "ENOENT", scenario.explain()
    assert hostile["reason"] == "guest process killed by SIGBUS", scenario.explain()
    assert f["service_alive_after"] and scenario.gave_back(), scenario.explain()
    assert "tinyguest: halt PASS" in f["bystander"]["output"], scenario.explain(f["bystander"])
    assert "tinyguest: hello PASS" in f["next_guest"]["output"], scenario.explain(f["next_guest"])


@pytest.mark.small_scenario("small-machine")
def test_a_512_mib_machine_runs_guests_and_survives_dying_workers(booted_scenario):
    rec = booted_scenario
    f = rec.facts
    assert f["mem_total_kb"] < 512 * 1024, rec.explain()
    assert "tinyguest: hello PASS" in f["first"]["output"], rec.explain(f["first"])
    assert f["victim_running"] and f["victim_worker"], rec.explain()
    assert _died_of(f["killed"], "guest process killed by SIGKILL"), rec.explain(f["killed"])
    t = f["truncated"]
    assert t["errno"] == "ENOENT" and t["reason"] == "guest process killed by SIGBUS", rec.explain(t)
    assert f["service_alive_after"] and rec.gave_back(), rec.explain()
    assert "tinyguest: halt PASS" in f["bystander"]["output"], rec.explain(f["bystander"])
    assert "tinyguest: hello PASS" in f["next_guest"]["output"], rec.explain(f["next_guest"])


@pytest.mark.small_scenario("mirror-enomem")
def test_a_mirror_copy_the_machine_cannot_commit_is_enomem(booted_scenario):
    """Finding 6: `nobody`'s private guest RAM larger than the 512 MiB VM can commit.  The worker's
    mmap of the copy fails (overcommit, not the worker's address-space limit, which has room for
    twice the Guest) and INITIALIZE answers the seed's ENOMEM, saying so in the log (a worker that
    died of the OSError would read ENOMEM too, but as "guest process exited"); a Guest runs next."""
    rec = booted_scenario
    f = rec.facts
    assert f["overcommit_memory"] == 0 and f["mib"] << 10 > f["MemTotal"] + f["SwapTotal"], rec.explain()
    assert f["client"]["uid"] == 65534 and f["client"]["initialize"] == "ENOMEM", rec.explain()
    assert f"cannot allocate a {f['mib']} MiB mirror of guest memory: Cannot allocate memory" in rec.server_log, \
        rec.explain()
    assert "guest process exited" not in rec.server_log, rec.explain()
    assert "tinyguest: hello PASS" in f["next_guest"]["output"], rec.explain(f["next_guest"])
    assert rec.gave_back() and not f["client"]["exit_hung"], rec.explain()
