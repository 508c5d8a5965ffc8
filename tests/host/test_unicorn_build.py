"""The Unicorn build: detection of our fast-store build, and Unicorn's own unit tests on it."""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess

import pytest

from cuse_lguest import unicorn_build

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_WHEEL = ROOT / "native" / "unicorn" / "build-wheel.sh"
SDIST_UNAVAILABLE = 3   # build-wheel.sh's status when only the download failed


@pytest.mark.skipif(os.environ.get("CI") != "true",
                    reason="only CI must run the patched build; a developer may be on the stock wheel")
def test_ci_runs_the_patched_build() -> None:
    build = unicorn_build.current()
    assert build.patched, unicorn_build.stock_warning(build)


@pytest.fixture
def tiny_library(tmp_path: pathlib.Path) -> pathlib.Path:
    if not (shutil.which("gcc") and shutil.which("objcopy")):
        pytest.skip("needs gcc and objcopy to make a small shared library")
    src = tmp_path / "t.c"
    src.write_text("int f(void) { return 1; }\n")
    lib = tmp_path / "libt.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return lib


def test_marker_is_read_from_the_library(tiny_library: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert unicorn_build.read_marker(tiny_library) is None
    marker = tmp_path / "marker.json"
    marker.write_text('{"patch": "fast-store", "patch_sha256": "ab", "version": "2.1.4+cuselguest.faststore"}')
    subprocess.run(["objcopy", "--add-section", f"{unicorn_build.MARKER_SECTION}={marker}", str(tiny_library)],
                   check=True)
    found = unicorn_build.read_marker(tiny_library)
    assert found == {"patch": "fast-store", "patch_sha256": "ab", "version": "2.1.4+cuselguest.faststore"}
    assert unicorn_build.UnicornBuild("2.1.4", str(tiny_library), found).patched


def test_a_file_that_is_not_elf_has_no_marker(tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "libunicorn.so.2"
    junk.write_bytes(b"not an ELF file")
    assert unicorn_build.read_marker(junk) is None
    assert unicorn_build.read_marker(tmp_path / "missing") is None


def test_stock_warning_is_logged_once_and_says_how_to_fix(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stock = unicorn_build.UnicornBuild("2.1.4", "/x/libunicorn.so.2", None)
    monkeypatch.setattr(unicorn_build, "current", lambda: stock)
    monkeypatch.setattr(unicorn_build, "_warned", False)
    log = logging.getLogger("test.unicorn")
    with caplog.at_level(logging.WARNING, logger="test.unicorn"):
        assert unicorn_build.warn_if_stock(log) is False
        assert unicorn_build.warn_if_stock(log) is False
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert "10x slower" in text and "./bootstrap install" in text and "build-wheel.sh" in text


def test_patched_build_logs_nothing(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    patched = unicorn_build.UnicornBuild("2.1.4", "/x/libunicorn.so.2", {"patch": "fast-store"})
    monkeypatch.setattr(unicorn_build, "current", lambda: patched)
    monkeypatch.setattr(unicorn_build, "_warned", False)
    with caplog.at_level(logging.WARNING):
        assert unicorn_build.warn_if_stock(logging.getLogger("test.unicorn")) is True
    assert not caplog.records


@pytest.fixture(scope="module")
def unit_test_dir() -> pathlib.Path:
    """Unicorn's test_x86 and test_ctl, built on our patched tree (cached by build-wheel.sh)."""
    r = subprocess.run([str(BUILD_WHEEL), "--unit-tests"], stdout=subprocess.PIPE, text=True)
    if r.returncode == SDIST_UNAVAILABLE:
        pytest.skip("the unicorn 2.1.4 sdist could not be downloaded (see build-wheel.sh's log above)")
    assert r.returncode == 0, "build-wheel.sh --unit-tests failed (its log is in the captured stderr)"
    return pathlib.Path(r.stdout.strip())


@pytest.mark.parametrize("name", ["test_x86", "test_ctl"])
def test_unicorns_own_unit_tests_pass_on_the_patched_tree(unit_test_dir: pathlib.Path, name: str) -> None:
    r = subprocess.run([str(unit_test_dir / name)], cwd=unit_test_dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "SUCCESS" in r.stdout
