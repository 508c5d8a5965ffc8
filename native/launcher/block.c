/*
 * The virtio block device: one queue, backed by a file.
 *
 * Each request is a chain: a readable header {type, ioprio, sector}, the
 * data buffers (readable for writes, writable for reads) and a last
 * writable status byte.  Helpers share the file's open description, so all
 * I/O uses explicit offsets (preadv/pwritev), never the shared position.
 */
#include "launcher.h"

#include <err.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ids.h>

struct block_state {
	int fd;
	uint64_t len;
};

/* The config space the launcher offers stops before `geometry`: capacity, size_max, seg_max. */
struct block_config {
	uint64_t capacity;
	uint32_t size_max;
	uint32_t seg_max;
} __attribute__((packed));

static uint8_t do_request(struct block_state *b, const struct virtio_blk_outhdr *hdr, struct iovec *data,
			  unsigned int n, size_t *written)
{
	size_t len = iov_total(data, n);
	uint64_t off = hdr->sector * 512ULL;
	ssize_t r;

	*written = 0;
	switch (hdr->type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		if (off > b->len || len > b->len - off) {
			warnx("Block request past the end: sector %llu len %zu", (unsigned long long)hdr->sector, len);
			return VIRTIO_BLK_S_IOERR;
		}
		if (hdr->type == VIRTIO_BLK_T_IN) {
			r = preadv(b->fd, data, (int)n, (off_t)off);
			if (r >= 0)
				*written = (size_t)r;
		} else {
			r = pwritev(b->fd, data, (int)n, (off_t)off);
		}
		return r == (ssize_t)len ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
	case VIRTIO_BLK_T_FLUSH:
		return fdatasync(b->fd) == 0 ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
	default:
		return VIRTIO_BLK_S_UNSUPP;
	}
}

static void blk_request(struct vq *vq)
{
	struct iovec iov[VRING_NUM];
	unsigned int out, in;
	unsigned int head = wait_for_vq_desc(vq, iov, &out, &in);
	struct virtio_blk_outhdr hdr;

	if (!in || iov_total(iov, out) < sizeof(hdr))
		errx(1, "Bad virtblk request %u: out=%u in=%u", head, out, in);
	iov_consume(iov, out, &hdr, sizeof(hdr));
	/* The status byte is the last byte of the last writable buffer. */
	struct iovec *last = &iov[out + in - 1];
	if (!last->iov_len)
		errx(1, "Bad virtblk request %u: empty status buffer", head);
	uint8_t *status = (uint8_t *)last->iov_base + last->iov_len - 1;
	last->iov_len--;

	size_t written;
	if (hdr.type == VIRTIO_BLK_T_OUT)
		*status = do_request(vq->dev->priv, &hdr, iov, out, &written);
	else
		*status = do_request(vq->dev->priv, &hdr, iov + out, in, &written);
	add_used(vq, head, (unsigned int)(written + 1));
}

void setup_block(const char *path)
{
	struct block_state *b = calloc(1, sizeof(*b));
	if (!b)
		err(1, "Allocating block state");
	b->fd = open(path, O_RDWR);
	if (b->fd < 0)
		err(1, "Opening %s", path);
	struct stat st;
	if (fstat(b->fd, &st) != 0)
		err(1, "Examining %s", path);
	b->len = (uint64_t)st.st_size;

	struct device *dev = new_device("block", VIRTIO_ID_BLOCK);
	dev->priv = b;
	add_virtqueue(dev, blk_request);
	add_feature(dev, VIRTIO_BLK_F_SEG_MAX);
	add_feature(dev, VIRTIO_BLK_F_FLUSH);
	/* Header and status take two descriptors of every chain; the rest may be data. */
	struct block_config conf = { .capacity = b->len / 512, .seg_max = VRING_NUM - 2 };
	set_config(dev, &conf, sizeof(conf));
	verbose("Device block: %s, %llu sectors\n", path, (unsigned long long)conf.capacity);
}
