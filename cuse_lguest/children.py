"""Ending a child process we started: ask, wait a little, then insist.

The service, the VM, a benchmark's FUSE server and the test tiers' helpers
are all stopped the same way: a signal they handle (SIGTERM: a clean exit
that answers what is in flight and removes their node), a bounded wait, and
SIGKILL if that was not enough, so that nothing we start outlives us.
"""
from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Send `sig` to `proc` (unless it has exited), wait up to `timeout` seconds, then SIGKILL
    it; its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
