"""The launcher's descriptor race, made deterministic (issue 13, finding 6).

The project's launcher once read a status descriptor's length twice: once
in vring.c to check it against guest memory, once more to use it, and
block.c wrote the status byte at the end of the length it used.  A Guest on
another CPU that rewrites the length in between makes the launcher write
outside guest RAM.  On a real CPU that window is a few nanoseconds, which a
Guest under Unicorn cannot hit on purpose (the kernel tier runs the attack
on the genuine path: tests/kernel/test_hostile.py, hostile-blkrace).  Here
the real vring.c and block.c are compiled with launcher_race.c, whose
check_pointer() plays that Guest: it rewrites the length the instant after
the check passed.  The launcher must have used what it checked: the status
byte lands where the Guest put it, and the page after guest memory stays
untouched.  Against vring.c before 7c54f64 the status byte went there.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
LAUNCHER = HERE.parents[1] / "native" / "launcher"
VIRTIO_BLK_S_UNSUPP = 2


@pytest.mark.parametrize("bits", ["64", "32"])
def test_a_length_rewritten_after_the_check_is_not_used(bits, tmp_path):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc)")
    exe = tmp_path / "launcher_race"
    # The launcher's own flags (native/launcher/Makefile): the compiler must be free to reload.
    subprocess.run(["cc", f"-m{bits}", "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-D_FILE_OFFSET_BITS=64", f"-I{LAUNCHER}", "-o", str(exe), str(HERE / "launcher_race.c"),
                    str(LAUNCHER / "vring.c"), str(LAUNCHER / "block.c")], check=True)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    done = subprocess.run([str(exe), str(image)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"inside={VIRTIO_BLK_S_UNSUPP}", "outside=0"], done.stdout + done.stderr
