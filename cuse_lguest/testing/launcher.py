"""An lguest launcher as a Python library, for tests that run a Guest in this process.

It does what native/launcher does (spec §2), minus the process tricks:
guest RAM is a GuestRam (a shared memfd, like the C launcher's default),
queue helpers are threads instead of clone()d processes, and the device is
reached through a Transport (the in-process Device, or a real node).

    result = Launcher(kernel, args=["test=hello"]).run(DeviceTransport(Device()))

The calling thread sends INITIALIZE and then runs the Guest with reads, as
the device requires (only the INITIALIZE thread may run the Guest).  The run
ends when the Guest dies, the read fails, the launcher hits a fatal
condition (the C launcher would exit), or the timeout interrupts the read.
"""
from __future__ import annotations

import errno
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from cuse_lguest import abi
from cuse_lguest.testing.guestram import GuestRam, PrivateGuestRam, load_kernel
from cuse_lguest.testing.layout import DeviceArea, VirtDevice, block_config, place_initrd, write_boot_params
from cuse_lguest.testing.queues import (BlockService, ConsoleInput, ConsoleOutput, QueueWorker, Stopped, WaitFor,
                                        eventfd_request, irq_request, rng_service)
from cuse_lguest.testing.transport import Transport
from cuse_lguest.virtio import Vring

__all__ = ["Block", "Rng", "WaitFor", "LaunchResult", "Launcher", "LauncherError"]


@dataclass(frozen=True)
class Block:
    """A virtio block device backed by `path` (opened read-write)."""
    path: str | os.PathLike


@dataclass(frozen=True)
class Rng:
    """A virtio entropy device."""


class LauncherError(Exception):
    """Something the C launcher would exit for."""


@dataclass
class LaunchResult:
    output: bytes = b""                 # console: early-console strings and the virtio console, in order
    death: str | None = None            # the Guest's kill reason (the read after ENOENT)
    errno: int | None = None            # errno of the read that ended the run (ENOENT, ERESTART, EINTR...)
    error: str | None = None            # launcher-side failure (Bad NOTIFY, a helper error, a timeout)
    notifies: list[int] = field(default_factory=list)   # every value read() returned, in order
    pfnlimit: int = 0

    @property
    def console(self) -> str:
        return self.output.decode(errors="replace")


class Launcher:
    """Lay out one Guest and run it once through a transport."""

    def __init__(self, kernel: str | os.PathLike, *, mem_mb: int = 32, args: Iterable[str] = (),
                 devices: Iterable[Block | Rng] = (), initrd: str | os.PathLike | None = None,
                 console_input: Iterable[bytes | WaitFor] = (), timeout: float | None = 60.0,
                 private: bool = False, on_output: Callable[[bytes], None] | None = None) -> None:
        self.kernel = kernel
        self.private = private          # RAM as the historical launcher had it: the host must mirror it
        self.mem = mem_mb << 20
        self.args = list(args)
        self.device_specs = list(devices)
        self.initrd = initrd
        self.console_input = console_input
        self.on_output = on_output      # sees console bytes as they arrive, e.g. to timestamp markers
        self.timeout = timeout
        self._out = bytearray()
        self._out_cond = threading.Condition()
        self._failure: str | None = None
        self._wake_supervisor = threading.Event()
        self._workers: dict[str, list[QueueWorker]] = {}
        self._block_fds: list[int] = []

    # ------------------------------------------------------------------ console
    def _emit(self, data: bytes) -> None:
        with self._out_cond:
            self._out += data
            self._out_cond.notify_all()
        if self.on_output is not None:
            self.on_output(data)

    def _wait_output(self, marker: bytes, stopping: threading.Event) -> None:
        with self._out_cond:
            while marker not in self._out and not stopping.is_set():
                self._out_cond.wait(0.1)

    # ------------------------------------------------------------------ layout
    def _lay_out(self, ram: GuestRam) -> tuple[int, DeviceArea, list[tuple[VirtDevice, list]]]:
        area = DeviceArea(ram.buf, ram.mem, ram.size)
        devices = []
        for spec in self.device_specs:
            if isinstance(spec, Block):
                fd = os.open(spec.path, os.O_RDWR | os.O_CLOEXEC)
                self._block_fds.append(fd)
                size = os.fstat(fd).st_size
                dev = area.add_device("block", abi.VIRTIO_ID_BLOCK, 1,
                                      (abi.VIRTIO_BLK_F_SEG_MAX, abi.VIRTIO_BLK_F_FLUSH),
                                      block_config(size // abi.SECTOR_SIZE))
                devices.append((dev, [BlockService(fd, size)]))
            else:
                devices.append((area.add_device("rng", abi.VIRTIO_ID_RNG, 1), [rng_service]))
        console = area.add_device("console", abi.VIRTIO_ID_CONSOLE, 2)   # always present, always last
        devices.append((console, [ConsoleInput(self.console_input, self._wait_output), ConsoleOutput(self._emit)]))
        start = load_kernel(ram.buf, self.kernel)
        initrd_len = place_initrd(ram.buf, ram.mem, self.initrd) if self.initrd else 0
        write_boot_params(ram.buf, ram.mem, self.args, initrd_len)
        return start, area, devices

    # ------------------------------------------------------------------ run
    def run(self, transport: Transport) -> LaunchResult:
        if self.timeout is not None and not transport.can_interrupt:
            raise ValueError("a timeout needs a transport whose reads can be interrupted")
        result = LaunchResult()
        done = threading.Event()
        with (PrivateGuestRam if self.private else GuestRam)(self.mem) as ram:
            start, area, devices = self._lay_out(ram)
            result.pfnlimit = area.limit // abi.PAGE_SIZE
            supervisor = threading.Thread(target=self._supervise, args=(transport, done), daemon=True)
            try:
                self._initialize(transport, ram.base, result.pfnlimit, start)
                if transport.can_interrupt:
                    supervisor.start()
                self._run_loop(transport, ram, area.limit, devices, result)
            finally:
                done.set()
                self._wake_supervisor.set()
                if supervisor.is_alive():
                    supervisor.join()
                for dev, _ in devices:
                    self._stop_workers(dev)
                transport.close()
                for fd in self._block_fds:
                    os.close(fd)
        result.output = bytes(self._out)
        result.error = result.error or self._failure
        return result

    def _initialize(self, transport: Transport, base: int, pfnlimit: int, start: int) -> None:
        fmt = "<4I" if transport.word == 4 else "<4Q"
        got = transport.write(struct.pack(fmt, abi.LHREQ_INITIALIZE, base, pfnlimit, start))
        if got < 0:
            raise LauncherError(f"INITIALIZE failed: {os.strerror(-got)}")

    def _supervise(self, transport: Transport, done: threading.Event) -> None:
        """After a failure (or the timeout), keep interrupting until the run loop has left.

        An interrupt only ends a read already in flight, so one sent just
        before the loop's next read would be lost: hence the repetition.
        """
        if not self._wake_supervisor.wait(self.timeout):
            self._fail(f"timed out after {self.timeout} s")
        while not done.is_set():
            transport.interrupt()
            done.wait(0.2)

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
        self._wake_supervisor.set()

    def _run_loop(self, transport: Transport, ram: GuestRam, limit: int, devices, result: LaunchResult) -> None:
        word = transport.word
        by_record = {dev.record_gpa: (dev, services) for dev, services in devices}
        kicks = {vq.gpa: dev for dev, _ in devices for vq in dev.vqs}
        while self._failure is None:
            got = transport.read(word)
            if isinstance(got, int):
                result.errno = -got
                if -got == errno.ENOENT:
                    reason = transport.read(1023)
                    result.death = reason.rstrip(b"\0").decode(errors="replace") if isinstance(reason, bytes) \
                        else f"(reason unreadable: {os.strerror(-reason)})"
                elif -got != abi.ERESTART:
                    self._fail(f"Running guest failed: {os.strerror(-got)}")
                return
            value = int.from_bytes(got, "little")
            result.notifies.append(value)
            if value in by_record:
                self._status_changed(transport, ram, *by_record[value])
            elif value in kicks:
                self._fail(f"Notification on {kicks[value].name} before setup!")
            elif value >= limit:
                self._fail(f"Bad NOTIFY {value:#x}")
            else:
                end = ram.buf.find(b"\0", value, limit)
                self._emit(bytes(ram.buf[value:end if end >= 0 else limit]))

    # ------------------------------------------------------------------ device status (spec §2.8)
    def _status_changed(self, transport: Transport, ram: GuestRam, dev: VirtDevice, services: list) -> None:
        status = ram.buf[dev.status_gpa]
        running = dev.name in self._workers
        if status == 0:
            self._reset(ram, dev)
        elif status & abi.VIRTIO_CONFIG_S_FAILED:
            if running:
                self._reset(ram, dev)
        elif running:
            self._fail(f"Device {dev.name} features finalized twice")
        else:
            self._start(transport, ram, dev, services)

    def _start(self, transport: Transport, ram: GuestRam, dev: VirtDevice, services: list) -> None:
        workers = []
        for i, (vq, service) in enumerate(zip(dev.vqs, services)):
            worker = QueueWorker(f"{dev.name}-q{i}", Vring(ram.buf, vq.gpa, vq.num), vq.irq, service,
                                 lambda irq: self._send_irq(transport, irq), self._fail)
            got = transport.write(eventfd_request(transport.word, vq.gpa, worker.kick_fd))
            if got != 0:
                worker.close()
                self._fail(f"Attaching eventfd for {dev.name} queue {i}: {os.strerror(-got) if got < 0 else got}")
                return
            workers.append(worker)
        self._workers[dev.name] = workers
        for worker in workers:
            worker.start()

    def _send_irq(self, transport: Transport, irq: int) -> None:
        """LHREQ_IRQ for a queue worker.

        ENOENT means the Guest has already died: a helper that finished a
        request just as the Guest powered off lost a race it cannot win.  The
        C launchers exit on it (and take the launcher down); here the worker
        simply stops, so the run loop's own read reports the death and its
        reason, which is what a test wants to see.  Any other error is fatal.
        """
        got = transport.write(irq_request(transport.word, irq))
        if got == -errno.ENOENT:
            raise Stopped
        if got != 0:
            raise LauncherError(f"Triggering irq {irq}: {os.strerror(-got) if got < 0 else got}")

    def _stop_workers(self, dev: VirtDevice) -> None:
        for worker in self._workers.pop(dev.name, []):
            worker.stop()
            worker.join()
            worker.close()

    def _reset(self, ram: GuestRam, dev: VirtDevice) -> None:
        """Zero the accepted features, stop the helpers and clear the rings (spec §2.8)."""
        ram.buf[dev.accepted_gpa:dev.accepted_gpa + dev.feature_len] = bytes(dev.feature_len)
        self._stop_workers(dev)
        for vq in dev.vqs:
            size = abi.vring_size(vq.num)
            ram.buf[vq.gpa:vq.gpa + size] = bytes(size)
