"""A real Linux 3.18 lguest Guest through the host tier (issue 8).

Path: cuse_lguest.testing.launcher -> cuse_lguest.device.Device -> cuse_lguest.core -> Unicorn,
all in this process.  The kernels and the initramfs are not in the repository: build them
as docs/linux-guest.md describes and point these at them:

    LGUEST_LINUX_KERNEL        bzImage with the one-line read_cr4_safe fix (or its vmlinux)
    LGUEST_LINUX_KERNEL_STOCK  the unmodified 3.18 bzImage (or its vmlinux)
    LGUEST_LINUX_INITRD        the gzip'ed newc initramfs with the scenario /init

Every test skips, saying which variable is missing, when one it needs is unset.

The stock kernel must die exactly as it does on the real 3.x host: early boot reads CR4
with a bare `mov %cr4,%eax` (read_cr4_safe is not paravirtualized by lguest), which
faults with #GP(0) at ring 1 before the Guest has an IDT, so the host kills it with
"unhandled trap 13 at 0x<eip> (0x0)".
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import pathlib
import re
import shutil
import struct
import subprocess
import time
import zlib

import pytest

from cuse_lguest import abi
from cuse_lguest.testing.launcher import Block, Launcher, Rng, WaitFor
from cuse_lguest.testing.transport import DeviceTransport
from cuse_lguest.vm import cpio

pytestmark = pytest.mark.linux

MEM_MB = 64                      # the kernel is linked at 16 MiB physical; the initrd goes at the top
TIMEOUT = 120.0                  # a boot takes 2-4 s alone; the machine may be shared, and a hung core must not stall the suite
POWEROFF = "CRASH: Power down"
MOV_CR4_EAX = bytes.fromhex("0f20e0")
TRAP13 = re.compile(r"^unhandled trap 13 at (0x[0-9a-f]+) \(0x0\)$")


# --------------------------------------------------------------------------- fixtures

def _env_file(var: str, what: str) -> pathlib.Path:
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"{var} is unset: build {what} as docs/linux-guest.md describes and set {var} to its path")
    path = pathlib.Path(value)
    if not path.is_file():
        pytest.skip(f"{var}={value} does not exist (see docs/linux-guest.md)")
    return path


@pytest.fixture(scope="module")
def root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the Device maps launcher RAM via /proc/<pid>/map_files and uses pidfd_getfd")


@pytest.fixture(scope="module")
def kernel(root) -> pathlib.Path:
    return _env_file("LGUEST_LINUX_KERNEL", "the patched 3.18 lguest bzImage")


@pytest.fixture(scope="module")
def stock_kernel(root) -> pathlib.Path:
    return _env_file("LGUEST_LINUX_KERNEL_STOCK", "the stock 3.18 lguest bzImage")


@pytest.fixture(scope="module")
def initrd() -> pathlib.Path:
    return _env_file("LGUEST_LINUX_INITRD", "the busybox initramfs")


# --------------------------------------------------------------------------- bzImage handling

def _is_bzimage(data: bytes) -> bool:
    return len(data) > abi.BP_CODE32_START + 4 and data[abi.BP_HDR_MAGIC:abi.BP_HDR_MAGIC + 4] == abi.BOOT_HDR_MAGIC


def _vmlinux_bytes_at(kernel: pathlib.Path, vaddr: int, n: int) -> bytes:
    """The n bytes of the kernel image at virtual address vaddr (gunzipping a bzImage's payload first)."""
    from elftools.elf.elffile import ELFFile

    data = kernel.read_bytes()
    if data[:4] != b"\x7fELF":
        assert _is_bzimage(data), f"{kernel} is neither an ELF vmlinux nor a bzImage"
        skip = (data[abi.BP_SETUP_SECTS] + 1) * 512
        payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)   # boot protocol >= 2.08
        blob = data[skip + payload_offset:skip + payload_offset + payload_length]
        assert blob[:2] == b"\x1f\x8b", "only a gzip-compressed bzImage (CONFIG_KERNEL_GZIP) is understood here"
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    elf = ELFFile(io.BytesIO(data))
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
            return seg.data()[vaddr - seg["p_vaddr"]:vaddr - seg["p_vaddr"] + n]
    raise AssertionError(f"{vaddr:#x} is not in any PT_LOAD segment of {kernel}")


# --------------------------------------------------------------------------- running

def boot(kernel: pathlib.Path, initrd: pathlib.Path, scenario: str | None = None, **kw):
    from cuse_lguest.device import Device   # the default guest factory is the real core
    args = [f"lgtest={scenario}"] if scenario else []
    start = time.monotonic()
    result = Launcher(kernel, mem_mb=MEM_MB, args=args, initrd=initrd, timeout=TIMEOUT, **kw) \
        .run(DeviceTransport(Device()))
    elapsed = time.monotonic() - start
    tail = "\n".join(result.console.splitlines()[-25:])
    print(f"{kernel.name} {scenario or ''}: {elapsed:.2f} s, death={result.death!r} errno={result.errno}\n{tail}")
    assert result.error is None, f"{result.error}\n{result.console}"
    return result


def text(result) -> str:
    """The console with the tty's ONLCR undone."""
    return result.console.replace("\r\n", "\n")


def powered_off(result) -> None:
    assert "LGUEST-GUEST-UP" in result.console, result.console
    assert result.death == POWEROFF and result.errno == errno.ENOENT, result.console


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("private", [False, True], ids=["shared", "private"])
def test_patched_guest_reaches_init_and_powers_off(kernel, initrd, private):
    """In shared RAM, and in the historical launcher's private RAM (mirror mode)."""
    result = boot(kernel, initrd, private=private)
    console = text(result)
    assert "Linux version 3.18." in console
    assert "Booting paravirtualized kernel on lguest" in console
    assert "virtio0 device=0x0003" in console and "driver=virtio_console" in console
    assert "LGUEST-TEST: poweroff" in console and "reboot: Power down" in console
    powered_off(result)


def test_stock_guest_dies_on_its_unparavirtualized_mov_cr4(stock_kernel, initrd):
    result = boot(stock_kernel, initrd)
    assert result.errno == errno.ENOENT, result.console
    match = TRAP13.match(result.death or "")
    assert match, f"death {result.death!r} is not the real host's 'unhandled trap 13 at 0x<eip> (0x0)'"
    eip = int(match.group(1), 16)
    assert _vmlinux_bytes_at(stock_kernel, eip, 3) == MOV_CR4_EAX, f"no mov %cr4,%eax at {eip:#x}"
    assert "LGUEST-GUEST-UP" not in result.console


def test_virtio_block_read_write_and_checksum(kernel, initrd, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xAB" * (1 << 20))
    before = hashlib.md5(disk.read_bytes()).hexdigest()
    result = boot(kernel, initrd, "blk", devices=[Block(disk)])
    powered_off(result)
    console = text(result)
    assert "driver=virtio_blk" in console
    assert "BLK-SECTORS: 2048\n" in console and "BLK-RO: 0\n" in console
    assert f"BLK-MD5-BEFORE: {before}\n" in console
    assert "BLK-SECTOR0: " + "ab" * 32 + "\n" in console
    assert "BLK-READBACK: LGUEST-BLK-WRITE-OK\n" in console
    data = disk.read_bytes()
    expect = bytearray(b"\xAB" * (1 << 20))
    expect[512:512 + 19] = b"LGUEST-BLK-WRITE-OK"      # dd writes just the 19 bytes it was given
    assert data == expect
    assert f"BLK-MD5-AFTER: {hashlib.md5(data).hexdigest()}\n" in console


def test_virtio_rng_gives_bytes(kernel, initrd):
    result = boot(kernel, initrd, "rng", devices=[Rng()])
    powered_off(result)
    assert "RNG-CURRENT: virtio_rng.0\n" in text(result)
    assert re.search(r"^RNG-BYTES: [0-9a-f]{32}$", text(result), re.M), result.console


def test_interactive_shell_on_hvc0(kernel, initrd):
    result = boot(kernel, initrd, "shell",
                  console_input=[WaitFor(b"/ # "), b"echo MARK:$((6*7)); ls /sys/bus/virtio/drivers; exit\n"])
    powered_off(result)
    after = text(result).split("LGUEST-SHELL", 1)[1]
    assert "MARK:42\n" in after and "virtio_console" in after


def test_reboot_asks_the_launcher_to_restart(kernel, initrd, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    result = boot(kernel, initrd, "reboot", devices=[Block(disk)])
    assert "LGUEST-REBOOT-FIRST-BOOT" in result.console and "reboot: Restarting system" in result.console
    assert result.errno == abi.ERESTART, f"death={result.death!r} errno={result.errno}"


def test_reboot_second_boot_sees_the_first_boots_marker(kernel, initrd, tmp_path):
    """A launcher that restarts (as after ERESTART) boots the same disk again; the Guest then powers off."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    first = boot(kernel, initrd, "reboot", devices=[Block(disk)])
    assert "LGUEST-REBOOT-FIRST-BOOT" in first.console and "reboot: Restarting system" in first.console
    assert first.death != POWEROFF, first.console
    assert disk.read_bytes()[:15] == b"LGREBOOT-MARK-1"
    second = boot(kernel, initrd, "reboot", devices=[Block(disk)])
    assert "LGUEST-REBOOT-SECOND-BOOT" in second.console
    powered_off(second)
    assert disk.read_bytes()[:16] == bytes(16)


# --------------------------------------------------------------------------- traps from user mode

# Each case runs in the Guest's user mode (CPL 3).  The expected signal is what a 3.18 i386
# kernel delivers on hardware, and on the real lguest host: it emulates I/O instructions only
# for the Guest kernel (emulate_insn() gives up unless CS's RPL is 1), so user-mode `in`
# is an ordinary #GP(0) reflected to the Guest, like cli, hlt and mov from %cr0.
FAULTS_C = r"""
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
static sigjmp_buf jb;
static void h(int sig, siginfo_t *si, void *uc) {
    printf("  got signal %d code=%d\n", sig, si->si_code); fflush(stdout); siglongjmp(jb, 1);
}
int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_sigaction = h; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    int sigs[] = {SIGSEGV, SIGILL, SIGFPE, SIGTRAP, SIGBUS};
    for (int i = 0; i < 5; i++) sigaction(sigs[i], &sa, 0);
    const char *names[] = {"null-write", "ud2", "div0", "int3", "in-port", "cli", "int-0x1f", "hlt", "mov-cr0", "fpu"};
    for (int t = 0; t < 10; t++) {
        printf("FAULT %s\n", names[t]); fflush(stdout);
        if (sigsetjmp(jb, 1)) continue;
        volatile int z = 0; volatile double d = 1.0;
        switch (t) {
        case 0: *(volatile int *)0 = 1; break;
        case 1: __asm__ volatile("ud2"); break;
        case 2: printf("  %d\n", 5 / z); break;
        case 3: __asm__ volatile("int3"); break;
        case 4: { unsigned char v; __asm__ volatile("inb $0x64,%0" : "=a"(v)); printf("  in gave %x\n", v); } break;
        case 5: __asm__ volatile("cli"); break;
        case 6: __asm__ volatile("int $0x1f"); break;
        case 7: __asm__ volatile("hlt"); break;
        case 8: { unsigned long v; __asm__ volatile("mov %%cr0,%0" : "=r"(v)); printf("  cr0=%lx\n", v); } break;
        case 9: for (int i = 0; i < 1000; i++) d = d * 1.0001 + sqrt(d); printf("  fpu %.6f\n", d); break;
        }
        printf("  no fault\n");
    }
    printf("FAULTS-DONE\n");
    return 0;
}
"""
SI_KERNEL = 128
EXPECTED_FAULTS = {
    "null-write": "got signal 11 code=1",             # SIGSEGV, SEGV_MAPERR: a #PF the Guest handles
    "ud2": "got signal 4 code=2",                     # SIGILL, ILL_ILLOPN: #UD
    "div0": "got signal 8 code=1",                    # SIGFPE, FPE_INTDIV: #DE
    "int3": f"got signal 5 code={SI_KERNEL}",         # SIGTRAP: the DPL-3 breakpoint gate
    "cli": f"got signal 11 code={SI_KERNEL}",         # #GP(0) at CPL 3
    "int-0x1f": f"got signal 11 code={SI_KERNEL}",    # #GP: the gate's DPL is below 3
    "hlt": f"got signal 11 code={SI_KERNEL}",
    "mov-cr0": f"got signal 11 code={SI_KERNEL}",
}


@pytest.fixture(scope="module")
def user_faults(kernel, initrd, tmp_path_factory) -> dict[str, str]:
    """Boot once with a static i386 test program appended to the initramfs; its outcome per case."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the i386 test program")
    work = tmp_path_factory.mktemp("faults")
    (work / "faults.c").write_text(FAULTS_C)
    built = subprocess.run(["gcc", "-m32", "-static", "-O1", "-o", str(work / "faults"), str(work / "faults.c"), "-lm"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"needs gcc -m32 -static (gcc-multilib, libc6-dev-i386): {built.stderr.strip()[-300:]}")
    native = subprocess.run([str(work / "faults")], capture_output=True, text=True, timeout=30).stdout
    base = initrd.read_bytes()
    base += bytes(-len(base) % 512)          # the next archive must start 4-byte aligned; zeros are skipped
    extra = gzip.compress(cpio.archive([cpio.regular("bin/faults", (work / "faults").read_bytes(), 0o755)]), mtime=0)
    combined = work / "initrd-faults.gz"
    combined.write_bytes(base + extra)
    result = boot(kernel, combined, "shell", console_input=[WaitFor(b"/ # "), b"/bin/faults; echo RC=$?; exit\n"])
    powered_off(result)
    console = text(result)
    assert "FAULTS-DONE\nRC=0\n" in console, console

    def outcomes(out: str) -> dict[str, str]:
        found = dict(re.findall(r"^FAULT (\S+)\n  (.*)$", out, re.M))
        assert len(found) == 10, out
        return found

    got = outcomes(console)
    got["native-fpu"] = outcomes(native)["fpu"]
    return got


def test_user_mode_traps_reach_the_guest_kernel(user_faults):
    for case, expected in EXPECTED_FAULTS.items():
        assert user_faults[case] == expected, f"{case}: {user_faults[case]!r}, want {expected!r}"
    assert user_faults["fpu"] == user_faults["native-fpu"]


def test_user_mode_in_is_a_general_protection_fault(user_faults):
    assert user_faults["in-port"] == f"got signal 11 code={SI_KERNEL}", user_faults["in-port"]
