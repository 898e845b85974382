"""Per-stage timers for the block loop: CUDA events on the GPU (no host sync until the block ends),
``perf_counter`` on the CPU; and :func:`on_device`, which makes a CUDA device current for a stretch of work."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, NamedTuple

import torch


def on_device(device: torch.device) -> AbstractContextManager[Any]:
    """Make ``device`` the current CUDA device inside the ``with`` (nothing for a CPU device).

    Whatever names no device follows the current one: ``torch.cuda.current_stream()``, event records, CUDA graph
    capture streams, cuDNN's handles. Work for ``cuda:1`` in a process whose current device is ``cuda:0`` must
    run inside this, or it records, captures or synchronises on the wrong GPU.
    """
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


class StageHandle(NamedTuple):
    """An open stage (:meth:`StageTimer.start`): its name, its start (a CUDA event or ``perf_counter``
    seconds) and its profiler range, if a profiler is running."""

    name: str
    begun: torch.cuda.Event | float
    profiled: torch.profiler.record_function | None


class StageTimer:
    """Collects milliseconds per named stage of one block.

    On CUDA, stages are bracketed with events recorded on the current stream; :meth:`finish` synchronises
    once (at the end of the block, where the host needs the output anyway) and reads all of them.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._ms: dict[str, float] = {}

    def start(self, name: str) -> StageHandle:
        """Open stage ``name`` now (on the timer's device's current CUDA stream); close it with :meth:`stop`,
        possibly after switching streams (a stage that starts on one stream and ends on another spans both). Under
        ``torch.profiler`` the stage also shows as a ``stage:NAME`` range."""
        profiled = None
        if torch.autograd.profiler._is_profiler_enabled:
            profiled = torch.profiler.record_function(f"stage:{name}")
            profiled.__enter__()
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return StageHandle(name, ev, profiled)
        return StageHandle(name, time.perf_counter(), profiled)

    def stop(self, handle: StageHandle) -> None:
        """Close a stage opened by :meth:`start` (on the current CUDA stream)."""
        if handle.profiled is not None:
            handle.profiled.__exit__(None, None, None)
        if isinstance(handle.begun, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            self._events.append((handle.name, handle.begun, end))
        else:
            self._ms[handle.name] = (
                self._ms.get(handle.name, 0.0) + (time.perf_counter() - handle.begun) * 1e3
            )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed work as stage ``name`` (repeated names add up)."""
        handle = self.start(name)
        yield
        self.stop(handle)

    def finish(self) -> dict[str, float]:
        """Milliseconds per stage (waits for every stage's end on CUDA)."""
        if self.cuda and self._events:
            with on_device(self.device):  # events of another device than the current one cannot be read
                for name, s, e in self._events:
                    e.synchronize()
                    self._ms[name] = self._ms.get(name, 0.0) + s.elapsed_time(e)
            self._events.clear()
        return dict(self._ms)


def cuda_median_ms(fn: Callable[[], object], reps: int = 10, warmup: int = 3) -> float:
    """The median milliseconds of ``fn`` on the current CUDA stream over ``reps`` calls (CUDA events around each
    call, synchronised after it), after ``warmup`` untimed calls. For benchmarks and GPU checks, not the hot path.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
