/* The smallest useful one-file FUSE server: the baseline the fuse_irq figure holds ours against.
 *
 *   fuse_min MOUNTPOINT   mounts over MOUNTPOINT (an existing regular file), foreground,
 *                         libfuse's multithreaded loop; SIGTERM unmounts and exits
 *
 * The same shape as our FUSE transport (a root inode that is a regular file,
 * opened with direct I/O, so every write reaches the server) and nothing
 * else: open succeeds, a write is accepted whole, a read returns nothing.
 * libfuse takes the root's type from the mountpoint's.  Whatever our server
 * costs beyond this is Python, the Device and the core.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void min_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    st.st_mode = S_IFREG | 0600;
    st.st_nlink = 1;
    fuse_reply_attr(req, &st, 1.0);
}

static void min_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    fi->direct_io = 1;
    fuse_reply_open(req, fi);
}

static void min_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)ino, (void)size, (void)off, (void)fi;
    fuse_reply_buf(req, NULL, 0);
}

static void min_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    (void)ino, (void)buf, (void)off, (void)fi;
    fuse_reply_write(req, size);
}

static const struct fuse_lowlevel_ops ops = {
    .getattr = min_getattr,
    .open = min_open,
    .read = min_read,
    .write = min_write,
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuse_min MOUNTPOINT\n");
        return 2;
    }
    char *fuse_argv[] = { argv[0], NULL };
    struct fuse_args args = FUSE_ARGS_INIT(1, fuse_argv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se || fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, argv[1]) != 0)
        return 1;
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    int res = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return res ? 1 : 0;
}
