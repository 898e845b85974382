"""Session lifecycle on one node. Server process, event loop.

The manager is the only writer of the sessions this node owns: it admits them on a worker, answers their
offers, forwards prompt and parameter changes (locally, or to the owner node through the store's control
channel), ends them on DELETE, idle timeout, worker crash or connection loss, and keeps their records' state
and stats fresh in the store. A housekeeping task also heartbeats the node and marks the sessions of nodes
whose heartbeat expired as ``failed``.

Store outages degrade, never corrupt. A request whose store call fails (:class:`StoreUnavailable`: Redis
refused, reset or did not answer within its timeout) answers 503 + ``Retry-After`` and keeps nothing it reserved
(a worker slot, a live session; a record its creation may have written late is deleted once the store is back);
live sessions keep streaming, and idle timeouts and failures still end sessions and free their slots (their
final states are written once the store is back). The node is the source of truth for the sessions it serves:
it keeps a copy of their records, serves GET/PATCH/DELETE of them from it when the store lost the record, and
its housekeeping writes a lost record back (Redis restarted without persistence) unless the session was deleted
on purpose (a tombstone: then the session ends here). After an outage the node waits one heartbeat TTL before it
declares other nodes dead, so that nodes whose heartbeat lapsed during the outage can beat again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any, cast

import numpy as np

from server.metrics import Metrics
from server.rtc.ice import rtc_configuration
from server.rtc.peer import BadOffer
from server.rtc.recorder import Recorder, RecordingInfo, Recordings
from server.sessions.errors import (
    BadRequest,
    Invalid,
    NoCapacity,
    NodeUnavailable,
    NotFound,
    StoreUnavailable,
    WrongState,
)
from server.sessions.live import LiveSession
from server.sessions.store import ControlMessage, NodeInfo, SessionStore
from server.sessions.types import (
    CLOSED,
    CONNECTING,
    CREATED,
    CUT,
    FAILED,
    STREAMING,
    TERMINAL_STATES,
    RecordFields,
    SessionChange,
    SessionRecord,
    SessionSpec,
    SessionState,
)
from server.settings import Settings
from server.worker import messages as m
from server.worker.pool import WorkerPool

log = logging.getLogger(__name__)

_HOUSEKEEPING_S = 0.5
_STOP_TASKS_S = 5.0  # the longest the shutdown waits for cancelled background tasks (s)
_DELETED_KEPT = 10_000  # ids of deleted sessions remembered (to answer late concurrent DELETEs with 404)
_RECORDING_SWEEP_S = 30.0  # how often unkept recordings of sessions whose record is gone are removed (s)


class SessionManager:
    """Creates, controls and ends sessions; owns the :class:`LiveSession` s of this node."""

    def __init__(self, settings: Settings, store: SessionStore, pool: WorkerPool, metrics: Metrics) -> None:
        self.settings, self.store, self.pool, self.metrics = settings, store, pool, metrics
        self.node_id = settings.node_id
        self.live: dict[str, LiveSession] = {}
        self.rtc_config = rtc_configuration(settings.ice_servers)
        self._tasks: list[asyncio.Task[object]] = []  # background work: results unused, failures logged
        self._last_beat = 0.0
        # Sessions with an offer being answered / a DELETE under way: concurrent requests for the same session
        # are decided here, synchronously on the event loop, before any await (one wins, the others are refused).
        self._answering: set[str] = set()
        self._deleting: set[str] = set()
        # ids this node deleted (bounded; ids are never reused): a DELETE that read the record before another
        # DELETE removed it still answers 404
        self._deleted: collections.OrderedDict[str, None] = collections.OrderedDict()
        # the last known record of every live session (written back when the store lost it)
        self._records: dict[str, SessionRecord] = {}
        # sessions whose lost record is being written back (an _end waits for it, then ends the record)
        self._restoring: dict[str, asyncio.Event] = {}
        # final fields of ended sessions that the store could not take (outage); written once it is back
        self._pending: dict[str, RecordFields] = {}
        # ids of creations that failed on this side: the write may still reach the store (a paused Redis runs
        # it when resumed), so the housekeeping deletes them (with a tombstone) once the store answers
        self._abandoned: dict[str, None] = {}
        self._store_down_since: float | None = None  # monotonic time the housekeeping first failed
        self._store_back_at = float("-inf")  # monotonic time the store answered again after an outage
        # recordings of the edited video, one folder per session on this node (server/rtc/recorder.py)
        self.recordings = Recordings(settings.recordings_dir, settings.recording_max_bytes, metrics)
        self._last_sweep = float("-inf")  # monotonic time of the last sweep of orphaned recordings
        pool.on_block = self._on_block
        pool.on_error = self._on_worker_error
        pool.on_lost = self._on_worker_lost

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to this node's control channel and start housekeeping (and create the recordings folder:
        a folder that cannot be written stops the start with a message naming ``LIPAR_RECORDINGS_DIR``)."""
        if self.settings.recording_enabled:
            try:
                self.recordings.prepare()
            except OSError as e:
                raise RuntimeError(
                    f"LIPAR_RECORDINGS_DIR {self.settings.recordings_dir} cannot be used: {e}; set another "
                    "folder or LIPAR_RECORDING_ENABLED=false"
                ) from None
        await self.store.subscribe_controls(self.node_id, self._on_control)
        await self._heartbeat()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="session-housekeeping"))

    async def stop(self) -> None:
        """Close every local session (state ``closed``, reason: server shutdown)."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:  # bounded: a task stuck in a store or peer call must not hold up the shutdown
            _, stuck = await asyncio.wait(list(self._tasks), timeout=_STOP_TASKS_S)
            if stuck:
                log.warning(
                    "shutdown: %d background task(s) did not stop in %.0f s", len(stuck), _STOP_TASKS_S
                )
        # concurrently: with the store down each final write waits for its timeout
        await asyncio.gather(*(self._end(sid, CLOSED, "the server shut down") for sid in list(self.live)))

    # ---- API operations --------------------------------------------------------------------------------
    async def create(self, req: SessionSpec) -> SessionRecord:
        """Admit a session on this node's least-loaded worker; :class:`NoCapacity` when none has room."""
        if len(req.prompt) > self.settings.max_prompt_chars:
            raise Invalid(
                f"prompt: {len(req.prompt)} characters is over the limit of {self.settings.max_prompt_chars}"
            )
        if req.record and not self.settings.recording_enabled:
            raise Invalid("record: recording is disabled on this server (LIPAR_RECORDING_ENABLED=false)")
        sid = uuid.uuid4().hex
        node_id, base_url = self.node_id, self.settings.advertised_url
        lipar = copy.deepcopy(req.lipar)
        if self.pool.open_session(sid, req.prompt, req.seed, req.strength, req.steps, lipar):
            self.live[sid] = self._new_live(sid, req.prompt)
        else:
            other = await self._node_with_room()
            if other is None:
                self.metrics.sessions_rejected.inc()
                if not self.pool.ready:
                    raise NoCapacity("the model is still loading; retry shortly", retry_after_s=5)
                raise NoCapacity(
                    f"all {self.pool.serving_capacity()} session slots of this node are busy; retry later",
                    retry_after_s=10,
                )
            node_id, base_url = str(other["node_id"]), str(other["public_url"]).rstrip("/")
            log.info("session %s placed on node %s (this node is full)", sid, node_id)
        now = time.time()
        record: SessionRecord = {
            "id": sid,
            "state": CREATED,
            "reason": None,
            "node_id": node_id,
            "offer_url": f"{base_url}/v1/sessions/{sid}/offer",
            "prompt": req.prompt,
            "seed": req.seed,
            "strength": req.strength,
            "steps": req.steps,
            "lipar": lipar,
            "transition": CUT,
            "blend_blocks": 0,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
            "stats": self.live[sid].stats() if sid in self.live else {},
            "record": req.record,
            "record_keep": req.record_keep,
        }
        try:
            await self.store.create(record)
        except BaseException:
            # nothing stays reserved for a request that failed (store unavailable, cancelled)
            live = self.live.pop(sid, None)
            if live is not None:
                self.pool.close_session(sid)
                await live.close()
            self._abandoned[sid] = None
            while len(self._abandoned) > _DELETED_KEPT:
                self._abandoned.pop(next(iter(self._abandoned)))
            raise
        if sid in self.live:
            self._records[sid] = copy.deepcopy(record)
            if req.record:
                await self._start_recording(sid, req.record_keep)
                record = copy.deepcopy(self._records.get(sid, record))
        self.metrics.sessions_created.inc()
        log.info("session %s created for node %s", sid, node_id)
        return record

    def _new_live(self, sid: str, prompt: str) -> LiveSession:
        live = LiveSession(
            sid,
            prompt,
            self.pool,
            self.metrics,
            self.rtc_config,
            self.settings.video_codec,
            self._on_live_state,
        )
        self._tap(live)
        return live

    def _tap(self, live: LiveSession) -> None:
        """Route the frames the session's outbound track hands to the encoder to its recording, if any (once per
        track: again when the session gets a new track)."""
        sid, recordings = live.id, self.recordings
        live.out.frame_listeners.append(lambda frame: recordings.put(sid, frame))

    async def _node_with_room(self) -> NodeInfo | None:
        """Another live node (store heartbeats) with free session slots, the emptiest first; None if none."""
        others = [
            n for n in await self.store.nodes() if n.get("node_id") != self.node_id and n.get("free", 0) > 0
        ]
        return max(others, key=lambda n: (n["free"], n["node_id"]), default=None)

    def _local_record(self, session_id: str) -> SessionRecord | None:
        """This node's copy of a live session's record (the store may have lost it), or None."""
        live, r = self.live.get(session_id), self._records.get(session_id)
        if live is None or r is None or live.closed:
            return None
        local = copy.deepcopy(r)
        local["state"], local["reason"] = live.state, None
        return local

    async def get(self, session_id: str) -> SessionRecord:
        """The record, with live stats when this node owns the session (from its copy if the store lost it)."""
        r = await self.store.get(session_id) or self._local_record(session_id)
        if r is None:
            raise NotFound(f"no session {session_id}")
        live = self.live.get(session_id)
        if live is not None:
            r["stats"] = live.stats()
        return r

    async def list_all(self) -> list[SessionRecord]:
        """Every session known to the store (all nodes) and every live local one, with live stats for those."""
        out = await self.store.list_all()
        listed = {r["id"] for r in out}
        lost = [r for sid in self.live if sid not in listed and (r := self._local_record(sid)) is not None]
        if lost:  # records the store lost and the housekeeping has not written back yet
            out = sorted(out + lost, key=lambda r: r["created_at"])
        for r in out:
            live = self.live.get(r["id"])
            if live is not None:
                r["stats"] = live.stats()
        return out

    async def offer(self, session_id: str, sdp: str) -> str:
        """Answer the session's WebRTC offer (on the owner node only)."""
        r = await self.get(session_id)
        if r["node_id"] != self.node_id:
            raise WrongState(
                f"session {session_id} is served by node {r['node_id']}: send the offer to {r['offer_url']}"
            )
        live = self.live.get(session_id)
        if live is None and r["state"] == CREATED:
            # placed here by another node: admit it on a local worker now
            if not self.pool.open_session(
                session_id, r["prompt"], r["seed"], r["strength"], r["steps"], r.get("lipar")
            ):
                self.metrics.sessions_rejected.inc()
                raise NoCapacity("this node filled up since the session was placed here; retry later", 10)
            live = self.live[session_id] = self._new_live(session_id, r["prompt"])
            self._records[session_id] = copy.deepcopy(r)
            if r.get("record"):  # asked for at creation on the node that placed it here
                await self._start_recording(session_id, bool(r.get("record_keep")))
        if live is None or r["state"] in TERMINAL_STATES:
            raise WrongState(f"session {session_id} is {r['state']}: create a new session")
        if r["state"] != CREATED or live.peer is not None or session_id in self._answering:
            raise WrongState(f"session {session_id} already has a connection (state {r['state']})")
        self._answering.add(session_id)
        track = live.out
        try:
            return await live.answer(sdp)
        except BadOffer as e:
            raise BadRequest(str(e)) from None
        finally:
            self._answering.discard(session_id)
            if live.out is not track:  # a failed offer gives the session a fresh track
                self._tap(live)

    async def patch(self, session_id: str, req: SessionChange) -> SessionRecord:
        """Change prompt/params; the owner's worker applies it at the next block boundary."""
        if req.prompt is not None and len(req.prompt) > self.settings.max_prompt_chars:
            raise Invalid(
                f"prompt: {len(req.prompt)} characters is over the limit of {self.settings.max_prompt_chars}"
            )
        r = await self.store.get(session_id) or self._local_record(session_id)
        if r is None:
            raise NotFound(f"no session {session_id}")
        if r["state"] in TERMINAL_STATES:
            raise WrongState(f"session {session_id} is {r['state']}; it cannot change")
        control = req.given()
        fields = cast(RecordFields, dict(control))  # the record's fields of the same names
        if r["node_id"] == self.node_id:
            # the record first: when the store fails, nothing has changed
            updated = await self.store.update(session_id, fields)
            if updated is None and session_id not in self.live:
                raise NotFound(f"no session {session_id}")
            self._apply_control(session_id, control)
            if updated is not None and session_id in self._records:
                self._records[session_id] = updated
            await self._apply_recording(session_id, control)
        else:
            receivers = await self.store.publish_control(
                r["node_id"], {"op": "patch", "session_id": session_id, **control}
            )
            if receivers == 0:
                raise NodeUnavailable(
                    f"node {r['node_id']} that serves session {session_id} is not listening for changes now "
                    "(reconnecting to the session store, or gone); retry shortly",
                    retry_after_s=2,
                )
            if await self.store.update(session_id, fields) is None:
                raise NotFound(f"no session {session_id}")
        return await self.get(session_id)

    async def delete(self, session_id: str) -> None:
        """End the session and free its worker state; the record is removed. Of concurrent DELETEs of one
        session, one ends it (204) and the others find no session (404)."""
        r = await self.store.get(session_id) or self._local_record(session_id)
        if r is None or session_id in self._deleting or session_id in self._deleted:
            raise NotFound(f"no session {session_id}")
        self._deleting.add(session_id)
        try:
            await self._delete(session_id, r)
            self._deleted[session_id] = None
            while len(self._deleted) > _DELETED_KEPT:
                self._deleted.popitem(last=False)
        finally:
            self._deleting.discard(session_id)

    async def _delete(self, session_id: str, r: SessionRecord) -> None:
        # the record (and its tombstone) first: when the store fails, nothing has changed; once the tombstone
        # is written the owner ends the session even if it misses the control message (its housekeeping finds
        # the record gone and the tombstone)
        await self.store.delete(session_id)
        if r["node_id"] == self.node_id:
            await self._end(session_id, CLOSED, "deleted by the client", keep_record=False)
            return
        try:
            receivers = await self.store.publish_control(
                r["node_id"], {"op": "delete", "session_id": session_id}
            )
        except StoreUnavailable:
            receivers = 0
        if receivers == 0:
            log.warning(
                "session %s deleted; its node %s did not get the message now and ends it when its housekeeping "
                "finds the tombstone",
                session_id,
                r["node_id"],
            )

    # ---- control plumbing ------------------------------------------------------------------------------
    def _apply_control(self, session_id: str, control: dict[str, Any]) -> None:
        """Send a change (:meth:`SessionChange.given`, or the same fields of a control message) to the worker."""
        live = self.live.get(session_id)
        if live is None:
            return
        record = self._records.get(session_id)
        if record is not None:
            record.update(cast(RecordFields, {k: v for k, v in control.items() if v is not None}))
        prompt = control.get("prompt")
        cid = live.next_control_id(prompt)
        if prompt is not None:
            self.pool.control(
                session_id,
                m.SetPrompt(
                    session_id,
                    prompt,
                    control.get("transition", CUT),
                    int(control.get("blend_blocks", 0)),
                    control_id=cid,
                ),
            )
        if any(control.get(k) is not None for k in ("seed", "strength", "steps")):
            self.pool.control(
                session_id,
                m.SetParams(
                    session_id, control.get("seed"), control.get("strength"), control.get("steps"), cid
                ),
            )

    async def _on_control(self, message: ControlMessage) -> None:
        """A control message from another node (store pub/sub), for a session this node owns."""
        sid = str(message.get("session_id", ""))
        op = message.get("op")
        if sid not in self.live:
            log.warning("control %s for session %s that this node does not serve", op, sid)
            return
        if op == "patch":
            control = {k: v for k, v in message.items() if k not in ("op", "session_id")}
            self._apply_control(sid, control)
            await self._apply_recording(sid, control)
        elif op == "delete":
            await self._end(sid, CLOSED, "deleted by the client", keep_record=False)

    # ---- recordings -----------------------------------------------------------------------------------
    async def _start_recording(self, session_id: str, keep: bool) -> None:
        """Start recording a live session's edited video (nothing if it records already). A disk error is not
        the client's: the session goes on, its record says ``record: false`` and ``last_error`` says why."""
        if session_id not in self.live or self.recordings.recording(session_id) is not None:
            return
        try:
            rec = self.recordings.start(session_id, keep)
        except OSError as e:
            log.error("session %s: cannot start a recording: %s", session_id, e)
            await self._recording_ended(session_id, f"recording could not start: {e}")
            return
        log.info("session %s: recording to %s", session_id, rec.path)
        self._spawn(self._watch_recording(session_id, rec))

    async def _watch_recording(self, session_id: str, rec: Recorder) -> None:
        """Wait for a recording to end; one that ended by itself (size limit, error) turns ``record`` off."""
        # shielded: this watcher is cancelled at shutdown, which must not cancel the recording's own end
        info: RecordingInfo = await asyncio.shield(asyncio.wrap_future(rec.finished))
        self.recordings.forget(session_id, rec)
        if info.state in ("truncated", "failed") and self.recordings.recording(session_id) is None:
            error = f"recording {info.name} failed: {info.error}" if info.state == "failed" else None
            await self._recording_ended(session_id, error)

    async def _recording_ended(self, session_id: str, error: str | None) -> None:
        """Mark a live session as no longer recording (``last_error`` when ``error``)."""
        if session_id not in self.live:
            return
        fields: RecordFields = {"record": False}
        if error is not None:
            fields["last_error"] = error
        record = self._records.get(session_id)
        if record is not None:
            record.update(fields)
        await self.store.update(session_id, fields)

    async def _apply_recording(self, session_id: str, control: dict[str, Any]) -> None:
        """The recording part of a change (``record``, ``record_keep``) of a session this node serves."""
        if session_id not in self.live:
            return
        keep = control.get("record_keep")
        if keep is not None:
            self.recordings.set_keep(session_id, bool(keep))
        if control.get("record") is True:
            record = self._records.get(session_id)
            if keep is None:
                keep = bool(record.get("record_keep", False)) if record is not None else False
            await self._start_recording(session_id, bool(keep))
        elif control.get("record") is False:
            await self.recordings.stop(session_id)

    async def _remove_recordings(self, session_id: str) -> None:
        """Remove the session's unkept recordings (in a thread: deleting large files can take a while)."""
        try:
            await asyncio.to_thread(self.recordings.remove_unkept, session_id)
        except OSError as e:
            log.error("session %s: its recordings could not be removed: %s", session_id, e)

    async def _sweep_recordings(self) -> None:
        """Remove the unkept recordings of sessions that ended and whose record is gone (expired after
        ``LIPAR_RECORD_TTL_S``, deleted through another node, or lost with a restart of the in-memory store)."""
        for sid in await asyncio.to_thread(self.recordings.sessions_with_unkept):  # reads every sidecar
            if sid not in self.live and await self.store.get(sid) is None:
                await self._remove_recordings(sid)

    # ---- callbacks from the pool and the live sessions (event loop) ------------------------------------
    def _on_block(self, session_id: str, msg: m.BlockDone, frames: np.ndarray) -> None:
        live = self.live.get(session_id)
        if live is not None:
            live.on_block(msg, frames)

    def _on_worker_error(self, session_id: str, message: str, fatal: bool) -> None:
        if fatal:
            self._spawn(self._fail(session_id, message, "model"))
        else:
            self._spawn(self.store.update(session_id, {"last_error": message}))

    def _on_worker_lost(self, session_ids: set[str], reason: str) -> None:
        for sid in sorted(session_ids):
            self._spawn(self._fail(sid, reason, "worker"))

    def _on_live_state(self, session_id: str, state: SessionState, reason: str | None) -> None:
        if state in TERMINAL_STATES:
            if state == FAILED:
                self._spawn(self._fail(session_id, reason or "failed", "rtc"))
            else:
                self._spawn(self._end(session_id, state, reason))
        else:
            self._spawn(self.store.update(session_id, {"state": state}))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[object]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if task.cancelled():
            return
        e = task.exception()
        if isinstance(e, StoreUnavailable):
            log.warning(
                "a session update was not stored (the store is unavailable); the housekeeping re-syncs"
            )
        elif e is not None:
            log.error("session task failed", exc_info=e)

    async def _fail(self, session_id: str, reason: str, cause: str) -> None:
        if session_id in self.live:
            self.metrics.sessions_failed.labels(cause=cause).inc()
        log.warning("session %s failed: %s", session_id, reason)
        await self._end(session_id, FAILED, reason)

    async def _end(
        self, session_id: str, state: SessionState, reason: str | None, keep_record: bool = True
    ) -> None:
        live = self.live.pop(session_id, None)
        self._records.pop(session_id, None)
        self.pool.close_session(session_id)
        stats = None
        if live is not None:
            await live.close()
            stats = live.stats()
            stats["state"] = state
        await self.recordings.stop(session_id)  # finalised: the file plays
        if not keep_record:  # deleted: its recordings go too, unless kept
            await self._remove_recordings(session_id)
        if live is not None:
            log.info("session %s %s: %s", session_id, state, reason)
        if keep_record:
            fields: RecordFields = {"state": state, "reason": reason, "record": False}
            if stats is not None:
                fields["stats"] = stats
            restoring = self._restoring.get(session_id)
            if restoring is not None:
                await restoring.wait()  # its lost record is being written back: then end that record
            try:
                await self._write_final(session_id, fields)
            except StoreUnavailable:
                self._pending[session_id] = fields
                log.warning("session %s %s; its record is updated once the store is back", session_id, state)

    async def _write_final(self, session_id: str, fields: RecordFields) -> None:
        """Write a finished session's state and let its record expire (nothing if the record is gone)."""
        if await self.store.update(session_id, fields) is not None:
            await self.store.expire(session_id, self.settings.record_ttl_s)
        self._pending.pop(session_id, None)

    async def _write_back(self, session_id: str, live: LiveSession) -> None:
        """The store has no record of a live session of this node: write it back from this node's copy (the
        store lost it: Redis restarted without persistence, was flushed or evicted it), or end the session if
        it was deleted on purpose (a tombstone: deleted through another node whose message did not come)."""
        base = self._records.get(session_id)
        if base is None or session_id in self._restoring:
            return
        record = copy.deepcopy(base)
        record.update({"state": live.state, "reason": None, "stats": live.stats(), "updated_at": time.time()})
        done = self._restoring[session_id] = asyncio.Event()
        try:
            outcome = await self.store.restore(record)
        finally:
            del self._restoring[session_id]
            done.set()
        if outcome == "restored":
            log.warning(
                "session %s: the store had lost its record (Redis restarted empty?); written back", session_id
            )
        elif outcome == "deleted" and self.live.get(session_id) is live:
            await self._end(session_id, CLOSED, "deleted by the client", keep_record=False)

    # ---- housekeeping ----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        await self.store.heartbeat(
            {
                "node_id": self.node_id,
                "public_url": self.settings.advertised_url,
                "capacity": self.pool.total_capacity(),
                "free": self.pool.free_capacity(),
                "active": len(self.live),
            },
            self.settings.heartbeat_ttl_s,
        )
        self._last_beat = time.monotonic()

    async def _expire_unclaimed(self) -> None:
        """Close sessions placed on this node by another node whose offer never came."""
        limit = time.time() - self.settings.idle_timeout_s
        for r in await self.store.list_all():
            if (
                r["node_id"] == self.node_id
                and r["state"] == CREATED
                and r["id"] not in self.live
                and r["created_at"] < limit
            ):
                reason = f"idle timeout: no offer within {self.settings.idle_timeout_s:g} s"
                if await self.store.update(r["id"], {"state": CLOSED, "reason": reason}) is not None:
                    await self.store.expire(r["id"], self.settings.record_ttl_s)

    async def _housekeeping(self) -> None:
        """Idle timeouts, stats to the store, gauges, heartbeat and dead-node sweep (until cancelled)."""
        beat_every = self.settings.heartbeat_ttl_s / 3.0
        while True:
            try:
                await self._tick(beat_every)
                if self._store_down_since is not None:
                    log.info(
                        "session store reachable again after %.1f s",
                        time.monotonic() - self._store_down_since,
                    )
                    self._store_down_since, self._store_back_at = None, time.monotonic()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as e:
                if self._store_down_since is None:
                    self._store_down_since = time.monotonic()
                    self._last_beat = float("-inf")  # announce this node as soon as the store is back
                    log.warning(
                        "session store unavailable (%s): the API answers 503 + Retry-After until it is back; "
                        "live sessions keep streaming",
                        e.__cause__ or e,
                    )
            except Exception:
                log.exception("housekeeping failed; retrying")
            await asyncio.sleep(_HOUSEKEEPING_S)

    async def _tick(self, beat_every: float) -> None:
        now = time.monotonic()
        # gauges first: the store calls below fail during an outage
        states = [lv.state for lv in self.live.values()]
        self.metrics.sessions_active.set(states.count(STREAMING))
        self.metrics.sessions_queued.set(states.count(CREATED) + states.count(CONNECTING))
        self.metrics.queue_frames.labels(queue="inbound").set(sum(len(lv.ring) for lv in self.live.values()))
        self.metrics.queue_frames.labels(queue="outbound").set(
            sum(lv.out.queued for lv in self.live.values())
        )
        for sid, live in list(self.live.items()):  # idle timeouts (during an outage too: _end never raises)
            if sid not in self._deleting and now - live.last_activity > self.settings.idle_timeout_s:
                await self._end(sid, CLOSED, f"idle timeout: no video for {self.settings.idle_timeout_s:g} s")
        for sid in list(self._abandoned):  # creations that failed here must not appear late
            await self.store.delete(sid)
            self._abandoned.pop(sid, None)
        for sid, fields in list(self._pending.items()):  # final states the store missed during an outage
            await self._write_final(sid, fields)
        for sid, live in list(self.live.items()):
            if sid in self._deleting or self.live.get(sid) is not live:
                continue
            record = await self.store.update(sid, {"stats": live.stats(), "state": live.state})
            if self.live.get(sid) is not live or sid in self._deleting:
                continue  # ended or being deleted meanwhile
            if record is not None:
                self._records[sid] = record
            else:
                await self._write_back(sid, live)
        if now - self._last_sweep >= _RECORDING_SWEEP_S:
            self._last_sweep = now
            await self._sweep_recordings()
        if now - self._last_beat >= beat_every:
            await self._heartbeat()
            await self._expire_unclaimed()
            if (
                self._store_down_since is not None
                or now - self._store_back_at < self.settings.heartbeat_ttl_s
            ):
                return  # right after an outage: other nodes may not have beaten again yet
            for node_id, sid in await self.store.orphans():
                if node_id == self.node_id:
                    continue
                reason = f"node {node_id} stopped sending heartbeats; its sessions are lost"
                self.metrics.sessions_failed.labels(cause="node").inc()
                if await self.store.update(sid, {"state": FAILED, "reason": reason}) is not None:
                    await self.store.expire(sid, self.settings.record_ttl_s)
                log.warning("session %s failed: %s", sid, reason)
