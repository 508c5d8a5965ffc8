/* A Guest that would read a stale mapping if the host skipped a TLB flush it must do. */
#include "lguest.h"

static u32 pd[1024] __attribute__((aligned(4096)));
static u32 pd2[1024] __attribute__((aligned(4096)));
static u32 pt[1024] __attribute__((aligned(4096)));
static u32 pt2[1024] __attribute__((aligned(4096)));
static u32 page[3][1024] __attribute__((aligned(4096)));

#define WINDOW 0x400000
static volatile u32 *const window = (volatile u32 *)WINDOW;

int main(void)
{
    init();
    for (u32 i = 0; i < 1024; i++)
        pt[i] = (i << 12) | PTE_P | PTE_W;
    page[0][0] = 0xAAAA; page[1][0] = 0xBBBB; page[2][0] = 0xCCCC;
    pt2[0] = (u32)page[0] | PTE_P | PTE_W;
    pd[0] = pd2[0] = (u32)pt | PTE_P | PTE_W;
    pd[1] = (u32)pt2 | PTE_P | PTE_W;
    hcall(LHCALL_NEW_PGTABLE, (u32)pd, 0, 0, 0);
    print_hex("first", *window);

    pt2[0] = (u32)page[1] | PTE_P | PTE_W;                  /* flush_tlb_single: SET_PTE value 0 */
    hcall(LHCALL_SET_PTE, (u32)pd, WINDOW, 0, 0);
    print_hex("after SET_PTE 0", *window);

    pt2[0] = (u32)page[2] | PTE_P | PTE_W;                  /* the same, queued in a batch */
    async_hcall(LHCALL_SET_PTE, (u32)pd, WINDOW, 0, 0);
    hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
    print_hex("after async SET_PTE 0", *window);

    pt2[0] = (u32)page[0] | PTE_P | PTE_W;
    hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
    print_hex("after FLUSH_TLB", *window);

    pd2[1] = (u32)pt | PTE_P | PTE_W;                       /* another address space: identity */
    hcall(LHCALL_NEW_PGTABLE, (u32)pd2, 0, 0, 0);
    print_hex("after NEW_PGTABLE", *window == *(volatile u32 *)WINDOW ? (u32)(*window == 0xAAAA) : 2);
    shutdown("tlb test done", 1);
}
