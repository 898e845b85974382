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
        self._ranges: list[torch.profiler.record_function] = []

    def start(self, name: str) -> tuple[str, object]:
        """Open stage ``name`` now (on the current CUDA stream); close it with :meth:`stop`, possibly after
        switching streams (a stage that starts on one stream and ends on another spans both). Under
        ``torch.profiler`` the stage also shows as a ``stage:NAME`` range."""
        if torch.autograd.profiler._is_profiler_enabled:
            rf = torch.profiler.record_function(f"stage:{name}")
            rf.__enter__()
            self._ranges.append(rf)
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return name, ev
        return name, time.perf_counter()

    def stop(self, handle: tuple[str, object]) -> None:
        """Close a stage opened by :meth:`start` (on the current CUDA stream)."""
        name, begun = handle
        for rf in self._ranges:
            if rf.name == f"stage:{name}":
                self._ranges.remove(rf)
                rf.__exit__(None, None, None)
                break
        if self.cuda:
            assert isinstance(begun, torch.cuda.Event)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((name, begun, end))
        else:
            assert isinstance(begun, float)
            self._ms[name] = self._ms.get(name, 0.0) + (time.perf_counter() - begun) * 1e3

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed work as stage ``name`` (repeated names add up)."""
        handle = self.start(name)
        yield
        self.stop(handle)

    def finish(self) -> dict[str, float]:
        """Milliseconds per stage (waits for every stage's end on CUDA)."""
        if self.cuda and self._events:
            for name, s, e in self._events:
                e.synchronize()
                self._ms[name] = self._ms.get(name, 0.0) + s.elapsed_time(e)
            self._events.clear()
        return dict(self._ms)
