/* The smallest useful CUSE server: the baseline the cuse_vm figure holds ours against.
 *
 *   cuse_min NAME        creates /dev/NAME, foreground, libfuse's multithreaded loop
 *
 * It does what a device must and nothing else: open succeeds, a write is
 * accepted whole, a read returns nothing.  Whatever our server costs beyond
 * this is Python, the Device and the core.
 */
#define FUSE_USE_VERSION 31
#include <cuse_lowlevel.h>
#include <stdio.h>

static void min_open(fuse_req_t req, struct fuse_file_info *fi)
{
    fuse_reply_open(req, fi);
}

static void min_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)size, (void)off, (void)fi;
    fuse_reply_buf(req, NULL, 0);
}

static void min_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)buf, (void)off, (void)fi;
    fuse_reply_write(req, size);
}

static const struct cuse_lowlevel_ops ops = {
    .open = min_open,
    .read = min_read,
    .write = min_write,
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cuse_min NAME\n");
        return 2;
    }
    char devname[128];
    snprintf(devname, sizeof devname, "DEVNAME=%s", argv[1]);
    const char *info[] = { devname };
    struct cuse_info ci = { .dev_info_argc = 1, .dev_info_argv = info };
    char *fuse_argv[] = { argv[0], "-f", NULL };
    return cuse_lowlevel_main(2, fuse_argv, &ci, &ops, NULL);
}
