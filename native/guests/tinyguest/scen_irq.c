/*
 * Interrupt scenarios: the timer (SET_CLOCKEVENT is one-shot, so the tick
 * handler re-arms it), spin (interrupts arriving while we never trap) and
 * halt (interrupts waking us from HALT).
 */
#include "tinyguest.h"

static volatile uint32_t ticks, period_ns;
static volatile uint32_t first_sec, first_nsec, last_sec, last_nsec;

static void tick(unsigned irq)
{
	(void)irq;
	/* The host wrote lguest_data.time just before delivering this. */
	if (!ticks) {
		first_sec = lguest_data.time_sec;
		first_nsec = lguest_data.time_nsec;
	}
	last_sec = lguest_data.time_sec;
	last_nsec = lguest_data.time_nsec;
	ticks++;
	if (period_ns)
		hcall(LHCALL_SET_CLOCKEVENT, period_ns, 0, 0, 0);
}

/* Run the timer at `hz` for `ms` milliseconds' worth of ticks, idling in
 * HALT between them; returns the microseconds from first to last tick. */
static uint32_t run_timer(uint32_t hz, uint32_t want)
{
	ticks = 0;
	period_ns = 1000000000u / hz;
	hcall(LHCALL_SET_CLOCKEVENT, period_ns, 0, 0, 0);
	uint32_t flags = irq_save();
	while (ticks < want)
		halt();
	period_ns = 0;
	irq_restore(flags);
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0, 0);
	return (last_sec - first_sec) * 1000000u + last_nsec / 1000 - first_nsec / 1000;
}

/*
 * A one-shot timer re-armed from its own interrupt can only run slow, never
 * fast: n ticks take at least (n - 1) periods.  PASS needs that, and no more
 * than `slack` times as long (emulation is slow; default 5).
 */
void scen_timer(void)
{
	static const uint32_t rates[] = { 100, 1000 };
	uint32_t ms = arg_uint("ms", 500), slack = arg_uint("slack", 5);
	char res[2][96];
	int ok = 1;

	set_irq_handler(0, tick);
	lguest_data.blocked_interrupts &= ~1u;     /* unmask the timer */
	for (int r = 0; r < 2; r++) {
		uint32_t hz = rates[r], want = hz * ms / 1000;
		if (want < 2)
			want = 2;
		uint32_t us = run_timer(hz, want);
		uint32_t min_us = (want - 1) * (1000000u / hz);
		/* lguest_data.time is a wall clock: allow 10% below for jitter */
		int good = us >= min_us - min_us / 10 && us <= min_us * slack;
		ok &= good;
		snprintf(res[r], sizeof(res[r]), "hz=%u ticks=%u us=%u rate=%u", hz, want, us,
			 us ? (uint32_t)((uint64_t)(want - 1) * 1000000u / us) : 0);
		kprintf("tinyguest: timer %s %s\n", res[r], good ? "ok" : "out of range");
	}
	lguest_data.blocked_interrupts |= 1u;
	kprintf("tinyguest: timer %s %s; %s\n", ok ? "PASS" : "FAIL", res[0], res[1]);
}

/* Which lines the injected (non-virtio) interrupts came on. */
static uint32_t foreign_lines(void)
{
	uint32_t lines = 0;
	for (unsigned i = 0; i < LGUEST_IRQS; i++)
		if (!(virtio_irq_lines & (1u << i)) && irq_count[i])
			lines |= 1u << i;
	return lines;
}

/* Optional `hz=`: let the timer be the interrupt source. */
static void maybe_timer(void)
{
	uint32_t hz = arg_uint("hz", 0);
	if (!hz)
		return;
	set_irq_handler(0, tick);
	period_ns = 1000000000u / hz;
	lguest_data.blocked_interrupts &= ~1u;
	hcall(LHCALL_SET_CLOCKEVENT, period_ns, 0, 0, 0);
}

/*
 * Interrupts on, no traps: a host can only get an interrupt in by
 * stopping the CPU from outside.  We spin until `irqs=` (default 1) have
 * arrived or `loops=` (default 200000000) iterations have passed.
 */
void scen_spin(void)
{
	uint32_t want = arg_uint("irqs", 1), loops = arg_uint("loops", 100000000u);
	kputs("tinyguest: spin ready\n");
	for (unsigned i = 0; i < LGUEST_IRQS; i++)
		irq_count[i] = 0;
	uint32_t base = irq_foreign;
	maybe_timer();
	irq_enable();
	uint32_t i, first_at = 0, got = 0;
	for (i = 0; i < loops; i++) {
		uint32_t n = irq_foreign - base;
		if (n && !got)
			first_at = i;
		got = n;
		if (got >= want)
			break;
	}
	period_ns = 0;
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0, 0);
	kprintf("tinyguest: spin %s irqs=%u loops=%u first_at=%u lines=%x\n",
		got >= want ? "PASS" : "FAIL", got, i, first_at, foreign_lines());
}

/*
 * Idle in HALT and report each interrupt that wakes us (not counting our
 * own virtio queues), until `irqs=` (default 3) have come.
 */
void scen_halt(void)
{
	uint32_t want = arg_uint("irqs", 3);
	uint32_t base = irq_foreign, seen = 0;
	kputs("tinyguest: halt ready\n");
	maybe_timer();
	while (seen < want) {
		uint32_t snapshot[LGUEST_IRQS];
		for (unsigned i = 0; i < LGUEST_IRQS; i++)
			snapshot[i] = irq_count[i];
		uint32_t flags = irq_save();
		while (irq_foreign - base == seen)
			halt();
		irq_restore(flags);
		for (unsigned i = 0; i < LGUEST_IRQS; i++)
			if (!(virtio_irq_lines & (1u << i)) && irq_count[i] != snapshot[i]) {
				seen += irq_count[i] - snapshot[i];
				kprintf("tinyguest: halt irq line=%u total=%u\n", i, seen);
			}
	}
	period_ns = 0;
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0, 0);
	kprintf("tinyguest: halt PASS irqs=%u\n", seen);
}

/* Wait, interrupts on, until the timer has ticked once, `ns` from now. */
static void one_tick(uint32_t ns)
{
	ticks = 0;
	hcall(LHCALL_SET_CLOCKEVENT, ns, 0, 0, 0);
	uint32_t flags = irq_save();
	while (!ticks)
		halt();
	irq_restore(flags);
}

/*
 * A Guest hammering its clock: `n=` (default 300000) re-arms in a row, each
 * replacing the one before, 4 s out.  Only the last deadline is live, so a
 * host must hold one timer for us, not n; the host watches its own memory
 * between "ready" and "done" (a second's pause after each).  The last one
 * must still fire.
 */
void scen_rearm(void)
{
	uint32_t n = arg_uint("n", 300000);
	set_irq_handler(0, tick);
	lguest_data.blocked_interrupts &= ~1u;
	kputs("tinyguest: rearm ready\n");
	one_tick(1000000000u);
	for (uint32_t i = 0; i < n; i++)
		hcall(LHCALL_SET_CLOCKEVENT, 4000000000u, 0, 0, 0);
	ticks = 0;
	kprintf("tinyguest: rearm done n=%u\n", n);
	uint32_t flags = irq_save();
	while (!ticks)
		halt();
	irq_restore(flags);
	lguest_data.blocked_interrupts |= 1u;
	kprintf("tinyguest: rearm PASS n=%u\n", n);
}
