"""`cuse-lguest serve`: register /dev/<name> through CUSE (or FUSE) and serve launchers.

Runs in the foreground and logs to stderr.  SIGTERM or SIGINT ends it
cleanly: every read in flight is answered with an error, every guest is
destroyed, the node is removed, and the exit code is 0.  When the service
cannot start (no /dev/cuse nor /dev/fuse, not root, libfuse too old or the
binding not built) it says why in one sentence and exits 2.

--transport picks the kernel interface (transports.py): CUSE makes a
character device /dev/NAME whose mode and group the udev rule sets; FUSE
(for kernels without CUSE) mounts a one-file filesystem over --node and sets
the mode and group itself, with the udev rule's defaults.

Every guest runs in a worker process of its own, with the launcher's ids and
no privilege, forked from a zygote started here (cuse_lguest/worker/);
`--in-process` keeps them in this process, for debugging.

Both signals are blocked in every thread and taken with sigtimedwait() on the
main thread, so libfuse's worker threads never see them and the shutdown
runs as ordinary code rather than inside a signal handler.

Under systemd (`Type=notify`) the service says READY=1 once the node can be
opened, keeps a STATUS= line with the number of guests alive, and says
STOPPING=1 when it shuts down; elsewhere those messages are not sent.  Where
/dev is a container's tmpfs, it makes the node itself (cuse_lguest.node).
"""
from __future__ import annotations

import argparse
import grp
import importlib
import logging
import os
import signal
import sys

from cuse_lguest import transports, udev
from cuse_lguest.node import Node
from cuse_lguest.sdnotify import Notifier

EXIT_UNAVAILABLE = 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cuse_lguest.cpu import engine
    default_tb = engine.DEFAULT_TRANSLATION_BUFFER // engine.MIB
    parser.add_argument("--transport", choices=transports.CHOICES, default="auto",
                        help="cuse: a character device made by the kernel's CUSE; fuse: a one-file "
                             "FUSE mount over the node path, for kernels without CUSE; auto (default): "
                             "cuse when /dev/cuse exists, else fuse when /dev/fuse exists")
    parser.add_argument("--name", default="lguest",
                        help="device name: the node is /dev/NAME (default: lguest)")
    parser.add_argument("--node", help="FUSE only: the path to serve (default: /dev/NAME)")
    parser.add_argument("--mode", help=f"FUSE only: the node's mode (default: {udev.DEFAULT_MODE}, "
                                       "what the udev rule gives a CUSE node)")
    parser.add_argument("--group", help=f"FUSE only: the node's group (default: {udev.DEFAULT_GROUP}, "
                                        "as the udev rule; root's group if it does not exist)")
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
    from cuse_lguest.limits import Limits
    caps = Limits()
    for flag, field, what in (
            ("--max-files-per-user", "files_per_user", "open files of /dev/NAME per user (then EMFILE)"),
            ("--max-files", "files", "open files of /dev/NAME in all (then ENFILE)"),
            ("--max-guests-per-user", "guests_per_user", "live guests per user (then ENOMEM)"),
            ("--max-guests", "guests", "live guests in all (then ENOMEM)"),
            ("--max-eventfds", "eventfds_per_guest", "LHREQ_EVENTFD entries per guest (then ENOMEM)")):
        parser.add_argument(flag, type=int, metavar="N", default=getattr(caps, field), dest=field,
                            help=f"{what}; default {getattr(caps, field)}")
    parser.add_argument("--mirror-budget", type=int, metavar="MIB", default=None,
                        help="memory for all mirror-mode copies of guest RAM together (then INITIALIZE "
                             "answers ENOMEM); default: half the machine's memory")
    parser.add_argument("--in-process", action="store_true",
                        help="run every guest inside the service process instead of a worker process "
                             "of the launcher's own (for debugging only: a guest can then take the "
                             "service down, and runs with root's power over the launcher's memory)")
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


def _limits(args: argparse.Namespace):
    from cuse_lguest.limits import Limits
    mirror = -1 if args.mirror_budget is None else args.mirror_budget << 20
    return Limits(files_per_user=args.files_per_user, files=args.files, guests_per_user=args.guests_per_user,
                  guests=args.guests, eventfds_per_guest=args.eventfds_per_guest, mirror_bytes=mirror)


def _make_device(factory_spec: str | None, stats_dir: str | None, limits, in_process: bool):
    """The device, and what to close after it: the worker zygote, unless guests run in-process."""
    from cuse_lguest.device import Device
    stats = _stats_directory(stats_dir)
    if factory_spec is not None:
        module_name, _, attr = factory_spec.partition(":")
        module = importlib.import_module(module_name)
        # A double that never touches guest memory brings its own memory source too.
        memory = getattr(module, "acquire_memory", None)
        return Device(getattr(module, attr), stats=stats, limits=limits,
                      **({"memory": memory} if memory else {})), None
    if in_process:
        return Device(stats=stats, limits=limits), None
    from cuse_lguest.worker.proxy import WorkerFactory
    workers = WorkerFactory()
    return Device(workers, stats=stats, limits=limits), workers


def _file_attrs(args: argparse.Namespace):
    """The FUSE node's mode, owner and group, from the options or the udev rule's defaults."""
    from cuse_lguest.cuse.session import FileAttrs
    mode = args.mode or udev.DEFAULT_MODE
    if not udev.valid_mode(mode):
        raise ValueError(f"{mode!r} is not an octal mode like 0660.")
    try:
        gid = grp.getgrnam(args.group or udev.DEFAULT_GROUP).gr_gid
    except KeyError:
        if args.group:
            raise ValueError(f"there is no group {args.group!r}.") from None
        gid = 0
    return FileAttrs(mode=int(mode, 8), uid=0, gid=gid)


def run(args: argparse.Namespace) -> int:
    if not _valid_name(args.name):
        return _fail(f"{args.name!r} is not a usable device name.")
    try:
        transport = "cuse" if args.socket_fd is not None else transports.choose(args.transport)
    except transports.NoTransport as e:
        return _fail(str(e))
    if transport == "cuse" and (args.node or args.mode or args.group):
        return _fail("--node, --mode and --group are for the FUSE transport: a CUSE node is /dev/NAME, "
                     "and the udev rule sets its mode and group.")
    from cuse_lguest.cuse.binding import TransportUnavailable
    try:
        from cuse_lguest.cuse.fusenode import FuseNode
        from cuse_lguest.cuse.server import open_cuse
        attrs = _file_attrs(args) if transport == "fuse" else None
    except TransportUnavailable as e:
        return _fail(str(e))
    except ValueError as e:
        return _fail(str(e))
    from cuse_lguest.cpu import engine
    try:
        engine.set_translation_buffer(args.translation_buffer * engine.MIB)
    except ValueError as e:
        return _fail(f"--translation-buffer: {e}.")
    if args.socket_fd is None and os.geteuid() != 0:
        return _fail("it must run as root, because /dev/cuse is only open to root." if transport == "cuse"
                     else "it must run as root, because it mounts FUSE over the node.")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before any thread starts, and before the zygote: it and every worker
    # inherit the mask, so a SIGTERM sent to the whole service (systemd's
    # control group) ends guests through this process's orderly shutdown.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        device, workers = _make_device(args.guest_factory, args.stats_dir, _limits(args), args.in_process)
    except (ImportError, AttributeError) as e:
        return _fail(f"the hypervisor core cannot be loaded ({e}).")

    node = FuseNode(args.node or f"/dev/{args.name}", attrs) if transport == "fuse" else None
    try:
        if args.socket_fd is not None:
            fd = args.socket_fd
        elif node is None:
            fd = open_cuse()
        else:
            node.prepare()
            fd = node.mount()
    except TransportUnavailable as e:
        if workers is not None:
            workers.close()
        return _fail(str(e))
    try:
        return _serve(args, device, fd, attrs, node.path if node else f"/dev/{args.name}")
    finally:
        if workers is not None:
            workers.close()
        if node is not None:
            node.remove()


def _serve(args: argparse.Namespace, device, fd: int, attrs, path: str) -> int:
    from cuse_lguest.cuse.server import Server
    server = Server(device, name=args.name, eintr_on_signal=args.eintr_on_signal, fuse=attrs)
    server.attach_fd(fd)
    server.start()
    log = logging.getLogger("cuse_lguest.serve")
    log.info("serving %s through %s (pid %d)", path, server.transport, os.getpid())
    # Guests still run on a stock Unicorn, only slower: say so once, plainly.
    from cuse_lguest import unicorn_build
    unicorn_build.warn_if_stock(log)
    # "Ready" means the node can be opened.  A FUSE node is the mount itself, usable once
    # FUSE_INIT is answered; a CUSE node is made by the kernel (or, in a container, by
    # cuse_lguest.node).  Over a test socketpair there is no kernel: registered is ready.
    cuse_node = Node(args.name) if args.socket_fd is None and attrs is None else None
    notifier = Notifier()
    ready = False
    while not server.finished.is_set():
        sig = signal.sigtimedwait(_STOP_SIGNALS, 0.25)
        # CPython 3.11 answers a wait that a stop and continue (SIGSTOP, a cgroup
        # freeze) cut short past its timeout with an uninitialised siginfo, not None.
        if sig is not None and sig.si_signo in _STOP_SIGNALS:
            log.info("%s: shutting down", signal.Signals(sig.si_signo).name)
            break
        if not ready and server.registered.is_set() and (cuse_node is None or cuse_node.poll()):
            ready = True
            log.info("ready: %s can be opened", path)
            notifier.send(READY="1")
        if ready:
            notifier.status(f"serving {path}: {device.guests_alive()} guests alive")
    notifier.send(STOPPING="1", STATUS="shutting down: ending every guest")
    result = server.shutdown()
    if cuse_node is not None:
        cuse_node.remove()
    if result != 0:
        log.error("the %s session ended with error %d", server.transport, result)
        return 1
    return 0
