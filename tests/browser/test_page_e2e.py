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
violation, and a ``#token=`` link hands the page the token without it reaching the server's log.

Compare, look and feedback (issue 15): the split view (one frame, webcam and output aligned and mirrored alike, a
divider moved by keyboard and pointer), output only, the view remembered, fullscreen; the notice by the prompt
field for an unknown and a known prompt (as ``POST /v1/model/match`` answers), the strength and steps controls
limited to ``GET /v1/model``'s ranges, the warm-up message counting while the model warms up, steady smoothed
stats with a tooltip per figure, and "Copy viewer link". Screenshots go to ``artifacts/browser/`` at the repository
root (``page-split.png`` is the one in ``docs/images/``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.browser.harness import require_browser_env, run_in_netns
from tests.browser.run_e2e import FIRST_PROMPT, REC_S, SECOND_PROMPT

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "artifacts" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(290 + REC_S)]


@pytest.fixture(scope="module")
def e2e_result() -> dict[str, object]:
    require_browser_env()
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    t0 = time.monotonic()
    result: dict[str, object] = run_in_netns("tests.browser.run_e2e", ARTIFACTS, timeout_s=250 + REC_S)
    wall = time.monotonic() - t0
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


def _png(path: object) -> Path:
    shot = Path(str(path))
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
    return shot


def test_page_compares_input_and_output(e2e_result: dict[str, object]) -> None:
    """Split view: one frame, the webcam left of a divider and the edited video right of it, the two pictures in
    the same box (the output's aspect ratio) and mirrored alike; the divider moves with the arrow keys, Home and a
    pointer drag; output only hides the webcam; the view is remembered; fullscreen is asked for the stage and
    left again."""
    r = e2e_result
    assert r.get("ok"), _explain(r)
    split = r["split"]
    assert isinstance(split, dict)
    assert split["view"] == "split" and split["webcam_pane_shown"] is False and split["split_in_playing"], (
        split
    )
    # webcam and output cover the same rectangle, of the output's own aspect ratio: the pictures line up
    assert split["out_rect"] == split["split_in_rect"], split
    assert abs(split["frame_aspect"] - split["out_aspect"]) < 0.02 * split["out_aspect"], split
    flipped = "matrix(-1, 0, 0, 1, 0, 0)"
    assert split["transforms"] == [flipped, flipped], split
    # the webcam shows left of the divider (clip in screen coordinates), the divider in the middle
    assert "50%" in split["clip"], split
    assert abs(float(split["divider_left"].rstrip("px")) - split["frame_width"] / 2) <= 2, split
    assert split["after_keys"] == {"value": 45, "split": "45%"}, split
    assert abs(split["after_drag"] - 25) <= 3, split
    assert split["after_home"] == 0, split
    assert split["saved"] == "split", split
    _png(r["screenshot_split"])
    assert r["output_only"] == {
        "view": "output",
        "webcam_pane_shown": False,
        "divider_shown": False,
        "saved": "output",
    }, r["output_only"]
    # back to side by side: the webcam pane again, and the split's second video stream released
    assert r["side_by_side"] == {"view": "sbs", "webcam_pane_shown": True, "split_in_source": False}
    fs = r["fullscreen"]
    assert isinstance(fs, dict) and fs["button_visible"] is True, fs
    assert fs["on"]["calls"] == ["stage"], fs  # the button asks for the stage on the whole screen
    if fs["on"].get("element") == "stage":  # headless Chromium granted it: the button says so, and it ends
        assert fs["on"]["pressed"] == "true" and fs["off"]["element"] is None, fs
        assert fs["off"]["pressed"] == "false", fs


def test_page_tells_whether_the_model_knows_the_prompt(e2e_result: dict[str, object]) -> None:
    """The notice by the prompt field, as the server's matcher answers: an unknown prompt passes the video
    through unchanged (and the page suggests known ones), a known one names its edit."""
    r = e2e_result
    assert r.get("ok"), _explain(r)
    unknown, known = r["prompt_notice"]["unknown"], r["prompt_notice"]["known"]  # type: ignore[index]
    assert unknown["api"]["known"] is False and unknown["kind"] == "unknown", unknown
    assert unknown["text"].startswith("Unknown to this demo model: the video passes through unchanged."), (
        unknown
    )
    from lipar_core.train.demo import vocabulary

    assert f"“{next(iter(vocabulary().values()))[0]}”" in unknown["text"], unknown  # a known prompt to try
    assert known["api"]["known"] is True and known["kind"] == "known", known
    assert known["text"].startswith(f"Known edit: {known['api']['edit']}"), known


def test_page_controls_follow_the_model_ranges(e2e_result: dict[str, object]) -> None:
    """The strength slider spans the model's recommended strengths (rounded inward to its 0.01 step) and starts
    at the model's strength; the full range is behind a toggle; steps and the prompt length follow the API."""
    r = e2e_result
    assert r.get("ok"), _explain(r)
    ranges = r["model_ranges"]
    assert isinstance(ranges, dict), "GET /v1/model has no ranges"
    s = ranges["strength"]
    c = r["strength_control"]
    assert isinstance(c, dict)
    rec = c["recommended"]
    assert s["recommended_min"] > s["min"] or s["recommended_max"] < s["max"], s  # the e2e preset recommends
    assert rec["full_toggle_visible"] is True, rec
    assert rec["min"] == pytest.approx(s["recommended_min"]) and rec["max"] == pytest.approx(
        s["recommended_max"]
    )
    assert rec["value"] == pytest.approx(s["default"]) and rec["step"] == pytest.approx(0.01), (rec, s)
    assert (rec["steps_min"], rec["steps_max"], rec["steps"]) == (
        ranges["steps"]["min"],
        ranges["steps"]["max"],
        ranges["steps"]["default"],
    ), rec
    assert rec["prompt_max"] == ranges["prompt_max_chars"], rec
    # the full range: down to what the steps in use allow, up to the API's maximum; the value is kept
    full = c["full"]
    lowest = max(s["min"], s["min_by_steps"][str(rec["steps"])])
    assert full["min"] == pytest.approx(math.ceil(lowest * 100 - 1e-6) / 100), (full, s)
    assert full["max"] == pytest.approx(s["max"]) and full["value"] == pytest.approx(rec["value"]), full
    assert c["back"]["min"] == rec["min"] and c["back"]["max"] == rec["max"], c


def test_page_shows_warmup_and_steady_stats(e2e_result: dict[str, object]) -> None:
    """While the model warms up the placeholder counts the seconds; while the server starts (routed /readyz and
    503 answers) it shows the stage with a bar and starts as soon as the server is ready; the stats overlay never drops to 0 or a dash between the server's blocks, and each figure has a
    tooltip saying what it measures and over which window."""
    r = e2e_result
    assert r.get("ok"), _explain(r)
    texts = [t["text"] for t in r["warmup_texts"]]  # type: ignore[union-attr]
    assert any(re.fullmatch(r"Warming up the model(…|: .+) \(\d+ s\)", t) for t in texts), texts
    for t in r["warmup_texts"]:  # type: ignore[union-attr]
        if t["bar"] is not None:
            value, top = t["bar"]
            assert 0 <= value <= top, t
    # a server still starting: its stage and a bar, and Start again as soon as it is ready (not after Retry-After)
    starting = r["server_starting"]
    assert isinstance(starting, dict), _explain(r)
    assert starting["text"] == "The server is warming up: compiling (2 of 5)" and starting["bar"] == [2, 5], (
        starting
    )
    assert starting["posts_before_ready"] >= 1, starting
    assert starting["reconnect_after_ready_s"] < 5 < starting["retry_after_s"], starting
    titles = r["overlay_titles"]
    assert isinstance(titles, dict)
    assert "sliding window" in titles["s-fps"] and "smoothed" in titles["s-fps"], titles
    for key in ("s-lat", "s-prune", "s-block"):
        assert "smoothed over about 2 s" in titles[key], titles
    samples = r["recording"]["overlay"]  # type: ignore[index]
    assert len(samples) >= REC_S, samples  # two a second
    fps = [float(f) for f, _ in samples if f not in ("–", "")]
    assert len(fps) == len(samples) and min(fps) > 0, samples
    assert all(lat.startswith("≈") for _, lat in samples), samples


def test_page_copies_a_viewer_link(e2e_result: dict[str, object]) -> None:
    """While streaming, "Copy viewer link" gives /view/{id} with the token in the fragment (clipboard and field),
    and that link plays the session's edited video; after Stop the button is gone."""
    r = e2e_result
    assert r.get("ok"), _explain(r)
    v = r["viewer"]
    assert isinstance(v, dict) and v["button_visible"] is True, v
    assert v["link_ok"] is True and v["link"].endswith(f"/view/{r['session_id']}#token=<token>"), v
    assert v["clipboard_ok"] is True and v["note"] == "· copied", v
    assert v["button_visible_after_stop"] is False, v
    # the link opens the session's viewer page, which plays the edited video at the output's size
    page = v["page"]
    assert page["frames"] > 0 and [page["width"], page["height"]] == r["output_size"], v
    assert page["address_has_token"] is False, v  # the viewer page took the token out of its address
