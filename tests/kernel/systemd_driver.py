#!/usr/bin/env python3
"""The systemd boot's in-VM driver: the shipped unit under a real systemd as PID 1.

Runs INSIDE the VM (cuse_lguest.vm with init="systemd"), as a service of
the job's own target, with `cuse` NOT loaded: `cuse-lguest install` must do
everything a fresh Debian machine needs.  Scenarios run in order and build
on each other (install, then launchers, stop, restart, uninstall, then
the same through the FUSE transport); like
driver.py it records observations and does not judge.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

import driver
from driver import GUEST, LAUNCHERS, MEM_MB, NODE, SPIN_FOREVER, Blocked, wait_until

UNIT = "cuse-lguest.service"
UNITS_DIR = pathlib.Path("/etc/systemd/system")
WATCHED = [pathlib.Path(p) for p in ("/etc", "/var/lib/cuse-lguest")]
WAIT = 60.0


def sh(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def show(unit: str, *props: str) -> dict[str, str]:
    out = sh("systemctl", "show", unit, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_lines() -> list[str]:
    return sh("journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic").stdout.splitlines()


def snapshot() -> dict[str, str]:
    """Every path under WATCHED with a digest of what it is: install must leave no trace."""
    out: dict[str, str] = {}
    for top in WATCHED:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = pathlib.Path(dirpath) / name
                if p.is_symlink():
                    out[str(p)] = "-> " + os.readlink(p)
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                else:
                    out[str(p)] = "dir"
    return out


def module_listed(name: str = "cuse") -> bool:
    return any(line.split()[0] == name for line in open("/proc/modules"))


def launcher_unit(name: str, guest_args: list[str], oneshot: bool) -> pathlib.Path:
    """A launcher as its own unit, ordered after (and requiring) the service."""
    launcher = LAUNCHERS["32"]
    for path in (launcher, GUEST):
        if not path.exists():
            raise Blocked(f"{path} is not built")
    out = pathlib.Path(f"/run/{name}.out")
    out.unlink(missing_ok=True)
    (UNITS_DIR / f"{name}.service").write_text(f"""[Unit]
Description=an lguest launcher
Requires={UNIT}
After={UNIT}
[Service]
Type={"oneshot" if oneshot else "simple"}
ExecStart={launcher} {MEM_MB} {GUEST} {" ".join(guest_args)}
# A guest that powers off is reported as 'CRASH: <message>', exit status 1.
SuccessExitStatus=1
StandardOutput=file:{out}
StandardError=inherit
""")
    sh("systemctl", "daemon-reload")
    return out


def node_facts() -> dict | None:
    return driver._node_facts() if NODE.exists() else None


def install() -> dict:
    done = sh(sys.executable, "-m", "cuse_lguest.cli", "install", timeout=300)
    sh("udevadm", "settle", "-t", "20")
    facts = {"module_before": BEFORE["module"], "rc": done.returncode, "stderr": done.stderr,
             "module_after": module_listed(), "node": node_facts(),
             "unit": show(UNIT, "Type", "ActiveState", "SubState", "UnitFileState", "StatusText",
                          "MainPID", "NoNewPrivileges", "ProtectSystem", "PrivateTmp"),
             "modules_load": pathlib.Path("/etc/modules-load.d/cuse-lguest.conf").is_file(),
             "rule": pathlib.Path("/etc/udev/rules.d/99-lguest.rules").is_file()}
    pid = int(facts["unit"].get("MainPID", "0") or 0)
    if pid:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
        facts["main_nonewprivs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")]
    return facts


def launcher_after_service() -> dict:
    """Stop the service, then start a launcher unit: systemd must start the service first and
    hold the launcher back until READY=1 (the node can be opened)."""
    sh("systemctl", "stop", UNIT)
    stopped = show(UNIT, "ActiveState")["ActiveState"]
    out = launcher_unit("lguest-hello", ["test=hello"], oneshot=True)
    start = sh("systemctl", "start", "lguest-hello.service", timeout=300)
    facts = {"service_before": stopped, "start_rc": start.returncode, "start_stderr": start.stderr,
             "hello": show("lguest-hello.service", "Result", "ExecMainStatus"),
             "output": out.read_text() if out.exists() else "",
             "service_after": show(UNIT, "ActiveState", "StatusText")}
    # A guest that keeps running: the service's status line must count it.
    spin = launcher_unit("lguest-spin", SPIN_FOREVER, oneshot=False)
    sh("systemctl", "start", "lguest-spin.service")
    facts["spin_ready"] = wait_until(lambda: spin.exists() and "spin ready" in spin.read_text(), WAIT)
    wait_until(lambda: "1 guests alive" in show(UNIT, "StatusText")["StatusText"], 10)
    facts["status_with_spin"] = show(UNIT, "StatusText")["StatusText"]
    # `cuse-lguest stat` reads the running guests' counters from here.
    stats = pathlib.Path("/run/cuse-lguest/guests")
    facts["stats_files"] = sorted(os.listdir(stats)) if stats.is_dir() else None
    return facts


def stop() -> dict:
    """`systemctl stop` with a guest running: the guest ends, the node goes, exit 0."""
    spin_active = show("lguest-spin.service", "ActiveState")["ActiveState"]
    launcher_pid = int(show("lguest-spin.service", "MainPID")["MainPID"])
    done = sh("systemctl", "stop", UNIT)
    facts = {"spin_active_before": spin_active, "stop_rc": done.returncode,
             "service": show(UNIT, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode"),
             "launcher_gone": wait_until(lambda: not pathlib.Path(f"/proc/{launcher_pid}").exists(), 10),
             "spin": show("lguest-spin.service", "ActiveState", "Result"),
             "node_gone": wait_until(lambda: not NODE.exists(), 10),
             "launcher_output": pathlib.Path("/run/lguest-spin.out").read_text()[-2000:],
             "journal_stopping": any("shutting down" in line for line in journal_lines())}
    return facts


def restart_on_failure() -> dict:
    sh("systemctl", "start", UNIT)
    before = show(UNIT, "MainPID", "NRestarts")
    pid = int(before["MainPID"])
    os.kill(pid, 9)
    restarted = wait_until(lambda: show(UNIT, "MainPID")["MainPID"] not in ("0", str(pid))
                           and show(UNIT, "ActiveState")["ActiveState"] == "active", WAIT)
    after = show(UNIT, "MainPID", "NRestarts", "ActiveState", "Result")
    wait_until(lambda: NODE.exists(), 10)
    sh("udevadm", "settle", "-t", "20")
    out = launcher_unit("lguest-hello", ["test=hello"], oneshot=True)
    start = sh("systemctl", "start", "lguest-hello.service", timeout=300)
    return {"before": before, "killed": pid, "restarted": restarted, "after": after,
            "node": node_facts(), "start_rc": start.returncode,
            "output": out.read_text() if out.exists() else ""}


def uninstall() -> dict:
    for name in ("lguest-hello", "lguest-spin"):
        sh("systemctl", "stop", f"{name}.service")
        (UNITS_DIR / f"{name}.service").unlink(missing_ok=True)
    sh("systemctl", "daemon-reload")
    done = sh(sys.executable, "-m", "cuse_lguest.cli", "install", "--uninstall", timeout=300)
    after = snapshot()
    before = BEFORE["snapshot"]
    return {"rc": done.returncode, "stderr": done.stderr,
            "unit": show(UNIT, "LoadState", "ActiveState"),
            "node_gone": wait_until(lambda: not NODE.exists(), 10),
            "module_after": module_listed(),
            "added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}


def fuse_transport() -> dict:
    """After the CUSE uninstall (cuse unloaded): the same unit through FUSE, a mount over /dev/lguest
    that the rest of the system must see, then an uninstall that again leaves no trace."""
    from cuse_lguest.cuse.fusenode import mounts_at
    done = sh(sys.executable, "-m", "cuse_lguest.cli", "install", "--transport", "fuse", timeout=300)
    facts = {"cuse_loaded": module_listed(), "rc": done.returncode, "stderr": done.stderr,
             "unit": show(UNIT, "ActiveState", "StatusText"), "mounts": mounts_at(str(NODE)),
             "node": node_facts()}
    out = launcher_unit("lguest-hello", ["test=hello"], oneshot=True)
    start = sh("systemctl", "start", "lguest-hello.service", timeout=300)
    facts.update(start_rc=start.returncode, output=out.read_text() if out.exists() else "")
    sh("systemctl", "stop", "lguest-hello.service")
    (UNITS_DIR / "lguest-hello.service").unlink(missing_ok=True)
    sh("systemctl", "daemon-reload")
    gone = sh(sys.executable, "-m", "cuse_lguest.cli", "install", "--uninstall", timeout=300)
    after, before = snapshot(), BEFORE["snapshot"]
    facts.update(uninstall_rc=gone.returncode, mounts_after=mounts_at(str(NODE)), node_gone=not NODE.exists(),
                 added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)))
    return facts


SCENARIOS = [("systemd-install", install), ("systemd-launcher-after", launcher_after_service),
             ("systemd-stop", stop), ("systemd-restart", restart_on_failure),
             ("systemd-uninstall", uninstall), ("systemd-fuse", fuse_transport)]
BEFORE: dict = {}


def main() -> int:
    args = driver.arguments()
    BEFORE.update(snapshot=snapshot(), module=module_listed())
    print(f"KTEST VM kernel {os.uname().release} under systemd, uptime "
          f"{open('/proc/uptime').read().split()[0]} s", flush=True)
    for name, scenario in SCENARIOS:
        if args.only is None or name in args.only:
            driver.run_scenario(name, scenario, args.results, lambda: len(journal_lines()),
                                lambda mark: "\n".join(journal_lines()[mark:]))
    print("KTEST service journal follows", flush=True)
    print("\n".join(journal_lines()[-100:]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
