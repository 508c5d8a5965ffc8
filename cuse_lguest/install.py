"""`cuse-lguest install [--uninstall]`: the service as a systemd unit, in one step.

Install writes three files (the unit, the udev rule, a modules-load.d entry
so `cuse` is loaded at every boot), loads `cuse`, reloads udev and systemd,
and enables and starts the service; with systemd's Type=notify, `systemctl
enable --now` returns once /dev/lguest can be opened.  What it changed is
recorded in a manifest, so `--uninstall` undoes exactly that: it stops and
disables the unit, deletes the files it created, puts back the previous
content of files it replaced, and unloads `cuse` only if install loaded it.

`--transport` picks what the service serves through: CUSE (the kernel's
character device) wherever `cuse` loads, else FUSE (a mount over
/dev/lguest; see cuse_lguest.systemd for what that changes in the unit).

`--root DIR` writes the files under DIR and runs nothing (no modprobe, udev
or systemctl): for building an image, and for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from cuse_lguest import systemd, udev

UNIT_PATH = pathlib.Path("etc/systemd/system") / systemd.UNIT_NAME
RULE_PATH = pathlib.Path("etc/udev/rules.d") / udev.RULE_FILE.name
MODULES_PATH = pathlib.Path("etc/modules-load.d/cuse-lguest.conf")
MANIFEST = pathlib.Path("var/lib/cuse-lguest/installed.json")
PROC_MODULES = pathlib.Path("/proc/modules")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uninstall", action="store_true", help="undo what `install` did")
    parser.add_argument("--group", default=udev.DEFAULT_GROUP,
                        help=f"group allowed to open /dev/lguest (default {udev.DEFAULT_GROUP})")
    parser.add_argument("--transport", choices=("auto", "cuse", "fuse"), default="auto",
                        help="cuse, fuse, or auto (default): cuse if the module loads, else fuse")
    parser.add_argument("--root", type=pathlib.Path, default=None, metavar="DIR",
                        help="write the files under DIR and run nothing (image building, tests)")


def _say(text: str) -> None:
    print(f"cuse-lguest install: {text}", file=sys.stderr)


def planned_files(group: str = udev.DEFAULT_GROUP, transport: str = "cuse") -> dict[pathlib.Path, str]:
    """Every file install writes, relative to the root, with its content."""
    return {
        UNIT_PATH: systemd.render(transport=transport),
        RULE_PATH: udev.rule(group),
        MODULES_PATH: f"# written by `cuse-lguest install`: {transport.upper()} serves /dev/lguest\n{transport}\n",
    }


def write_files(root: pathlib.Path, files: dict[pathlib.Path, str]) -> dict:
    """Write `files` under `root`; the manifest entry says what each one replaced (None: nothing)."""
    old_manifest = _read_manifest(root)
    previous: dict[str, str | None] = dict(old_manifest.get("files", {}))
    dirs: list[str] = list(old_manifest.get("dirs", []))
    for rel, text in files.items():
        path = root / rel
        before = path.read_text() if path.is_file() else None
        if str(rel) not in previous:   # a re-install keeps what the first install replaced
            previous[str(rel)] = before
        if before != text:
            dirs += _make_dirs(root, path.parent)
            path.write_text(text)
            if before is None:
                path.chmod(0o644)      # root's config, whatever root's umask: others read, never write
            _say(f"wrote /{rel}")
    return {"files": previous, "dirs": dirs, "module_loaded": old_manifest.get("module_loaded", False)}


def _make_dirs(root: pathlib.Path, directory: pathlib.Path) -> list[str]:
    """mkdir -p, returning the directories it created (relative to root), outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    made = []
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        made.append(str(d.relative_to(root)))
    return made


def restore_files(root: pathlib.Path, manifest: dict) -> None:
    """Delete what install created and put back what it replaced."""
    for rel, before in manifest.get("files", {}).items():
        path = root / rel
        if path.is_symlink():
            _say(f"left /{rel} alone: it is a symlink now, which install never makes")
            continue
        if before is None:
            if path.exists():
                path.unlink()
                _say(f"removed /{rel}")
        else:
            path.write_text(before)
            _say(f"restored the previous /{rel}")
    for rel in reversed(manifest.get("dirs", [])):
        try:
            (root / rel).rmdir()
        except OSError:
            pass   # not empty: something else lives there now


def _read_manifest(root: pathlib.Path) -> dict:
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}


def _write_manifest(root: pathlib.Path, manifest: dict) -> None:
    path = root / MANIFEST
    manifest["dirs"] = manifest.get("dirs", []) + _make_dirs(root, path.parent)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    path.chmod(0o644)   # uninstall writes, as root, what this file says: nobody else may edit it


def _module_listed(module: str) -> bool:
    try:
        return any(line.split()[0] == module for line in PROC_MODULES.read_text().splitlines())
    except OSError:
        return False


def _load(module: str) -> bool | None:
    """modprobe `module`: None if it failed, else whether this call loaded it."""
    if _module_listed(module):
        return False
    if subprocess.run(["modprobe", module], capture_output=True).returncode != 0:
        return None
    return _module_listed(module)


def _choose_transport(wanted: str) -> tuple[str, bool] | None:
    """The transport to install and whether its module was loaded here; None if there is none."""
    for transport in (("cuse", "fuse") if wanted == "auto" else (wanted,)):
        loaded = _load(transport)
        if loaded is not None and pathlib.Path(f"/dev/{transport}").exists():
            return transport, loaded
        _say(f"'modprobe {transport}' failed or /dev/{transport} is missing")
    return None


def _run(*cmd: str) -> bool:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        _say(f"'{' '.join(cmd)}' failed: {done.stderr.strip() or done.returncode}")
    return done.returncode == 0


def _symlinked(root: pathlib.Path) -> list[str]:
    """The paths install would write that are symlinks: a unit masked with `systemctl mask`
    (-> /dev/null), a linked unit, a rule masked for udev.  Writing would go through the link,
    and uninstall would then delete the admin's link."""
    return [f"/{rel}" for rel in planned_files() if (root / rel).is_symlink()]


def install(root: pathlib.Path, group: str, wanted: str, live: bool) -> int:
    linked = _symlinked(root)
    if linked:
        _say(f"{', '.join(linked)}: a symlink (masked or linked by the admin); nothing changed. "
             "Remove it first to let install write its own file there.")
        return 1
    transport, loaded = "fuse" if wanted == "fuse" else "cuse", False
    if live:
        chosen = _choose_transport(wanted)
        if chosen is None:
            return 1
        transport, loaded = chosen
    manifest = write_files(root, planned_files(group, transport))
    if loaded:
        manifest["module_loaded"] = transport
    _write_manifest(root, manifest)
    if not live:
        return 0
    _run("udevadm", "control", "--reload")
    if not _run("systemctl", "daemon-reload"):
        return 1
    # Type=notify: this returns once the service said READY=1 (the node can be opened).
    if not _run("systemctl", "enable", "--now", systemd.UNIT_NAME):
        return 1
    _say(f"{systemd.UNIT_NAME} is running through {transport.upper()}; "
         f"`systemctl status {systemd.UNIT_NAME}` shows its guests")
    return 0


def uninstall(root: pathlib.Path, live: bool) -> int:
    manifest = _read_manifest(root)
    if not manifest:
        _say(f"nothing to undo: no /{MANIFEST}")
        return 0
    ok = True
    if live:
        ok = _run("systemctl", "disable", "--now", systemd.UNIT_NAME)
    (root / MANIFEST).unlink(missing_ok=True)
    restore_files(root, manifest)
    if live:
        ok = _run("systemctl", "daemon-reload") and ok
        _run("udevadm", "control", "--reload")
        module = manifest.get("module_loaded")
        if module and _module_listed(module):
            # Refused while something still holds the device: then it stays loaded.
            _run("modprobe", "-r", module)
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    live = args.root is None
    root = args.root or pathlib.Path("/")
    try:
        udev.rule(args.group)
    except ValueError as e:
        _say(str(e))
        return 2
    if live and os.geteuid() != 0:
        _say("it must run as root (it writes /etc and starts a system service).")
        return 2
    return uninstall(root, live) if args.uninstall else install(root, args.group, args.transport, live)
