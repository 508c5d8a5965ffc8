"""Whole Guests through the Python launcher library and the in-process Device.

The launcher (cuse_lguest.testing.launcher) lays out RAM, devices and boot
parameters as the C launcher does; the Device and the core serve it.  What
the figures add is only *when* things happened, through the public seams:
a transport that notes the first NOTIFY the launcher reads, and console
input items that run once a marker has appeared on the console.
"""
from __future__ import annotations

import pathlib
import threading
import time
from typing import Iterable, Iterator

from cuse_lguest.device import Device
from cuse_lguest.testing.launcher import Block, LaunchResult, Launcher, WaitFor
from cuse_lguest.testing.transport import DeviceTransport


class StampedTransport(DeviceTransport):
    """DeviceTransport that notes when read() first returned a NOTIFY (the early console's first line)."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.first_notify: float | None = None

    def read(self, size: int) -> bytes | int:
        got = super().read(size)
        if self.first_notify is None and isinstance(got, bytes):
            self.first_notify = time.perf_counter()
        return got


def run_tinyguest(kernel: pathlib.Path, args: list[str], block: pathlib.Path | None = None,
                  mem_mb: int = 32, private: bool = False) -> tuple[float, float, LaunchResult]:
    """Boot tinyguest to power-off: (seconds to the first console line, seconds in all, result).

    `private` gives the Guest private RAM, as the historical launcher did: the host mirrors it.
    """
    transport = StampedTransport(Device())
    start = time.perf_counter()
    result = Launcher(kernel, mem_mb=mem_mb, args=args, devices=[Block(block)] if block else [],
                      timeout=120, private=private).run(transport)
    elapsed = time.perf_counter() - start
    if result.error or result.death != "CRASH: tinyguest: done" or transport.first_notify is None:
        raise RuntimeError(f"tinyguest {args}: error {result.error}, death {result.death}\n{result.console}")
    return transport.first_notify - start, elapsed, result


def time_to_marker(kernel: pathlib.Path, initrd: pathlib.Path | None, args: list[str], marker: bytes,
                   mem_mb: int, timeout: float) -> float:
    """Boot a kernel until `marker` appears on its console, then stop it; seconds from the start."""
    transport = DeviceTransport(Device())
    seen: list[float] = []

    def console_input() -> Iterator[bytes | WaitFor]:
        yield WaitFor(marker)            # resumes only once the marker is on the console
        seen.append(time.perf_counter())
        transport.interrupt()            # the read in flight ends: the launcher stops
    start = time.perf_counter()
    result = Launcher(kernel, mem_mb=mem_mb, args=args, initrd=initrd, console_input=console_input(),
                      timeout=timeout).run(transport)
    if not seen:
        raise RuntimeError(f"{kernel}: no {marker!r} on the console (error {result.error}, "
                           f"death {result.death})\n{result.console[-2000:]}")
    return seen[0] - start


class ConsoleLines:
    """Console bytes fed as they arrive, handed on a whole line at a time with the host time it completed.

    The early console and the virtio console feed from two threads, so the
    split is under a lock; a subclass says what a line means in `line()`.
    """

    def __init__(self) -> None:
        self._partial = b""
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        now = time.perf_counter()
        with self._lock:
            *lines, self._partial = (self._partial + data).split(b"\n")
            for raw in lines:
                self.line(raw, now)

    def line(self, raw: bytes, now: float) -> None:
        raise NotImplementedError


class LineStamps(ConsoleLines):
    """Notes when the first line starting with each prefix completed.

    The clock is the host's (time.perf_counter at the line's newline), so it
    means the same for any guest whose console reaches us as a stream.  The
    tty's carriage returns are dropped before matching.
    """

    def __init__(self, prefixes: Iterable[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.at: dict[str, float] = {}
        self.lines: dict[str, str] = {}

    def line(self, raw: bytes, now: float) -> None:
        line = raw.decode(errors="replace").replace("\r", "")
        for prefix in self.prefixes:
            if prefix not in self.at and line.startswith(prefix):
                self.at[prefix] = now
                self.lines[prefix] = line

    def span(self, start: str, end: str) -> float:
        """Seconds from the `start` line to the `end` line; KeyError if either never came."""
        return self.at[end] - self.at[start]
