"""The systemd unit shipped with cuse-lguest, rendered for the Python that installs it.

The shipped file names /usr/local/bin/cuse-lguest, where `pip install` puts
the script as root on Debian.  `render()` points ExecStart= at the running
interpreter and PYTHONPATH at the directory this package was imported from
instead, so the service runs exactly the code that installed it (a venv, an
editable checkout, a CI clone).  Two sandbox options would hide such a
checkout from the service, so they are relaxed only when that is the case.
For the FUSE transport every option that gives the service its own mount
namespace is left out, because the node it serves is a mount.
"""
from __future__ import annotations

import pathlib
import shlex
import sys

import cuse_lguest

UNIT_NAME = "cuse-lguest.service"
UNIT_FILE = pathlib.Path(__file__).with_name(UNIT_NAME)
SHIPPED_EXEC = "ExecStart=/usr/local/bin/cuse-lguest serve --transport cuse"
SHIPPED_MODPROBE = "ExecStartPre=+-/sbin/modprobe cuse"
# Options that give the service a mount namespace of its own.  A FUSE node is
# a mount: made in a private namespace, nobody else would ever see it.
MOUNT_NAMESPACE_OPTIONS = ("PrivateTmp", "ProtectHome", "ProtectSystem", "ProtectKernelModules",
                           "ProtectKernelTunables", "ProtectKernelLogs", "ProtectControlGroups")
PACKAGE_PARENT = pathlib.Path(cuse_lguest.__file__).resolve().parent.parent

_HOME_DIRS = (pathlib.Path("/home"), pathlib.Path("/root"), pathlib.Path("/run/user"))
_TMP_DIRS = (pathlib.Path("/tmp"), pathlib.Path("/var/tmp"))


def _under(path: pathlib.Path, dirs: tuple[pathlib.Path, ...]) -> bool:
    return any(path == d or d in path.parents for d in dirs)


def render(python: str = sys.executable, code_dir: pathlib.Path = PACKAGE_PARENT,
           transport: str = "cuse") -> str:
    """The unit text for `python -m cuse_lguest.cli serve --transport T`, importing from `code_dir`."""
    text = UNIT_FILE.read_text()
    exec_start = f"ExecStart={shlex.quote(python)} -m cuse_lguest.cli serve --transport {transport}"
    text = text.replace(SHIPPED_EXEC, f"{exec_start}\nEnvironment=PYTHONPATH={code_dir}")
    if transport == "fuse":
        text = text.replace(SHIPPED_MODPROBE, SHIPPED_MODPROBE.replace("cuse", "fuse"))
        kept = [line for line in text.splitlines()
                if line.partition("=")[0] not in MOUNT_NAMESPACE_OPTIONS]
        at = kept.index("NoNewPrivileges=yes")
        kept.insert(at, "# FUSE: the node is a mount, so the service shares the system's mount namespace "
                        "(no PrivateTmp=, ProtectSystem=, ProtectHome=, ProtectKernel*=, ProtectControlGroups=).")
        return "\n".join(kept) + "\n"
    needed = (code_dir, pathlib.Path(python))
    if any(_under(p, _HOME_DIRS) for p in needed):
        text = text.replace("ProtectHome=yes", "ProtectHome=read-only")
    if any(_under(p, _TMP_DIRS) for p in needed):
        text = text.replace("PrivateTmp=yes", "PrivateTmp=no")
    return text
