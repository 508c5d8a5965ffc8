/* Ring 3 traps of every kind the host may deliver natively, and their neighbours that it must not:
 * system calls with the virtual IF on and off, int3 through a DPL 3 interrupt gate, demand-paged
 * and fatal-looking page faults (fixed up or skipped by the handler), a page directory entry the
 * host learns of only at the fault (no frame: the host re-copies it), int $0x40 (DPL 1: #GP), and
 * the faults reflected as they are: cli (#GP(0)), a division by zero (#DE), the FPU while TS (#NM).
 * tests/host/test_core_native_exits.py runs it with native exits on and off and compares each frame. */
#include "lguest.h"

static u32 pd[1024] __attribute__((aligned(4096)));
static u32 pt[1024] __attribute__((aligned(4096)));
static u8 kstack[8192] __attribute__((aligned(4096)));
static u8 ustack[4096] __attribute__((aligned(4096)));
static u8 fresh[2][4096] __attribute__((aligned(4096)));
static u32 pt2[1024] __attribute__((aligned(4096)));

#define DEMAND_PAGE   0x302000      /* not present until the first touch; then fresh[0] */
#define DEMAND_PAGE2  0x303000      /* the same by a write; then fresh[1] */
#define READONLY_PAGE 0x301000
#define NO_PDE        0x40000000    /* no page table at all */
#define QUIET_PDE     0x00400000    /* given a page table behind the host's back (no SET_PGD) */
#define ROUNDS 8

static void handler(struct frame *f)
{
    if (f->vector == 0x80) {
        if (f->eax == 2)
            shutdown("user program finished", 1);
        else if (f->eax == 3)
            f->eflags &= ~0x200u;    /* the way back turns the virtual IF off... */
        else if (f->eax == 4)
            f->eflags |= 0x200u;     /* ...and on again */
        else if (f->eax == 5)
            pd[QUIET_PDE >> 22] = (u32)pt2 | PTE_P | PTE_W | PTE_U;   /* the host finds out at the fault */
        else if (f->eax == 6)
            hcall(LHCALL_TS, 1, 0, 0, 0);    /* the next FPU instruction traps (#NM) */
        f->eax = 0x600D;
        return;
    }
    if (f->vector == 14 && !(f->err & 1)) {
        u32 page = lguest_data.cr2 & ~0xFFFu;
        if (page == DEMAND_PAGE || page == DEMAND_PAGE2) {
            u32 pte = (u32)fresh[page == DEMAND_PAGE2] | PTE_P | PTE_W | PTE_U;
            pt[page >> 12] = pte;
            hcall(LHCALL_SET_PTE, (u32)pd, page, pte, 0);
            return;                  /* retried, and now it works */
        }
    }
    if (f->vector == 7) {
        hcall(LHCALL_TS, 0, 0, 0, 0);    /* lazy FPU: the instruction is retried and runs */
        return;
    }
    f->eip += f->edi;                /* the faulting code tells us how long the instruction is */
}

static void syscall1(u32 nr)
{
    asm volatile("int $0x80" : "+a"(nr) :: "memory");
}

/* The address in EAX: with EBP as the base, `movl (%ebp), %ecx` would be three bytes, not two. */
#define PROBE_AT(insn, len, addr) \
    asm volatile("movl $" #len ", %%edi\n" insn :: "a"(addr) : "ecx", "edi", "memory")
#define PROBE(insn, len) asm volatile("movl $" #len ", %%edi\n" insn ::: "edi", "memory")

static void user_main(void)
{
    for (u32 round = 0; round < ROUNDS; round++) {
        syscall1(round & 1 ? 3 : 4);            /* IF off on odd rounds */
        syscall1(0);
        PROBE("int3", 0);
        PROBE("int $0x40", 2);
        PROBE("cli", 1);                        /* #GP(0): never emulated for ring 3 */
        asm volatile("movl $2, %%edi\n xorl %%edx, %%edx\n divl %%ecx"   /* #DE */
                     :: "c"(0) : "eax", "edx", "edi", "memory");
        syscall1(6);
        asm volatile("fldz\n fstp %%st(0)" ::: "memory");                 /* #NM, then it runs */
        PROBE_AT("movl %%ecx, (%0)", 2, READONLY_PAGE + 4 * round);
        PROBE_AT("movl (%0), %%ecx", 2, NO_PDE + 8 * round);
    }
    syscall1(5);
    PROBE_AT("movl (%0), %%ecx", 2, QUIET_PDE + 0x30);
    PROBE_AT("movl (%0), %%ecx", 2, DEMAND_PAGE + 0x10);
    PROBE_AT("movl %%ecx, (%0)", 2, DEMAND_PAGE2 + 0x20);
    syscall1(4);
    syscall1(2);
    for (;;)
        ;
}

int main(void)
{
    init();
    trap_handler = handler;
    install_traps();
    set_gate(3, (void (*)(void))((u32)trap_stubs_table + 16 * 3), 3, GATE_INT);
    for (u32 i = 0; i < 1024; i++)
        pt[i] = (i << 12) | PTE_P | PTE_W | PTE_U;
    pt[READONLY_PAGE >> 12] = READONLY_PAGE | PTE_P | PTE_U;
    pt[DEMAND_PAGE >> 12] = 0;
    pt[DEMAND_PAGE2 >> 12] = 0;
    pd[0] = (u32)pt | PTE_P | PTE_W | PTE_U;
    for (u32 i = 0; i < 1024; i++)
        pt2[i] = (i << 12) | PTE_P | PTE_W | PTE_U;
    hcall(LHCALL_NEW_PGTABLE, (u32)pd, 0, 0, 0);
    enter_user(user_main, (u32)ustack + sizeof(ustack), (u32)kstack + sizeof(kstack));
}
