/*
 * Output.  Until a virtio console is bound, text goes out the way Linux's
 * early console does it: NOTIFY(physical address of a NUL-terminated
 * string), at most 16 characters at a time, which the launcher prints.
 * Afterwards it goes through the console's transmit queue (queue 1).
 */
#include "tinyguest.h"

#define EARLY_CHUNK 16

static struct virtio_dev *con;

void early_puts(const char *s)
{
	static char chunk[EARLY_CHUNK + 1];
	while (*s) {
		size_t n = 0;
		while (n < EARLY_CHUNK && s[n]) {
			chunk[n] = s[n];
			n++;
		}
		chunk[n] = 0;
		hcall(LHCALL_NOTIFY, PA(chunk), 0, 0, 0);
		s += n;
	}
}

void console_init(void)
{
	struct virtio_dev *d = virtio_find(VIRTIO_ID_CONSOLE);
	if (!d || d->num_vq < 2)
		return;
	virtio_start(d, 0);
	con = d;
}

int console_is_virtio(void)
{
	return con != 0;
}

struct virtqueue *console_rx_queue(void)
{
	return con ? &con->vq[0] : 0;
}

/* One buffer at a time, and wait until the host is done with it: simple,
 * and the wait exercises the queue's interrupt. */
void console_write(const char *buf, size_t len)
{
	static char txbuf[1024];
	while (len) {
		size_t n = len < sizeof(txbuf) ? len : sizeof(txbuf);
		memcpy(txbuf, buf, n);
		struct vbuf b = { txbuf, n, 0 };
		vq_add(&con->vq[1], &b, 1);
		vq_kick(&con->vq[1]);
		vq_wait_used(&con->vq[1], 0);
		buf += n;
		len -= n;
	}
}

void kputs(const char *s)
{
	if (con)
		console_write(s, strlen(s));
	else
		early_puts(s);
}

void kprintf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	kputs(buf);
}
