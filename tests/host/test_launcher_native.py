"""The C launcher (native/launcher) without a /dev/lguest: argument handling, loading and layout.

A regular file stands in for the device node (LGUEST_DEVICE).  The launcher
writes INITIALIZE into it at position 0, then keeps pread()ing word 0 back:
that word is 0 (LHREQ_INITIALIZE), which the launcher takes as an early
console string at gpa 0 (the zero page starts with a NUL, so it prints
nothing) and reads again.  While it spins there the test reads the
launcher's guest memory through /proc/<pid>/mem and checks every byte the
spec fixes, then steers the launcher by overwriting word 0 (a notify value)
and, where needed, guest memory.  A genuine /dev/lguest run is the VM tier's.
"""
from __future__ import annotations

import os
import pathlib
import re
import struct
import subprocess
import time

import pytest

from cuse_lguest import abi
from cuse_lguest.testing.kernels import make_bzimage, make_elf
from cuse_lguest.virtio import parse_device_page

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "native" / "build"
MB = 1 << 20
WORD = {"lguest32": 4, "lguest64": 8}


@pytest.fixture(scope="module")
def launchers() -> pathlib.Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "native" / "launcher"), f"BUILD={BUILD}"], check=True)
    return BUILD / "launcher"


@pytest.fixture(params=["lguest32", "lguest64"])
def launcher(request, launchers) -> tuple[pathlib.Path, int]:
    return launchers / request.param, WORD[request.param]


class Run:
    """One launcher process attached to a regular file instead of /dev/lguest."""

    def __init__(self, exe: pathlib.Path, word: int, args: list[str], tmp: pathlib.Path,
                 prefix: tuple[str, ...] = ()) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root to read the launcher's memory through /proc/<pid>/mem")
        self.word = word
        self.fmt = "<I" if word == 4 else "<Q"
        self.node = tmp / "node"
        self.node.write_bytes(b"")
        self.out_path, self.err_path = tmp / "stdout", tmp / "stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # Own session: a dying helper makes the launcher SIGTERM its whole process group.
            self.proc = subprocess.Popen([*prefix, str(exe), *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env={**os.environ, "LGUEST_DEVICE": str(self.node)},
                                         start_new_session=True)
        self.init = self._wait_for_words(4)
        assert self.init[0] == abi.LHREQ_INITIALIZE
        self.base, self.pfnlimit, self.start = self.init[1:]

    def _wait_for_words(self, n: int, at: int = 0) -> list[int]:
        deadline = time.monotonic() + 60
        while self.node.stat().st_size < at + n * self.word:
            if self.proc.poll() is not None:
                pytest.fail(f"launcher exited {self.proc.returncode}: {self.err_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("launcher never wrote its request")
            time.sleep(0.01)
        raw = self.node.read_bytes()[at:at + n * self.word]
        return [struct.unpack_from(self.fmt, raw, i * self.word)[0] for i in range(n)]

    def read(self, gpa: int, n: int) -> bytes:
        with open(f"/proc/{self.proc.pid}/mem", "rb") as f:
            f.seek(self.base + gpa)
            return f.read(n)

    def write(self, gpa: int, data: bytes) -> None:
        with open(f"/proc/{self.proc.pid}/mem", "r+b", buffering=0) as f:
            f.seek(self.base + gpa)
            f.write(data)

    def notify(self, value: int) -> None:
        """Make the next pread() of word 0 return `value`."""
        fd = os.open(self.node, os.O_WRONLY)
        try:
            os.pwrite(fd, struct.pack(self.fmt, value), 0)
        finally:
            os.close(fd)

    def finish(self, value: int | None = None) -> tuple[int, str, bytes]:
        """Send a notify no launcher accepts (>= guest_limit) unless told otherwise; wait for the exit."""
        self.notify((1 << (8 * self.word)) - 1 if value is None else value)
        rc = self.proc.wait(timeout=60)
        return rc, self.err_path.read_text(), self.out_path.read_bytes()

    def maps(self) -> str:
        return pathlib.Path(f"/proc/{self.proc.pid}/maps").read_text()


def kernel_elf(tmp: pathlib.Path) -> tuple[pathlib.Path, bytes, bytes]:
    text = bytes(range(256)) * 20          # page-aligned segment: may be file-mapped
    data = b"DATA-SEGMENT" * 10            # unaligned segment: copied
    path = tmp / "vmlinux"
    path.write_bytes(make_elf([(0x100000, 0xC0100000, text), (0x103010, 0xC0103010, data)], entry=0x100000))
    return path, text, data


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def test_help_and_usage_errors(launcher):
    exe, _ = launcher
    ok = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("Usage: lguest")
    for args in ([], ["64"], ["--bogus", "64", "k"], ["--block"]):
        bad = subprocess.run([str(exe), *args], capture_output=True, text=True)
        assert bad.returncode == 1 and "Usage: lguest" in bad.stderr, args


@pytest.mark.parametrize("args, message", [
    (["0", "k"], "Bad memory size '0'"),
    (["64x", "k"], "Bad memory size '64x'"),
    (["64", "/nonexistent/vmlinux"], "Opening /nonexistent/vmlinux: No such file or directory"),
    (["--block=/nonexistent/disk", "64", "k"], "Opening /nonexistent/disk: No such file or directory"),
    (["64", "TEXT"], "is neither an ELF vmlinux nor a bzImage"),
    (["64", "SHORT"], "is too short for a kernel"),
    (["64", "/bin/true"], "malformed ELF header"),
    (["--tunnet=10.0.0.300", "64", "k"], "Bad --tunnet address '10.0.0.300'"),
    (["--tunnet=10.0.0.1:02:00:00:00:zz:01", "64", "k"], "Bad MAC address '02:00:00:00:zz:01'"),
    (["--tunnet=10.0.0.1:02:00:00:00:00:01:07", "64", "k"], "Bad MAC address"),
])
def test_file_and_argument_errors_print_one_line(launcher, args, message, tmp_path):
    exe, _ = launcher
    (tmp_path / "TEXT").write_text("not a kernel\n" * 100)
    (tmp_path / "SHORT").write_text("tiny")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and message in r.stderr and r.stderr.startswith(exe.name + ": ")


def test_elf_layout_boot_params_and_initialize(launcher, tmp_path):
    exe, word = launcher
    kernel, text, data = kernel_elf(tmp_path)
    run = Run(exe, word, ["64", str(kernel), "console=hvc0", "test=hello"], tmp_path)
    try:
        assert run.start == 0x100000
        # Device page at mem, console's two 3-page rings above it (spec §2.6 example).
        assert run.pfnlimit == 0x4007
        assert run.read(0x100000, len(text)) == text          # p_paddr, not p_vaddr
        assert run.read(0x103010, len(data)) == data
        bp = run.read(0, abi.BOOT_PARAMS_SIZE)
        assert bp[abi.BP_E820_ENTRIES] == 1
        assert abi.E820_ENTRY.unpack_from(bp, abi.BP_E820_MAP) == (0, 64 * MB, abi.E820_RAM)
        assert struct.unpack_from("<H", bp, abi.BP_HDR_VERSION)[0] == 0x0207
        assert bp[abi.BP_LOADFLAGS] == abi.LOADFLAG_KEEP_SEGMENTS
        assert u32(bp, abi.BP_CMD_LINE_PTR) == abi.CMDLINE_GPA
        assert u32(bp, abi.BP_KERNEL_ALIGNMENT) == abi.KERNEL_ALIGNMENT
        assert u32(bp, abi.BP_HARDWARE_SUBARCH) == abi.X86_SUBARCH_LGUEST
        assert u32(bp, abi.BP_RAMDISK_IMAGE) == u32(bp, abi.BP_RAMDISK_SIZE) == bp[abi.BP_TYPE_OF_LOADER] == 0
        touched = {abi.BP_E820_ENTRIES, abi.BP_LOADFLAGS} | set(range(abi.BP_E820_MAP, abi.BP_E820_MAP + 20)) \
            | set(range(abi.BP_HDR_VERSION, abi.BP_HDR_VERSION + 2)) \
            | {o + i for o in (abi.BP_CMD_LINE_PTR, abi.BP_KERNEL_ALIGNMENT, abi.BP_HARDWARE_SUBARCH)
               for i in range(4)}
        assert all(b == 0 for i, b in enumerate(bp) if i not in touched)
        assert run.read(abi.CMDLINE_GPA, 64).split(b"\0")[0] == b"console=hvc0 test=hello"

        recs = parse_device_page(run.read(64 * MB, abi.PAGE_SIZE))
        assert len(recs) == 1 and recs[0].type == abi.VIRTIO_ID_CONSOLE
        assert [(q.num, q.irq, q.pfn) for q in recs[0].vqs] == [(256, 1, 0x4001), (256, 2, 0x4004)]
        assert recs[0].features == b"" and recs[0].config == b""
        assert "memfd:lguest-guest-ram" in run.maps()        # shared RAM by default
    finally:
        rc, err, _ = run.finish()
    assert rc == 1 and err == f"{exe.name}: Bad NOTIFY {(1 << (8 * word)) - 1:#x}\n"


def test_options_create_devices_in_order_console_last(launcher, tmp_path):
    exe, word = launcher
    kernel, _, _ = kernel_elf(tmp_path)
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(8 * 512 + 100))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"INITRD" * 1000)                  # 6000 bytes -> 2 pages
    run = Run(exe, word, ["--rng", f"--block={disk}", f"--initrd={initrd}", "32", str(kernel)], tmp_path)
    try:
        recs = parse_device_page(run.read(32 * MB, abi.PAGE_SIZE))
        assert [r.type for r in recs] == [abi.VIRTIO_ID_RNG, abi.VIRTIO_ID_BLOCK, abi.VIRTIO_ID_CONSOLE]
        assert [q.irq for r in recs for q in r.vqs] == [1, 2, 3, 4]
        assert [q.pfn for r in recs for q in r.vqs] == [0x2001, 0x2004, 0x2007, 0x200A]
        assert run.pfnlimit == 0x200D
        blk = recs[1]
        assert blk.features == bytes([1 << abi.VIRTIO_BLK_F_SEG_MAX, 1 << (abi.VIRTIO_BLK_F_FLUSH - 8)])
        assert blk.accepted == b"\0\0"
        assert struct.unpack("<QII", blk.config) == (8, 0, 254)   # capacity, size_max, seg_max
        assert run.read(32 * MB - 2 * abi.PAGE_SIZE, 6000) == b"INITRD" * 1000
        bp = run.read(0, abi.BOOT_PARAMS_SIZE)
        assert u32(bp, abi.BP_RAMDISK_IMAGE) == 32 * MB - 2 * abi.PAGE_SIZE
        assert u32(bp, abi.BP_RAMDISK_SIZE) == 2 * abi.PAGE_SIZE
        assert bp[abi.BP_TYPE_OF_LOADER] == 0xFF
        assert run.read(abi.CMDLINE_GPA, 1) == b"\0"          # no kernel args: empty command line
    finally:
        run.finish()


def run_in_netns(launcher, tmp_path: pathlib.Path, options: list[str]) -> Run:
    """The launcher with `options` and 32 MiB, in a network namespace of the test's own (its taps go there)."""
    exe, word = launcher
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun does not exist (modprobe tun)")
    kernel, _, _ = kernel_elf(tmp_path)
    # unshare execs the launcher, which keeps unshare's pid: nsenter finds the namespace through it.
    return Run(exe, word, [*options, "32", str(kernel)], tmp_path, prefix=("unshare", "--net", "--"))


def test_tunnet_makes_a_tap_with_the_host_address_and_a_net_device(launcher, tmp_path):
    """--tunnet=IP:MAC: the 3.x launcher's device and tap."""
    run = run_in_netns(launcher, tmp_path, ["--tunnet=192.168.77.1:02:4c:47:00:00:07", "--rng"])
    try:
        recs = parse_device_page(run.read(32 * MB, abi.PAGE_SIZE))
        assert [r.type for r in recs] == [abi.VIRTIO_ID_NET, abi.VIRTIO_ID_RNG, abi.VIRTIO_ID_CONSOLE]
        net = recs[0]
        assert [q.irq for q in net.vqs] == [1, 2]                 # receive, then transmit
        bits = [abi.VIRTIO_NET_F_CSUM, abi.VIRTIO_NET_F_GUEST_CSUM, abi.VIRTIO_NET_F_MAC,
                abi.VIRTIO_NET_F_GUEST_TSO4, abi.VIRTIO_NET_F_GUEST_TSO6, abi.VIRTIO_NET_F_GUEST_ECN,
                abi.VIRTIO_NET_F_HOST_TSO4, abi.VIRTIO_NET_F_HOST_TSO6, abi.VIRTIO_NET_F_HOST_ECN,
                abi.VIRTIO_F_ANY_LAYOUT, abi.VIRTIO_RING_F_INDIRECT_DESC]
        assert int.from_bytes(net.features, "little") == sum(1 << b for b in bits)
        assert net.accepted == bytes(4)
        assert abi.VIRTIO_NET_CONFIG.unpack(net.config) == (bytes.fromhex("024c47000007"), 0, 0)
        ns = ["nsenter", "-t", str(run.proc.pid), "-n", "ip", "-o"]
        addrs = subprocess.run([*ns, "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
        assert re.search(r"^\d+: tap0\s+inet 192\.168\.77\.1/24 ", addrs, re.M), addrs
        link = subprocess.run([*ns, "link", "show", "tap0"], capture_output=True, text=True, check=True).stdout
        assert ",UP" in link
    finally:
        run.finish()


def test_tunnet_without_mac_offers_no_mac(launcher, tmp_path):
    run = run_in_netns(launcher, tmp_path, ["--tunnet=10.9.8.7"])
    try:
        net = parse_device_page(run.read(32 * MB, abi.PAGE_SIZE))[0]
        assert not int.from_bytes(net.features, "little") & (1 << abi.VIRTIO_NET_F_MAC)
        assert net.config == bytes(abi.VIRTIO_NET_CONFIG.size)
    finally:
        run.finish()


def test_bzimage_payload_goes_to_1mib_and_starts_at_code32_start(launcher, tmp_path):
    exe, word = launcher
    payload = b"BZ" * 3000
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage(payload, setup_sects=3, code32_start=0x100040))
    run = Run(exe, word, ["64", str(kernel)], tmp_path)
    try:
        assert run.start == 0x100040
        assert run.read(abi.BZIMAGE_LOAD_ADDR, len(payload)) == payload
        # The file's setup header is not copied into the zero page.
        assert run.read(abi.BP_HDR_MAGIC, 4) == bytes(4)
    finally:
        run.finish()


def test_private_mode_maps_kernel_privately_over_dev_zero(launcher, tmp_path):
    exe, word = launcher
    kernel, text, data = kernel_elf(tmp_path)
    run = Run(exe, word, ["--private", "64", str(kernel)], tmp_path)
    try:
        maps = run.maps()
        assert "memfd:lguest-guest-ram" not in maps and "/dev/zero" in maps
        assert str(kernel) in maps                              # the aligned segment is a private file mapping
        assert run.read(0x100000, len(text)) == text
        assert run.read(0x103010, len(data)) == data
    finally:
        run.finish()


def test_early_console_string_goes_to_stdout(launcher, tmp_path):
    exe, word = launcher
    kernel, _, _ = kernel_elf(tmp_path)
    run = Run(exe, word, ["64", str(kernel)], tmp_path)
    run.write(0x200000, b"early words\0")
    run.notify(0x200000)
    deadline = time.monotonic() + 60
    while b"early words" not in run.out_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    rc, _, out = run.finish()
    assert rc == 1
    # The same word is read back until the test changes it, so the string repeats whole.
    assert out.startswith(b"early words") and out == b"early words" * (len(out) // 11)


def test_status_notify_starts_device_with_eventfd_request(launcher, tmp_path):
    exe, word = launcher
    kernel, _, _ = kernel_elf(tmp_path)
    run = Run(exe, word, ["--verbose", "64", str(kernel)], tmp_path)
    status_gpa = 64 * MB + abi.DEVICE_DESC_STATUS
    run.write(status_gpa, bytes([abi.VIRTIO_CONFIG_S_ACKNOWLEDGE | abi.VIRTIO_CONFIG_S_DRIVER]))
    run.notify(64 * MB)
    # A real device answers 0 to EVENTFD; a file accepts 3 words, which the launcher rightly rejects.
    req = run._wait_for_words(3, at=4 * word)
    rc = run.proc.wait(timeout=60)
    err = run.err_path.read_text()
    assert req[0] == abi.LHREQ_EVENTFD and req[1] == 0x4001 * abi.PAGE_SIZE and req[2] >= 3
    assert rc == 1 and "Device console OK: offered, accepted" in err
    assert err.splitlines()[-1].startswith(f"{exe.name}: Attaching eventfd for console queue 0")


def test_kick_before_start_and_reset_notify(launcher, tmp_path):
    exe, word = launcher
    kernel, _, _ = kernel_elf(tmp_path)
    run = Run(exe, word, ["--verbose", "64", str(kernel)], tmp_path)
    run.notify(64 * MB)                                    # status 0: a reset, which is harmless
    deadline = time.monotonic() + 60
    while "Resetting device console" not in run.err_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    rc, err, _ = run.finish(0x4004 * abi.PAGE_SIZE)       # a kick on queue 1 with no helper
    assert rc == 1 and "Resetting device console" in err
    assert err.splitlines()[-1] == f"{exe.name}: Notification on console before setup!"


def test_non_seekable_node_is_running_guest_failed(launcher, tmp_path):
    exe, _ = launcher
    kernel, _, _ = kernel_elf(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = subprocess.run([str(exe), "64", str(kernel)], capture_output=True, text=True,
                       env={**os.environ, "LGUEST_DEVICE": str(fifo)}, start_new_session=True, timeout=60)
    assert r.returncode == 1 and r.stderr == f"{exe.name}: Running guest failed: Illegal seek\n"
