#!/usr/bin/env python3
"""The kernel tier's driver: every scenario against the genuine /dev/lguest.

With --transport cuse (the default) it runs INSIDE the VM as root, with
`cuse` loaded.  With --transport fuse it runs on the host as root against
`cuse-lguest serve --transport fuse --node NODE` (a FUSE mount over a test
path; the launchers find it through LGUEST_DEVICE), so the same scenarios
go through the genuine kernel without nested emulation.  It starts the
service, runs the scenarios in order and records what it observed; it does
not judge.  The pytest side (test_*.py) asserts on the observations, so each
scenario passes or fails on its own and a failure message carries the facts.

Output protocol: `KTEST BEGIN <name>` before a scenario and `KTEST END <name>
<status>` after it on stdout (so a hang names its scenario), and one JSON
object per scenario appended to --results.  status is "ran", "blocked"
(a piece the scenario needs does not exist yet; the reason says which) or
"error" (the driver itself failed; the traceback is kept).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import grp
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Sequence

import psutil

from cuse_lguest import children

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = ROOT / "native" / "build"
LAUNCHERS = {"32": BUILD / "launcher" / "lguest32", "64": BUILD / "launcher" / "lguest64"}
GUEST = BUILD / "guests" / "tinyguest.elf"
CLIENT = HERE / "lguest_client.py"
TRUNCATING = HERE / "truncating_launcher.py"
NODE = pathlib.Path("/dev/lguest")      # main() sets these three from the command line
TRANSPORT = "cuse"
SCRATCH = pathlib.Path("/tmp")
MEM_MB = "16"
LAUNCH_TIMEOUT = 120.0
# One Linux Guest boot to power-off: seconds on the host through FUSE, minutes in the VM (nested emulation).
LINUX_TIMEOUT = {"fuse": 300.0, "cuse": 1500.0}
NODE_TIMEOUT = 60.0
SETTLE_TIMEOUT = 10.0
NOBODY = 65534
SPIN_FOREVER = ["test=spin", "irqs=4000000000", "loops=4000000000"]
SPIN_READY = r"tinyguest: spin ready"
ECHO_INPUT = b"ping\nquit\n"
BLK_SECTORS = 64
UDEVD = pathlib.Path("/lib/systemd/systemd-udevd")
PR_SET_CHILD_SUBREAPER = 36


class Blocked(Exception):
    """A piece this scenario needs is missing; the message names it."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _node_state() -> str:
    """'served', 'missing', 'stale' (a FUSE mount whose service died: ENOTCONN) or 'unserved'.

    Through FUSE the path can exist without being served (the empty
    placeholder under the mount), so 'served' means our mount is on it.
    """
    try:
        NODE.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return "stale"
        raise
    if TRANSPORT == "cuse":
        return "served"
    from cuse_lguest.cuse.fusenode import is_served
    return "served" if is_served(NODE) else "unserved"


def _env() -> dict[str, str]:
    """The environment for launchers and clients: they open NODE (the launcher's LGUEST_DEVICE)."""
    return dict(os.environ, LGUEST_DEVICE=str(NODE))


class Server:
    """`cuse-lguest serve` as a child, with its log, counts and a way to kill it."""

    def __init__(self, log: pathlib.Path) -> None:
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.options: list[str] = []      # extra `serve` options of the running service
        self.warmed = 0                   # the start that has had a Guest (see _watched)

    def start(self) -> None:
        if importlib.util.find_spec("cuse_lguest.serve") is None:
            raise Blocked("cuse_lguest.serve does not exist yet (`cuse-lguest serve`)")
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"===== driver: start #{self.starts} of cuse-lguest serve {' '.join(self.options)}\n")
            out.flush()
            where = ["--node", str(NODE)] if TRANSPORT == "fuse" else []
            self.proc = subprocess.Popen([sys.executable, "-m", "cuse_lguest.cli", "serve",
                                          "--transport", TRANSPORT, *where, *self.options],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + NODE_TIMEOUT
        while _node_state() != "served":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"cuse-lguest serve did not register {NODE} "
                                   f"(status {self.proc.returncode}):\n{_tail(self.log_text())}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self, options: Sequence[str] = ()) -> None:
        """A running service with these extra options (restarted if it has others)."""
        if self.alive() and self.options != list(options):
            self.stop()
            while _node_state() == "served":       # CUSE: the node goes with the service
                time.sleep(0.05)
        self.options = list(options)
        if not self.alive():
            self.start()

    def counts(self) -> dict[str, int]:
        """What a finished scenario must have given back: the service's threads and fds, and its
        processes (the zygote, and a worker per live Guest)."""
        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        return {"threads": p.num_threads(), "fds": p.num_fds(), "processes": len(p.children(recursive=True))}

    def memory_kb(self) -> int:
        """Resident memory of the service and everything under it, in KiB."""
        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        total = 0
        for q in [p, *p.children(recursive=True)]:
            try:
                total += q.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total >> 10

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        return children.stop(self.proc, timeout, sig)

    def log_text(self, since: int = 0) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0


class Launch:
    """One launcher process: output collected by a thread, stdin kept open."""

    def __init__(self, bits: str, guest_args: Sequence[str], options: Sequence[str] = (),
                 stdin: bytes | None = None, user: Sequence[str] = ()) -> None:
        """`user`: a command prefix that runs the launcher as someone else (setpriv ...)."""
        launcher = LAUNCHERS[bits]
        for path in (launcher, GUEST):
            if not path.exists():
                raise Blocked(f"{path.relative_to(ROOT)} is not built")
        self.start([*user, str(launcher), *options, MEM_MB, str(GUEST), *guest_args])
        if stdin:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()

    def start(self, argv: list[str]) -> None:
        self.argv = argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=_env())
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def wait_output(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output):
                return True
            if self.proc.poll() is not None:
                return bool(re.search(pattern, self.output))
            time.sleep(0.05)
        return False

    def finish(self, timeout: float = LAUNCH_TIMEOUT) -> dict:
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(timeout=5)
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        return {"argv": self.argv, "returncode": self.proc.returncode, "timed_out": timed_out,
                "elapsed": round(time.monotonic() - self.started, 3), "output": self.output}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _reap_orphans() -> None:
    """Reap launcher helpers that were re-parented to us (we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(pgid: int) -> list[int]:
    _reap_orphans()
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


def _quiet_counts(server: Server, still_for: float = 1.0) -> dict[str, int]:
    """The server's thread and fd counts once they have not moved for `still_for` seconds.

    libfuse starts workers for overlapping requests and retires all but one
    when they are idle, and a freshly started service is still finishing its
    own start-up: a baseline taken in the middle of either would not be the
    idle state a finished scenario must return to.
    """
    start = time.monotonic()
    counts, since = server.counts(), time.monotonic()
    while time.monotonic() - since < still_for and time.monotonic() - start < SETTLE_TIMEOUT:
        time.sleep(0.1)
        now = server.counts()
        if now != counts:
            counts, since = now, time.monotonic()
    return counts


def _settle(server: Server, baseline: dict[str, int]) -> dict:
    """Wait until the server's thread and fd counts are back at `baseline`."""
    start = time.monotonic()
    counts = server.counts()
    while counts != baseline and time.monotonic() - start < SETTLE_TIMEOUT:
        time.sleep(0.1)
        counts = server.counts()
    return {"baseline": baseline, "after": counts, "settle_s": round(time.monotonic() - start, 3)}


# ----------------------------------------------------------------------------- scenarios

def guest_run(bits: str, test: str, options: Sequence[str] = (), stdin: bytes | None = None,
              block: bool = False) -> Callable[[Server], dict]:
    def scenario(server: Server) -> dict:
        server.ensure()
        facts: dict = {}
        opts = list(options)
        if block:
            image = SCRATCH / f"blk-{bits}-{test}.img"
            image.write_bytes(b"\0" * (1 << 20))
            opts.append(f"--block={image}")
        launch = Launch(bits, [f"test={test}"], opts, stdin)
        facts.update(launch.finish())
        if block:
            data = image.read_bytes()
            facts["image_crc"] = f"{zlib.crc32(data[:BLK_SECTORS * 512]):08x}"
            facts["image_sector0"] = data[:32].hex()
        return facts
    return scenario


def signal_mid_run(bits: str, sig: int) -> Callable[[Server], dict]:
    """Send `sig` to a launcher whose guest is busy computing (its read is held)."""
    def scenario(server: Server) -> dict:
        server.ensure()
        baseline = _quiet_counts(server)
        launch = Launch(bits, SPIN_FOREVER)
        running = launch.wait_output(SPIN_READY, 60)
        time.sleep(0.5)
        during = server.counts()
        sent = time.monotonic()
        os.kill(launch.proc.pid, sig)
        try:
            launch.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        exited = launch.proc.poll()
        exit_s = time.monotonic() - sent
        group = _group_alive(launch.proc.pid)
        while group and time.monotonic() - sent < 10:
            time.sleep(0.05)
            group = _group_alive(launch.proc.pid)
        group_s = time.monotonic() - sent
        facts = launch.finish(timeout=1)
        facts.update({"guest_was_running": running, "counts_during": during,
                      "exited_within_10s": exited is not None, "exit_s": round(exit_s, 3),
                      "group_left": group, "group_gone_s": round(group_s, 3)})
        facts.update(_settle(server, baseline))
        return facts
    return scenario


def server_killed(bits: str) -> Callable[[Server], dict]:
    def scenario(server: Server) -> dict:
        server.ensure()
        launch = Launch(bits, SPIN_FOREVER)
        running = launch.wait_output(SPIN_READY, 60)
        time.sleep(0.5)
        killed = time.monotonic()
        server.stop(signal.SIGKILL)
        try:
            launch.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        exit_s = time.monotonic() - killed
        facts = launch.finish(timeout=1)
        facts.update({"guest_was_running": running, "exit_s": round(exit_s, 3)})
        deadline = time.monotonic() + 10
        while _node_state() == "served" and time.monotonic() < deadline:
            time.sleep(0.05)
        # CUSE: the node goes with the service.  FUSE: the dead mount stays (ENOTCONN)
        # until a service starts again and detaches it.
        facts["node_after_kill"] = _node_state()
        server.start()
        facts["after_restart"] = Launch(bits, ["test=hello"]).finish()
        return facts
    return scenario


def two_guests(bits: str) -> Callable[[Server], dict]:
    def scenario(server: Server) -> dict:
        server.ensure()
        tokens = [f"alpha{bits}", f"bravo{bits}"]
        launches = [Launch(bits, ["test=echo"], stdin=f"{t}\nquit\n".encode()) for t in tokens]
        for launch, token in zip(launches, tokens):
            launch.wait_output(re.escape(token), LAUNCH_TIMEOUT)
        return {"tokens": tokens, "runs": [launch.finish(timeout=LAUNCH_TIMEOUT) for launch in launches]}
    return scenario


def _client(what: str, prefix: Sequence[str] = ()) -> dict:
    # Another user may not be able to run the Python we run under (e.g. one under /root).
    python = "/usr/bin/python3" if prefix and os.path.exists("/usr/bin/python3") else sys.executable
    done = subprocess.run([*prefix, python, str(CLIENT), what], capture_output=True,
                          text=True, timeout=120, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"lguest_client {what} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def errno_conformance(server: Server) -> dict:
    server.ensure()
    return _client("errno")


def offset_conformance(server: Server) -> dict:
    server.ensure()
    return _client("offsets")


def _node_facts() -> dict:
    st = NODE.stat()
    return {"mode": oct(st.st_mode & 0o7777), "uid": st.st_uid, "group": grp.getgrgid(st.st_gid).gr_name}


def _as_nobody(groups: Sequence[int]) -> list[str]:
    g = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *g]


def non_root_open(server: Server) -> dict:
    """The node as the service leaves it: CUSE's root-only default, or FUSE's udev-like mode and group."""
    server.ensure()
    facts = {"node": _node_facts(), "nobody": _client("open", _as_nobody([]))}
    if TRANSPORT == "fuse":
        facts["member"] = _client("open", _as_nobody([NODE.stat().st_gid]))
    return facts


def udev_rule(server: Server) -> dict:
    from cuse_lguest import udev

    server.ensure()
    if not UDEVD.exists():
        raise Blocked(f"{UDEVD} is not installed")
    started = subprocess.run(["pgrep", "-x", "systemd-udevd"], capture_output=True).returncode != 0
    if started:
        subprocess.run([str(UDEVD), "--daemon"], check=True, stderr=subprocess.DEVNULL)
    # udevd answers a ping only once it listens for events; a trigger sent earlier is lost.
    subprocess.run(["udevadm", "control", "--ping", "-t", "30"], check=False)
    try:
        install = subprocess.run([sys.executable, "-m", "cuse_lguest.udev", "--install",
                                  "/run/udev/rules.d"], capture_output=True, text=True, timeout=60)
        subprocess.run(["udevadm", "settle", "-t", "20"], check=False)
        deadline = time.monotonic() + 20
        while _node_facts()["group"] != udev.DEFAULT_GROUP and time.monotonic() < deadline:
            time.sleep(0.1)
        gid = grp.getgrnam(udev.DEFAULT_GROUP).gr_gid
        return {"install_rc": install.returncode, "install_stderr": install.stderr,
                "node": _node_facts(), "expected_group": udev.DEFAULT_GROUP,
                "udevadm_info": subprocess.run(["udevadm", "info", str(NODE)], capture_output=True,
                                               text=True).stdout,
                "expected_mode": oct(int(udev.DEFAULT_MODE, 8)),
                "member": _client("open", _as_nobody([gid])),
                "non_member": _client("open", _as_nobody([]))}
    finally:
        if started:
            subprocess.run(["udevadm", "control", "--exit"], check=False)


def _worker_of(server: Server, launcher_pid: int, since: int, timeout: float = 60.0) -> int | None:
    """The worker process running `launcher_pid`'s guest, from the service's log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(rf"\[{launcher_pid}\] runs in worker (\d+)", server.log_text(since))
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    return None


def _truncating_image() -> tuple[pathlib.Path, int]:
    """Guest RAM for truncating_launcher.py: tinyguest halting on a 100 Hz timer, early console only."""
    from cuse_lguest.testing.guestram import load_kernel
    from cuse_lguest.testing.layout import write_boot_params

    if not GUEST.exists():
        raise Blocked(f"{GUEST.relative_to(ROOT)} is not built")
    mem = int(MEM_MB) << 20
    ram = bytearray(mem)
    start = load_kernel(ram, GUEST)
    write_boot_params(ram, mem, ["test=halt", "hz=100", "irqs=1000000", "nodev=1"])
    image = pathlib.Path("/tmp/truncating-ram.img")
    image.write_bytes(ram)
    image.chmod(0o644)
    return image, start


def _truncate_under_guest(prefix: Sequence[str] = ()) -> dict:
    image, start = _truncating_image()
    done = subprocess.run([*prefix, sys.executable, str(TRUNCATING), str(image), hex(start), "halt ready"],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    facts = {"returncode": done.returncode, "stderr": done.stderr[-4000:]}
    if done.returncode == 0:
        facts.update(json.loads(done.stdout))
    return facts


def truncate_hostile(server: Server) -> dict:
    """Finding 3: a non-root member of the device group truncates its shared RAM under its Guest.

    A bystander Guest runs meanwhile; afterwards the service must still be
    up, the bystander must have finished, a new launch must pass, and the
    service must have given back what the dead Guest held (_watched).
    """
    def body() -> dict:
        with _node_open_to_group() as gid:
            bystander = Launch("64", ["test=halt", "hz=100", "irqs=300"])
            bystander.wait_output(r"halt ready", 60)
            facts: dict = {"hostile": _truncate_under_guest(_as_nobody([gid]))}
            facts["service_alive_after"] = server.alive()
            facts["bystander"] = bystander.finish()
            facts["next_guest"] = Launch("64", ["test=hello"]).finish()
        return facts
    return _watched(server, body)


def small_machine(server: Server) -> dict:
    """The 512 MiB VM: the service starts and runs a Guest; one worker SIGKILLed, one Guest's
    RAM truncated under it (SIGBUS); a bystander Guest beside them finishes its scenario; the
    service gives back what the dead Guests held (_watched)."""
    def body() -> dict:
        with open("/proc/meminfo") as f:
            facts: dict = {"mem_total_kb": int(f.readline().split()[1])}
        facts["first"] = Launch("64", ["test=hello"]).finish()
        bystander = Launch("64", ["test=halt", "hz=100", "irqs=500"])
        bystander.wait_output(r"halt ready", 60)
        mark = server.log_size()
        victim = Launch("64", SPIN_FOREVER)
        facts["victim_running"] = victim.wait_output(SPIN_READY, 60)
        worker = _worker_of(server, victim.proc.pid, mark)
        facts["victim_worker"] = worker
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
        facts["killed"] = victim.finish(timeout=30)
        facts["truncated"] = _truncate_under_guest()
        facts["service_alive_after"] = server.alive()
        facts["bystander"] = bystander.finish()
        facts["next_guest"] = Launch("64", ["test=hello"]).finish()
        return facts
    return _watched(server, body)


def server_sigterm(server: Server) -> dict:
    """Last: the service's own shutdown path (SIGTERM -> clean exit, node gone)."""
    server.ensure()
    rc = server.stop(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _node_state() != "missing" and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"returncode": rc, "node_gone": _node_state() == "missing"}


# ---- a hostile member of the device group (issue 13) -------------------------------------

HOSTILE = HERE / "hostile_client.py"
DEVICE_GROUP = "kvm"


SECOND_USER = 4242          # another member of the device group, for the caps shared by everyone


@contextlib.contextmanager
def _node_open_to_group():
    """The node opened to the device group, as the shipped udev rule does; yields the group.

    Through CUSE the node is root's until udev changes it, so the scenario
    does what the rule would, for its own duration; a FUSE node already has
    the rule's mode and group.
    """
    st = NODE.stat()
    gid = grp.getgrnam(DEVICE_GROUP).gr_gid if TRANSPORT == "cuse" else st.st_gid
    if TRANSPORT == "cuse":
        os.chown(NODE, 0, gid)
        os.chmod(NODE, 0o660)
    try:
        yield gid
    finally:
        if TRANSPORT == "cuse" and NODE.exists():
            os.chown(NODE, st.st_uid, st.st_gid)
            os.chmod(NODE, st.st_mode & 0o7777)


def _hostile_argv(gid: int, what: str, *args: str, uid: int = NOBODY) -> list[str]:
    """hostile_client.py `what` as `uid` in the device group `gid`."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={gid}"]
    return [*as_user, python, str(HOSTILE), what, *args]


def _report(what: str, text: str, returncode: int | None, hung: bool, err: str = "") -> dict:
    """hostile_client's last line (its JSON report), or why there is none."""
    text = text.strip()
    if not text or (returncode not in (0, None) and not hung):
        raise RuntimeError(f"hostile_client {what} failed ({returncode}):\n{text}\n{err}")
    return {**json.loads(text.splitlines()[-1]), "exit_hung": hung}


def _hostile(what: str, *args: str, uid: int = NOBODY) -> dict:
    """Run hostile_client.py as `uid` (nobody) in the device group, with the node opened to that group."""
    with _node_open_to_group() as gid:
        proc = subprocess.Popen(_hostile_argv(gid, what, *args, uid=uid),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        hung = False
        try:
            out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            # It printed its report, then could not exit: its close of the node waits for a
            # release the service never answers.  Keep the report; leave the process.
            proc.kill()
            out, err, hung = e.output or b"", e.stderr or b"", True
    return _report(what, out.decode(errors="replace"), proc.returncode, hung, err.decode(errors="replace"))


class HostileLaunch(Launch):
    """hostile_client.py running beside the driver (output collected, stdin open), for the
    scenarios that act while it holds something.  The node must be open to `gid` meanwhile."""

    def __init__(self, gid: int, what: str, uid: int = NOBODY) -> None:
        self.what = what
        self.start(_hostile_argv(gid, what, uid=uid))

    def report(self, timeout: float = LAUNCH_TIMEOUT) -> dict:
        facts = self.finish(timeout)
        return _report(self.what, facts["output"], facts["returncode"], facts["timed_out"])


def _watched(server: Server, body: Callable[[], dict], options: Sequence[str] = ()) -> dict:
    """body()'s facts, and whether the service (started with `options`) lived through it and gave
    back what it took: threads, fds and processes to where they were, memory as [before, after]."""
    server.ensure(options)
    if server.warmed != server.starts:
        # The service's first Guest imports and caches what every later one uses (some MiB):
        # that is not a leak, so the baseline is taken after one.
        _hostile("quick")
        server.warmed = server.starts
    baseline = _quiet_counts(server)
    memory = server.memory_kb()
    facts = body()
    facts["service_alive"] = server.alive()
    facts.update(_settle(server, baseline))
    facts["memory_kb"] = [memory, server.memory_kb()]
    return facts


def hostile(what: str) -> Callable[[Server], dict]:
    """One hostile scenario, watched (_watched)."""
    def body() -> dict:
        args: list[str] = []
        victim = pathlib.Path("/tmp/hostile-victim")
        if what == "readonly-file":
            victim.write_bytes(b"V" * 4096)
            victim.chmod(0o444)
            args = [str(victim)]
        facts = {"client": _hostile(what, *args)}
        if what == "readonly-file":
            facts["victim_unchanged"] = victim.read_bytes() == b"V" * 4096
        return facts
    return lambda server: _watched(server, body)


# Small caps, so that two users reach the service's own: the first takes 5 files and 3 guests,
# which leaves the second 2 files and 1 guest; the budget holds one mirror copy of a 1 MiB guest.
CAPS = {"files_per_user": 5, "files": 7, "guests_per_user": 3, "guests": 4, "mirror_mib": 2}
CAPS_OPTIONS = ["--max-files-per-user", "5", "--max-files", "7", "--max-guests-per-user", "3",
                "--max-guests", "4", "--mirror-budget", "2"]


def hostile_caps(server: Server) -> dict:
    """Finding 5, the caps shared by everyone: a user holding its share, another user asking for
    more than is left; then the mirror-copy budget."""
    def body() -> dict:
        facts: dict = {"caps": CAPS}
        with _node_open_to_group() as gid:
            first = HostileLaunch(gid, "caps-hold")
            first.wait_output(r"(?m)^\{.*\}$", LAUNCH_TIMEOUT)
            held = [line for line in first.output.splitlines() if line.startswith("{")]
            if not held:
                raise RuntimeError(f"hostile_client caps-hold did not report:\n{first.report()}")
            facts["first"] = json.loads(held[0])
            facts["second"] = _hostile("caps-second", uid=SECOND_USER)
            first.proc.stdin.write(b"go\n")
            first.proc.stdin.flush()
            facts["first_exit"] = first.report()
        facts["mirror"] = _hostile("mirror-budget", uid=SECOND_USER + 1)
        return facts
    return _watched(server, body, CAPS_OPTIONS)


def _mounts_of(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def hostile_slow_memory(server: Server) -> dict:
    """Finding 5: a launcher whose guest RAM never answers a read holds its own INITIALIZE only.

    While it waits, another user INITIALIZEs and sends IRQs; then the driver
    kills the launcher's filesystem, which must end the slow INITIALIZE too.
    """
    def body() -> dict:
        facts: dict = {}
        fuse = pathlib.Path("/dev/fuse")
        if TRANSPORT == "cuse" and fuse.stat().st_mode & 0o006 != 0o006:
            fuse.chmod(0o666)           # the VM has no udev: what every distribution's rules give it
        with _node_open_to_group() as gid:
            slow = HostileLaunch(gid, "slow-memory")
            facts["pull_blocked"] = slow.wait_output(r"read-blocked", LAUNCH_TIMEOUT)
            found = re.search(r"^server (\d+) (\S+)$", slow.output, re.M)
            facts["quick"] = _hostile("quick", uid=SECOND_USER)
            facts["slow_still_waiting"] = slow.proc.poll() is None and '"initialize"' not in slow.output
            if found:
                os.kill(int(found.group(1)), signal.SIGKILL)
            facts["slow"] = slow.report()
            if found and _mounts_of(found.group(2)):
                subprocess.run(["umount", "-l", found.group(2)], check=False)
        return facts
    return _watched(server, body)


SUBORDINATE_IDS = 100000       # where the driver maps a namespace's ids, as newuidmap maps /etc/subuid's


def hostile_userns(server: Server) -> dict:
    """Finding 5 through a user namespace: a user who has taken its share of open files opens again
    as one of its subordinate uids (ids mapped by the driver, as newuidmap would)."""
    def body() -> dict:
        facts: dict = {}
        with _node_open_to_group() as gid:
            client = HostileLaunch(gid, "userns")
            facts["unshared"] = client.wait_output(r"unshared \d+", LAUNCH_TIMEOUT)
            found = re.search(r"unshared (\d+)", client.output)
            if found:
                for name, line in (("uid_map", f"0 {SUBORDINATE_IDS} 65536\n"), ("setgroups", "deny\n"),
                                   ("gid_map", f"0 {SUBORDINATE_IDS} 65536\n")):
                    pathlib.Path(f"/proc/{found.group(1)}/{name}").write_text(line)
            client.proc.stdin.write(b"mapped\n")
            client.proc.stdin.flush()
            facts["client"] = client.report()
        return facts
    return _watched(server, body)


REARMS = {"fuse": 300000, "cuse": 100000}     # re-arms in a row; each stale entry kept is ~130 bytes


def _rss_kb(pid: int | None) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss >> 10 if pid else None
    except psutil.NoSuchProcess:
        return None


def hostile_timer(server: Server) -> dict:
    """Finding 5, the timer: one Guest re-arms its clock event in a loop while another Guest's
    timer keeps ticking; the first Guest's worker must not grow with the re-arms."""
    def body() -> dict:
        facts: dict = {"rearms": REARMS[TRANSPORT]}
        with _node_open_to_group() as gid:
            member = _as_nobody([gid])
            mark = server.log_size()
            hammer = Launch("64", ["test=rearm", f"n={REARMS[TRANSPORT]}"], user=member)
            worker = _worker_of(server, hammer.proc.pid, mark)
            facts["worker"] = worker
            facts["ready"] = hammer.wait_output(r"rearm ready", 60)
            facts["rss_ready_kb"] = _rss_kb(worker)
            bystander = Launch("64", ["test=halt", "hz=100", "irqs=300"], user=member)
            facts["done"] = hammer.wait_output(r"rearm done", LAUNCH_TIMEOUT)
            facts["rss_done_kb"] = _rss_kb(worker)
            facts["hammer"] = hammer.finish()
            facts["bystander"] = bystander.finish()
        return facts
    return _watched(server, body)


def _meminfo_kb(*fields: str) -> dict[str, int]:
    with open("/proc/meminfo") as f:
        values = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return {name: values[name] for name in fields}


def hostile_mirror_enomem(server: Server) -> dict:
    """Finding 6: a mirror copy the machine cannot commit.  The service's own mmap of the copy must
    fail with ENOMEM (the kernel's overcommit heuristic refuses one mapping larger than RAM and swap
    together), and INITIALIZE must answer the seed's ENOMEM, not an error of its own; then a normal
    guest runs.  Only a machine smaller than the largest Guest (4 GiB) can show it: the 512 MiB VM."""
    memory = _meminfo_kb("MemTotal", "SwapTotal")
    mib = (memory["MemTotal"] + memory["SwapTotal"]) // 1024 + 256
    overcommit = int(pathlib.Path("/proc/sys/vm/overcommit_memory").read_text())
    if mib >= 4000 or overcommit != 0:
        raise Blocked(f"a {mib} MiB mapping is no more than this machine's overcommit (mode {overcommit}) "
                      "refuses, or no Guest can be that large")

    def body() -> dict:
        facts: dict = {**memory, "overcommit_memory": overcommit, "mib": mib}
        facts["client"] = _hostile("huge-mirror", str(mib))
        facts["next_guest"] = Launch("64", ["test=hello"]).finish()
        return facts
    # A budget above the copy: the budget's own ENOMEM (finding 5) must not answer first.
    return _watched(server, body, ["--mirror-budget", str(2 * mib)])


# Runs of the attack, and its sweeps of aimed flips.  The VM has one CPU: the Guest and the launcher's
# helper never run at once there, and one sweep of 600 aimed flips did not end within a launch's 120 s, so
# the VM run only leaves the length big (sweeps=0): the genuine device, the launcher's refusal.
BLKRACE = {"fuse": (3, 1), "cuse": (1, 0)}


def hostile_blkrace(server: Server) -> dict:
    """Finding 6, the launcher's descriptor race: tinyguest `blkrace` aims a flip of a status
    descriptor's length between the project's launcher's check and its use, then leaves the length
    big.  Each run must end with the queue helper refusing the buffer, never with a write outside
    guest RAM (which the launcher reports as its helper killed by a signal)."""
    runs, sweeps = BLKRACE[TRANSPORT]

    def body() -> dict:
        image = SCRATCH / "blkrace.img"
        image.write_bytes(bytes(1 << 20))
        return {"sweeps": sweeps,
                "runs": [Launch("64", ["test=blkrace", f"sweeps={sweeps}"], [f"--block={image}"]).finish()
                         for _ in range(runs)]}
    return _watched(server, body)


BLKRACE_AIM = r"tinyguest: blkrace aim status=(0x[0-9a-f]+) len_at=(0x[0-9a-f]+) big=(\d+)"


def _gdb_store(helper: int, status: int, len_at: int, big: int) -> tuple[subprocess.Popen, list[str]]:
    """gdb on the block helper, making the Guest's store the moment the helper's check returns.

    It stops the helper on entry to check_pointer() for the status descriptor (its gpa, length 1),
    lets the check run to its return address, writes `big` into the descriptor's length in guest
    RAM (the memory the Guest shares with the launcher) and lets go.  Both breakpoints are
    hardware ones: a helper shares its address space with the launcher and the other helpers, so
    a software breakpoint in the shared text would trap them too.  Its output lines, as they come.
    """
    gdb = shutil.which("gdb")
    if gdb is None:
        raise Blocked("gdb is not installed")
    steps = [f"hbreak check_pointer if gpa == {status:#x} && len == 1", "echo ARMED\\n", "continue",
             "thbreak *(*(unsigned int *)$esp)", "delete 1", "continue",
             f"set var *(unsigned int *)(guest_base + {len_at:#x}) = {big}", "echo STORED\\n", "detach"]
    proc = subprocess.Popen([gdb, "-nx", "-batch", "-p", str(helper),
                             *[arg for step in steps for arg in ("-ex", step)]],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def hostile_blkrace_debugger(server: Server) -> dict:
    """Finding 6 made deterministic on the genuine path: tinyguest `blkrace store=debugger` under
    the project's 32-bit launcher, with gdb making the Guest's racing store (the big length) right
    after the block helper's bounds check of the status descriptor returns.  Everything else is the
    real launcher, device and Guest; only the store's timing is taken out of the Guest's hands."""
    def body() -> dict:
        image = SCRATCH / "blkrace.img"
        image.write_bytes(bytes(1 << 20))
        launch = Launch("32", ["test=blkrace", "store=debugger"], ["--verbose", f"--block={image}"])
        facts: dict = {"aimed": launch.wait_output(BLKRACE_AIM, LAUNCH_TIMEOUT)}
        if facts["aimed"]:
            status, len_at, big = re.search(BLKRACE_AIM, launch.output).groups()
            helper = int(re.search(r"Device block: queue 0 helper (\d+)", launch.output)[1])
            gdb, lines = _gdb_store(helper, int(status, 16), int(len_at, 16), int(big))
            facts["armed"] = wait_until(lambda: "ARMED\n" in lines or gdb.poll() is not None, NODE_TIMEOUT)
            assert launch.proc.stdin is not None
            launch.proc.stdin.write(b"g")        # the Guest sends its request now
            launch.proc.stdin.flush()
            try:
                gdb.wait(timeout=LAUNCH_TIMEOUT)
            except subprocess.TimeoutExpired:
                gdb.kill()
                gdb.wait()
            facts["gdb"] = {"returncode": gdb.returncode, "output": "".join(lines)}
        facts["run"] = launch.finish()
        return facts
    return _watched(server, body)


HOSTILE_SCENARIOS = ("readonly-file", "exec", "limits", "full-eventfd", "switcher", "devpage")


def scenarios() -> list[tuple[str, Callable[[Server], dict]]]:
    out: list[tuple[str, Callable[[Server], dict]]] = []
    for bits in ("32", "64"):
        out += [
            (f"hello-{bits}", guest_run(bits, "hello")),
            (f"echo-{bits}", guest_run(bits, "echo", stdin=ECHO_INPUT)),
            (f"blk-{bits}", guest_run(bits, "blk", block=True)),
            (f"reboot-{bits}", guest_run(bits, "reboot", block=True)),
            (f"sigterm-{bits}", signal_mid_run(bits, signal.SIGTERM)),
            (f"sigkill-{bits}", signal_mid_run(bits, signal.SIGKILL)),
            (f"two-guests-{bits}", two_guests(bits)),
            (f"private-hello-{bits}", guest_run(bits, "hello", ["--private"])),
            (f"private-echo-{bits}", guest_run(bits, "echo", ["--private"], stdin=ECHO_INPUT)),
            (f"private-blk-{bits}", guest_run(bits, "blk", ["--private"], block=True)),
            (f"private-reboot-{bits}", guest_run(bits, "reboot", ["--private"], block=True)),
        ]
    out += [("errno", errno_conformance), ("non-root-open", non_root_open)]
    if TRANSPORT == "cuse":     # FUSE sets the mode and group itself (non-root-open checks them)
        out.append(("udev", udev_rule))
        # The genuine device, and a VM whose memory the test chooses.
        out += [("truncate-hostile", truncate_hostile), ("small-machine", small_machine),
                ("mirror-enomem", hostile_mirror_enomem)]
    else:                       # through CUSE every request arrives at offset 0
        out.append(("offsets", offset_conformance))
    out += [(f"hostile-{what}", hostile(what)) for what in HOSTILE_SCENARIOS]
    out += [("hostile-caps", hostile_caps), ("hostile-slow-memory", hostile_slow_memory),
            ("hostile-timer", hostile_timer), ("hostile-userns", hostile_userns),
            ("hostile-blkrace", hostile_blkrace), ("hostile-blkrace-debugger", hostile_blkrace_debugger)]
    out += [(f"server-killed-{bits}", server_killed(bits)) for bits in ("32", "64")]
    sys.modules["driver"] = sys.modules[__name__]      # linux_guests imports us by name: one copy of the globals
    import linux_guests
    out += linux_guests.scenarios(LINUX_TIMEOUT[TRANSPORT], repeat_blk=10)
    out.append(("server-sigterm", server_sigterm))
    return out


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=pathlib.Path, required=True, help="append one JSON per scenario here")
    p.add_argument("--only", nargs="*", default=None, help="run only these scenarios")
    p.add_argument("--transport", choices=("cuse", "fuse"), default="cuse",
                   help="cuse: inside the VM, /dev/lguest; fuse: on the host, a FUSE mount at --node")
    p.add_argument("--node", type=pathlib.Path, default=NODE, help="the node to serve and open")
    return p.parse_args()


def run_scenario(name: str, scenario: Callable[[], dict], results: pathlib.Path,
                 log_size: Callable[[], int], log_text: Callable[[int], str]) -> None:
    """Run one scenario under the output protocol; the service log covers its span only."""
    print(f"KTEST BEGIN {name}", flush=True)
    mark = log_size()
    start = time.monotonic()
    record: dict = {"name": name}
    try:
        record.update(status="ran", facts=scenario())
    except Blocked as e:
        record.update(status="blocked", reason=str(e))
    except Exception:
        record.update(status="error", reason=traceback.format_exc())
    record["elapsed"] = round(time.monotonic() - start, 3)
    record["server_log"] = log_text(mark)[-20000:]
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"KTEST END {name} {record['status']} {record['elapsed']}s", flush=True)


def main() -> int:
    global NODE, TRANSPORT, SCRATCH
    args = arguments()
    NODE = args.node
    TRANSPORT, SCRATCH = args.transport, args.results.parent
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    server = Server(SCRATCH / "serve.log")
    print(f"KTEST {TRANSPORT} kernel {os.uname().release}, uptime "
          f"{open('/proc/uptime').read().split()[0]} s", flush=True)
    for name, scenario in scenarios():
        if args.only is None or name in args.only:
            run_scenario(name, lambda: scenario(server), args.results, server.log_size, server.log_text)
    server.stop()
    print("KTEST server log follows", flush=True)
    print(_tail(server.log_text(), 200), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
