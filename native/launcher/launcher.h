/*
 * The lguest launcher: shared declarations.
 *
 * The launcher owns the Guest's memory (a window of its own address space),
 * loads a kernel into it, describes virtio devices on the lguest device page,
 * hands the memory to /dev/lguest with LHREQ_INITIALIZE and then runs the
 * Guest by reading the device.  Device queues are serviced by helper
 * processes that share the launcher's memory (clone(CLONE_VM)).
 *
 * Every word exchanged with /dev/lguest is an `unsigned long`, so a 32-bit
 * build speaks 4-byte words and a 64-bit build 8-byte words.
 */
#ifndef LAUNCHER_H
#define LAUNCHER_H

#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <linux/virtio_ring.h>

/* /dev/lguest write() request codes (lguest-abi.md §1.3). */
enum { LHREQ_INITIALIZE = 0, LHREQ_IRQ = 2, LHREQ_EVENTFD = 4 };

#define PAGE 4096UL
#define DEVICE_PAGES 256          /* 1 MiB of device area above RAM */
#define VRING_NUM 256             /* every queue the launcher makes has 256 entries */
#define VRING_PAGES 3             /* vring_size(256, 4096) = 10246 bytes */
#define HELPER_STACK (32 * 1024)  /* stack of each queue's helper process */

extern bool verbose_on;
#define verbose(...) do { if (verbose_on) fprintf(stderr, __VA_ARGS__); } while (0)

/* ---- memory.c: the Guest-physical window ---- */
extern unsigned char *guest_base;  /* launcher address of gpa 0 */
extern unsigned long guest_limit;  /* end of what the Guest may touch: RAM + device pages used so far */
extern unsigned long guest_max;    /* end of the backed window: RAM + DEVICE_PAGES */
void map_guest_memory(unsigned long mem, bool private_mem);
bool private_memory(void);
void *from_guest_phys(unsigned long gpa);
unsigned long to_guest_phys(const void *addr);
void *check_pointer(uint64_t gpa, uint64_t len);
void *get_pages(unsigned int n);
void load_file_at(int fd, void *addr, unsigned long len, off_t offset, const char *what);

/* ---- kernel.c: kernel, initrd, boot_params ---- */
unsigned long load_kernel(const char *path);
unsigned long load_initrd(const char *path, unsigned long mem);
void setup_boot_params(unsigned long mem, unsigned long initrd_len, char *const args[]);

/* ---- devices.c: the device page and each device's queues ---- */
struct vq;
typedef void (*service_fn)(struct vq *vq);

struct vq {
	struct vq *next;
	struct device *dev;
	unsigned int index, num, irq;
	unsigned long pfn;
	struct vring vring;
	uint16_t last_avail;       /* next avail entry we will consume */
	unsigned int pending_used; /* used entries the Guest has not been interrupted for */
	service_fn service;
	pid_t helper;              /* 0 while the device is stopped */
	void *stack;
	int eventfd;               /* the helper's copy; the launcher closes its own */
};

struct device {
	struct device *next;
	const char *name;
	unsigned char *desc;       /* this device's record on the device page */
	unsigned int num_vq;
	struct vq *vqs;
	bool running;
	void (*start)(struct device *dev); /* optional: once the Guest has accepted features, before the helpers */
	void *priv;
};

void setup_device_page(void);
struct device *new_device(const char *name, uint8_t type);
void add_virtqueue(struct device *dev, service_fn service);
void add_feature(struct device *dev, unsigned int bit);
void set_config(struct device *dev, const void *conf, unsigned int len);
uint8_t *device_status(struct device *dev);
bool feature_accepted(const struct device *dev, unsigned int bit);
bool handle_device_notify(unsigned long addr);
void reset_all_devices(void);
void kill_helpers(void);

/* ---- vring.c: servicing a queue from a helper ---- */
extern int lguest_fd;
unsigned int wait_for_vq_desc(struct vq *vq, struct iovec iov[], unsigned int *out, unsigned int *in);
void add_used(struct vq *vq, unsigned int head, unsigned int len);
void trigger_irq(struct vq *vq);
void add_used_and_trigger(struct vq *vq, unsigned int head, unsigned int len);
size_t iov_consume(struct iovec iov[], unsigned int n, void *dest, size_t len);
size_t iov_total(const struct iovec iov[], unsigned int n);

/* ---- console.c, block.c, rng.c, net.c ---- */
void setup_console(void);
void restore_terminal(void);
void setup_block(const char *path);
void setup_rng(void);
void setup_tunnet(const char *arg);

#endif
