/*
 * The ring-3 test program.  It is linked at a user address (0x08048000) and
 * can call nothing but itself and the kernel, through int $0x80:
 * EAX = number, EBX/ECX = arguments, EAX = result.  The kernel maps its
 * code page read-only and its data pages writable.
 */
#include "ring3.h"

static int sys(int nr, int a, int b)
{
	__asm__ __volatile__("int $0x80" : "+a"(nr) : "b"(a), "c"(b) : "memory");
	return nr;
}

static int say(const char *s)
{
	int n = 0;
	while (s[n])
		n++;
	return sys(SYS_WRITE, (int)s, n);
}

void __attribute__((noreturn)) ring3_main(void)
{
	if (say("hello from ring 3") != 17)
		sys(SYS_EXIT, USER_FAIL_WRITE, 0);
	if (sys(SYS_ADD, 40, 2) != 42)
		sys(SYS_EXIT, USER_FAIL_ADD, 0);

	/* A hypercall from ring 3 must not reach the host's hypercall path:
	 * its gate allows ring 1 only, so we take a #GP, which the kernel
	 * reports and skips. */
	__asm__ __volatile__("int $0x1f" ::"a"(LHCALL_FROM_USER) : "memory");

	/* Demand paging: the first touch faults (user read, not present), the
	 * kernel maps a zeroed page and the read is retried. */
	volatile int *fresh = (volatile int *)USER_DEMAND_PAGE;
	if (*fresh != 0)
		sys(SYS_EXIT, USER_FAIL_DEMAND, 0);
	*fresh = 0x1234;
	if (*fresh != 0x1234)
		sys(SYS_EXIT, USER_FAIL_DEMAND, 0);
	say("demand paging ok");

	/* Writing our own (read-only) code is fatal: the kernel ends us. */
	*(volatile int *)(void *)ring3_main = 0;
	sys(SYS_EXIT, USER_FAIL_RO, 0);
	for (;;)
		;
}
