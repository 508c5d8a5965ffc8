/* The guest side of the lguest ABI, just enough for the core's test guests. */
#ifndef LGUEST_TEST_H
#define LGUEST_TEST_H

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

enum {
    LHCALL_FLUSH_ASYNC = 0, LHCALL_LGUEST_INIT = 1, LHCALL_SHUTDOWN = 2, LHCALL_NEW_PGTABLE = 4,
    LHCALL_FLUSH_TLB = 5, LHCALL_LOAD_IDT_ENTRY = 6, LHCALL_SET_STACK = 7, LHCALL_TS = 8,
    LHCALL_SET_CLOCKEVENT = 9, LHCALL_HALT = 10, LHCALL_SET_PMD = 13, LHCALL_SET_PTE = 14,
    LHCALL_SET_PGD = 15, LHCALL_LOAD_TLS = 16, LHCALL_NOTIFY = 17, LHCALL_LOAD_GDT_ENTRY = 18,
    LHCALL_SEND_INTERRUPTS = 19,
};

struct hcall_args { u32 arg0, arg1, arg2, arg3, arg4; };

struct lguest_data {
    u32 irq_enabled;
    u32 blocked_interrupts;
    u32 cr2;
    u32 time_sec, time_nsec;
    u32 irq_pending;
    u8 hcall_status[64];
    struct hcall_args hcalls[64];
    u32 reserve_mem;
    u32 tsc_khz;
    u32 noirq_start, noirq_end;
    u32 kernel_address;
    u32 syscall_vec;
};

extern struct lguest_data lguest_data;

static inline u32 hcall(u32 nr, u32 a1, u32 a2, u32 a3, u32 a4)
{
    asm volatile("int $0x1f" : "+a"(nr) : "b"(a1), "c"(a2), "d"(a3), "S"(a4) : "memory");
    return nr;
}

/* Queue a call on the async ring; synchronous if the ring is full (as Linux does). */
void async_hcall(u32 nr, u32 a1, u32 a2, u32 a3, u32 a4);

void init(void);                          /* LGUEST_INIT with our lguest_data */
void print(const char *s);                /* early console: NOTIFY(gpa of string) */
void print_hex(const char *label, u32 v); /* "label=0x...\n" */
void shutdown(const char *msg, u32 how) __attribute__((noreturn));
void set_gate(u32 vector, void (*handler)(void), u32 dpl, u32 type);
void install_traps(void);                 /* gates for 0..31 (except 2, 8, 15), 32..63 IRQs, 0x80 */
/* To ring 3 at `entry` on the stack ending at user_top: flat user segments (DPL 3), the two pages
 * ending at kernel_top as the kernel stack for the way back, then iret. */
void enter_user(void (*entry)(void), u32 user_top, u32 kernel_top) __attribute__((noreturn));
void enable_irqs(void);
void disable_irqs(void);
const char *cmdline(void);                /* the launcher's command line at gpa 0x1000 */
int streq(const char *a, const char *b);

/* What the C-level trap handler sees; pushed by entry.S. */
struct frame {
    u32 edi, esi, ebp, esp0, ebx, edx, ecx, eax;
    u32 vector, err;
    u32 eip, cs, eflags, user_esp, user_ss;   /* user_* only when coming from ring 3 */
};
extern void (*trap_handler)(struct frame *f);
extern void trap_stubs_table(void);
extern u32 trap_stub_addr[256];
extern u32 noirq_start_sym[], noirq_end_sym[];

#define GATE_INT 0xE
#define GATE_TRAP 0xF
#define KERNEL_CS 0x61
#define KERNEL_DS 0x69
#define USER_CS 0x73
#define USER_DS 0x7B

#define PTE_P 1u
#define PTE_W 2u
#define PTE_U 4u
#define PTE_A 0x20u

#endif
