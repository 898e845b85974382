"""Statistics of ``lipar-loadtest``: per-session numbers from a client's timeline, the aggregate over sessions,
and the reports (JSON and a markdown table). Pure functions over plain data; runs in any process.

Clock: every time here is ``time.monotonic()`` in seconds; on one host it is the same clock in every process, so
timelines from the worker processes compare directly. Reported durations are milliseconds (``_ms``) or seconds
(``_s``), rates frames per second (``fps``).

Definitions (the markdown report repeats them):

- **Frame identity.** Input frame ``k`` is sent with ``pts = k * step``, ``step = round(90000 / fps)``. The server
  gives every edited frame the RTP timestamp of the input frame it was made from; aiortc rebases RTP timestamps
  to the first one seen (server inbound side and client receive side), so a received frame's pts / step, rounded (:func:`frame_index`), is
  the index ``k`` of its input frame. If the server's first output came from a later input than frame 0, every
  received index is too small by that offset and the pairing over-states latency, never under-states it; a
  negative latency is therefore always an error (reported as ``negative_latency_frames``).
- **Latency** (glass to glass) of a received frame = its receive time − the send time of its input frame.
- **End of sending** = send time of frame 0 + measured frames / fps (the scheduled end of ``--seconds``; the
  client keeps sending a tail after it so that the server's last blocks of the window fill, but the tail is
  not measured).
- **Steady window** = from ``warmup_s`` after the session's first received frame until the end of sending.
- **Received fps** = output frames received inside the window / window length.
- **Dropped** = 1 − (frames received whose input was sent inside the window) / (frames sent inside the window).
- **Latency percentiles** are over the frames received inside the window; linear interpolation between order
  statistics (numpy's default).
- **Frame gaps** are the intervals between consecutive frames received inside the window: mean, p95, and the
  share of gaps under twice the mean ("no bursts": 1.0 = evenly paced output).
- **Time to first frame** from the SDP answer (``ttff_ms``) and from the ``POST /v1/sessions`` call
  (``ttff_from_create_ms``) to the first received frame; ``connect_ms`` is the part from the SDP answer to the
  WebRTC connection up (ICE + DTLS).
- **Block stalls** (server side, from ``stats.block_ms`` read at the end of sending): the slowest block after a
  session's first over the median block (``block_ratio``; 1.5 or less = no stall).
- **Prompt-change latency** = receive time of the first received frame whose pts is ≥ the server's
  ``stats.prompt_applied_pts`` (the first input frame edited with the new prompt, in the same rebased 90 kHz
  units) − the time the PATCH was sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CLOCK_HZ = 90_000  #: RTP video clock (Hz): pts units of the sent and received frames
MS_PER_S = 1000.0
BURST_FACTOR = 2.0  #: a gap under BURST_FACTOR × the mean gap is "no burst"

STATUS_CONNECTED = "connected"  #: the WebRTC connection came up (whatever happened after)
STATUS_REJECTED = "rejected"  #: the server refused the session (HTTP error on create or offer)
STATUS_FAILED = "failed"  #: anything else: ICE/DTLS failure, timeout, client error


def pts_step(fps: float) -> int:
    """The pts increment between input frames at ``fps`` (90 kHz units)."""
    return round(CLOCK_HZ / fps)


@dataclass
class Timeline:
    """What one client session observed (monotonic seconds).

    ``sent[k]`` is the send time of input frame ``k`` (frames ``0 .. measured_frames - 1`` are the measured
    period, later ones the tail); ``received`` holds ``(pts, receive time)`` of each received frame in arrival
    order; ``applied_pts`` is the server's ``stats.prompt_applied_pts`` after the PATCH sent at ``patch_at``.
    """

    fps: float
    measured_frames: int
    sent: list[float] = field(default_factory=list)
    received: list[tuple[int, float]] = field(default_factory=list)
    created_at: float | None = None
    answered_at: float | None = None
    connected_at: float | None = None
    patch_at: float | None = None
    applied_pts: int | None = None

    @property
    def step(self) -> int:
        """pts units per input frame."""
        return pts_step(self.fps)

    @property
    def send_end(self) -> float | None:
        """End of sending (s): frame 0's send time + measured frames / fps; None before the first frame."""
        return self.sent[0] + self.measured_frames / self.fps if self.sent else None

    @property
    def first_received_at(self) -> float | None:
        """Receive time of the first received frame (s)."""
        return self.received[0][1] if self.received else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) with linear interpolation; None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def steady_window(
    first_received_at: float | None, send_end: float | None, warmup_s: float
) -> tuple[float, float] | None:
    """The steady window ``(start, end)`` in seconds, or None when it is empty (no frame, or warm-up past the
    end of sending)."""
    if first_received_at is None or send_end is None:
        return None
    start = first_received_at + warmup_s
    return (start, send_end) if send_end > start else None


def gap_stats(times: Sequence[float]) -> dict[str, float | int | None]:
    """Gaps between consecutive receive times (s): ``mean_ms``, ``p95_ms``, ``no_burst_share`` (share of gaps
    under :data:`BURST_FACTOR` × the mean) and ``n`` (gaps)."""
    gaps = np.diff(np.asarray(times, dtype=np.float64))
    if gaps.size == 0:
        return {"mean_ms": None, "p95_ms": None, "no_burst_share": None, "n": 0}
    mean = float(gaps.mean())
    return {
        "mean_ms": mean * MS_PER_S,
        "p95_ms": float(np.percentile(gaps, 95)) * MS_PER_S,
        "no_burst_share": float(np.mean(gaps < BURST_FACTOR * mean)),
        "n": int(gaps.size),
    }


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """``p50``, ``p95``, ``max`` (ms) and ``n`` of latencies."""
    return {
        "p50": percentile(latencies_ms, 50),
        "p95": percentile(latencies_ms, 95),
        "max": float(max(latencies_ms)) if latencies_ms else None,
        "n": len(latencies_ms),
    }


def _ms(a: float | None, b: float | None) -> float | None:
    """``(b - a)`` in ms, or None when either is missing."""
    return None if a is None or b is None else (b - a) * MS_PER_S


def frame_index(pts: int, step: int) -> int:
    """The input frame index of a pts: the nearest multiple of ``step``. A decoder may hand the server its
    frames' timestamps a unit off (FFmpeg rescales them through the codec's time base: 2999 for 3000 was seen),
    so flooring would pair a third of the frames at 30 fps with their predecessors."""
    return (pts + step // 2) // step


def prompt_change_ms(tl: Timeline) -> float | None:
    """Prompt-change latency (ms): first received frame of ``applied_pts``'s input frame or a later one, minus
    the PATCH time."""
    if tl.patch_at is None or tl.applied_pts is None:
        return None
    first = frame_index(tl.applied_pts, tl.step)
    at = [t for pts, t in tl.received if frame_index(pts, tl.step) >= first]
    return _ms(tl.patch_at, min(at)) if at else None


def session_stats(tl: Timeline, warmup_s: float) -> tuple[dict[str, Any], list[float]]:
    """The client-side numbers of one session (module docstring) and the latencies (ms) of the frames received
    inside the steady window (for pooling over sessions)."""
    step = tl.step
    window = steady_window(tl.first_received_at, tl.send_end, warmup_s)
    indices = [(frame_index(pts, step), t) for pts, t in tl.received]
    paired = [(k, t) for k, t in indices if 0 <= k < len(tl.sent)]
    latencies = [(t - tl.sent[k]) * MS_PER_S for k, t in paired]
    out: dict[str, Any] = {
        "frames_sent": len(tl.sent),
        "frames_sent_measured": min(len(tl.sent), tl.measured_frames),
        "frames_received": len(tl.received),
        "unpaired_frames": len(tl.received) - len(paired),
        "negative_latency_frames": sum(1 for x in latencies if x < 0),
        "ttff_ms": _ms(tl.answered_at, tl.first_received_at),
        "ttff_from_create_ms": _ms(tl.created_at, tl.first_received_at),
        "connect_ms": _ms(tl.answered_at, tl.connected_at),
        "prompt_change_ms": prompt_change_ms(tl),
        "window_s": None,
        "frames_sent_in_window": 0,
        "frames_received_in_window": 0,
        "received_fps": None,
        "dropped_fraction": None,
        "latency_ms": latency_summary([]),
        "gaps": gap_stats([]),
    }
    if window is None:
        return out, []
    start, end = window
    inside = [t for _, t in tl.received if start <= t < end]
    sent_inside = {k for k, t in enumerate(tl.sent) if start <= t < end}
    got = {k for k, _ in paired} & sent_inside
    window_latencies = [(t - tl.sent[k]) * MS_PER_S for k, t in paired if start <= t < end]
    out.update(
        window_s=end - start,
        frames_sent_in_window=len(sent_inside),
        frames_received_in_window=len(inside),
        received_fps=len(inside) / (end - start),
        dropped_fraction=1.0 - len(got) / len(sent_inside) if sent_inside else None,
        latency_ms=latency_summary(window_latencies),
        gaps=gap_stats(inside),
    )
    return out, window_latencies


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def block_ratio(server: dict[str, Any] | None) -> float | None:
    """The slowest block after the first over the median block, from a session's server stats (``block_ms``);
    None when the server did not report them or had fewer than two blocks."""
    times = (server or {}).get("block_ms") or {}
    p50, worst = times.get("p50"), times.get("max_after_first")
    return float(worst) / float(p50) if p50 and worst is not None else None


def aggregate(sessions: Sequence[dict[str, Any]], pooled_latencies_ms: Sequence[float]) -> dict[str, Any]:
    """The totals over sessions. Each session dict has ``status`` and, when connected, ``client`` (the output of
    :func:`session_stats`); ``pooled_latencies_ms`` are all sessions' window latencies."""
    connected = [s for s in sessions if s["status"] == STATUS_CONNECTED]
    clients = [s["client"] for s in connected if s.get("client")]
    fps = [c["received_fps"] for c in clients if c["received_fps"] is not None]
    dropped = [c["dropped_fraction"] for c in clients if c["dropped_fraction"] is not None]
    ttff = [c["ttff_ms"] for c in clients if c["ttff_ms"] is not None]
    ttff_create = [c["ttff_from_create_ms"] for c in clients if c["ttff_from_create_ms"] is not None]
    prompt = [c["prompt_change_ms"] for c in clients if c["prompt_change_ms"] is not None]
    smooth = [c["gaps"]["no_burst_share"] for c in clients if c["gaps"]["no_burst_share"] is not None]
    connect = [c["connect_ms"] for c in clients if c.get("connect_ms") is not None]
    ratios = [r for s in connected if (r := block_ratio(s.get("server"))) is not None]
    return {
        "sessions_requested": len(sessions),
        "sessions_connected": len(connected),
        "sessions_rejected": sum(1 for s in sessions if s["status"] == STATUS_REJECTED),
        "sessions_failed": sum(1 for s in sessions if s["status"] == STATUS_FAILED),
        "received_fps_total": float(sum(fps)) if fps else None,
        "received_fps_min": float(min(fps)) if fps else None,
        "received_fps_mean": _mean(fps),
        "dropped_pct_mean": None if not dropped else 100.0 * float(np.mean(dropped)),
        "latency_ms": latency_summary(pooled_latencies_ms),
        "ttff_ms_max": float(max(ttff)) if ttff else None,
        "ttff_from_create_ms_max": float(max(ttff_create)) if ttff_create else None,
        "connect_ms_max": float(max(connect)) if connect else None,
        "block_ratio_max": float(max(ratios)) if ratios else None,
        "prompt_change_ms": {
            "mean": _mean(prompt),
            "max": float(max(prompt)) if prompt else None,
            "n": len(prompt),
        },
        "no_burst_share_min": float(min(smooth)) if smooth else None,
        "frames_received": sum(c["frames_received"] for c in clients),
        "negative_latency_frames": sum(c["negative_latency_frames"] for c in clients),
    }


def _cell(value: float | None, digits: int = 0) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


MD_HEADER = (
    "| session | clip | received fps | dropped % | latency p50 ms | latency p95 ms | TTFF ms | connect ms | "
    "prompt-change ms | block max/p50 |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
)


def session_name(s: dict[str, Any]) -> str:
    """How the reports name a session: ``s<index>`` and the server's session id when there is one."""
    return f"s{s['index']}" + (f" ({s['session_id']})" if s.get("session_id") else "")


def markdown(report: dict[str, Any]) -> str:
    """The markdown report: a heading with the label and settings, one row per session, a total row, notes."""
    st = report["settings"]
    agg = report["aggregate"]
    lines = [
        f"## lipar-loadtest{': ' + report['label'] if report.get('label') else ''}",
        "",
        f"{report['url']} · {st['sessions']} session(s) × {st['seconds']:g} s at {st['fps']:g} fps, "
        f"{st['width']}×{st['height']}, warm-up {st['warmup']:g} s, {st['procs']} client process(es)",
        "",
        *MD_HEADER,
    ]
    for s in report["sessions"]:
        c = s.get("client") or {}
        if s["status"] != STATUS_CONNECTED or not c:
            error = str(s.get("error") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {session_name(s)} | {s['clip']} | {s['status']}: {error} ||||||||")
            continue
        lat = c["latency_ms"]
        lines.append(
            f"| {session_name(s)} | {s['clip']} | {_cell(c['received_fps'], 1)} | "
            f"{_cell(_pct(c['dropped_fraction']), 1)} | {_cell(lat['p50'])} | {_cell(lat['p95'])} | "
            f"{_cell(c['ttff_ms'])} | {_cell(c.get('connect_ms'))} | {_cell(c['prompt_change_ms'])} | "
            f"{_cell(block_ratio(s.get('server')), 2)} |"
        )
    lat = agg["latency_ms"]
    lines += [
        f"| **total** ({agg['sessions_connected']}/{agg['sessions_requested']} connected) | | "
        f"{_cell(agg['received_fps_total'], 1)} | {_cell(agg['dropped_pct_mean'], 1)} | {_cell(lat['p50'])} | "
        f"{_cell(lat['p95'])} | {_cell(agg['ttff_ms_max'])} | {_cell(agg.get('connect_ms_max'))} | "
        f"{_cell(agg['prompt_change_ms']['max'])} | {_cell(agg.get('block_ratio_max'), 2)} |",
        "",
        "Total row: received fps summed over sessions, dropped % their mean, latency over all frames of all "
        "sessions, TTFF and prompt-change the worst session. Received fps = output frames received in the "
        "steady window (warm-up after the first received frame until the end of sending) / its length; "
        "dropped = 1 − received / sent among the frames sent inside the window; latency = receive time − "
        "send time of the input frame (paired by RTP timestamp); TTFF and connect (ICE + DTLS) from the SDP answer; "
        "block max/p50: the server's slowest block after the session's first over its median block.",
    ]
    notes = list(report.get("notes") or [])
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def markdown_path(json_path: Path) -> Path:
    """Where the markdown report goes: beside the JSON, suffix ``.md``."""
    return json_path.with_suffix(".md")


def write_reports(report: dict[str, Any], json_path: Path) -> str:
    """Write the JSON report and the markdown beside it; returns the markdown."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    md = markdown(report)
    markdown_path(json_path).write_text(md)
    return md
