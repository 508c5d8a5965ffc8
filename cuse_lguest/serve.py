"""`cuse-lguest serve`: register /dev/<name> through CUSE and serve launchers.

Runs in the foreground and logs to stderr.  SIGTERM or SIGINT ends it
cleanly: every read in flight is answered with an error, every guest is
destroyed, and the exit code is 0.  When the service cannot start (no
/dev/cuse, not root, libfuse too old or the binding not built) it says why in
one sentence and exits 2.

Both signals are blocked in every thread and taken with sigtimedwait() on the
main thread, so libfuse's worker threads never see them and the shutdown
runs as ordinary code rather than inside a signal handler.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

EXIT_UNAVAILABLE = 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cuse_lguest.cpu import engine
    default_tb = engine.DEFAULT_TRANSLATION_BUFFER // engine.MIB
    parser.add_argument("--name", default="lguest",
                        help="device name: the node is /dev/NAME (default: lguest)")
    parser.add_argument("--eintr-on-signal", action="store_true",
                        help="end a running guest's read() with EINTR for caught signals too "
                             "(default: only for signals that will kill the launcher)")
    parser.add_argument("--translation-buffer", type=int, metavar="MIB",
                        default=default_tb,
                        help="translated-code buffer of each guest's CPU, in MiB (default: "
                             f"{default_tb}; Unicorn's own 1024 cannot be reserved on "
                             "a 512 MiB machine)")
    parser.add_argument("--stats-dir", default=None, metavar="DIR",
                        help="publish each guest's exit counters here for `cuse-lguest stat` "
                             "(default: /run/cuse-lguest/guests; 'none' to publish nothing)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    # Test hooks, hidden: serve over a socketpair end whose peer plays the
    # kernel, with a guest factory named MODULE:ATTRIBUTE (and that module's
    # acquire_memory, if it has one, in place of handles.acquire).
    parser.add_argument("--socket-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--guest-factory", help=argparse.SUPPRESS)


def _fail(sentence: str) -> int:
    print(f"cuse-lguest serve: {sentence}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _valid_name(name: str) -> bool:
    return bool(name) and "\0" not in name and "\n" not in name and not name.startswith("/") \
        and ".." not in name.split("/") and len(name) < 256


def _stats_directory(path: str | None):
    """The exit stats directory, made ready; None when not wanted or not possible (said once)."""
    from cuse_lguest.core.exitstats import StatsDirectory
    if path == "none":
        return None
    stats = StatsDirectory(path or StatsDirectory.DEFAULT)
    try:
        stats.prepare()
    except OSError as e:
        logging.getLogger("cuse_lguest.serve").warning(
            "exit stats not published (%s): `cuse-lguest stat` will not see these guests", e)
        return None
    return stats


def _make_device(factory_spec: str | None, stats_dir: str | None):
    from cuse_lguest.device import Device
    stats = _stats_directory(stats_dir)
    if factory_spec is None:
        return Device(stats=stats)
    module_name, _, attr = factory_spec.partition(":")
    module = importlib.import_module(module_name)
    # A double that never touches guest memory brings its own memory source too.
    memory = getattr(module, "acquire_memory", None)
    return Device(getattr(module, attr), stats=stats, **({"memory": memory} if memory else {}))


def run(args: argparse.Namespace) -> int:
    if not _valid_name(args.name):
        return _fail(f"{args.name!r} is not a usable device name.")
    from cuse_lguest.cuse.binding import TransportUnavailable
    try:
        from cuse_lguest.cuse.server import Server, open_cuse
    except TransportUnavailable as e:
        return _fail(str(e))
    from cuse_lguest.cpu import engine
    try:
        engine.set_translation_buffer(args.translation_buffer * engine.MIB)
    except ValueError as e:
        return _fail(f"--translation-buffer: {e}.")
    if args.socket_fd is None:
        if os.geteuid() != 0:
            return _fail("it must run as root, because /dev/cuse is only open to root.")
        try:
            fd = open_cuse()
        except TransportUnavailable as e:
            return _fail(str(e))
    else:
        fd = args.socket_fd
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        device = _make_device(args.guest_factory, args.stats_dir)
    except (ImportError, AttributeError) as e:
        if args.socket_fd is None:
            os.close(fd)
        return _fail(f"the hypervisor core cannot be loaded ({e}).")

    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)  # before any thread starts
    server = Server(device, name=args.name, eintr_on_signal=args.eintr_on_signal)
    server.attach_fd(fd)
    server.start()
    log = logging.getLogger("cuse_lguest.serve")
    log.info("serving /dev/%s (pid %d)", args.name, os.getpid())
    # Guests still run on a stock Unicorn, only slower: say so once, plainly.
    from cuse_lguest import unicorn_build
    unicorn_build.warn_if_stock(log)
    while not server.finished.is_set():
        sig = signal.sigtimedwait(_STOP_SIGNALS, 0.25)
        if sig is not None:
            log.info("%s: shutting down", signal.Signals(sig.si_signo).name)
            break
    result = server.shutdown()
    if result != 0:
        log.error("the CUSE session ended with error %d", result)
        return 1
    return 0
