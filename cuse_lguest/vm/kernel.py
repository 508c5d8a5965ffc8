"""Which kernel the VM boots, and the fast way to boot it.

Debian's stock kernel is used because it ships `cuse` as a module, unlike
many host kernels.  Its bzImage is XZ-compressed, and XZ decompression under
TCG costs about 5 s per boot; the embedded vmlinux ELF is extracted once
(cached) and booted directly through its PVH entry note instead.
"""
from __future__ import annotations

import lzma
import os
import pathlib
import re
import zlib

MODULES_DIR = pathlib.Path("/lib/modules")
BOOT_DIR = pathlib.Path("/boot")


class KernelNotFound(RuntimeError):
    pass


def _version_key(version: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def find_version() -> str:
    """The newest Debian amd64 kernel that has both modules and a bzImage."""
    candidates = [d.name for d in MODULES_DIR.glob("*-amd64")
                  if (BOOT_DIR / f"vmlinuz-{d.name}").exists()]
    if not candidates:
        raise KernelNotFound("no Debian kernel with /boot/vmlinuz-*-amd64 and /lib/modules "
                             "(apt-get install linux-image-amd64)")
    return max(candidates, key=_version_key)


def bzimage(version: str) -> pathlib.Path:
    return BOOT_DIR / f"vmlinuz-{version}"


def _extract_elf(image: bytes) -> bytes | None:
    """Find the compressed payload that decompresses to an ELF file."""
    decoders = ((b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
                (b"\x1f\x8b\x08", lambda: zlib.decompressobj(31)))
    for magic, make in decoders:
        at = image.find(magic)
        while at >= 0:
            try:
                out = make().decompress(image[at:])
            except (lzma.LZMAError, zlib.error):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            at = image.find(magic, at + 1)
    return None


def boot_image(version: str, cache_dir: pathlib.Path) -> pathlib.Path:
    """The cached PVH-bootable vmlinux, or the bzImage if extraction fails."""
    source = bzimage(version)
    cached = cache_dir / f"vmlinux-{version}"
    if cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime:
        return cached
    elf = _extract_elf(source.read_bytes())
    if elf is None:
        return source
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}")
    tmp.write_bytes(elf)
    os.replace(tmp, cached)
    return cached
