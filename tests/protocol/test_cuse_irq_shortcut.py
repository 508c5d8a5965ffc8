"""LHREQ_IRQ answered in C: the shortcut is taken for exactly the hot case, and every errno stays the device's.

The Guest behind the real Device is a double that offers the core's real
native IRQ line (cuse_guest_double.NativeLineGuest), so the server registers
the C shortcut for its file.  Device.write is wrapped to count calls: a write
the shortcut answered never reaches it, and every other write must, and then
gets exactly the seed's errno (lguest-abi §1.3).
"""
from __future__ import annotations

import errno

import pytest

import cuse_guest_double
from cuse_lguest.device import Device
from cuse_peer import words

INITIALIZE = words(0, 0x7F000000, 256, 0x100000)


class Shortcut:
    """A served Device with NativeLineGuests, an initialized file `fh`, and counted device writes."""

    def __init__(self, serve, word: int = 8) -> None:
        self.device = Device(cuse_guest_double.make_native_guest, caller_word_size=lambda pid: word,
                             memory=cuse_guest_double.acquire_memory)
        self.s = serve(device=self.device)
        self.fh = self.s.peer.open()
        init = words(0, 0x7F000000, 256, 0x100000, size=word)   # the double maps nothing
        assert self.write(init) == 3 * word
        self.guest = cuse_guest_double.made[-1]
        self.device_writes = 0
        real = self.device.write

        def counted(*args, **kwargs):
            self.device_writes += 1
            return real(*args, **kwargs)
        self.device.write = counted

    def write(self, data: bytes, *, fh: int | None = None, offset: int = 0) -> int:
        return self.s.peer.write_result(self.s.peer.write(self.fh if fh is None else fh, data, offset=offset))

    @property
    def fast(self) -> int:
        return self.s.server.session.fast_irqs


def test_the_hot_irq_is_answered_in_c_and_sets_the_native_pending_bit(serve):
    t = Shortcut(serve)
    assert t.write(words(2, 3)) == 0 and t.write(words(2, 31)) == 0
    assert t.fast == 2 and t.device_writes == 0
    assert t.guest.irq_line.pending == (1 << 3) | (1 << 31)
    assert t.guest.irq_line.take_launcher_mark()       # the mirror-mode sync point is owed
    assert t.guest._irqs == []                          # Guest.irq() never ran


def test_four_byte_words_take_the_shortcut_and_eight_byte_ones_do_not(serve):
    t = Shortcut(serve, word=4)
    assert t.write(words(2, 7, size=4)) == 0
    assert t.fast == 1 and t.guest.irq_line.pending == 1 << 7
    assert t.write(words(2, 7)) == -errno.EINVAL       # 16 bytes on a 4-byte file: wrong shape
    assert t.fast == 1 and t.device_writes == 1


@pytest.mark.parametrize("data, offset, expected", [
    (words(2, 32), 0, -errno.EINVAL),                  # irq >= LGUEST_IRQS
    (words(2, 1 << 40), 0, -errno.EINVAL),             # ... in the high half of the word too
    (words(2), 0, -errno.EFAULT),                      # payload unreadable
    (words(2, 3)[:12], 0, -errno.EFAULT),
    (b"\x02", 0, -errno.EFAULT),                       # request word unreadable
    (words(2, 3, 0), 0, -errno.EINVAL),                # one word too many
    (words(2, 3), 1, -errno.EINVAL),                   # offset >= number of vCPUs
    (words(1, 3), 0, -errno.EINVAL),                   # LHREQ_GETDMA, same shape as an IRQ
    (words(2 | 1 << 32, 3), 0, -errno.EINVAL),         # not LHREQ_IRQ once all 8 bytes count
])
def test_every_other_irq_shaped_write_reaches_the_device_with_its_errno(serve, data, offset, expected):
    t = Shortcut(serve)
    assert t.write(data, offset=offset) == expected
    assert t.device_writes == 1 and t.fast == 0 and t.guest.irq_line.pending == 0


def test_a_dead_guest_gets_enoent_from_the_device(serve):
    t = Shortcut(serve)
    assert t.write(words(2, 3)) == 0
    t.guest.die("test death")
    assert t.write(words(2, 4)) == -errno.ENOENT
    assert t.fast == 1 and t.device_writes == 1 and t.guest.irq_line.pending == 1 << 3


def test_an_unknown_or_released_file_gets_ebadf(serve):
    t = Shortcut(serve)
    assert t.write(words(2, 3), fh=t.fh + 100) == -errno.EBADF
    assert t.s.peer.release(t.fh).error == 0
    assert t.guest.destroyed
    assert t.write(words(2, 3)) == -errno.EBADF
    assert t.fast == 0


def test_before_initialize_an_irq_is_einval(serve):
    s = serve(device=Device(cuse_guest_double.make_native_guest, memory=cuse_guest_double.acquire_memory))
    fh = s.peer.open()
    assert s.peer.write_result(s.peer.write(fh, words(2, 3))) == -errno.EINVAL
    assert s.server.session.fast_irqs == 0


def test_a_guest_without_a_native_line_keeps_the_python_path(serve):
    s = serve()                                  # the plain IrqNotifyGuest double
    fh = s.peer.open()
    assert s.peer.write_result(s.peer.write(fh, INITIALIZE)) == 24
    assert s.peer.write_result(s.peer.write(fh, words(2, 3))) == 0
    assert s.server.session.fast_irqs == 0 and cuse_guest_double.made[0]._irqs == [3]
