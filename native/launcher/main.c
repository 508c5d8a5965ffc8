/*
 * lguest launcher: command line, INITIALIZE, and the loop that runs the Guest.
 *
 *   lguest [--verbose] [--block=FILE] [--rng] [--tunnet=IP[:MAC]] [--initrd=FILE] [--private]
 *          <mem-in-MB> <vmlinux-or-bzImage> [kernel args...]
 *
 * The main process only ever reads /dev/lguest (that runs the Guest) and
 * reacts to what the read returns (lguest-abi.md §2.7, §2.9).  The device
 * node defaults to /dev/lguest; LGUEST_DEVICE names another node (a CUSE
 * device under a different name, or a test fixture).
 */
#include "launcher.h"

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool verbose_on;
static pid_t launcher_pid;

static const char usage_text[] =
	"Usage: lguest [--verbose] [--block=FILE] [--rng] [--tunnet=IP[:MAC]] [--initrd=FILE] [--private]\n"
	"              <mem-in-MB> <vmlinux-or-bzImage> [kernel args...]\n";

static void usage(void)
{
	fputs(usage_text, stderr);
	exit(1);
}

/* Devices are created in option order, so remember the options first. */
struct dev_opt {
	char kind; /* 'b'lock, 'r'ng or 't'unnet */
	const char *arg; /* the option's value, if it has one */
};

/* The first non-option argument is the memory size in MiB; there is no default. */
static unsigned long parse_mem(const char *arg)
{
	char *end;
	errno = 0;
	unsigned long mb = strtoul(arg, &end, 10);
	/* Guest-physical addresses are 32-bit, and RAM + 1 MiB of devices must stay below 4 GiB. */
	if (errno || end == arg || *end || mb == 0 || mb >= 4095)
		errx(1, "Bad memory size '%s' (megabytes, 1 to 4094)", arg);
	return mb << 20;
}

static unsigned long tell_kernel(unsigned long start)
{
	const char *node = getenv("LGUEST_DEVICE");
	if (!node || !*node)
		node = "/dev/lguest";
	unsigned long req[4] = { LHREQ_INITIALIZE, (unsigned long)guest_base, guest_limit / PAGE, start };
	verbose("Guest: %p - %p (%#lx)\n", (void *)guest_base, (void *)(guest_base + guest_limit), guest_limit);
	lguest_fd = open(node, O_RDWR);
	if (lguest_fd < 0)
		err(1, "Opening %s", node);
	if (write(lguest_fd, req, sizeof(req)) < 0)
		err(1, "Writing to %s", node);
	return start;
}

static void write_early_console(unsigned long gpa)
{
	const char *s = from_guest_phys(gpa);
	size_t len = strnlen(s, guest_limit - gpa);
	while (len) {
		ssize_t w = write(STDOUT_FILENO, s, len);
		if (w <= 0)
			return;
		s += w;
		len -= (size_t)w;
	}
}

static void handle_notify(unsigned long addr)
{
	if (handle_device_notify(addr))
		return;
	if (addr >= guest_limit)
		errx(1, "Bad NOTIFY %#lx", addr);
	write_early_console(addr);
}

/* The Guest asked to reboot: start over as a fresh process with the same arguments. */
static void restart_guest(char *argv[])
{
	reset_all_devices();
	restore_terminal();
	close_range(3, ~0U, 0); /* the new instance opens and INITIALIZEs afresh */
	execv(argv[0], argv);
	err(1, "Could not exec %s", argv[0]);
}

static void run_guest(char *argv[])
{
	for (;;) {
		unsigned long notify;
		ssize_t r = pread(lguest_fd, &notify, sizeof(notify), 0);
		if (r == (ssize_t)sizeof(notify)) {
			handle_notify(notify);
		} else if (r < 0 && errno == ENOENT) {
			char reason[1024] = { 0 };
			if (pread(lguest_fd, reason, sizeof(reason) - 1, 0) < 0)
				err(1, "Reading why the guest died");
			errx(1, "%s", reason);
		} else if (r < 0 && errno == ERESTART) {
			restart_guest(argv);
		} else {
			err(1, "Running guest failed");
		}
	}
}

/* Helpers share our memory but not our exit: take them down with us. */
static void stop_helpers_at_exit(void)
{
	if (getpid() == launcher_pid)
		kill_helpers();
}

int main(int argc, char *argv[])
{
	static const struct option opts[] = {
		{ "verbose", no_argument, NULL, 'v' },
		{ "block", required_argument, NULL, 'b' },
		{ "rng", no_argument, NULL, 'r' },
		{ "tunnet", required_argument, NULL, 't' },
		{ "initrd", required_argument, NULL, 'i' },
		{ "private", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct dev_opt devs[argc];
	unsigned int ndevs = 0;
	const char *initrd = NULL;
	bool private_mem = false;
	int c;

	/* '+': options end at the memory size, so kernel arguments are never taken as ours. */
	while ((c = getopt_long(argc, argv, "+v", opts, NULL)) != -1) {
		switch (c) {
		case 'v':
			verbose_on = true;
			break;
		case 'b':
		case 'r':
		case 't':
			devs[ndevs++] = (struct dev_opt){ (char)c, optarg };
			break;
		case 'i':
			initrd = optarg;
			break;
		case 'p':
			private_mem = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			usage();
		}
	}
	if (optind + 2 > argc)
		usage();

	unsigned long mem = parse_mem(argv[optind]);
	launcher_pid = getpid();
	map_guest_memory(mem, private_mem);
	setup_device_page();
	for (unsigned int i = 0; i < ndevs; i++) {
		if (devs[i].kind == 'b')
			setup_block(devs[i].arg);
		else if (devs[i].kind == 't')
			setup_tunnet(devs[i].arg);
		else
			setup_rng();
	}
	setup_console(); /* always present, always last */

	unsigned long start = load_kernel(argv[optind + 1]);
	unsigned long initrd_len = initrd ? load_initrd(initrd, mem) : 0;
	setup_boot_params(mem, initrd_len, argv + optind + 2);

	atexit(stop_helpers_at_exit);
	tell_kernel(start);
	verbose("Guest started at %#lx, pfnlimit %#lx\n", start, guest_limit / PAGE);
	run_guest(argv);
}
