"""The peer side of peer_emulator: Debian's i386 kernel under qemu-system-i386 TCG.

The kernel is Debian's `linux-image-686` (non-PAE i386, the closest stock
relative of our 32-bit Guest).  That name is a metapackage, so apt-cache
resolves it to the versioned image package, `apt-get download` fetches that
once, and only its /boot/vmlinuz-* is kept in the cache; nothing is
installed.  LGUEST_PEER_KERNEL, when set, names a kernel to use instead.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading

from benchmarks.figures._peer_workload import MarkClock

QEMU = "qemu-system-i386"
METAPACKAGE = "linux-image-686:i386"


class Unavailable(Exception):
    """The peer cannot run here; the message says why."""


def qemu_version() -> str:
    """e.g. "QEMU 7.2.22", for the baseline's name."""
    if shutil.which(QEMU) is None:
        raise Unavailable(f"{QEMU} is not on PATH")
    first = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    found = re.search(r"version (\S+)", first)
    return f"QEMU {found.group(1) if found else first}"


def _image_package() -> str:
    """The versioned package the metapackage depends on, e.g. linux-image-6.1.0-50-686:i386."""
    deps = subprocess.run(["apt-cache", "depends", METAPACKAGE], capture_output=True, text=True).stdout
    found = re.search(r"Depends: (linux-image-\S+-686(?::i386)?)\s*$", deps, re.M)
    if not found:
        raise Unavailable(f"apt-cache cannot resolve {METAPACKAGE} (is the i386 architecture added to dpkg?)")
    return found.group(1) if found.group(1).endswith(":i386") else found.group(1) + ":i386"


def kernel(cache: pathlib.Path, log) -> pathlib.Path:
    """The peer kernel: LGUEST_PEER_KERNEL, or Debian's, downloaded into `cache` on first use."""
    if os.environ.get("LGUEST_PEER_KERNEL"):
        path = pathlib.Path(os.environ["LGUEST_PEER_KERNEL"])
        if not path.is_file():
            raise Unavailable(f"LGUEST_PEER_KERNEL={path} does not exist")
        return path
    package = _image_package()
    release = package.removeprefix("linux-image-").removesuffix(":i386")
    vmlinuz = cache / "boot" / f"vmlinuz-{release}"
    if vmlinuz.is_file():
        return vmlinuz
    log(f"peer_emulator: downloading {package} into {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        got = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(pathlib.Path(tmp).glob("*.deb"))
        if got.returncode != 0 or not debs:
            raise Unavailable(f"apt-get download {package} failed: {got.stderr.strip()[-300:]}")
        # Only the kernel image: the package's modules are a few hundred MB we have no use for.
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(cache), "--wildcards", "./boot/vmlinuz-*"], stdin=tar.stdout, check=True)
        tar.stdout.close()
        if tar.wait() != 0 or not vmlinuz.is_file():
            raise Unavailable(f"{debs[0].name} holds no boot/vmlinuz-{release}")
    return vmlinuz


def run(vmlinuz: pathlib.Path, initrd: pathlib.Path, mem_mb: int, timeout: float) -> MarkClock:
    """Boot the peer kernel on the workload initrd to power-off; the marker times.

    One vCPU, TCG, no default devices (nothing the workload uses), the serial
    console on our stdout; -no-reboot makes any reset end QEMU too.
    """
    clock = MarkClock()
    console = bytearray()
    proc = subprocess.Popen([QEMU, "-accel", "tcg", "-smp", "1", "-m", str(mem_mb), "-nodefaults",
                             "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                             "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", "console=ttyS0 quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        while chunk := os.read(proc.stdout.fileno(), 4096):
            clock.feed(chunk)
            console += chunk
    finally:
        timer.cancel()
        proc.stdout.close()
        proc.wait()
    if "loop-end" not in clock.host:
        raise RuntimeError(f"{QEMU}: no loop-end marker (exit {proc.returncode}, timeout {timeout} s)\n"
                           f"{console[-2000:].decode(errors='replace')}")
    return clock
