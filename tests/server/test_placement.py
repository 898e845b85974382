"""Placement over several workers, with two REAL tiny workers on the CPU standing in for two GPUs: sessions fill
the workers evenly, each stays on its worker for its life (a dead worker loses exactly its own sessions, the
other worker's keep streaming, and the node stays ready meanwhile), a worker that cannot start at all leaves the
node serving on the other, and ``/readyz``'s per-worker figures and the per-worker gauges follow."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
import pytest_asyncio

from server.metrics import Metrics
from server.worker import messages as m
from server.worker.pool import WorkerPool
from tests.polling import poll
from tests.server.rtc_client import load_clip
from tests.server.test_worker_pool import Collector

pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def block() -> np.ndarray:
    return np.stack(load_clip(12, width=256, height=256))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two() -> AsyncIterator[tuple[WorkerPool, Collector]]:
    """Two worker processes of one thread each, two sessions per worker."""
    pool = WorkerPool("tiny-random", ["cpu", "cpu"], 2, Metrics(), threads=1, backoff_max_s=1.0)
    col = Collector(pool)
    await pool.start()
    assert await pool.wait_ready(180), pool.status()
    yield pool, col
    await pool.stop()


def _gauge(pool: WorkerPool, name: str, **labels: str) -> float | None:
    return pool.metrics.registry.get_sample_value(name, labels)


def _now(cond: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``cond`` as :func:`tests.polling.poll` awaits it (the pool's state changes on the event loop)."""

    async def check() -> bool:
        return cond()

    return check


def _placed(pool: WorkerPool) -> list[int]:
    return [w["sessions"] for w in pool.status()]


async def test_sessions_fill_workers_evenly_and_stay_on_theirs(two, block) -> None:
    pool, col = two
    assert _gauge(pool, "lipar_worker_info", worker="1", device="cpu") == 1
    opened: list[str] = []
    try:
        for i, sid in enumerate("abcd"):
            assert pool.open_session(sid, "a watercolor painting", i, None, None)
            opened.append(sid)
        assert _placed(pool) == [2, 2]  # a, c on worker 0; b, d on worker 1
        assert not pool.open_session("full", "a watercolor painting", 0, None, None)  # 2 per worker
        assert [_gauge(pool, "lipar_worker_sessions", worker=str(i), device="cpu") for i in (0, 1)] == [2, 2]

        pool.close_session("b")
        opened.remove("b")
        assert _placed(pool) == [2, 1]
        assert pool.open_session("e", "a watercolor painting", 5, None, None)  # the worker with room
        opened.append("e")
        assert _placed(pool) == [2, 2]
        for sid in ("a", "c"):
            pool.close_session(sid)
            opened.remove(sid)
        assert _placed(pool) == [0, 2]
        assert pool.open_session("f", "a watercolor painting", 6, None, None)  # the emptier worker, not 1
        opened.append("f")
        assert _placed(pool) == [1, 2]
        assert _gauge(pool, "lipar_worker_sessions", worker="0", device="cpu") == 1

        # every session streams on its worker; then worker 1 dies: it loses d and e, and f keeps streaming
        for sid in opened:
            assert pool.submit(sid, 0, block)
        await col.wait(lambda: all(len(col.out.get(s, [])) == 1 for s in opened), timeout=120)
        pid1 = pool.status()[1]["pid"]
        os.kill(pid1, signal.SIGKILL)
        await col.wait(lambda: bool(col.lost), timeout=30)
        lost, reason = col.lost[-1]
        assert lost == {"d", "e"} and "worker 1" in reason, (lost, reason)
        # the node keeps serving on worker 0 while worker 1 restarts (its start takes seconds: not ready yet)
        assert not pool.status()[1]["ready"] and pool.ready
        opened = [s for s in opened if s not in lost]
        assert pool.submit("f", 1, block)
        await col.wait(lambda: len(col.out["f"]) == 2, timeout=60)
        assert [msg.seq for msg, _ in col.out["f"]] == [0, 1]
        assert _gauge(pool, "lipar_worker_sessions", worker="1", device="cpu") == 0
        # the restarted worker takes new sessions again, and the next one goes to it (fewest)
        await poll(_now(lambda: pool.status()[1]["state"] == "ready"), 120, "worker 1 restarted")
        assert pool.status()[1]["pid"] != pid1
        assert pool.open_session("g", "a watercolor painting", 7, None, None)
        opened.append("g")
        assert _placed(pool) == [1, 1]
    finally:
        for sid in opened:
            pool.close_session(sid)


async def test_a_tie_goes_to_the_less_busy_worker(two) -> None:
    """With as many sessions on each worker, the next one goes to the worker whose last load report was less busy
    (its sessions cost more: e.g. a moving camera), not simply to the lower index."""
    pool, _ = two
    w0, w1 = pool.workers
    try:
        assert pool.open_session("x", "a watercolor painting", 0, None, None)
        assert pool.open_session("y", "a watercolor painting", 1, None, None)
        assert _placed(pool) == [1, 1]
        # the last load reports as they are, within this event-loop turn (no report can land in between)
        w0.busy, w1.busy = 0.9, 0.3
        assert pool.open_session("z", "a watercolor painting", 2, None, None)
        assert _placed(pool) == [1, 2]
    finally:
        for sid in ("x", "y", "z"):
            pool.close_session(sid)


async def test_device_memory_reaches_readyz_and_the_gauges(two) -> None:
    """A GPU worker's load report carries its device memory: ``/readyz`` gives it in MiB per worker and the
    gauges in bytes per kind; a CPU worker's report has none (null)."""
    pool, _ = two
    await poll(_now(lambda: all(w["busy"] is not None for w in pool.status())), 30, "both load reports")
    assert [w["memory_mb"] for w in pool.status()] == [None, None]  # CPU workers report no device memory
    w0 = pool.workers[0]
    gib = 2**30
    report = m.WorkerLoad(
        0.5, 4, 1.0, m.DeviceMemory(allocated=3 * gib, reserved=5 * gib, used=6 * gib, total=80 * gib)
    )
    pool._dispatch(w0, w0.generation, report)
    assert pool.status()[0]["memory_mb"] == {
        "allocated": 3072.0,
        "reserved": 5120.0,
        "used": 6144.0,
        "total": 81920.0,
    }
    assert (
        _gauge(pool, "lipar_worker_device_memory_bytes", worker="0", device="cpu", kind="reserved") == 5 * gib
    )
    # a report from a previous process of the worker (an older generation) changes nothing
    pool._dispatch(w0, w0.generation - 1, m.WorkerLoad(0.5, 4, 1.0, m.DeviceMemory(1, 1, 1, 1)))
    assert pool.status()[0]["memory_mb"]["reserved"] == 5120.0


async def test_a_worker_that_cannot_start_leaves_the_node_serving_on_the_others(block) -> None:
    """One device of two cannot start (here ``cuda:7`` on a machine without it): after its failed starts it is
    given up, and the node becomes ready on the other worker with that worker's slots only; the given-up worker
    is in ``/readyz`` with its error. The node is not ready before the start is over."""
    pool = WorkerPool(
        "tiny-random", ["cpu", "cuda:7"], 1, Metrics(), threads=1, max_start_failures=2, backoff_max_s=0.2
    )
    col = Collector(pool)
    await pool.start()
    try:
        assert await pool.wait_ready(180), pool.status()
        w0, w1 = pool.status()
        # ready only once the start is over: worker 1 is given up by then, not still starting
        assert w0["state"] == "ready" and w1["state"] == "failed", (w0, w1)
        assert w1["start_failures"] == 2 and "cuda" in (w1["last_error"] or "").lower(), w1
        assert pool.serving_capacity() == 1 and pool.total_capacity() == 2
        assert _gauge(pool, "lipar_workers_failed") == 1
        assert pool.open_session("only", "a watercolor painting", 0, None, None)
        assert not pool.open_session("more", "a watercolor painting", 0, None, None)  # worker 1 takes none
        assert pool.submit("only", 0, block)
        await col.wait(lambda: len(col.out.get("only", [])) == 1, timeout=120)
        pool.close_session("only")
    finally:
        await pool.stop()
