"""The input rate a worker measures at warm-up (``server/worker/rate.py``, issue 16): its derivation from block
times, the factory's measurement (on blocks that do model work), the pool's minimum over workers, and a real
server's ``GET /v1/model`` ``input_fps`` (null while warming up, a number once ready)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from server.metrics import Metrics
from server.worker import messages as m
from server.worker.editors import MEASURE_BLOCKS, LiparEditorFactory
from server.worker.pool import WorkerPool
from server.worker.rate import MAX_INPUT_FPS, MIN_INPUT_FPS, input_rate, slowest_rate
from tests.server.server_proc import ServerProcess

TOKEN = "input-rate-test-token-0123456789"


# ---- derivation ---------------------------------------------------------------------------------------------------
def test_rate_is_frames_per_median_block_time_with_headroom() -> None:
    # 4 frames per block in 0.25 s: 16 fps sustained, 14.4 asked for with 0.9 headroom
    assert input_rate(4, [0.24, 0.25, 0.26, 0.25]) == pytest.approx(14.4)
    # one stalled block does not move the median
    assert input_rate(4, [0.25, 0.25, 5.0]) == pytest.approx(14.4)
    assert input_rate(12, [1.0, 1.2, 0.8], headroom=1.0) == pytest.approx(12.0)
    assert input_rate(4, [0.3]) == pytest.approx(12.0)  # 13.33 × 0.9, rounded to 0.1 fps


def test_rate_is_capped_and_floored() -> None:
    assert input_rate(12, [0.01, 0.01]) == MAX_INPUT_FPS == 30.0  # 1200 fps sustained: cameras do 30
    assert input_rate(4, [2.0, 2.0]) == MIN_INPUT_FPS == 5.0  # 2 fps sustained: never asked below 5
    assert input_rate(4, [2.0], floor_fps=1.0) == pytest.approx(1.8)
    assert input_rate(12, [0.1], cap_fps=60.0) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("frames", "seconds", "kwargs"),
    [
        (4, [], {}),
        (0, [0.1], {}),
        (4, [0.1, 0.0], {}),
        (4, [0.1, -1.0], {}),
        (4, [0.1], {"headroom": 0.0}),
        (4, [0.1], {"headroom": 1.5}),
        (4, [0.1], {"floor_fps": 40.0}),
    ],
)
def test_rate_rejects_bad_input(frames: int, seconds: list[float], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        input_rate(frames, seconds, **kwargs)


def test_slowest_worker_sets_the_rate() -> None:
    assert slowest_rate([]) is None and slowest_rate([None, None]) is None
    assert slowest_rate([None, 14.4, 22.0]) == 14.4

    pool = WorkerPool("tiny-random", ["cpu", "cpu"], 1, Metrics())
    assert pool.input_fps is None  # nothing measured yet: GET /v1/model says null
    pool.workers[1].input_fps = 22.0
    assert pool.input_fps == 22.0
    pool.workers[0].input_fps = 12.5
    assert pool.input_fps == 12.5
    assert [w["input_fps"] for w in pool.status()] == [12.5, 22.0]


# ---- the factory's measurement --------------------------------------------------------------------------------------
def test_factory_measures_the_rate_on_blocks_that_do_model_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo model passes an unknown prompt through (no model work): the timed editor, and the warm-up's probe
    (on a GPU it compiles and captures what sessions run), must hold a prompt the model knows, or the rate would be
    the pass-through's. The progress reports the measuring stage block by block."""
    timed: list[bool] = []
    made: list[bool] = []
    real = LiparEditorFactory._measure
    real_editor = LiparEditorFactory._editor

    def editor_spy(self: LiparEditorFactory, prompt: str, seed: int, lipar: Any = None) -> Any:
        editor = real_editor(self, prompt, seed, lipar)
        made.append(editor.passing_through)
        return editor

    def spy(self: LiparEditorFactory, editor: Any, n_blocks: int = MEASURE_BLOCKS) -> float:
        timed.append(editor.passing_through)
        return real(self, editor, n_blocks)

    monkeypatch.setattr(LiparEditorFactory, "_measure", spy)
    monkeypatch.setattr(LiparEditorFactory, "_editor", editor_spy)
    reports: list[tuple[str, int, int]] = []
    factory = LiparEditorFactory("tiny", "cpu", progress=lambda *a: reports.append(a))
    assert timed == [False]
    assert made == [False, False]  # the probe (the GPU's warm-up) and the timed editor
    assert factory.input_fps is not None and MIN_INPUT_FPS <= factory.input_fps <= MAX_INPUT_FPS
    measuring = [r for r in reports if r[0] == "measuring"]
    assert measuring == [("measuring", i, MEASURE_BLOCKS) for i in range(MEASURE_BLOCKS + 1)]
    assert reports.index(measuring[0]) > reports.index(("loading", 1, 1))  # after the model is loaded


# ---- the API ----------------------------------------------------------------------------------------------------------
async def test_model_info_follows_the_pool() -> None:
    """``GET /v1/model`` reads ``input_fps`` from the pool on every request (the rest is read once): null before a
    worker measured it, then the minimum over the workers."""
    from server.main import create_app
    from server.settings import load_settings

    app = create_app(
        load_settings(config="tiny-random", node_id="rate", devices=["cuda:0", "cuda:1"]), client_dir=None
    )
    pool: WorkerPool = (
        app.state.manager.pool
    )  # never started (no GPU needed): the test sets what warm-ups measured
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as api:
        first = (await api.get("/v1/model")).json()
        assert first["input_fps"] is None and first["preset"] == "tiny-random"
        pool.workers[0].input_fps = 17.5
        assert (await api.get("/v1/model")).json()["input_fps"] == 17.5
        pool.workers[1].input_fps = 9.0
        assert (await api.get("/v1/model")).json() == {**first, "input_fps": 9.0}


# ---- a real server ----------------------------------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_model_info_reports_the_measured_rate_once_warm(start_server: Callable[..., ServerProcess]) -> None:
    """From the moment the server answers: ``GET /v1/model`` read before a 503 from ``/readyz`` has ``input_fps``
    null (the rate is set with readiness, so a read before "not ready" cannot have it); once ready it is a number
    within the limits, the one the worker reports in ``/readyz``'s details."""
    srv = start_server(wait=False, LIPAR_CONFIG="tiny", LIPAR_API_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    early: list[Any] = []
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        while True:
            assert srv.proc.poll() is None, srv.log()
            assert time.monotonic() < deadline, f"not ready in time; seen {early[-5:]}\n{srv.log()}"
            try:
                model = http.get("/v1/model")
                ready = http.get("/readyz")
            except httpx.TransportError:
                time.sleep(0.05)  # not listening yet
                continue
            assert model.status_code == 200, model.text
            if ready.status_code == 200:
                break
            early.append(model.json()["input_fps"])
            time.sleep(0.05)
        assert all(v is None for v in early), early
        fps = http.get("/v1/model").json()["input_fps"]
        assert isinstance(fps, float) and MIN_INPUT_FPS <= fps <= MAX_INPUT_FPS, fps
        workers = http.get("/readyz", headers=auth).json()["checks"]["workers"]
        assert [w["input_fps"] for w in workers] == [fps]
        schema = http.get("/openapi.json").json()["components"]["schemas"]["ModelInfo"]["properties"]
        assert "measured" in schema["input_fps"]["description"]
    log = srv.log()
    assert f"worker 0 warming up: measuring {MEASURE_BLOCKS} of {MEASURE_BLOCKS}" in log, log
    assert f"input rate {fps:g} fps" in log, log


def test_ready_message_carries_the_rate() -> None:
    msg = m.WorkerReady(1, 4, 240, 416, input_fps=14.4)
    assert msg.input_fps == 14.4 and m.WorkerReady(1, 4, 240, 416).input_fps is None
    assert "measuring" in m.WARMUP_STAGES
    assert (
        m.WARMUP_STAGES.index("capturing")
        < m.WARMUP_STAGES.index("measuring")
        < m.WARMUP_STAGES.index("ready")
    )
