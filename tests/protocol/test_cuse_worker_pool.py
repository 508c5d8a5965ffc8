"""The session's own worker pool (cuse/_build.py, cl_loop): bursts grow it, idleness shrinks it, nothing churns.

libfuse 3.14's loop ended a worker the moment one more than its idle limit
was idle, so every burst of overlapping requests started threads and ended
them again right after.  Here each burst is three writes that the device
holds until all three are inside it at once (a barrier), so the pool must
grow; bursts then come back to back, and the pool must keep the workers it
grew instead of starting new ones each time, and give the extra ones back
after a second without requests.  Threads are counted in /proc, where
libfuse's C threads show as well as Python's.
"""
from __future__ import annotations

import errno
import os
import threading
import time

from test_cuse_irq_shortcut import Shortcut

from cuse_peer import words

BURST = 3
IDLE_S = 1.0        # cl_loop's CL_IDLE_MS


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_bursts_grow_the_pool_once_and_idleness_shrinks_it_again(serve):
    t = Shortcut(serve)
    together = threading.Barrier(BURST, timeout=5)
    counted = t.device.write

    def held(*args, **kwargs):
        together.wait()                     # all three writes occupy a worker at once
        return counted(*args, **kwargs)
    t.device.write = held
    time.sleep(2 * IDLE_S)                  # whatever start-up left beyond the kept workers is gone
    quiet = _threads()
    seen: set[int] = set()
    for _ in range(20):
        uniques = [t.s.peer.write(t.fh, words(2, 32)) for _ in range(BURST)]   # IRQ 32: the device's EINVAL
        assert [t.s.peer.write_result(u) for u in uniques] == [-errno.EINVAL] * BURST
        seen |= _threads()
    # Grown for the first burst and kept for the others: libfuse's loop
    # started new threads for every burst.
    assert 0 < len(seen - quiet) <= BURST
    deadline = time.monotonic() + 5 * IDLE_S
    while len(_threads()) != len(quiet) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_threads()) == len(quiet)    # the extra workers ended (any of them may be the one kept)
