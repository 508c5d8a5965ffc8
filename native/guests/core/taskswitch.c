/* A Linux-shaped task switch, which the host may finish natively, and the kernel page faults
 * around it.  A ring-3 program asks for a switch with a system call; the kernel answers the way
 * Linux 3.18 does: LOAD_TLS, SET_STACK and NEW_PGTABLE (plus a SET_PTE) queued on the async ring
 * and one FLUSH_ASYNC, or every third round each as a synchronous call.  Then it touches a kernel
 * page that is not present (a ring-1 #PF its handler fixes up), writes to a read-only page (a
 * ring-1 #PF it skips), and reads through a TLS descriptor loaded with DPL 0 (so it works only
 * if the host raised the DPL to 1).  What each task sees is its own: the user program reads its
 * TLS segment and its own page at WINDOW, and the next trap lands on the new kernel stack.
 * Command lines end it with a bad call among good ones: "badtls", "badstack", "stackpages",
 * "badstackpage", "badpgd", "pgdout" (queued), "badtls-sync" (after a queued batch), and
 * "kpfstack" (a kernel page fault on a stack that does not translate).
 * tests/host/test_core_native_exits.py runs it with native exits on and off and compares. */
#include "lguest.h"

typedef unsigned long long u64;

static u32 pd[2][1024] __attribute__((aligned(4096)));
static u32 bad_pd[1024] __attribute__((aligned(4096)));
static u32 pt[1024] __attribute__((aligned(4096)));
static u32 upt[2][1024] __attribute__((aligned(4096)));
static u32 window_page[2][1024] __attribute__((aligned(4096)));
static u8 kdemand[2][4096] __attribute__((aligned(4096)));
static u8 kstack[2][8192] __attribute__((aligned(4096)));
static u8 ustack[4096] __attribute__((aligned(4096)));
static u32 tls_data[2][2];
static u64 tls[2][3];

#define WINDOW     0x400000     /* pd[t][1] -> upt[t] -> window_page[t] */
#define KDEMAND    0x3F0000     /* a kernel page, not present until the handler maps it */
#define KREADONLY  0x3F1000     /* a kernel page the kernel may only read */
#define QUIET_PDE  0xC00000     /* given a page table behind the host's back (no SET_PGD) */
#define NO_PDE     0x40000000
#define TLS_USER   ((6 << 3) | 3)   /* DPL 3 data: the program's */
#define TLS_KERNEL ((7 << 3) | 1)   /* loaded with DPL 0: usable at ring 1 only after the fix-up */
#define ROUNDS 12
#define BAD_ROUND 7

static u32 cur, round, kernel_reads;

/* A flat-limit, byte-granular 32-bit data descriptor at `base` with privilege `dpl`. */
static u64 data_descriptor(u32 base, u32 dpl)
{
    u32 lo = (base << 16) | 0xFFFF;
    u32 hi = (base & 0xFF000000) | 0x00400000 | 0x8000 | (dpl << 13) | 0x1200 | ((base >> 16) & 0xFF);
    return ((u64)hi << 32) | lo;
}

#define PROBE_AT(insn, len, addr) \
    asm volatile("movl $" #len ", %%edi\n" insn :: "a"(addr) : "ecx", "edi", "memory")

static int kill_is(const char *what)
{
    return round == BAD_ROUND && streq(cmdline(), what);
}

static void switch_to(u32 next)
{
    u32 *p = pd[next];
    u32 top = (u32)kstack[next] + sizeof(kstack[next]);
    cur = next;
    pt[KDEMAND >> 12] = 0;
    if (round % 3 == 2) {
        hcall(LHCALL_LOAD_TLS, (u32)tls[next], 0, 0, 0);
        hcall(LHCALL_SET_STACK, KERNEL_DS, top, 2, 0);
        hcall(LHCALL_SET_PTE, (u32)p, KDEMAND, 0, 0);
        kernel_reads += *(volatile u32 *)WINDOW;        /* the old task's page, in the TLB now */
        hcall(LHCALL_NEW_PGTABLE, (u32)p, 0, 0, 0);     /* which must forget it */
        return;
    }
    async_hcall(LHCALL_SET_PTE, (u32)p, KDEMAND, 0, 0);
    async_hcall(LHCALL_LOAD_TLS, (u32)tls[next], 0, 0, 0);
    if (kill_is("badtls"))
        async_hcall(LHCALL_LOAD_TLS, 0xFFFFFFF0u, 0, 0, 0);
    async_hcall(LHCALL_SET_STACK, kill_is("badstack") ? 0x68 : KERNEL_DS, top, kill_is("stackpages") ? 3 : 2, 0);
    if (kill_is("badstackpage"))
        async_hcall(LHCALL_SET_STACK, KERNEL_DS, NO_PDE + 8192, 2, 0);
    async_hcall(LHCALL_NEW_PGTABLE, kill_is("badpgd") ? (u32)bad_pd : kill_is("pgdout") ? 0xF0000000u : (u32)p,
                0, 0, 0);
    async_hcall(LHCALL_TS, round & 1, 0, 0, 0);
    if (kill_is("badtls-sync"))
        hcall(LHCALL_LOAD_TLS, 0xFFFFFFF0u, 0, 0, 0);
    hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}

/* What the kernel does after a switch: ring-1 page faults, and the TLS entry only the fix-up
 * makes usable at ring 1. */
static void kernel_work(void)
{
    u32 seen;
    asm volatile("movl %1, %%ecx\n movl (%%ecx), %0" : "=r"(seen) : "i"(KDEMAND) : "ecx", "memory");
    kernel_reads = kernel_reads * 7 + seen + *(volatile u32 *)WINDOW;
    PROBE_AT("movl %%ecx, (%0)", 2, KREADONLY + 4 * round);
    asm volatile("movw %w1, %%gs\n movl %%gs:0, %0" : "=r"(seen) : "r"(TLS_KERNEL) : "memory");
    kernel_reads = kernel_reads * 7 + seen;
    if (round == 4) {
        pd[cur][QUIET_PDE >> 22] = (u32)upt[cur] | PTE_P | PTE_W;
        kernel_reads += *(volatile u32 *)QUIET_PDE;      /* the host re-copies the slot: no frame */
    }
    if (round == BAD_ROUND && streq(cmdline(), "kpfstack"))
        asm volatile("movl %0, %%esp\n movl (%1), %%eax" :: "i"(NO_PDE + 64), "r"(NO_PDE) : "eax", "memory");
}

static void handler(struct frame *f)
{
    if (f->vector == 0x80) {
        if (f->eax == 1) {
            print_hex("tls", f->ebx);
            print_hex("window", f->ecx);
        } else if (f->eax == 2) {
            print_hex("kernel reads", kernel_reads);
            shutdown("task switches done", 1);
        } else if (f->eax == 3) {
            switch_to(cur ^ 1);
            kernel_work();
            round++;
        }
        return;
    }
    if (f->vector == 14 && !(f->cs & 2)) {             /* ring 1 */
        if ((lguest_data.cr2 & ~0xFFFu) == KDEMAND && !(f->err & 1)) {
            u32 pte = (u32)kdemand[cur] | PTE_P | PTE_W;
            pt[KDEMAND >> 12] = pte;
            hcall(LHCALL_SET_PTE, (u32)pd[cur], KDEMAND, pte, 0);
            return;                                     /* retried, and now it works */
        }
        f->eip += f->edi;                               /* the probe says how long it is */
        return;
    }
    if (f->vector == 7) {
        hcall(LHCALL_TS, 0, 0, 0, 0);
        return;
    }
    print_hex("unexpected trap", f->vector);
    shutdown("unexpected trap", 1);
}

static void syscall3(u32 nr, u32 a, u32 b)
{
    asm volatile("int $0x80" : "+a"(nr) : "b"(a), "c"(b) : "memory");
}

static void user_main(void)
{
    for (u32 i = 0; i < ROUNDS; i++) {
        u32 from_tls;
        asm volatile("movw %w1, %%gs\n movl %%gs:0, %0" : "=r"(from_tls) : "r"(TLS_USER) : "memory");
        syscall3(1, from_tls, *(volatile u32 *)WINDOW);
        asm volatile("fldz\n fstp %%st(0)" ::: "memory");   /* #NM on the rounds that set TS */
        syscall3(3, 0, 0);
    }
    syscall3(2, 0, 0);
    for (;;)
        ;
}

int main(void)
{
    init();
    trap_handler = handler;
    install_traps();
    for (u32 i = 0; i < 1024; i++)
        pt[i] = (i << 12) | PTE_P | PTE_W | PTE_U;
    pt[KDEMAND >> 12] = 0;
    pt[KREADONLY >> 12] = KREADONLY | PTE_P;
    for (u32 t = 0; t < 2; t++) {
        window_page[t][0] = 0x1000 + t;
        tls_data[t][0] = 0x7150 + t;
        tls_data[t][1] = 0x7250 + t;
        ((u32 *)kdemand[t])[0] = 0xD0 + t;
        tls[t][0] = data_descriptor((u32)&tls_data[t][0], 3);
        tls[t][1] = data_descriptor((u32)&tls_data[t][1], 0);
        tls[t][2] = 0;
        upt[t][0] = (u32)window_page[t] | PTE_P | PTE_W | PTE_U;
        pd[t][0] = (u32)pt | PTE_P | PTE_W | PTE_U;
        pd[t][1] = (u32)upt[t] | PTE_P | PTE_W | PTE_U;
    }
    for (u32 i = 0; i < 1024; i++)
        bad_pd[i] = pd[0][i];
    bad_pd[5] = (u32)upt[0] | PTE_P | 0x100;           /* GLOBAL: not allowed in a PDE */
    hcall(LHCALL_LOAD_TLS, (u32)tls[0], 0, 0, 0);
    hcall(LHCALL_NEW_PGTABLE, (u32)pd[0], 0, 0, 0);     /* the first: paging on */
    enter_user(user_main, (u32)ustack + sizeof(ustack), (u32)kstack[0] + sizeof(kstack[0]));
}
