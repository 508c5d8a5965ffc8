/*
 * The IDT we describe to the host, and where traps go once traps.S has
 * saved the registers.  The host, not the CPU, reads our gates: it pushes
 * the frame and jumps to the handler, so LOAD_IDT_ENTRY is all there is.
 */
#include "tinyguest.h"

extern const uint32_t trap_stubs[64], syscall_stub;

volatile uint32_t irq_count[LGUEST_IRQS];
volatile uint32_t irq_foreign;   /* on lines none of our virtio queues owns */
uint32_t user_exit_code;
static trap_fn trap_handlers[32];
static trap_fn syscall_handler;
static irq_fn irq_handlers[LGUEST_IRQS];

/* A trap stack for entries from ring 3, separate from the kernel stack
 * user_enter() left its state on. */
static uint8_t trap_stack[2 * PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

static void load_gate(unsigned vec, uint32_t handler, unsigned type, unsigned dpl)
{
	uint32_t lo = ((KERNEL_CS & ~3u) << 16) | (handler & 0xFFFF);
	uint32_t hi = (handler & 0xFFFF0000u) | 0x8000u | (dpl << 13) | (type << 8);
	hcall(LHCALL_LOAD_IDT_ENTRY, vec, lo, hi, 0);
}

static void load_seg(unsigned idx, uint32_t type_dpl)
{
	/* Flat 4 GiB, 32-bit, page granular.  The host raises DPL 0 to 1 for
	 * the kernel entries itself; we ask for DPL 1 outright. */
	uint32_t lo = 0x0000FFFFu;
	uint32_t hi = 0x00CF0000u | (type_dpl << 8);
	hcall(LHCALL_LOAD_GDT_ENTRY, idx, lo, hi, 0);
}

void traps_init(void)
{
	load_seg(GDT_ENTRY_KERNEL_CS, 0xBA);  /* present, DPL 1, code r/x */
	load_seg(GDT_ENTRY_KERNEL_DS, 0xB2);  /* present, DPL 1, data r/w */
	load_seg(GDT_ENTRY_USER_CS, 0xFA);    /* present, DPL 3, code r/x */
	load_seg(GDT_ENTRY_USER_DS, 0xF2);    /* present, DPL 3, data r/w */

	/* Exceptions and IRQs through interrupt gates, so the host turns our
	 * virtual IF off on entry; the host ignores 2, 8, 15 and 31 anyway
	 * (31 is its own hypercall vector), so we don't offer them. */
	for (unsigned v = 0; v < 64; v++)
		if (v != 2 && v != 8 && v != 15 && v != 31)
			load_gate(v, trap_stubs[v], GATE_INTERRUPT, 0);
	/* The syscall gate: a trap gate user code may call (DPL 3). */
	load_gate(SYSCALL_VECTOR, syscall_stub, GATE_TRAP, 3);
	set_kernel_stack();
}

void set_kernel_stack(void)
{
	hcall(LHCALL_SET_STACK, KERNEL_DS, (uint32_t)trap_stack + sizeof(trap_stack),
	      sizeof(trap_stack) / PAGE_SIZE, 0);
}

void set_trap_handler(unsigned vec, trap_fn fn)
{
	if (vec == SYSCALL_VECTOR)
		syscall_handler = fn;
	else
		trap_handlers[vec] = fn;
}

void set_irq_handler(unsigned irq, irq_fn fn)
{
	irq_handlers[irq] = fn;
}

/*
 * Returns non-zero only to end the ring-3 program: traps.S then abandons
 * the trap frame and resumes user_enter()'s caller.
 */
int trap_dispatch(struct trapframe *tf)
{
	if (tf->vector >= FIRST_EXTERNAL_VECTOR && tf->vector < FIRST_EXTERNAL_VECTOR + LGUEST_IRQS) {
		unsigned irq = tf->vector - FIRST_EXTERNAL_VECTOR;
		irq_count[irq]++;
		if (!(virtio_irq_lines & (1u << irq)))
			irq_foreign++;
		if (irq_handlers[irq])
			irq_handlers[irq](irq);
		return 0;
	}
	if (tf->vector == SYSCALL_VECTOR && syscall_handler)
		return syscall_handler(tf);
	if (tf->vector < 32 && trap_handlers[tf->vector])
		return trap_handlers[tf->vector](tf);
	trap_fatal(tf);
}

/* A trap nobody expected: say what it was, loudly, and stop. */
int trap_fatal(struct trapframe *tf)
{
	char msg[96];
	snprintf(msg, sizeof(msg), "tinyguest: FAIL unexpected trap %u at %x err %x cr2 %x",
		 tf->vector, tf->eip, tf->err, lguest_data.cr2);
	kputs(msg);
	kputs("\n");
	power_off(msg);
}
