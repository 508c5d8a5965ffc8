/*
 * The launcher's block request path (native/launcher/vring.c and block.c,
 * linked in unchanged) against a Guest that rewrites a descriptor at the
 * worst possible moment.  Built and run by test_launcher_race.py.
 *
 * This file stands in for memory.c and devices.c.  Guest memory is a
 * window of RAM followed by one page that is not Guest memory (the
 * canary).  check_pointer() checks exactly as memory.c does; then, once,
 * it does what a Guest on another CPU may do at that instant: it rewrites
 * the length of the status descriptor it has just passed to one that
 * reaches the canary page.  One block request (header, status byte; a
 * type no device knows, so serving it touches nothing but the status) is
 * then served by block.c's own service routine.
 *
 * Prints one line: "inside=S outside=C", the status byte where the Guest
 * put it and the first canary byte (0 unless the launcher wrote there).
 */
#include "launcher.h"

#include <err.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define RAM (1UL << 20)
#define RING_GPA 0x10000UL
#define HDR_GPA 0x20000UL
#define STATUS_GPA 0x20100UL
#define BLK_T_UNKNOWN 0xFF

bool verbose_on;
unsigned char *guest_base;
unsigned long guest_limit, guest_max;

static struct vring_desc *racing;  /* the descriptor the "Guest" rewrites, until it has */
static uint32_t racing_len;

void *check_pointer(uint64_t gpa, uint64_t len)
{
	if (gpa >= guest_limit || len > guest_limit - gpa)
		errx(1, "Guest buffer %#llx (len %llu) is outside guest memory (limit %#lx)",
		     (unsigned long long)gpa, (unsigned long long)len, guest_limit);
	if (racing && gpa == racing->addr) {
		*(volatile uint32_t *)&racing->len = racing_len;
		racing = NULL;
	}
	return guest_base + gpa;
}

/* devices.c, as much as setup_block() needs: one device with one queue. */
static struct device the_device = { .name = "block" };
static struct vq the_vq;

struct device *new_device(const char *name, uint8_t type)
{
	(void)name;
	(void)type;
	return &the_device;
}

void add_virtqueue(struct device *dev, service_fn service)
{
	the_vq.dev = dev;
	the_vq.num = VRING_NUM;
	the_vq.service = service;
	vring_init(&the_vq.vring, VRING_NUM, guest_base + RING_GPA, PAGE);
}

void add_feature(struct device *dev, unsigned int bit)
{
	(void)dev;
	(void)bit;
}

void set_config(struct device *dev, const void *conf, unsigned int len)
{
	(void)dev;
	(void)conf;
	(void)len;
}

int main(int argc, char *argv[])
{
	if (argc != 2)
		errx(2, "usage: %s BLOCK-FILE", argv[0]);
	guest_base = mmap(NULL, RAM + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (guest_base == MAP_FAILED)
		err(1, "mmap");
	guest_limit = guest_max = RAM;
	setup_block(argv[1]);

	struct vring *vr = &the_vq.vring;
	memcpy(guest_base + HDR_GPA, &(uint32_t[4]){ BLK_T_UNKNOWN, 0, 0, 0 }, 16);
	vr->desc[0] = (struct vring_desc){ HDR_GPA, 16, VRING_DESC_F_NEXT, 1 };
	vr->desc[1] = (struct vring_desc){ STATUS_GPA, 1, VRING_DESC_F_WRITE, 0 };
	vr->avail->ring[0] = 0;
	vr->avail->idx = 1;
	racing = &vr->desc[1];
	racing_len = (uint32_t)(RAM - STATUS_GPA + 1);   /* the status byte's end: the canary's first byte */

	the_vq.service(&the_vq);
	printf("inside=%u outside=%u\n", guest_base[STATUS_GPA], guest_base[RAM]);
	return 0;
}
