"""Wall time and peak resident memory of a block of code (MLflow's ``*_seconds`` and ``peak_rss_mb``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import psutil


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


@contextmanager
def measure(interval: float = 0.01) -> Iterator[Measurement]:
    """Time the block and sample this process's RSS (children included) every ``interval`` seconds."""
    result = Measurement()
    process = psutil.Process()
    stop = threading.Event()

    def rss_mb() -> float:
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total / 2**20

    def sample() -> None:
        while not stop.is_set():
            result.peak_rss_mb = max(result.peak_rss_mb, rss_mb())
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        result.peak_rss_mb = max(result.peak_rss_mb, rss_mb())
