/*
 * A synchronous virtio block driver: one request in flight, each request
 * a chain of header (device reads), data, and a status byte (device writes).
 */
#include "tinyguest.h"

struct blk_outhdr {
	uint32_t type, ioprio;
	uint64_t sector;
};

static struct virtio_dev *blk;
static int flush_ok;

int blk_init(void)
{
	if (blk)
		return 0;
	struct virtio_dev *d = virtio_find(VIRTIO_ID_BLOCK);
	if (!d || d->num_vq < 1 || d->config_len < 8)
		return -1;
	uint32_t acc = virtio_start(d, 1u << VIRTIO_BLK_F_FLUSH);
	flush_ok = !!(acc & (1u << VIRTIO_BLK_F_FLUSH));
	blk = d;
	return 0;
}

uint64_t blk_capacity(void)
{
	uint64_t cap;
	memcpy(&cap, virtio_config(blk), sizeof(cap));
	return cap;
}

/* The request queue itself, for a scenario that writes its own descriptors. */
struct virtqueue *blk_queue(void)
{
	return &blk->vq[0];
}

int blk_has_flush(void)
{
	return flush_ok;
}

/* Returns the device's status byte (VIRTIO_BLK_S_OK = 0), or -1 if the
 * host handed back something we never asked for. */
int blk_io(uint32_t type, uint32_t sector, void *buf, uint32_t nsec)
{
	static struct blk_outhdr hdr;
	static volatile uint8_t status;
	struct vbuf b[3];
	unsigned n = 0;

	hdr.type = type;
	hdr.ioprio = 0;
	hdr.sector = sector;
	status = 0xFF;
	b[n++] = (struct vbuf){ &hdr, sizeof(hdr), 0 };
	if (nsec)
		b[n++] = (struct vbuf){ buf, nsec * SECTOR_SIZE, type == VIRTIO_BLK_T_IN };
	b[n++] = (struct vbuf){ (void *)&status, 1, 1 };

	struct virtqueue *vq = &blk->vq[0];
	int head = vq_add(vq, b, n);
	vq_kick(vq);
	if (vq_wait_used(vq, 0) != head)
		return -1;
	return status;
}
