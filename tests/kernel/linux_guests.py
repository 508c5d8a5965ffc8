"""The kernel tier's Linux scenarios: a real 3.18 Guest's every device, through real launchers.

Run by driver.py, on the genuine /dev/lguest (CUSE in the VM, FUSE on the
host).  Three launchers, each its own way of holding Guest RAM:

  hist        the unmodified 3.18 tools/lguest (LGUEST_HISTORICAL_LAUNCHER):
              private RAM, so the service mirrors it
  32          the project's 32-bit launcher (native/build/launcher/lguest32),
              shared RAM
  32-private  the same with --private: mirror mode again

The Guest is LGUEST_LINUX_KERNEL on LGUEST_LINUX_INITRD (docs/linux-guest.md);
its /init picks a scenario from `lgtest=`.  A scenario whose pieces are
missing is blocked, naming the variable.

The historical launcher always opens /dev/lguest.  Through FUSE the node is
elsewhere, so it runs in a mount namespace of its own whose /dev is a small
tmpfs holding the few nodes a launcher opens, with the served node bound at
/dev/lguest; nothing outside that namespace changes.

Networking (`net`) happens only inside a network namespace the scenario
creates and deletes: the launcher's tap, its address and the host-side
servers live there, and the Guest talks to nothing else.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Sequence

import driver

MEM_MB = "64"                 # the kernel is linked at 16 MiB; the launcher puts the initrd at the top
BLK_MB = 4
BIG_MB = 32
NET_HOST, NET_GUEST = "192.168.77.1", "192.168.77.2"   # a /24 by class: the tap's route covers the Guest
UPLOAD_PORT, DOWNLOAD_PORT = 7001, 7002
NET_BLOB = 1 << 20
LAUNCHERS = ("hist", "32", "32-private")
DEV_NODES = ("null", "zero", "full", "random", "urandom")

# A launcher's own /dev, in its own mount namespace: $1 is the served node, the rest the command.
PRIVATE_DEV = """set -e
node=$1; root=$2; shift 2
mount -t tmpfs -o mode=755 lguest-dev "$root"
for n in {nodes}; do touch "$root/$n"; mount --bind "/dev/$n" "$root/$n"; done
if [ -e /dev/net/tun ]; then mkdir "$root/net"; touch "$root/net/tun"; mount --bind /dev/net/tun "$root/net/tun"; fi
touch "$root/lguest"; mount --bind "$node" "$root/lguest"
mount --move "$root" /dev
exec "$@"
""".format(nodes=" ".join(DEV_NODES))

# The host side of `net`, inside the scenario's network namespace: receive a stream and answer its
# md5, then send a known blob; print what was received.
NET_SERVER = f"""
import hashlib, socket, sys
up = socket.create_server(("0.0.0.0", {UPLOAD_PORT}))
down = socket.create_server(("0.0.0.0", {DOWNLOAD_PORT}))
print("READY", flush=True)
blob = open(sys.argv[1], "rb").read()
c, _ = up.accept()
h, n = hashlib.md5(), 0
while chunk := c.recv(65536):
    h.update(chunk); n += len(chunk)
c.sendall(h.hexdigest().encode() + b"\\n"); c.close()
print("RECEIVED", n, h.hexdigest(), flush=True)
c, _ = down.accept()
c.sendall(blob); c.close()
print("SENT", len(blob), flush=True)
"""


class Missing(driver.Blocked):
    """An environment variable names nothing usable."""


def _env_file(var: str) -> pathlib.Path:
    value = os.environ.get(var)
    if not value or not os.path.isfile(value):
        raise Missing(f"{var} is unset or names no file (see docs/linux-guest.md)")
    return pathlib.Path(value)


def launcher_command(which: str) -> list[str]:
    """The argv prefix that starts launcher `which` against the served node."""
    if which == "hist":
        path = _env_file("LGUEST_HISTORICAL_LAUNCHER")
        if driver.NODE == pathlib.Path("/dev/lguest"):
            return [str(path)]
        root = driver.SCRATCH / "lguest-dev"
        root.mkdir(exist_ok=True)
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PRIVATE_DEV, "sh",
                str(driver.NODE), str(root), str(path)]
    launcher = driver.LAUNCHERS["32"]
    if not launcher.exists():
        raise driver.Blocked(f"{launcher.relative_to(driver.ROOT)} is not built")
    return [str(launcher)] + (["--private"] if which == "32-private" else [])


class LinuxLaunch(driver.Launch):
    """A launcher running the Linux Guest: `options` before the memory size, `guest_args` after the kernel."""

    def __init__(self, which: str, guest_args: Sequence[str], options: Sequence[str] = (),
                 prefix: Sequence[str] = ()) -> None:
        kernel = _env_file("LGUEST_LINUX_KERNEL")
        initrd = _env_file("LGUEST_LINUX_INITRD")
        argv = [*prefix, *launcher_command(which), *options, f"--initrd={initrd}", MEM_MB, str(kernel),
                *guest_args]
        self.start(argv)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()


def _finish(launch: LinuxLaunch, timeout: float) -> dict:
    facts = launch.finish(timeout)
    facts["output"] = facts["output"].replace("\r\n", "\n")
    return facts


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _pattern(mb: int) -> bytes:
    """Bytes no two sectors of which are equal, cheap to make: each 512-byte sector names itself."""
    return b"".join((b"LGBLK%010d" % i).ljust(512, b".") for i in range(mb * 2048))


# ----------------------------------------------------------------------------- scenarios

def blk(which: str, timeout: float) -> Callable[[driver.Server], dict]:
    """lgtest=blk on a 4 MiB disk; the host file is checked afterwards."""
    def scenario(server: driver.Server) -> dict:
        server.ensure()
        image = driver.SCRATCH / f"linux-blk-{which}.img"
        data = _pattern(BLK_MB)
        image.write_bytes(data)
        facts = _finish(LinuxLaunch(which, ["lgtest=blk"], [f"--block={image}"]), timeout)
        after = image.read_bytes()
        expect = bytearray(data)
        expect[512:512 + 19] = b"LGUEST-BLK-WRITE-OK"
        facts.update(md5_before=_md5(data), md5_after=_md5(after), image_as_expected=after == bytes(expect))
        return facts
    return scenario


def big(which: str, timeout: float) -> Callable[[driver.Server], dict]:
    """32 MiB written by the Guest and read back, with checksums on both sides.

    The disk is 64 MiB: the host fills the first half; the Guest copies it
    to the second half, closes the device (which drops its page cache),
    and checksums the second half as the device returns it.
    """
    def scenario(server: driver.Server) -> dict:
        server.ensure()
        image = driver.SCRATCH / f"linux-big-{which}.img"
        half = _pattern(BIG_MB)
        image.write_bytes(half + bytes(len(half)))
        blocks = (BIG_MB << 20) // 65536
        command = (f"dd if=/dev/vda of=/dev/vda bs=64k count={blocks} seek={blocks} conv=fsync 2>/dev/null; "
                   f"echo BIG-COPIED rc=$?; "
                   f"echo BIG-MD5: $(dd if=/dev/vda bs=64k skip={blocks} 2>/dev/null | md5sum); exit\n")
        launch = LinuxLaunch(which, ["lgtest=shell"], [f"--block={image}"])
        if launch.wait_output(r"/ # ", timeout):
            launch.send(command.encode())
        facts = _finish(launch, timeout)
        after = image.read_bytes()
        facts.update(md5_written=_md5(half), md5_host_second_half=_md5(after[len(half):]),
                     first_half_kept=after[:len(half)] == half)
        return facts
    return scenario


def console(which: str, timeout: float) -> Callable[[driver.Server], dict]:
    """An interactive shell on hvc0, typed into the launcher's stdin once the prompt is there."""
    def scenario(server: driver.Server) -> dict:
        server.ensure()
        launch = LinuxLaunch(which, ["lgtest=shell"])
        if launch.wait_output(r"/ # ", timeout):
            launch.send(b"echo MARK:$((6*7)); ls /sys/bus/virtio/drivers\n")
            if launch.wait_output(r"MARK:42", timeout):
                launch.send(b"exit\n")
        return _finish(launch, timeout)
    return scenario


def rng(which: str, timeout: float) -> Callable[[driver.Server], dict]:
    def scenario(server: driver.Server) -> dict:
        server.ensure()
        return _finish(LinuxLaunch(which, ["lgtest=rng"], ["--rng"]), timeout)
    return scenario


def reboot(which: str, timeout: float) -> Callable[[driver.Server], dict]:
    """First boot marks the disk and reboots (ERESTART: the launcher starts over); the second powers off."""
    def scenario(server: driver.Server) -> dict:
        server.ensure()
        image = driver.SCRATCH / f"linux-reboot-{which}.img"
        image.write_bytes(bytes(1 << 20))
        facts = _finish(LinuxLaunch(which, ["lgtest=reboot"], [f"--block={image}"]), timeout)
        facts["disk_head_after"] = image.read_bytes()[:16].hex()
        return facts
    return scenario


def net(which: str, timeout: float) -> Callable[[driver.Server], dict]:
    """--tunnet with a tap in a namespace of our own: eth0 up, a ping, TCP both ways with checksums."""
    def scenario(server: driver.Server) -> dict:
        _env_file("LGUEST_LINUX_KERNEL")            # without the kit, say so first
        server.ensure()
        if not os.path.exists("/dev/net/tun"):
            raise driver.Blocked("/dev/net/tun does not exist (modprobe tun)")
        ns = f"lgtest-{os.getpid()}"
        blob = os.urandom(NET_BLOB)
        blob_path = driver.SCRATCH / "net-blob"
        blob_path.write_bytes(blob)
        image = driver.SCRATCH / f"linux-net-{which}.img"
        disk = _pattern(1)
        image.write_bytes(disk)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        peer = None
        try:
            subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
            peer = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", NET_SERVER, str(blob_path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert peer.stdout is not None
            ready = peer.stdout.readline().strip()
            command = (f"ip addr add {NET_GUEST}/24 dev eth0 && ip link set eth0 up && echo NET-ETH0-UP; "
                       f"ping -c 2 -W 10 {NET_HOST} >/dev/null && echo NET-PING-OK; "
                       f"echo NET-UPLOAD-ANSWER: $(dd if=/dev/vda bs=64k count=16 2>/dev/null | "
                       f"nc {NET_HOST} {UPLOAD_PORT}); "
                       f"echo NET-DOWNLOAD-MD5: $(nc {NET_HOST} {DOWNLOAD_PORT} </dev/null | md5sum); exit\n")
            launch = LinuxLaunch(which, ["lgtest=shell"], [f"--tunnet={NET_HOST}", f"--block={image}"],
                                 prefix=["ip", "netns", "exec", ns])
            if launch.wait_output(r"/ # ", timeout):
                launch.send(command.encode())
            facts = _finish(launch, timeout)
            try:
                peer_out = peer.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                peer.kill()
                peer_out = peer.communicate()[0]
            facts.update(server_ready=ready, server=peer_out, upload_md5=_md5(disk), upload_bytes=len(disk),
                         download_md5=_md5(blob))
            return facts
        finally:
            if peer is not None and peer.poll() is None:
                peer.kill()
                peer.wait()
            subprocess.run(["ip", "netns", "delete", ns], check=False)
    return scenario


KINDS: dict[str, Callable[[str, float], Callable[[driver.Server], dict]]] = {
    "blk": blk, "big": big, "console": console, "rng": rng, "reboot": reboot, "net": net}


def scenarios(timeout: float, repeat_blk: int) -> list[tuple[str, Callable[[driver.Server], dict]]]:
    """linux-KIND-LAUNCHER for every kind and launcher; linux-blk-LAUNCHER-N repeats blk N times."""
    out = []
    for which in LAUNCHERS:
        out += [(f"linux-{kind}-{which}", make(which, timeout)) for kind, make in KINDS.items()]
        out += [(f"linux-blk-{which}-{n}", blk(which, timeout)) for n in range(1, repeat_blk + 1)]
    return out
