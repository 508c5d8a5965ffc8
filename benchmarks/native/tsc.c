/* rdtsc for Python (ctypes): host stamps on the clock Guest stamps use. */
#include "tsc.h"

uint64_t bench_rdtsc(void)
{
    return rdtsc();
}
