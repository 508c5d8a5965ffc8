/* The other process of the notify_eventfd figure: a launcher helper's side of NOTIFY.
 *
 *   evpeer EVENTFD MAPFILE OFFSET COUNT     (EVENTFD: an inherited descriptor)
 *
 * MAPFILE is the Guest's RAM (/proc/PID/map_files/...), OFFSET the gpa of the
 * benchmark guest's `struct bench`.  It prints `ready`, then COUNT times:
 * block in read() on the eventfd, stamp the TSC, take the Guest's stamp from just before its NOTIFY,
 * then acknowledge so the Guest sends the next one.  Prints one latency in
 * TSC ticks per line at the end, so printing never slows the loop.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tsc.h"

struct bench {                      /* benchmarks/guests/bench.c */
    uint32_t mode, n, irq, notify;
    volatile uint32_t seq, ack, handled, stamp_lo, stamp_hi;
};

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: evpeer EVENTFD MAPFILE OFFSET COUNT\n");
        return 2;
    }
    int evfd = atoi(argv[1]);
    long offset = strtol(argv[3], NULL, 0), count = strtol(argv[4], NULL, 0);
    int fd = open(argv[2], O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(argv[2]);
        return 1;
    }
    char *ram = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    uint64_t *lat = calloc(count, sizeof *lat);
    if (ram == MAP_FAILED || !lat) {
        perror("evpeer");
        return 1;
    }
    struct bench *b = (struct bench *)(ram + offset);
    printf("ready\n");
    fflush(stdout);
    for (long i = 0; i < count; i++) {
        uint64_t v;
        if (read(evfd, &v, sizeof v) != sizeof v) {
            perror("eventfd read");
            return 1;
        }
        uint64_t now = rdtsc();
        lat[i] = now - (((uint64_t)b->stamp_hi << 32) | b->stamp_lo);
        b->ack = b->seq;
    }
    for (long i = 0; i < count; i++)
        printf("%llu\n", (unsigned long long)lat[i]);
    return 0;
}
