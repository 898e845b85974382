"""The worker loop's overlap of one block's decoding with the next block (GPU policy), driven in-process.

The editors here record the order in which the worker submits blocks and collects their frames; the policy
itself is device-independent (only whether it is on depends on the device), so it is tested on the CPU with
the overlap switched on."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest
import torch

from lipar_core.protocol import BlockEditor, BlockStats, Transition
from server.worker import messages as m
from server.worker.ipc import FrameSlab
from server.worker.process import LoadMeter, WorkerLoop

H = W = 16
FPB = 4
LOG: list[str] = []


class _Ticket:
    """A ``SubmittedBlock`` whose ``result`` is logged (and fails for the prompt "fail on collect")."""

    def __init__(self, editor: _Editor, frames: torch.Tensor, index: int) -> None:
        self.editor, self.frames, self.index = editor, frames, index

    def result(self) -> tuple[torch.Tensor, BlockStats]:
        LOG.append(f"result {self.editor.prompt} {self.index}")
        if self.editor.prompt == "fail on collect":
            raise RuntimeError("device error while decoding")
        return 255 - self.frames, BlockStats(self.index, {"total": 1.0}, frames_in=FPB, frames_out=FPB)


class _Editor:
    """A ``BlockEditor`` that logs when the worker submits a block (its ticket logs the collection)."""

    frames_per_block, height, width = FPB, H, W

    def __init__(self, prompt: str) -> None:
        self.prompt, self.blocks = prompt, 0

    def submit_block(self, frames: torch.Tensor) -> _Ticket:
        LOG.append(f"submit {self.prompt} {self.blocks}")
        self.blocks += 1
        return _Ticket(self, frames, self.blocks - 1)

    def process_block(self, frames: torch.Tensor) -> tuple[torch.Tensor, BlockStats]:
        return self.submit_block(frames).result()

    def set_prompt(self, prompt: str, transition: Transition = "cut", blend_blocks: int = 0) -> None:
        self.prompt = prompt

    def set_params(
        self, seed: int | None = None, strength: float | None = None, steps: int | None = None
    ) -> None:
        pass


class RecordingFactory:
    frames_per_block, height, width = FPB, H, W

    def __init__(self, config: str, device: str) -> None:
        pass

    def new(self, prompt: str, seed: int, lipar: dict[str, Any] | None = None) -> BlockEditor:
        return _Editor(prompt)


@pytest.fixture
def loop() -> Any:
    LOG.clear()
    slab = FrameSlab(8, FPB, H, W)
    ctrl: queue.Queue[Any] = queue.Queue()
    results: queue.Queue[Any] = queue.Queue()
    w = WorkerLoop(f"{__name__}:RecordingFactory", "unused", "cpu", ctrl, results)
    w.overlap = True  # the GPU policy
    ctrl.put(m.AttachSlab(slab.name, 8, FPB))
    w._drain(block=False)
    yield w, slab, ctrl, results
    if w.slab is not None:
        w.slab.close()
    slab.close()


def _submit(slab: FrameSlab, ctrl: queue.Queue[Any], sid: str, seq: int, slot: int, value: int) -> None:
    slab.slot(slot)[:] = value
    ctrl.put(m.SubmitBlock(sid, seq, slot, FPB))


def _results(results: queue.Queue[Any]) -> list[Any]:
    out = []
    while not results.empty():
        out.append(results.get_nowait())
    return [r for r in out if not isinstance(r, (m.WorkerReady, m.WorkerMemory, m.WorkerLoad))]


def _two_sessions(loop: Any, x: tuple[str, str], y: tuple[str, str]) -> None:
    """Open sessions x and y ((id, prompt)) and queue blocks x0 (slot 0, value 10), y0 (slot 1, 20), x1 (slot 2,
    30); the worker has read them all."""
    w, slab, ctrl, _ = loop
    ctrl.put(m.OpenSession(*x))
    ctrl.put(m.OpenSession(*y))
    _submit(slab, ctrl, x[0], 0, 0, 10)
    _submit(slab, ctrl, y[0], 0, 1, 20)
    _submit(slab, ctrl, x[0], 1, 2, 30)
    w._drain(block=False)


def test_next_block_is_submitted_before_the_previous_is_collected(loop: Any) -> None:
    w, slab, _, results = loop
    _two_sessions(loop, ("a", "A"), ("b", "B"))
    w._run_one_block()
    assert _results(results) == []  # a0 is in flight
    w._run_one_block()
    done = _results(results)
    assert [(d.session_id, d.seq) for d in done] == [("a", 0)]  # collected after b0 was submitted
    w._run_one_block()
    w._collect()
    done = _results(results)
    assert [(d.session_id, d.seq, d.slot) for d in done] == [("b", 0, 1), ("a", 1, 2)]
    assert LOG == ["submit A 0", "submit B 0", "result A 0", "submit A 1", "result B 0", "result A 1"]
    assert (slab.slot(0) == 245).all() and (slab.slot(1) == 235).all() and (slab.slot(2) == 225).all()


class _IdleStops(queue.Queue):  # type: ignore[type-arg]
    """A control queue that, when the worker waits on it idle, notes what was delivered by then and stops it."""

    def __init__(self, results: queue.Queue[Any]) -> None:
        super().__init__()
        self.results = results
        self.seen_when_idle: list[Any] | None = None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and self.empty():  # the worker's blocking wait (get_nowait also comes through here)
            self.seen_when_idle = _results(self.results)
            return m.Stop()
        return super().get(block, timeout)


def test_lone_session_is_delivered_before_the_worker_waits(loop: Any) -> None:
    """With nothing else waiting the worker delivers at once (no added latency for a lone session)."""
    w, slab, _, results = loop
    ctrl = w.ctrl = _IdleStops(results)
    ctrl.put(m.OpenSession("a", "A"))
    _submit(slab, ctrl, "a", 0, 0, 1)
    w.run()
    assert ctrl.seen_when_idle is not None
    assert [(d.session_id, d.seq) for d in ctrl.seen_when_idle] == [("a", 0)]
    assert LOG == ["submit A 0", "result A 0"]


def test_failure_while_collecting_ends_only_that_session(loop: Any) -> None:
    w, _, _, results = loop
    _two_sessions(loop, ("bad", "fail on collect"), ("good", "G"))
    w._run_one_block()  # bad 0 in flight
    w._run_one_block()  # good 0 submitted, bad 0 collected -> fails
    errors = _results(results)
    assert len(errors) == 2
    err, freed = errors
    assert isinstance(err, m.SessionError) and err.fatal and err.slot == 0 and "device error" in err.message
    assert isinstance(freed, m.SlotsFreed) and freed.slots == (2,)  # bad's queued block is dropped
    assert "bad" not in w.sessions and list(w.order) == ["good"]
    w._run_one_block()
    w._collect()
    assert [(d.session_id, d.seq) for d in _results(results)] == [("good", 0)]


def test_session_closed_while_its_block_is_in_flight_frees_the_slot(loop: Any) -> None:
    w, slab, ctrl, results = loop
    ctrl.put(m.OpenSession("a", "A"))
    _submit(slab, ctrl, "a", 0, 3, 1)
    w._drain(block=False)
    w._run_one_block()
    ctrl.put(m.CloseSession("a"))
    w._drain(block=False)
    w._collect()
    out = _results(results)
    assert len(out) == 1 and isinstance(out[0], m.SlotsFreed) and out[0].slots == (3,)
    assert np.asarray(slab.slot(3)).max() == 1  # nothing was written into the freed slot


def test_load_meter_reports_busy_fraction_per_interval() -> None:
    """busy = 1 - idle wait / wall time of the interval; blocks per interval; nothing before the interval."""
    t = [100.0]
    meter = LoadMeter(1.0, clock=lambda: t[0])
    t[0] = 100.5
    meter.add_idle(0.2)
    assert meter.report() is None  # half an interval
    meter.blocks += 3
    t[0] = 101.25
    meter.add_idle(0.1)
    r = meter.report()
    assert r is not None and r.blocks == 3 and r.interval_s == pytest.approx(1.25)
    assert r.busy_ratio == pytest.approx(1 - 0.3 / 1.25)
    t[0] = 102.5
    meter.add_idle(1.25)  # idle all along
    r = meter.report()
    assert r is not None and r.busy_ratio == 0.0 and r.blocks == 0


class _StopsAfterIdle(queue.Queue):  # type: ignore[type-arg]
    """A control queue whose blocking wait takes ``idle_s`` of the worker's (fake) clock, then stops it."""

    def __init__(self, clock: list[float], idle_s: float) -> None:
        super().__init__()
        self.clock, self.idle_s = clock, idle_s

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and self.empty():
            self.clock[0] += self.idle_s
            return m.Stop()
        return super().get(block, timeout)


def test_worker_loop_counts_idle_waits_and_blocks(loop: Any) -> None:
    """The loop's blocking wait for messages is its idle time; every block delivered counts."""
    w, slab, _, results = loop
    t = [0.0]
    w.ctrl = _StopsAfterIdle(t, idle_s=3.0)
    w.ctrl.put(m.OpenSession("a", "A"))
    _submit(slab, w.ctrl, "a", 0, 0, 1)
    w.load = LoadMeter(1.0, clock=lambda: t[0])
    w._drain(block=False)  # one iteration of run(), by hand
    w._run_one_block()
    w._collect()
    t[0] += 1.0  # the block took a second
    w._drain(block=True)  # idles 3 s, then Stop
    report = w.load.report()
    assert report is not None and report.blocks == 1
    assert report.busy_ratio == pytest.approx(0.25)  # 1 s busy of 4 s
    assert [(d.session_id, d.seq) for d in _results(results)] == [("a", 0)]
    assert not w.running
