"""`cuse-lguest install --root DIR`: the files it writes, and an uninstall that undoes exactly that."""
from __future__ import annotations

import configparser
import os
import pathlib
import sys

from cuse_lguest import cli, install, systemd, udev


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_the_unit_runs_this_python_on_this_code_and_waits_for_readiness():
    unit = _unit(systemd.render(python="/opt/py/bin/python3", code_dir=pathlib.Path("/opt/src")))
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "/opt/py/bin/python3 -m cuse_lguest.cli serve --transport cuse"
    assert "PYTHONPATH=/opt/src" in systemd.render(python="/x/python3", code_dir=pathlib.Path("/opt/src"))
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    assert service["RuntimeDirectory"] == "cuse-lguest"   # exit stats, writable under ProtectSystem=strict
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_unit_lets_the_service_see_a_checkout_in_home_or_tmp():
    home = _unit(systemd.render(python="/usr/bin/python3", code_dir=pathlib.Path("/home/ci/src")))
    assert home["Service"]["ProtectHome"] == "read-only"
    tmp = _unit(systemd.render(python="/usr/bin/python3", code_dir=pathlib.Path("/tmp/ci/src")))
    assert tmp["Service"]["PrivateTmp"] == "no"


def test_for_fuse_the_unit_shares_the_systems_mount_namespace():
    """A FUSE node is a mount: made in a namespace of the service's own, nobody would see it."""
    service = _unit(systemd.render(python="/usr/bin/python3", code_dir=pathlib.Path("/opt/src"),
                                   transport="fuse"))["Service"]
    assert service["ExecStart"] == "/usr/bin/python3 -m cuse_lguest.cli serve --transport fuse"
    assert service["ExecStartPre"] == "+-/sbin/modprobe fuse"
    assert not set(service) & set(systemd.MOUNT_NAMESPACE_OPTIONS)
    assert service["Type"] == "notify" and service["NoNewPrivileges"] == "yes"
    assert service["DevicePolicy"] == "closed"


def test_the_unit_allows_the_cuse_and_fuse_devices_and_nothing_else():
    text = systemd.render()
    assert "DevicePolicy=closed" in text
    allowed = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("DeviceAllow=")]
    assert allowed == ["/dev/cuse rw", "/dev/fuse rw"]


def _tree(root: pathlib.Path) -> dict[str, str | None]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_install_writes_unit_rule_and_module_entry_and_uninstall_removes_them(tmp_path, capsys):
    (tmp_path / "etc").mkdir()
    before = _tree(tmp_path)
    assert cli.main(["install", "--root", str(tmp_path)]) == 0
    assert (tmp_path / install.UNIT_PATH).read_text() == systemd.render(python=sys.executable)
    assert (tmp_path / install.RULE_PATH).read_text() == udev.rule()
    assert (tmp_path / install.MODULES_PATH).read_text().splitlines()[-1] == "cuse"
    assert cli.main(["install", "--root", str(tmp_path), "--uninstall"]) == 0
    assert _tree(tmp_path) == before


def test_uninstall_puts_back_a_file_install_replaced(tmp_path):
    rule = tmp_path / install.RULE_PATH
    rule.parent.mkdir(parents=True)
    rule.write_text("# the site's own rule\n")
    assert cli.main(["install", "--root", str(tmp_path), "--group", "lguest"]) == 0
    assert 'GROUP="lguest"' in rule.read_text()
    # Installing twice must not forget what the first install replaced.
    assert cli.main(["install", "--root", str(tmp_path)]) == 0
    assert cli.main(["install", "--root", str(tmp_path), "--uninstall"]) == 0
    assert rule.read_text() == "# the site's own rule\n"
    assert not (tmp_path / install.UNIT_PATH).exists()
    assert not (tmp_path / install.MANIFEST).exists()


def test_install_for_fuse_persists_the_fuse_module(tmp_path):
    assert cli.main(["install", "--root", str(tmp_path), "--transport", "fuse"]) == 0
    assert (tmp_path / install.MODULES_PATH).read_text().splitlines()[-1] == "fuse"
    assert "--transport fuse" in (tmp_path / install.UNIT_PATH).read_text()


def test_install_refuses_a_bad_group_and_uninstall_without_install_is_a_no_op(tmp_path):
    assert cli.main(["install", "--root", str(tmp_path), "--group", "no good"]) == 2
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["install", "--root", str(tmp_path), "--uninstall"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_install_leaves_a_masked_unit_alone_and_uninstall_never_removes_the_mask(tmp_path):
    """`systemctl mask` makes the unit path a symlink to /dev/null: the admin's, not ours to write
    through or to delete."""
    unit = tmp_path / install.UNIT_PATH
    unit.parent.mkdir(parents=True)
    unit.symlink_to("/dev/null")
    assert cli.main(["install", "--root", str(tmp_path)]) == 1
    assert cli.main(["install", "--root", str(tmp_path), "--uninstall"]) == 0
    assert unit.is_symlink() and os.readlink(unit) == "/dev/null"
    assert not (tmp_path / install.RULE_PATH).exists()


def test_files_install_creates_are_0644_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        assert cli.main(["install", "--root", str(tmp_path)]) == 0
    finally:
        os.umask(old)
    for rel in (install.UNIT_PATH, install.RULE_PATH, install.MODULES_PATH, install.MANIFEST):
        assert (tmp_path / rel).stat().st_mode & 0o777 == 0o644, rel
    # uninstall writes as root whatever the manifest says: its directory is not others' either
    assert (tmp_path / install.MANIFEST).parent.stat().st_mode & 0o777 == 0o755
