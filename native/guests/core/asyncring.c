/* The async hypercall ring: a full ring, NOTIFYs in the middle of a batch, cursor wrap-around. */
#include "lguest.h"

static char names[130][8];

static const char *name(u32 i)
{
    char *n = names[i];
    n[0] = 'r';
    n[1] = (char)('0' + i / 100);
    n[2] = (char)('0' + i / 10 % 10);
    n[3] = (char)('0' + i % 10);
    n[4] = 0;
    return n;
}

int main(void)
{
    init();
    /* Round 1: 64 queued NOTIFYs fill the ring; the 65th call finds it full and goes synchronous. */
    for (u32 i = 0; i < 65; i++)
        async_hcall(LHCALL_NOTIFY, (u32)name(i), 0, 0, 0);
    /* Round 2: a batch with a NOTIFY in the middle, then a flush; the cursor has wrapped. */
    async_hcall(LHCALL_NOTIFY, (u32)name(100), 0, 0, 0);
    async_hcall(LHCALL_LOAD_GDT_ENTRY, 20, 0x0000FFFF, 0x00CF9200, 0);
    async_hcall(LHCALL_NOTIFY, (u32)name(101), 0, 0, 0);
    hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
    print("done\n");
    shutdown("async ring test done", 1);
}
