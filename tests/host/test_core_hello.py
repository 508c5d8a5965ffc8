"""The smallest guest: handshake, early console over NOTIFY, SHUTDOWN both ways."""
from __future__ import annotations

from cuse_lguest import abi
from test_core_support import boot


def test_console_line_then_power_off(native_build):
    g = boot(native_build, "hello")
    try:
        assert g.run_to_end() == "CRASH: power off, bye"
        assert g.console == ["hello from the core test guest\n"]
    finally:
        g.close()


def test_restart_becomes_erestart(native_build):
    g = boot(native_build, "hello", "restart")
    try:
        assert g.run_to_end() == abi.ERESTART
    finally:
        g.close()
