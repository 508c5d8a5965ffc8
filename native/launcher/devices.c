/*
 * The lguest device page and the life cycle of each device (lguest-abi.md §2.6-§2.8).
 *
 * Records are packed back-to-back on the first page above RAM: header
 * {type, num_vq, feature_len, config_len, status}, the vqconfigs, the
 * offered and accepted feature bitmaps, then config space.  A device's
 * record is completed (queues, then features, then config) before the next
 * device is created, so packing needs only the end of the previous record.
 *
 * When the Guest reports a status change the device starts: each queue with
 * a service routine gets an eventfd registered with /dev/lguest for its
 * kick address and a helper process (clone(CLONE_VM)) that sleeps on it.
 */
#include "launcher.h"

#include <err.h>
#include <signal.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

enum { D_TYPE, D_NUM_VQ, D_FEATURE_LEN, D_CONFIG_LEN, D_STATUS, D_HDR };
#define VQCONFIG_SIZE 8
#define S_FAILED 0x80

static unsigned char *device_page;
static struct device *devices, **devices_tail = &devices;
static unsigned int next_irq = 1; /* IRQ 0 is the Guest's timer */

void setup_device_page(void)
{
	device_page = get_pages(1);
	verbose("Device page at gpa %#lx\n", to_guest_phys(device_page));
}

static unsigned int record_size(const unsigned char *d)
{
	return D_HDR + d[D_NUM_VQ] * VQCONFIG_SIZE + 2 * d[D_FEATURE_LEN] + d[D_CONFIG_LEN];
}

static unsigned char *features_of(const struct device *dev)
{
	return dev->desc + D_HDR + dev->desc[D_NUM_VQ] * VQCONFIG_SIZE;
}

/* Room for `more` bytes at the end of the last record, or die: the list must fit one page. */
static void reserve_record_bytes(const unsigned char *desc, unsigned int more)
{
	if ((unsigned long)(desc - device_page) + record_size(desc) + more >= PAGE)
		errx(1, "Device page is full");
}

struct device *new_device(const char *name, uint8_t type)
{
	struct device *dev = calloc(1, sizeof(*dev));
	if (!dev)
		err(1, "Allocating device %s", name);
	unsigned char *at = device_page;
	for (struct device *d = devices; d; d = d->next)
		at = d->desc + record_size(d->desc);
	dev->name = name;
	dev->desc = at;
	reserve_record_bytes(at, D_HDR);
	at[D_TYPE] = type;
	*devices_tail = dev;
	devices_tail = &dev->next;
	return dev;
}

void add_virtqueue(struct device *dev, service_fn service)
{
	unsigned char *d = dev->desc;
	if (d[D_FEATURE_LEN] || d[D_CONFIG_LEN])
		errx(1, "Device %s: queues must be added before features and config", dev->name);
	reserve_record_bytes(d, VQCONFIG_SIZE);

	struct vq *vq = calloc(1, sizeof(*vq)), **tail = &dev->vqs;
	if (!vq)
		err(1, "Allocating a queue for %s", dev->name);
	void *ring = get_pages(VRING_PAGES);
	vq->dev = dev;
	vq->index = dev->num_vq++;
	vq->num = VRING_NUM;
	vq->irq = next_irq++;
	vq->pfn = to_guest_phys(ring) / PAGE;
	vq->service = service;
	vring_init(&vq->vring, VRING_NUM, ring, PAGE);

	uint16_t num = VRING_NUM, irq = vq->irq;
	uint32_t pfn = vq->pfn;
	unsigned char *cfg = d + D_HDR + d[D_NUM_VQ] * VQCONFIG_SIZE;
	memcpy(cfg, &num, 2);
	memcpy(cfg + 2, &irq, 2);
	memcpy(cfg + 4, &pfn, 4);
	d[D_NUM_VQ]++;
	while (*tail)
		tail = &(*tail)->next;
	*tail = vq;
	verbose("Device %s: queue %u at pfn %#lx, irq %u\n", dev->name, vq->index, vq->pfn, vq->irq);
}

/* The bitmap grows to the byte holding `bit`; growing it would move config, so config must come later. */
void add_feature(struct device *dev, unsigned int bit)
{
	unsigned char *d = dev->desc;
	if (d[D_CONFIG_LEN])
		errx(1, "Device %s: features must be added before config", dev->name);
	if (d[D_FEATURE_LEN] < bit / 8 + 1) {
		unsigned int grow = bit / 8 + 1 - d[D_FEATURE_LEN];
		reserve_record_bytes(d, 2 * grow);
		d[D_FEATURE_LEN] = bit / 8 + 1; /* both bitmaps were zero, so only the length changes */
	}
	features_of(dev)[bit / 8] |= 1 << (bit % 8);
}

void set_config(struct device *dev, const void *conf, unsigned int len)
{
	unsigned char *d = dev->desc;
	if (len > 255)
		errx(1, "Device %s: config of %u bytes does not fit a byte", dev->name, len);
	reserve_record_bytes(d, len);
	memcpy(features_of(dev) + 2 * d[D_FEATURE_LEN], conf, len);
	d[D_CONFIG_LEN] = len;
}

uint8_t *device_status(struct device *dev)
{
	return dev->desc + D_STATUS;
}

/* The accepted bitmap follows the offered one; the Guest wrote it, so only a bit we offered counts. */
bool feature_accepted(const struct device *dev, unsigned int bit)
{
	unsigned int len = dev->desc[D_FEATURE_LEN];
	const unsigned char *offered = features_of(dev), *accepted = offered + len;
	return bit / 8 < len && (offered[bit / 8] & accepted[bit / 8] & (1 << (bit % 8)));
}

/* ---- starting and stopping ---- */

/*
 * A helper that exits has said why (err/errx); one killed by a signal has
 * not, and the launcher would vanish without a word.  Say which signal,
 * with what a signal handler may call.
 */
static void report_helper_signal(void)
{
	siginfo_t si = { 0 };
	if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || !si.si_pid || si.si_code == CLD_EXITED)
		return;
	static const char what[] = "lguest: a queue helper was killed by signal ";
	char msg[sizeof(what) + 3];
	size_t n = sizeof(what) - 1;
	memcpy(msg, what, n);
	if (si.si_status >= 10)
		msg[n++] = (char)('0' + si.si_status / 10 % 10);
	msg[n++] = (char)('0' + si.si_status % 10);
	msg[n++] = '\n';
	if (write(STDERR_FILENO, msg, n) < 0)
		return;
}

static void kill_launcher(int sig)
{
	(void)sig;
	report_helper_signal();
	restore_terminal();
	kill(0, SIGTERM);
}

/* The launcher's pid, for its helpers to check that they still have a parent. */
static pid_t launcher_pid;

static int helper_main(void *arg)
{
	struct vq *vq = arg;
	/*
	 * A helper holds a copy of the /dev/lguest fd, and the Guest is released
	 * only when the last copy closes.  If the launcher is killed (SIGKILL
	 * cannot be caught, so it cannot kill us on its way out), we must go too,
	 * or the Guest and its eventfds would outlive it.  The parent may already
	 * have died before prctl() ran: check once more afterwards.
	 */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != launcher_pid)
		_exit(1);
	for (;;)
		vq->service(vq);
	return 0;
}

static void start_queue(struct vq *vq)
{
	int efd = eventfd(0, 0);
	if (efd < 0)
		err(1, "Creating eventfd for %s queue %u", vq->dev->name, vq->index);
	unsigned long req[3] = { LHREQ_EVENTFD, vq->pfn * PAGE, (unsigned long)efd };
	if (write(lguest_fd, req, sizeof(req)) != 0)
		err(1, "Attaching eventfd for %s queue %u", vq->dev->name, vq->index);
	vq->eventfd = efd;
	vq->stack = malloc(HELPER_STACK);
	if (!vq->stack)
		err(1, "Allocating a helper stack");
	/* A dying helper is fatal: SIGCHLD takes the whole launcher down. */
	signal(SIGCHLD, kill_launcher);
	launcher_pid = getpid();
	vq->helper = clone(helper_main, (char *)vq->stack + HELPER_STACK, CLONE_VM | SIGCHLD, vq);
	if (vq->helper < 0)
		err(1, "Creating helper for %s queue %u", vq->dev->name, vq->index);
	close(efd); /* the helper has its own copy */
	verbose("Device %s: queue %u helper %d\n", vq->dev->name, vq->index, (int)vq->helper);
}

static void start_device(struct device *dev)
{
	unsigned char *d = dev->desc;
	if (verbose_on) {
		fprintf(stderr, "Device %s OK: offered", dev->name);
		for (unsigned int i = 0; i < d[D_FEATURE_LEN]; i++)
			fprintf(stderr, " %02x", features_of(dev)[i]);
		fprintf(stderr, ", accepted");
		for (unsigned int i = 0; i < d[D_FEATURE_LEN]; i++)
			fprintf(stderr, " %02x", features_of(dev)[d[D_FEATURE_LEN] + i]);
		fprintf(stderr, "\n");
	}
	if (dev->start)
		dev->start(dev);
	for (struct vq *vq = dev->vqs; vq; vq = vq->next)
		if (vq->service)
			start_queue(vq);
	dev->running = true;
}

/* Helpers die on purpose here, so SIGCHLD must not take the launcher down meanwhile. */
static void stop_helpers(struct device *dev)
{
	void (*old)(int) = signal(SIGCHLD, SIG_IGN);
	for (struct vq *vq = dev->vqs; vq; vq = vq->next) {
		if (!vq->helper)
			continue;
		kill(vq->helper, SIGTERM);
		waitpid(vq->helper, NULL, __WALL);
		vq->helper = 0;
		free(vq->stack);
		vq->stack = NULL;
	}
	signal(SIGCHLD, old);
}

static void reset_device(struct device *dev)
{
	verbose("Resetting device %s\n", dev->name);
	memset(features_of(dev) + dev->desc[D_FEATURE_LEN], 0, dev->desc[D_FEATURE_LEN]);
	stop_helpers(dev);
	for (struct vq *vq = dev->vqs; vq; vq = vq->next) {
		memset(vq->vring.desc, 0, VRING_PAGES * PAGE);
		vq->last_avail = 0;
		vq->pending_used = 0;
	}
	dev->running = false;
}

static void update_device_status(struct device *dev)
{
	uint8_t status = *device_status(dev);
	if (status == 0) {
		reset_device(dev);
	} else if (status & S_FAILED) {
		warnx("Device %s configuration FAILED", dev->name);
		if (dev->running)
			reset_device(dev);
	} else {
		if (dev->running)
			errx(1, "Device %s features finalized twice", dev->name);
		start_device(dev);
	}
}

/*
 * A NOTIFY value that reached the launcher: a status change (the gpa of a
 * record) or a kick on a queue whose device has no helpers yet (a started
 * queue's kicks are claimed by its eventfd inside /dev/lguest).
 */
bool handle_device_notify(unsigned long addr)
{
	for (struct device *dev = devices; dev; dev = dev->next) {
		if (addr == to_guest_phys(dev->desc)) {
			update_device_status(dev);
			return true;
		}
		for (struct vq *vq = dev->vqs; vq; vq = vq->next)
			if (addr == vq->pfn * PAGE)
				errx(1, "Notification on %s before setup!", dev->name);
	}
	return false;
}

void reset_all_devices(void)
{
	for (struct device *dev = devices; dev; dev = dev->next)
		reset_device(dev);
}

void kill_helpers(void)
{
	for (struct device *dev = devices; dev; dev = dev->next)
		stop_helpers(dev);
}
