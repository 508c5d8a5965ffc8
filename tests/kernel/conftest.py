"""The kernel tier: every scenario through the genuine kernel, once per transport.

Each test runs twice, as [cuse-...] and [fuse-...] (a `transports` marker
narrows that).  CUSE: ONE VM boot per test run; the session fixture boots
Debian's stock kernel (cuse_lguest.vm), where driver.py loads nothing more
than `cuse`, starts `cuse-lguest serve` and runs the scenarios the collected
tests ask for (`-k` narrows the boot's work too).  FUSE: the same driver on
this host, against `cuse-lguest serve --transport fuse` mounted over a node
in a fresh directory (never /dev/lguest), no VM.  Each test then asserts on
its own scenario's observations, so failures are reported per scenario, and
a run that hangs or dies names the scenario it was in.  Scenarios whose
pieces do not exist yet are skipped with the reason.

Three more VM boots, each made only if a selected test needs it, and through
CUSE only (BOOTS): systemd as PID 1 for the unit and `cuse-lguest install`
(systemd_driver.py), privileged OCI containers (container_driver.py), and a
machine of 512 MiB (driver.py's small-machine scenario, test_isolation.py).
Their tests take the `booted_scenario` fixture.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import signal
import tempfile
import threading
from collections.abc import Callable

import pytest

from cuse_lguest import vm

HERE = pathlib.Path(__file__).resolve().parent
DRIVER = HERE / "driver.py"
# A backstop only: the driver bounds each launch itself (LAUNCH_TIMEOUT).
VM_TIMEOUT = float(os.environ.get("KERNEL_TIER_TIMEOUT", "1200"))
MARKER = "kernel_scenario"
TRANSPORTS = ("cuse", "fuse")
LINUX_VARS = ("LGUEST_LINUX_KERNEL", "LGUEST_LINUX_INITRD", "LGUEST_HISTORICAL_LAUNCHER")


@dataclasses.dataclass(frozen=True)
class Boot:
    """A VM boot of its own: its driver, its PID 1, the modules loaded before the driver, its RAM."""
    driver: pathlib.Path
    init: str
    modules: tuple[str, ...]
    memory_mb: int = vm.VMOptions.memory_mb


BOOTS = {
    # `cuse-lguest install` must load cuse itself.
    "systemd_scenario": Boot(HERE / "systemd_driver.py", "systemd", ()),
    # systemd as PID 1 for cgroup v2, which the OCI runtime needs.
    "container_scenario": Boot(HERE / "container_driver.py", "systemd", ("cuse",)),
    # A small machine (issue 13, finding 4): the main driver's small-machine scenario in 512 MiB.
    "small_scenario": Boot(DRIVER, "sh", ("cuse",), memory_mb=512),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(name): the kernel-tier scenario this test asserts on "
                                       "('{bits}' is filled from the test's parameters)")
    for marker, boot in BOOTS.items():
        config.addinivalue_line("markers", f"{marker}(name): the scenario of {boot.driver.name}'s VM boot")
    config.addinivalue_line("markers", "transports(*names): only through these transports "
                                       f"(default: {', '.join(TRANSPORTS)})")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("transports")
        metafunc.parametrize("transport", mark.args if mark else TRANSPORTS, indirect=True,
                             scope="session")


def _transport_of(item: pytest.Item) -> str | None:
    return getattr(getattr(item, "callspec", None), "params", {}).get("transport")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep each transport's tests together, in their places, so each run (a VM boot) happens once."""
    slots = [i for i, item in enumerate(items) if _transport_of(item)]
    ordered = sorted((items[i] for i in slots), key=lambda item: TRANSPORTS.index(_transport_of(item)))
    for i, item in zip(slots, ordered):
        items[i] = item


@pytest.fixture(scope="session")
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def scenario_name(item: pytest.Item, marker: str = MARKER) -> str | None:
    mark = item.get_closest_marker(marker)
    if mark is None:
        return None
    params = getattr(getattr(item, "callspec", None), "params", {})
    return mark.args[0].format(**params)


LEAK_KB = 16 << 10      # resident memory a scenario may leave behind (allocator slack, not a Guest's RAM)


@dataclasses.dataclass
class Scenario:
    """One scenario's observations, and the context a failure message needs."""
    name: str
    transport: str
    facts: dict
    server_log: str

    def gave_back(self) -> bool:
        """For a scenario the driver watched (driver._watched): the service is still there, with the
        threads, fds and processes it had before and about the memory."""
        f = self.facts
        before, after = f["memory_kb"]
        return f["service_alive"] and f["after"] == f["baseline"] and after - before < LEAK_KB

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
class HostRun:
    """The driver's run on this host (FUSE), shaped like a VMResult for the messages."""
    returncode: int
    output: str
    timed_out: bool

    def diagnosis(self) -> str:
        how = "timed out" if self.timed_out else f"exited with status {self.returncode}"
        return f"the host driver {how}; its last output:\n" + "\n".join(self.output.splitlines()[-60:])


@dataclasses.dataclass
class KernelRun:
    transport: str
    records: dict[str, dict]
    vm: vm.VMResult | HostRun

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
        return Scenario(name, self.transport, rec["facts"], rec["server_log"])


def _wanted(session: pytest.Session, transport: str) -> list[str]:
    """The scenarios this transport's collected tests ask for."""
    return sorted({name for item in session.items
                   if (name := scenario_name(item)) and _transport_of(item) == transport})


def _fuse_unmountable() -> str | None:
    """Why the service could not mount FUSE here (no /dev/fuse, a container without the right), or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist: this kernel has no FUSE (modprobe fuse)"
    from cuse_lguest.cuse.binding import TransportUnavailable
    from cuse_lguest.cuse.fusenode import FuseNode
    from cuse_lguest.cuse.session import FileAttrs
    with tempfile.TemporaryDirectory(prefix="cuse-lguest-fuse-probe-") as where:
        node = FuseNode(pathlib.Path(where) / "probe", FileAttrs(mode=0o600, uid=0, gid=0))
        try:
            node.prepare()
            os.close(node.mount())      # no session: the mount is dead at once, and detached next
        except TransportUnavailable as e:
            return f"the service cannot mount FUSE here: {e}"
        finally:
            node.remove()
    return None


def _run_on_host(command: list[str], node: pathlib.Path, progress) -> HostRun:
    """Run the driver here; whatever happens, leave no mount behind at `node`."""
    from cuse_lguest.cuse.fusenode import FSTYPE, mounts_at
    lines: list[str] = []
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(DRIVER.parents[2])))
    backstop = threading.Timer(VM_TIMEOUT, proc.kill)
    backstop.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            progress(line)
    finally:
        backstop.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        while FSTYPE in mounts_at(str(node)):
            subprocess.run(["umount", "-l", str(node)], check=False)
    return HostRun(proc.returncode, "".join(lines), timed_out=proc.returncode == -signal.SIGKILL)


def _progress(request: pytest.FixtureRequest, label: str) -> Callable[[str], None]:
    """Progress goes to the terminal, past output capture: a long silent run is hard to trust."""
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        if terminal is None or capture is None or not line.startswith("KTEST"):
            return
        with capture.global_and_fixture_disabled():
            terminal.ensure_newline()
            terminal.write(f"kernel tier ({label}): {line.rstrip()}\n", flush=True)
    return progress


def _records(results: pathlib.Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            records[rec["name"]] = rec
    return records


@pytest.fixture(scope="session")
def kernel_run(request: pytest.FixtureRequest, transport: str, native_build: pathlib.Path,
               tmp_path_factory: pytest.TempPathFactory) -> KernelRun:
    if os.geteuid() != 0:
        pytest.skip("the kernel tier needs root (CUSE: 9p passthrough of / and the VM's root jobs; "
                    "FUSE: mounting the node)")
    if transport == "cuse" and shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    if transport == "fuse":
        why = _fuse_unmountable()
        if why:
            pytest.skip(why)
    wanted = _wanted(request.session, transport)
    scratch = tmp_path_factory.mktemp(f"kernel-tier-{transport}")
    results = scratch / "results.jsonl"
    command = [sys.executable, str(DRIVER), "--results", str(results), "--transport", transport]
    progress = _progress(request, transport)
    if transport == "cuse":
        command_line = " ".join(command + ["--only", *wanted])
        kit = {var: os.environ[var] for var in LINUX_VARS if var in os.environ}    # the Linux scenarios' files
        # tun: the Linux net scenarios give their launcher a tap (/dev/net/tun), and the VM loads no module unasked.
        opts = vm.VMOptions(scratch=scratch, timeout=VM_TIMEOUT, env=kit, modules=("cuse", "tun"))
        result = vm.run(command_line, opts, on_line=progress)
    else:
        # Another user opens the node in the permission scenarios: the directory must be
        # searchable by everyone, which pytest's own temporary directories are not.
        where = pathlib.Path(tempfile.mkdtemp(prefix="cuse-lguest-fuse-tier-"))
        where.chmod(0o755)
        node = where / "lguest"
        try:
            result = _run_on_host(command + ["--node", str(node), "--only", *wanted], node, progress)
        finally:
            shutil.rmtree(where, ignore_errors=True)
    records = _records(results)
    run = KernelRun(transport, records, result)
    if not records and result.returncode != 0:
        pytest.fail(f"the kernel tier ({transport}) produced no results:\n{result.diagnosis()}")
    return run


@pytest.fixture
def scenario(request: pytest.FixtureRequest, kernel_run: KernelRun) -> Scenario:
    """The observations of the scenario named by this test's kernel_scenario marker."""
    name = scenario_name(request.node)
    assert name is not None, f"{request.node.nodeid} has no {MARKER} marker"
    return kernel_run.record(name)


def _boot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, marker: str) -> KernelRun:
    """Boot `marker`'s VM once, running the scenarios the selected tests name."""
    if os.geteuid() != 0:
        pytest.skip("the kernel tier needs root (9p passthrough of / and the VM's root jobs)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    boot = BOOTS[marker]
    wanted = sorted({n for n in (scenario_name(i, marker) for i in request.session.items) if n})
    scratch = tmp_path_factory.mktemp(marker.replace("_", "-"))
    results = scratch / "results.jsonl"
    command = f"{sys.executable} {boot.driver} --results {results} --only {' '.join(wanted)}"
    opts = vm.VMOptions(scratch=scratch, timeout=VM_TIMEOUT, init=boot.init, modules=boot.modules,
                        memory_mb=boot.memory_mb)
    result = vm.run(command, opts, on_line=_progress(request, boot.driver.stem))
    records = _records(results)
    if not records and result.returncode != 0:
        pytest.fail(f"the {boot.driver.stem} VM produced no results:\n{result.diagnosis()}")
    return KernelRun("cuse", records, result)


@pytest.fixture(scope="session")
def boots(native_build: pathlib.Path) -> dict[str, KernelRun | BaseException]:
    """Boot marker -> its results (or why it failed), each booted the first time a test needs it."""
    return {}


@pytest.fixture
def booted_scenario(request: pytest.FixtureRequest, boots: dict[str, KernelRun | BaseException],
                    tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The observations of the scenario named by this test's systemd_, container_ or small_scenario marker."""
    marker = next((m for m in BOOTS if request.node.get_closest_marker(m)), None)
    assert marker is not None, f"{request.node.nodeid} has none of the markers {', '.join(BOOTS)}"
    if marker not in boots:
        try:
            boots[marker] = _boot(request, tmp_path_factory, marker)
        except BaseException as outcome:   # a skip or failure is the same for every test: boot once
            boots[marker] = outcome
    run = boots[marker]
    if isinstance(run, BaseException):
        raise run
    return run.record(scenario_name(request.node, marker))
