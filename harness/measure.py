"""Wall-clock time (CUDA-synchronised) and peak memory (CUDA max allocated, else CPU peak RSS)."""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the process-lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Measure:
    """Context manager: ``seconds`` and ``peak_mb`` of the enclosed work on ``device``."""

    def __init__(self, device: Any, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.seconds = 0.0
        self.peak_mb = 0.0
        self._peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, current_rss_bytes())

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "Measure":
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.sync()
        self._start = time.perf_counter()
        return self

    def lap(self) -> float:
        """Seconds since entering (synchronised)."""
        self.sync()
        return time.perf_counter() - self._start

    def __exit__(self, *exc: Any) -> None:
        self.seconds = self.lap()
        if self.device.type == "cuda":
            import torch

            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, current_rss_bytes())
            self.peak_mb = self._peak / 2**20
