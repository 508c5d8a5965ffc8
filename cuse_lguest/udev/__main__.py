"""`python3 -m cuse_lguest.udev [--group G] [--mode M] [--install [DIR]]`.

Prints the rule, or installs it and asks udev to reload its rules and apply
them to an existing /dev/lguest, so the change takes effect without
restarting the service.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

from . import DEFAULT_GROUP, DEFAULT_MODE, RULES_DIR, install, rule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m cuse_lguest.udev", description=__doc__.splitlines()[0])
    p.add_argument("--group", default=DEFAULT_GROUP, help=f"group allowed to open /dev/lguest (default {DEFAULT_GROUP})")
    p.add_argument("--mode", default=DEFAULT_MODE, help=f"node mode (default {DEFAULT_MODE})")
    p.add_argument("--install", nargs="?", const=RULES_DIR, type=pathlib.Path, metavar="DIR",
                   help=f"write the rule into DIR (default {RULES_DIR}) and reload udev")
    args = p.parse_args(argv)
    try:
        text = rule(args.group, args.mode)
    except ValueError as e:
        print(f"cuse-lguest udev: {e}", file=sys.stderr)
        return 2
    if args.install is None:
        sys.stdout.write(text)
        return 0
    path = install(text, args.install)
    print(f"cuse-lguest udev: wrote {path}", file=sys.stderr)
    for cmd in (["udevadm", "control", "--reload"],
                ["udevadm", "trigger", "--action=add", "--subsystem-match=cuse"]):
        if subprocess.run(cmd, stderr=subprocess.DEVNULL).returncode != 0:
            print(f"cuse-lguest udev: '{' '.join(cmd)}' failed; is udev running?", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
