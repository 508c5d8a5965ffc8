"""The front end's side of a worker's channel: a worker is the launcher without privilege, and what it
sends the root service must never leave the service holding descriptors of the worker's choosing."""
from __future__ import annotations

import os

import pytest

from cuse_lguest.worker import channel


def _open_fds() -> set[int]:
    return set(int(n) for n in os.listdir("/proc/self/fd"))


def test_descriptors_from_a_worker_never_reach_the_service():
    """A reply with descriptors attached (up to 32 per message, one per run) would pile up in the
    service for ever; closing them is no answer either (a close of a file on the worker's user's
    own FUSE mount can wait for ever).  The kernel drops them when we give it no room for them."""
    service, worker = channel.pair()
    payload = os.open("/dev/null", os.O_RDONLY)
    try:
        channel.send(worker, {"exit": 1, "value": 0}, [payload] * 8)
        before = _open_fds()
        with pytest.raises(channel.PeerGone):
            channel.recv_from_worker(service)
        assert _open_fds() == before
        channel.send(worker, {"exit": 1, "value": 0})
        assert channel.recv_from_worker(service) == {"exit": 1, "value": 0}
    finally:
        os.close(payload)
        service.close()
        worker.close()
