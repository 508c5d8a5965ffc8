/* One bad deed per run, chosen by the command line: every kill reason the core can produce. */
#include "lguest.h"

static u32 pd[1024] __attribute__((aligned(4096)));
static u32 pt[1024] __attribute__((aligned(4096)));

static void identity_paging(void)
{
    for (u32 i = 0; i < 1024; i++)
        pt[i] = (i << 12) | PTE_P | PTE_W | PTE_U;
    pd[0] = (u32)pt | PTE_P | PTE_W | PTE_U;
    hcall(LHCALL_NEW_PGTABLE, (u32)pd, 0, 0, 0);
}

int main(void)
{
    const char *c = cmdline();

    if (streq(c, "before-init"))
        hcall(LHCALL_NOTIFY, 0x2000, 0, 0, 0);
    if (streq(c, "bad-guest-page"))
        hcall(LHCALL_LGUEST_INIT, 0xFFFFF000, 0, 0, 0);
    if (streq(c, "bad-syscall-vector"))
        lguest_data.syscall_vec = 0x81;
    if (streq(c, "bad-kernel-address"))
        lguest_data.kernel_address = 0xFFC00000;
    init();
    if (streq(c, "init-twice"))
        init();
    if (streq(c, "hypercall-3"))
        hcall(3, 0, 0, 0, 0);
    if (streq(c, "hypercall-13"))
        hcall(LHCALL_SET_PMD, 0, 0, 0, 0);
    if (streq(c, "hypercall-99"))
        hcall(99, 0, 0, 0, 0);
    if (streq(c, "unhandled-trap"))
        asm volatile(".globl ud2_here\nud2_here: ud2");
    if (streq(c, "bad-stack-segment"))
        hcall(LHCALL_SET_STACK, 0x68, 0x200000, 1, 0);
    if (streq(c, "bad-stack-pages"))
        hcall(LHCALL_SET_STACK, KERNEL_DS, 0x200000, 3, 0);
    if (streq(c, "bad-stack-page"))
        hcall(LHCALL_SET_STACK, KERNEL_DS, 0xF0000000, 1, 0);
    if (streq(c, "bad-idt-type"))
        hcall(LHCALL_LOAD_IDT_ENTRY, 0x40, 0x00610000, 0x00008500, 0);
    if (streq(c, "idt-entry-256"))
        hcall(LHCALL_LOAD_IDT_ENTRY, 256, 0x00610000, 0x00008E00, 0);
    if (streq(c, "gdt-entry-32"))
        hcall(LHCALL_LOAD_GDT_ENTRY, 32, 0, 0, 0);
    if (streq(c, "bad-read"))
        hcall(LHCALL_LOAD_TLS, 0xFFFFFF00, 0, 0, 0);
    /* The tests give 8 MiB + 7 device pages: the limit is 0x807000 (3.18 rule). */
    if (streq(c, "shutdown-past-end"))
        hcall(LHCALL_SHUTDOWN, 0x00806FF0, 1, 0, 0);
    /* Linux's `reboot -f` passes __pa(NULL): unreadable, but still a reboot. */
    if (streq(c, "reboot-past-end"))
        hcall(LHCALL_SHUTDOWN, 0x40000000, 2, 0, 0);
    if (streq(c, "shutdown-at-end"))
        hcall(LHCALL_SHUTDOWN, 0x00807000 - 128, 1, 0, 0);
    if (streq(c, "bad-write")) {
        /* A trap whose frame would land beyond Guest memory (linear mode). */
        install_traps();
        asm volatile("movl $0x7FFFFFF0, %esp\n ud2");
    }
    if (streq(c, "bad-pde")) {
        pd[5] = 0xFFFFF000 | PTE_P | PTE_W;
        identity_paging();
    }
    identity_paging();
    if (streq(c, "bad-pte"))
        hcall(LHCALL_SET_PTE, (u32)pd, 0x400000, 0xFFFFF000 | PTE_P | PTE_A, 0);
    if (streq(c, "switcher-pte"))
        hcall(LHCALL_SET_PTE, (u32)pd, 0xFFC00000, 0, 0);
    if (streq(c, "pgd-1024"))
        hcall(LHCALL_SET_PGD, (u32)pd, 1024, 0, 0);
    if (streq(c, "wild-pte")) {
        /* Never announced: the CPU itself finds a frame outside Guest memory. */
        pt[0x300] = 0x7FF00000 | PTE_P | PTE_W;
        *(volatile u32 *)0x300000;
    }
    if (streq(c, "bad-address")) {
        install_traps();
        asm volatile("movl $0x00C00000, %esp\n ud2");    /* unmapped stack under paging */
    }
    shutdown("no bad deed was asked for", 1);
}
