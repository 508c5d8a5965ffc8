"""Malformed traffic from the "kernel" side: answered with an error or dropped, never fatal.

After each bad message the same session must still serve a good request.
"""
from __future__ import annotations

import errno
import struct

from hypothesis import given, settings, strategies as st

from cuse_peer import IN_HEADER, OPEN, READ_IN, WRITE, WRITE_IN, words
from served import Served


def _still_serving(s) -> None:
    fh = s.peer.open()
    assert s.peer.release(fh).error == 0


def test_truncated_header_is_dropped(serve):
    s = serve()
    s.peer.send_raw(IN_HEADER.pack(40, OPEN, 77, 0, 0, 0, 1, 0, 0)[:20])
    assert s.peer.no_reply(77, 0.2)
    _still_serving(s)
    assert s.server.session.dropped == 1


def test_unknown_opcodes_get_enosys(serve):
    s = serve()
    for opcode in (1, 26, 999, 0xFFFFFFFF):        # LOOKUP, FUSE_INIT, nonsense
        assert s.peer.reply(s.peer.send(opcode, b"\0" * 64)).errno == errno.ENOSYS
    _still_serving(s)


def test_length_field_larger_than_the_message_gets_einval(serve):
    s = serve()
    unique = s.peer.send(OPEN, b"\0" * 8, length=4096)
    assert s.peer.reply(unique).errno == errno.EINVAL
    _still_serving(s)


def test_argument_shorter_than_the_opcode_needs_gets_einval(serve):
    s = serve()
    fh = s.peer.open()
    assert s.peer.reply(s.peer.send(15, READ_IN.pack(fh, 0, 8, 0, 0, 0, 0)[:12])).errno == errno.EINVAL
    _still_serving(s)


def test_write_bigger_than_max_write_gets_einval(serve):
    s = serve()
    fh = s.peer.open()
    data = b"\0" * (s.peer.max_write + 1)
    assert s.peer.write_result(s.peer.write(fh, data)) == -errno.EINVAL
    _still_serving(s)


def test_write_size_field_beyond_its_data_gets_einval(serve):
    s = serve()
    fh = s.peer.open()
    unique = s.peer.send(WRITE, WRITE_IN.pack(fh, 0, 1 << 30, 0, 0, 0, 0), words(2, 1))
    assert s.peer.reply(unique).errno == errno.EINVAL
    _still_serving(s)


def test_interrupt_for_an_unknown_request_is_dropped(serve):
    s = serve()
    interrupt = s.peer.interrupt(123456)
    assert s.peer.no_reply(interrupt, 0.2)
    _still_serving(s)


def test_requests_for_unknown_file_handles_get_ebadf(serve):
    s = serve()
    assert s.peer.reply(s.peer.read(999, 8)).errno == errno.EBADF
    assert s.peer.write_result(s.peer.write(999, words(2, 1))) == -errno.EBADF
    assert s.peer.release(999).error == 0
    _still_serving(s)


# Opcodes that end or restart the session on purpose are left out: they are
# not malformed.  Everything else, with any bytes after the header.
_OPCODES = st.one_of(st.sampled_from([14, 15, 16, 18, 20, 25, 36, 39, 40, 41, 42, 2, 3]),
                     st.integers(0, 0xFFFFFFFF).filter(lambda o: o not in (26, 38, 4096)))


@settings(max_examples=60, deadline=None)
@given(opcode=_OPCODES, body=st.binary(max_size=200), length_delta=st.integers(-48, 48),
       unique=st.integers(2**32, 2**64 - 1))     # never one of the peer's own uniques
def test_fuzzed_requests_never_stop_the_service(opcode, body, length_delta, unique):
    s = Served().initialized()        # a fresh session per example, closed at once
    try:
        length = max(0, IN_HEADER.size + len(body) + length_delta) & 0xFFFFFFFF
        s.peer.send_raw(struct.pack("<IIQQIIIHH", length, opcode, unique, 0, 0, 0, 1, 0, 0) + body)
        _still_serving(s)
    finally:
        assert s.close() == 0
