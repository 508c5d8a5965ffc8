"""The Python launcher library through the real Device, with a scripted Guest instead of the core.

The scripted Guest plays the Guest's side of the protocol directly on the
launcher's memory (the same pages, through `base`): early-console NOTIFYs, the
status NOTIFY that starts a device, queue kicks that the Device's eventfd
table must route to the launcher's worker threads, and the IRQs they send
back.  That exercises launcher -> Device -> eventfd (pidfd_getfd) -> worker
-> LHREQ_IRQ without needing the CPU.  Real guests run in test_launcher_tinyguest.py.
"""
from __future__ import annotations

import ctypes
import errno
import os
import queue
import struct

import pytest

from cuse_lguest import abi
from cuse_lguest.core.contract import RunExit
from cuse_lguest.device import Device
from cuse_lguest.testing.kernels import make_elf
from cuse_lguest.testing.launcher import Block, Launcher, LauncherError, Rng, WaitFor
from cuse_lguest.testing.queues import Stopped
from cuse_lguest.testing.transport import DeviceTransport
from cuse_lguest.virtio import Buffer, Vring, parse_device_page

MEM_MB = 8
MEM = MEM_MB << 20


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the Device copies eventfds with pidfd_getfd and maps RAM via map_files")


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf([(0x100000, 0xC0100000, b"\x90" * 64)], entry=0x100000))
    return path


class ScriptGuest:
    """A Guest whose run() follows a generator: it yields NOTIFY values and finally a death reason."""

    def __init__(self, params, script) -> None:
        self.params = params
        self.mem = (ctypes.c_char * (params.pfnlimit * abi.PAGE_SIZE)).from_address(params.base)
        self.irqs: queue.Queue[int] = queue.Queue()
        self._death = None
        self._steps = script(self)

    @property
    def death(self):
        return self._death

    def run(self):
        for step in self._steps:
            if isinstance(step, str):
                self._death = step
                return RunExit.DEAD, 0
            return RunExit.NOTIFY, step
        self._death = "script ended"
        return RunExit.DEAD, 0

    def irq(self, irq: int) -> None:
        self.irqs.put(irq)

    def interrupt(self) -> None:
        pass

    def destroy(self) -> None:
        pass

    # --- helpers for scripts ---
    def devices(self):
        return parse_device_page(self.mem[MEM:MEM + abi.PAGE_SIZE])

    def put(self, gpa: int, data: bytes) -> None:
        self.mem[gpa:gpa + len(data)] = data

    def wait_irq(self, irq: int) -> None:
        got = self.irqs.get(timeout=60)
        assert got == irq

    def kick(self, gpa: int) -> None:
        assert self.params.claim_notify(gpa), "kick not claimed by an eventfd"


def run_script(kernel, script, **kw):
    guests = []

    def factory(params):
        guests.append(ScriptGuest(params, script))
        return guests[0]

    result = Launcher(kernel, mem_mb=MEM_MB, **kw).run(DeviceTransport(Device(factory)))
    return result, guests[0]


def start(g: ScriptGuest, rec) -> int:
    g.put(rec.status_offset + MEM, bytes([abi.VIRTIO_CONFIG_S_ACKNOWLEDGE | abi.VIRTIO_CONFIG_S_DRIVER]))
    return MEM + rec.offset


def test_early_console_and_death_reason(kernel):
    def script(g):
        assert struct.unpack_from("<QQI", bytes(g.mem[abi.BP_E820_MAP:abi.BP_E820_MAP + 20])) == (0, MEM, 1)
        assert bytes(g.mem[abi.CMDLINE_GPA:abi.CMDLINE_GPA + 15]) == b"test=hello x=1\0"
        g.put(0x2000, b"early text\0")
        yield 0x2000
        yield 0x2000 + 6
        yield "CRASH: done"

    result, g = run_script(kernel, script, args=["test=hello", "x=1"])
    assert result.output == b"early texttext"
    assert result.errno == errno.ENOENT and result.death == "CRASH: done"
    assert result.notifies == [0x2000, 0x2006] and result.error is None
    assert g.params.pfnlimit == result.pfnlimit == (MEM >> 12) + 7


def test_console_output_and_input_through_eventfds_and_irqs(kernel):
    def script(g):
        (con,) = g.devices()
        assert con.type == abi.VIRTIO_ID_CONSOLE and [q.irq for q in con.vqs] == [1, 2]
        yield start(g, con)
        rx, tx = (Vring(g.mem, q.gpa, q.num) for q in con.vqs)
        g.put(0x3000, b"virtio says hi\n")
        tx.add_chain(0, [Buffer(0x3000, 15, False)])
        g.kick(con.vqs[1].gpa)
        g.wait_irq(2)
        assert tx.used_since(0)[0].id == 0
        rx.add_chain(0, [Buffer(0x4000, 64, True)])
        g.kick(con.vqs[0].gpa)
        g.wait_irq(1)
        (used,) = rx.used_since(0)
        g.put(0x5000, b"echo:" + bytes(g.mem[0x4000:0x4000 + used.len]))
        tx.add_chain(1, [Buffer(0x5000, 5 + used.len, False)])
        g.kick(con.vqs[1].gpa)
        g.wait_irq(2)
        yield "CRASH: bye"

    result, _ = run_script(kernel, script, console_input=[WaitFor(b"says hi"), b"typed"])
    assert result.error is None, result.error
    assert result.output == b"virtio says hi\necho:typed"
    assert result.death == "CRASH: bye"


def test_block_and_rng_devices(kernel, tmp_path):
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(range(256)) * 16)          # 8 sectors

    def script(g):
        blk, rng, con = g.devices()
        assert [d.type for d in (blk, rng, con)] == [abi.VIRTIO_ID_BLOCK, abi.VIRTIO_ID_RNG, abi.VIRTIO_ID_CONSOLE]
        assert struct.unpack("<QII", blk.config) == (8, 0, 254) and blk.offers(abi.VIRTIO_BLK_F_FLUSH)
        yield start(g, blk)
        ring = Vring(g.mem, blk.vqs[0].gpa, 256)
        # write sector 2, then read sectors 1..2 back
        g.put(0x6000, abi.VIRTIO_BLK_OUTHDR.pack(abi.VIRTIO_BLK_T_OUT, 0, 2) + b"W" * 512)
        ring.add_chain(0, [Buffer(0x6000, 16, False), Buffer(0x6010, 512, False), Buffer(0x6300, 1, True)])
        g.put(0x7000, abi.VIRTIO_BLK_OUTHDR.pack(abi.VIRTIO_BLK_T_IN, 0, 1))
        ring.add_chain(3, [Buffer(0x7000, 16, False), Buffer(0x8000, 1024, True), Buffer(0x7100, 1, True)])
        g.put(0x7200, abi.VIRTIO_BLK_OUTHDR.pack(99, 0, 0))
        ring.add_chain(6, [Buffer(0x7200, 16, False), Buffer(0x7300, 1, True)])
        g.kick(blk.vqs[0].gpa)
        for _ in range(3):
            g.wait_irq(1)
            if ring.used_idx == 3:
                break
        used = ring.used_since(0)
        assert [(u.id, u.len) for u in used] == [(0, 1), (3, 1025), (6, 1)]
        assert bytes(g.mem[0x6300:0x6301]) == b"\0" and bytes(g.mem[0x7100:0x7101]) == b"\0"
        assert bytes(g.mem[0x7300:0x7301]) == bytes([abi.VIRTIO_BLK_S_UNSUPP])
        assert bytes(g.mem[0x8000:0x8200]) == bytes(range(256)) * 2 and bytes(g.mem[0x8200:0x8400]) == b"W" * 512
        yield start(g, rng)
        rring = Vring(g.mem, rng.vqs[0].gpa, 256)
        rring.add_chain(0, [Buffer(0x9000, 32, True)])
        g.kick(rng.vqs[0].gpa)
        g.wait_irq(2)
        assert rring.used_since(0)[0].len == 32
        yield "CRASH: ok"

    result, _ = run_script(kernel, script, devices=[Block(disk), Rng()])
    assert result.error is None and result.death == "CRASH: ok"
    assert disk.read_bytes()[1024:1536] == b"W" * 512


def test_reset_stops_helpers_and_clears_rings(kernel):
    def script(g):
        (con,) = g.devices()
        yield start(g, con)
        tx = Vring(g.mem, con.vqs[1].gpa, 256)
        tx.add_chain(0, [Buffer(0x3000, 1, False)])
        g.put(0x3000, b"x")
        g.kick(con.vqs[1].gpa)
        g.wait_irq(2)
        g.put(con.status_offset + MEM, b"\0")
        yield MEM + con.offset                        # reset
        assert tx.avail_idx == 0 and tx.used_idx == 0
        yield start(g, con)                           # a second start after a reset is fine
        yield "CRASH: reset ok"

    result, _ = run_script(kernel, script)
    assert result.error is None and result.death == "CRASH: reset ok" and result.output == b"x"


@pytest.mark.parametrize("value, message", [
    (MEM + 0x7000 + abi.PAGE_SIZE, "Bad NOTIFY"),
    (MEM + abi.PAGE_SIZE, "Notification on console before setup!"),
])
def test_fatal_notifies_end_the_run(kernel, value, message):
    def script(g):
        yield value
        yield "CRASH: not reached"

    result, _ = run_script(kernel, script)
    assert result.error.startswith(message) and result.death is None


def test_second_start_while_running_is_fatal(kernel):
    def script(g):
        (con,) = g.devices()
        yield start(g, con)
        yield start(g, con)
        yield "CRASH: not reached"

    result, _ = run_script(kernel, script)
    assert result.error == "Device console features finalized twice"


class _IrqTransport:
    """Answers every write with one result: just enough for Launcher._send_irq."""
    word = 4

    def __init__(self, result: int) -> None:
        self.result = result

    def write(self, data: bytes) -> int:
        return self.result


def test_an_irq_for_a_guest_that_already_died_stops_the_helper_quietly(kernel):
    # A helper finishing a request just as the Guest powers off gets ENOENT:
    # the run loop reports the death, so the helper must not fail the launch.
    launcher = Launcher(kernel, mem_mb=MEM_MB)
    with pytest.raises(Stopped):
        launcher._send_irq(_IrqTransport(-errno.ENOENT), 2)
    with pytest.raises(LauncherError, match="Triggering irq 2"):
        launcher._send_irq(_IrqTransport(-errno.EINVAL), 2)
