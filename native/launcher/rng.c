/*
 * The virtio entropy device: one queue whose writable buffers are filled
 * from /dev/urandom.
 */
#include "launcher.h"

#include <err.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <linux/virtio_ids.h>

static void rng_input(struct vq *vq)
{
	struct iovec iov[VRING_NUM];
	unsigned int out, in;
	unsigned int head = wait_for_vq_desc(vq, iov, &out, &in);
	int fd = *(int *)vq->dev->priv;
	size_t total = 0;

	if (out)
		errx(1, "Output buffers in rng queue");
	while (iov_total(iov, in)) {
		ssize_t len = readv(fd, iov, (int)in);
		if (len <= 0)
			err(1, "Reading /dev/urandom");
		iov_consume(iov, in, NULL, (size_t)len);
		total += (size_t)len;
	}
	add_used(vq, head, (unsigned int)total);
}

void setup_rng(void)
{
	int *fd = malloc(sizeof(*fd));
	if (!fd)
		err(1, "Allocating rng state");
	*fd = open("/dev/urandom", O_RDONLY);
	if (*fd < 0)
		err(1, "Opening /dev/urandom");
	struct device *dev = new_device("rng", VIRTIO_ID_RNG);
	dev->priv = fd;
	add_virtqueue(dev, rng_input);
	verbose("Device rng: /dev/urandom\n");
}
