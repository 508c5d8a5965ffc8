"""`cuse-lguest demo`: start the service and boot the demo guest on a genuine /dev/lguest.

The demo always goes through the kernel, never a stand-in: its CUSE driver
when this host has /dev/cuse, else its FUSE driver (the service mounts a
one-file filesystem over /dev/lguest; see cuse/fusenode.py), which needs no
VM.  Only a host with neither, or `--vm`, gets the demo inside a throwaway VM
running Debian's stock kernel (`cuse_lguest.vm`); the VM runs this very
command with --no-vm, so every path is one code path.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

from . import children, transports
from .vm.job import PROJECT_ROOT

BUILD = PROJECT_ROOT / "native" / "build"
DEFAULT_LAUNCHER = BUILD / "launcher" / "lguest32"
DEMO_GUEST = BUILD / "guests" / "tinyguest.elf"
DEMO_MEM_MB = "16"
PASS_MARK = "tinyguest: hello PASS"
NODE = pathlib.Path("/dev/lguest")
NODE_WAIT_S = 60.0
VM_TIMEOUT_S = 600.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", type=pathlib.Path, default=None,
                   help=f"launcher to run (default: the project's {DEFAULT_LAUNCHER.relative_to(PROJECT_ROOT)})")
    p.add_argument("--no-vm", action="store_true",
                   help="fail instead of falling back to a VM when this host has neither /dev/cuse "
                        "nor /dev/fuse")
    p.add_argument("--vm", action="store_true",
                   help="run inside the VM (through CUSE) even if this host could serve /dev/lguest itself")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help=f"launcher arguments (default: {DEMO_MEM_MB} <tinyguest.elf> test=hello)")


def say(msg: str) -> None:
    print(f"cuse-lguest demo: {msg}", file=sys.stderr, flush=True)


def _cuse_available() -> bool:
    """True if /dev/cuse exists, loading the module first when we may."""
    if not transports.CUSE_DEVICE.exists() and os.geteuid() == 0:
        subprocess.run(["modprobe", "-q", "cuse"], stderr=subprocess.DEVNULL)
    return transports.CUSE_DEVICE.exists()


def _served(transport: str) -> bool:
    """Is NODE served?  Through FUSE the bare placeholder file is not enough: our mount must be on it."""
    if transport == "cuse":
        return NODE.exists()
    from .cuse.fusenode import is_served
    return is_served(NODE)


def _launch_argv(args: argparse.Namespace) -> list[str]:
    launcher = args.launcher or DEFAULT_LAUNCHER
    rest = [a for a in args.args if a != "--"] if args.args else []
    return [str(launcher), *(rest or [DEMO_MEM_MB, str(DEMO_GUEST), "test=hello"])]


def _missing(argv: list[str], default_guest: bool) -> str | None:
    needed = [pathlib.Path(argv[0])] + ([DEMO_GUEST] if default_guest else [])
    for path in needed:
        if not path.exists():
            return f"{path} does not exist (build it with: make -C {PROJECT_ROOT / 'native'})"
    return None


def _start_service(log: pathlib.Path, transport: str) -> subprocess.Popen:
    out = log.open("w")
    server = subprocess.Popen([sys.executable, "-m", "cuse_lguest.cli", "serve", "--transport", transport],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    deadline = time.monotonic() + NODE_WAIT_S
    while not _served(transport):
        if server.poll() is not None:
            raise RuntimeError(f"cuse-lguest serve exited with status {server.returncode}")
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"{NODE} did not appear within {NODE_WAIT_S:.0f} s")
        time.sleep(0.05)
    return server


def _stop_service(server: subprocess.Popen) -> int:
    return children.stop(server, 10)


def _run_launcher(argv: list[str]) -> tuple[int, bool]:
    """Run the launcher with its output shown live; report whether the demo guest passed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    passed = False
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        passed = passed or PASS_MARK in line
        sys.stdout.write(line)
        sys.stdout.flush()
    return proc.wait(), passed


def _on_host(args: argparse.Namespace, argv: list[str], transport: str) -> int:
    if os.geteuid() != 0:
        say(f"needs root: the service opens /dev/{transport} (run: sudo cuse-lguest demo)")
        return 1
    server = None
    with tempfile.TemporaryDirectory(prefix="cuse-lguest-demo-") as tmp:
        log = pathlib.Path(tmp) / "serve.log"
        if _served(transport):
            say(f"{NODE} already exists; using the service that is running")
        else:
            try:
                server = _start_service(log, transport)
            except RuntimeError as e:
                say(f"{e}; its log:")
                sys.stderr.write(log.read_text(errors="replace"))
                return 1
            say(f"service up: {NODE} served by cuse-lguest serve (pid {server.pid})")
        say("running: " + " ".join(shlex.quote(a) for a in argv))
        try:
            rc, passed = _run_launcher(argv)
        finally:
            served = _stop_service(server) if server is not None else 0
        say(f"launcher exited with status {rc}")
        if served != 0:
            say(f"cuse-lguest serve exited with status {served}; its log:")
            sys.stderr.write(log.read_text(errors="replace"))
    if args.launcher is not None or args.args:
        return rc
    if not passed:
        say(f"the demo guest did not print '{PASS_MARK}'")
    else:
        say("demo passed: the guest powered off, which lguest has always reported as "
            "'CRASH: <message>' with launcher status 1")
    return 0 if passed and served == 0 else 1


def _in_vm(args: argparse.Namespace) -> int:
    from . import vm

    inner = [sys.executable, "-m", "cuse_lguest.cli", "demo", "--no-vm"]
    if args.launcher is not None:
        inner += ["--launcher", str(args.launcher.resolve())]
    if args.args:
        inner += ["--", *[a for a in args.args if a != "--"]]
    # Same working directory, so relative launcher arguments mean the same files
    # (the VM shares / read-only; its /tmp, /run and /var/tmp are fresh tmpfs).
    opts = vm.VMOptions(timeout=VM_TIMEOUT_S, cwd=os.getcwd())
    result = vm.run(" ".join(shlex.quote(a) for a in inner), opts,
                    on_line=lambda line: (sys.stdout.write(line), sys.stdout.flush()))
    if result.vm_failed:
        say(result.diagnosis())
    return result.returncode


def run(args: argparse.Namespace) -> int:
    argv = _launch_argv(args)
    problem = _missing(argv, default_guest=not args.args)
    if problem:
        say(problem)
        return 1
    if args.vm:
        say("running inside a VM as asked (Debian's stock kernel under QEMU/TCG)")
        return _in_vm(args)
    if _cuse_available():
        return _on_host(args, argv, "cuse")
    if transports.FUSE_DEVICE.exists():
        say(f"this kernel has no /dev/cuse, so {NODE} is served through FUSE on this host (no VM)")
        return _on_host(args, argv, "fuse")
    if args.no_vm:
        say("this kernel has neither /dev/cuse (CUSE) nor /dev/fuse (FUSE), and --no-vm was given")
        return 1
    say("this kernel has neither /dev/cuse nor /dev/fuse, so the demo runs inside a VM with Debian's "
        "stock kernel (QEMU/TCG, a few seconds to boot)")
    return _in_vm(args)
