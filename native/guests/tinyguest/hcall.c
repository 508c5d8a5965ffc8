/*
 * Talking to the host: synchronous hypercalls, the asynchronous ring, and
 * our virtual interrupt flag.
 */
#include "tinyguest.h"

extern char lguest_noirq_start[], lguest_noirq_end[];

/*
 * The page we hand the host in LGUEST_INIT.  Its initial values are part of
 * the handshake: every ring slot free, the timer masked until we set it up,
 * where our kernel lives, our syscall vector and the iret window in which
 * we must never be interrupted.
 */
struct lguest_data lguest_data __attribute__((aligned(PAGE_SIZE))) = {
	.blocked_interrupts = 1,
	.hcall_status = { [0 ... LHCALL_RING_SIZE - 1] = HCALL_STATUS_FREE },
	.noirq_start = (uint32_t)lguest_noirq_start,
	.noirq_end = (uint32_t)lguest_noirq_end,
	.kernel_address = PAGE_OFFSET,
	.syscall_vec = SYSCALL_VECTOR,
};

uint32_t hcall(uint32_t call, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4)
{
	/* No 3.x hypercall returns anything; EAX simply comes back. */
	__asm__ __volatile__("int $0x1f"
			     : "+a"(call)
			     : "b"(a1), "c"(a2), "d"(a3), "S"(a4)
			     : "memory");
	return call;
}

/*
 * The async ring lets us queue hypercalls without trapping: the host runs
 * them, in order, the next time we make any synchronous hypercall.  A slot
 * is ours when its status byte is 0xFF; we fill the arguments first and
 * only then hand the slot over by writing status 0.  If the ring is full we
 * simply make the call synchronously, which also drains everything queued
 * before it, so ordering is kept either way.
 */
static unsigned next_slot;

void async_hcall(uint32_t call, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4)
{
	uint32_t flags = irq_save();
	if (lguest_data.hcall_status[next_slot] != HCALL_STATUS_FREE) {
		hcall(call, a1, a2, a3, a4);
	} else {
		struct hcall_args *h = &lguest_data.hcalls[next_slot];
		h->arg0 = call;
		h->arg1 = a1;
		h->arg2 = a2;
		h->arg3 = a3;
		h->arg4 = a4;
		mb();
		lguest_data.hcall_status[next_slot] = 0;
		next_slot = (next_slot + 1) % LHCALL_RING_SIZE;
	}
	irq_restore(flags);
}

/*
 * Like Linux's lazy MMU mode: inside a batch of page-table changes the
 * announcements go into the async ring, and the batch ends with one
 * FLUSH_ASYNC.  Outside a batch each announcement is an ordinary call.
 */
static int lazy;

void lazy_mode_begin(void)
{
	lazy = 1;
}

void lazy_mode_end(void)
{
	lazy = 0;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}

void lazy_hcall(uint32_t call, uint32_t a1, uint32_t a2, uint32_t a3)
{
	if (lazy)
		async_hcall(call, a1, a2, a3, 0);
	else
		hcall(call, a1, a2, a3, 0);
}

/*
 * Our "cli" and "sti".  The host reads irq_enabled before delivering; if we
 * had interrupts off it leaves irq_pending set, and turning them back on
 * is our cue to ask for delivery (SEND_INTERRUPTS), so nothing waits for the
 * next unrelated trap.
 */
uint32_t irq_save(void)
{
	uint32_t flags = lguest_data.irq_enabled;
	lguest_data.irq_enabled = 0;
	barrier();
	return flags;
}

void irq_restore(uint32_t flags)
{
	barrier();
	lguest_data.irq_enabled = flags;
	barrier();
	if ((flags & X86_EFLAGS_IF) && lguest_data.irq_pending)
		hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
}

void irq_enable(void)
{
	irq_restore(X86_EFLAGS_IF);
}

/*
 * HALT means "enable interrupts and wait": call it with interrupts off after
 * checking there is nothing to do, and no interrupt can slip in between the
 * check and the sleep.  The host turns irq_enabled on when it wakes us to
 * deliver; we turn it off again so the caller can re-check in peace.
 */
void halt(void)
{
	hcall(LHCALL_HALT, 0, 0, 0, 0);
	irq_save();
}

static char shutdown_msg[128];

static void __attribute__((noreturn)) shutdown(const char *msg, uint32_t how)
{
	/* The host reads 128 bytes at the address: give it a full buffer. */
	size_t n = strlen(msg);
	if (n > sizeof(shutdown_msg) - 1)
		n = sizeof(shutdown_msg) - 1;
	memcpy(shutdown_msg, msg, n);
	shutdown_msg[n] = 0;
	for (;;)
		hcall(LHCALL_SHUTDOWN, PA(shutdown_msg), how, 0, 0);
}

void power_off(const char *msg)
{
	shutdown(msg, LGUEST_SHUTDOWN_POWEROFF);
}

void restart(const char *msg)
{
	shutdown(msg, LGUEST_SHUTDOWN_RESTART);
}
