"""Process facts read from the real kernel: thread groups, ELF classes, fd copies."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

from cuse_lguest import procs


def test_tgid_of_a_thread_is_its_process():
    out = []
    t = threading.Thread(target=lambda: out.append(procs.tgid_of(threading.get_native_id())))
    t.start()
    t.join()
    assert out == [os.getpid()]


def test_tgid_of_a_missing_task():
    with pytest.raises(ProcessLookupError):
        procs.tgid_of(2**22 + 12345)


def test_word_size_of_this_python_is_8():
    assert procs.word_size_of(os.getpid()) == 8


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc with -m32 (gcc-multilib)")
def test_word_size_of_a_32bit_process_is_4(tmp_path):
    src = tmp_path / "s.c"
    src.write_text("#include <unistd.h>\nint main(void){pause();return 0;}\n")
    exe = tmp_path / "s32"
    subprocess.run(["gcc", "-m32", "-o", str(exe), str(src)], check=True)
    p = subprocess.Popen([str(exe)])
    try:
        assert procs.word_size_of(p.pid) == 4
    finally:
        p.kill()
        p.wait()


def test_duplicate_fd_copies_an_open_file_description():
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        ours = procs.duplicate_fd(threading.get_native_id(), efd)
        assert procs.is_eventfd(ours)
        os.eventfd_write(ours, 3)
        assert os.eventfd_read(efd) == 3
        os.close(ours)
    finally:
        os.close(efd)
