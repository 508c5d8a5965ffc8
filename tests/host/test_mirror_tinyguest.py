"""tinyguest through mirror mode: Python launcher with private RAM -> Device -> core on a mirrored copy.

The same scenarios and assertions as test_launcher_tinyguest.py (shared
mode), with the launcher's RAM a MAP_PRIVATE /dev/zero mapping the host
cannot map, so every byte the Guest and the launcher exchange crosses at a
sync point.  Plus what only mirror mode can get wrong: 32 MiB through the
block device and back, checksummed; a launcher whose memory disappears; and
the C launcher's own --private RAM in another process.
"""
from __future__ import annotations

import os
import pathlib
import signal
import struct
import subprocess
import time
import zlib

import pytest

from cuse_lguest import abi
from cuse_lguest.device import Device
from cuse_lguest.memory.mirror import MirrorGuestMemory
from cuse_lguest.testing.launcher import Block, Launcher, WaitFor
from cuse_lguest.testing.transport import DeviceTransport
from cuse_lguest.testing import blkpattern

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "native" / "build"


@pytest.fixture(scope="module")
def tinyguest() -> pathlib.Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: the Device reads launcher memory and uses pidfd_getfd")
    subprocess.run(["make", "-s", "-C", str(ROOT / "native" / "guests" / "tinyguest"), f"BUILD={BUILD}"], check=True)
    return BUILD / "guests" / "tinyguest.elf"


class Recording:
    """The real guest factory, keeping each Guest so a test can look at its memory's counters."""

    def __init__(self) -> None:
        from cuse_lguest.core.guest import create_guest
        self._create = create_guest
        self.guests = []

    def __call__(self, params):
        guest = self._create(params)
        self.guests.append(guest)
        return guest


def boot(kernel: pathlib.Path, scenario: str, *, args=(), launcher=Launcher, timeout=120, **kw):
    factory = Recording()
    result = launcher(kernel, mem_mb=32, args=[f"test={scenario}", *args], timeout=timeout, private=True,
                      **kw).run(DeviceTransport(Device(factory)))
    assert len(factory.guests) == 1
    memory = factory.guests[0].memory
    assert isinstance(memory, MirrorGuestMemory), "private launcher RAM must be mirrored"
    return result, memory


def finished(result) -> None:
    assert result.error is None, f"{result.error}\n{result.console}"
    assert result.death == "CRASH: tinyguest: done", result.console


def test_hello_uses_early_then_virtio_console(tinyguest):
    result, memory = boot(tinyguest, "hello")
    finished(result)
    assert "tinyguest: hello from the early console\n" in result.console
    assert "tinyguest: hello PASS console=virtio\n" in result.console
    counts = memory.counters()
    assert counts["pushed_bytes"] > 0 and counts["pulled_bytes"] >= result.pfnlimit * abi.PAGE_SIZE
    assert counts["notifies"] >= 3 and counts["run_entries"] >= 3


def test_echo_reads_console_input_from_queue_0(tinyguest):
    result, memory = boot(tinyguest, "echo",
                          console_input=[WaitFor(b"echo ready"), b"hello there\n", b"quit\n"])
    finished(result)
    after = result.console.split("tinyguest: echo ready\n", 1)[1]
    assert after.startswith("hello there\nquit\n")
    assert "tinyguest: echo PASS lines=2 bytes=17\n" in after
    assert memory.counters()["code_drops"] > 0        # input buffers were pulled into Guest RAM


def test_blk_writes_reads_and_flushes_the_backing_file(tinyguest, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xAB" * (1 << 20))
    result, _ = boot(tinyguest, "blk", devices=[Block(disk)])
    finished(result)
    assert "head=abababababababab" in result.console
    assert "tinyguest: blk PASS sectors=64 start=0" in result.console and "flush=ok capacity=2048" in result.console
    data = disk.read_bytes()
    for s in (0, 17, 63):
        assert data[s * 512:(s + 1) * 512] == blkpattern.sector(s)
    assert data[64 * 512:] == b"\xAB" * ((1 << 20) - 64 * 512)


def test_32_mib_written_and_read_back_intact(tinyguest, tmp_path):
    """Every sector crosses twice: pushed to the launcher as a write, pulled back as a read.

    The Guest compares what it read with what it wrote; we check the file
    against the Guest's CRC and the pattern, and that nothing past the
    written range was touched.  (About 5-9 s on the 2-core host.)
    """
    disk = tmp_path / "disk.img"
    size = 33 << 20
    with open(disk, "wb") as f:
        f.truncate(size)
    result, memory = boot(tinyguest, "blk", args=["blkmb=32", "blkstart=8"], devices=[Block(disk)], timeout=600)
    finished(result)
    data = disk.read_bytes()
    written = data[8 * 512:8 * 512 + (32 << 20)]
    assert f"tinyguest: blk PASS sectors=65536 start=8 crc={zlib.crc32(written):08x}" in result.console
    for s in (8, 4096, 65543):
        assert data[s * 512:(s + 1) * 512] == blkpattern.sector(s)
    assert data[:8 * 512] == bytes(8 * 512) and data[8 * 512 + (32 << 20):] == bytes(size - 8 * 512 - (32 << 20))
    counts = memory.counters()
    assert counts["pushed_bytes"] >= 32 << 20 and counts["pulled_bytes"] >= 32 << 20


class VanishingLauncher(Launcher):
    """A launcher that unmaps its guest RAM right after the Guest's first early-console line."""

    def _lay_out(self, ram):
        self.ram = ram
        return super()._lay_out(ram)

    def _emit(self, data: bytes) -> None:
        super()._emit(data)
        if b"hello from the early console" in self._out:    # early-console lines come in 16-byte pieces
            self.ram.close()


def test_launcher_that_unmaps_its_memory_kills_the_guest_cleanly(tinyguest):
    result, _ = boot(tinyguest, "hello", launcher=VanishingLauncher)
    assert result.death is not None and result.death.startswith("launcher memory gone: "), result
    assert "hello PASS" not in result.console
    again, _ = boot(tinyguest, "hello")          # the service is fine: the next Guest runs
    finished(again)


# ---------------------------------------------------------------------------
# The C launcher's --private RAM, in its own process.
#
# Without /dev/lguest the C launcher cannot run a Guest, but it still lays out
# its private RAM (kernel file mapped privately over /dev/zero) and sends
# INITIALIZE when LGUEST_DEVICE names a regular file (see
# test_launcher_native.py).  The test then plays the launcher's read loop
# itself: it hands those INITIALIZE words to a Device under the launcher's
# pid, so the Guest runs on a mirror of the other process's memory, and reads
# each early-console string back out of *that* process.

class PrivateCLauncher:
    def __init__(self, tmp: pathlib.Path, kernel: pathlib.Path, args: list[str]) -> None:
        subprocess.run(["make", "-s", "-C", str(ROOT / "native" / "launcher"), f"BUILD={BUILD}"], check=True)
        self.node = tmp / "node"
        self.node.write_bytes(b"")
        self.proc = subprocess.Popen([str(BUILD / "launcher" / "lguest64"), "--private", "32", str(kernel), *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "LGUEST_DEVICE": str(self.node)}, start_new_session=True)
        self.init = self._initialize_words()
        self.base = struct.unpack_from("<Q", self.init, 8)[0]
        self.device = Device()
        self.fh = self.device.open()

    def _initialize_words(self) -> bytes:
        deadline = time.monotonic() + 60
        while self.node.stat().st_size < 32:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the launcher never wrote INITIALIZE"
            time.sleep(0.01)
        return self.node.read_bytes()[:32]

    def maps_line(self) -> str:
        with open(f"/proc/{self.proc.pid}/maps") as f:
            return next(line for line in f if int(line.split("-")[0], 16) <= self.base < int(line.split()[0].split("-")[1], 16))

    def read_string(self, gpa: int) -> bytes:
        with open(f"/proc/{self.proc.pid}/mem", "rb") as f:
            f.seek(self.base + gpa)
            return f.read(64).split(b"\0", 1)[0]

    def run(self, size: int = 8) -> bytes | int:
        return self.device.read(self.proc.pid, self.fh, 0, size)

    def close(self) -> None:
        self.device.release(self.fh)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture
def c_launcher(tinyguest, tmp_path):
    runs = []

    def start(*args: str) -> PrivateCLauncher:
        runs.append(PrivateCLauncher(tmp_path, tinyguest, list(args)))
        return runs[-1]
    yield start
    for run in runs:
        run.close()


def test_c_launcher_private_ram_is_mirrored_across_processes(c_launcher):
    launcher = c_launcher("test=hello", "nodev=1")
    assert "rw-p" in launcher.maps_line()                        # MAP_PRIVATE: shared mode is impossible
    assert launcher.device.write(launcher.proc.pid, launcher.fh, 0, launcher.init) == 24
    out = b""
    while isinstance(got := launcher.run(), bytes):
        out += launcher.read_string(struct.unpack("<Q", got)[0])  # the bytes as they are in *its* memory
    assert -got == 2                                             # ENOENT: the Guest is dead
    assert launcher.run(1023) == b"CRASH: tinyguest: done\0"
    text = out.decode()
    assert "tinyguest: hello from the early console\n" in text and "tinyguest: hello PASS console=early\n" in text


def test_c_launcher_killed_mid_run_is_a_clean_guest_death(c_launcher):
    launcher = c_launcher("test=hello", "nodev=1")
    assert launcher.device.write(launcher.proc.pid, launcher.fh, 0, launcher.init) == 24
    assert isinstance(launcher.run(), bytes)                     # the Guest is running and talking
    os.killpg(launcher.proc.pid, signal.SIGKILL)
    launcher.proc.wait()                                         # reaped: its memory and its pid are gone
    assert launcher.run() == -2                                  # ENOENT, and then the reason
    reason = launcher.run(1023)
    assert reason.startswith(b"launcher memory gone: ") and reason.endswith(b"\0"), reason
    other = c_launcher("test=hello", "nodev=1")                  # the service goes on
    assert other.device.write(other.proc.pid, other.fh, 0, other.init) == 24
