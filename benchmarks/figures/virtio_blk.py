"""virtio-blk throughput through tinyguest against `dd` of the same file on the host.

tinyguest's blk scenario writes `blkmb` MiB in 64 KiB requests, flushes,
and reads them back; the launcher library's block helper serves the queue
with pwrite/pread/fdatasync on the backing file.  Its transfer time is the
run's wall time minus a hello run's (boot and power-off) taken right before
it.  The baseline moves the same bytes the same way on the host: dd writes
64 KiB blocks with conv=fdatasync, then reads them back.  Shared and
mirror mode (private launcher RAM, copied by the host) both run.  tinyguest
generates and checks every byte (pattern, CRC-32, compare), so its own CPU
time is part of the figure, as a real Guest's would be.
"""
from __future__ import annotations

import pathlib
import subprocess
import tempfile
import time

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._launch import run_tinyguest
from cuse_lguest import unicorn_build

NAME = "virtio_blk"
SUMMARY = "MB/s write+read through tinyguest's virtio-blk vs dd of the same file on the host"


def _dd(disk: pathlib.Path, mb: int) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}", "bs=64k", f"count={mb * 16}", "conv=notrunc,fdatasync"],
                   check=True, capture_output=True)
    subprocess.run(["dd", f"if={disk}", "of=/dev/null", "bs=64k", f"count={mb * 16}"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def run(ctx: Context) -> list[Measurement]:
    kernel = _build.project(ctx.root, "guests", "tinyguest.elf")
    mb = 4 if ctx.quick else 16
    guest_mbs: dict[bool, list[float]] = {False: [], True: []}
    dd_mbs = []
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-blk-") as tmp:
        disk = pathlib.Path(tmp) / "disk.img"
        disk.write_bytes(bytes((mb + 1) << 20))
        for i in range(ctx.repeats):
            ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
            for private in (False, True):
                _, idle, _ = run_tinyguest(kernel, ["test=hello"], block=disk, private=private)
                _, busy, result = run_tinyguest(kernel, ["test=blk", f"blkmb={mb}"], block=disk,
                                                private=private)
                if "tinyguest: blk PASS" not in result.console:
                    raise RuntimeError(f"blk scenario failed:\n{result.console}")
                guest_mbs[private].append(2 * mb / (busy - idle))
            dd_mbs.append(2 * mb / _dd(disk, mb))
    return [Measurement(figure=NAME, name=f"tinyguest blk write+read ({mode})", unit="MiB/s",
                        samples=guest_mbs[private], build=unicorn_build.current().describe(),
                        baseline_name="dd on the host", baseline_samples=dd_mbs,
                        note=f"{mb} MiB each way, 64 KiB requests")
            for private, mode in ((False, "shared"), (True, "mirror"))]
