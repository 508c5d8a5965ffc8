"""Mirror mode piece by piece, with both sides in this process.

The "launcher" is a PrivateGuestRam laid out like a real one (zero page
e820, a device page with one block device and its ring); the host side is a
MirrorGuestMemory of it, reached through process_vm_readv/writev on our own
pid exactly as it would reach another process.  Each test writes on one
side, runs one sync point, and checks what crossed and what did not.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os

import pytest

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.handles import MIRROR, acquire
from cuse_lguest.memory.mirror import MirrorGuestMemory
from cuse_lguest.memory.shared import SharedGuestMemory, open_guest_memory
from cuse_lguest.testing.guestram import GuestRam, PrivateGuestRam
from cuse_lguest.testing.layout import DeviceArea, write_boot_params
from cuse_lguest.virtio import Buffer, Vring, feature_bitmap

MEM = 1 << 20
EVENT_IDX = 29


@pytest.fixture
def launcher():
    """Private RAM with a block device offering FLUSH and EVENT_IDX, config = 8 bytes."""
    with PrivateGuestRam(MEM) as ram:
        area = DeviceArea(ram.buf, MEM, ram.size)
        ram.dev = area.add_device("block", abi.VIRTIO_ID_BLOCK, 1, (abi.VIRTIO_BLK_F_FLUSH, EVENT_IDX),
                                  b"\x11" * 8)
        write_boot_params(ram.buf, MEM, ["test"])
        ram.pfnlimit = area.limit // abi.PAGE_SIZE
        yield ram


@pytest.fixture
def mirror(launcher):
    mem = open_guest_memory(acquire(os.getpid(), launcher.base, launcher.pfnlimit))
    yield mem
    mem.close()


def record(ram):
    dev = ram.dev
    features = dev.record_gpa + abi.DEVICE_DESC.size + abi.VQCONFIG.size
    return dev, features, dev.accepted_gpa, dev.accepted_gpa + dev.feature_len   # ..., config gpa


def start_device(launcher, mirror) -> tuple[Vring, Vring]:
    dev = launcher.dev
    mirror.view[dev.status_gpa] = abi.VIRTIO_CONFIG_S_DRIVER_OK
    mirror.before_notify(dev.record_gpa)
    vq = dev.vqs[0]
    return Vring(launcher.buf, vq.gpa, vq.num), Vring(mirror.view, vq.gpa, vq.num)


# ---- choosing the mode, and INITIALIZE ----------------------------------------

def test_private_ram_is_mirrored_and_shared_ram_is_shared():
    with PrivateGuestRam(MEM) as private, GuestRam(MEM) as shared:
        mirrored = acquire(os.getpid(), private.base, MEM // abi.PAGE_SIZE)
        assert mirrored.mode == MIRROR
        mirrored.close()
        mem = open_guest_memory(acquire(os.getpid(), shared.base, MEM // abi.PAGE_SIZE))
        assert isinstance(mem, SharedGuestMemory)
        mem.close()


def test_a_hole_is_not_mirrored_and_an_unreadable_range_is_refused():
    hole = mmap.mmap(-1, 3 * abi.PAGE_SIZE, mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(hole))
    ctypes.CDLL(None).munmap(ctypes.c_void_p(base + abi.PAGE_SIZE), abi.PAGE_SIZE)
    with pytest.raises(GuestSetupError) as err:
        acquire(os.getpid(), base, 3)
    assert err.value.errno == errno.EFAULT and "hole at" in str(err.value)
    # Mapped when the handles were taken, gone when the mirror first reads it.
    handles = acquire(os.getpid(), base, 1)
    hole.close()
    with pytest.raises(GuestSetupError) as err:
        MirrorGuestMemory(handles)
    assert err.value.errno == errno.EFAULT and "launcher memory gone" in str(err.value)


def test_initialize_pulls_everything_and_finds_the_device_page(launcher, mirror):
    assert isinstance(mirror, MirrorGuestMemory)
    _, features, _, _ = record(launcher)
    theirs = bytearray(launcher.buf[:launcher.pfnlimit * abi.PAGE_SIZE])
    theirs[features + EVENT_IDX // 8] &= ~0x20                       # the one byte shown differently
    assert bytes(mirror.view) == bytes(theirs)
    assert mirror.read_bytes(abi.CMDLINE_GPA, 5) == b"test\0"
    assert mirror.devpage.gpa == MEM and len(mirror.rings) == 1


# ---- the device page ------------------------------------------------------------

def test_device_page_merges_byte_wise_both_ways(launcher, mirror):
    dev, _, accepted, config = record(launcher)
    mirror.view[accepted] = 0x02                       # the Guest accepts a feature...
    mirror.view[dev.status_gpa] = 7                    # ...and says so
    launcher.buf[config + 3] = 0x99                    # meanwhile the launcher changes its config
    mirror.before_notify(dev.record_gpa)
    assert launcher.buf[accepted] == 0x02 and launcher.buf[dev.status_gpa] == 7
    assert launcher.buf[config:config + 8] == b"\x11\x11\x11\x99" + b"\x11" * 4   # not undone by the push
    assert mirror.view[config + 3] == 0x99             # and the Guest sees it


def test_event_idx_is_hidden_from_the_guest_only(launcher, mirror):
    _, features, _, _ = record(launcher)
    byte = EVENT_IDX // 8
    assert launcher.buf[features + byte] & 0x20
    assert not mirror.view[features + byte] & 0x20
    assert mirror.view[features + 1] == launcher.buf[features + 1] == feature_bitmap([9])[1]


# ---- rings ---------------------------------------------------------------------------

def test_a_kick_publishes_new_chains_and_hides_no_interrupt(launcher, mirror):
    theirs, ours = start_device(launcher, mirror)
    mirror.write_bytes(0x10000, b"request header!!")
    ours.add_chain(0, [Buffer(0x10000, 16, False), Buffer(0x20000, 512, True)])
    ours.avail_flags = abi.VRING_AVAIL_F_NO_INTERRUPT
    assert theirs.avail_idx == 0                      # nothing crosses before the sync point
    mirror.before_notify(ours.gpa)
    assert theirs.avail_idx == 1 and theirs.avail_flags == 0
    chain = theirs.chain(theirs.avail_entry(0))
    assert theirs.read_buffers(chain.readable) == b"request header!!"


def test_an_irq_pulls_used_buffers_and_hides_no_notify(launcher, mirror):
    theirs, ours = start_device(launcher, mirror)
    ours.add_chain(0, [Buffer(0x10000, 16, False), Buffer(0x20000, 512, True)])
    mirror.before_notify(ours.gpa)
    theirs.write_buffers(theirs.chain(0).writable, b"\xCD" * 512)
    theirs.push_used(0, 512)
    theirs.used_flags = abi.VRING_USED_F_NO_NOTIFY
    assert ours.used_idx == 0
    drops = []
    mirror.code_changed = lambda ranges: drops.append(list(ranges))
    mirror.on_irq()
    assert ours.used_idx == 1 and ours.used_entry(0).len == 512 and ours.used_flags == 0
    assert mirror.read_bytes(0x20000, 512) == b"\xCD" * 512
    assert drops == [[(0x20000, 512)]]                # pulled bytes may be code


def test_used_buffers_arrive_with_the_launchers_irq(launcher, mirror):
    """Nothing looks at the launcher between sync points: its used buffers wait for the LHREQ_IRQ that follows."""
    theirs, ours = start_device(launcher, mirror)
    ours.add_chain(0, [Buffer(0x20000, 8, True)])
    mirror.before_notify(ours.gpa)
    theirs.write_buffers(theirs.chain(0).writable, b"irq-only")
    theirs.push_used(0, 8)
    pulls = mirror.counters()["pull_calls"]
    assert ours.used_idx == 0 and mirror.counters()["pull_calls"] == pulls
    mirror.on_irq()
    assert ours.used_idx == 1 and mirror.read_bytes(0x20000, 8) == b"irq-only"


def test_a_kick_sends_the_device_page_only_when_the_guest_wrote_there(launcher, mirror):
    theirs, ours = start_device(launcher, mirror)
    before = mirror.counters()
    ours.add_chain(0, [Buffer(0x10000, 16, False)])
    mirror.before_notify(ours.gpa)                    # a kick: the ring goes, the untouched page does not
    after = mirror.counters()
    assert after["pull_calls"] == before["pull_calls"] and after["push_calls"] > before["push_calls"]
    dev, _, accepted, _ = record(launcher)
    mirror.view[dev.accepted_gpa] = 0x01              # the Guest writes a field of the page
    mirror.before_notify(ours.gpa)
    assert mirror.counters()["pull_calls"] == after["pull_calls"] + 1
    assert launcher.buf[dev.accepted_gpa] == 0x01


def test_guest_owned_bytes_never_cross_without_a_notify(launcher, mirror):
    theirs, ours = start_device(launcher, mirror)
    mirror.write_bytes(0x30000, b"guest private")
    ours.add_chain(0, [Buffer(0x30000, 13, False)])
    mirror.on_irq()
    mirror.at_run_entry()
    assert theirs.avail_idx == 0 and launcher.buf[0x30000:0x3000D] == bytes(13)


def test_reset_takes_the_launchers_zeroed_ring(launcher, mirror):
    theirs, ours = start_device(launcher, mirror)
    ours.add_chain(0, [Buffer(0x20000, 8, True)])
    mirror.before_notify(ours.gpa)
    dev, _, accepted, _ = record(launcher)
    mirror.view[dev.status_gpa] = 0
    mirror.before_notify(dev.record_gpa)              # the launcher resets: zeroes accepted and the ring
    size = abi.vring_size(ours.num)
    launcher.buf[ours.gpa:ours.gpa + size] = bytes(size)
    launcher.buf[accepted] = 0
    mirror.at_run_entry()
    assert mirror.read_bytes(ours.gpa, size) == bytes(size) and mirror.view[accepted] == 0
    assert not any(r.live for r in mirror.rings.values())


def test_early_console_string_is_pushed_up_to_its_nul(launcher, mirror):
    mirror.write_bytes(0x40000, b"early words\0not this")
    mirror.before_notify(0x40000)
    assert launcher.buf[0x40000:0x40000 + 20] == b"early words\0" + bytes(8)


# ---- a launcher whose memory goes away ----------------------------------------------------

def test_unmapped_launcher_memory_is_a_guest_fault(launcher, mirror):
    start_device(launcher, mirror)
    launcher.close()
    for sync in (mirror.at_run_entry, mirror.on_irq, lambda: mirror.before_notify(0x40000)):
        with pytest.raises(GuestFault, match=r"^launcher memory gone: .+ \(pid \d+\)$"):
            sync()
    counts = mirror.counters()
    assert counts["pull_calls"] > 0 and counts["push_calls"] > 0
