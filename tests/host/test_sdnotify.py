"""The sd_notify datagram protocol, against a socket playing systemd."""
from __future__ import annotations

import socket

import pytest

from cuse_lguest.sdnotify import Notifier


@pytest.fixture
def manager(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    s.bind(str(path))
    s.settimeout(5)
    yield s, str(path)
    s.close()


def test_fields_arrive_as_one_datagram_of_lines(manager):
    sock, path = manager
    assert Notifier({"NOTIFY_SOCKET": path}).send(READY="1", STATUS="serving: 0 guests alive")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving: 0 guests alive\n"


def test_an_abstract_socket_is_named_with_at():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0cuse-lguest-test-%d" % id(s))
    s.settimeout(5)
    try:
        name = s.getsockname()[1:].decode()
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send(STOPPING="1")
        assert s.recv(4096) == b"STOPPING=1\n"
    finally:
        s.close()


def test_status_is_sent_only_when_it_changes(manager):
    sock, path = manager
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.status("1 guests alive") and not n.status("1 guests alive") and n.status("2 guests alive")
    assert sock.recv(4096) == b"STATUS=1 guests alive\n"
    assert sock.recv(4096) == b"STATUS=2 guests alive\n"


def test_a_newline_cannot_forge_another_field(manager):
    sock, path = manager
    Notifier({"NOTIFY_SOCKET": path}).send(STATUS="x\nREADY=1")
    assert sock.recv(4096) == b"STATUS=x READY=1\n"


def test_outside_systemd_and_with_the_manager_gone_nothing_fails(tmp_path):
    assert not Notifier({}).send(READY="1")
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send(READY="1")
