"""cuse_lguest.vm and `cuse-lguest demo` themselves: the pieces the kernel tier stands on.

The first tests need no VM (archive format, rule rendering, job script).
The rest boot their own short VMs: the exit status and output come back,
a hang is reported with the output it had reached, and the demo shows the
guest's hello text.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from cuse_lguest import udev, vm
from cuse_lguest.vm import cpio, job

needs_vm = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None,
                              reason="needs root and qemu-system-x86_64")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio(1) to read the archive back")
def test_cpio_archive_reads_back_with_cpio(tmp_path):
    data = cpio.archive([cpio.directory("d"), cpio.regular("d/f", b"abc\n", 0o755),
                         cpio.symlink("d/l", "f")])
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "d" / "f").read_bytes() == b"abc\n"
    assert os.access(tmp_path / "d" / "f", os.X_OK)
    assert os.readlink(tmp_path / "d" / "l") == "f"


def test_udev_rule_renders_group_and_mode():
    text = udev.rule("lguest", "0666")
    assert 'SUBSYSTEM=="cuse", KERNEL=="lguest", MODE="0666", GROUP="lguest"' in text
    assert f'GROUP="{udev.DEFAULT_GROUP}"' in udev.RULE_FILE.read_text()
    for bad in ("a b", 'x"y', "", "root\n"):
        with pytest.raises(ValueError):
            udev.rule(bad)
    with pytest.raises(ValueError):
        udev.rule(mode="999")


def test_job_script_carries_the_project_and_python():
    script = job.script("true", ["cuse"], job.environment({}), "/")
    assert f"export PYTHONPATH={job.PROJECT_ROOT}" in script
    assert f"export PATH={pathlib.Path(sys.executable).parent}:" in script
    assert "modprobe cuse ||" in script


@needs_vm
@pytest.mark.vm
def test_vm_returns_status_and_output_with_cuse_loaded():
    r = vm.run("echo out; echo err >&2; test -c /dev/cuse || exit 9; "
               "python3 -c 'import cuse_lguest.serve'; exit 7", vm.VMOptions(timeout=300))
    assert r.returncode == 7, r.diagnosis()
    assert "out\nerr\n" in r.output, r.diagnosis()
    assert not r.timed_out and r.kept is None


@needs_vm
@pytest.mark.vm
def test_vm_timeout_says_where_it_hung():
    r = vm.run("echo reached-the-hang; sleep 600", vm.VMOptions(timeout=60))
    try:
        assert r.timed_out and r.returncode == 124
        text = r.diagnosis()
        assert "timed out" in text and "reached-the-hang" in text
        assert r.kept is not None and (r.kept / "console.log").exists()
        assert "vm-stage2: job starts" in r.console
    finally:
        if r.kept is not None:
            shutil.rmtree(r.kept, ignore_errors=True)


def _demo(*options: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cuse_lguest.cli", "demo", *options], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tinyguest: hello from the virtio console" in done.stdout, done.stdout + done.stderr
    assert "tinyguest: hello PASS" in done.stdout
    return done


def _guest_lines(text: str) -> list[str]:
    """What the guest and the launcher printed, without the demo's own narration."""
    return [line for line in text.splitlines() if line.startswith(("tinyguest:", "lguest32:"))]


FUSE_DEMO = pytest.mark.skipif(os.geteuid() != 0 or os.path.exists("/dev/cuse") or not os.path.exists("/dev/fuse"),
                               reason="needs root, and a kernel with FUSE but without CUSE")


@needs_vm
@pytest.mark.vm
def test_demo_shows_the_guests_hello_in_the_vm(native_build):
    """Through CUSE in the VM; where this host would use FUSE instead, both print the same lines."""
    cuse = _demo("--vm")
    if os.geteuid() == 0 and not os.path.exists("/dev/cuse") and os.path.exists("/dev/fuse"):
        fuse = _demo()
        assert _guest_lines(fuse.stdout) == _guest_lines(cuse.stdout), (fuse.stdout, cuse.stdout)


@FUSE_DEMO
def test_demo_without_cuse_runs_through_fuse_without_a_vm(native_build):
    """This test is about the default node: the demo serves /dev/lguest itself, and removes it."""
    if os.path.lexists("/dev/lguest"):
        pytest.skip("/dev/lguest exists already (another service): the demo would use it")
    done = _demo()
    said = [line for line in done.stderr.splitlines() if "FUSE" in line]
    assert len(said) == 1 and "no VM" in said[0], done.stderr
    assert "inside a VM" not in done.stderr
    assert not os.path.lexists("/dev/lguest"), "the demo's service left /dev/lguest behind"
