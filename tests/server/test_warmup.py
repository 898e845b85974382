"""Warm-up progress (``/readyz`` ``progress`` and ``checks.workers[i].warmup``) on a real server start, the worker's
progress reports through the factory, and the session's ``prompt_match`` on the demo model."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.worker import messages as m
from server.worker.editors import make_factory
from server.worker.pool import WorkerPool, warmup_fraction
from tests.server.server_proc import ServerProcess

pytestmark = pytest.mark.timeout(240)

TOKEN = "warmup-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER = {stage: i for i, stage in enumerate(m.WARMUP_STAGES)}


def test_progress_from_loading_to_ready_on_a_real_start(start_server) -> None:
    """Polled from the moment the server answers: ``progress`` (without the token) only moves forward through the
    stages, is seen loading the model before it is ready, and ends ready with fraction 1 and a 200; the worker's own
    reports (loading 0 of 1, then 1 of 1) are in the log; with the token each worker shows its ``warmup``."""
    srv: ServerProcess = start_server(wait=False, LIPAR_CONFIG="tiny", LIPAR_API_TOKEN=TOKEN)
    seen: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=srv.url, timeout=5) as http:
        while time.monotonic() < deadline:
            assert srv.proc.poll() is None, srv.log()
            try:
                r = http.get("/readyz")
            except httpx.TransportError:
                time.sleep(0.02)  # not listening yet
                continue
            body = r.json()
            assert body["checks"] == {}, body  # details need the token; progress does not
            seen.append((r.status_code, body["progress"]))
            if r.status_code == 200:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"not ready in time; seen {seen[-5:]}\n{srv.log()}")
        stages = [p["stage"] for _, p in seen]
        assert "loading" in stages, stages
        ranks = [ORDER[s] for s in stages]
        assert ranks == sorted(ranks), f"the stages went backwards: {stages}"
        fractions = [p["fraction"] for _, p in seen]
        assert fractions == sorted(fractions) and fractions[0] < 1.0, fractions
        assert all(code == 503 for code, p in seen if p["stage"] != "ready")
        assert seen[-1] == (200, {"stage": "ready", "done": 1, "total": 1, "fraction": 1.0})
        detail = http.get("/readyz", headers=AUTH).json()
        assert detail["checks"]["workers"][0]["warmup"] == {"stage": "ready", "done": 1, "total": 1}
        assert detail["progress"]["stage"] == "ready"
    log = srv.log_path.read_text(errors="replace")  # all of it: the polls above log a line each
    assert re.search(r"worker 0 warming up: loading 0 of 1", log), log[-6000:]
    assert re.search(r"worker 0 warming up: loading 1 of 1", log), log[-6000:]


def test_session_tells_how_the_demo_model_understands_its_prompt(start_server) -> None:
    """On the ``tiny`` demo model, the created session and a PATCH's answer carry ``prompt_match``: a known prompt
    names its edit, an unknown one is known: false (the model passes the video through)."""
    srv: ServerProcess = start_server(LIPAR_CONFIG="tiny", LIPAR_API_TOKEN=TOKEN)
    with srv.client(TOKEN) as http:
        r = http.post("/v1/sessions", json={"prompt": "infrared thermal image"})
        assert r.status_code == 201, r.text
        s = r.json()
        assert s["prompt_match"] == {
            "known": True,
            "open_vocabulary": False,
            "edit": "thermal",
            "canonical": "thermal camera",
            "score": pytest.approx(1.0, abs=1e-3),
        }
        r = http.patch(f"/v1/sessions/{s['id']}", json={"prompt": "a cat riding a bicycle on the moon"})
        assert r.status_code == 200, r.text
        match = r.json()["prompt_match"]
        assert (match["known"], match["edit"], match["canonical"]) == (False, None, None)
        listed = http.get("/v1/sessions").json()["sessions"]
        assert [x["prompt_match"]["known"] for x in listed if x["id"] == s["id"]] == [False]
        assert http.delete(f"/v1/sessions/{s['id']}").status_code == 204


# ---- in process ---------------------------------------------------------------------------------------------------


class _ReportingFactory:
    """A factory that reports a GPU-like warm-up through ``progress`` (no model)."""

    frames_per_block, height, width = 12, 16, 16

    def __init__(self, config: str, device: str, progress: Any = None) -> None:
        for stage, done, total in (
            ("loading", 0, 1),
            ("loading", 1, 1),
            ("compiling", 2, 4),
            ("capturing", 3, 9),
        ):
            progress(stage, done, total)


class _SilentFactory:
    frames_per_block, height, width = 12, 16, 16

    def __init__(self, config: str, device: str) -> None:
        pass


def test_make_factory_passes_progress_to_factories_that_take_it() -> None:
    reports: list[tuple[str, int, int]] = []
    make_factory(f"{__name__}:_ReportingFactory", "tiny", "cpu", progress=lambda *a: reports.append(a))
    assert reports == [("loading", 0, 1), ("loading", 1, 1), ("compiling", 2, 4), ("capturing", 3, 9)]
    make_factory(f"{__name__}:_SilentFactory", "tiny", "cpu", progress=lambda *a: reports.append(a))
    assert len(reports) == 4  # a factory without the parameter is made as before


def test_fraction_and_the_least_advanced_worker(tmp_path: Path) -> None:
    assert warmup_fraction(m.WorkerProgress("starting", 0, 0)) == 0.0
    assert warmup_fraction(m.WorkerProgress("loading", 1, 1)) == pytest.approx(0.3)
    assert warmup_fraction(m.WorkerProgress("capturing", 5, 10)) == pytest.approx(0.7)
    assert warmup_fraction(m.WorkerProgress("measuring", 1, 2)) == pytest.approx(0.95)
    assert warmup_fraction(m.WorkerProgress("ready", 1, 1)) == 1.0
    steps = [
        m.WorkerProgress(stage, done, total)
        for stage, done, total in (
            ("loading", 0, 1),
            ("loading", 1, 1),
            ("compiling", 1, 4),
            ("capturing", 2, 8),
            ("measuring", 1, 5),
        )
    ]
    fractions = [warmup_fraction(p) for p in steps]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)

    from server.metrics import Metrics

    pool = WorkerPool("tiny-random", ["cpu", "cpu"], 1, Metrics())
    pool.workers[0].warmup = m.WorkerProgress("ready", 1, 1)
    pool.workers[1].warmup = m.WorkerProgress("capturing", 3, 12)
    mean = (1.0 + warmup_fraction(pool.workers[1].warmup)) / 2  # 0.8: (1 + 0.5 + 0.4 * 3 / 12) / 2
    assert pool.progress() == {"stage": "capturing", "done": 3, "total": 12, "fraction": round(mean, 3)}
    assert [w["warmup"] for w in pool.status()] == [
        {"stage": "ready", "done": 1, "total": 1},
        {"stage": "capturing", "done": 3, "total": 12},
    ]
