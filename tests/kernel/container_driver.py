#!/usr/bin/env python3
"""The container boot's in-VM driver: the service in a privileged OCI container.

Runs INSIDE the VM (systemd as PID 1, so cgroup v2 is there; `cuse` loaded).
Containers are run by crun, Debian's OCI runtime, from a bundle made of the
VM's own root bind-mounted read-only (no image, no network), configured the
way Docker configures `--privileged`: its own mount, PID, network, IPC and
UTS namespaces, every capability, no seccomp or masked paths, and a tmpfs
/dev holding copies of every device node the host had at start.  The node
the kernel makes when the service registers lands in the VM's devtmpfs, not
in the container's /dev: the service must make it there itself.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import time

import driver
from driver import GUEST, LAUNCHERS, MEM_MB, ROOT, SPIN_FOREVER, Blocked, wait_until

CRUN = "crun"
WORK = pathlib.Path("/run/ctr")
ROOTFS = WORK / "rootfs"
NODE_IN_CONTAINER = "/dev/lguest"
# Every capability of this kernel (Docker --privileged grants all of them).
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
        "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
WAIT = 60.0


def host_devices() -> list[dict]:
    """The VM's device nodes, as OCI entries: what Docker copies into a privileged container's /dev."""
    out = []
    for dirpath, dirnames, filenames in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "mqueue")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(device_entry(path, st))
    return out


def device_entry(path: str, st: os.stat_result) -> dict:
    return {"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
            "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def privileged_spec(args: list[str], devices: list[dict], join_pid_of: int | None = None) -> dict:
    """An OCI config equivalent to `docker run --privileged` of the VM's own root."""
    env = [f"{k}={v}" for k, v in os.environ.items()
           if k in ("PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "LANG")]
    namespaces = [{"type": t} for t in ("mount", "network", "ipc", "uts")]
    namespaces.append({"type": "pid", "path": f"/proc/{join_pid_of}/ns/pid"} if join_pid_of
                      else {"type": "pid"})
    tmpfs = ["nosuid", "nodev", "mode=1777"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": tmpfs},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmp", "options": tmpfs},
        {"destination": "/run", "type": "tmpfs", "source": "run", "options": ["nosuid", "nodev", "mode=755"]},
        # The checkout may be a mount of its own (a CI clone under /tmp): bring it along.
        {"destination": str(ROOT), "type": "bind", "source": str(ROOT), "options": ["rbind", "ro"]},
    ]
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args, "env": env, "cwd": "/",
                    "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
                    "noNewPrivileges": False},
        "root": {"path": str(ROOTFS), "readonly": True},
        "hostname": "lguest-ci",
        "mounts": mounts,
        "linux": {"namespaces": namespaces, "devices": devices,
                  "resources": {"devices": [{"allow": True, "access": "rwm"}]}},
    }


class Container:
    """One `crun run` in the foreground: its exit status is its init's."""

    def __init__(self, name: str, spec: dict) -> None:
        self.name = name
        self.bundle = WORK / name
        self.bundle.mkdir(parents=True, exist_ok=True)
        (self.bundle / "config.json").write_text(json.dumps(spec, indent=1))
        self.log = WORK / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([CRUN, "run", "--bundle", str(self.bundle), name],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def init_pid(self) -> int | None:
        done = subprocess.run([CRUN, "state", self.name], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout).get("pid") or None

    def path(self, inside: str) -> pathlib.Path:
        """`inside` as seen from the VM, through the init's root."""
        return pathlib.Path(f"/proc/{self.init_pid()}/root{inside}")

    def exec(self, *args: str, timeout: float = driver.LAUNCH_TIMEOUT) -> dict:
        done = subprocess.run([CRUN, "exec", self.name, *args], capture_output=True, text=True,
                              timeout=timeout)
        return {"returncode": done.returncode, "output": done.stdout + done.stderr}

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def remove(self) -> None:
        if self.proc.poll() is None:
            subprocess.run([CRUN, "kill", self.name, "KILL"], capture_output=True)
            self.proc.wait(timeout=30)
        subprocess.run([CRUN, "delete", "--force", self.name], capture_output=True)


def node_in(container: Container) -> dict | None:
    try:
        st = os.stat(container.path(NODE_IN_CONTAINER))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid,
            "group": driver.grp.getgrgid(st.st_gid).gr_name, "rdev": f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}


def launcher_args(guest_args: list[str]) -> list[str]:
    for path in (LAUNCHERS["32"], GUEST):
        if not path.exists():
            raise Blocked(f"{path} is not built")
    return [str(LAUNCHERS["32"]), MEM_MB, str(GUEST), *guest_args]


STATE: dict = {}


def service_and_launcher_in_one_container() -> dict:
    if shutil.which(CRUN) is None:
        raise Blocked("crun is not installed (apt-get install crun)")
    WORK.mkdir(parents=True, exist_ok=True)
    ROOTFS.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", "/", str(ROOTFS)], check=True)
    service = Container("lguest-service", privileged_spec(
        [sys.executable, "-m", "cuse_lguest.cli", "serve"], host_devices()))
    STATE["service"] = service
    appeared = wait_until(lambda: service.init_pid() is not None and node_in(service) is not None, WAIT)
    facts = {"dev_fstype": None, "node": node_in(service), "appeared": appeared,
             "kernel_node": os.path.exists("/dev/lguest"),
             "sysfs_dev": pathlib.Path("/sys/class/cuse/lguest/dev").read_text().strip()
             if os.path.exists("/sys/class/cuse/lguest/dev") else None}
    mounts = service.exec("findmnt", "-n", "-o", "FSTYPE", "/dev", timeout=60)
    facts["dev_fstype"] = mounts["output"].strip()
    facts["launch"] = service.exec(*launcher_args(["test=hello"]))
    return facts


def launcher_in_a_second_container() -> dict:
    service: Container = STATE["service"]
    st = os.stat(service.path(NODE_IN_CONTAINER))
    # `docker run --privileged --device /dev/lguest --pid container:lguest-service`
    given = dict(device_entry(NODE_IN_CONTAINER, st))
    own = Container("lguest-launcher", privileged_spec(launcher_args(["test=hello"]), [given]))
    own_rc = own.wait(driver.LAUNCH_TIMEOUT)
    own_out = own.output()
    own.remove()
    shared = Container("lguest-launcher-2", privileged_spec(launcher_args(["test=hello"]), [given],
                                                            join_pid_of=service.init_pid()))
    rc = shared.wait(driver.LAUNCH_TIMEOUT)
    out = shared.output()
    shared.remove()
    return {"own_pid_ns": {"returncode": own_rc, "output": own_out},
            "service_pid_ns": {"returncode": rc, "output": out}}


def stop_the_container() -> dict:
    """Guests running in both containers; `crun kill SIGTERM` the service's container."""
    service: Container = STATE["service"]
    st = os.stat(service.path(NODE_IN_CONTAINER))
    given = dict(device_entry(NODE_IN_CONTAINER, st))
    other = Container("lguest-spin", privileged_spec(launcher_args(SPIN_FOREVER), [given],
                                                     join_pid_of=service.init_pid()))
    inner = subprocess.Popen([CRUN, "exec", service.name, *launcher_args(SPIN_FOREVER)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    spinning = wait_until(lambda: "spin ready" in other.output(), WAIT)
    time.sleep(1)
    subprocess.run([CRUN, "kill", service.name, "TERM"], check=True)
    service_rc = service.wait(30)
    other_rc = other.wait(30)
    try:
        inner_out, _ = inner.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        inner.kill()
        inner_out, _ = inner.communicate()
    facts = {"spinning": spinning, "service_rc": service_rc, "service_log": service.output()[-4000:],
             "other": {"returncode": other_rc, "output": other.output()[-2000:]},
             "inner": {"returncode": inner.returncode, "output": inner_out.decode(errors="replace")[-2000:]},
             "kernel_node_gone": wait_until(lambda: not os.path.exists("/sys/class/cuse/lguest"), 10)}
    other.remove()
    service.remove()
    return facts


SCENARIOS = [("container-same", service_and_launcher_in_one_container),
             ("container-second", launcher_in_a_second_container),
             ("container-stop", stop_the_container)]


def main() -> int:
    args = driver.arguments()
    print(f"KTEST VM kernel {os.uname().release}, containers by {CRUN}", flush=True)

    def log_text(mark: int) -> str:
        service = STATE.get("service")
        return service.output()[mark:] if service else ""

    def log_size() -> int:
        service = STATE.get("service")
        return len(service.output()) if service else 0

    try:
        for name, scenario in SCENARIOS:
            if args.only is None or name in args.only:
                driver.run_scenario(name, scenario, args.results, log_size, log_text)
    finally:
        if "service" in STATE:
            STATE["service"].remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
