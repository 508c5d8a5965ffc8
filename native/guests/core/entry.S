/* Entry point and trap stubs shared by every core test guest. */
    .section .text.entry, "ax"
    .globl _start
_start:
    movl $stack_top, %esp
    call main
1:  jmp 1b

    .text
/* One 16-byte stub per vector 0..128: push a zero error code where the CPU
 * pushes none, push the vector, and go to the common path. */
    .balign 16
    .globl trap_stubs_table
trap_stubs_table:
    .set v, 0
    .rept 129
    .balign 16
    .if (v == 8) | ((v >= 10) & (v <= 14)) | (v == 17)
    .else
    pushl $0
    .endif
    pushl $v
    jmp trap_common
    .set v, v + 1
    .endr

trap_common:
    pusha
    pushl %esp
    call *trap_handler
    addl $4, %esp
    popa
    addl $8, %esp
/* lguest's iret: the stacked EFLAGS becomes the virtual interrupt flag, and
 * no interrupt may be delivered between that store and the iret. */
    pushl %eax
    movl 12(%esp), %eax
    .globl noirq_start_sym
noirq_start_sym:
    movl %eax, lguest_data
    popl %eax
    iret
    .globl noirq_end_sym
noirq_end_sym:

    .bss
    .balign 4096
    .space 16384
    .globl stack_top
stack_top:

    .section .note.GNU-stack, "", @progbits
