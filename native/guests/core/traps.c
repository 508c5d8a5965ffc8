/* Ring 3 code, int $0x80 syscalls, page faults from both rings, #GP emulation and reflection. */
#include "lguest.h"

static u32 pd[1024] __attribute__((aligned(4096)));
static u32 pt[1024] __attribute__((aligned(4096)));
static u8 kstack[8192] __attribute__((aligned(4096)));
static u8 ustack[4096] __attribute__((aligned(4096)));

#define SUPERVISOR_PAGE 0x300000
#define READONLY_PAGE   0x301000
#define UNMAPPED_PAGE   0x302000

static void report(const char *what, struct frame *f)
{
    print(what);
    print_hex(" vector", f->vector);
    print_hex(" err", f->err);
    if (f->vector == 14)
        print_hex(" cr2", lguest_data.cr2);
    print_hex(" cs", f->cs);
}

static void handler(struct frame *f)
{
    if (f->vector == 0x80) {
        if (f->eax == 1)
            print((const char *)f->ebx);
        else if (f->eax == 2)
            shutdown("user program finished", 1);
        f->eax = 0x600D;
        return;
    }
    report("trap", f);
    f->eip += f->edi;            /* the faulting code tells us how long the instruction is */
}

static void syscall1(u32 nr, u32 arg)
{
    asm volatile("int $0x80" : "+a"(nr) : "b"(arg) : "memory");
}

/* Each probe sets EDI to the length of the instruction that traps, so the handler can skip it. */
#define PROBE_AT(insn, len, addr) \
    asm volatile("movl $" #len ", %%edi\n" insn :: "r"(addr) : "ecx", "edi", "memory")
#define PROBE(insn, len) asm volatile("movl $" #len ", %%edi\n" insn ::: "edi", "memory")

static void user_main(void)
{
    syscall1(1, (u32)"user: hello via int $0x80\n");
    PROBE_AT("movl (%0), %%ecx", 2, SUPERVISOR_PAGE);
    PROBE_AT("movl %%ecx, (%0)", 2, READONLY_PAGE);
    PROBE_AT("movl (%0), %%ecx", 2, UNMAPPED_PAGE + 0x10);
    PROBE("int $0x1f", 2);
    PROBE("int $0x40", 2);
    PROBE("cli", 1);
    /* Port I/O is the kernel's (IOPL 0): from ring 3 it is #GP(0), never emulated. */
    asm volatile("movl $2, %%edi\n inb $0x60, %%al" ::: "eax", "edi", "memory");
    asm volatile("movl $2, %%edi\n outb %%al, $0x80" ::: "eax", "edi", "memory");
    syscall1(2, 0);
    for (;;)
        ;
}

int main(void)
{
    init();
    trap_handler = handler;
    install_traps();
    for (u32 i = 0; i < 1024; i++)
        pt[i] = (i << 12) | PTE_P | PTE_W | PTE_U;
    pt[SUPERVISOR_PAGE >> 12] = SUPERVISOR_PAGE | PTE_P | PTE_W;
    pt[READONLY_PAGE >> 12] = READONLY_PAGE | PTE_P | PTE_U;
    pt[UNMAPPED_PAGE >> 12] = 0;
    pd[0] = (u32)pt | PTE_P | PTE_W | PTE_U;
    hcall(LHCALL_NEW_PGTABLE, (u32)pd, 0, 0, 0);

    /* Kernel (ring 1) faults. */
    PROBE_AT("movl (%0), %%ecx", 2, UNMAPPED_PAGE + 0x20);
    PROBE_AT("movl %%ecx, (%0)", 2, READONLY_PAGE + 4);
    PROBE("ud2", 2);

    /* What the host emulates for the kernel: cli skipped, in reads all ones. */
    u32 v = 0x12345600;
    asm volatile("cli\n inb $0x60, %%al" : "+a"(v));
    print_hex("kernel in al", v);
    v = 0;
    asm volatile("inl (%%dx)" : "+a"(v) : "d"(0xCF8));
    print_hex("kernel in eax", v);

    enter_user(user_main, (u32)ustack + sizeof(ustack), (u32)kstack + sizeof(kstack));
}
