"""The machine's load over the last minutes, for the Computer tab's curves: a ring buffer of samples (CPU %,
memory, each GPU's utilisation and memory) taken every INTERVAL seconds by a daemon thread of the web process.

psutil reads the CPU and memory; the GPUs come from NVML through gpus.list_gpus (a machine without GPUs samples
none, and torch is never imported for it). No gradio here.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

import psutil

from . import gpus

INTERVAL = 2.0  # seconds between samples
WINDOW = 300.0  # seconds of history kept


def read_gpus() -> list[dict[str, Any]]:
    """Each GPU's utilisation and memory now (GiB)."""
    return [{"index": g.index, "utilization_pct": g.utilization_pct,
             "memory_used_gib": g.memory_used_mb / 1024, "memory_total_gib": g.memory_total_mb / 1024}
            for g in gpus.list_gpus(refresh=True)]


class Monitor:
    def __init__(self, interval: float = INTERVAL, window: float = WINDOW,
                 gpu_reader: Callable[[], list[dict[str, Any]]] | None = None):
        self.interval, self.window = float(interval), float(window)
        self._samples: deque[dict[str, Any]] = deque(maxlen=int(window / interval) + 1)
        self._gpu_reader = gpu_reader
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cpu_last: tuple[float, float] | None = None  # (busy, total) CPU seconds at the last sample
        self._first = threading.Event()  # set once the first sample is in

    def start(self, wait: bool = True) -> None:
        """Start sampling (once; later calls do nothing). With `wait`, the first sample is in before this returns
        (the app starts it without waiting, at launch, so the curves have history when the tab is opened)."""
        with self._lock:
            if self._thread is None:
                self._cpu_pct()  # primes the counter: the next reading covers the time since
                if self._gpu_reader is None:
                    self._gpu_reader = read_gpus if gpus.list_gpus() else (lambda: [])
                self._thread = threading.Thread(target=self._run, daemon=True, name="tlab-monitor")
                self._thread.start()
        if wait:
            self._first.wait(10)

    def _run(self) -> None:
        time.sleep(min(self.interval, 0.2))  # a first CPU reading over a short span, not an unprimed 0
        while True:
            try:
                self.take()
            except Exception:  # a reading that failed once (a GPU reset): the next tick tries again
                pass
            self._first.set()
            time.sleep(self.interval)

    def take(self) -> dict[str, Any]:
        """One sample now, added to the buffer."""
        vm = psutil.virtual_memory()
        sample = {"time": time.time(), "cpu_pct": self._cpu_pct(),
                  "memory_used_gib": (vm.total - vm.available) / 2**30, "memory_total_gib": vm.total / 2**30,
                  "gpus": (self._gpu_reader or (lambda: []))()}
        with self._lock:
            self._samples.append(sample)
        return sample

    def _cpu_pct(self) -> float:
        """All CPUs' busy share since the last call, in % (its own counter: psutil.cpu_percent's is shared by
        every caller in the process)."""
        times = psutil.cpu_times()
        total = sum(times)
        idle = times.idle + getattr(times, "iowait", 0.0)
        now, last = (total - idle, total), self._cpu_last
        self._cpu_last = now
        if last is None or now[1] <= last[1]:
            return 0.0
        return round(max(0.0, min(100.0, 100 * (now[0] - last[0]) / (now[1] - last[1]))), 1)

    def samples(self) -> list[dict[str, Any]]:
        """The samples of the last `window` seconds, oldest first."""
        with self._lock:
            return list(self._samples)
