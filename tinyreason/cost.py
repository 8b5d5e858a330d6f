"""What a stage cost: wall-clock seconds, GPU-seconds (and which GPU), dollars, peak memory."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager

import torch


def peak_memory_gib() -> float:
    """Peak GPU memory allocated by torch when on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def device_summary() -> dict:
    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "num_gpus": torch.cuda.device_count()}
    return {"device": "cpu", "num_gpus": 0}


@contextmanager
def measure_cost(usd_per_gpu_hour: float):
    """Yields a dict that holds the cost figures once the block ends."""
    report: dict = {}
    start = time.perf_counter()
    try:
        yield report
    finally:
        wall = time.perf_counter() - start
        devices = device_summary()
        gpu_seconds = wall * devices["num_gpus"]
        report.update(wall_seconds=round(wall, 2), gpu_seconds=round(gpu_seconds, 2),
                      usd=round(gpu_seconds / 3600 * usd_per_gpu_hour, 4),
                      peak_memory_gib=round(peak_memory_gib(), 3), **devices)
