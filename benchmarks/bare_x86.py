"""Guest loops on a bare 32-bit x86 Unicorn, timed; run in a subprocess per Unicorn build.

    PYTHONPATH=<a unicorn> python -m benchmarks.bare_x86 N LOOP [LOOP...]

prints one JSON line: {"build": ..., "mips": {LOOP: MIPS}}.  A separate process is
the only way to compare two Unicorn builds in one run: a process can load one.
The machine is shaped like a lguest guest's: flat segments and all RAM
read-write-execute, which is what sends every store of stock Unicorn down its
slow path.  Loops are hand-encoded so no assembler is needed.
"""
from __future__ import annotations

import json
import struct
import sys
import time

from unicorn.x86_const import UC_X86_REG_ECX

from cuse_lguest import unicorn_build
from cuse_lguest.testing.flatx86 import machine

CODE, DATA = 0x200000, 0x100000

_D = struct.pack("<I", DATA)
_STEP = b"\x83\xc3\x04" + b"\x81\xe3\xff\xff\x00\x00"   # add $4, %ebx; and $0xffff, %ebx
# name: (loop body, instructions per iteration including `dec %ecx; jnz`)
LOOPS = {
    "stores": (b"\x89\x83" + _D + _STEP, 5),            # mov %eax, DATA(%ebx)
    "loads": (b"\x8b\x83" + _D + _STEP, 5),             # mov DATA(%ebx), %eax
    "mixed": (b"\x8b\x83" + _D + b"\x83\xc0\x01"        # mov DATA(%ebx), %eax; add $1, %eax
              + b"\x89\x83" + _D + _STEP, 7),           # mov %eax, DATA(%ebx)
}


def mips(loop: str, iterations: int) -> float:
    body, per_iteration = LOOPS[loop]
    back = -(len(body) + 3)                              # to the body, over dec and jnz
    code = (b"\x31\xdb" + b"\xb9" + struct.pack("<I", iterations)   # xor %ebx,%ebx; mov $N,%ecx
            + body + b"\x49" + b"\x75" + struct.pack("<b", back)    # dec %ecx; jnz body
            + b"\x90")
    uc = machine()
    uc.mem_write(CODE, code)
    start = time.perf_counter()
    uc.emu_start(CODE, CODE + len(code) - 1)
    elapsed = time.perf_counter() - start
    if uc.reg_read(UC_X86_REG_ECX) != 0:
        raise RuntimeError(f"{loop}: the loop did not run to the end")
    return iterations * per_iteration / elapsed / 1e6


def main(argv: list[str]) -> None:
    iterations, loops = int(argv[0]), argv[1:]
    result = {loop: mips(loop, iterations) for loop in loops}
    print(json.dumps({"build": unicorn_build.current().describe(), "mips": result}))


if __name__ == "__main__":
    main(sys.argv[1:])
