"""cuse_lguest.virtio against synthetic device pages and rings built in a bytearray."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from cuse_lguest import abi
from cuse_lguest.virtio import (Buffer, Desc, DeviceRecord, VqConfig, Vring, VringError, build_record,
                                feature_bit, feature_bitmap, parse_device_page, parse_record)

MEM = 64 * 1024


def test_record_layout_matches_spec_bytes():
    blk_features = feature_bitmap([abi.VIRTIO_BLK_F_SEG_MAX, abi.VIRTIO_BLK_F_FLUSH])
    raw = build_record(abi.VIRTIO_ID_BLOCK, [VqConfig(256, 3, 0x4007)], blk_features, b"\x11" * 16)
    assert raw[:5] == bytes([2, 1, 2, 16, 0])
    assert raw[5:13] == (256).to_bytes(2, "little") + (3).to_bytes(2, "little") + (0x4007).to_bytes(4, "little")
    assert raw[13:15] == bytes([0x04, 0x02])       # bit 2 in byte 0, bit 9 in byte 1
    assert raw[15:17] == b"\0\0"                   # accepted: the Guest's to fill
    assert raw[17:] == b"\x11" * 16
    assert len(raw) == abi.device_record_size(1, 2, 16)


def test_parse_device_page_walks_packed_records_to_terminator():
    page = bytearray(abi.PAGE_SIZE)
    a = build_record(abi.VIRTIO_ID_RNG, [VqConfig(256, 1, 0x101)])
    b = build_record(abi.VIRTIO_ID_CONSOLE, [VqConfig(256, 2, 0x104), VqConfig(256, 3, 0x107)])
    page[:len(a)] = a
    page[len(a):len(a) + len(b)] = b
    recs = parse_device_page(bytes(page))
    assert [r.type for r in recs] == [abi.VIRTIO_ID_RNG, abi.VIRTIO_ID_CONSOLE]
    assert recs[1].offset == len(a)                 # no alignment between records
    assert recs[1].vqs[1] == VqConfig(256, 3, 0x107)
    assert recs[1].vqs[1].gpa == 0x107000
    assert recs[0].status_offset == 4


def test_record_offsets_locate_status_accepted_and_config():
    page = bytearray(abi.PAGE_SIZE)
    raw = build_record(abi.VIRTIO_ID_BLOCK, [VqConfig(256, 1, 9)], feature_bitmap([9]), b"CONF")
    page[10:10 + len(raw)] = raw
    rec = parse_record(bytes(page), 10)
    assert isinstance(rec, DeviceRecord)
    page[rec.status_offset] = abi.VIRTIO_CONFIG_S_ACKNOWLEDGE
    page[rec.accepted_offset + 1] = 0x02
    again = parse_record(bytes(page), 10)
    assert again.status == abi.VIRTIO_CONFIG_S_ACKNOWLEDGE
    assert again.offers(9) and again.accepts(9) and not again.accepts(2)
    assert bytes(page[again.config_offset:again.config_offset + 4]) == b"CONF"


def test_record_running_off_the_page_is_an_error():
    page = bytearray(abi.PAGE_SIZE)
    page[abi.PAGE_SIZE - 6:abi.PAGE_SIZE - 1] = bytes([3, 2, 0, 0, 0])
    with pytest.raises(VringError):
        parse_record(bytes(page), abi.PAGE_SIZE - 6)


@given(st.lists(st.integers(0, 200), max_size=12))
def test_feature_bitmap_roundtrip(bits):
    bm = feature_bitmap(bits)
    assert all(feature_bit(bm, b) for b in bits)
    assert not any(feature_bit(bm, b) for b in range(256) if b not in bits)


def test_vring_geometry_is_three_pages_for_256_entries():
    ring = Vring(bytearray(MEM), 0x1000, 256)
    assert ring.avail_gpa == 0x1000 + 16 * 256
    assert ring.used_gpa == 0x1000 + 2 * abi.PAGE_SIZE
    assert ring.used_range[0] + ring.used_range[1] - 0x1000 == 10246


def test_available_since_and_chain_classify_buffers():
    mem = bytearray(MEM)
    ring = Vring(mem, 0x1000, 8)
    head = ring.add_chain(0, [Buffer(0x8000, 16, False), Buffer(0x8100, 512, True), Buffer(0x8400, 1, True)])
    head2 = ring.add_chain(3, [Buffer(0x9000, 5, False)])
    assert ring.available_since(0) == [head, head2]
    assert ring.available_since(1) == [head2]
    chain = ring.chain(head)
    assert [b.len for b in chain.readable] == [16]
    assert [(b.gpa, b.len) for b in chain.writable] == [(0x8100, 512), (0x8400, 1)]
    assert chain.tables == []


def test_indices_wrap_at_16_bits():
    mem = bytearray(MEM)
    ring = Vring(mem, 0, 4)
    ring.avail_idx = 0xFFFF
    ring.add_chain(0, [Buffer(0x8000, 1, False)])
    assert ring.avail_idx == 0
    assert ring.available_since(0xFFFF) == [0]
    ring.used_idx = 0xFFFF
    ring.push_used(0, 7)
    assert ring.used_since(0xFFFF)[0].len == 7 and ring.used_idx == 0


def test_push_used_then_used_since():
    ring = Vring(bytearray(MEM), 0x1000, 8)
    ring.push_used(5, 100)
    ring.push_used(2, 0)
    assert [(u.id, u.len) for u in ring.used_since(0)] == [(5, 100), (2, 0)]


def test_indirect_table_is_walked_and_reported():
    mem = bytearray(MEM)
    ring = Vring(mem, 0x1000, 8)
    table = 0xA000
    entries = [Desc(0x8000, 16, abi.VRING_DESC_F_NEXT, 1),
               Desc(0x8100, 64, abi.VRING_DESC_F_WRITE | abi.VRING_DESC_F_NEXT, 2),
               Desc(0x8200, 1, abi.VRING_DESC_F_WRITE, 0)]
    for i, d in enumerate(entries):
        mem[table + 16 * i:table + 16 * (i + 1)] = abi.VRING_DESC.pack(d.addr, d.len, d.flags, d.next)
    ring.set_desc(4, Desc(table, 48, abi.VRING_DESC_F_INDIRECT, 0))
    chain = ring.chain(4)
    assert chain.tables == [(table, 48)]
    assert [(b.gpa, b.writable) for b in chain.buffers] == [(0x8000, False), (0x8100, True), (0x8200, True)]


@pytest.mark.parametrize("bad", ["loop", "index", "order", "bounds", "nested"])
def test_malformed_chains_are_rejected(bad):
    mem = bytearray(MEM)
    ring = Vring(mem, 0x1000, 8)
    n, w = abi.VRING_DESC_F_NEXT, abi.VRING_DESC_F_WRITE
    if bad == "loop":
        ring.set_desc(0, Desc(0x8000, 1, n, 1))
        ring.set_desc(1, Desc(0x8000, 1, n, 0))
    elif bad == "index":
        ring.set_desc(0, Desc(0x8000, 1, n, 99))
    elif bad == "order":
        ring.set_desc(0, Desc(0x8000, 1, n | w, 1))
        ring.set_desc(1, Desc(0x8000, 1, 0, 0))
    elif bad == "bounds":
        ring.set_desc(0, Desc(MEM - 4, 8, 0, 0))
    else:
        mem[0xA000:0xA010] = abi.VRING_DESC.pack(0xB000, 16, abi.VRING_DESC_F_INDIRECT, 0)
        ring.set_desc(0, Desc(0xA000, 16, abi.VRING_DESC_F_INDIRECT, 0))
    with pytest.raises(VringError):
        ring.chain(0)


def test_avail_jump_beyond_ring_is_an_error():
    ring = Vring(bytearray(MEM), 0x1000, 8)
    ring.avail_idx = 9
    with pytest.raises(VringError):
        ring.available_since(0)


def test_scatter_and_gather():
    ring = Vring(bytearray(MEM), 0x1000, 8)
    bufs = [Buffer(0x8000, 3, True), Buffer(0x9000, 4, True)]
    assert ring.write_buffers(bufs, b"abcdefghij") == 7
    assert ring.read_buffers(bufs) == b"abcdefg"


def test_vring_outside_memory_is_refused():
    with pytest.raises(VringError):
        Vring(bytearray(MEM), MEM - abi.PAGE_SIZE, 256)
