/*
 * The device side of a legacy vring, as run by a queue's helper process.
 *
 * The helper takes descriptor chains off the avail ring, services them and
 * puts them on the used ring.  It interrupts the Guest only when it is about
 * to sleep (and the Guest did not ask for silence), and it tells the Guest
 * not to kick while it is awake (VRING_USED_F_NO_NOTIFY), re-checking the
 * ring after clearing that flag so a kick cannot be lost.
 */
#include "launcher.h"

#include <err.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

int lguest_fd = -1;

/* Guest and helpers run concurrently on different CPUs: order the ring accesses. */
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

void trigger_irq(struct vq *vq)
{
	if (!vq->pending_used)
		return;
	vq->pending_used = 0;
	mb(); /* read the Guest's flag only after our used-ring updates are visible */
	if (vq->vring.avail->flags & VRING_AVAIL_F_NO_INTERRUPT)
		return;
	unsigned long req[2] = { LHREQ_IRQ, vq->irq };
	if (write(lguest_fd, req, sizeof(req)) == 0)
		return;
	/*
	 * ENOENT: the Guest is dead.  The launcher's own read says why and then
	 * stops us; exiting here would race it and replace the Guest's last
	 * words with ours.
	 */
	if (errno == ENOENT)
		for (;;)
			pause();
	err(1, "Triggering irq %u", vq->irq);
}

static void wait_for_kick(struct vq *vq)
{
	while (vq->last_avail == *(volatile uint16_t *)&vq->vring.avail->idx) {
		trigger_irq(vq);
		vq->vring.used->flags &= ~VRING_USED_F_NO_NOTIFY;
		mb(); /* flag cleared before the re-check, or a kick could slip between */
		if (vq->last_avail != *(volatile uint16_t *)&vq->vring.avail->idx) {
			vq->vring.used->flags |= VRING_USED_F_NO_NOTIFY;
			break;
		}
		uint64_t count;
		if (read(vq->eventfd, &count, sizeof(count)) != sizeof(count))
			err(1, "Reading eventfd of %s queue %u", vq->dev->name, vq->index);
		vq->vring.used->flags |= VRING_USED_F_NO_NOTIFY;
	}
}

/*
 * A descriptor lives in Guest memory, and the Guest may rewrite it while we
 * look.  Every field is read exactly once, into our own copy, and only the
 * copy is checked and used: a length read again after the bounds check could
 * have grown, and the status byte at its end would land outside guest RAM.
 */
static struct vring_desc read_desc(const struct vring_desc *p)
{
	const volatile struct vring_desc *v = p;
	struct vring_desc d;
	d.addr = v->addr;
	d.len = v->len;
	d.flags = v->flags;
	d.next = v->next;
	return d;
}

static void add_iov(struct vq *vq, struct iovec iov[], unsigned int *n, const struct vring_desc *d)
{
	if (*n >= vq->num)
		errx(1, "Descriptor chain on %s queue %u is longer than %u", vq->dev->name, vq->index, vq->num);
	iov[*n].iov_base = check_pointer(d->addr, d->len);
	iov[*n].iov_len = d->len;
	(*n)++;
}

/*
 * Next available chain as iovecs: `*out` device-readable ones first, then
 * `*in` device-writable ones.  Follows one level of indirect table.
 */
unsigned int wait_for_vq_desc(struct vq *vq, struct iovec iov[], unsigned int *out, unsigned int *in)
{
	wait_for_kick(vq);
	rmb(); /* the ring entry and descriptors were written before avail->idx */
	unsigned int head = vq->vring.avail->ring[vq->last_avail % vq->num];
	vq->last_avail++;
	if (head >= vq->num)
		errx(1, "Guest says index %u is available on %s queue %u", head, vq->dev->name, vq->index);

	struct vring_desc *table = vq->vring.desc;
	unsigned int max = vq->num, i = head, steps = 0, n = 0;
	bool indirect = false;
	*out = *in = 0;
	for (;;) {
		const struct vring_desc copy = read_desc(&table[i]), *d = &copy;
		if (d->flags & VRING_DESC_F_INDIRECT) {
			if (indirect || d->len % sizeof(struct vring_desc) || d->len == 0)
				errx(1, "Bad indirect descriptor on %s queue %u", vq->dev->name, vq->index);
			table = check_pointer(d->addr, d->len);
			max = d->len / sizeof(struct vring_desc);
			i = 0;
			steps = 0;
			indirect = true;
			continue;
		}
		if (d->flags & VRING_DESC_F_WRITE) {
			(*in)++;
		} else {
			if (*in)
				errx(1, "Readable descriptor after writable on %s queue %u", vq->dev->name, vq->index);
			(*out)++;
		}
		add_iov(vq, iov, &n, d);
		if (!(d->flags & VRING_DESC_F_NEXT))
			break;
		i = d->next;
		if (i >= max || ++steps > max)
			errx(1, "Looped or bad descriptor chain on %s queue %u", vq->dev->name, vq->index);
	}
	return head;
}

void add_used(struct vq *vq, unsigned int head, unsigned int len)
{
	struct vring_used_elem *e = &vq->vring.used->ring[vq->vring.used->idx % vq->num];
	e->id = head;
	e->len = len;
	wmb(); /* the element must be visible before the index that publishes it */
	vq->vring.used->idx++;
	vq->pending_used++;
}

void add_used_and_trigger(struct vq *vq, unsigned int head, unsigned int len)
{
	add_used(vq, head, len);
	trigger_irq(vq);
}

size_t iov_total(const struct iovec iov[], unsigned int n)
{
	size_t len = 0;
	for (unsigned int i = 0; i < n; i++)
		len += iov[i].iov_len;
	return len;
}

/* Take up to `len` bytes off the front of iov[] (copying them to dest if non-NULL). */
size_t iov_consume(struct iovec iov[], unsigned int n, void *dest, size_t len)
{
	size_t done = 0;
	for (unsigned int i = 0; i < n && done < len; i++) {
		size_t take = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
		if (dest)
			memcpy((char *)dest + done, iov[i].iov_base, take);
		iov[i].iov_base = (char *)iov[i].iov_base + take;
		iov[i].iov_len -= take;
		done += take;
	}
	return done;
}
