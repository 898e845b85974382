"""The media and compute of one session owned by this node. Server process, event loop thread only.

Frames flow: remote track → :class:`~server.rtc.inbound.InboundReader` (colour conversion in the shared
converter threads, delivered here in order) → :class:`~server.rtc.ring.FrameRing` (drop-oldest) → a block is
handed to the worker as soon as the ring holds one and the session has fewer than ``MAX_INFLIGHT_PER_SESSION``
blocks inside the worker (the pool copies the ring's frames straight into shared memory) → edited frames come
back (:meth:`LiveSession.on_block`, copied out of shared memory by the pool's reader thread) →
:class:`~server.rtc.outbound.EditedVideoTrack` (adaptive playout delay). Every output frame keeps its input
frame's timestamp, so the client can pair them.

Stats: ``frames_out`` / ``fps_out`` count frames handed to the encoder (the track's ``on_sent``);
``prompt_applied_pts`` is the pts (as received: rebased RTP timestamp, ``time_base`` units, 90 kHz for video) of
the first input frame of the first block made after the newest applied prompt change.
"""

from __future__ import annotations

import base64
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc import RTCConfiguration
from aiortc.mediastreams import MediaStreamTrack

from server.metrics import Metrics
from server.rtc.codecs import Codec
from server.rtc.inbound import InboundReader
from server.rtc.outbound import EditedVideoTrack, OutFrame
from server.rtc.peer import BadOffer, SessionPeer
from server.rtc.ring import FrameRing, FrameThinner, InFrame
from server.sessions.types import CLOSED, CONNECTING, CREATED, FAILED, STREAMING, SessionState
from server.worker import messages as m
from server.worker.pool import MAX_INFLIGHT_PER_SESSION, Geometry, WorkerPool

log = logging.getLogger(__name__)

_WINDOW = 300  # frames kept for rates and latency percentiles
_BLOCK_WINDOW = 4096  # block times kept for the median (about 27 min of 12-frame blocks at 30 fps)

StateCallback = Callable[[str, SessionState, "str | None"], None]


class _Rate:
    """Frames per second over the last ``_WINDOW`` events."""

    def __init__(self) -> None:
        self.times: collections.deque[float] = collections.deque(maxlen=_WINDOW)

    def add(self, t: float) -> None:
        self.times.append(t)

    def fps(self, now: float) -> float:
        t = [x for x in self.times if x > now - 3.0]
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])


class BlockTimes:
    """The model time of a session's blocks (``stage_ms.total`` of each, ms): the first block, the median and
    the slowest of the later ones (the median over the last :data:`_BLOCK_WINDOW` blocks), to show stalls."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.later: collections.deque[float] = collections.deque(maxlen=_BLOCK_WINDOW)
        self.max_after_first: float | None = None
        self.slowest: dict[str, float | int] | None = None  # the slowest later block: its number, prune ratio
        self.n = 0

    def add(self, ms: float, prune_ratio: float = 0.0) -> None:
        """Record one block's total (ms) and the share of its tokens LIPAR pruned."""
        self.n += 1
        if self.first is None:
            self.first = ms
            return
        self.later.append(ms)
        if self.max_after_first is None or ms > self.max_after_first:
            self.max_after_first = ms
            self.slowest = {"block": self.n, "prune_ratio": round(prune_ratio, 3)}

    def summary(self) -> dict[str, Any]:
        """``first``, ``p50`` (of the later blocks), ``max_after_first`` (ms, rounded to 0.01), ``slowest`` (that
        block's number, 1-based, and prune ratio: a block LIPAR pruned less costs more) and ``n`` blocks."""
        later = sorted(self.later)
        return {
            "first": None if self.first is None else round(self.first, 2),
            "p50": round(later[len(later) // 2], 2) if later else None,
            "max_after_first": None if self.max_after_first is None else round(self.max_after_first, 2),
            "slowest": self.slowest,
            "n": self.n,
        }


class LiveSession:
    """One session's peer connection, rings, block submission and live statistics."""

    def __init__(
        self,
        session_id: str,
        prompt: str,
        pool: WorkerPool,
        metrics: Metrics,
        rtc_config: RTCConfiguration,
        codec: Codec,
        on_state: StateCallback,
    ) -> None:
        self.id = session_id
        self.pool, self.metrics = pool, metrics
        self.geometry: Geometry = pool.geometry_of(session_id)
        t = self.geometry.frames_per_block
        self.ring = FrameRing(2 * t)
        self.thinner = FrameThinner(t)
        self.out = self._new_track()
        self.rtc_config, self.codec = rtc_config, codec
        self.peer: SessionPeer | None = None
        self.reader: InboundReader | None = None
        self._on_state = on_state
        self.state: SessionState = CREATED
        self.seq = 0
        self.blocks: dict[int, list[InFrame]] = {}
        self.last_activity = time.monotonic()
        self.answered_at: float | None = None
        self.last_sent: float | None = None
        self.rate_in, self.rate_out = _Rate(), _Rate()
        self.latencies: collections.deque[float] = collections.deque(maxlen=_WINDOW)
        self.frames_in = self.frames_out = self.blocks_out = 0
        self.dropped_in = self.dropped_out = 0
        self.stage_ms: dict[str, float] = {}
        self.blocks_ms = BlockTimes()
        self.prune_ratio: float | None = None
        self.mask: dict[str, Any] | None = None  # the last block's token mask (schemas.BlockMask)
        self.control_id = 0
        self.prompts: dict[int, str] = {0: prompt}
        self.active_prompt: str | None = None
        self.prompt_applied_at_block: int | None = None
        self.prompt_applied_pts: int | None = None
        self._applied_prompt_control = 0  # control id of the prompt change of the last block out
        self.closed = False

    def _new_track(self) -> EditedVideoTrack:
        t = self.geometry.frames_per_block
        # hold up to 3 blocks; at send time keep at most 1.5 blocks waiting (the rest is stale)
        return EditedVideoTrack(3 * t, self._on_sent, max_backlog=t + t // 2, on_dropped=self._on_out_dropped)

    def _on_out_dropped(self, n: int) -> None:
        self.dropped_out += n
        self.metrics.frames_dropped.labels(where="outbound").inc(n)

    # ---- signalling ------------------------------------------------------------------------------------
    async def answer(self, offer_sdp: str) -> str:
        """Answer the browser's offer; raises :class:`BadOffer` (the session stays ``created``)."""
        peer = SessionPeer(self.rtc_config, self.codec, self.out, self._on_remote_video, self._on_pc_state)
        try:
            sdp = await peer.answer(offer_sdp)
        except BadOffer:
            await peer.discard()
            self.out = self._new_track()  # a fresh track for the next offer
            raise
        self.peer = peer
        self.answered_at = self.last_activity = time.monotonic()
        self._set_state(CONNECTING)
        return sdp

    def _on_remote_video(self, track: MediaStreamTrack) -> None:
        if self.reader is not None:
            return
        self.reader = InboundReader(
            track,
            self.geometry.height,
            self.geometry.width,
            self.on_frame,
            self._on_ended,
            on_dropped=self._on_in_dropped,
        )
        self.reader.start()

    def _on_in_dropped(self, n: int) -> None:
        self.dropped_in += n
        self.metrics.frames_dropped.labels(where="inbound").inc(n)

    def _on_pc_state(self, state: str) -> None:
        log.info("session %s: connection %s", self.id, state)
        if state == "failed":  # the peer connection's states (RTCPeerConnection.connectionState)
            self._on_state(self.id, FAILED, "the WebRTC connection failed (ICE or DTLS)")
        elif state == "closed" and not self.closed:
            self._on_state(self.id, CLOSED, "the client closed the connection")

    def _on_ended(self) -> None:
        if not self.closed:
            self._on_state(self.id, CLOSED, "the client's video track ended")

    def _set_state(self, state: SessionState) -> None:
        if self.state != state:
            self.state = state
            self._on_state(self.id, state, None)

    # ---- frames ----------------------------------------------------------------------------------------
    def on_frame(self, frame: InFrame) -> None:
        """A decoded input frame (from the inbound reader)."""
        if self.closed:
            return
        self.frames_in += 1
        if self.frames_in == 1:
            log.info("session %s: first input frame (%s)", self.id, frame.rgb.shape)
        self.metrics.frames_in.inc()
        self.rate_in.add(frame.arrived)
        self.last_activity = frame.arrived
        if not self.thinner.keep(self.rate_in.fps(frame.arrived)):  # the model is slower than the input
            self.metrics.frames_dropped.labels(where="thinned").inc()
            return
        dropped = self.ring.push(frame)
        if dropped:
            self.dropped_in += dropped
            self.metrics.frames_dropped.labels(where="inbound").inc(dropped)
        self._pump()

    def _pump(self) -> None:
        t = self.geometry.frames_per_block
        for _ in range(MAX_INFLIGHT_PER_SESSION):
            if self.closed or self.pool.inflight(self.id) >= MAX_INFLIGHT_PER_SESSION or len(self.ring) < t:
                return
            block = self.ring.pop_block(t)
            assert block is not None
            if not self.pool.submit(self.id, self.seq, [f.rgb for f in block]):
                self.dropped_in += len(block)
                self.metrics.frames_dropped.labels(where="inbound").inc(len(block))
                return
            self.blocks[self.seq] = block
            self.seq += 1

    def on_block(self, msg: m.BlockDone, frames: np.ndarray) -> None:
        """Edited frames ``[T_out, H, W, 3]`` of block ``msg.seq`` (from the worker pool)."""
        block = self.blocks.pop(msg.seq, None)
        if self.closed or block is None:
            return
        n = frames.shape[0]
        meta = block[len(block) - n :] if n <= len(block) else block + [block[-1]] * (n - len(block))
        self.out.put([OutFrame(frames[i], meta[i].pts, meta[i].time_base, meta[i].arrived) for i in range(n)])
        self.blocks_out += 1
        self.stage_ms = dict(msg.ms)
        if "total" in msg.ms:
            self.blocks_ms.add(msg.ms["total"], msg.prune_ratio)
            self.thinner.on_block(msg.ms["total"] / 1000.0)
        self.prune_ratio = msg.prune_ratio
        if msg.mask_grid is not None and msg.mask_bits is not None:
            self.mask = {"grid": list(msg.mask_grid), "bits": base64.b64encode(msg.mask_bits).decode("ascii")}
        for stage, ms in msg.ms.items():
            self.metrics.stage.labels(stage=stage).observe(ms / 1000.0)
        self.metrics.prune_ratio.observe(msg.prune_ratio)
        prompt_control, prompt = self._prompt_for(msg.control_id)
        if prompt_control != self._applied_prompt_control:  # the first block made after a prompt change
            self._applied_prompt_control = prompt_control
            self.prompt_applied_at_block = self.blocks_out
            self.prompt_applied_pts = block[0].pts
        self.active_prompt = prompt
        self._pump()

    def _prompt_for(self, control_id: int) -> tuple[int, str]:
        """The newest prompt applied by control ``control_id``: (the control id that set it, the prompt)."""
        ids = [i for i in self.prompts if i <= control_id]
        for old in [i for i in self.prompts if i < max(ids)]:
            del self.prompts[old]  # keep the dict small: older prompts can no longer apply
        return max(ids), self.prompts[max(ids)]

    def _on_sent(self, f: OutFrame, now: float) -> None:
        self.frames_out += 1
        self.metrics.frames_out.inc()
        self.rate_out.add(now)
        latency = now - f.arrived
        self.latencies.append(latency * 1000.0)
        self.metrics.latency.observe(latency)
        if self.last_sent is None:
            if self.answered_at is not None:
                self.metrics.time_to_first_frame.observe(now - self.answered_at)
            self._set_state(STREAMING)
        else:
            self.metrics.frame_interval.observe(now - self.last_sent)
        self.last_sent = now

    # ---- control ---------------------------------------------------------------------------------------
    def next_control_id(self, prompt: str | None) -> int:
        """A fresh id for a control message; remembers the prompt it sets (if any)."""
        self.control_id += 1
        if prompt is not None:
            self.prompts[self.control_id] = prompt
        return self.control_id

    def stats(self) -> dict[str, Any]:
        """Live statistics (the fields of ``server.api.schemas.SessionStats``)."""
        now = time.monotonic()
        lat = sorted(self.latencies)
        pct: dict[str, float | None] = {"p50": None, "p95": None}
        if lat:
            pct = {
                "p50": round(lat[len(lat) // 2], 2),
                "p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
            }
        return {
            "fps_in": round(self.rate_in.fps(now), 2),
            "fps_out": round(self.rate_out.fps(now), 2),
            "latency_ms": pct,
            "stage_ms": {k: round(v, 2) for k, v in self.stage_ms.items()},
            "block_ms": self.blocks_ms.summary(),
            "prune_ratio": self.prune_ratio,
            "mask": self.mask,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.dropped_in + self.dropped_out,
            "blocks_out": self.blocks_out,
            "queue_in": len(self.ring),
            "queue_out": self.out.queued,
            "active_prompt": self.active_prompt,
            "prompt_applied_at_block": self.prompt_applied_at_block,
            "prompt_applied_pts": self.prompt_applied_pts,
            "state": self.state,
        }

    async def close(self) -> None:
        """Stop media and free the rings (idempotent). The worker side is freed by the manager."""
        if self.closed:
            return
        self.closed = True
        self.out.end()
        if self.reader is not None:
            await self.reader.stop()
        if self.peer is not None:
            await self.peer.close()
        self.ring.clear()
        self.blocks.clear()
