// The session's lifecycle: Start → camera → POST /v1/sessions → WebRTC offer/answer → polling of the live
// stats; reconnection with backoff; live changes (PATCH); Stop and teardown. Every function takes the page's
// context `app` = { api, st } (state.js).

import { ApiError } from './api.js';
import { ensureCamera, stopCamera } from './camera.js';
import { ui } from './dom.js';
import { loadModel } from './model.js';
import { renderApplied, showMatch } from './prompts.js';
import { stopRecording, syncCapture } from './recording.js';
import { connectPeer, readStats } from './rtc.js';
import { settings, saveSettings } from './settings.js';
import { clearMask, renderMask, renderStats, resetStats, windowed } from './stats.js';
import { syncShare } from './share.js';
import { clearError, setConn, setPlaceholder, showError } from './status.js';
import { stopWarmup, watchWarmup } from './warmup.js';

const POLL_MS = 1000;
const MAX_BACKOFF_S = 30;

async function offerUrlFor({ api }, session) {
  // Same node: post to this page's origin (no CORS); another node owns the media: use its offer URL.
  try {
    const u = new URL(session.offer_url, location.href);
    if (u.origin === location.origin) return null;
    const here = await api.health();
    if (here && here.node_id === session.node_id) return null;
    return u.href;
  } catch {
    return null;
  }
}

/** Start (the button, autostart, Enter without a session): open the camera, then connect. */
export async function start(app) {
  const { st } = app;
  if (st.running) return;
  const s = settings();
  if (!s.prompt) {
    showError('Type a prompt first: what should your video look like?');
    ui.prompt.focus();
    return;
  }
  clearError();
  saveSettings();
  st.running = true;
  st.attempt = 0;
  setConn(st, 'connecting', 'Opening the camera…');
  try {
    await ensureCamera(st);
  } catch (e) {
    st.running = false;
    setConn(st, 'error', 'Camera unavailable');
    showError(e);
    return;
  }
  await connect(app);
}

async function connect(app) {
  const { api, st } = app;
  clearTimeout(st.timers.retry);
  if (!st.running) return;
  const seq = ++st.offerSeq;
  const s = settings();
  stopWarmup(st);
  api.token = ui.token.value.trim();
  setConn(st, 'connecting', st.attempt ? `Reconnecting (try ${st.attempt + 1})…` : 'Connecting…');
  setPlaceholder('Connecting to the server…');
  try {
    await ensureCamera(st);
    const session = await api.createSession({
      prompt: s.prompt,
      seed: s.seed,
      strength: s.strength,
      steps: s.steps,
    });
    if (seq !== st.offerSeq || !st.running) {
      api.deleteSession(session.id).catch(() => {});
      return;
    }
    st.session = session;
    if (session.prompt_match) showMatch(st, s.prompt, session.prompt_match);
    if (api.token) sessionStorage.setItem('lipar.token', api.token);
    loadModel(app);
    const offerUrl = await offerUrlFor(app, session);
    st.framesSeen = false;
    st.pc = await connectPeer({
      stream: st.stream,
      sendOffer: (sdp) => api.offer(session.id, sdp, offerUrl),
      onTrack: (stream) => {
        ui.out.srcObject = stream;
        ui.out.play().catch(() => {});
      },
      onState: (state) => onPeerState(app, seq, state),
    });
    if (seq !== st.offerSeq) return;
    setConn(st, 'connecting', 'Connected, warming up…');
    watchWarmup(app, 'session'); // 'Warming up the model… (n s)', with the server's stage if it has one
    startPolling(app);
  } catch (e) {
    if (seq !== st.offerSeq) return;
    await teardown(app);
    handleConnectError(app, e);
  }
}

function handleConnectError(app, e) {
  const { st } = app;
  if (!st.running) return;
  if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
    st.running = false;
    setConn(st, 'error', 'Access token needed');
    setPlaceholder('The server needs an access token.');
    showError(e);
    ui.token.focus();
    return;
  }
  if (e instanceof ApiError && (e.status === 422 || e.status === 413 || e.status === 400)) {
    st.running = false;
    setConn(st, 'error', 'Rejected by the server');
    setPlaceholder('Fix the settings and press Start.');
    showError(e);
    return;
  }
  if (e && ['NotAllowedError', 'NotFoundError', 'NotReadableError', 'OverconstrainedError'].includes(e.name)) {
    st.running = false;
    setConn(st, 'error', 'Camera unavailable');
    showError(e);
    return;
  }
  showError(e);
  scheduleReconnect(app, e instanceof ApiError ? e.retryAfter : null);
  if (e instanceof ApiError && e.status === 503) {
    // full, or still starting: while /readyz reports the start, show it, and connect as soon as it is ready
    watchWarmup(app, 'server', () => {
      if (st.running && !st.session) connect(app);
    });
  }
}

// Exponential backoff (1 s … 30 s, ±20 % jitter), or the server's Retry-After; a countdown in the pill.
function scheduleReconnect(app, retryAfterS = null) {
  const { st } = app;
  if (!st.running) return;
  clearTimeout(st.timers.retry);
  st.attempt += 1;
  const backoff = Math.min(MAX_BACKOFF_S, 2 ** (st.attempt - 1)) * (0.8 + 0.4 * Math.random());
  let left = Math.max(1, Math.ceil(retryAfterS != null ? retryAfterS : backoff));
  const tick = () => {
    if (!st.running) return;
    if (left <= 0) {
      connect(app);
      return;
    }
    setConn(st, 'reconnecting', `Reconnecting in ${left} s…`);
    left -= 1;
    st.timers.retry = setTimeout(tick, 1000);
  };
  tick();
}

async function reconnect(app, reason) {
  const { st } = app;
  if (!st.running) return;
  st.offerSeq += 1;
  await teardown(app);
  if (reason) showError(`${reason} Your prompt and settings are kept.`);
  scheduleReconnect(app);
}

function onPeerState(app, seq, state) {
  const { st } = app;
  if (seq !== st.offerSeq) return;
  clearTimeout(st.timers.disc);
  if (state === 'connected') {
    if (!st.framesSeen) setConn(st, 'connecting', 'Connected, warming up…');
  } else if (state === 'failed') {
    reconnect(app, 'The video connection failed.');
  } else if (state === 'disconnected') {
    setConn(st, 'reconnecting', 'Connection unstable…');
    st.timers.disc = setTimeout(() => {
      if (seq === st.offerSeq && st.pc && st.pc.connectionState !== 'connected') {
        reconnect(app, 'The video connection dropped.');
      }
    }, 4000);
  }
}

// Close the connection and delete the session; the camera stays open (a reconnection reuses it).
async function teardown(app) {
  const { api, st } = app;
  stopRecording(st); // the file is saved with what was recorded so far
  stopWarmup(st);
  clearInterval(st.timers.poll);
  clearTimeout(st.timers.disc);
  clearTimeout(st.timers.patch);
  st.timers.poll = null;
  // A GET of the session still in flight would find it closed once the connection goes (a 404 the browser
  // logs as an error): let it answer first (at most its 5 s timeout).
  if (st.pollRequest) await st.pollRequest;
  if (st.pc) {
    try {
      st.pc.close();
    } catch {
      // already closed
    }
  }
  st.pc = null;
  ui.out.srcObject = null;
  syncCapture(st);
  const old = st.session;
  st.session = null;
  st.pendingPrompt = null;
  clearMask(st);
  syncShare(app);
  if (old) await api.deleteSession(old.id).catch(() => {});
}

/** Stop (the button): end the session and close the camera. */
export async function stop(app) {
  const { st } = app;
  st.running = false;
  st.offerSeq += 1;
  clearTimeout(st.timers.retry);
  await teardown(app);
  stopCamera(st);
  resetStats();
  setConn(st, 'idle', 'Stopped');
  setPlaceholder('Stopped. Press Start to go live again.');
  ui.applied.textContent = '';
}

// ---- live updates --------------------------------------------------------------------------------------

function startPolling(app) {
  const { st } = app;
  clearInterval(st.timers.poll);
  st.timers.poll = setInterval(() => poll(app), POLL_MS);
  poll(app);
}

async function poll(app) {
  const { api, st } = app;
  const session = st.session;
  const seq = st.offerSeq;
  if (!session) return;
  const request = api.getSession(session.id).catch((e) => e);
  st.pollRequest = request;
  const [srv, cli] = await Promise.all([request, readStats(st.pc).catch(() => null)]);
  if (st.pollRequest === request) st.pollRequest = null;
  if (seq !== st.offerSeq) return;
  if (cli) {
    Object.assign(cli, windowed(st, cli));
    st.stats.lastClient = cli;
    if (cli.framesDecoded > 0 && !st.framesSeen) {
      st.framesSeen = true;
      st.attempt = 0;
      stopWarmup(st);
      clearError();
      setPlaceholder(null);
    }
  }
  if (srv instanceof ApiError) {
    if (srv.status === 404) reconnect(app, 'The server ended the session.');
    else if (srv.status === 401) handleConnectError(app, srv);
    return; // transient poll errors: keep the video, try again next second
  }
  if (srv instanceof Error) return;
  st.session = { ...session, ...srv };
  st.stats.lastSession = srv;
  if (srv.state === 'closed' || srv.state === 'failed') {
    reconnect(app, `The session ${srv.state}${srv.reason ? `: ${srv.reason}` : ''}.`);
    return;
  }
  if (st.framesSeen) setConn(st, 'live', srv.state === 'streaming' ? 'Live' : 'Connected');
  renderStats(st, srv, cli);
  renderApplied(st, srv.stats || {});
  renderMask(st, srv);
  syncShare(app);
}

// ---- live changes --------------------------------------------------------------------------------------

async function patch({ api, st }, changes) {
  if (!st.session) return;
  try {
    const updated = await api.patchSession(st.session.id, changes);
    st.session = { ...st.session, ...updated };
    if (updated && updated.prompt_match && changes.prompt) showMatch(st, changes.prompt, updated.prompt_match);
    clearError();
  } catch (e) {
    showError(e);
  }
}

/** The prompt in the field (Enter, Apply, a chip): sent to the live session, or Start without one. */
export async function applyPrompt(app) {
  const { st } = app;
  const s = settings();
  saveSettings();
  if (!s.prompt) {
    showError('The prompt is empty.');
    return;
  }
  if (!st.session) {
    if (!st.running) await start(app);
    return;
  }
  st.pendingPrompt = s.prompt;
  ui.applied.textContent = '· applying the new prompt…';
  const body = { prompt: s.prompt, transition: s.transition };
  if (s.transition === 'smooth' && s.blend > 0) body.blend_blocks = s.blend;
  await patch(app, body);
}

/** A slider or field changed: saved now, sent to the session after 250 ms of quiet. */
export function schedulePatch(app, changes) {
  const { st } = app;
  saveSettings();
  clearTimeout(st.timers.patch);
  st.timers.patch = setTimeout(() => patch(app, changes), 250);
}

/** Best effort when the tab goes away: free the server's GPU state (a keepalive fetch outlives the page). */
export function deleteOnPageHide({ api, st }) {
  if (!st.session) return;
  fetch(`/v1/sessions/${encodeURIComponent(st.session.id)}`, {
    method: 'DELETE',
    keepalive: true,
    headers: api.token ? { Authorization: `Bearer ${api.token}` } : {},
  }).catch(() => {});
}
