"""Per-stage timers for the block loop: CUDA events on the GPU (no host sync until the block ends),
``perf_counter`` on the CPU."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Collects milliseconds per named stage of one block.

    On CUDA, stages are bracketed with events recorded on the current stream; :meth:`finish` synchronises
    once (at the end of the block, where the host needs the output anyway) and reads all of them.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed work as stage ``name`` (repeated names add up)."""
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._ms[name] = self._ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def finish(self) -> dict[str, float]:
        """Milliseconds per stage (synchronises the device once on CUDA)."""
        if self.cuda and self._events:
            self._events[-1][2].synchronize()
            for name, s, e in self._events:
                self._ms[name] = self._ms.get(name, 0.0) + s.elapsed_time(e)
            self._events.clear()
        return dict(self._ms)
