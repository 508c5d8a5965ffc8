/*
 * Guest memory: RAM plus the 1 MiB device area, between two guard pages.
 *
 * Default: the window is a MAP_SHARED memfd, so a userspace host can map the
 * very same pages (shared mode, no copying).  --private reproduces the
 * historical launcher exactly: a private /dev/zero mapping with the kernel
 * and initrd files mapped privately on top, which a host can only mirror.
 */
#include "launcher.h"

#include <err.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

unsigned char *guest_base;
unsigned long guest_limit, guest_max;
static bool private_mode;

bool private_memory(void)
{
	return private_mode;
}

static unsigned char *map_shared_window(unsigned long span, unsigned long size)
{
	/* Reserve the whole span inaccessible, then lay the memfd over the middle. */
	unsigned char *start = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (start == MAP_FAILED)
		err(1, "Reserving %lu bytes of guest address space", span);
	int fd = memfd_create("lguest-guest-ram", MFD_CLOEXEC);
	if (fd < 0)
		err(1, "Creating guest memory (memfd)");
	if (ftruncate(fd, size) != 0)
		err(1, "Sizing guest memory to %lu bytes", size);
	if (mmap(start + PAGE, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
		err(1, "Mapping guest memory");
	close(fd); /* the mapping keeps the pages; a host finds them via /proc/<pid>/map_files */
	return start;
}

static unsigned char *map_private_window(unsigned long span, unsigned long size)
{
	int fd = open("/dev/zero", O_RDONLY);
	if (fd < 0)
		err(1, "Opening /dev/zero");
	unsigned char *start = mmap(NULL, span, PROT_NONE, MAP_PRIVATE, fd, 0);
	if (start == MAP_FAILED)
		err(1, "Mapping %lu bytes of /dev/zero", span);
	close(fd);
	if (mprotect(start + PAGE, size, PROT_READ | PROT_WRITE) != 0)
		err(1, "Enabling guest memory");
	return start;
}

void map_guest_memory(unsigned long mem, bool private_mem)
{
	unsigned long size = mem + DEVICE_PAGES * PAGE;
	unsigned long span = size + 2 * PAGE;

	private_mode = private_mem;
	unsigned char *start = private_mem ? map_private_window(span, size) : map_shared_window(span, size);
	guest_base = start + PAGE;
	guest_limit = mem;
	guest_max = size;
	verbose("Guest memory %lu bytes (+%lu device) at %p, %s\n", mem, DEVICE_PAGES * PAGE,
		(void *)guest_base, private_mem ? "private" : "shared memfd");
}

void *from_guest_phys(unsigned long gpa)
{
	return guest_base + gpa;
}

unsigned long to_guest_phys(const void *addr)
{
	return (unsigned long)((const unsigned char *)addr - guest_base);
}

/* The Guest names buffers by gpa; anything outside what it may touch is fatal. */
void *check_pointer(uint64_t gpa, uint64_t len)
{
	if (gpa >= guest_limit || len > guest_limit - gpa)
		errx(1, "Guest buffer %#llx (len %llu) is outside guest memory (limit %#lx)",
		     (unsigned long long)gpa, (unsigned long long)len, guest_limit);
	return from_guest_phys((unsigned long)gpa);
}

/* Device pages come from a bump pointer above RAM; the memory is already zero. */
void *get_pages(unsigned int n)
{
	if (guest_limit + n * PAGE > guest_max)
		errx(1, "Not enough memory for devices");
	void *addr = from_guest_phys(guest_limit);
	guest_limit += n * PAGE;
	return addr;
}

/*
 * Put `len` bytes of a file at `addr`.  In private mode try a private file
 * mapping first, as the historical launcher did (only page-aligned offsets
 * can be mapped); shared memory must stay one memfd, so it always copies.
 */
void load_file_at(int fd, void *addr, unsigned long len, off_t offset, const char *what)
{
	if (private_mode && mmap(addr, len, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE, fd, offset) != MAP_FAILED)
		return;
	unsigned long done = 0;
	while (done < len) {
		ssize_t r = pread(fd, (unsigned char *)addr + done, len - done, offset + (off_t)done);
		if (r < 0)
			err(1, "Reading %s at offset %lld", what, (long long)(offset + (off_t)done));
		if (r == 0)
			errx(1, "Reading %s: file ended %lu bytes early", what, len - done);
		done += (unsigned long)r;
	}
}
