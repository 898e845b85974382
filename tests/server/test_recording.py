"""Server-side recording (``record`` / ``record_keep``; ``/v1/sessions/{id}/recordings``).

Unit tests of :mod:`server.rtc.recorder` with real frames of a real clip (PyAV encodes and reads back the mp4s),
then end to end: a real ``lipar-server`` (``tiny-random`` preset) and a real aiortc client that streams a clip;
the recordings are downloaded and opened with PyAV.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from server.api.schemas import ParamLimits, SessionCreate, SessionPatch
from server.rtc.ice import configure_ice
from server.rtc.recorder import (
    NAME_RE,
    Recorder,
    RecordingBusy,
    RecordingNotFound,
    Recordings,
    pick_codec,
)
from tests.polling import poll
from tests.server.rtc_client import ClientPeer, load_clip
from tests.server.server_proc import ServerProcess

pytestmark = pytest.mark.timeout(300)

TOKEN = "recording-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FPS = 10.0
STEP = 9000  # pts step of a 10 fps stream on the 90 kHz RTP clock
CODECS = [c for c in ("libx264", "mpeg4") if c in av.codecs_available]


@dataclass(frozen=True)
class Frame:
    """An edited frame as the outbound track hands it to the recorder."""

    rgb: np.ndarray
    pts: int
    time_base: float = 1 / 90_000


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return load_clip(48, width=160, height=128)


def _read_mp4(path: Path) -> dict[str, Any]:
    """What a player sees in ``path``: codec, size, decoded frames, their times (s) and the duration (s)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(video=0))
        return {
            "codec": v.codec_context.name,
            "width": v.width,
            "height": v.height,
            "frames": len(frames),
            "times": [float(f.pts * f.time_base) for f in frames],
            "duration_s": float(v.duration * v.time_base) if v.duration else 0.0,
        }


# ---- the recorder alone -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_recorder_writes_a_playable_mp4_with_the_input_timing(
    tmp_path: Path, clip: list[np.ndarray], codec: str
) -> None:
    """45 frames at 10 fps (pts from an arbitrary start) → an mp4 of 45 frames, 4.5 s, starting at 0, every frame
    at its input time; the sidecar holds the final info."""
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, 50_000_000, codec=codec, queue_frames=64)
    rec.start()
    assert json.loads(path.with_suffix(".json").read_text())["state"] == "recording"
    for k in range(45):
        assert rec.put(Frame(clip[k % len(clip)], 123_456 + k * STEP))
    rec.request_stop()
    info = rec.wait(30)
    assert info.state == "done" and info.frames == 45 and info.frames_dropped == 0
    assert info.duration_s == pytest.approx(4.5, abs=1e-3)
    assert info.bytes == path.stat().st_size > 0
    assert (info.width, info.height) == (160, 128)
    got = _read_mp4(path)
    assert got["codec"] == ("h264" if codec == "libx264" else "mpeg4")
    assert (got["width"], got["height"], got["frames"]) == (160, 128, 45)
    assert got["times"] == pytest.approx([k / FPS for k in range(45)], abs=1e-3)
    assert got["duration_s"] == pytest.approx(4.5, abs=0.11)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["state"] == "done" and side["frames"] == 45
    assert not rec.put(Frame(clip[0], 10**9)), "a finished recording took a frame"


def test_recorder_size_limit_truncates_to_a_playable_file(tmp_path: Path, clip: list[np.ndarray]) -> None:
    """Over the limit the recording ends by itself (no stop asked): state truncated, the file under the limit,
    complete (it decodes to exactly the frames listed), later frames refused."""
    limit = 40_000
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, limit, queue_frames=400)
    rec.start()
    for k in range(400):
        rec.put(Frame(clip[k % len(clip)][::-1] if k % 2 else clip[k % len(clip)], k * STEP))
    info = rec.finished.result(30)  # ends without request_stop
    assert info.state == "truncated", info
    assert 0 < info.frames < 400
    size = path.stat().st_size
    assert size == info.bytes and size <= limit
    got = _read_mp4(path)
    assert got["frames"] == info.frames
    assert got["duration_s"] == pytest.approx(info.duration_s, abs=0.11)
    assert not rec.put(Frame(clip[0], 10**9))


def test_recorder_queue_full_drops_and_counts(tmp_path: Path, clip: list[np.ndarray]) -> None:
    """put never blocks: beyond the queue's room a frame is dropped and counted (here the thread has not started,
    so the queue fills); the frames taken are all in the file."""
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, 50_000_000, queue_frames=3)
    taken = [rec.put(Frame(clip[k], k * STEP)) for k in range(7)]
    assert taken == [True, True, True, False, False, False, False]
    rec.start()
    rec.request_stop()
    info = rec.wait(30)
    assert info.state == "done" and info.frames == 3 and info.frames_dropped == 4
    assert _read_mp4(path)["frames"] == 3


def test_recorder_skips_frames_whose_time_does_not_advance(tmp_path: Path, clip: list[np.ndarray]) -> None:
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, 50_000_000)
    rec.start()
    for pts in (0, STEP, STEP, 2 * STEP, STEP // 2, 3 * STEP):
        rec.put(Frame(clip[0], pts))
    rec.request_stop()
    info = rec.wait(30)
    assert info.frames == 4 and info.frames_dropped == 2
    assert _read_mp4(path)["times"] == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-3)


def test_recorder_without_frames_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, 50_000_000)
    rec.start()
    rec.request_stop()
    assert rec.wait(30).frames == 0
    assert list(tmp_path.iterdir()) == []


async def test_recorder_stop_is_awaited_on_the_loop(tmp_path: Path, clip: list[np.ndarray]) -> None:
    """``await stop()`` returns once the file is finalised (the trailer written: it decodes)."""
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, 50_000_000)
    rec.start()
    for k in range(12):
        rec.put(Frame(clip[k], k * STEP))
    info = await rec.stop()
    assert info.state == "done" and info.frames == 12
    assert _read_mp4(path)["frames"] == 12


@pytest.mark.parametrize("how", ["cancelled", "timed_out"])
async def test_an_abandoned_stop_leaves_the_recording_to_finish(
    tmp_path: Path, clip: list[np.ndarray], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A ``stop()`` whose caller gives up (its task cancelled at a server's shutdown, or its timeout) does not
    cancel the recording's end: the thread still finalises the file and resolves ``finished``, with no exception
    in the thread (the CI's schemathesis run once logged InvalidStateError tracebacks from recorder threads
    stopped while the server shut down)."""
    import threading

    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: crashes.append(a.exc_value))
    path = tmp_path / "rec-001-20260101T000000Z.mp4"
    rec = Recorder(path, 50_000_000)
    for k in range(6):
        rec.put(Frame(clip[k], k * STEP))  # queued; the thread is not started yet, so stop() cannot finish
    if how == "cancelled":
        task = asyncio.create_task(rec.stop(timeout=60))
        await asyncio.sleep(0)  # the task asks the thread to stop and waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        assert (await rec.stop(timeout=0.01)).state == "recording"
    rec.start()
    info = await asyncio.to_thread(rec.wait, 30)
    assert info.state == "done" and info.frames == 6 and crashes == []
    assert _read_mp4(path)["frames"] == 6


def test_recordings_folder_names_keep_and_safety(tmp_path: Path, clip: list[np.ndarray]) -> None:
    """Names are generated (numbered), only they resolve; delete refuses a recording being written; unkept
    recordings go with remove_unkept, kept ones stay; a sidecar left 'recording' by a crash reads 'failed'."""
    lib = Recordings(tmp_path / "recs", 50_000_000)
    lib.prepare()
    sid = "0123456789abcdef0123456789abcdef"

    def record(n: int, keep: bool) -> str:
        rec = lib.start(sid, keep)
        for k in range(n):
            lib.put(sid, Frame(clip[k], k * STEP))
        return rec.path.name

    first = record(5, keep=False)
    assert NAME_RE.match(first) and first.startswith("rec-001-")
    with pytest.raises(RecordingBusy):
        lib.delete(sid, first)
    assert [i.state for i in lib.session_recordings(sid) or []] == ["recording"]
    asyncio.run(lib.stop(sid))
    second = record(4, keep=True)
    asyncio.run(lib.stop(sid))
    assert second.startswith("rec-002-")
    infos = {i.name: i for i in lib.session_recordings(sid) or []}
    assert (infos[first].frames, infos[first].keep) == (5, False)
    assert (infos[second].frames, infos[second].keep, infos[second].state) == (4, True, "done")
    info, path = lib.get(sid, second)
    assert info.keep and path == tmp_path / "recs" / sid / second and path.is_file()
    for bad in (
        "../" + second,
        "/etc/passwd",
        "rec-001.mp4",
        first.replace(".mp4", ".json"),
        "rec-009-" + first[8:],
    ):
        with pytest.raises(RecordingNotFound):
            lib.get(sid, bad)
    for bad_sid in ("..", "../recs", sid.upper(), sid + "0"):
        with pytest.raises(RecordingNotFound):
            lib.folder(bad_sid)
    assert lib.sessions_with_unkept() == [sid]
    assert lib.remove_unkept(sid) == 1
    assert [i.name for i in lib.session_recordings(sid) or []] == [second]
    assert lib.sessions_with_unkept() == []
    lib.set_keep(sid, False)
    assert lib.sessions_with_unkept() == [sid]
    lib.delete(sid, second)
    assert not (tmp_path / "recs" / sid).exists(), "an empty session folder stays"
    # the server stopped while writing: no recorder owns the sidecar any more
    other = "f" * 32
    (tmp_path / "recs" / other).mkdir()
    (tmp_path / "recs" / other / "rec-001-20260101T000000Z.json").write_text(
        json.dumps({"name": "rec-001-20260101T000000Z.mp4", "state": "recording"})
    )
    (listed,) = lib.session_recordings(other) or []
    assert listed.state == "failed" and listed.error


def test_record_is_refused_where_recording_is_disabled() -> None:
    on = ParamLimits.for_preset("tiny-random", 100)
    off = ParamLimits.for_preset("tiny-random", 100, recording_enabled=False)
    on.check_create(SessionCreate(prompt="a", record=True))
    off.check_create(SessionCreate(prompt="a"))  # no recording asked: fine
    with pytest.raises(Exception, match="recording is disabled"):
        off.check_create(SessionCreate(prompt="a", record=True))
    with pytest.raises(Exception, match="recording is disabled"):
        off.check_patch(SessionPatch(record=True), {})
    off.check_patch(SessionPatch(record=False), {})
    assert SessionPatch(record_keep=True).to_change().given() == {"record_keep": True}


# ---- end to end -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _loopback_ice() -> Iterator[None]:
    configure_ice(["127.0.0.1"], None)
    yield
    configure_ice([], None)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Servers shared by the module's end-to-end tests (started once per kind, stopped at the end)."""
    started: dict[str, ServerProcess] = {}
    d = tmp_path_factory.mktemp("recording-servers")

    def get(kind: str) -> ServerProcess:
        if kind not in started:
            env = {"LIPAR_RECORDINGS_DIR": str(d / kind), "LIPAR_API_TOKEN": TOKEN, "LIPAR_NODE_ID": kind}
            if kind == "small":
                env["LIPAR_RECORDING_MAX_MB"] = "0.05"
            s = started[kind] = ServerProcess(env, d / f"{kind}.log")
            s.wait_ready()
        return started[kind]

    yield get
    for s in started.values():
        s.stop()


async def _until(what: str, cond: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """:func:`tests.polling.poll` with the test's argument order."""
    return await poll(cond, timeout, what)


async def _create(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await http.post("/v1/sessions", json={"prompt": "a watercolor painting", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _recordings(http: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    r = await http.get(f"/v1/sessions/{sid}/recordings")
    assert r.status_code == 200, r.text
    return list(r.json()["recordings"])


async def _download(http: httpx.AsyncClient, sid: str, name: str, to: Path) -> dict[str, Any]:
    r = await http.get(f"/v1/sessions/{sid}/recordings/{name}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert (
        r.headers["content-disposition"].startswith("attachment;")
        and name in r.headers["content-disposition"]
    )
    to.write_bytes(r.content)
    return {"bytes": len(r.content), **_read_mp4(to)}


async def test_record_from_creation_download_and_delete_semantics(
    servers: Callable[..., ServerProcess], clip: list[np.ndarray], tmp_path: Path
) -> None:
    """record:true at creation → an mp4 of the edited frames (model size, about the frames the client got, the
    input's timing); downloadable (bytes, Range); bad names 404; PATCH record_keep; DELETE of the session removes
    an unkept recording and keeps a kept one, which stays downloadable until deleted."""
    srv = servers("main")
    async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=30) as http:
        model = (await http.get("/v1/model")).json()
        a = await _create(http, record=True)
        b = await _create(http, record=True, record_keep=True)
        assert (a["record"], a["record_keep"], b["record_keep"]) == (True, False, True)
        (listed,) = await _recordings(http, a["id"])
        assert listed["state"] == "recording" and listed["frames"] == 0
        pa = await ClientPeer.connect(http, a, clip, fps=FPS, n_frames=200)
        pb = await ClientPeer.connect(http, b, clip, fps=FPS, n_frames=200)
        try:
            await pa.wait_frames(30, timeout=90)
            await pb.wait_frames(12, timeout=90)
            # being written: not downloadable, not deletable
            name_a = listed["name"]
            r = await http.get(f"/v1/sessions/{a['id']}/recordings/{name_a}")
            assert r.status_code == 409 and "still being written" in r.json()["error"]["message"]
            assert (await http.delete(f"/v1/sessions/{a['id']}/recordings/{name_a}")).status_code == 409
            got_before = len(pa.received)
            r = await http.patch(f"/v1/sessions/{a['id']}", json={"record": False})
            assert r.status_code == 200 and r.json()["record"] is False
            (rec,) = await _recordings(http, a["id"])
            sent = (await http.get(f"/v1/sessions/{a['id']}")).json()["stats"]["frames_out"]
            assert rec["state"] == "done" and rec["name"] == name_a
            # every frame the client had before the PATCH was sent before it, so it is in the file
            assert got_before <= rec["frames"] <= sent, (got_before, rec, sent)
            assert rec["frames_dropped"] == 0
            got = await _download(http, a["id"], name_a, tmp_path / "a.mp4")
            assert got["bytes"] == rec["bytes"]
            assert (got["width"], got["height"]) == (model["width"], model["height"])
            assert got["codec"] == ("h264" if pick_codec() == "libx264" else "mpeg4")
            assert got["frames"] == rec["frames"]
            # the input's 10 fps timing, from 0: frames 0.1 s apart (a frame dropped upstream leaves a gap)
            steps = np.diff(got["times"])
            assert got["times"][0] == 0.0 and np.all(steps > 0.09), got["times"]
            assert np.allclose(steps / 0.1, np.round(steps / 0.1), atol=0.02)
            assert rec["duration_s"] == pytest.approx(got["times"][-1] + 0.1, abs=0.02)
            assert got["duration_s"] == pytest.approx(rec["duration_s"], abs=0.11)
            r = await http.get(f"/v1/sessions/{a['id']}/recordings/{name_a}", headers={"Range": "bytes=0-99"})
            assert r.status_code == 206 and r.content == (tmp_path / "a.mp4").read_bytes()[:100]
            # names the server did not generate, and unknown sessions
            for bad in (
                "nope.mp4",
                "..%2F..%2F..%2Fetc%2Fpasswd",
                "rec-999-20000101T000000Z.mp4",
                name_a.replace(".mp4", ".json"),
            ):
                r = await http.get(f"/v1/sessions/{a['id']}/recordings/{bad}")
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (bad, r.text)
            for bad_sid in ("0" * 32, "..", "not-a-session"):
                assert (await http.get(f"/v1/sessions/{bad_sid}/recordings")).status_code == 404
            # without the token
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as anon:
                for method, path in (
                    ("GET", f"/v1/sessions/{a['id']}/recordings"),
                    ("GET", f"/v1/sessions/{a['id']}/recordings/{name_a}"),
                    ("DELETE", f"/v1/sessions/{a['id']}/recordings/{name_a}"),
                ):
                    assert (await anon.request(method, path)).status_code == 401
        finally:
            await pa.close()
            await pb.close()
        # DELETE of the sessions: a's unkept recording goes, b's kept one stays
        folder = srv.log_path.parent / "main"  # LIPAR_RECORDINGS_DIR of this server
        assert (folder / a["id"] / name_a).is_file()
        assert (await http.delete(f"/v1/sessions/{a['id']}")).status_code == 204
        assert not (folder / a["id"]).exists()
        r = await http.get(f"/v1/sessions/{a['id']}/recordings")
        assert r.status_code == 404
        assert (await http.delete(f"/v1/sessions/{b['id']}")).status_code == 204
        (kept,) = await _recordings(http, b["id"])
        assert kept["keep"] is True and kept["state"] == "done" and kept["frames"] > 0
        got = await _download(http, b["id"], kept["name"], tmp_path / "b.mp4")
        assert got["frames"] == kept["frames"]
        assert (await http.delete(f"/v1/sessions/{b['id']}/recordings/{kept['name']}")).status_code == 204
        assert (await http.get(f"/v1/sessions/{b['id']}/recordings")).status_code == 404
        metrics = (await http.get("/metrics")).text
        assert 'lipar_recordings_total{state="done"} 2.0' in metrics


async def test_patch_record_mid_stream_and_session_end_finalises(
    servers: Callable[..., ServerProcess], clip: list[np.ndarray], tmp_path: Path
) -> None:
    """PATCH record:true mid-stream starts a recording from that point (time 0 at its first frame); the
    session's end (the client closes) finalises it: done, playable, ``record`` false in the final record."""
    srv = servers("main")
    async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=30) as http:
        s = await _create(http)
        assert s["record"] is False
        assert (await http.get(f"/v1/sessions/{s['id']}/recordings")).json() == {"recordings": []}
        peer = await ClientPeer.connect(http, s, clip, fps=FPS, n_frames=200)
        try:
            await peer.wait_frames(12, timeout=90)
            r = await http.patch(f"/v1/sessions/{s['id']}", json={"record": True})
            assert r.status_code == 200 and r.json()["record"] is True
            again = await http.patch(f"/v1/sessions/{s['id']}", json={"record": True})  # idempotent
            assert again.status_code == 200
            first_index = len(peer.received)
            await peer.wait_frames(first_index + 24, timeout=90)
            (rec,) = await _until(
                "frames in the recording",
                lambda: _frames_recorded(http, s["id"], 12),
            )
            assert rec["state"] == "recording"
        finally:
            await peer.close()
        final = await _until(
            "the session to close", lambda: _session_in(http, s["id"], {"closed", "failed"}), timeout=60
        )
        assert final["state"] == "closed" and final["record"] is False
        (rec,) = await _recordings(http, s["id"])
        assert rec["state"] == "done" and rec["frames"] >= 12
        got = await _download(http, s["id"], rec["name"], tmp_path / "mid.mp4")
        assert got["frames"] == rec["frames"] and got["times"][0] == 0.0
        assert (await http.delete(f"/v1/sessions/{s['id']}")).status_code == 204
        assert (await http.get(f"/v1/sessions/{s['id']}/recordings")).status_code == 404


async def _frames_recorded(http: httpx.AsyncClient, sid: str, n: int) -> list[dict[str, Any]] | None:
    recs = await _recordings(http, sid)
    return recs if recs and recs[-1]["frames"] >= n else None


async def _session_in(http: httpx.AsyncClient, sid: str, states: set[str]) -> dict[str, Any] | None:
    r = (await http.get(f"/v1/sessions/{sid}")).json()
    return dict(r) if r["state"] in states else None


async def test_size_limit_truncates_and_the_session_goes_on(
    servers: Callable[..., ServerProcess], clip: list[np.ndarray], tmp_path: Path
) -> None:
    """With LIPAR_RECORDING_MAX_MB=0.05 the recording stops by itself: state truncated, file within the limit and
    playable, ``record`` turns false; the session keeps streaming, and a new PATCH record:true starts another."""
    srv = servers("small")
    async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=30) as http:
        s = await _create(http, record=True)
        peer = await ClientPeer.connect(http, s, clip, fps=FPS, n_frames=600)
        try:
            await _until(
                "the recording to stop at the limit",
                lambda: _session_where(http, s["id"], lambda r: r["record"] is False),
                timeout=120,
            )
            (rec,) = await _recordings(http, s["id"])
            assert rec["state"] == "truncated" and rec["frames"] > 0
            assert rec["bytes"] <= 50_000
            got = await _download(http, s["id"], rec["name"], tmp_path / "small.mp4")
            assert got["frames"] == rec["frames"] and got["bytes"] == rec["bytes"] <= 50_000
            # the session goes on
            out = (await http.get(f"/v1/sessions/{s['id']}")).json()
            assert out["state"] == "streaming"
            await _until(
                "more frames sent",
                lambda: _session_where(
                    http, s["id"], lambda r: r["stats"]["frames_out"] > out["stats"]["frames_out"] + 12
                ),
                timeout=60,
            )
            r = await http.patch(f"/v1/sessions/{s['id']}", json={"record": True})
            assert r.status_code == 200 and r.json()["record"] is True
            recs = await _recordings(http, s["id"])
            assert [x["state"] for x in recs] == ["truncated", "recording"]
        finally:
            await peer.close()
        assert (await http.delete(f"/v1/sessions/{s['id']}")).status_code == 204
        assert (await http.get(f"/v1/sessions/{s['id']}/recordings")).status_code == 404


async def _session_where(
    http: httpx.AsyncClient, sid: str, cond: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    r = dict((await http.get(f"/v1/sessions/{sid}")).json())
    return r if cond(r) else None


@pytest.mark.redis
async def test_recordings_live_on_the_owner_node(
    start_server: Callable[..., ServerProcess], redis_url: str, tmp_path: Path
) -> None:
    """Two nodes on one Redis: a PATCH record:true made through the other node reaches the owner, which records;
    the recordings routes answer on the owner, and on the other node a 409 that names the owner's URL."""
    env = {"LIPAR_REDIS_URL": redis_url, "LIPAR_API_TOKEN": TOKEN}
    a = start_server(wait=False, LIPAR_NODE_ID="rec-a", LIPAR_RECORDINGS_DIR=str(tmp_path / "a"), **env)
    b = start_server(wait=False, LIPAR_NODE_ID="rec-b", LIPAR_RECORDINGS_DIR=str(tmp_path / "b"), **env)
    a.wait_ready()
    b.wait_ready()
    async with (
        httpx.AsyncClient(base_url=a.url, headers=AUTH, timeout=30) as ha,
        httpx.AsyncClient(base_url=b.url, headers=AUTH, timeout=30) as hb,
    ):
        s = await _create(ha)
        assert s["node_id"] == "rec-a"
        r = await hb.patch(f"/v1/sessions/{s['id']}", json={"record": True, "record_keep": True})
        assert r.status_code == 200 and r.json()["record"] is True
        (rec,) = await _until("the owner to start recording", lambda: _listed(ha, s["id"]))
        assert rec["state"] == "recording" and rec["keep"] is True
        for path in (
            f"/v1/sessions/{s['id']}/recordings",
            f"/v1/sessions/{s['id']}/recordings/{rec['name']}",
        ):
            r = await hb.get(path)
            assert r.status_code == 409, r.text
            assert "rec-a" in r.json()["error"]["message"] and a.url in r.json()["error"]["message"]
        assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
        r = await hb.patch(f"/v1/sessions/{s['id']}", json={"record": False})
        assert r.status_code == 200 and r.json()["record"] is False
        # no frame was ever sent (no offer): the owner leaves no file behind
        await _until("the empty recording to go", lambda: _listed_empty(ha, s["id"]))
        assert (await hb.delete(f"/v1/sessions/{s['id']}")).status_code == 204


async def _listed(http: httpx.AsyncClient, sid: str) -> list[dict[str, Any]] | None:
    r = await http.get(f"/v1/sessions/{sid}/recordings")
    return (list(r.json()["recordings"]) or None) if r.status_code == 200 else None


async def _listed_empty(http: httpx.AsyncClient, sid: str) -> bool:
    r = await http.get(f"/v1/sessions/{sid}/recordings")
    return r.status_code == 200 and r.json()["recordings"] == []


async def test_shutdown_finalises_and_a_restart_sweeps_unkept_recordings(
    start_server: Callable[..., ServerProcess], clip: list[np.ndarray], tmp_path: Path
) -> None:
    """A server that shuts down while recording finalises its files (done, playable). With the in-memory store the
    records are gone after a restart, so the next server removes the unkept recordings at its first sweep and
    keeps, lists and serves the kept one."""
    env = {"LIPAR_RECORDINGS_DIR": str(tmp_path / "recs")}
    srv = start_server(**env)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        a = await _create(http, record=True)
        b = await _create(http, record=True, record_keep=True)
        peers = [await ClientPeer.connect(http, s, clip, fps=FPS, n_frames=200) for s in (a, b)]
        try:
            for s in (a, b):
                await _until("frames in the recording", lambda s=s: _frames_recorded(http, s["id"], 6), 90)
            await asyncio.to_thread(srv.stop)  # SIGINT while both are recording
        finally:
            for p in peers:
                await p.close()
    for s in (a, b):
        (side,) = (tmp_path / "recs" / s["id"]).glob("rec-*.json")
        info = json.loads(side.read_text())
        assert info["state"] == "done" and info["frames"] >= 6, info
        assert _read_mp4(side.with_suffix(".mp4"))["frames"] == info["frames"]
    srv2 = await asyncio.to_thread(start_server, **env)
    async with httpx.AsyncClient(base_url=srv2.url, timeout=30) as http:

        async def swept() -> bool:
            return not (tmp_path / "recs" / a["id"]).exists()

        await _until("the unkept recording to be swept", swept, 30)
        (kept,) = await _recordings(http, b["id"])
        assert kept["state"] == "done" and kept["keep"] is True
        got = await _download(http, b["id"], kept["name"], tmp_path / "kept.mp4")
        assert got["frames"] == kept["frames"]
        assert (await http.get(f"/v1/sessions/{a['id']}/recordings")).status_code == 404
