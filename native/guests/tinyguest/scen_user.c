/*
 * usermode: page faults from ring 1, then a ring-3 program in its own page
 * directory doing syscalls, a forbidden hypercall, a demand-paged read and
 * a fatal write.  Every fault's CR2 (from lguest_data.cr2) and error code
 * is checked against what the CPU must report.
 */
#include "tinyguest.h"
#include "ring3.h"

extern char __user_start[], __user_data[], __user_end[], __user_phys[];

#define PF_P 1u   /* error code bits: protection (not "not present") */
#define PF_W 2u   /* write */
#define PF_U 4u   /* from ring 3 */

struct fault { uint32_t cr2, err; };

/* Written here, read by the fault handler the access below triggers. */
static volatile uint32_t kfault_va, kfault_fix;
static struct fault kpf, kro, upf, uro;
static uint32_t gp_err, syscalls;

static int on_page_fault(struct trapframe *tf)
{
	uint32_t cr2 = lguest_data.cr2, page = cr2 & ~0xFFFu;
	if ((tf->cs & 3) == 3) {
		if (page == USER_DEMAND_PAGE && !(tf->err & PF_P)) {
			upf = (struct fault){ cr2, tf->err };
			set_pte(cur_pgdir, page, PA(alloc_page()) | PTE_PRESENT | PTE_RW | PTE_USER);
			return 0;
		}
		uro = (struct fault){ cr2, tf->err };
		user_exit_code = USER_KILLED;
		return 1;
	}
	if (!kfault_va || page != kfault_va)
		trap_fatal(tf);
	*(tf->err & PF_P ? &kro : &kpf) = (struct fault){ cr2, tf->err };
	set_pte(cur_pgdir, kfault_va, kfault_fix);
	kfault_va = 0;
	return 0;
}

/* int $0x1f from ring 3 comes back to us as #GP with error code 0xFA
 * (vector 31 * 8 + 2: "IDT entry 31 refused you"); skip the 2-byte int. */
static int on_gp(struct trapframe *tf)
{
	if ((tf->cs & 3) != 3 || tf->err != 0xFA)
		trap_fatal(tf);
	gp_err = tf->err;
	tf->eip += 2;
	return 0;
}

static int on_syscall(struct trapframe *tf)
{
	char buf[64];
	syscalls++;
	switch (tf->eax) {
	case SYS_WRITE: {
		uint32_t n = tf->ecx < sizeof(buf) - 1 ? tf->ecx : sizeof(buf) - 1;
		memcpy(buf, (const void *)tf->ebx, n);
		buf[n] = 0;
		kprintf("tinyguest: user says: %s\n", buf);
		tf->eax = n;
		return 0;
	}
	case SYS_ADD:
		tf->eax = tf->ebx + tf->ecx;
		return 0;
	case SYS_EXIT:
		user_exit_code = tf->ebx;
		return 1;
	}
	tf->eax = (uint32_t)-1;
	return 0;
}

/* Touch a kernel page we left unmapped (read) and one we mapped read-only
 * (write); the fault handler maps them properly and the access is retried. */
static int kernel_faults(void)
{
	uint32_t va = scratch_va();
	uint32_t *p = alloc_page(), *q = alloc_page();
	p[0] = 0x600DF00D;

	kfault_va = va;
	kfault_fix = PA(p) | PTE_PRESENT | PTE_RW;
	if (*(volatile uint32_t *)va != 0x600DF00D)
		return 0;

	set_pte(cur_pgdir, va + PAGE_SIZE, PA(q) | PTE_PRESENT);
	kfault_va = va + PAGE_SIZE;
	kfault_fix = PA(q) | PTE_PRESENT | PTE_RW;
	*(volatile uint32_t *)(va + PAGE_SIZE) = 0xFEEDBEEF;
	return q[0] == 0xFEEDBEEF && kfault_va == 0;
}

/* A process-like page directory: the kernel's entries plus ours below. */
static uint32_t *make_user_pgdir(void)
{
	uint32_t *pgdir = alloc_page();
	for (unsigned i = PAGE_OFFSET >> 22; i < 1024; i++)
		pgdir[i] = boot_pgdir[i];
	lazy_mode_begin();
	uint32_t pa = (uint32_t)__user_phys;
	for (uint32_t va = (uint32_t)__user_start; va < (uint32_t)__user_end; va += PAGE_SIZE, pa += PAGE_SIZE)
		set_pte(pgdir, va, pa | PTE_PRESENT | PTE_USER
				   | (va >= (uint32_t)__user_data ? PTE_RW : 0));
	set_pte(pgdir, USER_STACK_TOP - PAGE_SIZE,
		PA(alloc_page()) | PTE_PRESENT | PTE_RW | PTE_USER);
	lazy_mode_end();
	return pgdir;
}

void scen_usermode(void)
{
	set_trap_handler(14, on_page_fault);
	set_trap_handler(13, on_gp);
	set_trap_handler(SYSCALL_VECTOR, on_syscall);

	int kok = kernel_faults();

	switch_pgdir(make_user_pgdir());
	int code = user_enter((uint32_t)ring3_main, USER_STACK_TOP);
	switch_pgdir(boot_pgdir);

	int ok = kok && kpf.cr2 == scratch_va() && kpf.err == 0
		 && kro.cr2 == scratch_va() + PAGE_SIZE && kro.err == (PF_P | PF_W)
		 && upf.cr2 == USER_DEMAND_PAGE && upf.err == PF_U
		 && uro.cr2 == (uint32_t)ring3_main && uro.err == (PF_P | PF_W | PF_U)
		 && gp_err == 0xFA && code == USER_KILLED && syscalls == 3;
	kprintf("tinyguest: usermode %s syscalls=%u exit=%x gp=%x kpf=%x/%x kro=%x/%x upf=%x/%x uro=%x/%x\n",
		ok ? "PASS" : "FAIL", syscalls, code, gp_err, kpf.cr2, kpf.err, kro.cr2, kro.err,
		upf.cr2, upf.err, uro.cr2, uro.err);
}
