"""cffi (API mode) builder for the libfuse3 CUSE binding: `cuse_lguest.cuse._fuse_cffi`.

Built by setup.py (`cffi_modules`) against Debian's libfuse3-dev 3.14.  For a
source checkout: `python3 setup.py build_ext --inplace`.

Why a little C lives here instead of Python:

* The worker threads are ours (`cl_loop`), not fuse_session_loop_mt's, and
  they wait for requests in C.  libfuse 3.14's loop retires a worker the
  moment one more than its idle limit is idle, and starts one whenever the
  last idle worker takes a request.  A launcher's next LHREQ_IRQ arrives
  before the worker that answered the last one counts itself idle again, so
  under a steady stream of them libfuse started and ended a thread every few
  dozen requests (measured with strace: ~60 of each per 2000 writes), each
  a stack mmap/munmap, the latter a TLB shootdown across CPUs.  Our pool
  starts a worker on the same rule but retires one only after it has waited
  CL_IDLE_MS for a request, and never below CL_KEEP_WORKERS: a burst's extra
  workers still go away, the steady state no longer churns.
* libfuse 3.14 trusts the framing of what it reads: a short message stops the
  whole session ("short read", -EIO), and a WRITE whose size field exceeds
  the message makes it read past the request.  The `cl_read` guard checks
  each message before libfuse sees it and answers or drops a malformed one,
  so a bad peer can never end or crash the service.  The kernel never sends
  such messages, so on a genuine /dev/cuse the guard only costs a few
  comparisons.
* Waiting: each worker blocks in read() on the session fd itself, as
  libfuse's own workers do.  The kernel queues readers of /dev/fuse and
  /dev/cuse exclusively, so a request wakes exactly one, and it costs one
  system call to wait and take it.  An epoll instance per worker (the design
  before) cost an epoll_wait beside every read and armed its timeout's timer
  each time (about 1 us more per LHREQ_IRQ than the C server under load, and
  the idle machine's miss was measured with it: docs/performance.md, fuse_irq).
* Leaving: the thread that runs cl_loop decides, and the worker leaves at its
  next look.  Each worker says when it waits (`waiting`, set before it looks
  at its `leave` word and reads); to make one leave, the loop sets `leave`
  and, if the worker waits, sends it the signal cl_loop is given: the
  project's one for ending a blocked call (`lg_unblock_signal` in
  cpu/_native_build.py, whose handler does nothing and is installed without
  SA_RESTART), so the read ends with EINTR and the worker looks again.  A signal that lands between the look and the read is
  lost, so while any worker is told to leave the loop sends it again every
  CL_RESIGNAL_MS to those that still wait.  A
  read the signal meets after it took a request returns that request, which
  is served: retiring never drops one.  Stop: when the stop fd becomes
  readable or the session ends (the peer closed), every worker is told; libfuse
  sees ENODEV ("connection gone").  Retire: while there are more than
  CL_KEEP_WORKERS, the loop looks every CL_LOOK_MS for workers that have
  waited CL_IDLE_MS.  The same on /dev/cuse,
  /dev/fuse and a test socketpair.
* The hot LHREQ_IRQ write is answered in C (`cl_write`).  When the device
  has registered a shortcut for a file (`cl_shortcut_add`: the file's word
  size, the LHREQ_IRQ code and its Guest's native IRQ line, see
  core/guest.py IrqLine), a write of exactly two such words at offset 0
  whose first word is the code goes straight to the line's inject function.
  It sets the pending bit and kicks the vCPU, and the request is answered 0,
  what Device.write returns for it, without the GIL.  Whatever the line
  refuses (an IRQ >= 32, a dead Guest) and every other write goes to Python
  unchanged, so each errno stays the device's.  The table is read and changed
  under one mutex, so once cl_shortcut_remove returns no worker still calls
  into the line it named; the server removes a file's entry before releasing it.
* INIT turns off async direct I/O and async reads: through FUSE an
  O_DIRECT io_submit() or io_uring write would otherwise reach us after its
  submitting thread went on (or exited), and the thread id in the request,
  which the device maps to the caller's process, could by then name another
  process (a recycled id).  Sent synchronously, the caller waits in the
  kernel until we answer, so its id stays its own.  CUSE is always synchronous.
* ioctl is answered ENOTTY in C: the 3.x lguest device had no ioctl, and a
  character device without one answers ENOTTY.  poll stays unset, so libfuse
  answers ENOSYS and the kernel falls back to the default poll mask, which
  is also what a device without a poll method gives.

* The same session can serve FUSE instead of CUSE (`cl_new` without devinfo): a
  filesystem whose only inode is its root, a regular file, mounted over the
  node path (see fusenode.py).  It shares the ops above; FUSE adds GETATTR
  (answered in C from the link's mode, uid and gid), LOOKUP (nothing to
  find) and an OPEN that asks for direct I/O, so every read and write reaches
  us with its size and offset, as on a character device.  Through FUSE the
  offset is the caller's file position, which the kernel moves by every count
  we acknowledge; the server tracks it (positions.py) and tells each shortcut
  which offset means vCPU 0 (its `origin`; always 0 through CUSE).

FUSE_USE_VERSION is 312 ("3.12"): fuse_session_custom_io, through which
every read is guarded, first came with 3.12.
"""
from __future__ import annotations

import subprocess

from cffi import FFI

FUSE_USE_VERSION = 312

CDEF = r"""
typedef int... uid_t;
typedef int... gid_t;
typedef int... pid_t;
typedef int... mode_t;
typedef int... off_t;
typedef struct fuse_req *fuse_req_t;
struct fuse_session;
struct fuse_conn_info;

struct fuse_file_info {
    int flags;
    uint64_t fh;
    ...;
};

struct fuse_ctx {
    uid_t uid;
    gid_t gid;
    pid_t pid;
    mode_t umask;
};

struct cl_link {
    int stop_fd;
    unsigned max_write;
    unsigned long dropped;
    unsigned long refused;
    void *handle;
    unsigned long fast_irqs;
    unsigned node_mode;
    unsigned node_uid;
    unsigned node_gid;
    ...;
};

typedef int (*cl_irq_fn)(void *line, uint64_t irq);
int cl_shortcut_add(struct cl_link *l, uint64_t fh, unsigned word, uint64_t request,
                    cl_irq_fn inject, void *line, int64_t origin);
void cl_shortcut_set_origin(struct cl_link *l, uint64_t fh, int64_t origin);
void cl_shortcut_remove(struct cl_link *l, uint64_t fh);
void cl_shortcut_clear(struct cl_link *l);

struct fuse_session *cl_new(struct cl_link *link, const char *devinfo);
void cl_destroy(struct fuse_session *se, struct cl_link *link);
int cl_attach(struct fuse_session *se, int fd);
int cl_loop(struct fuse_session *se, struct cl_link *link, unsigned max_threads, int wake_signal);

int fuse_version(void);
void *fuse_req_userdata(fuse_req_t req);
const struct fuse_ctx *fuse_req_ctx(fuse_req_t req);
typedef void (*fuse_interrupt_func_t)(fuse_req_t req, void *data);
void fuse_req_interrupt_func(fuse_req_t req, fuse_interrupt_func_t func, void *data);
int fuse_req_interrupted(fuse_req_t req);

int fuse_reply_err(fuse_req_t req, int err);
void fuse_reply_none(fuse_req_t req);
int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi);
int cl_reply_open(fuse_req_t req, const struct fuse_file_info *fi);
int fuse_reply_write(fuse_req_t req, size_t count);
int fuse_reply_buf(fuse_req_t req, const char *buf, size_t size);

void fuse_session_exit(struct fuse_session *se);
int fuse_session_exited(struct fuse_session *se);
void fuse_session_destroy(struct fuse_session *se);

extern "Python+C" void cl_py_init_done(void *userdata);
extern "Python+C" void cl_py_open(fuse_req_t req, struct fuse_file_info *fi);
extern "Python+C" void cl_py_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
extern "Python+C" void cl_py_write(fuse_req_t req, const char *buf, size_t size, off_t off,
                                   struct fuse_file_info *fi);
extern "Python+C" void cl_py_release(fuse_req_t req, struct fuse_file_info *fi);
extern "Python+C" void cl_py_interrupt(fuse_req_t req, void *data);
"""

SOURCE = r"""
#define FUSE_USE_VERSION %(version)d
#include <cuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One file whose LHREQ_IRQ writes C answers: see the module docstring. */
typedef int (*cl_irq_fn)(void *line, uint64_t irq);
struct cl_shortcut {
    uint64_t fh;
    unsigned word;          /* the file's word size: the write is 2 * word bytes */
    uint64_t request;       /* the first word: LHREQ_IRQ                        */
    cl_irq_fn inject;       /* 0: done; otherwise leave the write to Python     */
    void *line;
    int64_t origin;         /* the write offset that names vCPU 0               */
};
#define CL_SHORTCUTS 64     /* files beyond this many simply take the Python path */

/* What the session's userdata points at: shared by C and Python. */
struct cl_link {
    int stop_fd;            /* readable => every worker leaves (ENODEV)        */
    unsigned max_write;     /* the max_write we negotiate and enforce          */
    unsigned long dropped;  /* messages too short to answer                   */
    unsigned long refused;  /* messages answered with an error by the guard    */
    void *handle;           /* the Python session object (cffi handle)         */
    unsigned long fast_irqs;            /* LHREQ_IRQ writes answered in C      */
    unsigned node_mode;     /* FUSE only: the root file's permission bits      */
    unsigned node_uid;      /* FUSE only: its owner                           */
    unsigned node_gid;      /* FUSE only: its group                           */
    int fuse;               /* 1: a FUSE session (more opcodes to check)      */
    pthread_mutex_t shortcut_lock;
    unsigned nshortcuts;
    struct cl_shortcut shortcuts[CL_SHORTCUTS];
};

void cl_py_init_done(void *userdata);
void cl_py_open(fuse_req_t req, struct fuse_file_info *fi);
void cl_py_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void cl_py_write(fuse_req_t req, const char *buf, size_t size, off_t off,
                 struct fuse_file_info *fi);
void cl_py_release(fuse_req_t req, struct fuse_file_info *fi);
void cl_py_interrupt(fuse_req_t req, void *data);

/* <linux/fuse.h> layouts, restated: including that header beside libfuse's
 * public ones redefines macros. */
struct cl_in_header {
    uint32_t len, opcode;
    uint64_t unique, nodeid;
    uint32_t uid, gid, pid;
    uint16_t total_extlen, padding;
};
struct cl_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct cl_open_out { uint64_t fh; uint32_t open_flags; uint32_t padding; };
enum { CL_FOPEN_DIRECT_IO = 1 << 0, CL_FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6 };

enum { CL_LOOKUP = 1, CL_FORGET = 2, CL_GETATTR = 3, CL_SETATTR = 4, CL_STATFS = 17,
       CL_GETXATTR = 22, CL_LISTXATTR = 23, CL_INIT = 26, CL_ACCESS = 34,
       CL_BATCH_FORGET = 42, CL_LSEEK = 46 };
enum { CL_OPEN = 14, CL_READ = 15, CL_WRITE = 16, CL_RELEASE = 18, CL_FSYNC = 20,
       CL_FLUSH = 25, CL_INTERRUPT = 36, CL_DESTROY = 38, CL_IOCTL = 39, CL_POLL = 40,
       CL_CUSE_INIT = 4096 };

/* The argument size libfuse reads for each opcode a FUSE kernel sends to our
 * one-file filesystem beyond the CUSE ones, or -1. */
static long cl_fuse_arg_size(uint32_t opcode)
{
    switch (opcode) {
    case CL_INIT:         return 16;    /* fuse_init_in up to flags (more with FUSE_INIT_EXT) */
    case CL_LOOKUP:       return 1;     /* a name, at least its NUL */
    case CL_FORGET:       return 8;     /* fuse_forget_in    */
    case CL_BATCH_FORGET: return 8;     /* fuse_batch_forget_in */
    case CL_GETATTR:      return 16;    /* fuse_getattr_in   */
    case CL_SETATTR:      return 88;    /* fuse_setattr_in   */
    case CL_STATFS:       return 0;
    case CL_GETXATTR:     return 8;     /* fuse_getxattr_in  */
    case CL_LISTXATTR:    return 8;
    case CL_ACCESS:       return 8;     /* fuse_access_in    */
    case CL_LSEEK:        return 24;    /* fuse_lseek_in     */
    default:              return -1;
    }
}

/* The argument size libfuse reads for each opcode a CUSE kernel sends, or
 * -1 for an opcode CUSE never uses. */
static long cl_arg_size(uint32_t opcode)
{
    switch (opcode) {
    case CL_CUSE_INIT: return 16;   /* cuse_init_in      */
    case CL_OPEN:      return 8;    /* fuse_open_in      */
    case CL_READ:      return 40;   /* fuse_read_in      */
    case CL_WRITE:     return 40;   /* fuse_write_in     */
    case CL_RELEASE:   return 24;   /* fuse_release_in   */
    case CL_FSYNC:     return 16;   /* fuse_fsync_in     */
    case CL_FLUSH:     return 24;   /* fuse_flush_in     */
    case CL_INTERRUPT: return 8;    /* fuse_interrupt_in */
    case CL_DESTROY:   return 0;
    case CL_IOCTL:     return 32;   /* fuse_ioctl_in     */
    case CL_POLL:      return 24;   /* fuse_poll_in      */
    default:           return -1;
    }
}

/* 0: pass to libfuse; -1: drop silently; >0: answer with this errno. */
static int cl_check(const struct cl_link *l, const char *msg, size_t n)
{
    struct cl_in_header h;
    uint32_t v;
    long arg;

    if (n < sizeof h)
        return -1;                      /* no header to answer to */
    memcpy(&h, msg, sizeof h);
    arg = cl_arg_size(h.opcode);
    if (l->fuse && (h.opcode == CL_CUSE_INIT || arg < 0))
        arg = cl_fuse_arg_size(h.opcode);
    if (h.opcode == CL_INTERRUPT)       /* INTERRUPT is never answered */
        return (h.len == n && n >= sizeof h + arg) ? 0 : -1;
    if (h.len != n)
        return EINVAL;                  /* length field disagrees with the message */
    if (arg < 0)
        return ENOSYS;
    if (n < sizeof h + arg)
        return EINVAL;
    if (h.opcode == CL_WRITE) {
        memcpy(&v, msg + sizeof h + 16, 4);          /* fuse_write_in.size */
        if (v > l->max_write)
            return EINVAL;
        if ((uint64_t)n != sizeof h + 40 + (uint64_t)v)
            return EINVAL;
    }
    if (h.opcode == CL_INIT && l->fuse) {
        memcpy(&v, msg + sizeof h + 12, 4);          /* fuse_init_in.flags */
        if ((v & (1u << 30)) && n < sizeof h + 64)   /* FUSE_INIT_EXT: flags2 follows */
            return EINVAL;
    }
    if (h.opcode == CL_IOCTL) {
        memcpy(&v, msg + sizeof h + 24, 4);          /* fuse_ioctl_in.in_size */
        if ((uint64_t)n != sizeof h + 32 + (uint64_t)v)
            return EINVAL;
    }
    return 0;
}

static void cl_answer(int fd, const char *msg, int err)
{
    struct cl_in_header h;
    struct cl_out_header o;

    memcpy(&h, msg, sizeof h);
    o.len = sizeof o;
    o.error = -err;
    o.unique = h.unique;
    if (write(fd, &o, sizeof o) < 0) {
        /* the peer is gone; the next read reports it */
    }
}

enum { CL_IDLE_MS = 1000, CL_LOOK_MS = 100, CL_KEEP_WORKERS = 2, CL_MAX_WORKERS = 64,
       CL_RESIGNAL_MS = 10 };
enum { CL_STAY = 0, CL_RETIRE = 1, CL_STOP = 2 };

/* One pool worker, as the loop thread sees it (see "Waiting" in the module
 * docstring).  `waiting` and `leave` are each one thread's store and the
 * other's load, both sequentially consistent: the worker says it waits and
 * then looks at `leave`, the loop sets `leave` and then looks at `waiting`,
 * so at least one of them sees the other. */
struct cl_worker {
    pthread_t thread;
    struct cl_pool *pool;
    int state;                      /* CL_FREE, CL_LIVE, CL_ENDED (under the pool lock) */
    volatile int waiting;           /* 1: in, or about to enter, the blocking read  */
    volatile int leave;             /* CL_RETIRE or CL_STOP: leave at the next look */
    uint64_t waits_since_ms;        /* when it last began to wait (cl_ms)           */
};

static uint64_t cl_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The calling pool worker, or NULL (then cl_read just reads). */
static __thread struct cl_worker *cl_self;

static ssize_t cl_read(int fd, void *buf, size_t len, void *userdata)
{
    struct cl_link *l = userdata;
    struct cl_worker *w = cl_self;

    for (;;) {
        ssize_t r;
        int verdict;

        if (w) {
            int leave;
            __atomic_store_n(&w->waits_since_ms, cl_ms(), __ATOMIC_RELAXED);
            __atomic_store_n(&w->waiting, 1, __ATOMIC_SEQ_CST);
            leave = __atomic_load_n(&w->leave, __ATOMIC_SEQ_CST);
            if (leave != CL_STAY) {
                __atomic_store_n(&w->waiting, 0, __ATOMIC_SEQ_CST);
                errno = leave == CL_RETIRE ? EAGAIN : ENODEV;
                return -1;          /* see cl_work */
            }
        }
        r = read(fd, buf, len);     /* a socketpair's message, too */
        if (w)
            __atomic_store_n(&w->waiting, 0, __ATOMIC_SEQ_CST);
        if (r < 0 && errno == EINTR)
            continue;               /* perhaps told to leave: look again */
        if (r == 0) {                   /* the peer closed: a clean end, not EIO */
            errno = ENODEV;
            return -1;
        }
        if (r < 0)
            return -1;
        verdict = cl_check(l, buf, (size_t)r);
        if (verdict == 0)
            return r;
        if (verdict > 0) {
            cl_answer(fd, buf, verdict);
            l->refused++;
        } else {
            l->dropped++;
        }
    }
}

static ssize_t cl_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    return writev(fd, iov, count);
}

static void cl_init(void *userdata, struct fuse_conn_info *conn)
{
    struct cl_link *l = userdata;
    if (conn->max_write > l->max_write)
        conn->max_write = l->max_write;
    l->max_write = conn->max_write;
    /* Every request must come from a thread that waits for its answer: the
     * device maps the header's thread id to a process (INITIALIZE's memory,
     * LHREQ_EVENTFD's fd).  Async direct I/O (an O_DIRECT io_submit or
     * io_uring write) and async reads are sent in the background while the
     * submitter goes on, and may exit, so its id could name another process
     * by the time we look.  Without these the kernel sends them synchronously. */
    conn->want &= ~(FUSE_CAP_ASYNC_DIO | FUSE_CAP_ASYNC_READ);
}

int cl_shortcut_add(struct cl_link *l, uint64_t fh, unsigned word, uint64_t request,
                    cl_irq_fn inject, void *line, int64_t origin)
{
    struct cl_shortcut s = { fh, word, request, inject, line, origin };
    int res = -1;

    pthread_mutex_lock(&l->shortcut_lock);
    if (l->nshortcuts < CL_SHORTCUTS) {
        l->shortcuts[l->nshortcuts++] = s;
        res = 0;
    }
    pthread_mutex_unlock(&l->shortcut_lock);
    return res;
}

void cl_shortcut_set_origin(struct cl_link *l, uint64_t fh, int64_t origin)
{
    pthread_mutex_lock(&l->shortcut_lock);
    for (unsigned i = 0; i < l->nshortcuts; i++)
        if (l->shortcuts[i].fh == fh)
            l->shortcuts[i].origin = origin;
    pthread_mutex_unlock(&l->shortcut_lock);
}

void cl_shortcut_remove(struct cl_link *l, uint64_t fh)
{
    pthread_mutex_lock(&l->shortcut_lock);
    for (unsigned i = 0; i < l->nshortcuts; i++) {
        if (l->shortcuts[i].fh == fh) {
            l->shortcuts[i] = l->shortcuts[--l->nshortcuts];
            break;
        }
    }
    pthread_mutex_unlock(&l->shortcut_lock);
}

void cl_shortcut_clear(struct cl_link *l)
{
    pthread_mutex_lock(&l->shortcut_lock);
    l->nshortcuts = 0;
    pthread_mutex_unlock(&l->shortcut_lock);
}

/* A launcher word: little-endian, `word` (4 or 8) bytes. */
static uint64_t cl_word(const char *p, unsigned word)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < word; i++)
        v |= (uint64_t)(unsigned char)p[i] << (8 * i);
    return v;
}

/* 1 if this write was a registered file's LHREQ_IRQ for vCPU 0 and its line took it. */
static int cl_shortcut_irq(struct cl_link *l, uint64_t fh, const char *buf, size_t size,
                           off_t off)
{
    int done = 0;

    pthread_mutex_lock(&l->shortcut_lock);
    for (unsigned i = 0; i < l->nshortcuts; i++) {
        const struct cl_shortcut *s = &l->shortcuts[i];
        if (s->fh != fh)
            continue;
        if (off == s->origin && size == 2 * (size_t)s->word && cl_word(buf, s->word) == s->request
            && s->inject(s->line, cl_word(buf + s->word, s->word)) == 0) {
            l->fast_irqs++;
            done = 1;
        }
        break;
    }
    pthread_mutex_unlock(&l->shortcut_lock);
    return done;
}

static void cl_write(fuse_req_t req, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    if (cl_shortcut_irq(fuse_req_userdata(req), fi->fh, buf, size, off))
        fuse_reply_write(req, 0);       /* LHREQ_IRQ's result, as Device.write gives it */
    else
        cl_py_write(req, buf, size, off, fi);
}

static void cl_ioctl(fuse_req_t req, int cmd, void *arg, struct fuse_file_info *fi,
                     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
    (void)cmd; (void)arg; (void)fi; (void)flags; (void)in_buf; (void)in_bufsz; (void)out_bufsz;
    fuse_reply_err(req, ENOTTY);
}

static const struct cuse_lowlevel_ops cl_ops = {
    .init = cl_init,
    .init_done = cl_py_init_done,
    .open = cl_py_open,
    .read = cl_py_read,
    .write = cl_write,
    .release = cl_py_release,
    .ioctl = cl_ioctl,
};

/* ---- FUSE: a filesystem that is one regular file, its root.  The file ops
 * are the CUSE ones above; FUSE's carry the inode number, which is always
 * the root's. ---- */

static void fl_init(void *userdata, struct fuse_conn_info *conn)
{
    cl_init(userdata, conn);
    cl_py_init_done(userdata);
}

static void fl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    (void)parent; (void)name;
    fuse_reply_err(req, ENOENT);        /* a file has no entries */
}

/* The file's size: large, because FUSE lets writes to one file run side by
 * side only when none reaches past its end (see cl_reply_open).  But no
 * larger than a 32-bit program without large-file support may open: the
 * kernel refuses such an open() of a bigger file with EOVERFLOW, and the
 * unmodified 3.x launcher is built that way.  Launchers never look at the
 * size, and such a program cannot write past it either. */
#define CL_FUSE_SIZE INT32_MAX

static void fl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    const struct cl_link *l = fuse_req_userdata(req);
    struct stat st;

    (void)fi;
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    st.st_size = CL_FUSE_SIZE;
    st.st_mode = S_IFREG | (l->node_mode & 07777);
    st.st_nlink = 1;
    st.st_uid = l->node_uid;
    st.st_gid = l->node_gid;
    fuse_reply_attr(req, &st, 1.0);
}

static void fl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    /* Direct I/O: every read and write comes to us with its size and offset,
     * and nothing is cached.  Not nonseekable or stream: both make the
     * launcher's pread() fail with ESPIPE. */
    (void)ino;
    fi->direct_io = 1;
    fi->keep_cache = 0;
    cl_py_open(req, fi);
}

/* The answer to OPEN.  CUSE: libfuse's.  FUSE: the same (direct I/O), plus
 * FOPEN_PARALLEL_DIRECT_WRITES, which libfuse 3.14 has no field for.  Without
 * it the kernel holds the file's inode lock for the whole of every write, so
 * one INITIALIZE waiting on its caller's slow memory would hold every other
 * launcher's writes, their LHREQ_IRQs too.  Kernels before 6.2 ignore it. */
int cl_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    const struct cl_link *l = fuse_req_userdata(req);
    struct cl_open_out out;

    if (!l->fuse)
        return fuse_reply_open(req, fi);
    memset(&out, 0, sizeof out);
    out.fh = fi->fh;
    out.open_flags = CL_FOPEN_DIRECT_IO | CL_FOPEN_PARALLEL_DIRECT_WRITES;
    return fuse_reply_buf(req, (const char *)&out, sizeof out);
}

static void fl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)ino;
    cl_py_read(req, size, off, fi);
}

static void fl_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
                     off_t off, struct fuse_file_info *fi)
{
    (void)ino;
    cl_write(req, buf, size, off, fi);
}

static void fl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    cl_py_release(req, fi);
}

static void fl_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
                     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
                     size_t in_bufsz, size_t out_bufsz)
{
    (void)ino;
    cl_ioctl(req, (int)cmd, arg, fi, flags, in_buf, in_bufsz, out_bufsz);
}

static const struct fuse_lowlevel_ops fl_ops = {
    .init = fl_init,
    .lookup = fl_lookup,
    .getattr = fl_getattr,
    .open = fl_open,
    .read = fl_read,
    .write = fl_write,
    .release = fl_release,
    .ioctl = fl_ioctl,
};

static const struct fuse_custom_io cl_io = { .writev = cl_writev, .read = cl_read };

/* A CUSE session announcing `devinfo`, or with devinfo NULL, a FUSE session
 * for our one-file filesystem; both with libfuse's usual argument list and
 * the shortcut lock, which is gone again if libfuse refuses. */
struct fuse_session *cl_new(struct cl_link *link, const char *devinfo)
{
    char *argv[] = { (char *)"cuse-lguest", NULL };
    struct fuse_args args = FUSE_ARGS_INIT(1, argv);
    struct fuse_session *se;

    pthread_mutex_init(&link->shortcut_lock, NULL);
    if (devinfo) {
        const char *info[] = { devinfo };
        struct cuse_info ci;

        memset(&ci, 0, sizeof ci);
        ci.dev_info_argc = 1;
        ci.dev_info_argv = info;
        se = cuse_lowlevel_new(&args, &ci, &cl_ops, link);
    } else {
        link->fuse = 1;
        se = fuse_session_new(&args, &fl_ops, sizeof fl_ops, link);
    }
    fuse_opt_free_args(&args);
    if (!se)
        pthread_mutex_destroy(&link->shortcut_lock);
    return se;
}

void cl_destroy(struct fuse_session *se, struct cl_link *link)
{
    fuse_session_destroy(se);
    pthread_mutex_destroy(&link->shortcut_lock);
}

/* Attach `fd` (/dev/cuse, /dev/fuse, or one end of a socketpair) through our
 * guarded io.  cuse_lowlevel_setup() stores an open /dev/cuse fd in the session
 * the same way.  The fd is made blocking: workers wait in read() itself (see
 * "Waiting" in the module docstring). */
int cl_attach(struct fuse_session *se, int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        return -1;
    return fuse_session_custom_io(se, &cl_io, fd);
}

/* ---- The worker pool (see the module docstring for why it is ours). ---- */

enum { CL_FREE = 0, CL_LIVE = 1, CL_ENDED = 2 };

struct cl_pool {
    struct fuse_session *se;
    struct cl_link *link;
    pthread_mutex_t lock;
    unsigned workers, idle, max;    /* live workers; those not serving a request */
    unsigned ended;                 /* ended workers the loop has yet to join    */
    unsigned retiring;              /* live workers told to retire               */
    int poke_fd;                    /* eventfd: a worker started or ended, look  */
    int sig;                        /* ends a waiting worker's read (EINTR)      */
    int error;                      /* the first read error, -errno              */
    struct cl_worker slot[CL_MAX_WORKERS];
};

static void *cl_work(void *arg);

static void cl_poke(struct cl_pool *p)
{
    uint64_t one = 1;
    if (write(p->poke_fd, &one, sizeof one) < 0) {
        /* an eventfd we own: only a full count fails, and then a look is due anyway */
    }
}

/* Under the lock: one more worker, counted idle until it takes a request. */
static void cl_start_worker(struct cl_pool *p)
{
    struct cl_worker *w = NULL;
    sigset_t quiet, old;

    for (unsigned i = 0; i < CL_MAX_WORKERS && !w; i++)
        if (p->slot[i].state == CL_FREE)
            w = &p->slot[i];
    if (!w)
        return;
    w->pool = p;
    w->waiting = 0;
    w->leave = CL_STAY;
    /* The process's signals stay with its own threads, as in libfuse. */
    sigemptyset(&quiet);
    sigaddset(&quiet, SIGTERM);
    sigaddset(&quiet, SIGINT);
    sigaddset(&quiet, SIGHUP);
    sigaddset(&quiet, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &quiet, &old);
    if (pthread_create(&w->thread, NULL, cl_work, w) == 0) {
        w->state = CL_LIVE;
        p->workers++;
        p->idle++;
        if (p->workers > CL_KEEP_WORKERS)
            cl_poke(p);             /* the loop starts looking for idle ones */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Under the lock: tell `w` to leave, and end its read if it waits in one.
 * A signal that lands just before the read is lost; the loop sends it again
 * while the worker still says it waits (CL_RESIGNAL_MS). */
static void cl_tell_leave(struct cl_pool *p, struct cl_worker *w, int why)
{
    __atomic_store_n(&w->leave, why, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->waiting, __ATOMIC_SEQ_CST))
        pthread_kill(w->thread, p->sig);
}

static void *cl_work(void *arg)
{
    struct cl_worker *w = arg;
    struct cl_pool *p = w->pool;
    struct fuse_buf buf;
    sigset_t wake;

    memset(&buf, 0, sizeof buf);
    sigemptyset(&wake);
    sigaddset(&wake, p->sig);
    pthread_sigmask(SIG_UNBLOCK, &wake, NULL);
    cl_self = w;
    for (;;) {
        int res = fuse_session_receive_buf(p->se, &buf);

        pthread_mutex_lock(&p->lock);
        if (res == -EAGAIN) {       /* told to retire (cl_read) */
            p->retiring--;
            break;
        }
        if (res == -EINTR) {
            pthread_mutex_unlock(&p->lock);
            continue;
        }
        if (res <= 0) {             /* 0: the session ended (stop, or the peer) */
            if (res < 0 && !p->error)
                p->error = res;
            fuse_session_exit(p->se);
            break;
        }
        if (--p->idle == 0 && p->workers + p->ended < p->max)
            cl_start_worker(p);     /* nobody left waiting: one more */
        pthread_mutex_unlock(&p->lock);
        fuse_session_process_buf(p->se, &buf);
        pthread_mutex_lock(&p->lock);
        p->idle++;
        pthread_mutex_unlock(&p->lock);
    }
    p->workers--;
    p->idle--;
    p->ended++;
    w->state = CL_ENDED;
    cl_poke(p);
    pthread_mutex_unlock(&p->lock);
    free(buf.mem);
    return NULL;
}

/* Under the lock: retire workers beyond CL_KEEP_WORKERS that have waited
 * CL_IDLE_MS for a request. */
static void cl_retire_idle(struct cl_pool *p)
{
    unsigned spare = p->workers - p->retiring;
    uint64_t now = cl_ms();

    spare = spare > CL_KEEP_WORKERS ? spare - CL_KEEP_WORKERS : 0;
    for (unsigned i = 0; i < CL_MAX_WORKERS && spare > 0; i++) {
        struct cl_worker *w = &p->slot[i];
        if (w->state == CL_LIVE && w->leave == CL_STAY
            && __atomic_load_n(&w->waiting, __ATOMIC_SEQ_CST)
            && now - __atomic_load_n(&w->waits_since_ms, __ATOMIC_RELAXED) >= CL_IDLE_MS) {
            p->retiring++;
            cl_tell_leave(p, w, CL_RETIRE);
            spare--;
        }
    }
}

/* Under the lock: the leave signal again, for every worker told to leave that
 * still waits (its first may have landed just before its read). */
static void cl_resignal(struct cl_pool *p)
{
    for (unsigned i = 0; i < CL_MAX_WORKERS; i++) {
        struct cl_worker *w = &p->slot[i];
        if (w->state == CL_LIVE && w->leave != CL_STAY)
            cl_tell_leave(p, w, w->leave);
    }
}

/* Serve until the session ends; 0, or the first read error as -errno.  Up to
 * `max_threads` workers; the calling thread starts the first, retires idle
 * ones, stops them all when the stop fd becomes readable or the session ends,
 * and joins each one that ends, so none outlives the loop.  `wake_signal` has
 * a do-nothing handler installed without SA_RESTART (lg_unblock_signal). */
int cl_loop(struct fuse_session *se, struct cl_link *link, unsigned max_threads, int wake_signal)
{
    struct cl_pool *p = calloc(1, sizeof *p);
    int res, stopping = 0;

    if (wake_signal <= 0 || !p) {
        free(p);
        return wake_signal <= 0 ? -EINVAL : -ENOMEM;
    }
    p->se = se;
    p->link = link;
    p->max = max_threads < 1 ? 1 : max_threads > CL_MAX_WORKERS ? CL_MAX_WORKERS : max_threads;
    p->sig = wake_signal;
    p->poke_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->poke_fd < 0) {
        res = -errno;
        free(p);
        return res;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_lock(&p->lock);
    cl_start_worker(p);
    if (p->workers == 0)
        p->error = -EAGAIN;
    while (p->workers > 0 || p->ended > 0) {
        struct pollfd fds[2] = { { stopping ? -1 : link->stop_fd, POLLIN, 0 },
                                 { p->poke_fd, POLLIN, 0 } };
        int timeout = stopping || p->retiring ? CL_RESIGNAL_MS
                      : p->workers > CL_KEEP_WORKERS ? CL_LOOK_MS : -1;
        uint64_t pokes;

        for (unsigned i = 0; i < CL_MAX_WORKERS; i++) {
            if (p->slot[i].state == CL_ENDED) {
                pthread_t t = p->slot[i].thread;
                pthread_mutex_unlock(&p->lock);
                pthread_join(t, NULL);
                pthread_mutex_lock(&p->lock);
                p->slot[i].state = CL_FREE;
                p->ended--;
            }
        }
        if (p->workers == 0)
            break;
        pthread_mutex_unlock(&p->lock);
        if (poll(fds, 2, timeout) > 0 && fds[1].revents
            && read(p->poke_fd, &pokes, sizeof pokes) < 0) {
            /* EAGAIN: another look drained it */
        }
        pthread_mutex_lock(&p->lock);
        if (!stopping && (fds[0].revents || fuse_session_exited(se))) {
            stopping = 1;           /* every worker leaves at its next look */
            fuse_session_exit(se);
            for (unsigned i = 0; i < CL_MAX_WORKERS; i++)
                if (p->slot[i].state == CL_LIVE)
                    __atomic_store_n(&p->slot[i].leave, CL_STOP, __ATOMIC_SEQ_CST);
        }
        if (!stopping && p->workers > CL_KEEP_WORKERS)
            cl_retire_idle(p);
        cl_resignal(p);
    }
    pthread_mutex_unlock(&p->lock);
    res = p->error;
    close(p->poke_fd);
    pthread_mutex_destroy(&p->lock);
    free(p);
    fuse_session_reset(se);
    return res;
}
""" % {"version": FUSE_USE_VERSION}


def _pkgconfig(flag: str) -> list[str]:
    """`pkg-config fuse3` output, or Debian's defaults when pkg-config is missing."""
    try:
        out = subprocess.run(["pkg-config", flag, "fuse3"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()
    except (OSError, subprocess.CalledProcessError):
        return {"--cflags": ["-I/usr/include/fuse3"], "--libs": ["-lfuse3", "-lpthread"]}[flag]


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
_cflags = _pkgconfig("--cflags")
_libs = _pkgconfig("--libs")
ffibuilder.set_source(
    "cuse_lguest.cuse._fuse_cffi",
    SOURCE,
    include_dirs=[f[2:] for f in _cflags if f.startswith("-I")],
    extra_compile_args=[f for f in _cflags if not f.startswith("-I")],
    libraries=[f[2:] for f in _libs if f.startswith("-l")],
    library_dirs=[f[2:] for f in _libs if f.startswith("-L")],
)

