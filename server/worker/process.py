"""The worker process main loop. Everything in this module runs in the worker process.

One worker per device. It loads the model once, then loops: drain every queued message (controls are applied
to the sessions' editors now, i.e. at a block boundary), then run ONE block for the next session in round-
robin order that has a block waiting. Sessions are thus served block by block in turn and a busy session
cannot starve the others. Each session has at most a few blocks in flight (the server bounds it).

On a GPU the worker overlaps one block's decoding with the next block's work: it submits the next block
(``StreamEditor.submit_block``: encode, mask and DiT queued, the decoder on its own CUDA stream) before it
collects the previous one's frames, whenever another block is waiting; with nothing waiting it collects at
once, so a lone real-time session gets no extra latency. Blocks of one session are collected in order.

Load: the loop measures the wall time it spends idle-waiting for messages (the blocking ``get`` when no block
is waiting) and counts finished blocks; about once a second, between blocks, it reports the busy fraction of the
interval and the block count (:class:`~server.worker.messages.WorkerLoad`). Only the main thread of the worker
touches these counters, so the hot path gains two clock reads per idle wait and nothing else.

Liveness: the load report is the worker's heartbeat. The loop itself sends it every heartbeat interval
(between blocks, and after every idle wait, which never lasts longer than the interval). No helper thread
beats: a thread would keep beating while the main thread hangs in a device call or a deadlock, hiding exactly
the hang the pool must see. The pool therefore allows a silence well above the longest block
(``LIPAR_WORKER_LIVENESS_TIMEOUT_S``) and does not check liveness while the model loads (that has its own
limit, ``LIPAR_WORKER_START_TIMEOUT_S``): the beats start after ``WorkerReady``.
"""

from __future__ import annotations

import collections
import functools
import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np
import torch

from lipar_core.protocol import BlockEditor, BlockStats, SubmittedBlock
from server.worker import messages as m
from server.worker.editors import make_factory
from server.worker.ipc import FrameSlab
from server.worker.memory import HeapTrimmer, device_memory, resident_bytes

log = logging.getLogger("server.worker")

_IDLE_WAIT_S = 0.5
_HEAP_TRIM_INTERVAL_S = 1.0  # see server.worker.memory
_LOAD_REPORT_INTERVAL_S = 1.0
HEARTBEAT_INTERVAL_S = _LOAD_REPORT_INTERVAL_S  # default; the pool passes a shorter one for short limits


class LoadMeter:
    """Busy fraction and finished blocks of the worker loop per report interval. Worker main thread only.

    Args:
        interval_s: shortest time between two reports, s.
        clock: monotonic clock, s (injectable for tests).
    """

    def __init__(
        self, interval_s: float = _LOAD_REPORT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._t0 = clock()
        self.idle_s = 0.0
        self.blocks = 0

    def now(self) -> float:
        """The meter's clock, s."""
        return self._clock()

    def add_idle(self, seconds: float) -> None:
        """The loop spent ``seconds`` waiting for a message with nothing to do."""
        self.idle_s += seconds

    def report(self, memory: Callable[[], m.DeviceMemory | None] | None = None) -> m.WorkerLoad | None:
        """A report once ``interval_s`` has passed since the previous one (then the counters restart);
        ``memory`` (called only when a report is due) gives its device memory."""
        now = self._clock()
        dt = now - self._t0
        if dt < self.interval_s:
            return None
        busy = min(1.0, max(0.0, 1.0 - self.idle_s / dt))
        mem = memory() if memory is not None else None
        msg = m.WorkerLoad(busy_ratio=busy, blocks=self.blocks, interval_s=dt, memory=mem)
        self._t0, self.idle_s, self.blocks = now, 0.0, 0
        return msg


class _Session:
    def __init__(self, editor: BlockEditor) -> None:
        self.editor = editor
        self.pending: collections.deque[m.SubmitBlock] = collections.deque()
        self.control_id = 0


class _InFlight(NamedTuple):
    """A submitted block whose frames are still being decoded."""

    sid: str
    session: _Session
    blk: m.SubmitBlock
    ticket: SubmittedBlock
    t0: float
    control_id: int  # the session's last control applied before the block was submitted


class WorkerLoop:
    """The worker's state: its editors, its slab and the round-robin order.

    Args:
        factory_path: ``"module:attr"`` of the editor factory (:func:`server.worker.editors.make_factory`).
        config: the model preset name or YAML path.
        device: ``cpu`` or ``cuda:N``.
        ctrl: the queue of messages from the server.
        results: the queue of messages to the server.
        heartbeat_interval_s: time between two load reports (:class:`~server.worker.messages.WorkerLoad`, the
            heartbeat), s; the idle wait is never longer, so an idle worker beats on time too.
    """

    def __init__(
        self,
        factory_path: str,
        config: str,
        device: str,
        ctrl: Any,
        results: Any,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.ctrl, self.results = ctrl, results
        self.heartbeat_interval_s = heartbeat_interval_s
        self.idle_wait_s = min(_IDLE_WAIT_S, heartbeat_interval_s)
        self.factory = make_factory(factory_path, config, device, progress=self._progress)
        self.slab: FrameSlab | None = None
        self.sessions: dict[str, _Session] = {}
        self.order: collections.deque[str] = collections.deque()
        self.running = True
        self.parent = mp.parent_process()
        self.heap = HeapTrimmer(_HEAP_TRIM_INTERVAL_S)
        # Overlap (submit_block now, result() later) only pays where the editor decodes on a stream of its own,
        # a GPU; on a CPU submit_block does everything before returning, so the worker runs process_block.
        self.overlap: bool = torch.device(device).type == "cuda"
        self.inflight: _InFlight | None = None
        self.load = LoadMeter(heartbeat_interval_s)
        self._device_memory = functools.partial(device_memory, device)

    def _progress(self, stage: str, done: int, total: int) -> None:
        """The factory's warm-up progress, to the pool (:class:`~server.worker.messages.WorkerProgress`)."""
        if stage not in m.WARMUP_STAGES:
            raise ValueError(f"unknown warm-up stage {stage!r}; one of {m.WARMUP_STAGES}")
        self.results.put(m.WorkerProgress(cast(m.WarmupStage, stage), done, total))

    def run(self) -> None:
        """Serve until a :class:`~server.worker.messages.Stop` arrives or the queue breaks."""
        f = self.factory
        input_fps: float | None = getattr(f, "input_fps", None)  # optional (EditorFactory)
        self.results.put(m.WorkerReady(os.getpid(), f.frames_per_block, f.height, f.width, input_fps))
        self.load = LoadMeter(self.heartbeat_interval_s)  # the model load is not part of the first interval
        while self.running:
            busy = any(s.pending for s in self.sessions.values())
            if not busy:
                self._collect()  # nothing to overlap with: deliver now
            self._drain(block=not busy)
            if self.running:
                self._run_one_block()
                self._settle_memory()
                self._report_load()
        self._collect()
        if self.slab is not None:
            self.slab.close()

    def _settle_memory(self) -> None:
        """Between blocks, at most once per interval: return freed heap memory, report the settled RSS."""
        if self.heap.maybe_trim():
            rss = resident_bytes()
            if rss is not None:
                self.results.put(m.WorkerMemory(rss))

    def _report_load(self) -> None:
        """Between blocks and after idle waits, every heartbeat interval: the busy fraction and blocks since the
        last report, and a GPU's memory (the worker's heartbeat)."""
        msg = self.load.report(self._device_memory)
        if msg is not None:
            self.results.put(msg)

    def _drain(self, block: bool) -> None:
        t0 = self.load.now() if block else 0.0
        try:
            msg = self.ctrl.get(timeout=self.idle_wait_s) if block else self.ctrl.get_nowait()
        except queue.Empty:
            if block:
                self.load.add_idle(self.load.now() - t0)
            if self.parent is not None and not self.parent.is_alive():
                # the server process died without stopping us (e.g. SIGKILL): do not linger as an orphan
                log.warning("the server process is gone; worker exiting")
                self.running = False
            return
        if block:
            self.load.add_idle(self.load.now() - t0)
        self._handle(msg)
        for _ in range(10_000):  # bounded: whatever is queued now
            try:
                msg = self.ctrl.get_nowait()
            except queue.Empty:
                return
            self._handle(msg)

    def _handle(self, msg: m.ToWorker) -> None:
        if isinstance(msg, m.SubmitBlock):
            s = self.sessions.get(msg.session_id)
            if s is None:
                self.results.put(m.SessionError(msg.session_id, "unknown session", fatal=True, slot=msg.slot))
            else:
                s.pending.append(msg)
        elif isinstance(msg, m.OpenSession):
            self._open(msg)
        elif isinstance(msg, m.CloseSession):
            closed = self.sessions.pop(msg.session_id, None)
            if closed is not None:
                self.order.remove(msg.session_id)
                if closed.pending:
                    slots = tuple(b.slot for b in closed.pending)
                    self.results.put(m.SlotsFreed(msg.session_id, slots))
                log.info("closed session %s (%d left)", msg.session_id, len(self.sessions))
        elif isinstance(msg, m.SetPrompt):
            self._control(
                msg.session_id,
                msg.control_id,
                lambda e: e.set_prompt(msg.prompt, msg.transition, msg.blend_blocks),
            )
        elif isinstance(msg, m.SetParams):
            self._control(
                msg.session_id, msg.control_id, lambda e: e.set_params(msg.seed, msg.strength, msg.steps)
            )
        elif isinstance(msg, m.AttachSlab):
            f = self.factory
            self.slab = FrameSlab(msg.n_slots, msg.slot_frames, f.height, f.width, name=msg.name)
        elif isinstance(msg, m.Stop):
            self.running = False

    def _open(self, msg: m.OpenSession) -> None:
        try:
            editor = self.factory.new(msg.prompt, msg.seed, msg.lipar)
            if msg.strength is not None or msg.steps is not None:
                editor.set_params(strength=msg.strength, steps=msg.steps)
        except Exception as e:  # a bad parameter must fail this session, never the worker
            log.exception("cannot open session %s", msg.session_id)
            self.results.put(m.SessionError(msg.session_id, f"cannot start the editor: {e}", fatal=True))
            return
        self.sessions[msg.session_id] = _Session(editor)
        self.order.append(msg.session_id)
        log.info("opened session %s (%d now)", msg.session_id, len(self.sessions))

    def _control(self, sid: str, control_id: int, apply: Callable[[BlockEditor], None]) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        try:
            apply(s.editor)
        except (ValueError, TypeError) as e:
            self.results.put(m.SessionError(sid, f"rejected change: {e}", fatal=False))
            return
        s.control_id = max(s.control_id, control_id)

    def _run_one_block(self) -> None:
        for _ in range(len(self.order)):
            sid = self.order[0]
            self.order.rotate(-1)
            s = self.sessions[sid]
            if s.pending:
                self._process(sid, s, s.pending.popleft())
                return

    def _process(self, sid: str, s: _Session, blk: m.SubmitBlock) -> None:
        assert self.slab is not None, "a block arrived before the slab"
        view = self.slab.slot(blk.slot)
        frames = torch.from_numpy(view[: blk.n_frames].copy())  # the editor may keep its input
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                if self.overlap:
                    ticket = s.editor.submit_block(frames)
                else:
                    out, stats = s.editor.process_block(frames)
        except Exception as e:
            self._collect()
            self._fail(sid, s, blk, e)
            return
        if not self.overlap:
            self._deliver(sid, s, blk, out, stats, t0, s.control_id)
            return
        previous, self.inflight = self.inflight, _InFlight(sid, s, blk, ticket, t0, s.control_id)
        if previous is not None:
            self._finish(previous)

    def _collect(self) -> None:
        """Deliver the block in flight, if any."""
        previous, self.inflight = self.inflight, None
        if previous is not None:
            self._finish(previous)

    def _finish(self, f: _InFlight) -> None:
        try:
            with torch.inference_mode():
                out, stats = f.ticket.result()
        except Exception as e:
            self._fail(f.sid, f.session, f.blk, e)
            return
        self._deliver(f.sid, f.session, f.blk, out, stats, f.t0, f.control_id)

    def _fail(self, sid: str, s: _Session, blk: m.SubmitBlock, e: Exception) -> None:
        """A block failed: end its session (fatal error to the server), free its slots; the worker lives on."""
        self.load.blocks += 1
        log.error("block %d of session %s failed", blk.seq, sid, exc_info=e)
        if self.sessions.get(sid) is s:
            self.sessions.pop(sid)
            self.order.remove(sid)
        self.results.put(m.SessionError(sid, f"the model failed on a block: {e}", fatal=True, slot=blk.slot))
        if s.pending:
            self.results.put(m.SlotsFreed(sid, tuple(b.slot for b in s.pending)))
            s.pending.clear()

    def _deliver(
        self,
        sid: str,
        s: _Session,
        blk: m.SubmitBlock,
        out: torch.Tensor,
        stats: BlockStats,
        t0: float,
        control_id: int,
    ) -> None:
        assert self.slab is not None
        self.load.blocks += 1
        if self.sessions.get(sid) is not s:  # closed while its block was in flight: just free the slot
            self.results.put(m.SlotsFreed(sid, (blk.slot,)))
            return
        view = self.slab.slot(blk.slot)
        n_out = min(int(out.shape[0]), self.slab.slot_frames)
        view[:n_out] = out[:n_out].numpy()
        ms = {k: float(v) for k, v in stats.ms.items()}
        token_mask = stats.token_mask
        mask_grid, mask_bits = None, None
        if token_mask is not None:  # a few hundred bytes per block, for the page's heat map
            mask_grid = tuple(int(d) for d in token_mask.shape)
            mask_bits = np.packbits(token_mask.numpy().reshape(-1)).tobytes()
        ms.setdefault("total", (time.perf_counter() - t0) * 1000.0)
        self.results.put(
            m.BlockDone(
                sid,
                blk.seq,
                blk.slot,
                n_out,
                index=int(stats.index),
                ms=ms,
                prune_ratio=float(stats.prune_ratio),
                control_id=control_id,
                mask_grid=mask_grid,
                mask_bits=mask_bits,
            )
        )


def worker_main(
    index: int,
    device: str,
    config: str,
    factory_path: str,
    ctrl: Any,
    results: Any,
    log_level: str,
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    threads: int = 0,
) -> None:
    """Entry point of a worker process (``multiprocessing`` spawn target). ``threads`` > 0 sets torch's
    intra-op threads (one inter-op thread: a worker runs one block at a time)."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s worker{index}[{device}] %(levelname)s %(message)s"
    )
    if threads > 0:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        log.info("worker %d: %d torch thread(s)", index, threads)
    try:
        if torch.device(device).type == "cuda":
            # this process serves one GPU: make it the current device, so that whatever allocates, captures or
            # creates a stream without naming a device (torch, cuDNN, compiled kernels) lands on it, not on cuda:0
            torch.cuda.set_device(torch.device(device))
        loop = WorkerLoop(factory_path, config, device, ctrl, results, heartbeat_interval_s)
    except Exception as e:
        log.exception("worker %d could not start", index)
        results.put(m.WorkerFailed(f"{type(e).__name__}: {e}"))
        raise SystemExit(3) from e
    loop.run()
    log.info("worker %d stopped", index)
