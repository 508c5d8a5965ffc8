/* The client of the cuse_vm figure: COUNT LHREQ_IRQ writes of 8 bytes, each timed.
 *
 *   irqwrite32 NODE COUNT [lguest]
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

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: irqwrite32 NODE COUNT [lguest]\n");
        return 2;
    }
    long count = strtol(argv[2], NULL, 0);
    int dev = open(argv[1], O_RDWR);
    uint64_t *lat = calloc(count, sizeof *lat);
    if (dev < 0 || !lat) {
        perror(argv[1]);
        return 1;
    }
    if (argc > 3 && !strcmp(argv[3], "lguest"))
        give_guest(dev);
    uint32_t req[2] = { LHREQ_IRQ, 1 };
    uint64_t total = 0;
    for (long i = 0; i < count; i++) {
        uint64_t t0 = now_ns();
        if (write(dev, req, sizeof req) < 0) {
            perror("LHREQ_IRQ");
            return 1;
        }
        lat[i] = now_ns() - t0;
        total += lat[i];
    }
    qsort(lat, count, sizeof *lat, cmp);
    printf("{\"n\": %ld, \"p50_ns\": %llu, \"p99_ns\": %llu, \"mean_ns\": %llu}\n", count,
           (unsigned long long)lat[count / 2], (unsigned long long)lat[count * 99 / 100],
           (unsigned long long)(total / count));
    return 0;
}
