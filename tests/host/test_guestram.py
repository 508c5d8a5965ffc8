"""Loading kernels into guest RAM as the launcher does (spec §2.3): ELF vmlinux and bzImage."""
from __future__ import annotations

import pytest

from cuse_lguest import abi
from cuse_lguest.testing.guestram import load_kernel
from cuse_lguest.testing.kernels import make_bzimage, make_elf


def test_elf_segments_go_to_their_physical_address(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf([(0x100000, 0xC0100000, b"\x90" * 16)], entry=0x100000))
    buf = bytearray(4 << 20)
    assert load_kernel(buf, path) == 0x100000
    assert buf[0x100000:0x100010] == b"\x90" * 16


def test_bzimage_payload_goes_to_1mib_and_starts_at_code32_start(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(b"PAYLOAD!", setup_sects=3, code32_start=0x100040))
    buf = bytearray(4 << 20)
    assert load_kernel(buf, path) == 0x100040
    assert buf[abi.BZIMAGE_LOAD_ADDR:abi.BZIMAGE_LOAD_ADDR + 8] == b"PAYLOAD!"
    assert not any(buf[:abi.BZIMAGE_LOAD_ADDR])      # nothing of the setup code or header lands low


def test_neither_elf_nor_bzimage_is_refused(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="not a bzImage"):
        load_kernel(bytearray(4 << 20), path)


def test_a_payload_larger_than_memory_is_refused(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(b"x" * (2 << 20)))
    with pytest.raises(ValueError, match="does not fit"):
        load_kernel(bytearray(2 << 20), path)
