/* Console scenarios: hello (both output paths) and echo (the input path). */
#include "tinyguest.h"

void scen_hello(void)
{
	early_puts("tinyguest: hello from the early console\n");
	if (!console_is_virtio()) {
		kputs("tinyguest: hello PASS console=early\n");
		return;
	}
	kputs("tinyguest: hello from the virtio console\n");
	kputs("tinyguest: hello PASS console=virtio\n");
}

#define RX_BUFS 8
#define RX_LEN 64

/*
 * Keep a few receive buffers posted on queue 0; whatever the host fills
 * goes straight back out on queue 1, and we collect lines until "quit".
 * A line ends at CR (a raw terminal) or LF (a pipe).
 */
void scen_echo(void)
{
	static char bufs[RX_BUFS][RX_LEN];
	static int owner[256];
	struct virtqueue *rx = console_rx_queue();
	if (!rx) {
		kputs("tinyguest: echo FAIL no virtio console\n");
		return;
	}
	for (int i = 0; i < RX_BUFS; i++) {
		struct vbuf b = { bufs[i], RX_LEN, 1 };
		owner[vq_add(rx, &b, 1) & 255] = i;
	}
	vq_kick(rx);
	kputs("tinyguest: echo ready\n");

	char line[80];
	unsigned linelen = 0, lines = 0, bytes = 0;
	for (;;) {
		uint32_t len;
		int id = vq_wait_used(rx, &len);
		int i = owner[id & 255];
		if (len > RX_LEN)
			len = RX_LEN;
		console_write(bufs[i], len);
		bytes += len;
		for (uint32_t k = 0; k < len; k++) {
			char c = bufs[i][k];
			if (c == '\r' || c == '\n') {
				line[linelen] = 0;
				if (linelen) {
					lines++;
					if (!strcmp(line, "quit")) {
						kprintf("\ntinyguest: echo PASS lines=%u bytes=%u\n", lines, bytes);
						return;
					}
				}
				linelen = 0;
			} else if (linelen < sizeof(line) - 1) {
				line[linelen++] = c;
			}
		}
		struct vbuf b = { bufs[i], RX_LEN, 1 };
		owner[vq_add(rx, &b, 1) & 255] = i;
		vq_kick(rx);
	}
}
