/*
 * The virtio network device, joined to the host through a tap interface:
 * --tunnet=IP[:MAC], as the 3.x launcher had it.
 *
 * /dev/net/tun hands us a tap (an Ethernet interface whose "wire" is a file
 * descriptor), and the host side of that wire gets address IP and is
 * brought up; a route to IP's network then reaches the Guest.  The tap is
 * opened with IFF_VNET_HDR, so every frame read or written carries the
 * same 10-byte virtio_net_hdr in front that a 3.x Guest puts before its
 * frames: the Guest's buffers go to and from the tap unchanged.
 *
 * Queue 0 receives (the tap's frames into the Guest's writable buffers),
 * queue 1 transmits (the Guest's readable buffers onto the tap).  We offer
 * what the 3.x launcher offered, so a 3.x Guest negotiates the same
 * device: checksum and TSO offload in both directions, indirect
 * descriptors and any header layout.  The MAC feature only when a MAC
 * is given; otherwise the Guest picks a random one.
 *
 * The tap is told which offloads it may send us only once the Guest has
 * accepted its features (the device starts), and only those the Guest
 * accepted: a Guest that cannot take 64 KiB TSO frames never gets one.
 */
#include "launcher.h"

#include <arpa/inet.h>
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/if_tun.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_net.h>

/* The 3.x config space: the MAC, then status and queue pairs, which we do not offer. */
struct net_config {
	uint8_t mac[6];
	uint16_t status;
	uint16_t max_virtqueue_pairs;
} __attribute__((packed));

struct net_state {
	int tapfd;
};

/* Nothing to read now: the next readv() would sleep. */
static bool tap_would_block(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) != 1;
}

/*
 * One frame from the tap into one receive buffer.  Before sleeping in
 * readv() we interrupt the Guest for the frames already delivered, so a
 * burst costs one interrupt and a lone frame is never held back.
 */
static void net_input(struct vq *vq)
{
	struct net_state *net = vq->dev->priv;
	struct iovec iov[VRING_NUM];
	unsigned int out, in;
	unsigned int head = wait_for_vq_desc(vq, iov, &out, &in);
	if (out)
		errx(1, "Output buffers in net input queue");

	if (vq->pending_used && tap_would_block(net->tapfd))
		trigger_irq(vq);
	ssize_t len;
	do
		len = readv(net->tapfd, iov, (int)in);
	while (len < 0 && errno == EINTR);
	/*
	 * A failed read (a buffer too small for the header, which the tap
	 * refuses) loses that one frame, as a real NIC drops what does not
	 * fit; the buffer goes back empty and the Guest discards it.
	 */
	add_used(vq, head, len > 0 ? (unsigned int)len : 0);
}

/*
 * One frame from the Guest onto the tap, header and all.  A frame the tap
 * refuses (malformed header, too long) is dropped like a bad frame on a
 * wire; the tap's own error counters record it.
 */
static void net_output(struct vq *vq)
{
	struct net_state *net = vq->dev->priv;
	struct iovec iov[VRING_NUM];
	unsigned int out, in;
	unsigned int head = wait_for_vq_desc(vq, iov, &out, &in);
	if (in)
		errx(1, "Input buffers in net output queue");
	while (writev(net->tapfd, iov, (int)out) < 0 && errno == EINTR)
		;
	add_used(vq, head, 0);
}

/* The tap may hand us only the offloads the Guest accepted; TSO needs checksum offload first. */
static void net_start(struct device *dev)
{
	struct net_state *net = dev->priv;
	unsigned int offload = 0;
	if (feature_accepted(dev, VIRTIO_NET_F_GUEST_CSUM)) {
		offload |= TUN_F_CSUM;
		if (feature_accepted(dev, VIRTIO_NET_F_GUEST_TSO4))
			offload |= TUN_F_TSO4;
		if (feature_accepted(dev, VIRTIO_NET_F_GUEST_TSO6))
			offload |= TUN_F_TSO6;
		if (feature_accepted(dev, VIRTIO_NET_F_GUEST_ECN) && (offload & (TUN_F_TSO4 | TUN_F_TSO6)))
			offload |= TUN_F_TSO_ECN;
	}
	if (ioctl(net->tapfd, TUNSETOFFLOAD, offload) != 0)
		err(1, "Setting offloads %#x on the tap", offload);
}

static int open_tap(char name[IFNAMSIZ])
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		err(1, "Opening /dev/net/tun");
	struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
	strcpy(ifr.ifr_name, "tap%d");
	if (ioctl(fd, TUNSETIFF, &ifr) != 0)
		err(1, "Creating a tap device");
	/* Nothing offloaded until the Guest says what it takes (net_start). */
	if (ioctl(fd, TUNSETOFFLOAD, 0) != 0)
		err(1, "Clearing the tap's offloads");
	memcpy(name, ifr.ifr_name, IFNAMSIZ);
	return fd;
}

/* The host's end of the wire: address `ip`, up. */
static void configure_tap(const char *name, struct in_addr ip)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		err(1, "Opening a socket to configure %s", name);
	struct ifreq ifr = { 0 };
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr = ip };
	strcpy(ifr.ifr_name, name);
	memcpy(&ifr.ifr_addr, &sin, sizeof(sin));
	if (ioctl(s, SIOCSIFADDR, &ifr) != 0)
		err(1, "Setting the address of %s", name);
	ifr.ifr_flags = IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
		err(1, "Bringing %s up", name);
	close(s);
}

static void parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int m[6];
	char tail;
	if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5], &tail) != 6)
		errx(1, "Bad MAC address '%s' (six hex bytes joined by ':')", s);
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)m[i];
}

void setup_tunnet(const char *arg)
{
	struct net_config conf = { 0 };
	char ip_text[INET_ADDRSTRLEN];
	const char *colon = strchr(arg, ':');
	size_t ip_len = colon ? (size_t)(colon - arg) : strlen(arg);
	struct in_addr ip;
	if (ip_len >= sizeof(ip_text))
		errx(1, "Bad --tunnet address '%s' (IPv4 address, optionally :MAC)", arg);
	memcpy(ip_text, arg, ip_len);
	ip_text[ip_len] = '\0';
	if (inet_pton(AF_INET, ip_text, &ip) != 1)
		errx(1, "Bad --tunnet address '%s' (IPv4 address, optionally :MAC)", arg);
	if (colon)
		parse_mac(colon + 1, conf.mac);

	struct net_state *net = calloc(1, sizeof(*net));
	if (!net)
		err(1, "Allocating net state");
	char tap[IFNAMSIZ];
	net->tapfd = open_tap(tap);
	configure_tap(tap, ip);

	struct device *dev = new_device("net", VIRTIO_ID_NET);
	dev->priv = net;
	dev->start = net_start;
	add_virtqueue(dev, net_input);
	add_virtqueue(dev, net_output);
	if (colon)
		add_feature(dev, VIRTIO_NET_F_MAC);
	static const unsigned int offered[] = {
		VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
		VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
		VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
		VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_F_ANY_LAYOUT,
	};
	for (size_t i = 0; i < sizeof(offered) / sizeof(offered[0]); i++)
		add_feature(dev, offered[i]);
	set_config(dev, &conf, sizeof(conf));
	verbose("Device net: %s at %s%s%s\n", tap, ip_text, colon ? ", Guest MAC " : "", colon ? colon + 1 : "");
}
