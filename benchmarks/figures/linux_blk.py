"""A real Linux Guest's block path: `md5sum` of a cold 32 MiB /dev/vda, shared and mirror mode.

The patched Linux 3.18 Guest (LGUEST_LINUX_KERNEL) boots LGUEST_LINUX_INITRD
in its `shell` scenario with a 32 MiB disk of random bytes, through the
launcher library, the in-process Device and the core, as
tests/host/test_linux_guest.py runs it (so it needs root).  One console line
then runs, in the Guest:

    md5sum /dev/vda     the figure: every byte through virtio-blk, cold
    md5sum /dev/vda     the baseline: the same again, now from the Guest's page cache

each between two marker lines stamped on the host as they arrive.  The
shell holds /dev/vda open meanwhile (Linux drops a block device's page
cache at its last close), and the Guest has 55 MiB of free RAM, so the
second pass finds the whole disk cached: the ratio is what the block path adds to the Guest's own work
(busybox hashes 4 KiB per read system call either way).  Both sums must
equal the host's md5 of the file, or the run fails.  Mirror mode gives the Guest private RAM, as
the historical launcher did, which the host copies at each sync point.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

from benchmarks.figure import Context, Measurement
from benchmarks.figures._launch import LineStamps
from cuse_lguest import unicorn_build

NAME = "linux_blk"
SUMMARY = "md5sum of a cold 32 MiB /dev/vda in the Linux 3.18 Guest vs the same from its page cache"

DISK_MB = 32
MEM_MB = 64
TIMEOUT = 600.0             # one boot to power-off; about 15 s on an idle machine
COMMAND = (b"exec 3</dev/vda; echo COLD-START; md5sum /dev/vda; echo COLD-END; "
           b"echo WARM-START; md5sum /dev/vda; echo WARM-END; exit\n")


class Unavailable(Exception):
    """The figure cannot run here; the message says why."""


def linux_inputs() -> tuple[pathlib.Path, pathlib.Path]:
    """LGUEST_LINUX_KERNEL and LGUEST_LINUX_INITRD, or Unavailable naming the missing variable."""
    paths = []
    for var in ("LGUEST_LINUX_KERNEL", "LGUEST_LINUX_INITRD"):
        value = os.environ.get(var)
        if not value or not os.path.isfile(value):
            raise Unavailable(f"{var} is unset or missing (see docs/linux-guest.md)")
        paths.append(pathlib.Path(value))
    if os.geteuid() != 0:
        raise Unavailable("needs root: the Device maps launcher RAM via /proc/<pid>/map_files")
    return paths[0], paths[1]


def _once(kernel: pathlib.Path, initrd: pathlib.Path, disk: pathlib.Path, digest: str,
          private: bool) -> tuple[float, float]:
    """One boot: (seconds for the cold md5sum of /dev/vda, seconds for the warm one)."""
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Block, Launcher, WaitFor
    from cuse_lguest.testing.transport import DeviceTransport

    stamps = LineStamps(["COLD-START", "COLD-END", "WARM-START", "WARM-END"])
    result = Launcher(kernel, mem_mb=MEM_MB, args=["lgtest=shell"], initrd=initrd, devices=[Block(disk)],
                      console_input=[WaitFor(b"/ # "), COMMAND], timeout=TIMEOUT, private=private,
                      on_output=stamps.feed).run(DeviceTransport(Device()))
    console = result.console.replace("\r\n", "\n")
    if result.error or "WARM-END" not in stamps.at or console.count(f"{digest}  /dev/vda\n") != 2:
        raise RuntimeError(f"Linux Guest: error {result.error}, death {result.death}, want md5 {digest}\n"
                           f"{console[-2000:]}")
    return stamps.span("COLD-START", "COLD-END"), stamps.span("WARM-START", "WARM-END")


def run(ctx: Context) -> list[Measurement]:
    try:
        kernel, initrd = linux_inputs()
    except Unavailable as why:
        ctx.log(f"{NAME}: skipped: {why}")
        return []
    samples: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    repeats = 1 if ctx.quick else 3
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-linux-blk-") as tmp:
        disk = pathlib.Path(tmp) / "disk.img"
        data = os.urandom(DISK_MB << 20)
        disk.write_bytes(data)
        digest = hashlib.md5(data).hexdigest()
        for i in range(repeats):
            for private in (False, True):
                ctx.log(f"{NAME}: run {i + 1}/{repeats} ({'mirror' if private else 'shared'})")
                cold, warm = _once(kernel, initrd, disk, digest, private)
                samples[private][0].append(cold)
                samples[private][1].append(warm)
    build = unicorn_build.current().describe()
    return [Measurement(figure=NAME, name=f"md5sum of a cold {DISK_MB} MiB /dev/vda ({mode})", unit="s",
                        samples=samples[private][0], build=build, higher_is_better=False,
                        baseline_name="the same md5sum again, from the page cache",
                        baseline_samples=samples[private][1])
            for private, mode in ((False, "shared"), (True, "mirror"))]
