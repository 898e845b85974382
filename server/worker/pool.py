"""The worker pool: starts one worker process per device, places sessions, moves blocks, restarts crashes.

Runs in the server process. Who runs what:

* the **event loop thread** owns all state (placement, slots, sessions, metrics) and runs every method of the
  public API; :meth:`WorkerPool.submit` copies a block's frames into its slot there (one copy straight from the
  ring's frames, about 1 ms for 12 frames at 832x480; keeping it synchronous keeps the order of blocks and
  controls on the worker's queue exactly the order of the calls);
* one **result reader thread per worker** receives the worker's messages; for a ``BlockDone`` it first copies
  the edited frames out of the shared-memory slot (numpy releases the GIL while copying), then forwards the
  message and the frames into the loop with ``call_soon_threadsafe``. The slot is the reader's to read from the
  moment the worker sends ``BlockDone`` until the loop frees it in ``_dispatch``, which runs after the copy, so
  no lock is needed. Slabs are closed only after the readers have stopped (:meth:`WorkerPool.stop`);
* one **watcher thread** notices worker processes that exit and forwards that into the loop.

A worker that exits unexpectedly (non-zero exit code, killed, vanished) has its sessions reported lost (the
session manager marks them ``failed`` with the reason), ``worker_restarts`` increments and a new process is
started: at once after a single failure, then with exponential back-off (1 s, 2 s, 4 s, … up to
``backoff_max_s``) while failures follow one another (:func:`restart_delay`; a worker that stayed ready for
:data:`STABLE_S` starts the count afresh). A worker that fails to *start* (exits, or misses
``start_timeout_s``, before its model is loaded) ``max_start_failures`` times in a row is given up: its state
is ``failed``, ``/readyz`` reports it with its last error and it is not started again until the server restarts
(a preset that cannot load must not spin forever). The node keeps serving on its other workers
(:attr:`WorkerPool.ready`): one GPU that cannot start does not take the others' sessions away.

Liveness: a ready worker's main loop sends its load report (:class:`~server.worker.messages.WorkerLoad`, the
heartbeat) about every second, a quarter of the limit when that is shorter (:mod:`server.worker.process`); the
reader thread stamps the arrival of every message of the worker.
A task on the event loop checks the stamps: a ready worker silent for longer than ``liveness_timeout_s``
(stopped, deadlocked, stuck in a device call) is declared hung. Its sessions are reported lost at once with
the reason (``worker 0 on cuda:0 unresponsive: …``), ``lipar_worker_hangs_total`` increments, the process is
killed (SIGKILL also ends a stopped process) and the watcher restarts it like any other exit. The check does
not run while a worker loads its model: that is ``start_timeout_s``'s job. Per-worker ``state`` in
:meth:`WorkerPool.status`: ``starting`` (loading the model), ``ready``, ``hung`` (being killed),
``restarting`` (waiting out the back-off), ``failed`` (given up), ``stopped``.

Workers report their load (:class:`~server.worker.messages.WorkerLoad`) about once a second: ``status()`` gives
``busy`` (fraction of wall time not idle-waiting), ``blocks_per_s`` and, on a GPU, ``memory_mb`` (allocated,
reserved, used on the card, total) per worker; the gauges ``lipar_worker_busy_ratio{worker}`` and
``lipar_worker_device_memory_bytes{worker,device,kind}`` follow it, and ``lipar_worker_sessions{worker,device}``
follows placement.

Placement: a new session goes to the ready worker with the fewest sessions that has room (on a tie the least
busy to a tenth, then the lowest index), so sessions fill the devices evenly, and it stays there for its life
(its editor state lives in that process); a session whose worker dies fails with the reason instead of moving.

The pool also runs the event-loop lag probe (:class:`~server.metrics.LoopLagProbe`) from :meth:`start` to
:meth:`stop`: it is the server-process part that lives exactly as long as the loop serves sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from server.metrics import LoopLagProbe, Metrics
from server.worker import messages as m
from server.worker.editors import DEFAULT_FACTORY
from server.worker.ipc import FrameSlab
from server.worker.process import worker_main
from server.worker.rate import slowest_rate

log = logging.getLogger(__name__)

#: blocks one session may have inside its worker at once. One: the next block is submitted the moment the
#: previous one comes back (the ring already holds it when the worker is the bottleneck), and a block never
#: waits inside the worker growing stale while newer frames are in the ring (with several sessions per worker
#: the worker still always has work: one block per session).
MAX_INFLIGHT_PER_SESSION = 1
_POLL_S = 0.25
_BACKOFF_BASE_S = 1.0
#: a worker that was ready this long before it exited counts as healthy: its next failure restarts at once
STABLE_S = 60.0


#: the part of a worker's start each warm-up stage covers (from, to), for :func:`warmup_fraction`: loading the
#: model is quick next to the GPU's compiling and graph capture, which take most of a GPU worker's start; the rate
#: measurement is a few blocks
_STAGE_SPAN: dict[str, tuple[float, float]] = {
    "starting": (0.0, 0.0),
    "loading": (0.0, 0.3),
    "compiling": (0.3, 0.5),
    "capturing": (0.5, 0.9),
    "measuring": (0.9, 1.0),
    "ready": (1.0, 1.0),
}


def warmup_fraction(p: m.WorkerProgress) -> float:
    """How much of a worker's start is done, 0..1 (a rough guide for a progress bar, not a time estimate)."""
    lo, hi = _STAGE_SPAN[p.stage]
    part = min(1.0, max(0.0, p.done / p.total)) if p.total > 0 else 0.0
    return lo + (hi - lo) * part


def auto_threads(device: str, devices: list[str], cores: int | None = None) -> int:
    """Torch threads for the worker of ``device`` when the operator set none (``LIPAR_WORKER_THREADS=0``).

    A CPU worker gets the cores split evenly among the CPU workers, at least one, so that several CPU workers
    never oversubscribe the cores (torch's default gives every process all of them). One worker on two cores
    keeps both: measured on the 2-core dev machine, one `tiny` session at 416x240 received 12.8 fps with two model
    threads against 8.6 with one (the codecs' share of the cores costs less than a halved model). A GPU worker
    keeps torch's default (0: not set), the setting every GPU measurement of this project ran with.

    Args:
        device: the worker's device (``cpu``, ``cuda:N``).
        devices: every worker's device.
        cores: CPU cores usable by this process (default: its affinity mask).
    """
    if not device.startswith("cpu"):
        return 0
    n = cores if cores is not None else len(os.sched_getaffinity(0))
    cpu_workers = sum(1 for d in devices if d.startswith("cpu"))
    return max(1, n // max(cpu_workers, 1))


def restart_delay(failures_in_row: int, ceiling_s: float, base_s: float = _BACKOFF_BASE_S) -> float:
    """Seconds to wait before restarting a worker that has now failed ``failures_in_row`` times in a row.

    The first failure restarts at once (a one-off crash or hang should cost no more than a model load); then
    ``base_s``, ``2·base_s``, ``4·base_s``, … never more than ``ceiling_s``.
    """
    if failures_in_row <= 1:
        return 0.0
    return float(min(ceiling_s, base_s * 2.0 ** min(failures_in_row - 2, 30)))


@dataclass
class Geometry:
    """What one worker's blocks look like: ``frames_per_block`` frames of ``height`` × ``width`` RGB."""

    frames_per_block: int
    height: int
    width: int


@dataclass
class _Worker:
    index: int
    device: str
    generation: int = 0
    proc: BaseProcess | None = None
    ctrl: Any = None
    results: Any = None
    ready: bool = False
    stopping: bool = False
    geometry: Geometry | None = None
    slab: FrameSlab | None = None
    free_slots: list[int] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    last_error: str | None = None
    restarts: int = 0
    state: str = "starting"  # starting | ready | hung | restarting | failed | stopped (see the module doc)
    ready_at: float | None = None  # when this process reported its model loaded (None: not yet)
    served: bool = False  # some process of this worker has been ready since the pool started (never reset)
    last_seen: float = 0.0  # monotonic time the reader received this process's latest message
    failures_in_row: int = 0  # exits without a healthy stretch of STABLE_S in between (back-off)
    start_failures: int = 0  # exits before the model loaded, in a row (give up at max_start_failures)
    settled_rss_bytes: int | None = None
    busy: float | None = None  # fraction of wall time not idle-waiting, last report
    blocks_per_s: float | None = None  # blocks finished per second, last report
    memory: m.DeviceMemory | None = None  # a GPU worker's device memory, last report
    reader: threading.Thread | None = None
    warmup: m.WorkerProgress = field(default_factory=lambda: m.WorkerProgress("starting", 0, 0))
    #: input rate one session sustains, measured at this device's latest warm-up (kept across restarts), fps
    input_fps: float | None = None


def _memory_mb(mem: m.DeviceMemory | None) -> dict[str, float] | None:
    """``/readyz``'s ``memory_mb`` of a worker: its device memory in MiB (None on a CPU or before a report)."""
    if mem is None:
        return None
    return {kind: round(n / 2**20, 1) for kind, n in dataclasses.asdict(mem).items()}


BlockCallback = Callable[[str, m.BlockDone, np.ndarray], None]
ErrorCallback = Callable[[str, str, bool], None]
LostCallback = Callable[[set[str], str], None]


class WorkerPool:
    """One worker process per device; the server process's handle on them."""

    def __init__(
        self,
        config: str,
        devices: list[str],
        sessions_per_worker: int,
        metrics: Metrics,
        *,
        factory: str = DEFAULT_FACTORY,
        log_level: str = "INFO",
        start_timeout_s: float = 180.0,
        liveness_timeout_s: float = 15.0,
        max_start_failures: int = 5,
        backoff_max_s: float = 30.0,
        threads: int = 0,
    ) -> None:
        """The pool (no process starts before :meth:`start`).

        Args:
            config: model preset name or YAML path, loaded by every worker.
            devices: one worker per device (``cpu``, ``cuda:N``).
            sessions_per_worker: admission limit per worker.
            metrics: where the pool's gauges and counters go.
            factory: import path of the worker's editor factory.
            log_level: the workers' logging level.
            start_timeout_s: model load budget per start; a worker over it is killed (a failed start).
            liveness_timeout_s: longest silence of a ready worker before it is declared hung; 0: no check.
            max_start_failures: failed starts in a row before a worker is given up (state ``failed``).
            backoff_max_s: ceiling of the restart back-off.
            threads: torch threads of each worker process; 0: :func:`auto_threads`.
        """
        self.config, self.factory, self.log_level = config, factory, log_level
        self.start_timeout_s = start_timeout_s
        self.liveness_timeout_s = liveness_timeout_s
        self.max_start_failures = max_start_failures
        self.backoff_max_s = backoff_max_s
        # beats 4+ times per limit (at most once a second): one late beat never trips the check
        self.heartbeat_interval_s = min(1.0, liveness_timeout_s / 4) if liveness_timeout_s > 0 else 1.0
        self.capacity = sessions_per_worker
        self.metrics = metrics
        self.workers = [_Worker(i, d) for i, d in enumerate(devices)]
        self.threads = {d: threads or auto_threads(d, devices) for d in devices}
        # the per-device series exist from the start (at 0): rate() and increase() then see the first event
        for d in devices:
            metrics.worker_restarts.labels(device=d)
            metrics.worker_hangs.labels(device=d)
        for w in self.workers:
            metrics.worker_info.labels(worker=str(w.index), device=w.device).set(1)
            metrics.worker_sessions.labels(worker=str(w.index), device=w.device).set(0)
        self._ctx = mp.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: dict[str, _Worker] = {}
        self._slots: dict[str, set[int]] = {}
        self._stopping = False
        self._watcher: threading.Thread | None = None
        self._liveness: asyncio.Task[None] | None = None
        self._lag = LoopLagProbe(metrics.event_loop_lag)
        self._ready_event = asyncio.Event()
        self.on_block: BlockCallback = lambda sid, msg, frames: None
        self.on_error: ErrorCallback = lambda sid, message, fatal: None
        self.on_lost: LostCallback = lambda sids, reason: None

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker process (returns at once; :attr:`ready` turns true as models finish loading)."""
        self._loop = asyncio.get_running_loop()
        self._ready_event = asyncio.Event()
        for w in self.workers:
            self._spawn(w)
        self._watcher = threading.Thread(target=self._watch, name="worker-watcher", daemon=True)
        self._watcher.start()
        self._lag.start()
        if self.liveness_timeout_s > 0:
            self._liveness = self._loop.create_task(self._check_liveness(), name="worker-liveness")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the node is :attr:`ready` (or ``timeout`` seconds)."""
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop, wait for them (then kill stragglers) and free the shared memory."""
        self._stopping = True
        await self._lag.stop()
        if self._liveness is not None:
            self._liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liveness
            self._liveness = None
        for w in self.workers:
            w.stopping = True
            if w.state != "failed":
                w.state = "stopped"
            if w.proc is not None and w.proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    w.ctrl.put(m.Stop())
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if w.proc is None:
                continue
            await asyncio.to_thread(w.proc.join, max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                log.warning("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()
                await asyncio.to_thread(w.proc.join, 5.0)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 2.0)
        for w in self.workers:  # the readers copy out of the slabs: they must be gone before the slabs close
            if w.reader is not None:
                await asyncio.to_thread(w.reader.join, 2.0)
        for w in self.workers:
            if w.slab is not None:
                w.slab.close()
                w.slab = None
            for q in (w.ctrl, w.results):
                if q is not None:
                    q.close()
                    q.cancel_join_thread()
        self.metrics.workers_up.set(0)

    @property
    def ready(self) -> bool:
        """The node serves: its start is over (every worker has been ready at least once, or was given up
        after ``max_start_failures`` failed starts) and at least one worker is ready now.

        So a node of several devices whose other workers are restarting, hung or given up keeps serving on the
        ready ones, with less capacity (``/readyz``'s ``checks.workers`` says which are not serving), instead of
        leaving every GPU of the host idle; a node of one worker is ready exactly when its worker is. While the
        workers first start, the node is not ready until each has loaded or been given up, so the first sessions
        are placed over all of them.
        """
        started = all(w.served or w.state == "failed" for w in self.workers)
        return started and any(w.ready for w in self.workers)

    def status(self) -> list[dict[str, Any]]:
        """Per-worker state for ``/readyz``.

        ``state`` is one of ``starting``, ``ready``, ``hung``, ``restarting``, ``failed`` (given up after
        ``start_failures`` failed starts in a row; ``last_error`` says why), ``stopped``; ``heartbeat_age_s`` is
        the time since the worker's latest message while it is ready (null otherwise).
        """
        now = time.monotonic()
        return [
            {
                "index": w.index,
                "device": w.device,
                "state": w.state,
                "ready": w.ready,
                "pid": w.proc.pid if w.proc is not None else None,
                "sessions": len(w.sessions),
                "capacity": self.capacity,
                "restarts": w.restarts,
                "start_failures": w.start_failures,
                "last_error": w.last_error,
                "heartbeat_age_s": round(max(0.0, now - w.last_seen), 2) if w.ready else None,
                "settled_rss_mb": (
                    round(w.settled_rss_bytes / 2**20, 1) if w.settled_rss_bytes is not None else None
                ),
                "busy": round(w.busy, 3) if w.busy is not None else None,
                "memory_mb": _memory_mb(w.memory),
                "blocks_per_s": round(w.blocks_per_s, 2) if w.blocks_per_s is not None else None,
                "warmup": {"stage": w.warmup.stage, "done": w.warmup.done, "total": w.warmup.total},
                "input_fps": w.input_fps,
            }
            for w in self.workers
        ]

    @property
    def input_fps(self) -> float | None:
        """The input frame rate a camera should send so that one session keeps up on any worker, fps: the
        minimum over the workers of the rate each measured at its warm-up (:mod:`server.worker.rate`); None until
        a worker has measured it. A restarted worker keeps its device's previous figure until it measures anew.
        Event loop thread."""
        return slowest_rate([w.input_fps for w in self.workers])

    def progress(self) -> dict[str, Any]:
        """How far the workers' start has come, for everyone (``/readyz``'s ``progress``; no pids, no errors):
        the stage of the least advanced worker with its ``done`` of ``total``, and ``fraction`` (0..1), the mean
        over the workers of :func:`warmup_fraction`."""
        order = {stage: i for i, stage in enumerate(m.WARMUP_STAGES)}
        least = min(
            (w.warmup for w in self.workers), key=lambda p: (order[p.stage], p.done / max(1, p.total))
        )
        fraction = sum(warmup_fraction(w.warmup) for w in self.workers) / max(1, len(self.workers))
        return {
            "stage": least.stage,
            "done": least.done,
            "total": least.total,
            "fraction": round(fraction, 3),
        }

    def pids(self) -> list[int | None]:
        """Process ids of the workers (for operators and tests)."""
        return [w.proc.pid if w.proc is not None else None for w in self.workers]

    # ---- placement -------------------------------------------------------------------------------------
    def free_capacity(self) -> int:
        """Sessions this node can still admit on ready workers."""
        return sum(self.capacity - len(w.sessions) for w in self.workers if w.ready)

    def total_capacity(self) -> int:
        """Sessions this node admits when every worker is ready."""
        return self.capacity * len(self.workers)

    def serving_capacity(self) -> int:
        """Sessions this node admits on the workers ready now."""
        return self.capacity * sum(w.ready for w in self.workers)

    def geometry_of(self, session_id: str) -> Geometry:
        """Block geometry of the worker serving ``session_id``."""
        g = self._owner[session_id].geometry
        assert g is not None
        return g

    def open_session(
        self,
        session_id: str,
        prompt: str,
        seed: int,
        strength: float | None,
        steps: int | None,
        lipar: dict[str, Any] | None = None,
    ) -> bool:
        """Place the session on the ready worker with room that has the fewest sessions; among those, the least
        busy by its last load report, to a tenth (sessions differ in cost: a moving camera prunes less; idle
        workers' few thousandths are a tie), then the lowest index. False when none has room."""
        candidates = [w for w in self.workers if w.ready and len(w.sessions) < self.capacity]
        if not candidates:
            return False
        w = min(candidates, key=lambda w: (len(w.sessions), round(w.busy or 0.0, 1), w.index))
        w.sessions.add(session_id)
        self._sessions_changed(w)
        self._owner[session_id] = w
        self._slots[session_id] = set()
        self._send(w, m.OpenSession(session_id, prompt, seed, strength, steps, lipar))
        return True

    def close_session(self, session_id: str) -> None:
        """Free the session's editor in its worker (idempotent)."""
        w = self._owner.pop(session_id, None)
        if w is None:
            return
        w.sessions.discard(session_id)
        self._sessions_changed(w)
        self._send(w, m.CloseSession(session_id))

    def control(self, session_id: str, msg: m.SetPrompt | m.SetParams) -> bool:
        """Send a prompt or parameter change; applied by the worker at the next block boundary."""
        w = self._owner.get(session_id)
        if w is None:
            return False
        self._send(w, msg)
        return True

    def inflight(self, session_id: str) -> int:
        """Blocks of this session inside its worker now."""
        return len(self._slots.get(session_id, ()))

    def submit(self, session_id: str, seq: int, frames: Sequence[np.ndarray] | np.ndarray) -> bool:
        """Copy one block (``T`` frames ``[H, W, 3]`` uint8, a list or one array) into a free slot; send it.

        Event loop thread. Each frame is copied straight into the shared-memory slot (no intermediate stack).
        False (nothing sent) when the session has ``MAX_INFLIGHT_PER_SESSION`` blocks inside or no slot is free.
        """
        w = self._owner.get(session_id)
        if (
            w is None
            or w.slab is None
            or not w.free_slots
            or self.inflight(session_id) >= MAX_INFLIGHT_PER_SESSION
        ):
            return False
        slot = w.free_slots.pop()
        n = len(frames)
        view = w.slab.slot(slot)
        for i, frame in enumerate(frames):
            view[i] = frame
        self._slots[session_id].add(slot)
        self._send(w, m.SubmitBlock(session_id, seq, slot, n))
        return True

    # ---- internals (event loop thread) -----------------------------------------------------------------
    def _send(self, w: _Worker, msg: m.ToWorker) -> None:
        try:
            w.ctrl.put(msg)
        except (OSError, ValueError) as e:  # the queue of a dead worker; the watcher reports the death
            log.warning("cannot send %s to worker %d: %s", m.describe(msg), w.index, e)

    def _spawn(self, w: _Worker) -> None:
        w.generation += 1
        w.ready = False
        w.state = "starting"
        w.ready_at = None
        w.settled_rss_bytes = None
        w.busy = w.blocks_per_s = None
        w.memory = None
        w.warmup = m.WorkerProgress("starting", 0, 0)
        w.ctrl, w.results = self._ctx.Queue(), self._ctx.Queue()
        w.proc = self._ctx.Process(
            target=worker_main,
            args=(
                w.index,
                w.device,
                self.config,
                self.factory,
                w.ctrl,
                w.results,
                self.log_level,
                self.heartbeat_interval_s,
                self.threads[w.device],
            ),
            name=f"lipar-worker-{w.index}",
            daemon=True,
        )
        w.proc.start()
        log.info(
            "started worker %d on %s (pid %s, generation %d)", w.index, w.device, w.proc.pid, w.generation
        )
        w.reader = threading.Thread(
            target=self._read, args=(w, w.generation, w.results), name=f"worker-{w.index}-reader", daemon=True
        )
        w.reader.start()
        assert self._loop is not None
        self._loop.call_later(self.start_timeout_s, self._check_started, w, w.generation)

    def _check_started(self, w: _Worker, generation: int) -> None:
        """Kill a worker that has not loaded its model in time; the watcher then restarts it."""
        if generation != w.generation or w.ready or self._stopping or w.proc is None:
            return
        w.last_error = f"the model did not load within {self.start_timeout_s:g} s"
        log.error("worker %d: %s; killing it", w.index, w.last_error)
        w.proc.kill()

    def _read(self, w: _Worker, generation: int, results: Any) -> None:
        """Reader thread: forward the worker's messages into the event loop until it is replaced.

        Every message stamps ``w.last_seen`` (here, not on the loop: a busy loop must not make a live worker
        look silent). After the process is replaced the reader still drains what it sent before it died (a
        ``WorkerFailed`` naming why it could not start), then stops. A ``BlockDone``'s frames are copied out of
        the slab here, before the message is forwarded.
        """
        assert self._loop is not None
        while not self._stopping:
            try:
                msg = results.get(timeout=_POLL_S)
            except queue.Empty:
                if w.generation != generation:
                    return
                continue
            except (EOFError, OSError, ValueError):
                return
            if w.generation == generation:
                w.last_seen = time.monotonic()
            frames = self._copy_out(w, msg) if isinstance(msg, m.BlockDone) else None
            try:
                self._loop.call_soon_threadsafe(self._dispatch, w, generation, msg, frames)
            except RuntimeError:  # loop closed
                return

    @staticmethod
    def _copy_out(w: _Worker, msg: m.BlockDone) -> np.ndarray:
        """Reader thread: a copy of the edited frames in ``msg.slot`` (the slot is ours until the loop frees it)."""
        slab = w.slab
        if slab is None:
            return np.empty(0, dtype=np.uint8)
        try:
            return slab.slot(msg.slot)[: msg.n_frames].copy()
        except Exception:  # never let one bad message end the reader
            log.exception("worker %d: cannot copy block %d of session %s", w.index, msg.seq, msg.session_id)
            return np.empty(0, dtype=np.uint8)

    def _watch(self) -> None:
        """Watcher thread: notice worker processes that exit (never dies on an unexpected error)."""
        assert self._loop is not None
        while not self._stopping:
            try:
                self._watch_once()
            except RuntimeError:  # the event loop is closed: the server is going down
                return
            except Exception:
                log.exception("worker watcher error; continuing")
                time.sleep(_POLL_S)

    def _watch_once(self) -> None:
        assert self._loop is not None
        snapshot = [(w, w.generation, w.proc) for w in self.workers]
        procs = {p.sentinel: (w, gen, p) for w, gen, p in snapshot if p is not None}
        if not procs:
            time.sleep(_POLL_S)
            return
        for sentinel in mp_wait(list(procs), timeout=_POLL_S):
            w, gen, _ = procs[sentinel]  # type: ignore[index]
            self._loop.call_soon_threadsafe(self._on_exit, w, gen)
        # an exited process stays signalled until the loop replaces it: wait for that (bounded)
        for w, gen, p in procs.values():
            # the sentinel, not is_alive(): only the event loop thread may reap (waitpid) a worker, or the
            # loop could read its exit code as None while this thread holds the status
            if mp_wait([p.sentinel], timeout=0):
                deadline = time.monotonic() + 5.0
                while w.generation == gen and not self._stopping and time.monotonic() < deadline:
                    time.sleep(0.05)

    def _dispatch(
        self, w: _Worker, generation: int, msg: m.FromWorker, frames: np.ndarray | None = None
    ) -> None:
        """Event loop: act on one message of a worker (``frames``: a ``BlockDone``'s, copied by the reader)."""
        if isinstance(msg, m.WorkerFailed):  # may come after its process's exit was handled: keep the reason
            if generation == w.generation or not w.ready:
                w.last_error = msg.message
                log.error("worker %d failed to start: %s", w.index, msg.message)
            return
        if generation != w.generation:
            return
        if isinstance(msg, m.BlockDone):
            if frames is None:
                frames = np.empty(0, dtype=np.uint8)
            self._free(w, msg.session_id, (msg.slot,))
            if msg.session_id in self._owner:
                self.on_block(msg.session_id, msg, frames)
        elif isinstance(msg, m.SlotsFreed):
            self._free(w, msg.session_id, msg.slots)
        elif isinstance(msg, m.SessionError):
            if msg.slot >= 0:
                self._free(w, msg.session_id, (msg.slot,))
            if msg.session_id in self._owner:
                self.on_error(msg.session_id, msg.message, msg.fatal)
        elif isinstance(msg, m.WorkerReady):
            self._on_ready(w, msg)
        elif isinstance(msg, m.WorkerProgress):
            w.warmup = msg
            log.info("worker %d warming up: %s %d of %d", w.index, msg.stage, msg.done, msg.total)
        elif isinstance(msg, m.WorkerMemory):
            w.settled_rss_bytes = msg.settled_rss_bytes
            self.metrics.worker_settled_rss.labels(worker=str(w.index)).set(msg.settled_rss_bytes)
        elif isinstance(msg, m.WorkerLoad):
            w.busy = msg.busy_ratio
            w.blocks_per_s = msg.blocks / msg.interval_s if msg.interval_s > 0 else 0.0
            self.metrics.worker_busy.labels(worker=str(w.index)).set(msg.busy_ratio)
            if msg.memory is not None:
                w.memory = msg.memory
                for kind, n in dataclasses.asdict(msg.memory).items():
                    self.metrics.worker_device_memory.labels(
                        worker=str(w.index), device=w.device, kind=kind
                    ).set(n)

    def _sessions_changed(self, w: _Worker) -> None:
        """The gauge of sessions placed on ``w`` follows its set."""
        self.metrics.worker_sessions.labels(worker=str(w.index), device=w.device).set(len(w.sessions))

    def _free(self, w: _Worker, session_id: str, slots: tuple[int, ...]) -> None:
        owned = self._slots.get(session_id)
        for s in slots:
            if owned is not None:
                owned.discard(s)
            if s not in w.free_slots:
                w.free_slots.append(s)
        if owned is not None and not owned and session_id not in self._owner:
            del self._slots[session_id]

    def _on_ready(self, w: _Worker, msg: m.WorkerReady) -> None:
        g = Geometry(msg.frames_per_block, msg.height, msg.width)
        n_slots = self.capacity * MAX_INFLIGHT_PER_SESSION
        slot_frames = 2 * g.frames_per_block  # room for T_out up to 2T (first blocks of some autoencoders)
        if w.slab is None or w.geometry != g:
            if w.slab is not None:
                old, w.slab = w.slab, None
                try:
                    old.close()
                except BufferError:  # an old reader still copying out of it: it is freed with the view
                    log.warning("worker %d: the previous frame slab is still in use; not unlinked", w.index)
            w.slab = FrameSlab(n_slots, slot_frames, g.height, g.width)
        w.geometry = g
        if msg.input_fps is not None:
            w.input_fps = msg.input_fps
        w.free_slots = list(range(n_slots))
        self._send(w, m.AttachSlab(w.slab.name, n_slots, slot_frames))
        w.ready = w.served = True
        w.state = "ready"
        w.warmup = m.WorkerProgress("ready", 1, 1)
        w.ready_at = w.last_seen = time.monotonic()
        w.start_failures = 0
        w.last_error = None
        log.info(
            "worker %d ready on %s: %d frames per block at %dx%d, input rate %s fps",
            w.index,
            w.device,
            g.frames_per_block,
            g.width,
            g.height,
            "not measured" if msg.input_fps is None else f"{msg.input_fps:g}",
        )
        self.metrics.workers_up.set(sum(x.ready for x in self.workers))
        if self.ready:
            self._ready_event.set()

    def _drop_sessions(self, w: _Worker) -> set[str]:
        """Forget every session placed on ``w`` (its worker state is gone); return their ids."""
        lost = set(w.sessions)
        for sid in lost:
            self._owner.pop(sid, None)
            self._slots.pop(sid, None)
        w.sessions.clear()
        self._sessions_changed(w)
        return lost

    def _not_serving(self, w: _Worker, state: str) -> None:
        """``w`` no longer serves (``state`` says why): readiness and the gauges follow (the node stays ready
        while another worker serves, see :attr:`ready`)."""
        w.ready = False
        w.state = state
        if self.ready:
            self._ready_event.set()  # a worker given up may end the start: the others serve
            if state == "failed":
                log.warning(
                    "worker %d on %s given up: this node serves on %d of %d workers",
                    w.index,
                    w.device,
                    sum(x.ready for x in self.workers),
                    len(self.workers),
                )
        else:
            self._ready_event.clear()
        self.metrics.workers_up.set(sum(x.ready for x in self.workers))
        self.metrics.workers_failed.set(sum(x.state == "failed" for x in self.workers))

    async def _check_liveness(self) -> None:
        """Event loop task: declare hung every ready worker silent for longer than ``liveness_timeout_s``."""
        interval = min(0.5, self.liveness_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for w in self.workers:
                if w.state != "ready" or w.stopping or w.proc is None:
                    continue
                silence = now - w.last_seen
                if silence > self.liveness_timeout_s:
                    self._on_hung(w, silence)

    def _on_hung(self, w: _Worker, silence: float) -> None:
        """Fail the sessions of a silent worker now, with the reason, and kill it (the watcher restarts it)."""
        assert w.proc is not None
        w.last_error = f"unresponsive: no heartbeat for {silence:.1f} s (limit {self.liveness_timeout_s:g} s)"
        reason = f"worker {w.index} on {w.device} {w.last_error}; killed and restarted"
        log.error("%s (pid %s)", reason, w.proc.pid)
        self.metrics.worker_hangs.labels(device=w.device).inc()
        lost = self._drop_sessions(w)
        self._not_serving(w, "hung")
        if lost:
            self.on_lost(lost, reason)
        w.proc.kill()  # SIGKILL ends a stopped (SIGSTOP) process too

    def _on_exit(self, w: _Worker, generation: int) -> None:
        if generation != w.generation or self._stopping or w.stopping:
            return
        assert w.proc is not None
        w.proc.join(2.0)  # the sentinel fires when the pipe closes; reap the process to read its exit code
        code = w.proc.exitcode
        reason = f"worker {w.index} on {w.device} exited unexpectedly (exit code {code})"
        if code is not None and code < 0:
            reason = f"worker {w.index} on {w.device} was killed by signal {-code}"
        if w.last_error:
            reason += f": {w.last_error}"
        loaded = w.ready_at is not None
        if w.ready_at is not None and time.monotonic() - w.ready_at >= STABLE_S:
            w.failures_in_row = 0  # it had been serving fine: this failure starts a new sequence
        w.failures_in_row += 1
        w.start_failures = 0 if loaded else w.start_failures + 1
        lost = self._drop_sessions(w)
        w.ctrl.close()
        w.ctrl.cancel_join_thread()  # the results queue is the reader's: it drains what the process left
        w.proc = None  # the watcher must not report this death twice
        w.generation += 1  # invalidate the old reader; _spawn bumps it again
        give_up = w.start_failures >= self.max_start_failures
        self._not_serving(w, "failed" if give_up else "restarting")
        if lost:
            self.on_lost(lost, reason)
        if give_up:
            log.error(
                "%s; it failed to start %d times in a row: giving up on it (fix the cause and restart the server)",
                reason,
                w.start_failures,
            )
            return
        delay = restart_delay(w.failures_in_row, self.backoff_max_s)
        log.error("%s; restarting it in %.1f s", reason, delay)
        w.restarts += 1
        self.metrics.worker_restarts.labels(device=w.device).inc()
        assert self._loop is not None
        self._loop.call_later(delay, self._respawn, w, w.generation)

    def _respawn(self, w: _Worker, generation: int) -> None:
        if self._stopping or generation != w.generation:
            return
        self._spawn(w)
