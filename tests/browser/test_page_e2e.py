"""The web client end to end in a real browser.

Debian's headless Chromium (driven by npm ``playwright-core``, ``drive_page.mjs``) with a real clip as its fake
webcam opens ``/?autostart=1&prompt=...`` on a real ``lipar-server`` (a bundle preset: tiny-random models and the style
vocabulary, CPU), all inside a private
network namespace where only loopback exists. It proves: the page creates a session and connects over WebRTC,
edited frames arrive (``framesDecoded`` > 60), a prompt typed into the page (Enter) becomes the session's active
prompt in its live stats, the page lists the prompts the model knows, the stats overlay shows live numbers, the
layout fits a 360 px phone screen, Stop ends the session, the server's Content-Security-Policy causes no
violation, and a ``#token=`` link hands the page the token without it reaching the server's log. Screenshots go to ``artifacts/browser/`` at the repository root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser.run_e2e import FIRST_PROMPT, SECOND_PROMPT

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def _netns_ok() -> tuple[bool, str]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "unshare or ip is missing (apt-get install util-linux iproute2)"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10
    )
    if probe.returncode != 0:
        return (
            False,
            f"private network namespaces are not permitted here (needs root): {probe.stderr.strip()}",
        )
    return True, ""


@pytest.fixture(scope="module")
def e2e_result() -> dict[str, object]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver); CI installs it")
    ok, why = _netns_ok()
    if not ok:
        pytest.skip(why)
    if shutil.which("node") is None:
        pytest.fail("node is missing: the browser driver runs on Node.js (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is not installed: run `npm ci --prefix {HERE.relative_to(ROOT)}`")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    script = 'ip link set lo up && exec "$0" -m tests.browser.run_e2e "$1"'
    t0 = time.monotonic()
    proc = subprocess.run(
        ["unshare", "-n", "bash", "-c", script, sys.executable, str(ARTIFACTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    wall = time.monotonic() - t0
    path = ARTIFACTS / "result.json"
    assert path.exists(), (
        f"the run wrote no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    result: dict[str, object] = json.loads(path.read_text())
    result["wall_s"] = round(wall, 1)
    print(f"\nbrowser e2e: {wall:.1f} s; artifacts in {ARTIFACTS}; screenshot {result.get('screenshot')}")
    return result


def _explain(result: dict[str, object]) -> str:
    shown = {k: v for k, v in result.items() if k not in ("server_log_tail", "driver_stderr")}
    return (
        json.dumps(shown, indent=1)[:6000]
        + f"\n--- driver stderr ---\n{result.get('driver_stderr', '')}"
        + f"\n--- server log ---\n{result.get('server_log_tail', '')}"
    )


def test_page_streams_edited_video_and_applies_a_typed_prompt(e2e_result: dict[str, object]) -> None:
    r = e2e_result
    assert r.get("ok"), _explain(r)
    assert isinstance(r["frames_decoded"], int) and r["frames_decoded"] > 60, _explain(r)
    assert isinstance(r["frames_decoded_end"], int) and r["frames_decoded_end"] > r["frames_decoded"]
    before, after = r["session_before"], r["session_after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["state"] == "streaming" and before["stats"]["active_prompt"] == FIRST_PROMPT, _explain(r)
    # the prompt typed into the page reached the session and its stats (applied at a block boundary)
    assert after["prompt"] == SECOND_PROMPT and after["stats"]["active_prompt"] == SECOND_PROMPT, _explain(r)
    assert after["stats"]["prompt_applied_at_block"] >= before["stats"]["blocks_out"], _explain(r)
    assert r["page_errors"] == [] and r["console_errors"] == [], _explain(r)
    assert r["error_banner_hidden"] is True and r["connection"] == "Live", _explain(r)


def test_page_runs_under_the_csp_and_keeps_the_token_out_of_urls(e2e_result: dict[str, object]) -> None:
    """The server's Content-Security-Policy fits the page (no violation in any step, the camera and WebRTC work
    under it), and a link with ``#token=`` gives the page the token without it reaching the server's log."""
    r = e2e_result
    assert r.get("ok"), _explain(r)
    csp = r["csp_header"]
    assert isinstance(csp, str) and "frame-ancestors 'none'" in csp and "script-src 'self';" in csp, csp
    assert r["csp_violations"] == [], _explain(r)
    assert r["token_link"] == {"address_has_token": False, "stored_ok": True, "field_ok": True}, _explain(r)
    assert isinstance(r["access_log_lines"], int) and r["access_log_lines"] > 10, "no access log to check"
    assert r["token_in_server_log"] is False, "the bearer token appears in the server's log"


def test_page_shows_live_stats_and_fits_a_phone(e2e_result: dict[str, object]) -> None:
    r = e2e_result
    assert r.get("ok"), _explain(r)
    overlay = r["overlay"]
    assert isinstance(overlay, dict)
    for key in ("s-fps", "s-lat", "s-prune", "s-block"):
        assert overlay[key] not in ("", "–"), f"overlay {key} shows no value: {overlay}"
    assert r["phone_overflow_px"] == 0, "the page scrolls sideways at 360 px width"
    # the heat map: offered once the session's stats carry the server's per-block mask, then painted
    assert r["mask_toggle_visible_with_server_data"] is True
    assert isinstance(r["mask_painted_px"], int) and r["mask_painted_px"] > 1000
    # the prompts the bundle's model knows are listed as chips (one per style, canonical prompts)
    from lipar_core.train.demo import vocabulary

    assert r["known_chips"] == [p[0] for p in vocabulary().values()], r["known_chips"]
    for key in ("screenshot_first", "screenshot", "screenshot_phone", "screenshot_mask"):
        shot = Path(str(r[key]))
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
        print(f"screenshot: {shot}")
