"""Every number and layout of the 3.x lguest ABI, named once.

The launcher, the Guest and the host agree on a handful of request codes,
hypercall numbers, a shared `lguest_data` page, the device page records and
the legacy virtio ring layout.  Nothing else in the package writes these
numbers down: it imports them from here, so a reader can check the whole
contract against the spec (`lguest-abi.md`) in one file.

All values are little-endian.  Offsets are for the i386 Guest of the 3.x era
(non-PAE, LGUEST_IRQS = 32, the noirq_start/noirq_end pair).
"""
from __future__ import annotations

import errno
import struct

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# --------------------------------------------------------------------------
# Launcher -> /dev/lguest: write() requests (spec §1.3).  The first word of a
# write is one of these; the payload words follow.
LHREQ_INITIALIZE = 0   # base, pfnlimit, start
LHREQ_GETDMA = 1       # obsolete since 2.6.24: EINVAL
LHREQ_IRQ = 2          # irq
LHREQ_BREAK = 3        # obsolete: EINVAL
LHREQ_EVENTFD = 4      # addr, fd

# Number of payload words after the request code, for the requests we serve.
LHREQ_PAYLOAD_WORDS = {LHREQ_INITIALIZE: 3, LHREQ_IRQ: 1, LHREQ_EVENTFD: 2}

# INITIALIZE's total length tells us the launcher's word size (spec §1.2).
INITIALIZE_LEN_TO_WORD = {16: 4, 32: 8}

# The kernel's ERESTART: the death code of a Guest that asked for a reboot.
ERESTART = errno.ERESTART  # 85 on Linux
assert ERESTART == 85

# --------------------------------------------------------------------------
# Guest -> host: hypercalls (spec §3).  `int $0x1f`, EAX = number.
LGUEST_TRAP_ENTRY = 0x1F

LHCALL_FLUSH_ASYNC = 0
LHCALL_LGUEST_INIT = 1
LHCALL_SHUTDOWN = 2
LHCALL_NEW_PGTABLE = 4
LHCALL_FLUSH_TLB = 5
LHCALL_LOAD_IDT_ENTRY = 6
LHCALL_SET_STACK = 7
LHCALL_TS = 8
LHCALL_SET_CLOCKEVENT = 9
LHCALL_HALT = 10
LHCALL_SET_PMD = 13
LHCALL_SET_PTE = 14
LHCALL_SET_PGD = 15
LHCALL_LOAD_TLS = 16
LHCALL_NOTIFY = 17
LHCALL_LOAD_GDT_ENTRY = 18
LHCALL_SEND_INTERRUPTS = 19

LHCALL_NAMES = {
    LHCALL_FLUSH_ASYNC: "FLUSH_ASYNC", LHCALL_LGUEST_INIT: "LGUEST_INIT",
    LHCALL_SHUTDOWN: "SHUTDOWN", LHCALL_NEW_PGTABLE: "NEW_PGTABLE",
    LHCALL_FLUSH_TLB: "FLUSH_TLB", LHCALL_LOAD_IDT_ENTRY: "LOAD_IDT_ENTRY",
    LHCALL_SET_STACK: "SET_STACK", LHCALL_TS: "TS",
    LHCALL_SET_CLOCKEVENT: "SET_CLOCKEVENT", LHCALL_HALT: "HALT",
    LHCALL_SET_PMD: "SET_PMD", LHCALL_SET_PTE: "SET_PTE", LHCALL_SET_PGD: "SET_PGD",
    LHCALL_LOAD_TLS: "LOAD_TLS", LHCALL_NOTIFY: "NOTIFY",
    LHCALL_LOAD_GDT_ENTRY: "LOAD_GDT_ENTRY", LHCALL_SEND_INTERRUPTS: "SEND_INTERRUPTS",
}

# SHUTDOWN's second argument.
LGUEST_SHUTDOWN_POWEROFF = 1
LGUEST_SHUTDOWN_RESTART = 2
SHUTDOWN_MSG_LEN = 128  # bytes read at the message address; byte 127 forced to NUL

# --------------------------------------------------------------------------
# Interrupts (spec §4.4).
LGUEST_IRQS = 32           # IRQ n <-> Guest vector FIRST_EXTERNAL_VECTOR + n
FIRST_EXTERNAL_VECTOR = 32
SYSCALL_VECTOR = 0x80
IDT_ENTRIES = 256
GDT_ENTRIES = 32
IDT_IGNORED_VECTORS = frozenset({2, 8, 15, 31})
# Vectors whose frame carries an error code.
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})
# Vectors a real lguest host sent straight to a Guest trap gate (spec §4.4).
DIRECT_TRAP_EXCLUDED = frozenset({7, 13, 14, 31})

GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF
X86_EFLAGS_IF = 0x200
X86_EFLAGS_TF = 0x100
X86_EFLAGS_NT = 0x4000
X86_EFLAGS_RF = 0x10000
X86_EFLAGS_VM = 0x20000

# GDT layout of the i386 Guest (spec §4.5) and the selectors the host loads.
GDT_ENTRY_TLS_MIN = 6
GDT_ENTRY_TLS_ENTRIES = 3
# A descriptor's DPL field and "accessed" type bit, which lguest's fix-up changes (cpu/gdt.py).
DESC_DPL_SHIFT = 45
DESC_DPL_MASK = 3 << DESC_DPL_SHIFT
DESC_ACCESSED = 1 << 40
# SET_STACK's third argument: how many pages of kernel stack the Guest names (at most two).
KERNEL_STACK_PAGES_MAX = 2
GDT_ENTRY_LGUEST_CS = 10       # host-owned
GDT_ENTRY_LGUEST_DS = 11       # host-owned
GDT_ENTRY_KERNEL_CS = 12
GDT_ENTRY_KERNEL_DS = 13
GDT_ENTRY_TSS = 16
GDT_ENTRY_DOUBLEFAULT_TSS = 31
GDT_ENTRIES_STORED_UNUSED = frozenset({GDT_ENTRY_TSS, GDT_ENTRY_LGUEST_CS,
                                        GDT_ENTRY_LGUEST_DS, GDT_ENTRY_DOUBLEFAULT_TSS})
GUEST_PL = 1
GUEST_CS = (GDT_ENTRY_KERNEL_CS << 3) | GUEST_PL   # 0x61
GUEST_DS = (GDT_ENTRY_KERNEL_DS << 3) | GUEST_PL   # 0x69
INITIAL_EFLAGS = 0x202

# --------------------------------------------------------------------------
# struct lguest_data (spec §3.4): i386, 3.x layout, 1392 bytes.
LGUEST_DATA_IRQ_ENABLED = 0
LGUEST_DATA_BLOCKED_INTERRUPTS = 4
LGUEST_DATA_CR2 = 8
LGUEST_DATA_TIME = 12          # struct timespec {u32 tv_sec, u32 tv_nsec}
LGUEST_DATA_IRQ_PENDING = 20
LGUEST_DATA_HCALL_STATUS = 24  # u8[64]
LGUEST_DATA_HCALLS = 88        # struct hcall_args[64], 5 words each
LGUEST_DATA_RESERVE_MEM = 1368
LGUEST_DATA_TSC_KHZ = 1372
LGUEST_DATA_NOIRQ_START = 1376
LGUEST_DATA_NOIRQ_END = 1380
LGUEST_DATA_KERNEL_ADDRESS = 1384
LGUEST_DATA_SYSCALL_VEC = 1388
LGUEST_DATA_SIZE = 1392

LHCALL_RING_SIZE = 64
HCALL_ARGS = struct.Struct("<5I")   # arg0 (call number) .. arg4
HCALL_STATUS_FREE = 0xFF

# --------------------------------------------------------------------------
# boot_params, the "zero page" at gpa 0 (spec §2.4).
BOOT_PARAMS_SIZE = 4096
BP_SCRATCH = 0x1E4
BP_E820_ENTRIES = 0x1E8
BP_SETUP_SECTS = 0x1F1
BP_HDR_MAGIC = 0x202           # b"HdrS"
BP_HDR_VERSION = 0x206
BP_TYPE_OF_LOADER = 0x210
BP_LOADFLAGS = 0x211
BP_CODE32_START = 0x214
BP_RAMDISK_IMAGE = 0x218
BP_RAMDISK_SIZE = 0x21C
BP_CMD_LINE_PTR = 0x228
BP_KERNEL_ALIGNMENT = 0x230
BP_HARDWARE_SUBARCH = 0x23C
BP_E820_MAP = 0x2D0
E820_ENTRY = struct.Struct("<QQI")   # addr, size, type
E820_RAM = 1
BOOT_HDR_MAGIC = b"HdrS"
BOOT_PROTOCOL_VERSION = 0x0207
LOADFLAG_KEEP_SEGMENTS = 0x40
X86_SUBARCH_LGUEST = 1
KERNEL_ALIGNMENT = 0x01000000
BZIMAGE_LOAD_ADDR = 0x100000
CMDLINE_GPA = 0x1000
TYPE_OF_LOADER_UNDEFINED = 0xFF

# --------------------------------------------------------------------------
# The launcher's memory layout and the lguest device page (spec §2.2, §2.6).
DEVICE_PAGES = 256             # 1 MiB above RAM for the device page and vrings
LGUEST_VRING_ALIGN = PAGE_SIZE
LAUNCHER_VRING_NUM = 256

# Device record header: type, num_vq, feature_len, config_len, status.
DEVICE_DESC = struct.Struct("<BBBBB")
DEVICE_DESC_TYPE = 0
DEVICE_DESC_NUM_VQ = 1
DEVICE_DESC_FEATURE_LEN = 2
DEVICE_DESC_CONFIG_LEN = 3
DEVICE_DESC_STATUS = 4
# struct lguest_vqconfig {u16 num, u16 irq, u32 pfn}, packed after the header.
VQCONFIG = struct.Struct("<HHI")

VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4

VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FAILED = 0x80

# Legacy vring (virtio 0.9.5) pieces.
VRING_DESC = struct.Struct("<QIHH")    # addr, len, flags, next
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
VRING_USED_ELEM = struct.Struct("<II")  # id, len

# virtio block request header and status.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_OUTHDR = struct.Struct("<IIQ")   # type, ioprio, sector
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_FLUSH = 9
SECTOR_SIZE = 512

# Device-independent feature bits, in every device's bitmap.
VIRTIO_F_ANY_LAYOUT = 27            # headers need not sit in a descriptor of their own
VIRTIO_RING_F_INDIRECT_DESC = 28    # a descriptor may point at a table of descriptors

# virtio net: feature bits, and the 3.x config space {u8 mac[6], u16 status, u16 max_virtqueue_pairs}.
VIRTIO_NET_F_CSUM = 0               # the device completes partial checksums of what the Guest sends
VIRTIO_NET_F_GUEST_CSUM = 1         # the Guest takes frames with partial checksums
VIRTIO_NET_F_MAC = 5                # config space holds the Guest's MAC
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_CONFIG = struct.Struct("<6sHH")


def vring_size(num: int, align: int = LGUEST_VRING_ALIGN) -> int:
    """Bytes of a legacy vring of `num` entries: descriptors, avail, then used at `align`."""
    return vring_used_offset(num, align) + 6 + VRING_USED_ELEM.size * num


def vring_avail_offset(num: int) -> int:
    """The avail ring follows the descriptor table directly."""
    return VRING_DESC.size * num


def vring_used_offset(num: int, align: int = LGUEST_VRING_ALIGN) -> int:
    """The used ring starts at the first `align` boundary after avail (flags, idx, ring[num], used_event)."""
    end_of_avail = vring_avail_offset(num) + 2 * (3 + num)
    return (end_of_avail + align - 1) & ~(align - 1)


def device_record_size(num_vq: int, feature_len: int, config_len: int) -> int:
    """One device page record: header, vqconfigs, two feature bitmaps, config space."""
    return DEVICE_DESC.size + VQCONFIG.size * num_vq + 2 * feature_len + config_len


# --------------------------------------------------------------------------
# Paging bits the host checks (non-PAE, spec §4.3).
PTE_PRESENT = 0x001
PTE_RW = 0x002
PTE_USER = 0x004
PTE_ACCESSED = 0x020
PTE_DIRTY = 0x040
PTE_PSE = 0x080
PTE_GLOBAL = 0x100
PGD_ALLOWED_FLAGS = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY
PTRS_PER_PGD = 1024
PTRS_PER_PTE = 1024
