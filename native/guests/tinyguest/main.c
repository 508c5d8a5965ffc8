/*
 * tinyguest's kernel proper: find out what we have (RAM size, command
 * line), describe our CPU tables to the host, map memory, find a console,
 * run the scenario the command line names, and power off.
 */
#include "tinyguest.h"

uint32_t mem_bytes;

struct scenario {
	const char *name;
	void (*run)(void);
};

static const struct scenario scenarios[] = {
	{ "hello", scen_hello },     { "echo", scen_echo },
	{ "blk", scen_blk },         { "reboot", scen_reboot },
	{ "usermode", scen_usermode }, { "timer", scen_timer },
	{ "spin", scen_spin },       { "halt", scen_halt },
	{ "crash", scen_crash },     { "storm", scen_storm },
	{ "badpte", scen_badpte },  { "rearm", scen_rearm },
	{ "blkrace", scen_blkrace },
};

/* RAM is the launcher's single e820 entry; the device page sits right
 * above it.  We stay in 32 bits: a 3.x Guest has well under 4 GiB. */
static uint32_t find_mem(void)
{
	const uint8_t *zp = VA(0);
	uint32_t lo, hi;
	if (!zp[BP_E820_ENTRIES])
		power_off("tinyguest: no e820 map");
	memcpy(&lo, zp + BP_E820_MAP + 8, 4);
	memcpy(&hi, zp + BP_E820_MAP + 12, 4);
	return hi ? 0xFFFFF000u : lo & ~(PAGE_SIZE - 1);
}

void kmain(void)
{
	mem_bytes = find_mem();
	cmdline_init();
	traps_init();
	mm_init(mem_bytes);
	irq_enable();

	const char *name = arg_str("test", "hello");
	kprintf("tinyguest: boot test=%s mem=%uMiB\n", name, mem_bytes >> 20);
	if (!arg_uint("nodev", 0))
		console_init();

	for (unsigned i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (!strcmp(scenarios[i].name, name)) {
			scenarios[i].run();
			power_off("tinyguest: done");
		}
	}
	kprintf("tinyguest: %s FAIL unknown test\n", name);
	power_off("tinyguest: done");
}
