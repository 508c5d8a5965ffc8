"""Real tasks whose /proc status shows the signal states the interrupt tests need.

The owner of a read is named by the tid in the request header, and the server
judges it from /proc/<tid>/status, so these are genuine processes:

* `traced_stopped_child`: a child that made us its tracer and stopped itself.
  A signal sent to a ptrace-stopped task stays pending and unblocked without
  being delivered (the kernel does not short-cut fatal signals for traced
  tasks), which is exactly "a fatal signal is pending" seen from outside,
  for as long as the test needs it.
* `sleeping_child`: an ordinary child, optionally with signals blocked.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

_TRACED = """
import ctypes, os, signal
{prelude}
if ctypes.CDLL(None, use_errno=True).ptrace(0, 0, 0, 0) != 0:   # PTRACE_TRACEME
    os._exit(3)
os.kill(os.getpid(), signal.SIGSTOP)
os._exit(0)
"""

_SLEEPING = """
import signal, sys, time
{prelude}
print("ready", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def traced_stopped_child(prelude: str = ""):
    """Yield the pid of a child stopped under our ptrace; `prelude` runs first (e.g. handlers)."""
    proc = subprocess.Popen([sys.executable, "-c", _TRACED.format(prelude=prelude)])
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise RuntimeError(f"the traced child did not stop (status {status:#x}); is ptrace allowed?")
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def sleeping_child(prelude: str = ""):
    """Yield the Popen of a child that sleeps once `prelude` has run."""
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPING.format(prelude=prelude)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        proc.stdout.close()


def pending_mask(pid: int) -> int:
    """SigPnd | ShdPnd of `pid`, to check a test's premise."""
    masks = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("SigPnd", "ShdPnd"):
                masks[key] = int(value, 16)
    return masks["SigPnd"] | masks["ShdPnd"]
