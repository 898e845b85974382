"""Unit tests of ``lipar-loadtest``'s statistics (server.loadtest.report) on hand-made timelines with known answers,
its video sources (server.loadtest.sources), its paced track and its argument handling. No server."""

from __future__ import annotations

import argparse
import asyncio
import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from server.loadtest import cli
from server.loadtest.client import CLIP_BUDGET_BYTES, DRAIN_MAX_S, PacedTrack, max_frames
from server.loadtest.report import (
    CLOCK_HZ,
    STATUS_CONNECTED,
    STATUS_REJECTED,
    Timeline,
    aggregate,
    block_ratio,
    frame_index,
    gap_stats,
    latency_summary,
    markdown,
    percentile,
    prompt_change_ms,
    pts_step,
    session_stats,
    steady_window,
)
from server.loadtest.sources import (
    SYNTHETIC,
    SourceError,
    crop_box,
    list_clips,
    load_clip,
    synthetic_clip,
)

# A timeline in binary-exact times: 8 fps (0.125 s per frame), 80 measured frames (10 s) sent from t = 1000 s,
# 10 tail frames; every frame k with k % 10 == 3 is lost, the others arrive LATENCY_S after they were sent.
FPS = 8.0
T0 = 1000.0
MEASURED = 80
TAIL = 10
LATENCY_S = 0.5
LOST = {k for k in range(MEASURED + TAIL) if k % 10 == 3}


def _timeline(offset: int = 0) -> Timeline:
    """The timeline above; ``offset`` = index of the input frame the server's first output came from (the client
    rebases the received pts to it, so received indices are too small by ``offset``)."""
    tl = Timeline(
        fps=FPS, measured_frames=MEASURED, created_at=T0 - 1.0, answered_at=T0 - 0.5, connected_at=T0 - 0.375
    )
    tl.sent = [T0 + k / FPS for k in range(MEASURED + TAIL)]
    step = pts_step(FPS)
    tl.received = [
        ((k - offset) * step, tl.sent[k] + LATENCY_S) for k in range(offset, len(tl.sent)) if k not in LOST
    ]
    return tl


def test_pts_step_and_window_edges() -> None:
    assert pts_step(30.0) == 3000 and pts_step(8.0) == 11250 and pts_step(29.97) == 3003
    assert steady_window(1000.5, 1010.0, 2.0) == (1002.5, 1010.0)
    assert steady_window(1000.5, 1010.0, 9.5) is None  # warm-up past the end of sending: empty
    assert steady_window(None, 1010.0, 2.0) is None and steady_window(1000.5, None, 2.0) is None


def test_percentiles_and_latency_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) is None
    s = latency_summary([300.0, 100.0, 200.0])
    assert s == {"p50": 200.0, "p95": pytest.approx(290.0), "max": 300.0, "n": 3}
    assert latency_summary([]) == {"p50": None, "p95": None, "max": None, "n": 0}


def test_gap_statistics_measure_bursts() -> None:
    even = gap_stats([0.0, 0.1, 0.2, 0.3, 0.4])
    assert even["mean_ms"] == pytest.approx(100.0) and even["no_burst_share"] == 1.0 and even["n"] == 4
    # three frames, a long pause, three frames in a burst: 4 gaps of 10 ms and one of 980 ms
    burst = gap_stats([0.0, 0.01, 0.02, 1.0, 1.01, 1.02])
    assert burst["mean_ms"] == pytest.approx(204.0)
    assert burst["no_burst_share"] == pytest.approx(0.8)  # 4 of 5 gaps are under 2 × 204 ms
    assert burst["p95_ms"] == pytest.approx(10.0 + 0.8 * 970.0)  # linear between the 4th and 5th gaps
    assert gap_stats([1.0])["mean_ms"] is None


def test_session_stats_on_a_known_timeline() -> None:
    tl = _timeline()
    assert tl.send_end == T0 + MEASURED / FPS == 1010.0 and tl.first_received_at == T0 + LATENCY_S
    stats, latencies = session_stats(tl, warmup_s=2.0)
    # window [1002.5, 1010): received at T0 + 0.5 + k/8 inside it for k in [16, 76), 6 of them lost
    assert stats["window_s"] == 7.5
    assert stats["frames_received_in_window"] == 54
    assert stats["received_fps"] == pytest.approx(54 / 7.5)
    # sent inside the window: k in [20, 80) = 60 frames, 6 lost (23, 33, ..., 73); 76..79 arrive after it
    assert stats["frames_sent_in_window"] == 60
    assert stats["dropped_fraction"] == pytest.approx(6 / 60)
    assert stats["latency_ms"] == {"p50": 500.0, "p95": 500.0, "max": 500.0, "n": 54}
    assert latencies == [500.0] * 54
    assert stats["frames_sent"] == MEASURED + TAIL and stats["frames_sent_measured"] == MEASURED
    assert stats["frames_received"] == MEASURED + TAIL - len(LOST)
    assert stats["ttff_ms"] == 1000.0 and stats["ttff_from_create_ms"] == 1500.0
    assert stats["connect_ms"] == 125.0
    assert stats["negative_latency_frames"] == 0 and stats["unpaired_frames"] == 0
    # gaps: 47 of one frame (125 ms) and 6 of two (250 ms), all under twice the mean
    assert stats["gaps"]["n"] == 53
    assert stats["gaps"]["mean_ms"] == pytest.approx((47 * 125 + 6 * 250) / 53)
    assert stats["gaps"]["no_burst_share"] == 1.0


def test_timestamps_a_unit_off_still_pair_with_their_frame() -> None:
    """A decoder on the server may shift a timestamp by a unit (2999 for 3000 was seen at 30 fps through the
    real server): rounding pairs every frame with its own input, flooring paired a third with the previous."""
    step = pts_step(30.0)
    assert [frame_index(p, step) for p in (0, 2999, 3000, 3001, 5999, 6000)] == [0, 1, 1, 1, 2, 2]
    tl = Timeline(fps=30.0, measured_frames=300)
    for k in range(300):
        tl.sent.append(T0 + k / 30)
        tl.received.append((k * step - (k % 3 == 1), T0 + k / 30 + 0.4))
    stats, latencies = session_stats(tl, warmup_s=1.0)
    assert stats["dropped_fraction"] == 0.0 and stats["unpaired_frames"] == 0
    assert latencies and all(x == pytest.approx(400.0) for x in latencies)


def test_a_late_first_output_over_states_latency_never_under() -> None:
    """If the server's first output came from input 2, the pairing is off by 2 frames: +250 ms, never less."""
    stats, _ = session_stats(_timeline(offset=2), warmup_s=2.0)
    assert stats["latency_ms"]["p50"] == stats["latency_ms"]["max"] == 500.0 + 2 * 1000.0 / FPS
    assert stats["negative_latency_frames"] == 0


def test_negative_and_unpaired_frames_are_counted() -> None:
    tl = Timeline(fps=FPS, measured_frames=4, sent=[0.0, 0.125, 0.25, 0.375])
    step = pts_step(FPS)
    # frame 3 "arrives" at 0.2 s, before it was sent (0.375 s); a pts past the last sent frame has no input
    tl.received = [(0, 0.1), (3 * step, 0.2), (9 * step, 0.3)]
    stats, _ = session_stats(tl, warmup_s=0.0)
    assert stats["negative_latency_frames"] == 1 and stats["unpaired_frames"] == 1


def test_prompt_change_latency_uses_the_first_frame_at_or_after_the_applied_pts() -> None:
    tl = _timeline()
    step = pts_step(FPS)
    assert prompt_change_ms(tl) is None  # no PATCH
    tl.patch_at = 1004.0
    tl.applied_pts = 40 * step  # frame 40 sent at 1005, received at 1005.5
    assert prompt_change_ms(tl) == 1500.0
    tl.applied_pts = 43 * step  # frame 43 was lost: the first frame at or after it is 44, received at 1006
    assert prompt_change_ms(tl) == 2000.0
    tl.applied_pts = 10_000 * step  # never received
    assert prompt_change_ms(tl) is None


def _session(
    index: int, tl: Timeline | None, status: str = STATUS_CONNECTED, block_ms: dict[str, object] | None = None
) -> dict[str, object]:
    client, lat = session_stats(tl, 2.0) if tl is not None else (None, [])
    return {
        "server": None if block_ms is None else {"block_ms": block_ms},
        "index": index,
        "clip": SYNTHETIC,
        "status": status,
        "error": None if tl is not None else "POST /v1/sessions: HTTP 503: busy | full",
        "session_id": f"id{index}" if tl is not None else None,
        "client": client,
        "_latencies_ms": lat,
    }


def test_aggregate_and_markdown() -> None:
    slow = _timeline()
    slow.received = slow.received[::2]  # half the frames
    sessions = [
        _session(0, _timeline(), block_ms={"first": 300.0, "p50": 80.0, "max_after_first": 100.0, "n": 9}),
        _session(1, slow, block_ms={"first": 300.0, "p50": 80.0, "max_after_first": 160.0, "n": 9}),
        _session(2, None, STATUS_REJECTED),
    ]
    pooled = [x for s in sessions for x in s["_latencies_ms"]]  # type: ignore[attr-defined]
    agg = aggregate(sessions, pooled)
    fps0, fps1 = (s["client"]["received_fps"] for s in sessions[:2])  # type: ignore[index]
    assert (agg["sessions_requested"], agg["sessions_connected"], agg["sessions_rejected"]) == (3, 2, 1)
    assert agg["received_fps_total"] == pytest.approx(fps0 + fps1)
    assert agg["received_fps_min"] == pytest.approx(min(fps0, fps1))
    assert agg["latency_ms"]["n"] == len(pooled) and agg["latency_ms"]["p50"] == 500.0
    assert agg["ttff_ms_max"] == 1000.0 and agg["connect_ms_max"] == 125.0
    # the slowest block after a session's first over its median: 160 / 80 (session 1), the first block not counted
    assert agg["block_ratio_max"] == 2.0
    assert (
        block_ratio(None) is None and block_ratio({"block_ms": {"first": 9.0, "p50": None, "n": 1}}) is None
    )
    shares = [s["client"]["gaps"]["no_burst_share"] for s in sessions[:2]]  # type: ignore[index]
    assert agg["no_burst_share_min"] == min(shares)
    report = {
        "label": "unit",
        "url": "http://x",
        "settings": {
            "sessions": 3,
            "seconds": 10.0,
            "fps": FPS,
            "width": 64,
            "height": 64,
            "warmup": 2.0,
            "procs": 2,
        },
        "sessions": sessions,
        "aggregate": agg,
        "notes": ["a note"],
    }
    md = markdown(report)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + 1  # header, three sessions, total
    assert all(r.replace("\\|", "").count("|") == 11 for r in rows), rows  # ten cells each
    assert "| 2.00 |" in md and "| 1.25 |" in md  # block max/p50 of each session and the worst in the total
    assert "s0 (id0)" in md and "s1 (id1)" in md and "rejected: POST /v1/sessions: HTTP 503" in md
    assert "## lipar-loadtest: unit" in md and "- a note" in md and "**total** (2/3 connected)" in md


def test_exit_status_when_no_session_connects() -> None:
    run = cli.Run(2)
    run.results = {i: _session(i, None, STATUS_REJECTED) for i in range(2)}
    st = cli.Settings(
        url="http://x",
        sessions=2,
        seconds=10.0,
        fps=FPS,
        warmup=2.0,
        width=64,
        height=64,
        procs=1,
        stagger=0.5,
        seed=0,
        prompt="p",
        prompt_change_at=None,
        prompt_change_to=None,
        lipar=None,
        clips=(),
        ice_hosts=(),
        min_fps=5.0,
        token="secret",
        label=None,
    )
    report, code, why = cli.build_report(st, None, run, 1.0, 2.0)
    assert code == cli.EXIT_NO_SESSION and "no session could connect" in why[0]
    assert report["settings"]["token"] is True  # the token itself is not written


# ---- sources ------------------------------------------------------------------------------------------------
def _write_y4m(path: Path, rgb: np.ndarray, frames: int) -> None:
    """A lossless (raw yuv420p) clip of ``frames`` copies of ``rgb``."""
    with av.open(str(path), "w", format="yuv4mpegpipe") as c:
        s = c.add_stream("rawvideo", rate=10)
        s.width, s.height, s.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        for _ in range(frames):
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def test_crop_box_keeps_the_aspect() -> None:
    assert crop_box(640, 272, 256, 256) == (184, 0, 272, 272)
    assert crop_box(272, 640, 256, 256) == (0, 184, 272, 272)
    assert crop_box(1280, 720, 832, 480) == (16, 0, 1248, 720)
    assert crop_box(832, 480, 832, 480) == (0, 0, 832, 480)


def test_clip_folder_is_cropped_not_squashed(tmp_path: Path) -> None:
    """A 640×272 clip sent at 256×256: red side bands (outside the centred 272×272 square) must be cropped away;
    inside, the top half is white and the bottom half blue, so a squash or a vertical shift shows too."""
    w, h = 640, 272
    x0, _, side, _ = crop_box(w, h, 256, 256)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[...] = (255, 0, 0)
    rgb[: h // 2, x0 : x0 + side] = (255, 255, 255)
    rgb[h // 2 :, x0 : x0 + side] = (0, 0, 255)
    _write_y4m(tmp_path / "b.y4m", rgb, 3)
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "a.MKV").write_bytes(b"")
    assert [p.name for p in list_clips(tmp_path)] == ["a.MKV", "b.y4m"]
    clip = load_clip(tmp_path / "b.y4m", 256, 256, max_frames=2)
    assert len(clip) == 2 and clip.name == "b.y4m"
    out = clip.rgb(0).astype(int)
    assert out.shape == (256, 256, 3)
    margin = 8  # chroma subsampling and the resize filter blur the edges by a few pixels
    top, bottom = out[margin : 128 - margin], out[128 + margin : 256 - margin]
    assert (top.min(axis=(0, 1)) > 230).all(), "top half must be white edge to edge (no red band)"
    assert (bottom[..., 2] > 200).all() and (bottom[..., :2] < 40).all(), "bottom half must be blue"
    # (a squashed frame would have red bands about 73 px wide at both sides, failing both checks above)
    assert clip.rgb(2).tolist() == clip.rgb(0).tolist()  # looped


def test_decoded_frames_are_bounded() -> None:
    assert max_frames(10.0, 10.0, 256, 256) == (10 + DRAIN_MAX_S) * 10  # the whole run fits
    assert max_frames(600.0, 30.0, 832, 480) == CLIP_BUDGET_BYTES // (832 * 480 * 3 // 2)  # memory-bound


def test_clip_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no video file"):
        list_clips(tmp_path)
    with pytest.raises(SourceError, match="not a folder"):
        list_clips(tmp_path / "missing")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot decode"):
        load_clip(tmp_path / "bad.mp4", 64, 64, max_frames=2)


def test_synthetic_source_has_still_and_moving_regions() -> None:
    a = synthetic_clip(128, 96, fps=10.0, seed=3)
    b = synthetic_clip(128, 96, fps=10.0, seed=3)
    assert len(a) == 40 and all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert a.rgb(0).shape == (96, 128, 3)
    moved = np.abs(a.rgb(0).astype(int) - a.rgb(len(a) // 4).astype(int)).max(axis=2) > 24
    assert 0.02 < moved.mean() < 0.3, moved.mean()  # a moving disc over a still background
    assert a.rgb(0).std() > 20  # the background is textured, not flat


async def test_paced_track_stamps_frames_and_records_send_times() -> None:
    fps = 50.0
    tl = Timeline(fps=fps, measured_frames=4)
    track = PacedTrack(synthetic_clip(64, 48, fps, 0), tl)
    frames = [await track.recv() for _ in range(5)]
    assert [f.pts for f in frames] == [k * pts_step(fps) for k in range(5)]
    assert all(f.time_base == fractions.Fraction(1, CLOCK_HZ) for f in frames)
    assert track.measured_done.is_set() and len(tl.sent) == 5
    assert tl.sent[4] - tl.sent[0] >= 4 / fps - 1e-3  # paced, not as fast as possible
    track.stop_sending()
    pending = asyncio.ensure_future(track.recv())
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(pending, 5)


# ---- arguments -------------------------------------------------------------------------------------------
def test_ice_hosts_and_size_parsing() -> None:
    assert cli.ice_hosts("http://127.0.0.1:8000", None) == ("127.0.0.1",)
    assert cli.ice_hosts("http://localhost:8000", None) == ("127.0.0.1",)
    assert cli.ice_hosts("http://[::1]:8000", None) == ("127.0.0.1",)
    assert cli.ice_hosts("http://10.1.2.3:8000", None) == ()
    assert cli.ice_hosts("http://10.1.2.3:8000", "10.1.2.9") == ("10.1.2.9",)
    assert cli.ice_hosts("http://127.0.0.1:8000", "all") == ()
    assert cli.parse_size("832x480") == (832, 480)
    for bad in ("832", "831x480", "0x480", "axb"):
        with pytest.raises(cli.UsageError):
            cli.parse_size(bad)
    assert cli.default_prompts({"prompts": {"a": ["x", "y"], "b": ["z"]}}) == ("x", "z")
    assert cli.default_prompts(None) == (cli.DEFAULT_PROMPT, cli.DEFAULT_PROMPT_CHANGE_TO)


def test_fps_auto_sends_at_the_rate_the_server_measured() -> None:
    """``--fps`` defaults to ``auto``: the server's ``input_fps`` (GET /v1/model), as the web page's camera; an explicit
    rate is kept; ``auto`` against a server without a rate (older, warming up) is a usage error."""
    url = "http://127.0.0.1:9"
    common = ["--sessions", "1", "--seconds", "10", "--out", "/nonexistent/x.json"]
    parser = cli._parser()
    model = {"width": 64, "height": 64, "prompts": None, "input_fps": 14.4}
    auto = parser.parse_args([url, *common])
    assert auto.fps == cli.AUTO_FPS == parser.parse_args([url, *common, "--fps", "AUTO"]).fps
    st = cli.check_args(auto, model, url)
    assert (st.fps, st.fps_source) == (14.4, "GET /v1/model input_fps")
    assert st.public()["fps"] == 14.4 and st.public()["fps_source"] == "GET /v1/model input_fps"
    explicit = cli.check_args(parser.parse_args([url, *common, "--fps", "12"]), model, url)
    assert (explicit.fps, explicit.fps_source) == (12.0, "--fps")
    for unmeasured in ({**model, "input_fps": None}, {"width": 64, "height": 64}, None):
        with pytest.raises(cli.UsageError, match="reports no input_fps"):
            cli.check_args(auto, unmeasured, url) if unmeasured else cli.check_args(
                argparse.Namespace(**{**vars(auto), "size": "64x64"}), unmeasured, url
            )
    for bad in ("0", "-3", "fast", "inf", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args([url, *common, "--fps", bad])


def test_usage_errors_and_unreachable_server_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.server.server_proc import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    common = ["--sessions", "1", "--seconds", "10", "--fps", "10", "--out", "/nonexistent/x.json"]
    assert cli.main([url, *common]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip().endswith(f"lipar-loadtest: cannot reach {url}: connection refused")
    assert cli.main(["ftp://host", *common]) == cli.EXIT_USAGE
    assert "not an http(s) URL" in capsys.readouterr().err
    args = argparse.Namespace(**{**vars(cli._parser().parse_args([url, *common])), "warmup": 12.0})
    with pytest.raises(cli.UsageError, match="--warmup"):
        cli.check_args(args, {"width": 64, "height": 64}, url)
    args = argparse.Namespace(**{**vars(cli._parser().parse_args([url, *common])), "lipar_json": "[1]"})
    with pytest.raises(cli.UsageError, match="JSON object"):
        cli.check_args(args, {"width": 64, "height": 64}, url)
