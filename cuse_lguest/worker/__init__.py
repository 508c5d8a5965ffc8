"""One unprivileged process per Guest (issue 13).

The service runs as root; its callers and their Guests are not trusted.  So
the root process, the *front end*, keeps only what needs root: the CUSE
session, the open files, and the handles it takes from a launcher while its
INITIALIZE blocks.  Each Guest (core, CPU, memory, timer) runs in a *worker*
process with the launcher's own uid, gid and groups, no capabilities and
`no_new_privs`: it holds the launcher's memory through the handles it was
given and can open nothing the launcher could not.  A worker that dies
(SIGBUS from a truncated file, an abort inside Unicorn, the OOM killer)
takes only its Guest with it.

* zygote.py: a process started with the service that has already imported
  Unicorn and the core, and forks a worker per INITIALIZE;
* confine.py: what a fresh worker does to itself before it touches a Guest;
* worker.py: the worker's body, a Guest served over two sockets;
* proxy.py: the front end's contract.Guest for a Guest in a worker, and the
  GuestFactory that makes them;
* channel.py: messages with descriptors over a SOCK_SEQPACKET socket.
"""
