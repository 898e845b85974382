"""The worker pool with the REAL tiny StreamEditor in a spawned worker process: blocks cross by shared memory,
sessions are isolated and served in turn, controls land at block boundaries, a killed worker is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import torch

from server.metrics import Metrics
from server.worker import messages as m
from server.worker.editors import LiparEditorFactory
from server.worker.pool import WorkerPool
from tests.server.rtc_client import load_clip

pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def reference() -> LiparEditorFactory:
    """The same tiny models, loaded in the test process, to compute expected outputs."""
    return LiparEditorFactory("tiny-random", "cpu")


@pytest.fixture(scope="module")
def blocks() -> list[np.ndarray]:
    clip = load_clip(48, width=256, height=256)
    return [np.stack(clip[i : i + 12]) for i in range(0, 48, 12)]


class Collector:
    """Receives the pool's callbacks; lets a test wait for n blocks of a session."""

    def __init__(self, pool: WorkerPool) -> None:
        self.out: dict[str, list[tuple[m.BlockDone, np.ndarray]]] = {}
        self.errors: list[tuple[str, str, bool]] = []
        self.lost: list[tuple[set[str], str]] = []
        self.changed = asyncio.Event()
        pool.on_block = self._block
        pool.on_error = lambda sid, msg, fatal: self._note(self.errors, (sid, msg, fatal))
        pool.on_lost = lambda sids, reason: self._note(self.lost, (sids, reason))

    def _note(self, lst: list, item: object) -> None:
        lst.append(item)
        self.changed.set()

    def _block(self, sid: str, msg: m.BlockDone, frames: np.ndarray) -> None:
        self.out.setdefault(sid, []).append((msg, frames))
        self.changed.set()

    async def wait(self, cond, timeout: float = 60.0) -> None:
        async def loop() -> None:
            while not cond():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[tuple[WorkerPool, Collector]]:
    """One worker process for the tests that do not kill it (sessions are opened and closed per test)."""
    pool = WorkerPool("tiny-random", ["cpu"], 2, Metrics())
    col = Collector(pool)
    await pool.start()
    assert await pool.wait_ready(120), pool.status()
    yield pool, col
    await pool.stop()


async def test_two_sessions_are_isolated_and_exact(shared, reference, blocks) -> None:
    """Two sessions with different prompts and seeds, blocks interleaved: each output equals what a private
    StreamEditor makes from the same frames, bit for bit (no cross-talk of caches or frames)."""
    pool, col = shared
    try:
        assert pool.open_session("a", "a watercolor painting", 0, None, None)
        assert pool.open_session("b", "a knight in shining armour", 1, None, None)
        for i in range(3):
            for sid in ("a", "b"):
                await col.wait(lambda sid=sid: pool.inflight(sid) == 0)
                assert pool.submit(sid, i, blocks[i if sid == "a" else 3 - i])
        await col.wait(lambda: len(col.out.get("a", [])) == 3 and len(col.out.get("b", [])) == 3)
        for sid, prompt, seed, order in (
            ("a", "a watercolor painting", 0, [0, 1, 2]),
            ("b", "a knight in shining armour", 1, [3, 2, 1]),
        ):
            ed = reference.new(prompt, seed)
            for (msg, got), bi in zip(col.out[sid], order, strict=True):
                want, _ = ed.process_block(torch.from_numpy(blocks[bi]))
                assert got.shape == (12, 256, 256, 3) and got.dtype == np.uint8
                assert np.array_equal(got, want.numpy()), (
                    f"session {sid} block {msg.seq} differs from its own editor"
                )
        a0, b0 = col.out["a"][0][1], col.out["b"][0][1]
        assert not np.array_equal(a0, b0)
        assert [msg.seq for msg, _ in col.out["a"]] == [0, 1, 2]
    finally:
        pool.close_session("a")
        pool.close_session("b")


async def test_worker_reports_settled_memory(shared, blocks) -> None:
    """Between blocks the worker trims its heap and reports its settled resident size: /readyz and the gauge
    carry it (a worker's first block always triggers a report, queued before its next block's result)."""
    pool, col = shared
    sid = "mem"
    try:
        assert pool.open_session(sid, "a watercolor painting", 0, None, None)
        for i in range(2):
            await col.wait(lambda: pool.inflight(sid) == 0)
            assert pool.submit(sid, i, blocks[i])
        await col.wait(lambda: len(col.out.get(sid, [])) == 2)
        settled = pool.status()[0]["settled_rss_mb"]
        pid = pool.status()[0]["pid"]
        with open(f"/proc/{pid}/status") as f:
            peak = next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))
        # the worker holds torch and the tiny models (well over 100 MB), and never more than its peak
        assert settled is not None and 100 < settled <= peak, (settled, peak)
        text = pool.metrics.render().decode()
        assert 'lipar_worker_settled_rss_bytes{worker="0"}' in text
    finally:
        pool.close_session(sid)


async def _load_report(pool: WorkerPool, cond, timeout: float = 30.0) -> dict:
    """Wait for a load report of worker 0 meeting ``cond`` (the worker reports about once a second, between
    blocks)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = pool.status()[0]
        if st["busy"] is not None and cond(st):
            return st
        assert asyncio.get_running_loop().time() < deadline, f"no matching load report: {st}"
        await asyncio.sleep(0.05)  # poll the status at the report cadence's scale


async def test_worker_reports_busy_ratio_and_block_rate(shared, blocks) -> None:
    """Idle, the worker reports a busy ratio near 0 and no blocks; streaming back-to-back blocks, the ratio
    grows (the model is the work) and blocks_per_s is positive; the gauge follows."""
    pool, col = shared
    idle = await _load_report(pool, lambda st: st["blocks_per_s"] == 0)
    assert 0.0 <= idle["busy"] < 0.5, idle
    sid = "load"
    assert pool.open_session(sid, "a watercolor painting", 0, None, None)
    stop = asyncio.Event()

    async def stream() -> None:
        i = 0
        while not stop.is_set():
            await col.wait(lambda: pool.inflight(sid) == 0)
            assert pool.submit(sid, i, blocks[i % len(blocks)])
            i += 1

    feeder = asyncio.create_task(stream())
    try:
        # an interval of streaming (reports come between blocks: a slow CPU block stretches the interval)
        busy = await _load_report(pool, lambda st: st["blocks_per_s"] > 0 and st["busy"] > 0.5, 90)
        assert 0.0 <= busy["busy"] <= 1.0 and busy["busy"] > idle["busy"], (idle, busy)
        text = pool.metrics.render().decode()
        assert 'lipar_worker_busy_ratio{worker="0"}' in text
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        pool.close_session(sid)


@pytest.mark.parametrize("transition,blend", [("cut", 0), ("smooth", 0), ("smooth", 2)])
async def test_prompt_change_applies_at_next_block(shared, reference, blocks, transition, blend) -> None:
    """A prompt change sent after block 0 is applied before block 1 exactly as StreamEditor.set_prompt
    documents (cut resets caches, smooth keeps the KV cache and blends over N blocks); the control id of the
    block that first used it is reported."""
    pool, col = shared
    sid = f"p-{transition}-{blend}"
    try:
        assert pool.open_session(sid, "a watercolor painting", 0, None, None)
        assert pool.submit(sid, 0, blocks[0])
        await col.wait(lambda: len(col.out.get(sid, [])) == 1)
        pool.control(sid, m.SetPrompt(sid, "a bronze statue", transition, blend, control_id=1))
        assert pool.submit(sid, 1, blocks[1])
        await col.wait(lambda: pool.inflight(sid) == 0)
        assert pool.submit(sid, 2, blocks[2])
        await col.wait(lambda: len(col.out[sid]) == 3)
        ed = reference.new("a watercolor painting", 0)
        for i, (msg, got) in enumerate(col.out[sid]):
            if i == 1:
                ed.set_prompt("a bronze statue", transition, blend)
            want, _ = ed.process_block(torch.from_numpy(blocks[i]))
            assert np.array_equal(got, want.numpy()), f"block {i} differs"
            assert msg.control_id == (0 if i == 0 else 1)
    finally:
        pool.close_session(sid)


async def test_lipar_overrides_and_block_mask(shared, reference, blocks) -> None:
    """LIPAR overrides given at open reach the session's editor, and each block reports its token mask
    (packed bits) exactly as the editor computed it."""
    pool, col = shared
    try:
        assert pool.open_session("lp", "a cat", 0, None, None)
        assert pool.open_session("off", "a cat", 0, None, None, {"enabled": False})
        for i in range(3):
            for sid in ("lp", "off"):
                await col.wait(lambda sid=sid: pool.inflight(sid) == 0)
                assert pool.submit(sid, i, blocks[i])
        await col.wait(lambda: len(col.out.get("lp", [])) == 3 and len(col.out.get("off", [])) == 3)
        ed = reference.new("a cat", 0)
        for msg, got in col.out["lp"]:
            want, st = ed.process_block(torch.from_numpy(blocks[msg.seq]))
            assert np.array_equal(got, want.numpy())
            assert st.token_mask is not None and msg.mask_grid == tuple(st.token_mask.shape)
            assert msg.mask_bits is not None
            bits = np.unpackbits(np.frombuffer(msg.mask_bits, np.uint8))[: st.token_mask.numel()]
            assert np.array_equal(bits.astype(bool), st.token_mask.numpy().reshape(-1))
            assert msg.prune_ratio == pytest.approx(st.prune_ratio)
        assert any(msg.prune_ratio > 0 for msg, _ in col.out["lp"][1:])  # the clip moves, but not everywhere
        assert all(msg.prune_ratio == 0 and msg.mask_bits is None for msg, _ in col.out["off"])
    finally:
        pool.close_session("lp")
        pool.close_session("off")


async def test_bad_params_reject_change_not_session(shared, blocks) -> None:
    """An out-of-range parameter reaching the worker is reported (not fatal); the session keeps streaming."""
    pool, col = shared
    try:
        assert pool.open_session("bad", "a cat", 0, None, None)
        pool.control("bad", m.SetParams("bad", steps=99, control_id=1))
        assert pool.submit("bad", 0, blocks[0])
        await col.wait(lambda: len(col.out.get("bad", [])) == 1 and col.errors)
        assert col.errors[0][0] == "bad" and not col.errors[0][2] and "steps" in col.errors[0][1]
        assert col.out["bad"][0][0].control_id == 0
    finally:
        pool.close_session("bad")


async def test_killed_worker_is_reported_and_restarted(blocks) -> None:
    """SIGKILL the worker mid-stream: its sessions are reported lost with a reason, the restart counter
    increments, a new worker comes up and serves a new session."""
    metrics = Metrics()
    pool = WorkerPool("tiny-random", ["cpu"], 2, metrics)
    col = Collector(pool)
    await pool.start()
    try:
        assert await pool.wait_ready(120)
        assert pool.open_session("s", "a cat", 0, None, None)
        assert pool.submit("s", 0, blocks[0])
        pid = pool.pids()[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await col.wait(lambda: bool(col.lost), 30)
        sids, reason = col.lost[0]
        assert sids == {"s"} and "killed by signal 9" in reason
        assert metrics.worker_restarts.labels(device="cpu")._value.get() == 1
        st = pool.status()[0]
        # a single crash of a worker that had loaded: restarted at once (no back-off), not a failed start
        assert st["state"] in ("restarting", "starting") and not st["ready"] and st["start_failures"] == 0, st
        assert await pool.wait_ready(120)
        assert pool.pids()[0] != pid
        st = pool.status()[0]
        assert st["state"] == "ready" and st["restarts"] == 1 and st["heartbeat_age_s"] is not None, st
        assert pool.open_session("t", "a dog", 0, None, None)
        assert pool.submit("t", 0, blocks[1])
        await col.wait(lambda: len(col.out.get("t", [])) == 1, 60)
        assert "s" not in col.out or all(msg.session_id == "s" for msg, _ in col.out["s"])
    finally:
        await pool.stop()
