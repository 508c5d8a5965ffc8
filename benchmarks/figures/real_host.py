"""The real lguest host as a peer: the same Guest and workloads on Linux 3.18's own /dev/lguest and on ours.

The peer is the lab's kit (shared/lab/real-host, built outside the
repository): Linux 3.18.140 built as an i386 lguest *host*, booted under
qemu-system-i386 TCG, running the unmodified 3.18 launcher on the same
patched Guest and initramfs.  LGUEST_REAL_HOST_KIT names the kit directory;
its own timed-real-host.py boots the host and stamps each serial line as it
arrives.  Ours is the same Guest through the launcher library, the
in-process Device and the core, as tests/host/test_linux_guest.py runs it
(so it needs root).  The kit's Guest files are used on both sides:

* boot: launcher start to `LGUEST-GUEST-UP` (the host prints
  HOST-LAUNCH-START just before it starts its launcher);
* 100 fork+exec and the 200k-iteration shell loop: the kit's
  initrd-bench.gz, BENCH-START -> BENCH-FORK-DONE -> BENCH-LOOP-DONE;
* the block checksum: `lgtest=blk` with a 32 MiB disk of zeros, from the
  `BLK-RO:` line to the `BLK-MD5-BEFORE:` line, i.e. `md5sum /dev/vda` cold.
  Ours runs it in shared mode (the project launcher's RAM) and in mirror
  mode (private RAM, as the historical launcher has).

Each repeat runs both sides one after the other, so machine drift hits both.
Goal (issue 14): the block checksum <= 1.0x the real host's time, both modes.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from benchmarks.figure import Context, Measurement
from benchmarks.figures._launch import LineStamps
from cuse_lguest import unicorn_build

NAME = "real_host"
SUMMARY = "boot, fork+exec, shell loop, md5sum of 32 MiB /dev/vda: ours vs the real 3.18 lguest host under qemu TCG"

KIT_VAR = "LGUEST_REAL_HOST_KIT"
KIT_FILES = ("bzImage-host", "timed-real-host.py", "host-init", "lguest32", "bzImage-guest", "initrd.gz",
             "initrd-bench.gz")
DISK_MB = 32
MEM_MB = 64                 # what host-init gives the Guest: `lguest ... 64 bzImage-guest`
TIMEOUT = 600.0             # one boot to power-off on either side
_ECHO = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")


class Unavailable(Exception):
    """The figure cannot run here; the message says why."""


def kit() -> pathlib.Path:
    """The kit directory, or Unavailable naming the variable (and what is missing from it)."""
    value = os.environ.get(KIT_VAR)
    if not value:
        raise Unavailable(f"{KIT_VAR} is unset: build the real host as shared/lab/real-host/README.md says "
                          f"and point {KIT_VAR} at its kit directory")
    path = pathlib.Path(value)
    missing = [f for f in KIT_FILES if not (path / f).is_file()]
    if missing:
        raise Unavailable(f"{KIT_VAR}={value} lacks {', '.join(missing)}")
    if os.geteuid() != 0:
        raise Unavailable("needs root: the Device maps launcher RAM via /proc/<pid>/map_files")
    return path


# --------------------------------------------------------------------------- the real host

def _real_host(where: pathlib.Path, mode: str, lgtest: str | None = None) -> tuple[dict, dict[str, float]]:
    """One boot of the real host: its JSON summary, and each line's first arrival time (s since qemu start)."""
    cmd = [sys.executable, str(where / "timed-real-host.py"), mode, "--echo", "--timeout", str(TIMEOUT)]
    if lgtest:
        cmd += ["--lgtest", lgtest]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, KIT=str(where)),
                          timeout=TIMEOUT + 60)
    summary = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    lines: dict[str, float] = {}
    for line in done.stderr.splitlines():
        found = _ECHO.match(line)
        if found:
            lines.setdefault(found.group(2), float(found.group(1)))
    if not summary.get("ok"):
        raise RuntimeError(f"the real host ({mode} {lgtest or ''}) failed: {summary}\n{done.stderr[-2000:]}")
    return summary, lines


def _first(lines: dict[str, float], prefix: str) -> float:
    for text, at in lines.items():
        if text.startswith(prefix):
            return at
    raise RuntimeError(f"the real host never printed {prefix!r}")


# --------------------------------------------------------------------------- ours

def _ours(where: pathlib.Path, initrd: str, args: list[str], disk: pathlib.Path | None,
          private: bool, prefixes: list[str]) -> tuple[LineStamps, float]:
    """One boot of the kit's Guest on our host: the line stamps and the launcher's start time."""
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Block, Launcher
    from cuse_lguest.testing.transport import DeviceTransport

    stamps = LineStamps(prefixes)
    start = time.perf_counter()
    result = Launcher(where / "bzImage-guest", mem_mb=MEM_MB, args=args, initrd=where / initrd,
                      devices=[Block(disk)] if disk else [], timeout=TIMEOUT, private=private,
                      on_output=stamps.feed).run(DeviceTransport(Device()))
    if result.error or set(prefixes) - set(stamps.at):
        raise RuntimeError(f"our Guest: error {result.error}, death {result.death}, "
                           f"missing {set(prefixes) - set(stamps.at)}\n{result.console[-2000:]}")
    return stamps, start


def run(ctx: Context) -> list[Measurement]:
    try:
        where = kit()
    except Unavailable as why:
        ctx.log(f"{NAME}: skipped: {why}")
        return []
    repeats = 1 if ctx.quick else 3
    ours: dict[str, list[float]] = {k: [] for k in ("boot", "fork", "loop", "md5-shared", "md5-mirror")}
    peer: dict[str, list[float]] = {k: [] for k in ("boot", "fork", "loop", "md5")}
    blk_marks = ["LGUEST-GUEST-UP", "BLK-RO:", "BLK-MD5-BEFORE:"]
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bench-real-host-") as tmp:
        disk = pathlib.Path(tmp) / "disk.img"
        for i in range(repeats):
            ctx.log(f"{NAME}: run {i + 1}/{repeats}: the real host, lgtest=blk with {DISK_MB} MiB")
            summary, lines = _real_host(where, "run", f"blk lgdisk={DISK_MB}")
            peer["boot"].append(summary["guest_up_s"])
            peer["md5"].append(_first(lines, "BLK-MD5-BEFORE:") - _first(lines, "BLK-RO:"))
            ctx.log(f"{NAME}: run {i + 1}/{repeats}: the real host, forkbench")
            summary, _ = _real_host(where, "bench")
            peer["fork"].append(summary["fork100_s"])
            peer["loop"].append(summary["loop200k_s"])
            for private in (False, True):
                ctx.log(f"{NAME}: run {i + 1}/{repeats}: ours, lgtest=blk ({'mirror' if private else 'shared'})")
                disk.write_bytes(bytes(DISK_MB << 20))       # host-init's disk: dd from /dev/zero
                stamps, start = _ours(where, "initrd.gz", ["lgtest=blk"], disk, private, blk_marks)
                ours["md5-mirror" if private else "md5-shared"].append(stamps.span("BLK-RO:", "BLK-MD5-BEFORE:"))
                if not private:
                    ours["boot"].append(stamps.at["LGUEST-GUEST-UP"] - start)
            ctx.log(f"{NAME}: run {i + 1}/{repeats}: ours, forkbench")
            stamps, _ = _ours(where, "initrd-bench.gz", [], None, False,
                              ["BENCH-START", "BENCH-FORK-DONE", "BENCH-LOOP-DONE"])
            ours["fork"].append(stamps.span("BENCH-START", "BENCH-FORK-DONE"))
            ours["loop"].append(stamps.span("BENCH-FORK-DONE", "BENCH-LOOP-DONE"))
    build = unicorn_build.current().describe()
    baseline = dict(baseline_name="the real 3.18 lguest host under qemu-system-i386 TCG",
                    baseline_build="Linux 3.18.140 lguest host, qemu TCG", higher_is_better=False)
    rows = [("boot", "launcher start to LGUEST-GUEST-UP", "boot", None),
            ("fork", "100 fork+exec of /bin/true", "fork", None),
            ("loop", "200k-iteration shell loop", "loop", None),
            ("md5-shared", f"md5sum of a cold {DISK_MB} MiB /dev/vda (shared)", "md5", 1.0),
            ("md5-mirror", f"md5sum of a cold {DISK_MB} MiB /dev/vda (mirror)", "md5", 1.0)]
    return [Measurement(figure=NAME, name=label, unit="s", samples=ours[key], build=build,
                        baseline_samples=peer[peer_key], goal=f"ratio <= {goal}" if goal else "",
                        goal_ratio=goal, **baseline)
            for key, label, peer_key, goal in rows]
