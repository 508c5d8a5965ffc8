/* The contract between the ring-3 program and the kernel that runs it. */
#ifndef TINYGUEST_RING3_H
#define TINYGUEST_RING3_H

#define SYS_WRITE 1     /* (str, len) -> len */
#define SYS_ADD 2       /* (a, b) -> a + b */
#define SYS_EXIT 3      /* (code) */

#define USER_DEMAND_PAGE 0x08300000u
#define USER_STACK_TOP 0x0C000000u
#define LHCALL_FROM_USER 17     /* a NOTIFY, which must never reach the host */

/* Exit codes: the program ends either by a fatal fault (the kernel picks
 * USER_KILLED) or by one of these from a failed self-check. */
#define USER_KILLED 0x100
#define USER_FAIL_WRITE 1
#define USER_FAIL_ADD 2
#define USER_FAIL_DEMAND 3
#define USER_FAIL_RO 4

void ring3_main(void) __attribute__((noreturn));
#endif
