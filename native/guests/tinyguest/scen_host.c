/*
 * Scenarios about the host itself: dying on request (crash), surviving a
 * flood of hypercalls (storm) and refusing a bad page table (badpte).
 */
#include "tinyguest.h"

void scen_crash(void)
{
	const char *msg = arg_str("msg", "tinyguest_crash");
	kprintf("tinyguest: crash now, expect \"CRASH: %s\"\n", msg);
	power_off(msg);
}

static unsigned ring_busy(void)
{
	unsigned n = 0;
	for (unsigned i = 0; i < LHCALL_RING_SIZE; i++)
		n += lguest_data.hcall_status[i] != HCALL_STATUS_FREE;
	return n;
}

/*
 * Point `va` at `pa` and say so through the ring, as Linux does when it
 * changes a present mapping: announce the new entry, then flush the old
 * translation (SET_PTE with value 0).  Two ring slots.
 */
static void async_map(uint32_t va, uint32_t pa)
{
	*pte_ptr(cur_pgdir, va, 0) = pa | PTE_PRESENT | PTE_RW;
	async_hcall(LHCALL_SET_PTE, PA(cur_pgdir), va, pa | PTE_PRESENT | PTE_RW, 0);
	async_hcall(LHCALL_SET_PTE, PA(cur_pgdir), va, 0, 0);
}

/*
 * 1. `n=` (default 1000) rounds of harmless synchronous calls.
 * 2. Fill the async ring to the brim (64 queued), then one more, which
 *    must fall back to a synchronous call that drains the ring.  Every
 *    remap is announced and then flushed, two slots, the way Linux does.
 * 3. A batch with a NOTIFY (the early-console string "storm-mid") in its
 *    middle: the host must stop the batch there, hand the notify out, and
 *    finish the rest before our FLUSH_ASYNC returns.  The batch flips one
 *    page between two frames, so reading it afterwards shows whether the
 *    entries ran in order.
 * 4. `n=` page-table batches of 100 SET_PTEs (50 remaps, 50 flushes)
 *    each through lazy mode.
 */
void scen_storm(void)
{
	uint32_t n = arg_uint("n", 1000), sync = 0, async = 0;
	static const char mid[] = "storm-mid\n";

	for (uint32_t i = 0; i < n; i++) {
		hcall(LHCALL_NOTIFY, 0, 0, 0, 0);        /* notify 0 is a no-op */
		hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
		hcall(LHCALL_TS, 0, 0, 0, 0);
		sync += 4;
	}

	uint32_t va = scratch_va();
	uint32_t *a = alloc_page(), *b = alloc_page();
	a[0] = 0xAAAAAAAA;
	b[0] = 0xBBBBBBBB;
	async_map(va, PA(a));
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);

	uint32_t flags = irq_save();
	for (unsigned i = 0; i < LHCALL_RING_SIZE / 2; i++, async += 2)
		async_map(va, PA(i & 1 ? a : b));
	unsigned full = ring_busy();
	/* No room: the first call runs synchronously (draining the ring),
	 * the second goes into the emptied ring. */
	async_map(va, PA(a));
	unsigned after_overflow = ring_busy();
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	async++;
	sync++;
	irq_restore(flags);
	sync++;
	int ok = full == LHCALL_RING_SIZE && after_overflow == 1
		 && *(volatile uint32_t *)va == 0xAAAAAAAA;

	flags = irq_save();
	for (unsigned i = 0; i < 10; i++, async += 2)
		async_map(va, PA(i & 1 ? a : b));
	async_hcall(LHCALL_NOTIFY, PA(mid), 0, 0, 0);
	for (unsigned i = 0; i < 11; i++, async += 2)
		async_map(va, PA(i & 1 ? a : b));   /* ends on b */
	async += 1;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	sync++;
	irq_restore(flags);
	unsigned mid_busy = ring_busy();
	uint32_t mid_val = *(volatile uint32_t *)va;
	int mid_ok = mid_busy == 0 && mid_val == 0xBBBBBBBB;

	for (uint32_t i = 0; i < n; i++) {
		lazy_mode_begin();
		for (unsigned k = 0; k < 50; k++) {
			set_pte(cur_pgdir, va, PA(k & 1 ? a : b) | PTE_PRESENT | PTE_RW);
			lazy_hcall(LHCALL_SET_PTE, PA(cur_pgdir), va, 0);
		}
		lazy_mode_end();
		async += 100;
		sync++;
	}
	int lazy_ok = *(volatile uint32_t *)va == 0xAAAAAAAA && ring_busy() == 0;

	kprintf("tinyguest: storm %s sync=%u async=%u fullring=%u overflow=%s midnotify=%s lazy=%s\n",
		ok && mid_ok && lazy_ok ? "PASS" : "FAIL", sync, async, full,
		ok ? "ok" : "bad", mid_ok ? "ok" : "bad", lazy_ok ? "ok" : "bad");
	if (!mid_ok)
		kprintf("tinyguest: storm midnotify left %u slots busy, page reads %x (want 0 and bbbbbbbb)\n",
			mid_busy, mid_val);
}

/*
 * Name a frame far beyond anything the launcher gave us (frame 0x80000,
 * 2 GiB) and touch it.  kind=pte (default): a PTE with ACCESSED|DIRTY set,
 * announced by SET_PTE, then read; the host must die with "bad page table
 * entry".  kind=pde: a page directory entry, announced by SET_PGD, then
 * read; the host must die with "bad page directory entry".
 */
void scen_badpte(void)
{
	const char *kind = arg_str("kind", "pte");
	uint32_t va = scratch_va(), bad = 0x80000000u;
	int pde = !strcmp(kind, "pde");
	kprintf("tinyguest: badpte expect host kill \"bad page %s entry\"\n",
		pde ? "directory" : "table");
	if (pde)
		set_pgd(cur_pgdir, va >> 22, bad | PTE_PRESENT | PTE_RW);
	else
		set_pte(cur_pgdir, va, bad | PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY);
	uint32_t v = *(volatile uint32_t *)va;
	kprintf("tinyguest: badpte FAIL host let us read %x through kind=%s\n", v, kind);
}
