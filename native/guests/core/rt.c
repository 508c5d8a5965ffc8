/* The small runtime of the core test guests: lguest_data, console, traps, async ring. */
#include "lguest.h"

struct lguest_data lguest_data = {
    .blocked_interrupts = ~0u,
    .hcall_status = { [0 ... 63] = 0xFF },
    .kernel_address = 0xC0000000,
    .syscall_vec = 0x80,
};

static void default_trap(struct frame *f)
{
    print_hex("unexpected trap", f->vector);
    shutdown("unexpected trap", 1);
}
void (*trap_handler)(struct frame *f) = default_trap;

void init(void)
{
    lguest_data.noirq_start = (u32)noirq_start_sym;
    lguest_data.noirq_end = (u32)noirq_end_sym;
    hcall(LHCALL_LGUEST_INIT, (u32)&lguest_data, 0, 0, 0);
}

void print(const char *s)
{
    hcall(LHCALL_NOTIFY, (u32)s, 0, 0, 0);
}

static char hexbuf[8][64];
static unsigned hexnext;

void print_hex(const char *label, u32 v)
{
    char *b = hexbuf[hexnext++ % 8];
    int i = 0;
    while (*label && i < 40)
        b[i++] = *label++;
    b[i++] = '=';
    b[i++] = '0';
    b[i++] = 'x';
    for (int s = 28; s >= 0; s -= 4)
        b[i++] = "0123456789abcdef"[(v >> s) & 0xF];
    b[i++] = '\n';
    b[i] = 0;
    print(b);
}

void shutdown(const char *msg, u32 how)
{
    hcall(LHCALL_SHUTDOWN, (u32)msg, how, 0, 0);
    for (;;)
        ;
}

void set_gate(u32 vector, void (*handler)(void), u32 dpl, u32 type)
{
    u32 a = (u32)handler;
    u32 lo = (KERNEL_CS << 16) | (a & 0xFFFF);
    u32 hi = (a & 0xFFFF0000) | 0x8000 | (dpl << 13) | (type << 8);
    hcall(LHCALL_LOAD_IDT_ENTRY, vector, lo, hi, 0);
}

void install_traps(void)
{
    for (u32 v = 0; v < 64; v++)
        set_gate(v, (void (*)(void))((u32)trap_stubs_table + 16 * v), 0, GATE_INT);
    set_gate(0x80, (void (*)(void))((u32)trap_stubs_table + 16 * 0x80), 3, GATE_TRAP);
}

void enter_user(void (*entry)(void), u32 user_top, u32 kernel_top)
{
    hcall(LHCALL_LOAD_GDT_ENTRY, 14, 0x0000FFFF, 0x00CFFA00, 0);
    hcall(LHCALL_LOAD_GDT_ENTRY, 15, 0x0000FFFF, 0x00CFF200, 0);
    hcall(LHCALL_SET_STACK, KERNEL_DS, kernel_top, 2, 0);
    asm volatile("pushl %0\n pushl %1\n pushl $0x202\n pushl %2\n pushl %3\n iret"
                 :: "i"(USER_DS), "r"(user_top), "i"(USER_CS), "r"(entry));
    for (;;)
        ;
}

void enable_irqs(void)
{
    lguest_data.irq_enabled = 0x200;
    asm volatile("" ::: "memory");
    if (lguest_data.irq_pending)
        hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
}

void disable_irqs(void)
{
    lguest_data.irq_enabled = 0;
    asm volatile("" ::: "memory");
}

static unsigned next_call;

void async_hcall(u32 nr, u32 a1, u32 a2, u32 a3, u32 a4)
{
    u32 flags = lguest_data.irq_enabled;
    disable_irqs();
    if (lguest_data.hcall_status[next_call] != 0xFF) {
        hcall(nr, a1, a2, a3, a4);      /* ring full: do it now */
    } else {
        struct hcall_args *a = &lguest_data.hcalls[next_call];
        a->arg0 = nr; a->arg1 = a1; a->arg2 = a2; a->arg3 = a3; a->arg4 = a4;
        asm volatile("" ::: "memory");
        lguest_data.hcall_status[next_call] = 0;
        next_call = (next_call + 1) % 64;
    }
    lguest_data.irq_enabled = flags;
}

const char *cmdline(void)
{
    return (const char *)0x1000;
}

int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}
