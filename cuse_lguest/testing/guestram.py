"""Guest RAM that a test (or the in-process launcher) owns, laid out like a launcher's.

A launcher gives the host a `base` address in its own memory: guest-physical 0
is `base`, and the Guest may touch `pfnlimit` pages from there.  The project's
launcher allocates that range as a MAP_SHARED memfd so the host can map the
same pages (shared mode).  This class does exactly that inside the calling
process, with the historical guard pages around it, so in-process tests go
through the very same `/proc/<pid>/map_files` path as a real launcher.
"""
from __future__ import annotations

import ctypes
import mmap
import os

from elftools.elf.elffile import ELFFile

from cuse_lguest import abi
from cuse_lguest.memory import hostmap



class GuestRam:
    """`mem_bytes` of RAM plus the 1 MiB device area, between two inaccessible guard pages.

    `buf` is a writable mmap of the whole guest-physical range [0, size) and
    `base` is its address in this process: the value INITIALIZE sends.
    """

    def __init__(self, mem_bytes: int, device_pages: int = abi.DEVICE_PAGES) -> None:
        if mem_bytes <= 0 or mem_bytes % abi.PAGE_SIZE:
            raise ValueError(f"guest memory must be a positive multiple of {abi.PAGE_SIZE} bytes")
        self.mem = mem_bytes
        self.size = mem_bytes + device_pages * abi.PAGE_SIZE
        self._fd = os.memfd_create("lguest-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self.size)
        # Reserve guard + RAM + guard with no access, then put the shared memfd over the middle.
        self._span = self.size + 2 * abi.PAGE_SIZE
        self._reserve = hostmap.reserve(self._span)
        self.base = self._reserve + abi.PAGE_SIZE
        try:
            hostmap.map_shared_at(self.base, self.size, self._fd, 0)
        except OSError:
            hostmap.unmap(self._reserve, self._span)
            raise
        # A second, ordinary Python view of the same pages for loading and inspection.
        self.buf = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @property
    def device_page(self) -> int:
        """gpa of the lguest device page: the first page above RAM."""
        return self.mem

    def close(self) -> None:
        if self._fd < 0:
            return
        self.buf.close()
        hostmap.unmap(self._reserve, self._span)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "GuestRam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivateGuestRam:
    """The historical launcher's guest RAM: a MAP_PRIVATE mapping of /dev/zero (spec §2.2).

    No other process can map these pages, so a host must mirror them (mirror
    mode).  Same interface as GuestRam; unlike it there are no guard pages,
    because Python's mmap cannot place a mapping at a chosen address.
    """

    def __init__(self, mem_bytes: int, device_pages: int = abi.DEVICE_PAGES) -> None:
        if mem_bytes <= 0 or mem_bytes % abi.PAGE_SIZE:
            raise ValueError(f"guest memory must be a positive multiple of {abi.PAGE_SIZE} bytes")
        self.mem = mem_bytes
        self.size = mem_bytes + device_pages * abi.PAGE_SIZE
        fd = os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.buf = mmap.mmap(fd, self.size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))

    device_page = GuestRam.device_page

    def close(self) -> None:
        """Unmap the RAM (idempotent); a host still mirroring it finds the launcher's memory gone."""
        self.buf.close()

    def __enter__(self) -> "PrivateGuestRam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_elf(buf: mmap.mmap | bytearray | memoryview, path: str | os.PathLike) -> int:
    """Copy each PT_LOAD segment's file bytes to gpa = p_paddr; return e_entry (spec §2.3).

    Like the historical launcher it insists on an i386 executable and does not
    zero past p_filesz: the Guest clears its own BSS (our RAM starts zeroed anyway).
    """
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.elfclass != 32 or elf["e_machine"] != "EM_386" or elf["e_type"] != "ET_EXEC":
            raise ValueError(f"{path}: not an i386 ET_EXEC ELF kernel")
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD":
                continue
            data = seg.data()
            paddr = seg["p_paddr"]
            if paddr + len(data) > len(buf):
                raise ValueError(f"{path}: segment at {paddr:#x}+{len(data):#x} is beyond guest memory")
            buf[paddr:paddr + len(data)] = data
        return elf["e_entry"]


def load_bzimage(buf: mmap.mmap | bytearray | memoryview, path: str | os.PathLike) -> int:
    """A bzImage the historical way (spec §2.3): skip the boot and setup sectors, put the rest
    at 1 MiB, and enter at the header's code32_start.  The real-mode setup code never runs,
    and the header is not copied into the zero page: the launcher fills that itself.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[abi.BP_HDR_MAGIC:abi.BP_HDR_MAGIC + 4] != abi.BOOT_HDR_MAGIC:
        raise ValueError(f"{path}: no 'HdrS' boot header: not a bzImage")
    skip = (data[abi.BP_SETUP_SECTS] + 1) * 512
    payload = data[skip:]
    if skip >= len(data) or abi.BZIMAGE_LOAD_ADDR + len(payload) > len(buf):
        raise ValueError(f"{path}: the bzImage payload does not fit in guest memory")
    buf[abi.BZIMAGE_LOAD_ADDR:abi.BZIMAGE_LOAD_ADDR + len(payload)] = payload
    return int.from_bytes(data[abi.BP_CODE32_START:abi.BP_CODE32_START + 4], "little")


def load_kernel(buf: mmap.mmap | bytearray | memoryview, path: str | os.PathLike) -> int:
    """An ELF vmlinux or a bzImage, told apart the way the launcher does (the ELF magic first)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    return load_elf(buf, path) if magic == b"\x7fELF" else load_bzimage(buf, path)
