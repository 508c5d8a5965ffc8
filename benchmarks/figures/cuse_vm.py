"""An 8-byte LHREQ_IRQ write through our CUSE server against a minimal C CUSE server, in one VM boot.

Only a kernel with CUSE gives the real round trip (the client's write, the
kernel, /dev/cuse, libfuse, the server's reply), so both servers run side by
side in the project's throwaway VM (cuse_lguest.vm: Debian's kernel under
QEMU/TCG, the host's / read-only).  The client, benchmarks/native/irqwrite.c,
is a 32-bit program, so its LHREQ_IRQ is 8 bytes as from the historical
launcher; against our server it first sends INITIALIZE (a Guest that never
runs), since LHREQ_IRQ needs one.  The baseline, benchmarks/native/cuse_min.c,
accepts every write and does nothing else.  One client process alternates
between the two nodes every 50 writes (irqwrite32 --pair, as fuse_irq does),
so both are measured from the same vCPU under the same load.  Goal: our p50 <= 1.5x the C server's.  Absolute numbers are TCG's;
only the ratio carries over to real hardware.
"""
from __future__ import annotations

import json
import shlex
import sys

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _irqwrite

NAME = "cuse_vm"
SUMMARY = "8-byte LHREQ_IRQ write through our CUSE server vs a minimal C CUSE server, in the VM (goal <= 1.5x)"

_JOB = """
wait_node() {{ i=0; while [ ! -c /dev/$1 ]; do i=$((i+1)); [ $i -gt 600 ] && {{ echo "no /dev/$1" >&2; exit 3; }}; sleep 0.1; done; }}
{cmin} bench-cmin & CMIN=$!
{python} -m cuse_lguest.cli serve --name bench-ours 2>/tmp/serve.log & OURS=$!
wait_node bench-cmin; wait_node bench-ours
{client} --pair /dev/bench-ours /dev/bench-cmin 200 50 >/dev/null
for r in $(seq {repeats}); do
  {client} --pair /dev/bench-ours /dev/bench-cmin {n} 50 | sed -e '1s/^/OURS /' -e '2s/^/CMIN /'
done
kill $OURS $CMIN; wait
"""


def run(ctx: Context) -> list[Measurement]:
    try:
        from cuse_lguest import vm
        from cuse_lguest.vm import kernel
        kernel.find_version()
    except Exception as e:   # no runner, no kernel to boot, no qemu: say why and move on
        ctx.log(f"{NAME}: skipped: the VM runner cannot run here ({type(e).__name__}: {e})")
        return []
    client, cmin = _build.native("irqwrite32"), _build.native("cuse_min")
    n = 300 if ctx.quick else 2000
    job = _JOB.format(cmin=shlex.quote(str(cmin)), client=shlex.quote(str(client)),
                      python=shlex.quote(sys.executable), repeats=ctx.repeats, n=n)
    ctx.log(f"{NAME}: booting the VM ({ctx.repeats} x {n} writes per server)")
    result = vm.run(job, vm.VMOptions(timeout=300, cwd=str(ctx.root)))
    if result.returncode != 0:
        raise RuntimeError(result.diagnosis())
    runs: dict[str, list[dict]] = {"OURS": [], "CMIN": []}
    for line in result.output.splitlines():
        tag, _, payload = line.partition(" ")
        if tag in runs:
            runs[tag].append(json.loads(payload))
    return _irqwrite.rows(NAME, runs["OURS"], runs["CMIN"], "minimal C CUSE server",
                          f"VM under TCG, {n} writes per server per run, interleaved by 50")
