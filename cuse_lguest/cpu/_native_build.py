"""cffi (API mode) builder for the vCPU stop flag.  Listed in setup.py's cffi_modules.

Unicorn 2.1.4 checks for a pending stop after every guest load and store and
then rewinds EIP to the start of the instruction, even when that instruction
has already stored: a read-modify-write then runs twice.  So no thread other
than the vCPU may call uc_emu_stop().  Instead, interrupt sources raise the
flag in a small per-Guest struct, which is read at the start of every
translated block (before any of its memory accesses): by Unicorn itself on
our build (block-stop.patch, cpu/stopper.py), or else by lg_block_hook, a
UC_HOOK_BLOCK callback that calls uc_emu_stop() when it sees the flag (about
a fifth of guest compute goes to that hook call).

Nothing but the vCPU clears the flag, and it does so *before* it looks at its
pending work, so a request that arrives between that look and the next
emu_start is never lost.  lg_stop_clear is a sequentially consistent store:
a plain one may become visible only after the vCPU's following loads of the
pending state (x86 store buffer), and then overwrite a request made meanwhile.

uc_emu_stop's address is handed over at run time, so this module does not
link against libunicorn (the stock wheel ships no headers).

struct lg_irqs is a Guest's pending-IRQ word, shared by Python and C (the
CUSE transport answers the hot LHREQ_IRQ write without Python through
lg_irq_inject).  Every change is an atomic read-modify-write, so no lock is
needed.  A raise is "change, then kick": set the stop flag for a running
vCPU and write the pipe a halted one sleeps on (with the GIL released).
The wake-up descriptor is written only while the vCPU says it is `sleeping`: a system
call per IRQ costs the transport's fast path dearly under emulation.  Both
sides store before they load (the vCPU `sleeping`, then the pending state;
the kicker the pending state, then reads `sleeping`), each a sequentially
consistent access, so at least one sees the other: no lost wake-up.
A halted vCPU sleeps in lg_irq_sleep, entirely in C with the GIL released:
it says it sleeps, then looks (an interrupt request, or a pending IRQ the
Guest's blocked_interrupts word leaves through), and reads the pipe only
while there is nothing to do.  A post left over from a kick during the run
makes the read return at once and it looks again, without Python.  The
thread comes back to Python once, with work to do: the Python loop it
replaces took the GIL after every read and ran the look and the flag store
in bytecode before it could go on (measured: 6-12 us of the halted IRQ path).
A launcher's IRQ marks `from_launcher` *before* its pending bit: whoever sees
the bit and then exchanges the mark is sure to find it, so the memory sync
point that goes with an LHREQ_IRQ (mirror mode) is never skipped.

The Guest may run in another process than the injector (the service's front
end injects, a worker runs the vCPU).  So the state both sides change,
struct lg_irq_shared and the stop flag, lives in one shared page, and
struct lg_irqs is each process's own handle on it: pointers into its own
mapping of the page, and the descriptor *it* posts to wake the vCPU.  The
atomics above are just as atomic across processes on one MAP_SHARED page.
A side never follows a pointer it finds inside the page, so whatever the
other process writes there can only change IRQ bits, never where we write.

struct lg_exit_stats is a Guest's exit profile (core/exitstats.py): a count
and a host time for each kind of exit, in a mapping of a file or memfd that
another process (`cuse-lguest stat`, the root front end of a worker) reads
while the Guest runs.  Each slot has one writer at a time (the vCPU thread,
or the timer thread for ticks), so relaxed atomic adds are enough: a reader
sees every value whole, never torn.

lg_eventfd_post is how the vCPU bumps a launcher's eventfd on NOTIFY
(eventfds.py).  A write to an eventfd whose count is at its maximum blocks,
and the launcher owns that count: it can fill it on purpose.  We cannot make
the write non-blocking (O_NONBLOCK would change the launcher's own open
file), so we look first: a full eventfd already has a wake-up waiting for
its reader, and our increment can be dropped.  A launcher that fills it in
the instant between the look and the write can still hold the write; a
signal with a do-nothing handler installed without SA_RESTART
(lg_unblock_signal) then ends it with EINTR, and that increment is dropped
for the same reason.

struct lg_eventfds is a Guest's eventfd table itself (eventfds.py keeps the
descriptors' lifetime, this keeps the lookup and the post), so that the
vCPU's native exits can claim a NOTIFY without Python (cpu/_exits_build.py).
One mutex covers the entries and the poster: a post registers its thread
under it and the unblock signal is sent under it, so the thread cannot
leave (or exit) in between, and after lg_eventfds_stop no new post starts.
"""
from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
    struct lg_stop {
        volatile int flag;      /* set by any thread: stop at the next block */
        void *uc;               /* the uc_engine handle */
        int (*emu_stop)(void *uc);
    };
    void lg_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
    void lg_stop_clear(struct lg_stop *s);

    struct lg_irq_shared {
        volatile uint32_t pending;        /* IRQ n pending <=> bit n */
        volatile uint32_t from_launcher;  /* an LHREQ_IRQ came since the vCPU last looked */
        volatile uint32_t alive;          /* 0 once the Guest died: lg_irq_inject refuses */
        volatile uint32_t sleeping;       /* the vCPU may be in (or about to enter) the read */
        volatile uint32_t interrupt;      /* the device wants run() to return (Guest.interrupt) */
    };
    struct lg_irqs {
        struct lg_irq_shared *sh;         /* in this process's mapping of the shared page */
        volatile int *stop;               /* the vCPU's stop flag, in the same page */
        int wake_fd;                      /* what this process writes to wake a halted vCPU; -1 once closed */
    };
    void lg_irq_sleeping(struct lg_irqs *s, int sleeping);
    int lg_irq_sleep(struct lg_irqs *s, int wait_fd, const volatile uint32_t *blocked);
    void lg_irq_raise(struct lg_irqs *s, uint32_t bits, int from_launcher);
    int lg_irq_inject(void *irqs, uint64_t irq);
    void lg_irq_kick(struct lg_irqs *s);
    void lg_irq_take(struct lg_irqs *s, uint32_t bits);
    int lg_irq_take_launcher_mark(struct lg_irqs *s);
    void lg_irq_interrupt(struct lg_irqs *s);
    int lg_irq_take_interrupt(struct lg_irqs *s);

    #define LG_STAT_MAGIC 0x5453474c      /* "LGST" */
    #define LG_STAT_VERSION 1
    #define LG_STAT_SLOTS 1024
    #define LG_STAT_NAME 64
    struct lg_exit_stats {
        uint32_t magic;
        uint32_t version;
        uint32_t service_pid;             /* the process whose Guest this is */
        uint32_t launcher_pid;
        char name[64];                    /* NUL-terminated: the launcher as the log names it */
        uint64_t count[1024];
        uint64_t ns[1024];
    };
    void lg_stat_add(struct lg_exit_stats *s, uint32_t slot, uint64_t ns);

    int lg_unblock_signal(void);
    int lg_eventfd_post(int fd, int look_first);

    struct lg_eventfds;
    struct lg_eventfds *lg_eventfds_new(void);
    void lg_eventfds_free(struct lg_eventfds *t);
    int lg_eventfds_add(struct lg_eventfds *t, uint64_t value, int fd);
    int lg_eventfds_has(void *t, uint64_t value);
    int lg_eventfds_claim(void *t, uint64_t value, int look_first);
    void lg_eventfds_stop(struct lg_eventfds *t);
    int lg_eventfds_unblock(struct lg_eventfds *t);
""")
ffibuilder.set_source("cuse_lguest.cpu._native", r"""
    #include <errno.h>
    #include <poll.h>
    #include <pthread.h>
    #include <signal.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <unistd.h>
    struct lg_stop {
        volatile int flag;
        void *uc;
        int (*emu_stop)(void *uc);
    };
    void lg_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
    {
        struct lg_stop *s = user_data;
        (void)address; (void)size;
        if (s->flag)
            s->emu_stop(uc);
    }
    void lg_stop_clear(struct lg_stop *s)
    {
        __atomic_store_n(&s->flag, 0, __ATOMIC_SEQ_CST);
    }

    struct lg_irq_shared {
        volatile uint32_t pending;
        volatile uint32_t from_launcher;
        volatile uint32_t alive;
        volatile uint32_t sleeping;
        volatile uint32_t interrupt;
    };
    struct lg_irqs {
        struct lg_irq_shared *sh;
        volatile int *stop;
        int wake_fd;
    };
    void lg_irq_sleeping(struct lg_irqs *s, int sleeping)
    {
        __atomic_store_n(&s->sh->sleeping, (uint32_t)sleeping, __ATOMIC_SEQ_CST);
    }
    void lg_irq_kick(struct lg_irqs *s)
    {
        char one = 1;
        __atomic_store_n(s->stop, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&s->sh->sleeping, __ATOMIC_SEQ_CST))
            return;
        /* A non-blocking pipe: when it is full a wake-up is pending anyway. */
        if (s->wake_fd >= 0 && write(s->wake_fd, &one, sizeof one) < 0) {
        }
    }
    /* HALT: until an interrupt is requested or an IRQ that *blocked leaves
     * through is pending.  0, or -errno when the pipe cannot be read. */
    int lg_irq_sleep(struct lg_irqs *s, int wait_fd, const volatile uint32_t *blocked)
    {
        char posts[64];
        int res = 0;
        lg_irq_sleeping(s, 1);          /* before the look: see the module docstring */
        while (!__atomic_load_n(&s->sh->interrupt, __ATOMIC_SEQ_CST)
               && !(__atomic_load_n(&s->sh->pending, __ATOMIC_SEQ_CST) & ~*blocked)) {
            if (read(wait_fd, posts, sizeof posts) < 0 && errno != EINTR) {
                res = -errno;
                break;
            }
        }
        lg_irq_sleeping(s, 0);
        return res;
    }
    void lg_irq_raise(struct lg_irqs *s, uint32_t bits, int from_launcher)
    {
        if (from_launcher)
            __atomic_store_n(&s->sh->from_launcher, 1, __ATOMIC_SEQ_CST);
        __atomic_or_fetch(&s->sh->pending, bits, __ATOMIC_SEQ_CST);
        lg_irq_kick(s);
    }
    /* LHREQ_IRQ from C: 0 when done as Guest.irq() would, -1 to leave it to
     * Python (an IRQ >= 32, or a dead Guest), whose answer is the seed's errno. */
    int lg_irq_inject(void *irqs, uint64_t irq)
    {
        struct lg_irqs *s = irqs;
        if (irq >= 32 || !__atomic_load_n(&s->sh->alive, __ATOMIC_SEQ_CST))
            return -1;
        lg_irq_raise(s, 1u << irq, 1);
        return 0;
    }
    void lg_irq_take(struct lg_irqs *s, uint32_t bits)
    {
        __atomic_and_fetch(&s->sh->pending, ~bits, __ATOMIC_SEQ_CST);
    }
    int lg_irq_take_launcher_mark(struct lg_irqs *s)
    {
        return (int)__atomic_exchange_n(&s->sh->from_launcher, 0, __ATOMIC_SEQ_CST);
    }
    void lg_irq_interrupt(struct lg_irqs *s)
    {
        __atomic_store_n(&s->sh->interrupt, 1, __ATOMIC_SEQ_CST);
        lg_irq_kick(s);
    }
    int lg_irq_take_interrupt(struct lg_irqs *s)
    {
        return (int)__atomic_exchange_n(&s->sh->interrupt, 0, __ATOMIC_SEQ_CST);
    }

    #define LG_STAT_MAGIC 0x5453474c
    #define LG_STAT_VERSION 1
    #define LG_STAT_SLOTS 1024
    #define LG_STAT_NAME 64
    struct lg_exit_stats {
        uint32_t magic;
        uint32_t version;
        uint32_t service_pid;
        uint32_t launcher_pid;
        char name[LG_STAT_NAME];
        uint64_t count[LG_STAT_SLOTS];
        uint64_t ns[LG_STAT_SLOTS];
    };
    void lg_stat_add(struct lg_exit_stats *s, uint32_t slot, uint64_t ns)
    {
        if (slot >= LG_STAT_SLOTS)
            return;
        __atomic_fetch_add(&s->count[slot], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&s->ns[slot], ns, __ATOMIC_RELAXED);
    }

    static void lg_unblock_handler(int sig)
    {
        (void)sig;                      /* being delivered is the whole point */
    }

    /* The signal that ends a blocked post; installed once, process-wide. */
    int lg_unblock_signal(void)
    {
        static int installed;
        int sig = SIGRTMIN + 3;
        if (!__atomic_load_n(&installed, __ATOMIC_ACQUIRE)) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = lg_unblock_handler;
            sigemptyset(&sa.sa_mask);
            sa.sa_flags = 0;            /* no SA_RESTART: the write must come back */
            if (sigaction(sig, &sa, NULL) != 0)
                return -errno;
            __atomic_store_n(&installed, 1, __ATOMIC_RELEASE);
        }
        return sig;
    }

    /* 1: posted; 0: dropped (full, or interrupted); -errno otherwise. */
    int lg_eventfd_post(int fd, int look_first)
    {
        if (look_first) {
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            int n = poll(&p, 1, 0);
            if (n < 0)
                return -errno;
            if (n == 0)
                return 0;
            if (p.revents & POLLNVAL)
                return -EBADF;
        }
        uint64_t one = 1;
        if (write(fd, &one, sizeof one) == (ssize_t)sizeof one)
            return 1;
        return errno == EINTR ? 0 : -errno;
    }

    struct lg_eventfds {
        pthread_mutex_t lock;
        uint64_t *values;               /* append-only; the first entry for a value wins */
        int *fds;
        uint32_t count, room;
        int closed;                     /* lg_eventfds_stop: no post starts any more */
        int posting;                    /* a thread is inside a post: `poster` */
        pthread_t poster;
    };

    struct lg_eventfds *lg_eventfds_new(void)
    {
        struct lg_eventfds *t = calloc(1, sizeof *t);
        if (t && pthread_mutex_init(&t->lock, NULL) != 0) {
            free(t);
            t = NULL;
        }
        return t;
    }

    void lg_eventfds_free(struct lg_eventfds *t)
    {
        pthread_mutex_destroy(&t->lock);
        free(t->values);
        free(t->fds);
        free(t);
    }

    /* 0, or -ENOMEM. */
    int lg_eventfds_add(struct lg_eventfds *t, uint64_t value, int fd)
    {
        int err = 0;
        pthread_mutex_lock(&t->lock);
        if (t->count == t->room) {
            uint32_t room = t->room ? 2 * t->room : 8;
            uint64_t *values = realloc(t->values, room * sizeof *values);
            if (values)
                t->values = values;
            int *fds = values ? realloc(t->fds, room * sizeof *fds) : NULL;
            if (fds) {
                t->fds = fds;
                t->room = room;
            } else {
                err = -ENOMEM;
            }
        }
        if (!err) {
            t->values[t->count] = value;
            t->fds[t->count++] = fd;
        }
        pthread_mutex_unlock(&t->lock);
        return err;
    }

    static int lg_eventfds_find(struct lg_eventfds *t, uint64_t value)
    {
        for (uint32_t i = 0; i < t->count; i++)
            if (t->values[i] == value)
                return (int)i;
        return -1;
    }

    int lg_eventfds_has(void *table, uint64_t value)
    {
        struct lg_eventfds *t = table;
        pthread_mutex_lock(&t->lock);
        int found = lg_eventfds_find(t, value) >= 0;
        pthread_mutex_unlock(&t->lock);
        return found;
    }

    /* Signal the first eventfd registered for `value`: 1 if there is one
     * (its increment is dropped once the table is stopped), else 0.  Only
     * tests pass look_first 0: a launcher filling the eventfd after our look. */
    int lg_eventfds_claim(void *table, uint64_t value, int look_first)
    {
        struct lg_eventfds *t = table;
        pthread_mutex_lock(&t->lock);
        int i = lg_eventfds_find(t, value);
        if (i < 0 || t->closed) {
            pthread_mutex_unlock(&t->lock);
            return i >= 0;
        }
        int fd = t->fds[i];
        t->poster = pthread_self();
        t->posting = 1;
        pthread_mutex_unlock(&t->lock);
        lg_eventfd_post(fd, look_first);
        pthread_mutex_lock(&t->lock);
        t->posting = 0;
        pthread_mutex_unlock(&t->lock);
        return 1;
    }

    void lg_eventfds_stop(struct lg_eventfds *t)
    {
        pthread_mutex_lock(&t->lock);
        t->closed = 1;
        pthread_mutex_unlock(&t->lock);
    }

    /* End a post stuck on a launcher's full eventfd: 1 if one was under way (signalled), else 0. */
    int lg_eventfds_unblock(struct lg_eventfds *t)
    {
        int sig = lg_unblock_signal();
        pthread_mutex_lock(&t->lock);
        int posting = t->posting;
        if (posting && sig > 0)
            pthread_kill(t->poster, sig);
        pthread_mutex_unlock(&t->lock);
        return posting;
    }
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
