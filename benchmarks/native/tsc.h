/* The host's time-stamp counter: the clock a Guest's rdtsc reads too (Unicorn passes it through). */
#ifndef BENCH_TSC_H
#define BENCH_TSC_H
#include <stdint.h>

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#endif
