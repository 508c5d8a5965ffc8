"""The kernel tier: ONE VM boot per test run, every selected scenario inside it.

The session fixture boots Debian's stock kernel (cuse_lguest.vm), where
driver.py loads nothing more than `cuse`, starts `cuse-lguest serve` and runs
the scenarios the collected tests ask for (`-k` narrows the boot's work too).
Each test then asserts on its own scenario's observations, so failures are
reported per scenario, and a VM that hangs or dies names the scenario it was
in.  Scenarios whose pieces do not exist yet are skipped with the reason.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys

import pytest

from cuse_lguest import vm

HERE = pathlib.Path(__file__).resolve().parent
DRIVER = HERE / "driver.py"
# A backstop only: the driver bounds each launch itself (LAUNCH_TIMEOUT).
VM_TIMEOUT = float(os.environ.get("KERNEL_TIER_TIMEOUT", "1200"))
MARKER = "kernel_scenario"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(name): the in-VM scenario this test asserts on "
                                       "('{bits}' is filled from the test's parameters)")


def scenario_name(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker(MARKER)
    if mark is None:
        return None
    params = getattr(getattr(item, "callspec", None), "params", {})
    return mark.args[0].format(**params)


@dataclasses.dataclass
class Scenario:
    """One scenario's observations, and the context a failure message needs."""
    name: str
    facts: dict
    server_log: str

    def explain(self, facts: dict | None = None) -> str:
        shown = self.facts if facts is None else facts
        out = shown.get("output")
        listed = {k: v for k, v in shown.items() if k != "output"}
        parts = [f"scenario {self.name}: {json.dumps(listed, indent=1, default=str)}"]
        if out is not None:
            parts += ["--- launcher output:", out]
        parts += ["--- server log during the scenario:", self.server_log]
        return "\n".join(parts)


@dataclasses.dataclass
class KernelRun:
    records: dict[str, dict]
    vm: vm.VMResult

    def interrupted_in(self) -> str | None:
        """The scenario that began but never ended, if the VM stopped mid-way."""
        current = None
        for line in self.vm.output.splitlines():
            words = line.split()
            if words[:2] == ["KTEST", "BEGIN"]:
                current = words[2]
            elif words[:2] == ["KTEST", "END"]:
                current = None
        return current

    def record(self, name: str) -> Scenario:
        rec = self.records.get(name)
        if rec is None:
            hung = self.interrupted_in()
            where = (f"the VM stopped during scenario {hung!r}" if hung
                     else "the driver never reached it")
            pytest.fail(f"scenario {name!r} has no result: {where}\n{self.vm.diagnosis()}")
        if rec["status"] == "blocked":
            pytest.skip(f"blocked: {rec['reason']}")
        if rec["status"] == "error":
            pytest.fail(f"the driver failed in scenario {name!r}:\n{rec['reason']}\n"
                        f"server log:\n{rec['server_log']}")
        return Scenario(name, rec["facts"], rec["server_log"])


@pytest.fixture(scope="session")
def kernel_run(request: pytest.FixtureRequest, native_build: pathlib.Path,
               tmp_path_factory: pytest.TempPathFactory) -> KernelRun:
    if os.geteuid() != 0:
        pytest.skip("the kernel tier needs root (9p passthrough of / and the VM's root jobs)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    wanted = sorted({n for n in map(scenario_name, request.session.items) if n})
    scratch = tmp_path_factory.mktemp("kernel-tier")
    results = scratch / "results.jsonl"
    command = f"{sys.executable} {DRIVER} --results {results} --only {' '.join(wanted)}"
    # Progress goes to the terminal, past output capture: a long silent VM is hard to trust.
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        if terminal is None or capture is None or not line.startswith("KTEST"):
            return
        with capture.global_and_fixture_disabled():
            terminal.ensure_newline()
            terminal.write(f"kernel tier: {line}", flush=True)

    result = vm.run(command, vm.VMOptions(scratch=scratch, timeout=VM_TIMEOUT), on_line=progress)
    records: dict[str, dict] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            records[rec["name"]] = rec
    run = KernelRun(records, result)
    if not records and result.returncode != 0:
        pytest.fail(f"the kernel tier's VM produced no results:\n{result.diagnosis()}")
    return run


@pytest.fixture
def scenario(request: pytest.FixtureRequest, kernel_run: KernelRun) -> Scenario:
    """The observations of the scenario named by this test's kernel_scenario marker."""
    name = scenario_name(request.node)
    assert name is not None, f"{request.node.nodeid} has no {MARKER} marker"
    return kernel_run.record(name)
