"""The udev rule that gives /dev/lguest its group and mode.

CUSE cannot set a node's permissions itself (the kernel understands only the
DEVNAME key), so the project ships a rule file.  The file in this directory
is the default; `rule()` renders it for another group or mode, so a site can
use a dedicated group without editing the shipped copy.
"""
from __future__ import annotations

import pathlib
import re

RULE_FILE = pathlib.Path(__file__).with_name("99-lguest.rules")
DEFAULT_GROUP = "kvm"
DEFAULT_MODE = "0660"
RULES_DIR = pathlib.Path("/etc/udev/rules.d")

_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?")
_MODE = re.compile(r"0?[0-7]{3}")


def valid_mode(mode: str) -> bool:
    """An octal permission mode like 0660 (no setuid, setgid or sticky bits)."""
    return bool(_MODE.fullmatch(mode))


def rule(group: str = DEFAULT_GROUP, mode: str = DEFAULT_MODE) -> str:
    """The shipped rule file with GROUP and MODE replaced."""
    if not _NAME.fullmatch(group):
        raise ValueError(f"not a valid group name: {group!r}")
    if not valid_mode(mode):
        raise ValueError(f"not an octal mode: {mode!r}")
    text = RULE_FILE.read_text()
    text = text.replace(f'GROUP="{DEFAULT_GROUP}"', f'GROUP="{group}"')
    return text.replace(f'MODE="{DEFAULT_MODE}"', f'MODE="{mode}"')


def permissions(name: str = "lguest", rules_dir: pathlib.Path = RULES_DIR) -> tuple[str, int]:
    """(group, mode) the rule in force gives /dev/NAME: the installed copy, else the shipped one.

    Used where no udev runs (a container's /dev) and the service makes the
    node itself, so the node gets the permissions udev would have given it.
    """
    installed = rules_dir / RULE_FILE.name
    text = installed.read_text() if installed.is_file() else RULE_FILE.read_text()
    for line in text.splitlines():
        if line.lstrip().startswith("#") or f'KERNEL=="{name}"' not in line:
            continue
        group = re.search(r'GROUP="([^"]*)"', line)
        mode = re.search(r'MODE="([0-7]+)"', line)
        return (group.group(1) if group else "root", int(mode.group(1), 8) if mode else 0o600)
    return ("root", 0o600)


def install(text: str, rules_dir: pathlib.Path = RULES_DIR) -> pathlib.Path:
    """Write the rule where udev reads it; the caller reloads udev."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    path = rules_dir / RULE_FILE.name
    path.write_text(text)
    return path
