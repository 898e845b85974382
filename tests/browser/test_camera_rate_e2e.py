"""The page asks the camera for the rate the server's model sustains (issue 16), in a real browser.

A real ``lipar-server`` on the ``tiny`` preset (the trained demo model, CPU; it measures ``input_fps`` at its
warm-up) and Debian's headless Chromium (npm ``playwright-core``, ``drive_camera_rate.mjs``) whose fake camera runs
at 60 fps and honours frameRate constraints, inside a private network namespace where only loopback exists. It
proves, from the video track's ``getSettings().frameRate``: the camera runs at no more than the server's
``GET /v1/model`` ``input_fps`` and edited frames arrive; a rate below the page's old 30 (7, routed) is what the
camera runs at; a rate that arrives after the camera opened (the first answer null, as from a server still
warming up, then 9) is applied to the open track; Stop lets a GET of the session in flight answer first.

The runner half of this file (``python -m tests.browser.test_camera_rate_e2e OUT_DIR``) runs inside the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import driver_result, require_browser_env, run_in_netns

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUN_DIR = ROOT / "artifacts" / "camera-rate-e2e"  # its own folder: other browser tests clear theirs
DRIVER = HERE / "drive_camera_rate.mjs"
DRIVER_TIMEOUT_S = 200.0
DEFAULT_FPS = 30.0  # client_web/rtc.js DEFAULT_FPS: the rate asked for while the server's is unknown
FAKE_CAMERA_FPS = 60.0  # the driver's --use-fake-device-for-media-stream=fps=60

pytestmark = [pytest.mark.browser, pytest.mark.timeout(330)]


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    require_browser_env()
    out = RUN_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return run_in_netns("tests.browser.test_camera_rate_e2e", out, timeout_s=310)


def _explain(r: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in r.items() if k != "server_log_tail"}, indent=1)[:6000] + (
        f"\n--- server log ---\n{r.get('server_log_tail', '')}"
    )


def test_camera_runs_at_the_servers_measured_rate(result: dict[str, Any]) -> None:
    r = result
    assert r.get("ok"), _explain(r)
    real = r["real"]
    fps = real["model_input_fps"]
    # Measured by the server at warm-up. JSON from the page writes a whole-number rate (12.0) as 12, so any
    # number is accepted (a bool or a missing rate is not).
    assert isinstance(fps, (int, float)) and not isinstance(fps, bool), _explain(r)
    assert 5.0 <= fps <= 30.0, _explain(r)
    assert real["opened"]["maxFrameRate"] >= FAKE_CAMERA_FPS, _explain(r)  # the camera could go faster
    assert real["opened"]["openedFps"] == fps and real["final"]["requestedFps"] == fps, _explain(r)
    assert real["final"]["settings"]["frameRate"] <= fps + 0.01, _explain(r)
    assert real["frames"]["framesDecoded"] > 8, _explain(r)
    assert r["page_errors"] == [] and r["console_errors"] == [], _explain(r)


def test_camera_follows_a_rate_below_the_old_default(result: dict[str, Any]) -> None:
    """A server that sustains 7 fps: the camera runs at 7 (it ran at 30 before issue 16, whatever the server)."""
    r = result
    assert r.get("ok"), _explain(r)
    fixed = r["fixed"]
    assert fixed["model_input_fps"] == 7, _explain(r)
    assert fixed["opened"]["openedFps"] == 7 and fixed["opened"]["settings"]["frameRate"] <= 7.01, _explain(r)


def test_stop_lets_a_poll_in_flight_answer_first(result: dict[str, Any]) -> None:
    """Stop while the page's GET of its session is unanswered: the connection (and so the session) stays until
    that GET answers 200; closing first ended the session under it, a 404 Chromium logs as a console error (the
    CI failure of this test file's first case, a poll that happened to be in flight at Stop)."""
    r = result
    assert r.get("ok"), _explain(r)
    held = r["fixed"]["stop_with_poll_in_flight"]
    assert held["page_session_kept"] is True and held["server_status"] == 200, _explain(r)
    assert held["poll_status"] == 200 and held["page_session_after_stop"] is None, _explain(r)
    assert not [e for e in r["console_errors"] if e.startswith("fixed:")], _explain(r)


def test_a_rate_arriving_after_the_camera_opened_is_applied(result: dict[str, Any]) -> None:
    r = result
    assert r.get("ok"), _explain(r)
    late = r["late"]
    assert late["model_input_fps"] is None, _explain(r)  # the page loaded while the server measured nothing
    assert late["opened"]["openedFps"] == DEFAULT_FPS, _explain(r)
    assert late["final"]["requestedFps"] == 9 and late["final"]["settings"]["frameRate"] <= 9.01, _explain(r)


# ---- the runner (inside the network namespace) --------------------------------------------------------------------
def run(out_dir: Path) -> dict[str, Any]:
    """Start the server, run the driver, write ``out_dir/result.json``."""
    from tests.server.server_proc import ServerProcess

    env = {
        "LIPAR_CONFIG": "tiny",
        "LIPAR_DEVICES": "cpu",
        "LIPAR_SESSIONS_PER_WORKER": "2",
        "LIPAR_IDLE_TIMEOUT_S": "30",
    }
    server = ServerProcess(env, out_dir / "server.log")
    res: dict[str, Any] = {}
    try:
        server.wait_ready(timeout=90)
        proc = subprocess.run(
            ["node", str(DRIVER), server.url],
            cwd=HERE,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
        res = driver_result(proc.stdout, proc.returncode, proc.stderr)
    except Exception as e:
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        server.stop()
        res["server_log_tail"] = server.log()[-3000:]
    (out_dir / "result.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    sys.exit(0 if run(Path(sys.argv[1])).get("ok") else 1)
