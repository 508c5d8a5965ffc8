/*
 * Memory: a bump allocator for pages, the kernel's linear map, and the
 * rule that makes lguest paging work: the host keeps its own (shadow)
 * copy of our page tables, so every change to a live table is announced
 * with SET_PTE or SET_PGD, and a switch of tables with NEW_PGTABLE.
 */
#include "tinyguest.h"

extern char _end[];

uint32_t *cur_pgdir = boot_pgdir;
static uint32_t next_free_pa;   /* the allocator's cursor, physical */
static uint32_t mapped_end_pa;  /* RAM below this is in the linear map */
static uint32_t ram_end_pa;

void *alloc_page(void)
{
	if (next_free_pa + PAGE_SIZE > mapped_end_pa)
		power_off("tinyguest: out of mapped memory");
	void *p = VA(next_free_pa);
	next_free_pa += PAGE_SIZE;
	memset(p, 0, PAGE_SIZE);
	return p;
}

void set_pgd(uint32_t *pgdir, unsigned idx, uint32_t pde)
{
	pgdir[idx] = pde;
	lazy_hcall(LHCALL_SET_PGD, PA(pgdir), idx, 0);
}

/* The PTE for `va`, making a page table for it if there is none yet. */
uint32_t *pte_ptr(uint32_t *pgdir, uint32_t va, uint32_t pde_flags)
{
	unsigned i = va >> 22;
	if (!(pgdir[i] & PTE_PRESENT)) {
		uint32_t *pt = alloc_page();
		set_pgd(pgdir, i, PA(pt) | PTE_PRESENT | PTE_RW | pde_flags);
	}
	uint32_t *pt = VA(pgdir[i] & ~0xFFFu);
	return &pt[(va >> 12) & 1023];
}

/*
 * We write the entry ourselves; SET_PTE only tells the host to forget (or
 * refresh) what it cached for this address.  The host never writes the
 * value for us.
 */
void set_pte(uint32_t *pgdir, uint32_t va, uint32_t pte)
{
	*pte_ptr(pgdir, va, (va < PAGE_OFFSET) ? PTE_USER : 0) = pte;
	lazy_hcall(LHCALL_SET_PTE, PA(pgdir), va, pte);
}

/*
 * Device memory (the device page and the vrings above RAM) is mapped on
 * demand, the way Linux ioremaps it, at the same PAGE_OFFSET + physical
 * address as RAM.  We never map device pages we don't use: the host only
 * promises the ones the launcher allocated.
 */
void map_io(uint32_t gpa, uint32_t len)
{
	lazy_mode_begin();
	for (uint32_t pa = gpa & ~0xFFFu; pa < gpa + len; pa += PAGE_SIZE) {
		uint32_t *pte = pte_ptr(cur_pgdir, PAGE_OFFSET + pa, 0);
		if (!(*pte & PTE_PRESENT))
			set_pte(cur_pgdir, PAGE_OFFSET + pa, pa | PTE_PRESENT | PTE_RW);
	}
	lazy_mode_end();
}

/*
 * A 4 MiB stretch of kernel address space above the linear map and the
 * device area, for scenarios that need to play with mappings.
 */
uint32_t scratch_va(void)
{
	uint32_t top = ram_end_pa + (256u << 12);   /* the launcher's device area */
	return PAGE_OFFSET + ((top + (4u << 20) - 1) & ~((4u << 20) - 1));
}

void switch_pgdir(uint32_t *pgdir)
{
	cur_pgdir = pgdir;
	hcall(LHCALL_NEW_PGTABLE, PA(pgdir), 0, 0, 0);
}

/*
 * Extend the boot mapping (first 4 MiB) to all of RAM, in 4 MiB steps:
 * each new page table is filled before its directory entry goes live, so
 * only the directory entry needs announcing.  Then drop the identity
 * mapping at 0 that only the entry code needed; user space lives there.
 */
void mm_init(uint32_t mem)
{
	uint32_t limit = 0u - lguest_data.reserve_mem - PAGE_OFFSET;
	ram_end_pa = mem < limit ? mem : limit;
	next_free_pa = (PA(_end) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	mapped_end_pa = 4u << 20;

	lazy_mode_begin();
	for (uint32_t pa = mapped_end_pa; pa < ram_end_pa; pa += 4u << 20) {
		uint32_t *pt = alloc_page();
		for (unsigned i = 0; i < 1024 && pa + i * PAGE_SIZE < ram_end_pa; i++)
			pt[i] = (pa + i * PAGE_SIZE) | PTE_PRESENT | PTE_RW;
		set_pgd(boot_pgdir, (PAGE_OFFSET + pa) >> 22, PA(pt) | PTE_PRESENT | PTE_RW);
	}
	set_pgd(boot_pgdir, 0, 0);
	lazy_mode_end();
	hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
	mapped_end_pa = ram_end_pa;
}
