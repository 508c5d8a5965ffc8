"""Which host paths the VM runner must carry in: those its own tmpfs mounts would hide."""
from __future__ import annotations

import pathlib

import pytest

from cuse_lguest.vm.initramfs import hidden_in_vm


@pytest.mark.parametrize("path,hidden", [
    ("/tmp/ci", True), ("/tmp", True), ("/var/tmp/x/y", True), ("/run/user/0/clone", True),
    ("/dev/shm/w", True), ("/work/main", False), ("/tmpfoo/ci", False), ("/var/lib/ci", False),
])
def test_checkouts_under_the_vms_tmpfs_mounts_are_hidden(path, hidden):
    assert hidden_in_vm(pathlib.Path(path)) is hidden
