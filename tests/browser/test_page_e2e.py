"""The web client end to end in a real browser.

Debian's headless Chromium (driven by npm ``playwright-core``, ``drive_page.mjs``) with a real clip as its fake
webcam opens ``/?autostart=1&prompt=...`` on a real ``lipar-server`` (a bundle preset: tiny-random models and the style
vocabulary, CPU), all inside a private
network namespace where only loopback exists. It proves: the page creates a session and connects over WebRTC,
edited frames arrive (``framesDecoded`` > 60), a prompt typed into the page (Enter) becomes the session's active
prompt in its live stats, the page lists the prompts the model knows, the stats overlay shows live numbers, the
layout fits a 360 px phone screen, Record … Stop downloads a webm of the edited stream (REC_S seconds,
``LIPAR_E2E_REC_S``, default 30) that PyAV decodes with the right length and frame rate, Snapshot downloads a
PNG of the output's size, a side-by-side recording holds output and webcam, Stop ends the session, the server's Content-Security-Policy causes no
violation, and a ``#token=`` link hands the page the token without it reaching the server's log. Screenshots go to ``artifacts/browser/`` at the repository root.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser.run_e2e import FIRST_PROMPT, REC_S, SECOND_PROMPT

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240 + REC_S)]


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
        timeout=200 + REC_S,
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


def _probe(path: Path) -> dict[str, object]:
    """What PyAV reads in a recording: the video stream, its decoded frames, their time span and rate."""
    import av

    times: list[float] = []
    sizes: set[tuple[int, int]] = set()
    with av.open(str(path)) as c:
        assert c.streams.video, f"{path} has no video stream"
        vs = c.streams.video[0]
        codec = vs.codec_context.name
        container_s = c.duration / 1e6 if c.duration else None
        for frame in c.decode(vs):
            if frame.time is not None:
                times.append(float(frame.time))
            sizes.add((frame.width, frame.height))
    times.sort()
    n = len(times)
    span = times[-1] - times[0] if n > 1 else 0.0
    fps = (n - 1) / span if span > 0 else 0.0
    # the last frame lasts one frame interval: the clip's duration is the span plus that
    duration = span + (1 / fps if fps else 0.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "codec": codec,
        "frames": n,
        "sizes": sorted(sizes),
        "first_s": times[0] if times else None,
        "span_s": round(span, 3),
        "duration_s": round(duration, 3),
        "max_gap_s": round(max(gaps, default=0.0), 3),
        "fps": round(fps, 2),
        "container_duration_s": container_s,
    }


def test_page_records_and_snapshots_the_edited_video(e2e_result: dict[str, object]) -> None:
    """Record … Stop: a webm download PyAV decodes, as long as the recording (REC_S s) at the stream's frame
    rate; the side-by-side recording is output | webcam; Snapshot: a PNG of the output's size; while recording
    the page shows a running timer."""
    from PIL import Image

    r = e2e_result
    assert r.get("ok"), _explain(r)
    out_w, out_h = r["output_size"]  # type: ignore[misc]
    assert out_w > 0 and out_h > 0

    # the webcam preview, the edited video and the heat map over it are mirrored alike, and unmirrored alike
    flipped = "matrix(-1, 0, 0, 1, 0, 0)"
    assert r["mirror_on"] == [flipped] * 3 and r["mirror_off"] == ["none"] * 3, (
        r["mirror_on"],
        r["mirror_off"],
    )

    snap = r["snapshot"]
    assert isinstance(snap, dict) and re.fullmatch(r"lipar-\d{8}-\d{6}\.png", snap["name"]), snap
    with Image.open(snap["path"]) as im:
        im.load()
        assert im.format == "PNG" and im.size == (out_w, out_h), (im.format, im.size, (out_w, out_h))
        assert im.convert("L").getextrema()[1] > 0, "the snapshot is black"

    assert r["rec_badge_visible"] is True and r["rec_button_text"].strip().startswith("■"), _explain(r)
    assert re.fullmatch(r"00:0[2-4]", r["rec_timer_text"]), r["rec_timer_text"]
    shot = Path(str(r["screenshot_recording"]))
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot

    rec = r["recording"]
    assert isinstance(rec, dict) and re.fullmatch(r"lipar-\d{8}-\d{6}\.webm", rec["name"]), rec
    assert rec["timer_hidden_after"] is True
    page = rec["page"]["last"]
    assert page["state"] == "saved" and page["sideBySide"] is False, page
    info = _probe(Path(rec["path"]))
    rec["probe"] = info
    print(f"\nrecording ({REC_S} s asked, {page['seconds']:.2f} s on the page): {info}")
    assert info["codec"] in ("vp8", "vp9") and info["sizes"] == [(out_w, out_h)], info
    # as long as the page recorded (MediaRecorder start → stop): the page paints the frame on screen at the start
    # and again at Stop, so the frames (stamped when painted) span the recording even when the stream pauses
    seconds = float(page["seconds"])
    assert abs(seconds - REC_S) < max(3.0, 0.1 * REC_S), rec
    stream_fps = rec["frames_decoded_during"] / rec["wall_s"]
    assert stream_fps > 0, rec
    assert abs(info["span_s"] - seconds) <= max(1.0, 0.05 * seconds), (info, seconds)
    # the page wrote the recording's length into the file's header (Chromium's MediaRecorder leaves it out)
    assert page["durationWritten"] is True and info["container_duration_s"] is not None, (page, info)
    assert abs(info["container_duration_s"] - seconds) < 0.01, (info, seconds)
    # the edited frames the browser decoded meanwhile are in the file, at the stream's rate (the page paints a
    # frame per displayed frame: of frames arriving in a burst within one display refresh, one is painted)
    assert info["fps"] >= 0.6 * stream_fps and info["frames"] >= 0.6 * rec["frames_decoded_during"], (
        info,
        stream_fps,
    )

    sbs = r["recording_sbs"]
    assert isinstance(sbs, dict) and sbs["page"]["last"]["sideBySide"] is True, sbs
    sbs_info = _probe(Path(sbs["path"]))
    print(f"side-by-side recording: {sbs_info}")
    assert sbs_info["sizes"] == [(2 * out_w, out_h)], sbs_info
    sbs_s = float(sbs["page"]["last"]["seconds"])
    assert abs(sbs_info["span_s"] - sbs_s) <= 1.0, (sbs_info, sbs_s)
    assert sbs_info["frames"] >= max(3, 0.7 * sbs["frames_decoded_during"]), (sbs_info, sbs)
