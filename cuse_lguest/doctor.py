"""`cuse-lguest doctor`: check this machine and the installation, and say what to fix.

Each check prints one plain line, plus the fix when something is wrong.  The exit
status answers one question: can the service run here, either directly (root,
libfuse3, Unicorn, /dev/cuse or else /dev/fuse) or, with neither, inside the demo's
VM (qemu and a Debian kernel)?  Things that only slow it down (a stock Unicorn) or only matter
for building tests (gcc -m32) are warnings, never failures.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import glob
import os
import shutil
import subprocess
import tempfile

from cuse_lguest import transports

OK, WARN, FAIL = "ok", "WARN", "FAIL"


@dataclasses.dataclass(frozen=True)
class Check:
    status: str
    what: str
    fix: str = ""


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check(OK, "running as root")
    return Check(FAIL, "not root: the service opens /dev/cuse (or mounts FUSE) and duplicates launcher fds "
                       "(pidfd_getfd)",
                 "run it as root (sudo)")


def check_cuse() -> Check:
    if transports.CUSE_DEVICE.exists():
        return Check(OK, "/dev/cuse present: the service can serve /dev/lguest on this host")
    if transports.FUSE_DEVICE.exists():
        return Check(OK, "/dev/cuse missing but /dev/fuse present: the service serves /dev/lguest on this host "
                         "through FUSE (a regular file, mounted; see docs/operations.md)")
    return Check(WARN, "neither /dev/cuse nor /dev/fuse: `cuse-lguest demo` will run the service inside a VM",
                 "`modprobe cuse` (or `modprobe fuse`) if this kernel has it (not possible in most containers)")


def check_libfuse() -> Check:
    try:
        lib = ctypes.CDLL("libfuse3.so.3")
    except OSError:
        return Check(FAIL, "libfuse3 not found", "apt-get install fuse3 libfuse3-dev")
    lib.fuse_pkgversion.restype = ctypes.c_char_p
    return Check(OK, f"libfuse3 {lib.fuse_pkgversion().decode()}")


def check_unicorn() -> Check:
    try:
        from cuse_lguest import unicorn_build
        build = unicorn_build.current()
    except ImportError as e:
        return Check(FAIL, f"Unicorn cannot be imported ({e})", "run ./bootstrap install")
    if build.patched:
        return Check(OK, f"Unicorn {build.describe()}: the fast-store build")
    return Check(WARN, f"Unicorn {build.version} is the stock build: guest stores about 10x slower",
                 unicorn_build.FIX)


def vm_tier() -> tuple[str | None, list[str]]:
    """qemu-system-x86_64's path and the Debian kernels that ship the cuse module."""
    kernels = [k for k in sorted(glob.glob("/boot/vmlinuz-*"))
               if glob.glob(f"/lib/modules/{k.removeprefix('/boot/vmlinuz-')}/kernel/fs/fuse/cuse.ko*")]
    return shutil.which("qemu-system-x86_64"), kernels


def check_vm(cuse_here: bool) -> Check:
    qemu, kernels = vm_tier()
    if qemu and kernels:
        return Check(OK, f"VM tier: {qemu}, kernel {kernels[-1]}")
    missing = " and ".join(m for m, have in (("qemu-system-x86_64", qemu),
                                               ("a Debian kernel with cuse.ko", kernels)) if not have)
    return Check(WARN if cuse_here else FAIL, f"VM tier unavailable: no {missing}",
                 "apt-get install qemu-system-x86 linux-image-amd64")


def check_gcc_m32() -> Check:
    fix = "apt-get install gcc gcc-multilib (needed to build the test guests and the 32-bit launcher)"
    if not shutil.which("gcc"):
        return Check(WARN, "gcc not found", fix)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        r = subprocess.run(["gcc", "-m32", src, "-o", os.path.join(d, "t")], capture_output=True)
    if r.returncode == 0:
        return Check(OK, "gcc -m32 builds 32-bit programs")
    return Check(WARN, "gcc -m32 cannot build 32-bit programs", fix)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """doctor takes no options."""


def run(args: argparse.Namespace) -> int:
    cuse = check_cuse()
    checks = {"root": check_root(), "cuse": cuse, "libfuse": check_libfuse(),
              "unicorn": check_unicorn(), "vm": check_vm(cuse.status == OK),
              "gcc": check_gcc_m32()}
    for c in checks.values():
        print(f"{c.status:4}  {c.what}")
        if c.fix and c.status != OK:
            print(f"      fix: {c.fix}")
    can_run = all(c.status != FAIL for c in checks.values())
    if can_run:
        print("the service can run here" + ("" if cuse.status == OK else " (inside the demo's VM)"))
    else:
        print("the service cannot run here: fix the FAIL lines above")
    return 0 if can_run else 1
