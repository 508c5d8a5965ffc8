/*
 * Where the launcher's `start` (our ELF entry) lands.  We are at CPL 1 in
 * linear mode: paging is off, so every address is physical, and ESI = 0
 * points at the zero page.  The code is linked at PAGE_OFFSET + physical,
 * so until paging is on every absolute address must be turned into a
 * physical one with PA().
 */
#include "lguest.h"

#define PA(x) ((x) - PAGE_OFFSET)

	.section .text.entry, "ax"
	.globl tg_entry
tg_entry:
	cld
	/* The launcher only copies file bytes; zero our BSS ourselves. */
	movl $PA(__bss_start), %edi
	movl $PA(__bss_end), %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl

	/* The very first hypercall must hand over lguest_data: the host
	 * refuses anything else, and cannot interrupt us before it. */
	movl $LHCALL_LGUEST_INIT, %eax
	movl $PA(lguest_data), %ebx
	int $LGUEST_TRAP_ENTRY

	/* One page table maps the first 4 MiB (our image, the zero page and
	 * the command line).  It is hooked in twice: at 0, so the next
	 * instruction after NEW_PGTABLE still has a mapping, and at
	 * PAGE_OFFSET, where we really live. */
	movl $PA(boot_pt), %edi
	movl $(PTE_PRESENT | PTE_RW), %eax
	movl $1024, %ecx
1:	stosl
	addl $PAGE_SIZE, %eax
	loop 1b
	movl $(PA(boot_pt) + PTE_PRESENT + PTE_RW), %eax
	movl %eax, PA(boot_pgdir)
	movl %eax, PA(boot_pgdir) + (PAGE_OFFSET >> 22) * 4

	/* Leave linear mode. */
	movl $LHCALL_NEW_PGTABLE, %eax
	movl $PA(boot_pgdir), %ebx
	int $LGUEST_TRAP_ENTRY

	/* Jump to our virtual address and never look back. */
	movl $boot_stack_top, %esp
	movl $2f, %eax
	jmp *%eax
2:	call kmain
3:	jmp 3b

	.bss
	.align PAGE_SIZE
	.globl boot_pgdir, boot_pt
boot_pgdir:
	.skip PAGE_SIZE
boot_pt:
	.skip PAGE_SIZE
boot_stack:
	.skip 4 * PAGE_SIZE
	.globl boot_stack_top
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
