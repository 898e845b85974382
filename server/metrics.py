"""The Prometheus metric contract. Names are stable; change them only with a deprecation note.

Runs in the server process. Each app owns its :class:`Metrics` with its own registry, so several apps (tests,
several nodes in one process) never collide. Exposed at ``GET /metrics``.

| name | type | meaning |
|---|---|---|
| ``lipar_time_to_first_frame_seconds`` | histogram | offer answered → first edited frame handed to the encoder |
| ``lipar_frame_interval_seconds`` | histogram | time between consecutive edited frames sent, per session |
| ``lipar_glass_to_glass_latency_seconds`` | histogram | input frame decoded on the server → its edited frame sent (the server's share of glass-to-glass) |
| ``lipar_block_stage_seconds{stage}`` | histogram | per-block model time by stage: encode, mask, dit, decode, total |
| ``lipar_prune_ratio`` | histogram | fraction of latent tokens pruned (not recomputed) per block |
| ``lipar_sessions_active`` | gauge | sessions owned by this node in state streaming |
| ``lipar_sessions_queued`` | gauge | sessions admitted on this node and not yet streaming (created, connecting) |
| ``lipar_queue_frames{queue}`` | gauge | frames waiting now: ``inbound`` rings, ``outbound`` send queues |
| ``lipar_frames_in_total`` | counter | frames received and decoded |
| ``lipar_frames_out_total`` | counter | edited frames sent |
| ``lipar_frames_dropped_total{where}`` | counter | frames dropped: ``inbound`` ring overflow, ``outbound`` queue overflow, ``thinned`` input frames left out evenly because the model is slower than the input |
| ``lipar_sessions_created_total`` | counter | sessions created on this node |
| ``lipar_sessions_failed_total{cause}`` | counter | sessions failed: ``worker``, ``rtc``, ``node``, ``model`` |
| ``lipar_sessions_rejected_total`` | counter | creations refused with 503 (no capacity) |
| ``lipar_worker_restarts_total{device}`` | counter | worker processes restarted after a crash, a hang or a failed start |
| ``lipar_worker_hangs_total{device}`` | counter | ready workers killed for missing heartbeats (``LIPAR_WORKER_LIVENESS_TIMEOUT_S``) |
| ``lipar_workers_up`` | gauge | worker processes with a loaded model |
| ``lipar_workers_failed`` | gauge | workers given up after ``LIPAR_WORKER_MAX_START_FAILURES`` failed starts in a row |
| ``lipar_worker_settled_rss_bytes{worker}`` | gauge | a worker's resident size between blocks, after a heap trim |
| ``lipar_worker_busy_ratio{worker}`` | gauge | fraction of wall time (over about the last second) a worker was not idle-waiting |
| ``lipar_worker_info{worker,device}`` | gauge | 1 per worker: which device it runs on (join the ``{worker}`` series on it) |
| ``lipar_worker_sessions{worker,device}`` | gauge | sessions placed on a worker now (a session stays on its worker for its life) |
| ``lipar_worker_device_memory_bytes{worker,device,kind}`` | gauge | a GPU worker's device memory: ``allocated`` (its tensors), ``reserved`` (its caching allocator), ``used`` (the whole card, every process), ``total`` (the card); about once a second |
| ``lipar_recordings_total{state}`` | counter | recordings finished on this node: ``done``, ``truncated`` (size limit), ``failed`` |
| ``lipar_recording_bytes_total`` | counter | bytes of the recordings finished on this node |
| ``lipar_recording_frames_dropped_total`` | counter | edited frames not recorded (the recorder's queue was full) |
| ``lipar_recordings_active`` | gauge | recordings being written on this node |
| ``lipar_event_loop_lag_seconds`` | histogram | how late a 100 ms sleep on the server's event loop wakes up (the loop is the bottleneck when this grows) |

Access: with ``LIPAR_API_TOKEN`` set, ``GET /metrics`` wants ``Authorization: Bearer <token>`` unless
``LIPAR_METRICS_PUBLIC=true`` (for a scraper on a private network); Prometheus sends the token with
``authorization: {credentials_file: /path/to/token}`` in the scrape config.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_INTERVAL_BUCKETS = (0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
_TTFF_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
_STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """All metrics of one server process, registered on a private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.time_to_first_frame = Histogram(
            "lipar_time_to_first_frame_seconds",
            "Offer answered to first edited frame sent",
            buckets=_TTFF_BUCKETS,
            registry=r,
        )
        self.frame_interval = Histogram(
            "lipar_frame_interval_seconds",
            "Time between consecutive edited frames sent",
            buckets=_INTERVAL_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "lipar_glass_to_glass_latency_seconds",
            "Input frame decoded on the server to its edited frame sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "lipar_block_stage_seconds",
            "Model time per block by stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.prune_ratio = Histogram(
            "lipar_prune_ratio",
            "Fraction of latent tokens pruned per block",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.sessions_active = Gauge("lipar_sessions_active", "Sessions streaming on this node", registry=r)
        self.sessions_queued = Gauge(
            "lipar_sessions_queued", "Sessions admitted on this node and not yet streaming", registry=r
        )
        self.queue_frames = Gauge("lipar_queue_frames", "Frames waiting now", ["queue"], registry=r)
        self.frames_in = Counter("lipar_frames_in_total", "Frames received and decoded", registry=r)
        self.frames_out = Counter("lipar_frames_out_total", "Edited frames sent", registry=r)
        self.frames_dropped = Counter("lipar_frames_dropped_total", "Frames dropped", ["where"], registry=r)
        self.sessions_created = Counter("lipar_sessions_created_total", "Sessions created", registry=r)
        self.sessions_failed = Counter(
            "lipar_sessions_failed_total", "Sessions failed", ["cause"], registry=r
        )
        self.sessions_rejected = Counter(
            "lipar_sessions_rejected_total", "Session creations refused for lack of capacity", registry=r
        )
        self.worker_restarts = Counter(
            "lipar_worker_restarts_total",
            "Worker processes restarted after a crash, a hang or a failed start",
            ["device"],
            registry=r,
        )
        self.worker_hangs = Counter(
            "lipar_worker_hangs_total",
            "Ready workers killed because their heartbeats stopped",
            ["device"],
            registry=r,
        )
        self.workers_up = Gauge("lipar_workers_up", "Worker processes with a loaded model", registry=r)
        self.workers_failed = Gauge(
            "lipar_workers_failed",
            "Workers given up after failing to start too many times in a row",
            registry=r,
        )
        self.worker_settled_rss = Gauge(
            "lipar_worker_settled_rss_bytes",
            "Worker resident size between blocks, after returning freed heap memory",
            ["worker"],
            registry=r,
        )
        self.worker_busy = Gauge(
            "lipar_worker_busy_ratio",
            "Fraction of wall time a worker was not idle-waiting for work (about the last second)",
            ["worker"],
            registry=r,
        )
        self.worker_info = Gauge(
            "lipar_worker_info", "1 per worker: the device it runs on", ["worker", "device"], registry=r
        )
        self.worker_sessions = Gauge(
            "lipar_worker_sessions", "Sessions placed on a worker now", ["worker", "device"], registry=r
        )
        self.worker_device_memory = Gauge(
            "lipar_worker_device_memory_bytes",
            "A GPU worker's device memory: allocated, reserved (its allocator), used (the whole card), total",
            ["worker", "device", "kind"],
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "lipar_event_loop_lag_seconds",
            "How late a 100 ms sleep on the server event loop wakes up",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.recordings = Counter(
            "lipar_recordings_total", "Recordings finished, by final state", ["state"], registry=r
        )
        self.recording_bytes = Counter(
            "lipar_recording_bytes_total", "Bytes of the recordings finished", registry=r
        )
        self.recording_frames_dropped = Counter(
            "lipar_recording_frames_dropped_total",
            "Edited frames not recorded (recorder queue full)",
            registry=r,
        )
        self.recordings_active = Gauge("lipar_recordings_active", "Recordings being written", registry=r)
        for state in ("done", "truncated", "failed"):
            self.recordings.labels(state=state)
        for where in ("inbound", "outbound"):
            self.frames_dropped.labels(where=where)
            self.queue_frames.labels(queue=where)
        self.frames_dropped.labels(where="thinned")

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class LoopLagProbe:
    """Measures the event loop's lag: sleeps ``interval_s`` in a loop and observes how late it wakes up.

    Runs as a task on the server's event loop. A loop busy with callbacks (colour conversion, copies, RTP) wakes
    the probe late, so the histogram shows when the loop, not the model, is the bottleneck.

    Args:
        histogram: where each lag is observed (seconds), e.g. :attr:`Metrics.event_loop_lag`.
        interval_s: the probe's sleep, s.
    """

    def __init__(self, histogram: Histogram, interval_s: float = 0.1) -> None:
        self.histogram, self.interval_s = histogram, interval_s
        self.last_s: float | None = None  # the most recent lag, s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval_s)  # the measurement itself: how late this wakes up
            lag = max(0.0, loop.time() - t0 - self.interval_s)
            self.last_s = lag
            self.histogram.observe(lag)

    async def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
