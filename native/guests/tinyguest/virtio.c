/*
 * Virtio on the lguest device page.  The page right above RAM holds one
 * record per device: a 5-byte header, the queues' {num, irq, pfn}, the
 * host's feature bits, the bits we accept, and the config space, packed
 * back to back with no alignment.  A record of type 0 ends the list.
 *
 * The rings are legacy virtio rings at pfn * 4096, laid out with 4096-byte
 * alignment: descriptors, then the avail ring, then (on the next page
 * boundary) the used ring the host fills in.
 */
#include "tinyguest.h"

#define MAX_DEVS 8

/* The IRQ lines our bound queues use, so scenarios counting other
 * interrupts can tell them apart. */
uint32_t virtio_irq_lines;

static struct virtio_dev devs[MAX_DEVS];
static unsigned ndevs;
static int scanned;

static uint32_t rd16(const uint8_t *p) { return p[0] | (p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return rd16(p) | (rd16(p + 2) << 16); }

static uint8_t *features_offered(struct virtio_dev *d) { return d->rec + 5 + 8 * d->num_vq; }
static uint8_t *features_accepted(struct virtio_dev *d) { return features_offered(d) + d->feature_len; }
uint8_t *virtio_config(struct virtio_dev *d) { return features_accepted(d) + d->feature_len; }

static void scan(void)
{
	scanned = 1;
	map_io(mem_bytes, PAGE_SIZE);
	uint8_t *page = VA(mem_bytes);
	unsigned off = 0;
	while (off + 5 <= PAGE_SIZE && page[off] && ndevs < MAX_DEVS) {
		struct virtio_dev *d = &devs[ndevs++];
		d->rec = page + off;
		d->type = d->rec[0];
		d->num_vq = d->rec[1];
		d->feature_len = d->rec[2];
		d->config_len = d->rec[3];
		off += 5 + 8 * d->num_vq + 2 * d->feature_len + d->config_len;
	}
}

struct virtio_dev *virtio_find(uint8_t type)
{
	if (!scanned)
		scan();
	for (unsigned i = 0; i < ndevs; i++)
		if (devs[i].type == type)
			return &devs[i];
	return 0;
}

/* Only the first 32 feature bits matter to a 3.x Guest. */
uint32_t virtio_offered(struct virtio_dev *d)
{
	uint32_t f = 0;
	for (unsigned i = 0; i < d->feature_len && i < 4; i++)
		f |= (uint32_t)features_offered(d)[i] << (8 * i);
	return f;
}

static void vq_setup(struct virtqueue *vq, const uint8_t *cfg)
{
	vq->num = rd16(cfg);
	vq->irq = rd16(cfg + 2);
	vq->pfn = rd32(cfg + 4);
	if (vq->irq < LGUEST_IRQS)
		virtio_irq_lines |= 1u << vq->irq;
	uint32_t ring = vq->pfn * PAGE_SIZE;
	uint32_t used_off = (16 * vq->num + 2 * (3 + vq->num) + LGUEST_VRING_ALIGN - 1)
			    & ~(LGUEST_VRING_ALIGN - 1);
	map_io(ring, used_off + 6 + 8 * vq->num);
	vq->desc = VA(ring);
	vq->avail = VA(ring + 16 * vq->num);
	vq->used = VA(ring + used_off);
	for (unsigned i = 0; i + 1 < vq->num; i++)
		vq->desc[i].next = i + 1;
	vq->free_head = 0;
	vq->num_free = vq->num;
	vq->last_used = vq->used->idx;
	vq->avail->flags = 0;       /* yes, interrupt us when you use a buffer */
}

/*
 * The status dance: say we noticed the device and have a driver, accept
 * features, set up the queues, say we're ready, then tell the host the
 * status changed by notifying the address of the record.  That one NOTIFY
 * is when the launcher starts serving the device.
 */
uint32_t virtio_start(struct virtio_dev *d, uint32_t wanted)
{
	d->rec[4] = VIRTIO_CONFIG_S_ACKNOWLEDGE;
	d->rec[4] |= VIRTIO_CONFIG_S_DRIVER;
	uint32_t accepted = virtio_offered(d) & wanted;
	for (unsigned i = 0; i < d->feature_len; i++)
		features_accepted(d)[i] = i < 4 ? (uint8_t)(accepted >> (8 * i)) : 0;
	for (unsigned q = 0; q < d->num_vq && q < 4; q++)
		vq_setup(&d->vq[q], d->rec + 5 + 8 * q);
	mb();
	d->rec[4] |= VIRTIO_CONFIG_S_DRIVER_OK;
	mb();
	hcall(LHCALL_NOTIFY, PA(d->rec), 0, 0, 0);
	return accepted;
}

/* Chain the buffers (device-readable first, by convention) into free
 * descriptors and publish the chain's head in the avail ring. */
int vq_add(struct virtqueue *vq, const struct vbuf *bufs, unsigned n)
{
	if (n == 0 || n > vq->num_free)
		return -1;
	unsigned head = vq->free_head, i = head, last = head;
	for (unsigned k = 0; k < n; k++) {
		struct vring_desc *dsc = &vq->desc[i];
		dsc->addr = PA(bufs[k].addr);
		dsc->len = bufs[k].len;
		dsc->flags = (bufs[k].device_writes ? VRING_DESC_F_WRITE : 0)
			     | (k + 1 < n ? VRING_DESC_F_NEXT : 0);
		last = i;
		i = dsc->next;
	}
	vq->free_head = vq->desc[last].next;
	vq->num_free -= n;
	vq->avail->ring[vq->avail->idx % vq->num] = head;
	mb();
	vq->avail->idx++;
	return head;
}

/* Tell the host about new buffers, unless it said it's polling anyway. */
void vq_kick(struct virtqueue *vq)
{
	mb();
	if (vq->used->flags & VRING_USED_F_NO_NOTIFY) {
		vq->kicks_suppressed++;
		return;
	}
	vq->kicks++;
	hcall(LHCALL_NOTIFY, vq->pfn * PAGE_SIZE, 0, 0, 0);
}

/* Take one used buffer chain back; its descriptors become free again. */
int vq_get_used(struct virtqueue *vq, uint32_t *len)
{
	if (vq->last_used == vq->used->idx)
		return -1;
	mb();
	volatile struct vring_used_elem *e = &vq->used->ring[vq->last_used % vq->num];
	unsigned id = e->id;
	if (len)
		*len = e->len;
	vq->last_used++;
	unsigned i = id, n = 1;
	while (vq->desc[i].flags & VRING_DESC_F_NEXT) {
		i = vq->desc[i].next;
		n++;
	}
	vq->desc[i].next = vq->free_head;
	vq->free_head = id;
	vq->num_free += n;
	return id;
}

/* Sleep in HALT until the queue's interrupt says a buffer came back. */
int vq_wait_used(struct virtqueue *vq, uint32_t *len)
{
	uint32_t flags = irq_save();
	int id;
	while ((id = vq_get_used(vq, len)) < 0)
		halt();
	irq_restore(flags);
	return id;
}
