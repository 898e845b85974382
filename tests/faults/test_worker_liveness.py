"""Worker liveness (issue 18): a hung worker is noticed, its sessions fail with the reason, it is killed and
restarted; a worker that can never load its preset is given up, not retried forever; ``/readyz`` and
``/metrics`` show their details only with the API token.

The hang and the load-failure tests run a real ``lipar-server`` subprocess on the ``tiny`` CPU preset (a real
worker process, real WebRTC peers on loopback; the hang test at 64x64 so that no block comes near its short
liveness limit); the token test runs the app in process without starting any worker; the beat tests drive the
worker loop in a thread with an editor whose blocks take a known time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from lipar_core.protocol import BlockEditor, BlockStats, Transition
from server.main import create_app
from server.settings import load_settings
from server.worker import messages as m
from server.worker.ipc import FrameSlab
from server.worker.pool import restart_delay
from server.worker.process import WorkerLoop
from tests.polling import poll
from tests.server.rtc_client import ClientPeer, load_clip
from tests.server.server_proc import ROOT, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(180)

TOKEN = "liveness-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT_S = 3.0  # LIPAR_WORKER_LIVENESS_TIMEOUT_S of the hang test
# The worker's blocks must stay far below the limit even on a crowded 2-core host: the tiny preset at 64x64 with
# one latent frame (4 frames) per block, on one torch thread (two intra-op threads on cores shared with other
# processes spin against each other: blocks of 3 s instead of 30 ms were seen). Typical block: 30-50 ms.
SMALL_TINY = {
    "stream": ("  height: 240\n  width: 416\n", "  height: 64\n  width: 64\n"),
    "bundle": (
        "bundle: weights/demo.safetensors",
        f"bundle: {ROOT / 'lipar_core' / 'weights' / 'demo.safetensors'}",
    ),
}


def tiny_preset(path: Path, **replace: tuple[str, str]) -> Path:
    """Write ``configs/tiny.yaml`` with the (old, new) text replacements to ``path``."""
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    for old, new in replace.values():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return load_clip(48)


def _gone(pid: int) -> bool:
    """The process no longer exists (killed and reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_hung_worker_fails_its_session_and_is_restarted(
    start_server: Callable[..., ServerProcess], clip: list[np.ndarray], loopback_ice: None, tmp_path: Path
) -> None:
    """The worker of a streaming session is SIGSTOPped: after the liveness limit (not before) /readyz turns 503
    and lists it, the session fails with "unresponsive", the stopped process is killed, a new worker comes up
    and a new session streams."""
    srv = start_server(
        LIPAR_CONFIG=str(tiny_preset(tmp_path / "tiny-64.yaml", **SMALL_TINY)),
        OMP_NUM_THREADS="1",
        LIPAR_API_TOKEN=TOKEN,
        LIPAR_WORKER_LIVENESS_TIMEOUT_S=str(LIMIT_S),
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=30, headers=AUTH) as http:

        async def worker0() -> dict[str, Any]:
            return dict((await http.get("/readyz")).json()["checks"]["workers"][0])

        async def session(sid: str) -> dict[str, Any]:
            return dict((await http.get(f"/v1/sessions/{sid}")).json())

        async def metric(line: str) -> bool:
            return line in (await http.get("/metrics")).text

        w = await worker0()
        assert w["state"] == "ready" and w["heartbeat_age_s"] < LIMIT_S, w
        pid = int(w["pid"])
        r = await http.post("/v1/sessions", json={"prompt": "pencil sketch"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        # one or two blocks of input (a frame or two may be lost at the start): the session streams, then waits
        # for more video with its worker idle (the hang is then the only silence)
        peer = await ClientPeer.connect(http, r.json(), clip, fps=10.0, n_frames=24)
        try:
            await peer.wait_frames(6, 60)
            assert (await session(sid))["state"] == "streaming"
            w = await worker0()
            assert w["state"] == "ready" and w["pid"] == pid, w
            assert await metric('lipar_worker_hangs_total{device="cpu"} 0.0')

            os.kill(pid, signal.SIGSTOP)
            t_stop = time.monotonic()
            try:

                async def hung_seen() -> dict[str, Any] | None:
                    r = await http.get("/readyz")
                    w = r.json()["checks"]["workers"][0]
                    return w if r.status_code == 503 and w["state"] != "ready" else None

                w = await poll(hung_seen, LIMIT_S + 10, "/readyz to report the stopped worker")
                assert time.monotonic() - t_stop >= LIMIT_S - 1.0, "declared hung before the limit"
                assert w["state"] in ("hung", "restarting", "starting") and not w["ready"], w
                assert "unresponsive" in str(w["last_error"]), w
                info = await poll(
                    lambda: _if(session(sid), lambda s: s["state"] == "failed"), 10, "the session to fail"
                )
                assert "worker 0 on cpu unresponsive: no heartbeat" in info["reason"], info
                await poll(lambda: _async(_gone(pid)), 10, f"the stopped worker {pid} to be killed")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        finally:
            await peer.close()

        assert (await http.get("/healthz")).status_code == 200
        w = await poll(
            lambda: _if(worker0(), lambda w: w["state"] == "ready"), 90, "the restarted worker to be ready"
        )
        assert w["pid"] != pid and w["restarts"] == 1 and w["last_error"] is None, w
        assert (await http.get("/readyz")).status_code == 200
        assert await metric('lipar_worker_hangs_total{device="cpu"} 1.0')
        assert await metric('lipar_worker_restarts_total{device="cpu"} 1.0')
        assert await metric('lipar_sessions_failed_total{cause="worker"} 1.0')
        r = await http.post("/v1/sessions", json={"prompt": "watercolor"})
        assert r.status_code == 201, r.text
        peer2 = await ClientPeer.connect(http, r.json(), clip, fps=10.0, n_frames=24)
        try:
            await peer2.wait_frames(6, 60)
        finally:
            await peer2.close()


async def _async(value: Any) -> Any:
    return value


async def _if(
    get: Awaitable[dict[str, Any]], cond: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    value = await get
    return value if cond(value) else None


def test_preset_that_cannot_load_is_given_up(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A preset whose model file does not exist: the worker fails to start LIPAR_WORKER_MAX_START_FAILURES
    times in a row, then is reported failed (with the load error) and not started again; /readyz stays 503 and
    sessions are refused."""
    missing = tmp_path / "no-such-dir" / "model.safetensors"
    preset = tiny_preset(
        tmp_path / "broken.yaml", bundle=("bundle: weights/demo.safetensors", f"bundle: {missing}")
    )
    srv = start_server(
        wait=False,
        LIPAR_CONFIG=str(preset),
        OMP_NUM_THREADS="1",
        LIPAR_API_TOKEN=TOKEN,
        LIPAR_WORKER_MAX_START_FAILURES="2",
    )
    with srv.client(TOKEN) as http:

        def failed() -> dict[str, Any] | None:
            if srv.proc.poll() is not None:
                raise AssertionError(f"server exited with {srv.proc.returncode}:\n{srv.log()}")
            try:
                r = http.get("/readyz")
            except httpx.HTTPError:
                return None
            w = r.json()["checks"]["workers"][0]
            return w if w["state"] == "failed" else None

        w = wait_until(failed, 90, "the worker to be given up", interval=0.2)
        assert w["start_failures"] == 2 and w["restarts"] == 1 and w["pid"] is None, w
        assert str(missing) in str(w["last_error"]) and "not found" in str(w["last_error"]), w
        # given up: no further start (no restart is scheduled; the log and the state say so for a while)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            r = http.get("/readyz")
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert r.json()["checks"]["workers"][0]["state"] == "failed"
            time.sleep(0.2)  # an observation window, not synchronisation
        log = srv.log_path.read_text(errors="replace")
        assert log.count("started worker 0") == 2, srv.log()
        assert "restarting it in 0.0 s" in log and "giving up" in log, srv.log()  # first retry at once
        text = http.get("/metrics").text
        assert "lipar_workers_failed 1.0" in text and "lipar_workers_up 0.0" in text
        r = http.post("/v1/sessions", json={"prompt": "pencil sketch"})
        assert r.status_code == 503, r.text


@pytest.mark.parametrize(
    "env",
    [
        {"api_token": TOKEN},
        {"api_token": TOKEN, "metrics_public": True, "readyz_details_public": True},
        {},
    ],
    ids=["token", "token-public", "no-token"],
)
async def test_readyz_and_metrics_details_need_the_token(env: dict[str, Any]) -> None:
    """With a token set, /readyz without it gives only the status (same status code), never a pid or an error
    text; /metrics without it is 401 unless LIPAR_METRICS_PUBLIC. Without a token (or with the public
    settings) everything shows. No worker is started here: /readyz is 503 with the worker ``starting``."""
    app = create_app(load_settings(config="tiny-random", node_id="n1", **env))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        hidden = bool(env.get("api_token")) and not env.get("readyz_details_public")
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, AUTH):
            r = await c.get("/readyz", headers=headers)
            assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
            body = r.json()
            assert body["status"] == "unavailable" and body["node_id"] == "n1"
            if hidden and headers is not AUTH:
                assert body["checks"] == {} and "pid" not in r.text, r.text
            else:
                w = body["checks"]["workers"][0]
                assert w["state"] == "starting" and "pid" in w and "last_error" in w, body
                assert body["checks"]["store"] == {"kind": "memory", "ok": True}

        locked = bool(env.get("api_token")) and not env.get("metrics_public")
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, AUTH):
            r = await c.get("/metrics", headers=headers)
            if locked and headers is not AUTH:
                assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), r.text
                assert r.json()["error"]["code"] == "unauthorized"
                assert "lipar_" not in r.text
            else:
                assert r.status_code == 200 and "lipar_workers_up" in r.text, r.text
        assert (await c.get("/healthz")).status_code == 200


# ---- the worker loop's beats, in process (no model: an editor that takes BLOCK_S per block) ---------------
BLOCK_S = 0.3
FPB, H, W = 4, 8, 8


class _Done:
    """A ``SubmittedBlock`` computed when it was submitted (as on the CPU)."""

    def __init__(self, frames: torch.Tensor, stats: BlockStats) -> None:
        self.frames, self.stats = frames, stats

    def result(self) -> tuple[torch.Tensor, BlockStats]:
        return self.frames, self.stats


class _SlowEditor:
    """A ``BlockEditor`` whose blocks take ``BLOCK_S`` and give their input back."""

    frames_per_block, height, width = FPB, H, W

    def __init__(self) -> None:
        self.blocks = 0

    def submit_block(self, frames: torch.Tensor) -> _Done:
        time.sleep(BLOCK_S)  # a long block: the loop is inside it, as in a long device call
        stats = BlockStats(self.blocks, {"total": BLOCK_S * 1000.0}, frames_in=FPB, frames_out=FPB)
        self.blocks += 1
        return _Done(frames, stats)

    def process_block(self, frames: torch.Tensor) -> tuple[torch.Tensor, BlockStats]:
        return self.submit_block(frames).result()

    def set_prompt(self, prompt: str, transition: Transition = "cut", blend_blocks: int = 0) -> None:
        pass

    def set_params(
        self, seed: int | None = None, strength: float | None = None, steps: int | None = None
    ) -> None:
        pass


class SlowFactory:
    """An editor factory (``make_factory`` interface) whose blocks take ``BLOCK_S``."""

    frames_per_block, height, width = FPB, H, W

    def __init__(self, config: str, device: str) -> None:
        pass

    def new(self, prompt: str, seed: int, lipar: dict[str, Any] | None = None) -> BlockEditor:
        return _SlowEditor()


@pytest.fixture
def worker_loop() -> Iterator[tuple[WorkerLoop, FrameSlab, queue.Queue[Any], queue.Queue[Any]]]:
    """A worker loop beating every 50 ms, run in a thread of the test; stopped at the end."""
    slab = FrameSlab(4, FPB, H, W)
    ctrl: queue.Queue[Any] = queue.Queue()
    results: queue.Queue[Any] = queue.Queue()
    loop = WorkerLoop(f"{__name__}:SlowFactory", "unused", "cpu", ctrl, results, heartbeat_interval_s=0.05)
    ctrl.put(m.AttachSlab(slab.name, 4, FPB))
    thread = threading.Thread(target=loop.run, name="test-worker-loop", daemon=True)
    thread.start()
    yield loop, slab, ctrl, results
    ctrl.put(m.Stop())
    thread.join(10)
    assert not thread.is_alive()
    slab.close()


def _take(results: queue.Queue[Any], cond: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
    """Messages from the loop until ``cond(all so far)`` holds."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not cond(got):
        assert time.monotonic() < deadline, f"no matching messages in {timeout} s: {got}"
        with contextlib.suppress(queue.Empty):
            got.append(results.get(timeout=0.05))
    return got


def test_idle_worker_beats_at_its_interval(worker_loop: Any) -> None:
    """With nothing to do the loop still sends its heartbeat (the load report) every interval: its idle wait is
    never longer. WorkerReady first, then reports of an idle worker about 50 ms apart."""
    _, _, _, results = worker_loop
    t0 = time.monotonic()
    got = _take(results, lambda g: sum(isinstance(x, m.WorkerLoad) for x in g) >= 5, 10)
    elapsed = time.monotonic() - t0
    assert isinstance(got[0], m.WorkerReady)
    beats = [x for x in got if isinstance(x, m.WorkerLoad)]
    assert all(b.blocks == 0 and b.interval_s >= 0.05 for b in beats), beats
    assert 0.2 <= elapsed < 2.0, elapsed  # 5 intervals of 50 ms; not 0.5 s idle waits


def test_beats_come_from_the_loop_between_blocks_never_during_one(worker_loop: Any) -> None:
    """Three blocks of 0.3 s queued back to back with a 50 ms heartbeat: exactly one beat between two blocks,
    none inside one (a beat thread would send about six during each block, and keep beating through a block
    that never ends)."""
    _, slab, ctrl, results = worker_loop
    _take(results, lambda g: any(isinstance(x, m.WorkerLoad) for x in g), 10)  # the loop runs
    ctrl.put(m.OpenSession("s", "a prompt"))
    for seq in range(3):
        slab.slot(seq)[:FPB] = seq
        ctrl.put(m.SubmitBlock("s", seq, seq, FPB))
    got = _take(results, lambda g: sum(isinstance(x, m.BlockDone) for x in g) == 3, 20)
    kinds = [type(x).__name__ for x in got if isinstance(x, (m.BlockDone, m.WorkerLoad))]
    first = kinds.index("BlockDone")
    assert kinds[first:] == ["BlockDone", "WorkerLoad", "BlockDone", "WorkerLoad", "BlockDone"], kinds
    after_first = got[next(i for i, x in enumerate(got) if isinstance(x, m.BlockDone)) :]
    beat = next(x for x in after_first if isinstance(x, m.WorkerLoad))
    assert beat.blocks >= 1 and beat.busy_ratio > 0.5, beat  # the interval it closes was spent in a block


def test_restart_back_off_doubles_up_to_its_ceiling() -> None:
    """The first failure restarts at once; then 1, 2, 4, ... s, never above the ceiling."""
    assert [restart_delay(n, 30.0) for n in range(1, 9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(100, 5.0) == 5.0 and restart_delay(0, 5.0) == 0.0
