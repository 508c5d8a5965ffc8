/* The client of the cuse_vm and fuse_irq figures: LHREQ_IRQ writes of 8 bytes, each timed.
 *
 *   irqwrite32 NODE COUNT [lguest]
 *   irqwrite32 --pair OURS BASE COUNT CHUNK
 *
 * --pair gives OURS a Guest and alternates between the two nodes, CHUNK
 * writes to one and then CHUNK to the other, COUNT writes to each.  Both
 * servers are then measured by the same process, on whatever CPU it is on
 * and under whatever load there is at that moment: on a shared 2-CPU machine
 * the client's placement moved a whole run's p50 between about 10 and 30 us,
 * for the C server as much as for ours, so separate runs per server compared
 * moments more than servers.  It prints one JSON line per node, OURS first.
 *
 * Built 32-bit, so its words are 4 bytes and an LHREQ_IRQ write is 8 bytes,
 * as from the historical launcher.  With `lguest` it first gives the node a
 * Guest (INITIALIZE over 4 MiB of shared-memfd RAM, never run), because our
 * server refuses LHREQ_IRQ without one; the minimal C server takes any write.
 * Prints one JSON line: count and the per-write p50, p99 and mean in ns.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { LHREQ_INITIALIZE = 0, LHREQ_IRQ = 2, PAGE = 4096, RAM = 4 << 20, DEVICE_PAGES = 256 };

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void give_guest(int dev)
{
    size_t size = RAM + DEVICE_PAGES * PAGE;
    int mfd = memfd_create("irqwrite-ram", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, size) < 0) {
        perror("memfd");
        exit(1);
    }
    void *ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (ram == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    uint32_t init[4] = { LHREQ_INITIALIZE, (uint32_t)(uintptr_t)ram, size / PAGE, 0x100000 };
    if (write(dev, init, sizeof init) < 0) {
        perror("INITIALIZE");
        exit(1);
    }
}

static void report(uint64_t *lat, long count)
{
    uint64_t total = 0;
    for (long i = 0; i < count; i++)
        total += lat[i];
    qsort(lat, count, sizeof *lat, cmp);
    printf("{\"n\": %ld, \"p50_ns\": %llu, \"p99_ns\": %llu, \"mean_ns\": %llu}\n", count,
           (unsigned long long)lat[count / 2], (unsigned long long)lat[count * 99 / 100],
           (unsigned long long)(total / count));
}

static int open_node(const char *path)
{
    int dev = open(path, O_RDWR);
    if (dev < 0) {
        perror(path);
        exit(1);
    }
    return dev;
}

static uint64_t timed_irq(int dev)
{
    static const uint32_t req[2] = { LHREQ_IRQ, 1 };
    uint64_t t0 = now_ns();
    if (write(dev, req, sizeof req) < 0) {
        perror("LHREQ_IRQ");
        exit(1);
    }
    return now_ns() - t0;
}

int main(int argc, char **argv)
{
    int pair = argc == 6 && !strcmp(argv[1], "--pair");
    if (argc < 3 || (!strcmp(argv[1], "--pair") && !pair)) {
        fprintf(stderr, "usage: irqwrite32 NODE COUNT [lguest] | irqwrite32 --pair OURS BASE COUNT CHUNK\n");
        return 2;
    }
    long count = strtol(argv[pair ? 4 : 2], NULL, 0), chunk = pair ? strtol(argv[5], NULL, 0) : count;
    uint64_t *lat[2] = { calloc(count, sizeof(uint64_t)), calloc(count, sizeof(uint64_t)) };
    int dev[2] = { open_node(argv[pair ? 2 : 1]), pair ? open_node(argv[3]) : -1 };
    long done[2] = { 0, 0 };
    if (count < 1 || chunk < 1 || !lat[0] || !lat[1]) {
        fprintf(stderr, "irqwrite32: bad COUNT or CHUNK\n");
        return 2;
    }
    if (pair || (argc > 3 && !strcmp(argv[3], "lguest")))
        give_guest(dev[0]);
    for (int turn = 0; done[0] < count || (pair && done[1] < count); turn = pair ? !turn : 0)
        for (long i = 0; i < chunk && done[turn] < count; i++)
            lat[turn][done[turn]++] = timed_irq(dev[turn]);
    report(lat[0], count);
    if (pair)
        report(lat[1], count);
    return 0;
}
