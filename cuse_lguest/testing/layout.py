"""Guest-physical layout the way the launcher builds it (spec §2.2-§2.6), over a GuestRam buffer.

Same rules as native/launcher: the zero page at 0, the command line at
0x1000, the initrd at the top of RAM, the device page at `mem` with records
packed from offset 0, three pages per 256-entry ring taken upward from
there, and IRQs numbered from 1 in creation order.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cuse_lguest import abi
from cuse_lguest.virtio import VqConfig, build_record, feature_bitmap

RING_PAGES = -(-abi.vring_size(abi.LAUNCHER_VRING_NUM) // abi.PAGE_SIZE)   # 3


class LayoutError(Exception):
    """The guest does not fit the way it was asked to be laid out."""


@dataclass(frozen=True)
class VirtDevice:
    """A device as placed on the device page: its record's gpa and its queues."""
    name: str
    type: int
    record_gpa: int
    vqs: tuple[VqConfig, ...]
    feature_len: int
    config: bytes

    @property
    def status_gpa(self) -> int:
        return self.record_gpa + abi.DEVICE_DESC_STATUS

    @property
    def accepted_gpa(self) -> int:
        return self.record_gpa + abi.DEVICE_DESC.size + abi.VQCONFIG.size * len(self.vqs) + self.feature_len


class DeviceArea:
    """The 1 MiB above RAM: a bump allocator for pages, and the device page filled record by record."""

    def __init__(self, buf, mem: int, size: int) -> None:
        self.buf = buf
        self.limit = mem            # grows with every page handed out: pfnlimit = limit / 4096
        self.max = size
        self.page = self.get_pages(1)
        self.used = 0
        self.next_irq = 1           # IRQ 0 is the timer

    def get_pages(self, n: int) -> int:
        if self.limit + n * abi.PAGE_SIZE > self.max:
            raise LayoutError("Not enough memory for devices")
        gpa = self.limit
        self.limit += n * abi.PAGE_SIZE
        return gpa

    def add_device(self, name: str, dev_type: int, num_vq: int, feature_bits: tuple[int, ...] = (),
                   config: bytes = b"") -> VirtDevice:
        vqs = []
        for _ in range(num_vq):
            vqs.append(VqConfig(abi.LAUNCHER_VRING_NUM, self.next_irq, self.get_pages(RING_PAGES) // abi.PAGE_SIZE))
            self.next_irq += 1
        features = feature_bitmap(list(feature_bits))
        record = build_record(dev_type, vqs, features, config)
        if self.used + len(record) >= abi.PAGE_SIZE:
            raise LayoutError("Device page is full")
        gpa = self.page + self.used
        self.buf[gpa:gpa + len(record)] = record
        self.used += len(record)
        return VirtDevice(name, dev_type, gpa, tuple(vqs), len(features), config)


def block_config(capacity_sectors: int) -> bytes:
    """capacity, size_max (unused: 0), seg_max (ring size minus header and status); cut before geometry."""
    return struct.pack("<QII", capacity_sectors, 0, abi.LAUNCHER_VRING_NUM - 2)


def place_initrd(buf, mem: int, path: str | os.PathLike) -> int:
    """Copy the initrd to the top of RAM; return its page-aligned length."""
    with open(path, "rb") as f:
        data = f.read()
    length = -(-len(data) // abi.PAGE_SIZE) * abi.PAGE_SIZE
    if length >= mem:
        raise LayoutError(f"initrd {path} ({len(data)} bytes) does not fit in guest memory")
    buf[mem - length:mem - length + len(data)] = data
    return length


def write_boot_params(buf, mem: int, args: list[str] | tuple[str, ...], initrd_len: int = 0) -> None:
    """The zero page fields the lguest Guest reads (spec §2.4), and the command line at 0x1000."""
    buf[abi.BP_E820_ENTRIES] = 1
    buf[abi.BP_E820_MAP:abi.BP_E820_MAP + abi.E820_ENTRY.size] = abi.E820_ENTRY.pack(0, mem, abi.E820_RAM)
    buf[abi.BP_HDR_VERSION:abi.BP_HDR_VERSION + 2] = struct.pack("<H", abi.BOOT_PROTOCOL_VERSION)
    buf[abi.BP_LOADFLAGS] |= abi.LOADFLAG_KEEP_SEGMENTS
    for off, value in ((abi.BP_CMD_LINE_PTR, abi.CMDLINE_GPA), (abi.BP_KERNEL_ALIGNMENT, abi.KERNEL_ALIGNMENT),
                       (abi.BP_HARDWARE_SUBARCH, abi.X86_SUBARCH_LGUEST)):
        buf[off:off + 4] = struct.pack("<I", value)
    if initrd_len:
        buf[abi.BP_RAMDISK_IMAGE:abi.BP_RAMDISK_IMAGE + 4] = struct.pack("<I", mem - initrd_len)
        buf[abi.BP_RAMDISK_SIZE:abi.BP_RAMDISK_SIZE + 4] = struct.pack("<I", initrd_len)
        buf[abi.BP_TYPE_OF_LOADER] = abi.TYPE_OF_LOADER_UNDEFINED
    cmdline = " ".join(args).encode() + b"\0"
    if abi.CMDLINE_GPA + len(cmdline) > mem:
        raise LayoutError("kernel command line does not fit in guest memory")
    buf[abi.CMDLINE_GPA:abi.CMDLINE_GPA + len(cmdline)] = cmdline
