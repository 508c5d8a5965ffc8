"""The compiled libfuse3 binding, or one clear sentence saying why it is missing.

Importing `_fuse_cffi` can fail for reasons a user can fix (the extension was
never built, libfuse3 is not installed) and the loaded libfuse can be too old
for the session API we compiled against.  Every such failure becomes
`TransportUnavailable`, whose message is one sentence fit for stderr.
"""
from __future__ import annotations

MIN_FUSE_VERSION = 312  # fuse_session_custom_io, our guarded read, is 3.12; see _build.py


class TransportUnavailable(Exception):
    """The CUSE transport cannot be used here; str(e) says why, in one sentence."""


def load():
    """Return (ffi, lib) for the binding, or raise TransportUnavailable."""
    try:
        from cuse_lguest.cuse._fuse_cffi import ffi, lib
    except ImportError as e:
        if "libfuse3" in str(e):
            raise TransportUnavailable(
                "libfuse3 cannot be loaded (%s); install the fuse3 package." % e) from None
        raise TransportUnavailable(
            "the libfuse3 binding is not built; run 'pip install -e .' or "
            "'python3 setup.py build_ext --inplace' in the source tree.") from None
    version = lib.fuse_version()
    if version < MIN_FUSE_VERSION:
        raise TransportUnavailable(
            "libfuse %d.%d is too old: cuse-lguest needs libfuse 3.12 or newer."
            % (version // 100, version % 100))
    return ffi, lib
