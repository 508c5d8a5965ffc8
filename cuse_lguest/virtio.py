"""The lguest device page and the legacy virtio ring, read and written over guest memory.

This is the one Python implementation of both layouts (spec §2.6).  Three
users share it: the in-process test launcher (which plays the device side of
every ring), tests that build synthetic rings, and the server's mirror mode,
which must know, for each ring, which descriptors became available or used
since it last looked and which guest buffers those descriptors name, so that
it copies exactly the bytes each side is about to read.

Everything works on a `mem` object: anything sliceable and slice-assignable
that is indexed by guest-physical address (a bytearray, an mmap of guest RAM,
a mirror's local copy).  Nothing here keeps a copy of guest memory: every
accessor reads the current bytes, because the other side changes them.
"""
from __future__ import annotations

import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from cuse_lguest import abi

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class VringError(Exception):
    """A ring or descriptor chain the Guest built is malformed (loop, bad index, out of bounds)."""


# ---------------------------------------------------------------------------
# Device page records.

@dataclass(frozen=True)
class VqConfig:
    """One `lguest_vqconfig`: ring size, the IRQ the host raises, and the ring's page number."""
    num: int
    irq: int
    pfn: int

    @property
    def gpa(self) -> int:
        return self.pfn * abi.PAGE_SIZE


@dataclass(frozen=True)
class DeviceRecord:
    """One record of the device page as it sits at `offset` in that page.

    `features` is the host's offer, `accepted` the Guest's answer; both are
    `feature_len` bytes.  The record is immutable: writers patch guest memory
    through the offset helpers below and re-parse.
    """
    offset: int
    type: int
    status: int
    vqs: tuple[VqConfig, ...]
    features: bytes
    accepted: bytes
    config: bytes

    @property
    def size(self) -> int:
        return abi.device_record_size(len(self.vqs), len(self.features), len(self.config))

    @property
    def status_offset(self) -> int:
        return self.offset + abi.DEVICE_DESC_STATUS

    @property
    def features_offset(self) -> int:
        return self.offset + abi.DEVICE_DESC.size + abi.VQCONFIG.size * len(self.vqs)

    @property
    def accepted_offset(self) -> int:
        return self.features_offset + len(self.features)

    @property
    def config_offset(self) -> int:
        return self.accepted_offset + len(self.accepted)

    def offers(self, bit: int) -> bool:
        return feature_bit(self.features, bit)

    def accepts(self, bit: int) -> bool:
        return feature_bit(self.accepted, bit)


def feature_bit(bitmap: bytes, bit: int) -> bool:
    """Bit i lives in byte i/8 under mask 1 << (i % 8); bits past the bitmap are clear."""
    return bit // 8 < len(bitmap) and bool(bitmap[bit // 8] & (1 << (bit % 8)))


def feature_bitmap(bits: list[int] | tuple[int, ...]) -> bytes:
    """The smallest bitmap holding `bits`: as many bytes as the highest bit needs."""
    if not bits:
        return b""
    out = bytearray(max(bits) // 8 + 1)
    for bit in bits:
        out[bit // 8] |= 1 << (bit % 8)
    return bytes(out)


def build_record(dev_type: int, vqs: list[VqConfig] | tuple[VqConfig, ...], features: bytes = b"",
                 config: bytes = b"", status: int = 0) -> bytes:
    """The bytes of one record; the accepted-features bitmap starts zeroed (the Guest fills it)."""
    if not 0 < dev_type < 256:
        raise ValueError(f"device type {dev_type} is not a non-zero byte")
    if len(vqs) > 255 or len(features) > 255 or len(config) > 255:
        raise ValueError("num_vq, feature_len and config_len are single bytes")
    out = bytearray(abi.DEVICE_DESC.pack(dev_type, len(vqs), len(features), len(config), status))
    for vq in vqs:
        out += abi.VQCONFIG.pack(vq.num, vq.irq, vq.pfn)
    out += features + bytes(len(features)) + config
    return bytes(out)


def parse_record(page: bytes, offset: int) -> DeviceRecord | None:
    """The record at `offset` of a device page, or None at the type-0 terminator or the page end."""
    if offset + abi.DEVICE_DESC.size > len(page) or page[offset] == 0:
        return None
    dev_type, num_vq, feature_len, config_len, status = abi.DEVICE_DESC.unpack_from(page, offset)
    size = abi.device_record_size(num_vq, feature_len, config_len)
    if offset + size > len(page):
        raise VringError(f"device record at {offset} (size {size}) runs past the device page")
    pos = offset + abi.DEVICE_DESC.size
    vqs = tuple(VqConfig(*abi.VQCONFIG.unpack_from(page, pos + i * abi.VQCONFIG.size)) for i in range(num_vq))
    pos += num_vq * abi.VQCONFIG.size
    features = bytes(page[pos:pos + feature_len])
    accepted = bytes(page[pos + feature_len:pos + 2 * feature_len])
    config = bytes(page[pos + 2 * feature_len:pos + 2 * feature_len + config_len])
    return DeviceRecord(offset, dev_type, status, vqs, features, accepted, config)


def parse_device_page(page: bytes) -> list[DeviceRecord]:
    """Every record, in page order, the way the Guest scans it."""
    records = []
    offset = 0
    while (rec := parse_record(page, offset)) is not None:
        records.append(rec)
        offset += rec.size
    return records


# ---------------------------------------------------------------------------
# Legacy vring.

@dataclass(frozen=True)
class Desc:
    """One descriptor: guest buffer address and length, flags, and the next index in its table."""
    addr: int
    len: int
    flags: int
    next: int

    @property
    def writable(self) -> bool:
        """Device-writable (the device fills it); otherwise device-readable."""
        return bool(self.flags & abi.VRING_DESC_F_WRITE)


@dataclass(frozen=True)
class Buffer:
    """A guest buffer named by a chain: [gpa, gpa+len), which side may write it."""
    gpa: int
    len: int
    writable: bool


@dataclass
class Chain:
    """A walked descriptor chain: its head index, its buffers in order, and any indirect tables it used."""
    head: int
    buffers: list[Buffer] = field(default_factory=list)
    tables: list[tuple[int, int]] = field(default_factory=list)  # (gpa, bytes) of indirect tables

    @property
    def readable(self) -> list[Buffer]:
        return [b for b in self.buffers if not b.writable]

    @property
    def writable(self) -> list[Buffer]:
        return [b for b in self.buffers if b.writable]


@dataclass(frozen=True)
class UsedElem:
    id: int
    len: int


class Vring:
    """Accessor for a legacy vring of `num` entries at guest-physical `gpa` in `mem`.

    Layout (spec §2.6): descriptor table, avail ring (flags, idx, ring[num],
    used_event), then at the next `align` boundary the used ring (flags, idx,
    {id, len}[num], avail_event).  Indices are free-running u16 counters.
    """

    def __init__(self, mem, gpa: int, num: int, align: int = abi.LGUEST_VRING_ALIGN) -> None:
        if num <= 0 or num & (num - 1) or num > 32768:
            raise ValueError(f"vring size {num} is not a power of two up to 32768")
        if gpa + abi.vring_size(num, align) > len(mem):
            raise VringError(f"vring at {gpa:#x} of {num} entries runs past guest memory")
        self.mem = mem
        self.gpa = gpa
        self.num = num
        self.desc_gpa = gpa
        self.avail_gpa = gpa + abi.vring_avail_offset(num)
        self.used_gpa = gpa + abi.vring_used_offset(num, align)

    # --- byte ranges, for whoever copies rings between address spaces ---
    @property
    def desc_range(self) -> tuple[int, int]:
        return self.desc_gpa, abi.VRING_DESC.size * self.num

    @property
    def avail_range(self) -> tuple[int, int]:
        return self.avail_gpa, 2 * (3 + self.num)

    @property
    def used_range(self) -> tuple[int, int]:
        return self.used_gpa, 6 + abi.VRING_USED_ELEM.size * self.num

    # --- raw fields ---
    def _u16(self, gpa: int) -> int:
        return _U16.unpack(self.mem[gpa:gpa + 2])[0]

    def _put_u16(self, gpa: int, value: int) -> None:
        self.mem[gpa:gpa + 2] = _U16.pack(value & 0xFFFF)

    def set_desc(self, index: int, desc: Desc) -> None:
        off = self.desc_gpa + index * abi.VRING_DESC.size
        self.mem[off:off + abi.VRING_DESC.size] = abi.VRING_DESC.pack(desc.addr, desc.len, desc.flags, desc.next)

    @property
    def avail_flags(self) -> int:
        return self._u16(self.avail_gpa)

    @avail_flags.setter
    def avail_flags(self, value: int) -> None:
        self._put_u16(self.avail_gpa, value)

    @property
    def avail_idx(self) -> int:
        return self._u16(self.avail_gpa + 2)

    @avail_idx.setter
    def avail_idx(self, value: int) -> None:
        self._put_u16(self.avail_gpa + 2, value)

    def avail_entry(self, idx: int) -> int:
        """The head stored at free-running avail index `idx`."""
        return self._u16(self.avail_gpa + 4 + 2 * (idx % self.num))

    def set_avail_entry(self, idx: int, head: int) -> None:
        self._put_u16(self.avail_gpa + 4 + 2 * (idx % self.num), head)

    @property
    def used_flags(self) -> int:
        return self._u16(self.used_gpa)

    @used_flags.setter
    def used_flags(self, value: int) -> None:
        self._put_u16(self.used_gpa, value)

    @property
    def used_idx(self) -> int:
        return self._u16(self.used_gpa + 2)

    @used_idx.setter
    def used_idx(self, value: int) -> None:
        self._put_u16(self.used_gpa + 2, value)

    def used_entry(self, idx: int) -> UsedElem:
        off = self.used_gpa + 4 + abi.VRING_USED_ELEM.size * (idx % self.num)
        return UsedElem(*abi.VRING_USED_ELEM.unpack(self.mem[off:off + abi.VRING_USED_ELEM.size]))

    # --- what changed since a cursor ---
    def available_since(self, last_idx: int) -> list[int]:
        """Heads the driver made available after free-running index `last_idx`, in order."""
        count = (self.avail_idx - last_idx) & 0xFFFF
        if count > self.num:
            raise VringError(f"avail idx jumped {count} entries in a ring of {self.num}")
        return [self.avail_entry(last_idx + i) for i in range(count)]

    def used_since(self, last_idx: int) -> list[UsedElem]:
        """Elements the device put on the used ring after free-running index `last_idx`, in order."""
        count = (self.used_idx - last_idx) & 0xFFFF
        if count > self.num:
            raise VringError(f"used idx jumped {count} entries in a ring of {self.num}")
        return [self.used_entry(last_idx + i) for i in range(count)]

    # --- chains ---
    def chain(self, head: int) -> Chain:
        """Walk the chain at `head`, following NEXT links and one level of INDIRECT table.

        Readable buffers come before writable ones in a well-formed chain; a
        readable buffer after a writable one is rejected, as is a loop, an
        index out of range, a nested indirect table or a buffer outside memory.
        Every request of every queue passes here, in the launcher's helpers
        and at the mirror's sync points, so the walk reads each descriptor
        straight out of memory as a tuple (a 128 KiB block request is 34).
        """
        chain = Chain(head)
        self._walk(chain, head, self.desc_gpa, self.num, indirect=False)
        return chain

    def _walk(self, chain: Chain, index: int, table_gpa: int, table_len: int, indirect: bool) -> None:
        """The chain from `index` of the table at `table_gpa`: the ring's own, or an indirect one."""
        unpack, mem, limit, buffers = abi.VRING_DESC.unpack_from, self.mem, len(self.mem), chain.buffers
        for _ in range(table_len + 1):
            if not 0 <= index < table_len:
                raise VringError(f"descriptor index {index} out of range (ring of {self.num})" if not indirect
                                 else f"indirect index {index} out of range ({table_len}) in chain {chain.head}")
            addr, length, flags, index = unpack(mem, table_gpa + index * abi.VRING_DESC.size)
            if addr + length > limit:
                raise VringError(f"buffer {addr:#x}+{length:#x} in chain {chain.head} is outside guest memory")
            if flags & abi.VRING_DESC_F_INDIRECT:
                if indirect:
                    raise VringError(f"nested indirect table in chain {chain.head}")
                if length == 0 or length % abi.VRING_DESC.size:
                    raise VringError(f"indirect table of {length} bytes in chain {chain.head}")
                chain.tables.append((addr, length))
                self._walk(chain, 0, addr, length // abi.VRING_DESC.size, indirect=True)
            else:
                writable = bool(flags & abi.VRING_DESC_F_WRITE)
                if not writable and buffers and buffers[-1].writable:
                    raise VringError(f"readable buffer after a writable one in chain {chain.head}")
                buffers.append(Buffer(addr, length, writable))
            if not flags & abi.VRING_DESC_F_NEXT:
                return
        raise VringError(f"descriptor chain from {chain.head} loops")

    # --- device side ---
    def push_used(self, head: int, length: int) -> None:
        """Publish one used element: write the element, then bump idx (x86 keeps store order)."""
        idx = self.used_idx
        off = self.used_gpa + 4 + abi.VRING_USED_ELEM.size * (idx % self.num)
        self.mem[off:off + abi.VRING_USED_ELEM.size] = abi.VRING_USED_ELEM.pack(head, length)
        self.used_idx = idx + 1

    # --- driver side (tests and synthetic rings) ---
    def add_chain(self, first_free: int, buffers: list[Buffer]) -> int:
        """Write `buffers` as a chain at descriptors first_free.. and make it available; return the head."""
        for i, buf in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (0 if last else abi.VRING_DESC_F_NEXT) | (abi.VRING_DESC_F_WRITE if buf.writable else 0)
            self.set_desc(first_free + i, Desc(buf.gpa, buf.len, flags, 0 if last else first_free + i + 1))
        idx = self.avail_idx
        self.set_avail_entry(idx, first_free)
        self.avail_idx = idx + 1
        return first_free

    def read_buffers(self, buffers: list[Buffer]) -> bytes:
        return b"".join(bytes(self.mem[b.gpa:b.gpa + b.len]) for b in buffers)

    @contextmanager
    def views(self, buffers: list[Buffer]) -> Iterator[list[memoryview]]:
        """Each buffer as a view of guest memory itself, for I/O straight in or out (os.preadv/pwritev).

        The views are released on the way out: an mmap that still has views
        cannot be closed, and guest RAM is closed when the run ends.
        """
        with memoryview(self.mem) as whole:
            views = [whole[b.gpa:b.gpa + b.len] for b in buffers]
            try:
                yield views
            finally:
                for view in views:
                    view.release()

    def write_buffers(self, buffers: list[Buffer], data: bytes) -> int:
        """Scatter `data` over `buffers` in order; return how many bytes fit."""
        done = 0
        for b in buffers:
            piece = data[done:done + b.len]
            if not piece:
                break
            self.mem[b.gpa:b.gpa + len(piece)] = piece
            done += len(piece)
        return done


def iter_records_vrings(mem, records: list[DeviceRecord]) -> Iterator[tuple[DeviceRecord, int, Vring]]:
    """Every (record, queue index, Vring) of a parsed device page, for code that watches all rings."""
    for rec in records:
        for i, vq in enumerate(rec.vqs):
            yield rec, i, Vring(mem, vq.gpa, vq.num)
