"""Boot the VM, run one job as root, bring back its output and exit status.

QEMU's serial ports carry three streams: ttyS0 the kernel console (to a log
file), ttyS1 the job's stdout and stderr (to QEMU's stdout, read here line
by line so callers can show it live), ttyS2 the job's exit status.  1 vCPU
under TCG: 2 vCPUs measured about 20x slower for CUSE round trips.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cuse_lguest import children

from . import initramfs, job, kernel

DEFAULT_CACHE = pathlib.Path("/var/tmp/cuse-lguest-vm")
EXIT_TIMEOUT = 124
TAIL_LINES = 20


@dataclasses.dataclass(frozen=True)
class VMOptions:
    timeout: float = 600.0
    memory_mb: int = 2048
    cpus: int = 1
    modules: Sequence[str] = ("cuse",)
    scratch: pathlib.Path | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: str = "/"
    kernel_version: str | None = None
    cache_dir: pathlib.Path = DEFAULT_CACHE
    append: str = ""
    # "sh": the job is stage 2 of a bare /bin/sh PID 1 (fast).  "systemd": PID 1
    # is the host's systemd on an overlay root, and the job is a service.
    init: str = "sh"


@dataclasses.dataclass
class VMResult:
    returncode: int
    output: str
    console: str
    elapsed: float
    timed_out: bool
    kept: pathlib.Path | None

    @property
    def vm_failed(self) -> bool:
        """The VM itself failed (timeout, crash, module load), not the job."""
        return self.returncode in (EXIT_TIMEOUT, initramfs.EXIT_UNREPORTED, job.EXIT_MODPROBE)

    def diagnosis(self) -> str:
        """Where it stopped: the last job output and console lines, and the kept log."""
        if self.timed_out:
            head = f"VM timed out after {self.elapsed:.0f} s"
        elif self.returncode == initramfs.EXIT_UNREPORTED:
            head = "VM stopped without reporting the job's exit status"
        elif self.returncode == job.EXIT_MODPROBE:
            head = "a kernel module failed to load in the VM"
        else:
            head = f"job exited with status {self.returncode}"
        out = self.output.splitlines()[-TAIL_LINES:]
        con = self.console.splitlines()[-TAIL_LINES:]
        parts = [head, "--- last job output:", *out, "--- last console lines:", *con]
        if self.kept is not None:
            parts.append(f"--- console log and job kept in {self.kept}")
        return "\n".join(parts)


def qemu_command(boot: pathlib.Path, initrd: pathlib.Path, run_dir: pathlib.Path,
                 opts: VMOptions) -> list[str]:
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
        "-smp", str(opts.cpus), "-m", f"{opts.memory_mb}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-net", "none", "-no-reboot",
        "-kernel", str(boot), "-initrd", str(initrd),
        "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init {opts.append}".strip(),
        "-fsdev", "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=hostroot,mount_tag={initramfs.ROOT_TAG}",
        "-chardev", f"file,id=console,path={run_dir / 'console.log'}", "-serial", "chardev:console",
        "-chardev", "stdio,id=output,signal=off", "-serial", "chardev:output",
        "-chardev", f"file,id=status,path={run_dir / 'status'}", "-serial", "chardev:status",
    ]
    if opts.scratch is not None:
        cmd += ["-fsdev", f"local,id=scratch,path={opts.scratch},security_model=passthrough",
                "-device", f"virtio-9p-pci,fsdev=scratch,mount_tag={initramfs.SCRATCH_TAG}"]
    if _project_share() is not None:
        cmd += ["-fsdev", f"local,id=project,path={job.PROJECT_ROOT},security_model=passthrough,"
                          "readonly=on,multidevs=remap",
                "-device", f"virtio-9p-pci,fsdev=project,mount_tag={initramfs.PROJECT_TAG}"]
    return cmd


def _project_share() -> pathlib.Path | None:
    """The checkout, when the VM's own tmpfs mounts would hide it (a CI clone under /tmp, say)."""
    return job.PROJECT_ROOT if initramfs.hidden_in_vm(job.PROJECT_ROOT) else None


def _pump(stream, lines: list[str], on_line: Callable[[str], None] | None) -> None:
    for raw in stream:
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if on_line is not None:
            on_line(line)


def run(command: str, opts: VMOptions = VMOptions(),
        on_line: Callable[[str], None] | None = None) -> VMResult:
    """Run `command` with /bin/sh as root in a fresh VM and wait for it.

    The run directory (initrd, console log) is deleted after a clean run and
    kept under the cache directory when the VM timed out or died, so the
    console log can be read afterwards.
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise FileNotFoundError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    version = opts.kernel_version or kernel.find_version()
    boot = kernel.boot_image(version, opts.cache_dir)
    base = initramfs.base_image(version, opts.cache_dir)
    runs = opts.cache_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    script = job.script(command, opts.modules, job.environment(opts.env), opts.cwd)
    (run_dir / "job.sh").write_text(script)
    initrd = run_dir / "initrd.cpio"
    initrd.write_bytes(base.read_bytes() + initramfs.job_archive(script, opts.scratch, _project_share(),
                                                                          opts.init))

    lines: list[str] = []
    start = time.monotonic()
    proc = subprocess.Popen(qemu_command(boot, initrd, run_dir, opts), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines, on_line), daemon=True)
    pump.start()
    timed_out = False
    try:
        proc.wait(timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        children.stop(proc, 5)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    pump.join(timeout=5)
    elapsed = time.monotonic() - start

    status = "".join(c for c in _read(run_dir / "status") if c.isdigit())
    if timed_out:
        rc = EXIT_TIMEOUT
    else:
        rc = int(status) if status else initramfs.EXIT_UNREPORTED
    failed = rc in (EXIT_TIMEOUT, initramfs.EXIT_UNREPORTED)
    result = VMResult(rc, "".join(lines), _read(run_dir / "console.log"), elapsed,
                      timed_out, run_dir if failed else None)
    if not failed:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        os.unlink(initrd)
    return result


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
