"""The stock PyPI Unicorn 2.1.4 wheel, unpacked once into the cache: the baseline build.

Figures that compare our patched Unicorn against stock run the stock one in a
subprocess with this directory first on PYTHONPATH.  The wheel is fetched with
pip and pinned by sha256, like the sdist in native/unicorn/build-wheel.sh, so the
baseline never drifts.
"""
from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

VERSION = "2.1.4"
WHEEL = f"unicorn-{VERSION}-cp37-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "9d6e6dea140560de4ebd8446661f7ef84a357d428c14a3ef09dacd306ec8c239"


def site_dir(cache: pathlib.Path) -> pathlib.Path:
    """A directory holding the stock `unicorn` package, ready for PYTHONPATH."""
    site = cache / f"stock-unicorn-{VERSION}" / "site"
    if (site / "unicorn" / "lib" / "libunicorn.so.2").exists():
        return site
    site.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=site.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "--platform", "manylinux2014_x86_64", f"unicorn=={VERSION}", "-d", tmp],
                       check=True, stdout=sys.stderr)
        wheel = pathlib.Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
        unpacked = pathlib.Path(tmp) / "site"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(unpacked)
        (unpacked / "unicorn" / "lib" / "libunicorn.so.2").chmod(0o755)
        unpacked.rename(site)
    return site
