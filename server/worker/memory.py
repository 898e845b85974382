"""Returning freed heap memory to the operating system in the worker process.

glibc's malloc keeps memory freed by large temporaries (decoded frames, CPU tensors of a block) in its arenas
and hands it back to the kernel only now and then, so a worker's resident size saws up and down by a hundred
megabytes or more while its live memory stays the same. That hides real leaks from operators watching RSS and
holds memory other processes could use. ``malloc_trim(0)`` releases every free page of every arena; it costs
well under a millisecond, so the worker calls it at most once per interval, between blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

import torch

from server.worker.messages import DeviceMemory

log = logging.getLogger("server.worker")


def resident_bytes() -> int | None:
    """This process's resident set size in bytes (Linux ``/proc``), or None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def device_memory(device: str | torch.device) -> DeviceMemory | None:
    """The device memory of a CUDA ``device`` as this worker and the card see it (None for any other device).

    ``torch.cuda.memory_allocated`` / ``memory_reserved`` are host-side counters of the caching allocator and
    ``mem_get_info`` is one driver query: none of them waits for the device, so the worker may call this between
    blocks while the previous block's work is still queued.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(dev)
    return DeviceMemory(
        allocated=torch.cuda.memory_allocated(dev),
        reserved=torch.cuda.memory_reserved(dev),
        used=total - free,
        total=total,
    )


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` at most once per ``interval_s`` seconds (no-op without glibc)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._clock = clock
        self._trim = _load_malloc_trim()
        self._last = float("-inf")
        self.trims = 0
        if self._trim is None:
            log.info(
                "no glibc malloc_trim here: the worker's freed heap memory is returned by the allocator alone"
            )

    @property
    def available(self) -> bool:
        """Whether the C library offers ``malloc_trim``."""
        return self._trim is not None

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed since the last trim; return whether it trimmed."""
        if self._trim is None:
            return False
        now = self._clock()
        if now - self._last < self.interval_s:
            return False
        self._trim(0)
        self._last = now
        self.trims += 1
        return True
