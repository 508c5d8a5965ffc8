"""The VM's initramfs: a cached base image plus a tiny per-run archive.

Stage 1 (busybox, from the initramfs) loads the virtio and 9p modules, mounts
the host's / read-only over 9p, mounts the usual pseudo and tmpfs file
systems on top, and switch_roots into the host's own /bin/sh.  switch_root,
not chroot, because udevadm refuses to act inside a chroot.  Stage 2 runs
the job as root with its output on ttyS1 and its exit status on ttyS2, then
powers the VM off.  The base image depends only on the kernel, busybox and
these scripts, so it is built once and cached under a name that hashes them.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess

from . import cpio

# The 9p tags are not names of files in the initramfs' root: busybox mount
# treats a source that exists as a file as a loop image.
ROOT_TAG = "hostroot"
SCRATCH_TAG = "vmscratch"
PROJECT_TAG = "vmproject"

# Stage 1 mounts fresh tmpfs file systems here, over whatever the host has.
TMPFS_DIRS = (pathlib.Path("/tmp"), pathlib.Path("/run"), pathlib.Path("/var/tmp"), pathlib.Path("/dev/shm"))


def hidden_in_vm(path: pathlib.Path) -> bool:
    """True if `path` lies under a directory the VM covers with a tmpfs (a checkout in /tmp, say)."""
    return any(path == d or d in path.parents for d in TMPFS_DIRS)
EXIT_UNREPORTED = 125

_BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
_APPLETS = ("sh", "mount", "umount", "mkdir", "insmod", "switch_root", "poweroff", "cat", "cp", "ln")

# Under systemd the job is a service of its own target; stage 2 is the same script.
SYSTEMD_TARGET = "vm-job.target"
SYSTEMD_UNITS = {
    SYSTEMD_TARGET: """[Unit]
Description=the VM tier's job
Requires=vm-job.service
After=vm-job.service
AllowIsolate=yes
""",
    "vm-job.service": """[Unit]
Description=the VM tier's job, then power off
After=basic.target systemd-udevd.service systemd-udev-trigger.service
Wants=systemd-udevd.service

[Service]
Type=simple
ExecStart=/bin/sh /run/vm/stage2
StandardInput=null
TimeoutStartSec=infinity
""",
}
# Units that make no sense in this VM: no disks, no network, nothing persistent.
SYSTEMD_MASKED = ("systemd-remount-fs.service", "systemd-firstboot.service", "systemd-journal-flush.service",
                  "systemd-random-seed.service", "systemd-update-utmp.service", "e2scrub_reap.service",
                  "ldconfig.service", "systemd-hwdb-update.service", "systemd-journal-catalog-update.service",
                  "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                  "man-db.timer", "e2scrub_all.timer", "fstrim.timer", "systemd-tmpfiles-clean.timer",
                  "proc-sys-fs-binfmt_misc.automount", "systemd-binfmt.service",
                  "systemd-pstore.service", "dpkg-db-backup.timer")

STAGE1 = f"""#!/bin/sh
# Stage 1: bring up the shared host root, then hand over to its /bin/sh
# (or, when the job asks for it, to systemd as PID 1).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "vm-stage1: $*" >/dev/ttyS0; echo {EXIT_UNREPORTED} >/dev/ttyS2; poweroff -f; }}
for m in /modules/*; do insmod "$m" || echo "vm-stage1: insmod $m failed" >/dev/ttyS0; done
R=/newroot
HOSTROOT="-t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose {ROOT_TAG}"
if [ -s /job/init ]; then
    # systemd as PID 1 writes all over /etc, /var and /run: the read-only host
    # root becomes the lower layer of an overlay whose upper layer is a tmpfs.
    mkdir -p /lower /rw
    mount $HOSTROOT /lower || fail "cannot mount the host root"
    mount -t tmpfs rw /rw
    mkdir -p /rw/upper /rw/work
    mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work $R || fail "cannot mount the overlay root"
else
    mount $HOSTROOT $R || fail "cannot mount the host root"
fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs tmp $R/tmp
mount -t tmpfs run $R/run
mount -t tmpfs vartmp $R/var/tmp
if [ -s /job/scratch ]; then
    S=$(cat /job/scratch)
    mkdir -p "$R$S" 2>/dev/null  # a path under /tmp lies in the fresh tmpfs
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {SCRATCH_TAG} "$R$S" || fail "cannot mount scratch at $S"
fi
if [ -s /job/project ]; then
    # The checkout lies under one of the tmpfs mounts above: bring it back, read-only.
    P=$(cat /job/project)
    mkdir -p "$R$P" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose {PROJECT_TAG} "$R$P" || fail "cannot mount the project at $P"
fi
mkdir -p $R/run/vm
cp /stage2 /job/cmd $R/run/vm/
umount /proc /sys /dev
if [ -s /job/init ]; then
    # The host's fstab names disks this VM does not have.
    : > $R/etc/fstab
    cp /systemd/* $R/etc/systemd/system/
    for u in {" ".join(SYSTEMD_MASKED)}; do ln -sf /dev/null "$R/etc/systemd/system/$u"; done
    exec switch_root $R /lib/systemd/systemd --unit={SYSTEMD_TARGET}
fi
exec switch_root $R /bin/sh /run/vm/stage2
"""


STAGE2 = """# Stage 2: PID 1 is the host's /bin/sh on the shared root.
exec 3>/dev/ttyS1
stty -F /dev/ttyS1 -opost
echo "vm-stage2: job starts at uptime $(cut -d' ' -f1 /proc/uptime)" >/dev/ttyS0
env -i /bin/sh /run/vm/cmd </dev/null >&3 2>&3
rc=$?
echo "vm-stage2: job exited rc=$rc at uptime $(cut -d' ' -f1 /proc/uptime)" >/dev/ttyS0
echo $rc >/dev/ttyS2
sync
echo o >/proc/sysrq-trigger
sleep 60
"""


def _boot_modules(version: str) -> list[pathlib.Path]:
    """The .ko files, in load order, needed before the root can be mounted."""
    # modprobe --show-depends answers for its first module name only.
    out = "".join(subprocess.run(["modprobe", "-S", version, "--show-depends", m], check=True,
                                 capture_output=True, text=True).stdout for m in _BOOT_MODULES)
    seen: dict[str, None] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod":
            seen.setdefault(words[1])
    return [pathlib.Path(p) for p in seen]


def _busybox() -> pathlib.Path:
    found = shutil.which("busybox")
    if found is None:
        raise FileNotFoundError("busybox not found (apt-get install busybox-static)")
    return pathlib.Path(found)


def base_image(version: str, cache_dir: pathlib.Path) -> pathlib.Path:
    """Build (once) and return the cached base initramfs for this kernel."""
    busybox = _busybox()
    modules = _boot_modules(version)
    key = hashlib.sha256("\0".join(
        [version, STAGE1, STAGE2, str(busybox.stat().st_mtime_ns), *SYSTEMD_UNITS.values()]
        + [str(m) for m in modules]
    ).encode()).hexdigest()[:12]
    path = cache_dir / f"base-{version}-{key}.cpio"
    if path.exists():
        return path
    entries = [cpio.directory(d) for d in ("bin", "modules", "proc", "sys", "dev", "newroot", "job", "systemd")]
    entries += [cpio.regular(f"systemd/{name}", text.encode()) for name, text in SYSTEMD_UNITS.items()]
    entries.append(cpio.regular("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [cpio.symlink(f"bin/{a}", "busybox") for a in _APPLETS]
    entries += [cpio.regular(f"modules/{i:02d}-{m.name}", m.read_bytes())
                for i, m in enumerate(modules)]
    entries.append(cpio.regular("init", STAGE1.encode(), 0o755))
    entries.append(cpio.regular("stage2", STAGE2.encode(), 0o755))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_bytes(cpio.archive(entries))
    os.replace(tmp, path)
    return path


def job_archive(script: str, scratch: pathlib.Path | None, project: pathlib.Path | None,
                init: str = "sh") -> bytes:
    """The per-run archive: the job script, where to mount the scratch and project shares, which init."""
    entries = [cpio.directory("job"), cpio.regular("job/cmd", script.encode(), 0o755)]
    if init == "systemd":
        entries.append(cpio.regular("job/init", b"systemd"))
    if scratch is not None:
        entries.append(cpio.regular("job/scratch", str(scratch).encode()))
    if project is not None:
        entries.append(cpio.regular("job/project", str(project).encode()))
    return cpio.archive(entries)
