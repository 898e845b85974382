"""Store outages degrade, never corrupt (issue 18).

Against a real redis-server that the tests pause (SIGSTOP), kill and restart empty (no persistence, as in
docker-compose.yml), with two real ``lipar-server`` nodes on the tiny CPU preset and real aiortc peers:

- Redis paused: every route that touches the store answers 503 + ``Retry-After`` (code ``store_unavailable``)
  within the Redis timeout instead of hanging, ``/readyz`` says the store is down, live sessions keep streaming,
  no worker slot is leaked by the failed requests, and no node declares another dead for a heartbeat that lapsed
  during the pause.
- Redis restarted empty: the node writes its live sessions back into the store and re-subscribes to its control
  channel, so the sessions are listed again, a PATCH through the other node reaches the owner's worker, and
  DELETEs (through the other node, and on the owner) end them and free their slots.

Also, without server processes: the Redis store's bounded failures and re-subscription, and the session
manager's bookkeeping (no reservation kept for a failed creation, a lost record written back or served from the
node's copy, a tombstone ending the session, final states written once the store is back).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from server.metrics import Metrics
from server.sessions.errors import StoreUnavailable
from server.sessions.manager import SessionManager
from server.sessions.memory_store import MemoryStore
from server.sessions.redis_store import RedisStore
from server.sessions.types import SessionChange, SessionSpec
from server.settings import load_settings
from server.worker.pool import Geometry
from tests.faults.conftest import RedisServer
from tests.polling import poll
from tests.server.rtc_client import ClientPeer, load_clip
from tests.server.server_proc import ServerProcess

pytestmark = [pytest.mark.timeout(120), pytest.mark.redis]

REDIS_TIMEOUT_S = 1.0  # LIPAR_REDIS_TIMEOUT_S of the nodes
HEARTBEAT_TTL_S = 2.0  # LIPAR_HEARTBEAT_TTL_S of the nodes: shorter than the pause below
PAUSE_S = 3.0  # how long Redis stays paused: longer than the heartbeat TTL, so heartbeats lapse in it
FAST_S = REDIS_TIMEOUT_S + 2.0  # the most a request may take while the store is down
CAPACITY = 2  # LIPAR_SESSIONS_PER_WORKER (one CPU worker per node)


def assert_store_unavailable(r: httpx.Response, elapsed: float) -> None:
    """503, ``Retry-After``, the error envelope with code ``store_unavailable``, answered without hanging."""
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["code"] == "store_unavailable", r.text
    assert elapsed < FAST_S, f"{r.request.method} {r.request.url.path} took {elapsed:.1f} s"


async def timed(http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = await http.request(method, path, **kw)
    return r, time.monotonic() - t


async def create(http: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
    r = await http.post("/v1/sessions", json={"prompt": prompt})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def worker_sessions(http: httpx.AsyncClient) -> int:
    """Sessions admitted on the node's (only) worker, from /readyz."""
    return int((await http.get("/readyz")).json()["checks"]["workers"][0]["sessions"])


async def ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


@pytest.fixture(scope="module")
def nodes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two lipar-server nodes (tiny-random preset, one CPU worker each) on the module's redis-server."""
    logs = tmp_path_factory.mktemp("nodes")
    env = {
        "LIPAR_REDIS_URL": redis_server.url,
        "LIPAR_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S),
        "LIPAR_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
        "LIPAR_SESSIONS_PER_WORKER": str(CAPACITY),
    }
    a = ServerProcess({**env, "LIPAR_NODE_ID": "node-a"}, logs / "node-a.log")
    b = ServerProcess({**env, "LIPAR_NODE_ID": "node-b"}, logs / "node-b.log")
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both shut down at once
            list(pool.map(ServerProcess.stop, (a, b)))


@pytest_asyncio.fixture
async def clients(
    nodes: tuple[ServerProcess, ServerProcess], redis_up: RedisServer
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """HTTP clients of node A and node B, both nodes ready (Redis running)."""
    a, b = nodes
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=30) as ha,
        httpx.AsyncClient(base_url=b.url, timeout=30) as hb,
    ):
        await poll(lambda: ready(ha), 30, "node A to be ready")
        await poll(lambda: ready(hb), 30, "node B to be ready")
        yield ha, hb


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return load_clip(48)


# ---- two real nodes ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("loopback_ice")
async def test_paused_store_answers_503_fast_and_leaks_nothing(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], redis_up: RedisServer, clip: list[np.ndarray]
) -> None:
    ha, hb = clients
    s = await create(hb, "a watercolor painting")
    assert s["node_id"] == "node-b"
    sid = s["id"]
    peer = await ClientPeer.connect(hb, s, clip, fps=10.0, n_frames=600)
    made: list[str] = []
    try:
        await peer.wait_frames(12, 60)
        await asyncio.to_thread(redis_up.pause)
        paused_at = time.monotonic()
        # every route that touches the store, on both nodes, all at once: 503 + Retry-After within the timeout
        calls = [
            (ha, "POST", "/v1/sessions", {"prompt": "made while paused"}),
            (hb, "POST", "/v1/sessions", {"prompt": "made while paused"}),
            (ha, "GET", "/v1/sessions", None),
            (hb, "GET", f"/v1/sessions/{sid}", None),
            (ha, "PATCH", f"/v1/sessions/{sid}", {"prompt": "a bronze statue"}),
            (ha, "POST", f"/v1/sessions/{sid}/offer", {"sdp": "v=0", "type": "offer"}),
            (hb, "DELETE", f"/v1/sessions/{sid}", None),
            (ha, "POST", "/v1/sessions", {"prompt": "made while paused, again"}),
        ]
        for r, elapsed in await asyncio.gather(*(timed(h, m, path, json=body) for h, m, path, body in calls)):
            assert_store_unavailable(r, elapsed)
        r, elapsed = await timed(ha, "GET", "/readyz")
        assert r.status_code == 503 and r.json()["checks"]["store"]["ok"] is False and elapsed < FAST_S
        assert int(r.headers["retry-after"]) > 0
        # the session keeps streaming while the store is paused
        n = len(peer.received)
        await peer.wait_frames(n + 12, 30)
        # the fault's duration (not a synchronisation): past the heartbeat TTL, so the heartbeats lapse in Redis
        await asyncio.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused_at)))
        await asyncio.to_thread(redis_up.resume)
        resumed_at = time.monotonic()
        await poll(lambda: ready(ha), 15, "node A to be ready after the pause")
        await poll(lambda: ready(hb), 15, "node B to be ready after the pause")
        # nothing was reserved for the failed requests: A admitted nothing, B only the live session
        assert await worker_sessions(ha) == 0
        assert await worker_sessions(hb) == 1
        # admission admits the full number of sessions on A again, then places the next one elsewhere
        for i in range(CAPACITY):
            made.append((x := await create(ha, f"after the pause {i}"))["id"])
            assert x["node_id"] == "node-a", x
        rc = redis_up.client()
        try:  # B's heartbeat lapsed in the pause; it beats again at once (A places the next session by it)
            await poll(lambda: _async(rc.exists("lipar:node:node-b")), 10, "node B to beat again")
        finally:
            rc.close()
        made.append((x := await create(ha, "one too many for node A"))["id"])
        assert x["node_id"] == "node-b", x
        assert await worker_sessions(ha) == CAPACITY
        # node B's heartbeat lapsed during the pause, yet A does not declare B dead (A waits a heartbeat TTL after
        # an outage before sweeping, B beats at once): past that, the session stays streaming on both nodes
        while time.monotonic() - resumed_at < HEARTBEAT_TTL_S + 1.5:
            for http in (ha, hb):
                r = await http.get(f"/v1/sessions/{sid}")
                assert r.status_code == 200 and r.json()["state"] == "streaming", r.text
            await asyncio.sleep(0.2)
        n = len(peer.received)
        await peer.wait_frames(n + 6, 30)

        # a creation that timed out reached Redis when it resumed (the command was in its socket): the node
        # that answered 503 deletes that record once the store answers, so no session appears from a failure
        async def listed_without_ghosts() -> dict[str, Any]:
            listed = {x["id"]: x for x in (await ha.get("/v1/sessions")).json()["sessions"]}
            return {} if any(x["prompt"].startswith("made while paused") for x in listed.values()) else listed

        listed = await poll(listed_without_ghosts, 10, "the records of the failed creations to be gone")
        assert listed[sid]["state"] == "streaming" and set(made) <= set(listed)
    finally:
        await peer.close()
        for x in [*made, sid]:
            await ha.delete(f"/v1/sessions/{x}")


@pytest.mark.usefixtures("loopback_ice")
async def test_restarted_empty_store_gets_the_live_sessions_back(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], redis_up: RedisServer, clip: list[np.ndarray]
) -> None:
    ha, hb = clients
    streaming = await create(hb, "a watercolor painting")
    idle = await create(hb, "never connected")  # live on B (admitted), no media
    assert streaming["node_id"] == idle["node_id"] == "node-b"
    sid, cid = streaming["id"], idle["id"]
    assert await worker_sessions(hb) == 2
    peer = await ClientPeer.connect(hb, streaming, clip, fps=10.0, n_frames=600)
    made: list[str] = []
    try:
        await peer.wait_frames(12, 60)
        marker = "lipar-test:written-before-the-restart"  # no node writes it back, unlike the session records
        before = redis_up.client()
        try:
            assert before.exists(f"lipar:session:{sid}")
            before.set(marker, "1")
        finally:
            before.close()
        await asyncio.to_thread(redis_up.kill)  # no persistence: every key is gone
        for http, method, path in [
            (ha, "GET", "/v1/sessions"),
            (hb, "GET", f"/v1/sessions/{cid}"),
            (hb, "DELETE", f"/v1/sessions/{cid}"),
            (ha, "POST", "/v1/sessions"),
        ]:
            r, elapsed = await timed(http, method, path, json={"prompt": "x"} if method == "POST" else None)
            assert_store_unavailable(r, elapsed)
        await asyncio.to_thread(redis_up.start)  # empty, same port
        rc = redis_up.client()
        try:
            # the store came back empty (checked on the marker: node B may already have written its sessions back)
            assert not rc.exists(marker)

            # B writes its live sessions back: they are listed again, through the other node too
            async def listed_on_a() -> dict[str, Any]:
                r = await ha.get("/v1/sessions")
                got = {x["id"]: x for x in r.json()["sessions"]} if r.status_code == 200 else {}
                return got if {sid, cid} <= set(got) else {}

            got = await poll(listed_on_a, 20, "node B's live sessions to be back in the store")
            assert got[sid]["node_id"] == got[cid]["node_id"] == "node-b"
            assert got[sid]["prompt"] == "a watercolor painting" and got[sid]["state"] == "streaming"
            assert got[cid]["state"] == "created"
            assert rc.sismember("lipar:node:node-b:sessions", sid) and rc.sismember("lipar:sessions", cid)
        finally:
            rc.close()

        # a PATCH through A reaches B's worker once B has re-subscribed (until then: 503 node_unavailable)
        async def patched() -> httpx.Response | None:
            r = await ha.patch(
                f"/v1/sessions/{sid}", json={"prompt": "a bronze statue", "transition": "smooth"}
            )
            if r.status_code == 503:
                assert r.json()["error"]["code"] in ("node_unavailable", "store_unavailable"), r.text
                assert int(r.headers["retry-after"]) > 0
                return None
            return r

        r = await poll(patched, 20, "a PATCH through node A to be accepted")
        assert r.status_code == 200 and r.json()["prompt"] == "a bronze statue", r.text

        async def applied() -> bool:
            r = await ha.get(f"/v1/sessions/{sid}")
            return r.status_code == 200 and r.json()["stats"]["active_prompt"] == "a bronze statue"

        await poll(applied, 60, "node B's worker to apply the prompt sent through node A")
        # DELETE through the other node and on the owner: both end, their slots are freed
        assert (await ha.delete(f"/v1/sessions/{sid}")).status_code == 204
        assert (await hb.delete(f"/v1/sessions/{cid}")).status_code == 204
        await poll(lambda: _is(worker_sessions(hb), 0), 20, "node B to free both slots")
        assert (await hb.get(f"/v1/sessions/{sid}")).status_code == 404
        assert (await ha.get(f"/v1/sessions/{cid}")).status_code == 404
        for i in range(CAPACITY):
            made.append((x := await create(hb, f"after the restart {i}"))["id"])
            assert x["node_id"] == "node-b", x
    finally:
        await peer.close()
        for x in [*made, sid, cid]:
            await hb.delete(f"/v1/sessions/{x}")


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


# ---- the Redis store alone -----------------------------------------------------------------------------------


async def test_redis_store_fails_fast_and_resubscribes(redis_up: RedisServer) -> None:
    store = RedisStore(redis_up.url, timeout_s=0.5)
    await store.start()
    got: list[dict[str, Any]] = []
    await store.subscribe_controls("node-x", lambda m: _append(got, m))
    now = time.time()
    await store.create({"id": "r1", "node_id": "node-x", "state": "created", "created_at": now})
    try:
        await asyncio.to_thread(redis_up.pause)
        for call in (
            lambda: store.get("r1"),
            lambda: store.update("r1", {"state": "streaming"}),
            lambda: store.publish_control("node-x", {"op": "patch"}),
            lambda: store.list_all(),
        ):
            t = time.monotonic()
            with pytest.raises(StoreUnavailable) as e:
                await call()
            assert time.monotonic() - t < 1.5 and e.value.retry_after_s > 0
        t = time.monotonic()
        assert await store.ping() is False and time.monotonic() - t < 1.5
        await asyncio.to_thread(redis_up.resume)
        assert (await store.get("r1") or {})["state"] == "created"
        await asyncio.to_thread(redis_up.kill)
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get("r1")
        assert time.monotonic() - t < 1.0  # refused at once
        await asyncio.to_thread(redis_up.start)
        assert await store.get("r1") is None  # restarted empty
        await poll(lambda: store.subscribed("node-x"), 10, "the control subscription to be re-established")
        assert await store.publish_control("node-x", {"op": "patch", "session_id": "r1"}) == 1
        await poll(lambda: _async(bool(got)), 5, "the control message after the restart")
        assert got == [{"op": "patch", "session_id": "r1"}]
    finally:
        await store.close()


async def _append(got: list[dict[str, Any]], message: dict[str, Any]) -> None:
    got.append(message)


async def _async(value: Any) -> Any:
    return value


# ---- the session manager's bookkeeping (in process, a fake worker pool) ---------------------------------------


class FakePool:
    """What the session manager uses of :class:`~server.worker.pool.WorkerPool`: slots and messages."""

    ready = True

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.sessions: set[str] = set()
        self.controls: list[Any] = []

    def open_session(self, session_id: str, *args: Any, **kwargs: Any) -> bool:
        if len(self.sessions) >= self.capacity:
            return False
        self.sessions.add(session_id)
        return True

    def close_session(self, session_id: str) -> None:
        self.sessions.discard(session_id)

    def geometry_of(self, session_id: str) -> Geometry:
        return Geometry(frames_per_block=4, height=32, width=32)

    def control(self, session_id: str, msg: Any) -> bool:
        self.controls.append(msg)
        return session_id in self.sessions

    def inflight(self, session_id: str) -> int:
        return 0

    def free_capacity(self) -> int:
        return self.capacity - len(self.sessions)

    def total_capacity(self) -> int:
        return self.capacity

    def serving_capacity(self) -> int:
        return self.capacity


class FlakyStore(MemoryStore):
    """The in-memory store, unavailable (every call raises :class:`StoreUnavailable`) while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {
            "create",
            "get",
            "list_all",
            "update",
            "delete",
            "restore",
            "expire",
            "heartbeat",
            "nodes",
        }:

            async def guarded(*args: Any, **kwargs: Any) -> Any:
                if self.down:
                    raise StoreUnavailable("the session store is unavailable; retry shortly")
                return await attr(*args, **kwargs)

            return guarded
        return attr


@pytest_asyncio.fixture
async def manager(tmp_path: Path) -> AsyncIterator[tuple[SessionManager, FlakyStore, FakePool]]:
    """A session manager on a flaky in-memory store and a fake pool; its housekeeping is driven by the test."""
    settings = load_settings(node_id="n1", rtc_host_addresses="127.0.0.1")
    store, pool = FlakyStore(), FakePool()
    m = SessionManager(settings, store, pool, Metrics())  # type: ignore[arg-type]
    yield m, store, pool
    store.down = False
    await m.stop()


async def test_failed_creation_reserves_nothing(manager: tuple[SessionManager, FlakyStore, FakePool]) -> None:
    m, store, pool = manager
    store.down = True
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await m.create(SessionSpec(prompt="p"))
    assert pool.sessions == set() and m.live == {}
    failed = list(m._abandoned)
    assert len(failed) == 3
    store.down = False
    ids = [(await m.create(SessionSpec(prompt=f"p{i}")))["id"] for i in range(pool.capacity)]
    assert pool.sessions == set(ids) == set(m.live)
    # a failed creation may reach the store late (a paused Redis runs it when resumed): once the store answers,
    # the housekeeping deletes it with a tombstone, so even a later write of it does not bring it back
    await m._tick(beat_every=3600)
    assert m._abandoned == {}
    await store.create({"id": failed[0], "node_id": "n1", "state": "created", "created_at": 0.0})
    assert await store.get(failed[0]) is None
    assert {r["id"] for r in await store.list_all()} == set(ids)


async def test_lost_record_is_served_written_back_and_deletable(
    manager: tuple[SessionManager, FlakyStore, FakePool],
) -> None:
    m, store, pool = manager
    a = (await m.create(SessionSpec(prompt="kept", seed=7)))["id"]
    b = (await m.create(SessionSpec(prompt="deleted here")))["id"]
    await m.patch(a, SessionChange(prompt="patched"))
    store._records.clear()  # the store lost everything (Redis restarted without persistence)
    # the owner still serves them from its copy: GET, list, PATCH, and DELETE frees the slot
    assert (await m.get(a))["prompt"] == "patched"
    assert {r["id"] for r in await m.list_all()} == {a, b}
    assert (await m.patch(a, SessionChange(prompt="patched again")))["prompt"] == "patched again"
    await m.delete(b)
    assert b not in pool.sessions and b not in m.live
    # the housekeeping writes the live one back (with its newest fields), never the deleted one
    await m._tick(beat_every=3600)
    assert await store.get(b) is None
    back = await store.get(a)
    assert back is not None and back["prompt"] == "patched again" and back["seed"] == 7
    assert back["node_id"] == "n1" and back["state"] == "created"
    # deleted through another node whose control message never came: the tombstone ends it here
    await store.delete(a)
    await m._tick(beat_every=3600)
    assert a not in m.live and a not in pool.sessions and await store.get(a) is None


async def test_final_state_is_written_once_the_store_is_back(
    manager: tuple[SessionManager, FlakyStore, FakePool],
) -> None:
    m, store, pool = manager
    sid = (await m.create(SessionSpec(prompt="p")))["id"]
    store.down = True
    with pytest.raises(StoreUnavailable):
        await m._tick(beat_every=3600)
    await m._end(sid, "failed", "worker 0 on cpu was killed by signal 9")  # a crash during the outage
    assert sid not in pool.sessions and (await _up(store, lambda: store.get(sid)))["state"] == "created"
    store.down = False
    await m._tick(beat_every=3600)
    r = await store.get(sid)
    assert r is not None and r["state"] == "failed" and "signal 9" in r["reason"]
    assert sid in store._expiry  # finished records expire


async def _up(store: FlakyStore, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` with the store up for its duration."""
    down, store.down = store.down, False
    try:
        return await call()
    finally:
        store.down = down
