"""`cuse-lguest`: the command line.  Each subcommand lives in its own module.

A subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their subcommand runs, so `serve` never pays
for what `demo` needs, and a missing optional piece breaks only its command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "serve": ("cuse_lguest.serve", "register /dev/lguest through CUSE (or FUSE where CUSE is missing) and serve launchers "
                                     "(foreground)"),
    "demo": ("cuse_lguest.demo", "start the service and boot the demo guest (through FUSE, or inside a VM, "
                                   "if this host has no /dev/cuse)"),
    "install": ("cuse_lguest.install", "install /dev/lguest as a systemd service and start it (--uninstall undoes it)"),
    "doctor": ("cuse_lguest.doctor", "check this machine and the installation, and say what to fix"),
    "stat": ("cuse_lguest.statview", "show the running service's guests' exits, live (like kvm_stat)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cuse-lguest",
        description="/dev/lguest served from userspace: the Linux 3.x lguest host, as a CUSE character device "
                    "(or a FUSE file) "
                    "with its Guests running on the Unicorn CPU emulator.",
        epilog="Run `cuse-lguest COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (modname, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=modname)
        # Only the chosen subcommand's module is imported (see main()).
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Parse the subcommand name first, then let its module add its own options.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(known._module)
    sub = argparse.ArgumentParser(prog=f"cuse-lguest {known.command}",
                                  description=SUBCOMMANDS[known.command][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
