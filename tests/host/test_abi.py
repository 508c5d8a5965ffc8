"""abi.py against the spec's tables (lguest-abi.md §1.3, §2.4, §2.6, §3.2, §3.4).

The expected numbers below are transcribed from the spec, not computed from
abi.py, so a typo on either side shows up here.
"""
from __future__ import annotations

import pytest

from cuse_lguest import abi

LGUEST_DATA = [  # spec §3.4: offset, field
    (0, "IRQ_ENABLED"), (4, "BLOCKED_INTERRUPTS"), (8, "CR2"), (12, "TIME"), (20, "IRQ_PENDING"),
    (24, "HCALL_STATUS"), (88, "HCALLS"), (1368, "RESERVE_MEM"), (1372, "TSC_KHZ"),
    (1376, "NOIRQ_START"), (1380, "NOIRQ_END"), (1384, "KERNEL_ADDRESS"), (1388, "SYSCALL_VEC"),
    (1392, "SIZE"),
]
HYPERCALLS = [  # spec §3.2
    (0, "FLUSH_ASYNC"), (1, "LGUEST_INIT"), (2, "SHUTDOWN"), (4, "NEW_PGTABLE"), (5, "FLUSH_TLB"),
    (6, "LOAD_IDT_ENTRY"), (7, "SET_STACK"), (8, "TS"), (9, "SET_CLOCKEVENT"), (10, "HALT"),
    (13, "SET_PMD"), (14, "SET_PTE"), (15, "SET_PGD"), (16, "LOAD_TLS"), (17, "NOTIFY"),
    (18, "LOAD_GDT_ENTRY"), (19, "SEND_INTERRUPTS"),
]
BOOT_PARAMS = [  # spec §2.4
    (0x1E8, "E820_ENTRIES"), (0x2D0, "E820_MAP"), (0x206, "HDR_VERSION"), (0x211, "LOADFLAGS"),
    (0x228, "CMD_LINE_PTR"), (0x230, "KERNEL_ALIGNMENT"), (0x23C, "HARDWARE_SUBARCH"),
    (0x218, "RAMDISK_IMAGE"), (0x21C, "RAMDISK_SIZE"), (0x210, "TYPE_OF_LOADER"),
    (0x1F1, "SETUP_SECTS"), (0x202, "HDR_MAGIC"), (0x214, "CODE32_START"), (0x1E4, "SCRATCH"),
]


@pytest.mark.parametrize("offset,field", LGUEST_DATA)
def test_lguest_data_layout(offset, field):
    assert getattr(abi, "LGUEST_DATA_" + field) == offset


def test_async_ring_fills_the_gap_exactly():
    assert abi.LGUEST_DATA_HCALLS + abi.LHCALL_RING_SIZE * abi.HCALL_ARGS.size == abi.LGUEST_DATA_RESERVE_MEM
    assert abi.HCALL_ARGS.size == 20 and abi.LHCALL_RING_SIZE == 64


@pytest.mark.parametrize("number,name", HYPERCALLS)
def test_hypercall_numbers(number, name):
    assert getattr(abi, "LHCALL_" + name) == number
    assert abi.LHCALL_NAMES[number] == name


def test_requests_and_constants():
    assert (abi.LHREQ_INITIALIZE, abi.LHREQ_GETDMA, abi.LHREQ_IRQ, abi.LHREQ_BREAK, abi.LHREQ_EVENTFD) == (0, 1, 2, 3, 4)
    assert abi.LGUEST_TRAP_ENTRY == 0x1F and abi.LGUEST_IRQS == 32 and abi.ERESTART == 85
    assert (abi.GUEST_CS, abi.GUEST_DS, abi.INITIAL_EFLAGS) == (0x61, 0x69, 0x202)
    assert abi.INITIALIZE_LEN_TO_WORD == {16: 4, 32: 8}


@pytest.mark.parametrize("offset,field", BOOT_PARAMS)
def test_boot_params_offsets(offset, field):
    assert getattr(abi, "BP_" + field) == offset


def test_device_record_and_vring_layout():
    # spec §2.6: 5-byte header, 8-byte vqconfigs, unaligned; 256-entry ring = 10246 bytes = 3 pages.
    assert abi.DEVICE_DESC.size == 5 and abi.VQCONFIG.size == 8
    assert abi.device_record_size(2, 0, 0) == 21
    assert abi.vring_size(256) == 10246
    assert abi.vring_avail_offset(256) == 4096 and abi.vring_used_offset(256) == 8192
    assert (abi.VIRTIO_ID_NET, abi.VIRTIO_ID_BLOCK, abi.VIRTIO_ID_CONSOLE, abi.VIRTIO_ID_RNG) == (1, 2, 3, 4)
