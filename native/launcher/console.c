/*
 * The virtio console: queue 0 carries stdin to the Guest, queue 1 carries
 * the Guest's output to stdout.  It has no features and no config.
 *
 * A terminal on stdin is put in raw mode so keys reach the Guest one by
 * one (and ^C goes to the Guest, not to us); pressing ^C three times within
 * about a second is the way out, so a wedged Guest never traps the user.
 */
#include "launcher.h"

#include <err.h>
#include <signal.h>
#include <stdlib.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define VIRTIO_ID_CONSOLE 3

static struct termios saved_term;
static bool term_saved;

void restore_terminal(void)
{
	if (term_saved)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved_term);
}

static void restore_terminal_at_exit(void)
{
	restore_terminal();
}

struct console_state {
	unsigned int ctrl_c;
	struct timespec first_ctrl_c;
};

/* Three lone ^C keypresses within about a second end the whole launcher. */
static void count_ctrl_c(struct console_state *cs, const struct iovec *iov, ssize_t len)
{
	if (len != 1 || *(const char *)iov[0].iov_base != 3) {
		cs->ctrl_c = 0;
		return;
	}
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (cs->ctrl_c == 0 || now.tv_sec - cs->first_ctrl_c.tv_sec > 1) {
		cs->ctrl_c = 1;
		cs->first_ctrl_c = now;
		return;
	}
	if (++cs->ctrl_c == 3) {
		restore_terminal();
		kill(0, SIGTERM);
	}
}

static void console_input(struct vq *vq)
{
	struct iovec iov[VRING_NUM];
	unsigned int out, in;
	unsigned int head = wait_for_vq_desc(vq, iov, &out, &in);
	if (out)
		errx(1, "Output buffers in console input queue");

	ssize_t len = readv(STDIN_FILENO, iov, (int)in);
	if (len <= 0) {
		/* stdin is gone: keep the buffer (the Guest just sees no input) and idle forever. */
		warnx("Failed to get console input, ignoring console.");
		for (;;)
			pause();
	}
	count_ctrl_c(vq->dev->priv, iov, len);
	/* We block in readv next, not in wait_for_vq_desc, so interrupt the Guest now. */
	add_used_and_trigger(vq, head, (unsigned int)len);
}

static void console_output(struct vq *vq)
{
	struct iovec iov[VRING_NUM];
	unsigned int out, in;
	unsigned int head = wait_for_vq_desc(vq, iov, &out, &in);
	if (in)
		errx(1, "Input buffers in console output queue");
	while (iov_total(iov, out)) {
		ssize_t len = writev(STDOUT_FILENO, iov, (int)out);
		if (len <= 0) {
			warn("Write to stdout gave %zd", len);
			break;
		}
		iov_consume(iov, out, NULL, (size_t)len);
	}
	add_used(vq, head, 0);
}

void setup_console(void)
{
	if (tcgetattr(STDIN_FILENO, &saved_term) == 0) {
		struct termios raw = saved_term;
		raw.c_lflag &= ~(ISIG | ICANON | ECHO);
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
		term_saved = true;
		atexit(restore_terminal_at_exit);
	}
	struct device *dev = new_device("console", VIRTIO_ID_CONSOLE);
	dev->priv = calloc(1, sizeof(struct console_state));
	if (!dev->priv)
		err(1, "Allocating console state");
	add_virtqueue(dev, console_input);
	add_virtqueue(dev, console_output);
	verbose("Device console: stdin %s\n", term_saved ? "is a terminal (raw mode)" : "is not a terminal");
}
