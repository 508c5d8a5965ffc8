"""The TSC clock shared by host and Guest, and percentiles of latency samples."""
from __future__ import annotations

import ctypes
import functools
import time

from benchmarks.figures import _build


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_build.native("libbenchtsc.so")))
    lib.bench_rdtsc.restype = ctypes.c_uint64
    lib.bench_rdtsc.argtypes = []
    return lib


def rdtsc() -> int:
    """The host's TSC, the clock a Guest's rdtsc reads (Unicorn passes it through)."""
    return _lib().bench_rdtsc()


@functools.cache
def tsc_hz() -> float:
    """TSC ticks per second, against the monotonic clock over 200 ms."""
    read = _lib().bench_rdtsc
    t0, c0 = time.perf_counter_ns(), read()
    time.sleep(0.2)
    t1, c1 = time.perf_counter_ns(), read()
    return (c1 - c0) * 1e9 / (t1 - t0)


def ticks_to_us(ticks: list[int]) -> list[float]:
    hz = tsc_hz()
    return [t * 1e6 / hz for t in ticks]


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]
