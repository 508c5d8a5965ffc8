/*
 * Loading the Guest kernel (ELF vmlinux or bzImage), the initrd, and the
 * boot_params "zero page" plus command line (lguest-abi.md §2.3, §2.4).
 *
 * The real-mode setup code of a bzImage never runs: the Guest enters its
 * 32-bit code directly, so the launcher writes only the handful of
 * boot_params fields the lguest Guest reads, at their fixed offsets.
 */
#include "launcher.h"

#include <elf.h>
#include <err.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* boot_params offsets (lguest-abi.md §2.4). */
enum {
	BP_E820_ENTRIES = 0x1E8,
	BP_SETUP_SECTS = 0x1F1,
	BP_HDR_MAGIC = 0x202,
	BP_VERSION = 0x206,
	BP_TYPE_OF_LOADER = 0x210,
	BP_LOADFLAGS = 0x211,
	BP_CODE32_START = 0x214,
	BP_RAMDISK_IMAGE = 0x218,
	BP_RAMDISK_SIZE = 0x21C,
	BP_CMD_LINE_PTR = 0x228,
	BP_KERNEL_ALIGNMENT = 0x230,
	BP_HARDWARE_SUBARCH = 0x23C,
	BP_E820_MAP = 0x2D0,
};
#define CMDLINE_GPA 0x1000UL
#define BZIMAGE_LOAD 0x100000UL

static void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

static void read_exact(int fd, void *buf, size_t len, off_t off, const char *path)
{
	ssize_t r = pread(fd, buf, len, off);
	if (r < 0)
		err(1, "Reading %s", path);
	if ((size_t)r != len)
		errx(1, "%s is too short for a kernel (%zd bytes at offset %lld)", path, r, (long long)off);
}

/* vmlinux: each PT_LOAD segment's file bytes at its physical address; BSS is the kernel's job. */
static unsigned long load_elf(int fd, const Elf32_Ehdr *eh, const char *path)
{
	if (eh->e_type != ET_EXEC || eh->e_machine != EM_386 || eh->e_ident[EI_CLASS] != ELFCLASS32
	    || eh->e_phentsize != sizeof(Elf32_Phdr) || eh->e_phnum < 1 || eh->e_phnum > 65536U / sizeof(Elf32_Phdr))
		errx(1, "%s: malformed ELF header (need an i386 ET_EXEC kernel)", path);

	Elf32_Phdr ph[eh->e_phnum];
	read_exact(fd, ph, sizeof(ph), eh->e_phoff, path);
	for (unsigned int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		verbose("Section %u: size %u addr %#x\n", i, ph[i].p_filesz, ph[i].p_paddr);
		void *dst = check_pointer(ph[i].p_paddr, ph[i].p_filesz);
		load_file_at(fd, dst, ph[i].p_filesz, ph[i].p_offset, path);
	}
	return eh->e_entry;
}

/* bzImage: skip the boot sector and setup sectors, copy the rest to 1 MiB, enter at code32_start. */
static unsigned long load_bzimage(int fd, const char *path)
{
	unsigned char hdr[0x240];
	read_exact(fd, hdr, sizeof(hdr), 0, path);
	if (memcmp(hdr + BP_HDR_MAGIC, "HdrS", 4) != 0)
		errx(1, "%s is neither an ELF vmlinux nor a bzImage", path);

	off_t skip = (hdr[BP_SETUP_SECTS] + 1) * 512;
	struct stat st;
	if (fstat(fd, &st) != 0)
		err(1, "Examining %s", path);
	if (st.st_size <= skip)
		errx(1, "%s: bzImage has no protected-mode code after its %lld setup bytes", path, (long long)skip);
	unsigned long len = (unsigned long)(st.st_size - skip);
	load_file_at(fd, check_pointer(BZIMAGE_LOAD, len), len, skip, path);

	uint32_t start;
	memcpy(&start, hdr + BP_CODE32_START, 4);
	verbose("bzImage: %lu bytes at %#lx, code32_start %#x\n", len, BZIMAGE_LOAD, start);
	return start;
}

unsigned long load_kernel(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		err(1, "Opening %s", path);
	Elf32_Ehdr eh;
	read_exact(fd, &eh, sizeof(eh), 0, path);
	unsigned long start = memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 ? load_elf(fd, &eh, path) : load_bzimage(fd, path);
	close(fd);
	return start;
}

/* The initrd goes at the top of RAM, page-aligned; returns the page-aligned length. */
unsigned long load_initrd(const char *path, unsigned long mem)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		err(1, "Opening initrd %s", path);
	struct stat st;
	if (fstat(fd, &st) != 0)
		err(1, "Examining initrd %s", path);
	unsigned long len = ((unsigned long)st.st_size + PAGE - 1) & ~(PAGE - 1);
	if (len >= mem)
		errx(1, "Initrd %s (%lld bytes) does not fit in guest memory", path, (long long)st.st_size);
	load_file_at(fd, from_guest_phys(mem - len), (unsigned long)st.st_size, 0, path);
	close(fd);
	verbose("Mapped initrd %s size=%lu @ %#lx\n", path, len, mem - len);
	return len;
}

void setup_boot_params(unsigned long mem, unsigned long initrd_len, char *const args[])
{
	unsigned char *bp = from_guest_phys(0);

	bp[BP_E820_ENTRIES] = 1;
	put64(bp + BP_E820_MAP, 0);         /* addr */
	put64(bp + BP_E820_MAP + 8, mem);   /* size */
	put32(bp + BP_E820_MAP + 16, 1);    /* E820_RAM */
	put16(bp + BP_VERSION, 0x0207);     /* >= 2.07: the kernel honours hardware_subarch */
	bp[BP_LOADFLAGS] |= 0x40;           /* KEEP_SEGMENTS: the Guest cannot reload its segments */
	put32(bp + BP_CMD_LINE_PTR, CMDLINE_GPA);
	put32(bp + BP_KERNEL_ALIGNMENT, 0x01000000);
	put32(bp + BP_HARDWARE_SUBARCH, 1); /* X86_SUBARCH_LGUEST routes startup to lguest_entry */
	if (initrd_len) {
		put32(bp + BP_RAMDISK_IMAGE, (uint32_t)(mem - initrd_len));
		put32(bp + BP_RAMDISK_SIZE, (uint32_t)initrd_len);
		bp[BP_TYPE_OF_LOADER] = 0xFF;
	}

	/* The kernel arguments, joined by single spaces, NUL-terminated, right after the zero page. */
	char *p = from_guest_phys(CMDLINE_GPA);
	*p = '\0';
	for (unsigned int i = 0; args[i]; i++) {
		size_t n = strlen(args[i]);
		if (to_guest_phys(p) + n + 2 > mem)
			errx(1, "Kernel command line does not fit in guest memory");
		if (i)
			*p++ = ' ';
		memcpy(p, args[i], n + 1);
		p += n;
	}
	verbose("Kernel command line: '%s'\n", (char *)from_guest_phys(CMDLINE_GPA));
}
