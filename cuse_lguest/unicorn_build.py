"""Which Unicorn is this process running: our fast-store build, or the stock wheel?

Stock Unicorn 2.1.4 sends every store of a 32-bit guest through its slow path, so
guest code runs several times slower (docs/performance.md).  The service still
works on the stock wheel, so it must say so once, plainly, with the fix.

How the patched build is recognised: native/unicorn/build-wheel.sh adds a small
non-allocated ELF section, `.cuse_lguest_build`, holding JSON (patch name, patch and
sdist hashes) to the libunicorn.so.2 it packs.  We read that section from the file
the binding actually loaded, so a stray LIBUNICORN_PATH or a second copy on
sys.path cannot fool the check, and the check needs no timing.  The wheel also
carries the local version label `2.1.4+cuselguest.faststore`, which is what
`pip list` shows; the section is the authority.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import pathlib

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

MARKER_SECTION = ".cuse_lguest_build"
PATCH_NAME = "fast-store"
FIX = ("run `./bootstrap install` from the cuse-lguest checkout, or "
       "`pip install --no-deps --force-reinstall \"$(native/unicorn/build-wheel.sh)\"`")


@dataclasses.dataclass(frozen=True)
class UnicornBuild:
    """The Unicorn library loaded in this process and the marker it carries, if any."""

    version: str
    library: str
    marker: dict | None

    @property
    def patched(self) -> bool:
        return bool(self.marker) and self.marker.get("patch") == PATCH_NAME

    def has(self, patch: str) -> bool:
        """Whether the build carries one of native/unicorn's patches, by its name in the marker."""
        return patch in (self.marker or {}).get("patches", ())

    def describe(self) -> str:
        """One line for logs and benchmark tables, e.g. `2.1.4+cuselguest.faststore (patch bd0842cc)`."""
        if not self.patched:
            return f"{self.version} stock"
        return f"{self.marker.get('version', self.version)} (patch {self.marker.get('patch_sha256', '?')[:8]})"


def _loaded_library() -> pathlib.Path:
    """Path of the libunicorn the Python binding loaded (importing it if needed)."""
    import unicorn
    binding = importlib.import_module("unicorn.unicorn_py3.unicorn")
    name = getattr(getattr(binding, "uclib", None), "_name", None)
    if name:
        return pathlib.Path(name)
    # A future binding may hide its handle; the wheel's own copy is the usual one.
    return pathlib.Path(unicorn.__file__).parent / "lib" / "libunicorn.so.2"


def read_marker(library: pathlib.Path) -> dict | None:
    """The JSON marker of `library`, or None when it has none (a stock build)."""
    try:
        with open(library, "rb") as f:
            section = ELFFile(f).get_section_by_name(MARKER_SECTION)
            if section is None:
                return None
            return json.loads(section.data())
    except (OSError, ELFError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def current() -> UnicornBuild:
    """The running build; cached because the loaded library never changes."""
    import unicorn
    library = _loaded_library()
    return UnicornBuild(version=unicorn.__version__, library=str(library),
                        marker=read_marker(library))


def is_patched() -> bool:
    return current().patched


def stock_warning(build: UnicornBuild) -> str:
    return (f"Unicorn {build.version} ({build.library}) is the stock build, without cuse-lguest's "
            f"fast-store patch: guest stores run about 10x slower, and guest code several times "
            f"slower overall. To fix it, {FIX}.")


_warned = False


def warn_if_stock(log: logging.Logger) -> bool:
    """Log the stock-build warning once per process; return whether the build is patched."""
    global _warned
    build = current()
    if not build.patched and not _warned:
        _warned = True
        log.warning("%s", stock_warning(build))
    return build.patched
