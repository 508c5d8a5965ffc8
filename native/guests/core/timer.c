/* The clock event at a chosen rate, HALT idling, and IRQs injected while spinning or halted. */
#include "lguest.h"

static volatile u32 ticks, irq_seen;
static u32 period_ns;

static void handler(struct frame *f)
{
    if (f->vector == 32) {
        ticks++;
        hcall(LHCALL_SET_CLOCKEVENT, period_ns, 0, 0, 0);
    } else if (f->vector >= 33 && f->vector < 64) {
        irq_seen |= 1u << (f->vector - 32);
    } else {
        print_hex("unexpected trap", f->vector);
    }
}

static u32 number_after(const char *s, const char *key)
{
    u32 v = 0;
    for (; *s; s++) {
        const char *k = key, *p = s;
        while (*k && *p == *k)
            k++, p++;
        if (!*k) {
            while (*p >= '0' && *p <= '9')
                v = v * 10 + (u32)(*p++ - '0');
            return v;
        }
    }
    return 0;
}

int main(void)
{
    const char *c = cmdline();

    init();
    trap_handler = handler;
    install_traps();
    lguest_data.blocked_interrupts = 0;
    enable_irqs();
    if (number_after(c, "hz=")) {
        u32 want = number_after(c, "ticks=");
        period_ns = 1000000000u / number_after(c, "hz=");
        hcall(LHCALL_SET_CLOCKEVENT, period_ns, 0, 0, 0);
        while (ticks < want)
            hcall(LHCALL_HALT, 0, 0, 0, 0);
        print_hex("ticks", ticks);
        hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0, 0);
    }
    if (number_after(c, "spin-for-irq=")) {
        u32 irq = number_after(c, "spin-for-irq=");
        print("spinning\n");
        while (!(irq_seen & (1u << irq)))
            ;
        print_hex("irq while spinning", irq);
    }
    if (number_after(c, "halt-for-irq=")) {
        u32 irq = number_after(c, "halt-for-irq=");
        print("halting\n");
        while (!(irq_seen & (1u << irq)))
            hcall(LHCALL_HALT, 0, 0, 0, 0);
        print_hex("irq while halted", irq);
    }
    if (number_after(c, "die-with-timer=")) {
        hcall(LHCALL_SET_CLOCKEVENT, 1000000000u, 0, 0, 0);
        hcall(99, 0, 0, 0, 0);
    }
    shutdown("timer test done", 1);
}
