/* The page-table hypercalls the host may finish natively, and what the Guest sees after each:
 * SET_PTE announcing (no flush) and SET_PTE 0 (flush), batches of SET_PTE and SET_PGD through the
 * async ring ended by FLUSH_ASYNC (many times round the ring), SET_PGD for tables that are not
 * current, TS and FLUSH_TLB (queued and not), SEND_INTERRUPTS with nothing to deliver.  Command line "bad" ends with an invalid PTE in
 * the ring, "badpgd" with an invalid PDE: both must die with the seed's text.
 * tests/host/test_core_native_exits.py runs it with native exits on and off and compares. */
#include "lguest.h"

static u32 pd[1024] __attribute__((aligned(4096)));
static u32 other_pd[1024] __attribute__((aligned(4096)));
static u32 pt[1024] __attribute__((aligned(4096)));
static u32 pt2[1024] __attribute__((aligned(4096)));
static u32 pt3[1024] __attribute__((aligned(4096)));
static u32 page[4][1024] __attribute__((aligned(4096)));

#define WINDOW  0x400000            /* pd[1] -> pt2 */
#define WINDOW2 0x800000            /* pd[2] -> pt3, announced through the ring */
#define ROUNDS 40

static u32 at(u32 va)
{
    return *(volatile u32 *)va;
}

int main(void)
{
    init();
    for (u32 i = 0; i < 1024; i++)
        pt[i] = (i << 12) | PTE_P | PTE_W;
    for (u32 k = 0; k < 4; k++)
        page[k][0] = 0xAAAA + 0x1111 * k;
    pt2[0] = (u32)page[0] | PTE_P | PTE_W;
    pd[0] = (u32)pt | PTE_P | PTE_W;
    pd[1] = (u32)pt2 | PTE_P | PTE_W;
    hcall(LHCALL_NEW_PGTABLE, (u32)pd, 0, 0, 0);
    print_hex("first", at(WINDOW));

    pt2[0] = (u32)page[1] | PTE_P | PTE_W | PTE_A;      /* announced: no flush, the old one may stay */
    hcall(LHCALL_SET_PTE, (u32)pd, WINDOW, pt2[0], 0);
    print_hex("announced", at(WINDOW));
    hcall(LHCALL_SET_PTE, (u32)pd, WINDOW, 0, 0);        /* flush this address */
    print_hex("after SET_PTE 0", at(WINDOW));

    for (u32 i = 1; i < 8; i++) {
        pt2[i] = (u32)page[i & 3] | PTE_P | PTE_W;
        async_hcall(LHCALL_SET_PTE, (u32)pd, WINDOW + i * 4096, pt2[i], 0);
    }
    pt3[0] = (u32)page[2] | PTE_P | PTE_W;
    pd[2] = (u32)pt3 | PTE_P | PTE_W;
    async_hcall(LHCALL_SET_PGD, (u32)pd, 2, 0, 0);
    pt2[0] = (u32)page[3] | PTE_P | PTE_W;
    async_hcall(LHCALL_SET_PTE, (u32)pd, WINDOW, 0, 0);
    hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
    print_hex("window", at(WINDOW));
    print_hex("window2", at(WINDOW2));

    u32 sum = 0;
    for (u32 round = 0; round < ROUNDS; round++) {
        u32 k = round & 3;
        pt2[0] = (u32)page[k] | PTE_P | PTE_W;
        for (u32 i = 0; i < 5; i++)
            async_hcall(LHCALL_SET_PTE, (u32)pd, WINDOW + i * 4096, i ? pt2[i] : 0, 0);
        async_hcall(LHCALL_SET_PGD, (u32)other_pd, 2, 0, 0);    /* not the current table: nothing */
        async_hcall(LHCALL_SET_PGD, (u32)pd, 1023, 0, 0);       /* the switcher's slot: nothing */
        async_hcall(LHCALL_TS, round & 1, 0, 0, 0);
        if (round % 3 == 0)
            async_hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
        hcall(round & 1 ? LHCALL_FLUSH_ASYNC : LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
        sum = sum * 3 + at(WINDOW);
    }
    print_hex("rounds", sum);
    pt2[0] = (u32)page[1] | PTE_P | PTE_W;                  /* no SET_PTE: only a flush shows it */
    hcall(LHCALL_TS, 0, 0, 0, 0);
    hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
    print_hex("after FLUSH_TLB", at(WINDOW));
    hcall(LHCALL_SET_PGD, (u32)pd, 2, 0, 0);                    /* synchronous, unchanged */
    print_hex("window2 again", at(WINDOW2));

    if (streq(cmdline(), "bad")) {
        async_hcall(LHCALL_SET_PTE, (u32)pd, WINDOW, 0xFFFFF000u | PTE_P | PTE_A, 0);
        hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
    } else if (streq(cmdline(), "badpgd")) {
        pd[5] = (u32)pt3 | PTE_P | 0x100;                       /* GLOBAL: not allowed in a PDE */
        async_hcall(LHCALL_SET_PGD, (u32)pd, 5, 0, 0);
        hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
    }
    shutdown("page tables done", 1);
}
