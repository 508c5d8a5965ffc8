/* The benchmark guest: one operation per run, chosen by the host through `bench`.
 *
 * The host writes bench.mode and bench.n, then runs the Guest (read()); the
 * Guest does the operation and NOTIFYs `ready`, which ends the read.  So a
 * read's duration is the operation plus one exit, and one boot serves every
 * repeat.  Timestamps come from rdtsc: Unicorn answers it with the host's
 * TSC, so a Guest stamp and a host stamp are on the same clock.
 *
 * bench_compute() and bench_hcalls() touch nothing but their arguments,
 * their stack and their own statics: the figures also run them, byte for
 * byte, on a bare Unicorn (the baselines).
 */
#include "lguest.h"

enum { MODE_STOP, MODE_COMPUTE, MODE_HCALLS, MODE_PTE_SYNC, MODE_PTE_RING,
       MODE_NOTIFY, MODE_IRQ_SPIN, MODE_IRQ_HALT };

struct bench {
    u32 mode, n;
    u32 irq;                     /* the line MODE_IRQ_* counts */
    u32 notify;                  /* the NOTIFY value MODE_NOTIFY sends (an eventfd claims it) */
    volatile u32 seq, ack;       /* MODE_NOTIFY: our round number, and the peer's acknowledgement */
    volatile u32 handled;        /* MODE_IRQ_*: interrupts taken so far */
    volatile u32 stamp_lo, stamp_hi;   /* rdtsc at the last NOTIFY or at handler entry */
    u32 result;
} bench;

static const char ready[] = "bench ready";

static inline void stamp(void)
{
    u32 lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    bench.stamp_hi = hi;
    bench.stamp_lo = lo;
}

static u32 crc_table[256];
static u8 data[4096];

/* Table-driven CRC-32 over a buffer it also rewrites: loads, stores, a table
 * lookup and a branch per byte, small blocks, like ordinary kernel code. */
u32 bench_compute(u32 n)
{
    for (u32 i = 0; i < 256; i++) {
        u32 c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    u32 crc = ~0u;
    for (u32 i = 0; i < n; i++) {
        u8 b = data[i & 4095];
        crc = crc_table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        data[i & 4095] = b + (u8)crc;
    }
    return ~crc;
}

/* The cheapest hypercall there is, n times: SEND_INTERRUPTS does nothing but exit. */
void bench_hcalls(u32 n)
{
    for (u32 i = 0; i < n; i++)
        hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
}

static void set_ptes(u32 n, int async)
{
    for (u32 i = 0; i < n; i++) {
        u32 page = i & 1023;
        u32 va = 0xC0000000u + (page << 12), pte = (page << 12) | PTE_P | PTE_W | PTE_A;
        if (!async) {
            hcall(LHCALL_SET_PTE, 0, va, pte, 0);
            continue;
        }
        async_hcall(LHCALL_SET_PTE, 0, va, pte, 0);
        if (i % 64 == 63)                /* a full batch: the ring holds exactly 64 */
            hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
    }
    hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}

static void notifies(u32 n)
{
    for (u32 i = 1; i <= n; i++) {
        stamp();
        bench.seq = i;
        hcall(LHCALL_NOTIFY, bench.notify, 0, 0, 0);
        while (bench.ack != i)
            ;
    }
}

static void irq_handler(struct frame *f)
{
    if (f->vector != 32 + bench.irq)
        shutdown("bench: unexpected trap", 1);
    stamp();
    bench.handled++;
}

static void irqs(u32 n, int halt)
{
    bench.handled = 0;
    lguest_data.blocked_interrupts = ~(1u << bench.irq);
    if (!halt) {
        enable_irqs();
        while (bench.handled < n)
            ;
    } else {
        while (bench.handled < n) {
            lguest_data.irq_enabled = 0x200;
            hcall(LHCALL_HALT, 0, 0, 0, 0);
        }
    }
    disable_irqs();
    lguest_data.blocked_interrupts = ~0u;
}

int main(void)
{
    init();
    install_traps();
    trap_handler = irq_handler;
    for (;;) {
        hcall(LHCALL_NOTIFY, (u32)ready, 0, 0, 0);
        switch (bench.mode) {
        case MODE_COMPUTE: bench.result = bench_compute(bench.n); break;
        case MODE_HCALLS: bench_hcalls(bench.n); break;
        case MODE_PTE_SYNC: set_ptes(bench.n, 0); break;
        case MODE_PTE_RING: set_ptes(bench.n, 1); break;
        case MODE_NOTIFY: notifies(bench.n); break;
        case MODE_IRQ_SPIN: irqs(bench.n, 0); break;
        case MODE_IRQ_HALT: irqs(bench.n, 1); break;
        default: shutdown("bench done", 1);
        }
    }
}
