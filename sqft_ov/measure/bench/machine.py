"""What the numbers were measured on: the CPU, its load, and the memory read bandwidth it reaches now.

Decode of a large model is limited by how fast weights stream from memory, so a benchmark states the
bandwidth measured in the same run (it swings with other tenants) and how much of it each model uses.
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sqft_ov.io.runtime import cpu_flags, cpu_has_amx, cpu_model


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_context() -> dict:
    import psutil

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable_cores(),
        "amx": cpu_has_amx(),
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def read_bandwidth(gib: float = 1.0, passes: int = 5, threads: int | None = None) -> list[float]:
    """GB/s of `passes` parallel reads of a `gib` GiB buffer (much larger than any cache).

    Each thread OR-reduces its slice as 64-bit integers: the cheapest per-byte work numpy has, and its
    reductions release the GIL, so the threads read memory in parallel.
    """
    threads = threads or usable_cores()
    buffer = np.ones(int(gib * 2**30) // 8, dtype=np.int64)  # ones, not empty: pages must be really mapped
    parts = np.array_split(buffer, threads)
    speeds = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.bitwise_or.reduce, parts))
            speeds.append(buffer.nbytes / (time.perf_counter() - start) / 1e9)
    return speeds
