/*
 * The way into and out of our kernel: one stub per vector, a common path
 * that saves registers and calls trap_dispatch(), and the lguest iret.
 *
 * The host builds the frame for us (EFLAGS, CS, EIP, maybe an error code,
 * plus the old SS:ESP when it came from ring 3) and jumps to the handler
 * address we gave in LOAD_IDT_ENTRY.  Our stubs make every frame the same
 * shape by pushing a zero where the CPU pushes no error code.
 */
#include "lguest.h"

/* Vectors whose frame already carries an error code. */
.macro STUB vec
stub_\vec:
	.if !((\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17))
	pushl $0
	.endif
	pushl $\vec
	jmp trap_common
.endm

	.text
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63
	STUB \v
	.endr
	STUB 0x80

trap_common:
	pushl %ds
	pushl %es
	pushal
	movl $KERNEL_DS, %eax
	movl %eax, %ds
	movl %eax, %es
	pushl %esp			/* struct trapframe * */
	call trap_dispatch
	addl $4, %esp
	testl %eax, %eax
	jnz user_resume			/* the ring-3 program is over */
	popal
	popl %es
	popl %ds
	addl $8, %esp			/* vector and error code */
	/* fall through */

/*
 * Return from a trap.  A real iret at CPL 1 cannot change IF, so our
 * virtual IF has to come back from the stacked EFLAGS by hand: copy it into
 * lguest_data.irq_enabled, then iret.  Between the copy and the iret an
 * interrupt would push a frame on top of a frame we are half-way through
 * popping, so the host is told (noirq_start/noirq_end) never to interrupt
 * inside this window.  %ss is used because %ds may be the user's.
 */
	.globl lguest_iret, lguest_noirq_start, lguest_noirq_end
lguest_iret:
	pushl %eax
	movl 12(%esp), %eax		/* EFLAGS, above our %eax, EIP and CS */
lguest_noirq_start:
	movl %eax, %ss:lguest_data + LGUEST_DATA_IRQ_ENABLED
	popl %eax
	iret
lguest_noirq_end:

/*
 * user_enter(eip, esp): run ring-3 code until the program ends (exit
 * syscall or a fatal fault), then return its exit code.  We keep our
 * callee-saved registers and stack pointer, build the iret frame a trap
 * from ring 3 would have, and leave through lguest_iret.  The host will
 * bring traps from ring 3 onto the stack we gave SET_STACK, never onto
 * this one, so this one stays intact until user_resume comes back to it.
 */
	.globl user_enter
user_enter:
	pushl %ebp
	pushl %ebx
	pushl %esi
	pushl %edi
	movl %esp, user_kernel_esp
	movl lguest_data + LGUEST_DATA_IRQ_ENABLED, %eax
	movl %eax, user_saved_irq
	movl 20(%esp), %eax		/* eip */
	movl 24(%esp), %ecx		/* esp */
	pushl $USER_DS
	pushl %ecx
	pushl $(X86_EFLAGS_IF | 2)	/* ring 3 always runs with interrupts on */
	pushl $USER_CS
	pushl %eax
	movl $USER_DS, %edx
	movl %edx, %ds
	movl %edx, %es
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	xorl %edx, %edx
	xorl %esi, %esi
	xorl %edi, %edi
	xorl %ebp, %ebp
	jmp lguest_iret

user_resume:
	movl user_kernel_esp, %esp
	movl user_saved_irq, %eax
	movl %eax, lguest_data + LGUEST_DATA_IRQ_ENABLED
	movl user_exit_code, %eax
	popl %edi
	popl %esi
	popl %ebx
	popl %ebp
	ret

	.section .rodata
	.globl trap_stubs, syscall_stub
trap_stubs:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63
	.long stub_\v
	.endr
syscall_stub:
	.long stub_0x80

	.bss
	.align 4
user_kernel_esp:	.long 0
user_saved_irq:		.long 0

	.section .note.GNU-stack, "", @progbits
