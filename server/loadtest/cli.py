"""``lipar-loadtest``: drive a running ``lipar-server`` with N real WebRTC clients and report what they saw.

::

    lipar-loadtest URL [--clips DIR] --sessions N --seconds S [--fps F|auto] --out FILE.json [--token T]
        [--prompt P] [--prompt-change-at S] [--prompt-change-to P2] [--min-fps X] [--procs K]
        [--warmup S] [--size WxH] [--lipar-json '{"enabled": false}'] [--label TEXT] [--seed N]
        [--ice-host 127.0.0.1] [--stagger S]

The parent process checks the server (``GET /v1/model``, public: reachability, the model's frame size and, for
``--fps auto``, the default, the input rate one session sustains, ``input_fps``, as the web page reads it), plans
the sessions, spreads them over K spawned client processes (default ``min(N, cpu count)``: decoding several
VP8 streams in one Python process would make the client the bottleneck), starts them together (session ``i``
``i × --stagger`` s after the start), shows progress (log lines, a tqdm bar on a terminal), gathers each
session's result, and writes ``FILE.json`` (settings, per-session results, aggregate, wall-clock start and end
from ``time.time()`` to match GPU-utilisation samples) and ``FILE.md`` (a markdown table, also written to
stdout). The numbers are defined in :mod:`server.loadtest.report`; one session's protocol is in
:mod:`server.loadtest.client`.

Exit status: 0 normally; 1 when ``--min-fps X`` is given and a connected session received less than X fps; 2 for
a usage error or an unreachable server; 3 when no session could connect. The run ends by itself: every wait is
bounded, and client processes still running at :func:`hard_limit_s` are terminated (their server sessions
are deleted from here).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from server.loadtest.client import (
    HTTP_TIMEOUT_S,
    SessionPlan,
    WorkerSpec,
    error_message,
    session_budget_s,
    teardown_budget_s,
    worker_main,
)
from server.loadtest.report import (
    STATUS_CONNECTED,
    STATUS_FAILED,
    aggregate,
    markdown_path,
    session_name,
    write_reports,
)
from server.loadtest.sources import SYNTHETIC, SourceError, list_clips

log = logging.getLogger("lipar.loadtest")

PROG = "lipar-loadtest"
EXIT_OK, EXIT_MIN_FPS, EXIT_USAGE, EXIT_NO_SESSION = 0, 1, 2, 3

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
LOOPBACK_ICE_HOST = "127.0.0.1"  #: the host candidate used against a loopback URL
ALL_INTERFACES = "all"  #: ``--ice-host all``: gather host candidates on every interface
DEFAULT_PROMPT = "a watercolor painting"  #: for an open-vocabulary model (else: its first known prompt)
DEFAULT_PROMPT_CHANGE_TO = "a pencil sketch"  #: for an open-vocabulary model (else: another known prompt)
READY_TIMEOUT_S = 120.0  #: client processes start, import and decode their clips within this
START_DELAY_S = 0.2  #: from "all ready" to the common start, so that every process sees it in the future
EXIT_GRACE_S = 5.0  #: client processes exit this long after their last session at most
PROGRESS_LOG_S = 5.0  #: a progress log line this often
POLL_QUEUE_S = 0.25  #: the parent's wait on its message queue
#: ``--fps auto``: the server's ``input_fps`` (GET /v1/model), the rate the web page asks cameras for
AUTO_FPS: Literal["auto"] = "auto"


class UsageError(Exception):
    """A bad argument or an unusable server: exit 2 with the message."""


@dataclass
class Run:
    """The parent's view of the running sessions."""

    n: int
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    progress: dict[int, tuple[str, int, int]] = field(
        default_factory=dict
    )  #: index → (stage, sent, received)
    session_ids: dict[int, str] = field(default_factory=dict)
    worker_errors: dict[int, str] = field(default_factory=dict)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Load-test a lipar-server over real WebRTC: N client sessions send video and measure the "
        "edited video they get back (fps, drops, latency, time to first frame, prompt-change latency).",
    )
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--clips", type=Path, help="folder of video files; session i sends clip i mod count")
    p.add_argument("--sessions", type=int, required=True, help="client sessions (N)")
    p.add_argument("--seconds", type=float, required=True, help="measured sending time per session (s)")
    p.add_argument(
        "--fps",
        type=fps_arg,
        default=AUTO_FPS,
        metavar="F|auto",
        help="input frame rate of every session (fps), or 'auto' (the default): the rate the server says one "
        "session sustains (GET /v1/model input_fps, measured at its warm-up), which the web page asks cameras "
        "for; a server that reports none (older, or still warming up) is a usage error",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON report path; the markdown goes beside it")
    p.add_argument("--token", help="bearer token (the server's LIPAR_API_TOKEN)")
    p.add_argument("--prompt", help="session prompt (default: the model's first known prompt)")
    p.add_argument(
        "--prompt-change-at", type=float, help="PATCH the prompt this long after the first frame (s)"
    )
    p.add_argument("--prompt-change-to", help="the new prompt (default: another known prompt)")
    p.add_argument("--min-fps", type=float, help="exit 1 if a connected session received fewer fps")
    p.add_argument("--procs", type=int, help="client processes (default: min(sessions, cpu count))")
    p.add_argument(
        "--warmup", type=float, default=5.0, help="steady window starts this long after the first frame (s)"
    )
    p.add_argument("--size", help="send size WxH (default: the model's size from GET /v1/model)")
    p.add_argument("--lipar-json", help="LIPAR overrides for every session, e.g. '{\"enabled\": false}'")
    p.add_argument("--label", help="a label for the reports")
    p.add_argument("--seed", type=int, default=0, help="session seed (noise) and synthetic-source seed")
    p.add_argument(
        "--ice-host",
        help=f"host-candidate address of the clients ('{ALL_INTERFACES}': every interface; default "
        f"{LOOPBACK_ICE_HOST} for a loopback URL, else every interface)",
    )
    p.add_argument("--stagger", type=float, default=0.5, help="time between session starts (s)")
    return p


def parse_size(text: str) -> tuple[int, int]:
    """``"832x480"`` → ``(832, 480)``: positive and even (yuv420p, the codecs' format)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r}: expected WxH, e.g. 832x480") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise UsageError(f"--size {text!r}: width and height must be positive even numbers")
    return w, h


def base_url(url: str) -> str:
    """The server's base URL without a trailing slash (http or https, with a host)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000")
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ice_hosts(url: str, ice_host: str | None) -> tuple[str, ...]:
    """The clients' host-candidate addresses: ``--ice-host`` if given, else loopback for a loopback URL, else
    every interface (empty)."""
    if ice_host is not None:
        return () if ice_host in ("", ALL_INTERFACES) else (ice_host,)
    host = urlsplit(url).hostname or ""
    return (LOOPBACK_ICE_HOST,) if is_loopback(host) else ()


def reason(e: BaseException) -> str:
    """A short reason for a failed connection: the OS error ("connection refused") when there is one."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    if isinstance(e, httpx.TimeoutException):
        return f"no answer within {HTTP_TIMEOUT_S:g} s"
    return str(e) or type(e).__name__


def fps_arg(text: str) -> float | Literal["auto"]:
    """``--fps``: ``auto`` or a positive number of frames per second."""
    if text.strip().lower() == AUTO_FPS:
        return AUTO_FPS
    try:
        fps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected frames per second or '{AUTO_FPS}', got {text!r}"
        ) from None
    if not fps > 0 or fps == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
    return fps


def resolve_fps(fps: float | str, model: dict[str, Any] | None, url: str) -> tuple[float, str]:
    """The sessions' input rate (fps) and where it came from: ``--fps`` as given, or for ``auto`` the server's
    ``input_fps`` (``GET /v1/model``).

    Raises:
        UsageError: ``auto`` and the server reports no rate (an older server, one still warming up, or no model
            info), or a non-positive rate.
    """
    if fps != AUTO_FPS:
        value = float(fps)
        if not value > 0:
            raise UsageError("--fps must be positive")
        return value, "--fps"
    measured = (model or {}).get("input_fps")
    if isinstance(measured, int | float) and not isinstance(measured, bool) and measured > 0:
        return float(measured), "GET /v1/model input_fps"
    raise UsageError(
        f"--fps auto: {url}/v1/model reports no input_fps (an older server, or one still warming up: wait "
        "until /readyz answers 200); give --fps F"
    )


def fetch_model(url: str) -> dict[str, Any] | None:
    """``GET /v1/model`` (public). None if the server answers with an error status.

    Raises:
        UsageError: the server cannot be reached.
    """
    try:
        r = httpx.get(f"{url}/v1/model", timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise UsageError(f"cannot reach {url}: {reason(e)}") from None
    if r.status_code != 200:
        log.warning("GET %s/v1/model: HTTP %d: %s", url, r.status_code, error_message(r))
        return None
    model: dict[str, Any] = r.json()
    return model


def default_prompts(model: dict[str, Any] | None) -> tuple[str, str]:
    """The session prompt and the prompt to change to when not given: for a model with a prompt vocabulary, the
    canonical prompts of its first two edits (so that the change is visible); else fixed examples."""
    vocab = (model or {}).get("prompts") or {}
    canon = [prompts[0] for prompts in vocab.values() if prompts]
    if len(canon) >= 2:
        return canon[0], canon[1]
    if canon:
        return canon[0], DEFAULT_PROMPT_CHANGE_TO
    return DEFAULT_PROMPT, DEFAULT_PROMPT_CHANGE_TO


def hard_limit_s(n: int, stagger: float, seconds: float) -> float:
    """The longest the sessions may take from the common start (s) before client processes are terminated."""
    return (n - 1) * stagger + session_budget_s(seconds) + teardown_budget_s() + EXIT_GRACE_S


@dataclass(frozen=True)
class Settings:
    """The checked arguments."""

    url: str
    sessions: int
    seconds: float
    fps: float
    warmup: float
    width: int
    height: int
    procs: int
    stagger: float
    seed: int
    prompt: str
    prompt_change_at: float | None
    prompt_change_to: str | None
    lipar: dict[str, Any] | None
    clips: tuple[str, ...]
    ice_hosts: tuple[str, ...]
    min_fps: float | None
    token: str | None
    label: str | None
    fps_source: str = "--fps"  #: where ``fps`` came from: "--fps", or "GET /v1/model input_fps" (--fps auto)

    def public(self) -> dict[str, Any]:
        """The settings for the report (no token)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("token", "url")}
        out["token"] = self.token is not None
        out["clips"] = list(self.clips) or [SYNTHETIC]
        out["ice_hosts"] = list(self.ice_hosts) or [ALL_INTERFACES]
        return out


def check_args(args: argparse.Namespace, model: dict[str, Any] | None, url: str) -> Settings:
    """Validate the arguments against each other and the server's model info."""
    for name in ("sessions", "seconds"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive")
    if not 0 <= args.warmup < args.seconds:
        raise UsageError(f"--warmup {args.warmup:g} must be at least 0 and below --seconds {args.seconds:g}")
    if args.stagger < 0:
        raise UsageError("--stagger must not be negative")
    if args.procs is not None and args.procs <= 0:
        raise UsageError("--procs must be positive")
    if args.prompt_change_at is not None and not 0 <= args.prompt_change_at < args.seconds:
        raise UsageError("--prompt-change-at must be at least 0 and below --seconds")
    if args.size:
        width, height = parse_size(args.size)
    elif model is not None:
        width, height = int(model["width"]), int(model["height"])
    else:
        raise UsageError(f"cannot read the model's frame size from {url}/v1/model; give --size WxH")
    lipar = None
    if args.lipar_json is not None:
        try:
            lipar = json.loads(args.lipar_json)
        except json.JSONDecodeError as e:
            raise UsageError(f"--lipar-json: not JSON ({e})") from None
        if not isinstance(lipar, dict):
            raise UsageError("--lipar-json: expected a JSON object, e.g. '{\"enabled\": false}'")
    clips: tuple[str, ...] = ()
    if args.clips is not None:
        try:
            clips = tuple(str(p.resolve()) for p in list_clips(args.clips))
        except SourceError as e:
            raise UsageError(str(e)) from None
    prompt, change_to = default_prompts(model)
    fps, fps_source = resolve_fps(args.fps, model, url)
    return Settings(
        url=url,
        sessions=args.sessions,
        seconds=args.seconds,
        fps=fps,
        fps_source=fps_source,
        warmup=args.warmup,
        width=width,
        height=height,
        procs=min(args.sessions, args.procs or os.cpu_count() or 1),
        stagger=args.stagger,
        seed=args.seed,
        prompt=args.prompt or prompt,
        prompt_change_at=args.prompt_change_at,
        prompt_change_to=(args.prompt_change_to or change_to) if args.prompt_change_at is not None else None,
        lipar=lipar,
        clips=clips,
        ice_hosts=ice_hosts(url, args.ice_host),
        min_fps=args.min_fps,
        token=args.token,
        label=args.label,
    )


def plan(st: Settings) -> list[WorkerSpec]:
    """The sessions (session ``i``: clip ``i mod clips``, start ``i × stagger``), dealt round robin to the
    client processes."""
    plans = [
        SessionPlan(
            index=i,
            clip=st.clips[i % len(st.clips)] if st.clips else SYNTHETIC,
            base_url=st.url,
            token=st.token,
            prompt=st.prompt,
            seed=st.seed,
            lipar=st.lipar,
            fps=st.fps,
            seconds=st.seconds,
            warmup=st.warmup,
            prompt_change_at=st.prompt_change_at,
            prompt_change_to=st.prompt_change_to,
            start_offset_s=i * st.stagger,
        )
        for i in range(st.sessions)
    ]
    level = logging.getLogger().getEffectiveLevel()
    return [
        WorkerSpec(
            worker=w,
            plans=tuple(plans[w :: st.procs]),
            width=st.width,
            height=st.height,
            fps=st.fps,
            seconds=st.seconds,
            seed=st.seed,
            ice_hosts=st.ice_hosts,
            log_level=level,
        )
        for w in range(st.procs)
    ]


def _handle(msg: tuple[Any, ...], run: Run) -> None:
    kind = msg[0]
    if kind == "result":
        result = msg[1]
        run.results[result["index"]] = result
        log.info(
            "%s finished: %s%s",
            session_name(result),
            result["status"],
            f" ({result['error']})" if result["error"] else "",
        )
    elif kind == "progress":
        _, index, stage, sent, received, session_id = msg
        run.progress[index] = (stage, sent, received)
        if session_id:
            run.session_ids[index] = session_id
    elif kind == "error":
        run.worker_errors[msg[1]] = msg[2]
        log.error("client process %d failed: %s", msg[1], msg[2])


def _progress_line(run: Run, elapsed: float) -> str:
    sending = sum(1 for stage, _, _ in run.progress.values() if stage in ("sending", "draining"))
    sent = sum(p[1] for p in run.progress.values())
    received = sum(p[2] for p in run.progress.values())
    return (
        f"{elapsed:.0f} s: {sending} session(s) streaming, {len(run.results)}/{run.n} finished; "
        f"frames sent {sent}, received {received}"
    )


def run_sessions(st: Settings, specs: list[WorkerSpec]) -> tuple[Run, float, float]:
    """Start the client processes, run the sessions, gather the results. Returns the run and the wall-clock
    start and end (``time.time()``)."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=worker_main,
            args=(spec, messages, go, start_at, READY_TIMEOUT_S),
            name=f"{PROG}-client{spec.worker}",
            daemon=True,
        )
        for spec in specs
    ]
    run = Run(st.sessions)
    for p in procs:
        p.start()
    log.info("%d client process(es) loading their sources", len(procs))
    ready: set[int] = set()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(ready) + len(run.worker_errors) < len(procs) and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if not p.is_alive() and i not in ready and i not in run.worker_errors:
                run.worker_errors[i] = f"exited with code {p.exitcode} before it was ready"
        try:
            msg = messages.get(timeout=POLL_QUEUE_S)
        except queue_mod.Empty:
            continue
        if msg[0] == "ready":
            ready.add(msg[1])
        else:
            _handle(msg, run)
    start_at.value = time.monotonic() + START_DELAY_S
    wall_start = time.time() + START_DELAY_S
    go.set()
    expected = (st.sessions - 1) * st.stagger + st.seconds
    limit = start_at.value + hard_limit_s(st.sessions, st.stagger, st.seconds)
    log.info("started %d session(s) on %d process(es); about %.0f s", st.sessions, len(ready), expected)
    done: set[int] = set()
    next_log = time.monotonic() + PROGRESS_LOG_S
    with tqdm(total=round(expected), unit="s", desc=PROG, file=sys.stderr, disable=None, leave=False) as bar:
        while time.monotonic() < limit:
            live = [
                i for i, p in enumerate(procs) if i in ready and i not in done and i not in run.worker_errors
            ]
            if not live:
                break
            try:
                msg = messages.get(timeout=POLL_QUEUE_S)
                if msg[0] == "done":
                    done.add(msg[1])
                else:
                    _handle(msg, run)
            except queue_mod.Empty:
                for i in live:
                    if not procs[i].is_alive():
                        run.worker_errors.setdefault(i, f"exited with code {procs[i].exitcode}")
            now = time.monotonic()
            bar.n = min(bar.total, round(now - start_at.value))
            bar.refresh()
            if now >= next_log:
                log.info(_progress_line(run, now - start_at.value))
                next_log = now + PROGRESS_LOG_S
    wall_end = time.time()
    _drain_queue(messages, run)
    for i, p in enumerate(procs):
        p.join(EXIT_GRACE_S if i in done else 0)
        if p.is_alive():
            log.warning("client process %d still running at the deadline: terminating it", i)
            p.terminate()
            p.join(EXIT_GRACE_S)
            run.worker_errors.setdefault(i, "terminated at the run's deadline")
    _fill_missing(run, specs)
    return run, wall_start, wall_end


def _drain_queue(messages: Any, run: Run) -> None:
    while True:
        try:
            msg = messages.get_nowait()
        except queue_mod.Empty:
            return
        if msg[0] not in ("ready", "done"):
            _handle(msg, run)


def _fill_missing(run: Run, specs: list[WorkerSpec]) -> None:
    """A failed result for every session whose process never reported it; delete its server session."""
    for spec in specs:
        for p in spec.plans:
            if p.index in run.results:
                continue
            why = run.worker_errors.get(spec.worker, "no result")
            sid = run.session_ids.get(p.index)
            run.results[p.index] = {
                "index": p.index,
                "process": spec.worker,
                "clip": Path(p.clip).name,
                "status": STATUS_FAILED,
                "error": f"client process {spec.worker}: {why}",
                "session_id": sid,
                "client": None,
                "server": None,
                "notes": [],
                "_latencies_ms": [],
            }
            if sid is not None:
                headers = {"Authorization": f"Bearer {p.token}"} if p.token else {}
                try:
                    httpx.delete(f"{p.base_url}/v1/sessions/{sid}", headers=headers, timeout=HTTP_TIMEOUT_S)
                except httpx.HTTPError as e:
                    log.warning("DELETE session %s failed: %s", sid, reason(e))


def build_report(
    st: Settings, model: dict[str, Any] | None, run: Run, wall_start: float, wall_end: float
) -> tuple[dict[str, Any], int, list[str]]:
    """The report, the exit status and the messages that explain it."""
    sessions = [run.results[i] for i in sorted(run.results)]
    pooled: list[float] = []
    for s in sessions:
        pooled += s.pop("_latencies_ms", [])
    agg = aggregate(sessions, pooled)
    notes: list[str] = []
    if agg["negative_latency_frames"]:
        notes.append(
            f"ERROR: {agg['negative_latency_frames']} frame(s) arrived before their input was sent: the "
            "timestamp pairing is broken (the server must keep each input frame's RTP timestamp)"
        )
    for s in sessions:
        notes += [f"{session_name(s)}: {n}" for n in s.get("notes") or []]
    code, why = EXIT_OK, []
    connected = [s for s in sessions if s["status"] == STATUS_CONNECTED]
    if not connected:
        code = EXIT_NO_SESSION
        why = ["no session could connect: " + "; ".join(f"{session_name(s)}: {s['error']}" for s in sessions)]
    elif st.min_fps is not None:
        for s in connected:
            fps = s["client"]["received_fps"] if s.get("client") else None
            if fps is None or fps < st.min_fps:
                got = "no steady window" if fps is None else f"{fps:.2f} fps"
                why.append(f"{session_name(s)} received {got}, below --min-fps {st.min_fps:g}")
        if why:
            code = EXIT_MIN_FPS
    notes += why
    report = {
        "tool": PROG,
        "label": st.label,
        "url": st.url,
        "wall_start": wall_start,
        "wall_end": wall_end,
        "settings": st.public(),
        "server": model,
        "sessions": sessions,
        "aggregate": agg,
        "notes": notes,
        "exit_code": code,
    }
    return report, code, why


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        url = base_url(args.url)
        model = fetch_model(url)
        st = check_args(args, model, url)
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return EXIT_USAGE
    log.info(
        "%d session(s) × %g s at %g fps (%s), %dx%d, %s, %d client process(es), ICE host %s",
        st.sessions,
        st.seconds,
        st.fps,
        st.fps_source,
        st.width,
        st.height,
        f"{len(st.clips)} clip(s)" if st.clips else "synthetic source",
        st.procs,
        ", ".join(st.ice_hosts) or ALL_INTERFACES,
    )
    run, wall_start, wall_end = run_sessions(st, plan(st))
    report, code, why = build_report(st, model, run, wall_start, wall_end)
    md = write_reports(report, args.out)
    sys.stdout.write(md)
    sys.stdout.flush()
    log.info("wrote %s and %s", args.out, markdown_path(args.out))
    for line in why:
        log.error(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
