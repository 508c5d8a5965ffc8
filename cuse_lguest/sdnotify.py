"""Telling systemd how the service is doing: the sd_notify datagram protocol.

A unit with `Type=notify` hands its main process the address of a datagram
socket in NOTIFY_SOCKET.  The process sends newline-separated `KEY=VALUE`
lines there: READY=1 once it can do its job (systemd holds back units
ordered After= it until then), STATUS= a one-line summary for
`systemctl status`, STOPPING=1 when it begins to shut down.  The protocol is
one sendto() on an AF_UNIX socket, so it is written here rather than pulling
in libsystemd.  Outside systemd NOTIFY_SOCKET is unset and every call does
nothing, so the same binary runs in a terminal, a container or a test.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """One NOTIFY_SOCKET address, read once; `send` is a no-op without one."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace (a NUL byte on the wire).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._last_status: str | None = None

    @property
    def active(self) -> bool:
        return self._address.startswith(("/", "\0"))

    def send(self, **fields: str) -> bool:
        """Send KEY=VALUE lines (READY="1", STATUS="..."); True if a manager was told.

        Errors are swallowed: a manager that went away must never take the
        service down with it.
        """
        if not self.active or not fields:
            return False
        text = "".join(f"{k}={v.replace(chr(10), ' ')}\n" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(text.encode(), self._address)
        except OSError:
            return False
        return True

    def status(self, line: str) -> bool:
        """STATUS=line, sent only when it changed since the last one."""
        if line == self._last_status:
            return False
        self._last_status = line
        return self.send(STATUS=line)
