"""`cuse-lguest serve` as a program: its refusals, and its shutdown over a socketpair."""
from __future__ import annotations

import errno
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from cuse_peer import KernelPeer, words

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
SERVE = [sys.executable, "-m", "cuse_lguest.cli", "serve"]


@pytest.mark.skipif(os.path.exists("/dev/cuse"), reason="this host has /dev/cuse")
def test_serve_without_dev_cuse_exits_2_with_one_line():
    if os.geteuid() != 0:
        pytest.skip("as non-root, serve stops earlier (see the next test)")
    done = subprocess.run(SERVE + ["--transport", "cuse"], env=ENV, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "/dev/cuse" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_serve_as_non_root_exits_2_with_one_line(monkeypatch, capsys):
    # In-process: this host's Python lives where an unprivileged user cannot run it.
    from cuse_lguest import cli
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "root" in lines[0], lines


def test_serve_without_cuse_or_fuse_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    from cuse_lguest import cli, transports
    monkeypatch.setattr(transports, "CUSE_DEVICE", tmp_path / "cuse")
    monkeypatch.setattr(transports, "FUSE_DEVICE", tmp_path / "fuse")
    assert cli.main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "neither" in lines[0] and "FUSE" in lines[0], lines


def test_serve_auto_prefers_cuse_then_fuse(monkeypatch, tmp_path):
    from cuse_lguest import transports
    monkeypatch.setattr(transports, "CUSE_DEVICE", tmp_path / "cuse")
    monkeypatch.setattr(transports, "FUSE_DEVICE", tmp_path / "fuse")
    (tmp_path / "fuse").touch()
    assert transports.choose("auto") == "fuse" and transports.choose("cuse") == "cuse"
    (tmp_path / "cuse").touch()
    assert transports.choose("auto") == "cuse" and transports.choose("fuse") == "fuse"


def test_serve_refuses_fuse_options_with_cuse(capsys):
    from cuse_lguest import cli
    assert cli.main(["serve", "--transport", "cuse", "--node", "/tmp/x"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "FUSE" in lines[0], lines


def test_serve_refuses_a_bad_name_with_one_line():
    done = subprocess.run(SERVE + ["--name", "../x"], env=ENV, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


class RunningServe:
    """The real entry point over a socketpair, with the guest test double."""

    def __init__(self, env: dict | None = None) -> None:
        kernel_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            SERVE + ["--socket-fd", str(server_end.fileno()),
                     "--guest-factory", "cuse_guest_double:make_guest"],
            env=env or ENV, pass_fds=[server_end.fileno()], stderr=subprocess.PIPE, text=True)
        server_end.close()
        self.peer = KernelPeer(kernel_end)
        _, self.devinfo = self.peer.cuse_init()

    def finish(self, timeout: float = 10) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            self.proc.kill()
            self.peer.sock.close()
        return self.proc.returncode, err


def test_sigterm_answers_reads_in_flight_destroys_guests_and_exits_0():
    s = RunningServe()
    assert s.devinfo == b"DEVNAME=lguest\0"
    fh = s.peer.open()
    assert s.peer.write_result(s.peer.write(fh, words(0, 0x7F0000000000, 256, 0x100000))) == 24
    read = s.peer.read(fh, 8)
    assert s.peer.no_reply(read, 0.3)
    s.proc.send_signal(signal.SIGTERM)
    reply = s.peer.reply(read, timeout=10)
    assert reply.error < 0 and reply.errno in (errno.EINTR, errno.EIO)
    rc, err = s.finish()
    assert rc == 0, err
    assert "guest double for" in err and "destroyed" in err
    assert "Traceback" not in err


def test_the_peer_closing_makes_serve_exit_0():
    s = RunningServe()
    s.peer.open()
    s.peer.sock.close()
    rc, err = s.finish()
    assert rc == 0, err


STOCK_LIBRARY = pathlib.Path("/var/cache/cuse-lguest/bench/stock-unicorn-2.1.4/site/unicorn/lib")


def _serve_log(env: dict) -> str:
    s = RunningServe(env)
    s.peer.sock.close()
    rc, err = s.finish()
    assert rc == 0, err
    return err


def test_serve_says_nothing_about_unicorn_on_our_build():
    from cuse_lguest import unicorn_build
    if not unicorn_build.is_patched():
        pytest.skip("the installed Unicorn is the stock wheel")
    assert "stock build" not in _serve_log(ENV)


@pytest.mark.skipif(not (STOCK_LIBRARY / "libunicorn.so.2").exists(),
                    reason="the stock Unicorn library is fetched by `python -m benchmarks --only stores`")
def test_serve_warns_once_on_a_stock_unicorn():
    """The service still works on the stock wheel, and its log says once what that costs and how to fix it."""
    err = _serve_log(dict(ENV, LIBUNICORN_PATH=str(STOCK_LIBRARY)))
    assert err.count("is the stock build") == 1, err
    assert "10x slower" in err and "bootstrap" in err


def test_under_systemd_serve_says_ready_counts_guests_and_says_stopping(tmp_path):
    """NOTIFY_SOCKET set: READY=1 after CUSE_INIT, STATUS= follows the guests, STOPPING=1 on SIGTERM."""
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(10)
    try:
        s = RunningServe(dict(ENV, NOTIFY_SOCKET=str(tmp_path / "notify")))
        messages = [manager.recv(4096).decode()]
        assert messages[0].startswith("READY=1\n"), messages
        while "0 guests alive" not in messages[-1]:
            messages.append(manager.recv(4096).decode())
        fh = s.peer.open()
        assert s.peer.write_result(s.peer.write(fh, words(0, 0x7F0000000000, 256, 0x100000))) == 24
        while "1 guests alive" not in messages[-1]:
            messages.append(manager.recv(4096).decode())
        s.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages[-1]:
            messages.append(manager.recv(4096).decode())
        rc, err = s.finish()
        assert rc == 0, err
    finally:
        manager.close()
