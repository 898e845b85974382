// The page: webcam → session → WebRTC → edited video, live controls, stats, reconnection.
import { Api, ApiError, describeError } from './api.js';
import { connectPeer, listCameras, openCamera, readStats } from './rtc.js';
import { decodeMask, drawMask, fmt, glassToGlass } from './overlay.js';
import { clock, composite, fileName, pickMimeType, record, saveBlob, snapshot, withDuration } from './capture.js';

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'),
  error: $('error'),
  errorText: $('error-text'),
  errorClose: $('error-close'),
  out: $('out'),
  inp: $('in'),
  mask: $('mask'),
  placeholder: $('placeholder'),
  placeholderText: $('placeholder-text'),
  applied: $('applied'),
  form: $('prompt-form'),
  prompt: $('prompt'),
  known: $('known'),
  knownList: $('known-list'),
  start: $('start'),
  stop: $('stop'),
  stage: $('stage'),
  rec: $('rec'),
  snap: $('snap'),
  mirror: $('mirror'),
  recSbs: $('rec-sbs'),
  recBadge: $('rec-badge'),
  recTime: $('rec-time'),
  transition: $('transition'),
  blend: $('blend'),
  blendV: $('blend-v'),
  strength: $('strength'),
  strengthV: $('strength-v'),
  steps: $('steps'),
  seed: $('seed'),
  seedRand: $('seed-rand'),
  camera: $('camera'),
  token: $('token'),
  maskField: $('mask-field'),
  maskOn: $('mask-on'),
  maskNote: $('mask-note'),
  s: { fps: $('s-fps'), lat: $('s-lat'), prune: $('s-prune'), block: $('s-block') },
};

const STORE_KEY = 'lipar.settings.v1';
const POLL_MS = 1000;
const MAX_BACKOFF_S = 30;

const api = new Api('');
const st = {
  running: false, // the person wants a live session
  stream: null,
  pc: null,
  session: null,
  offerSeq: 0,
  attempt: 0,
  retryTimer: null,
  pollTimer: null,
  discTimer: null,
  patchTimer: null,
  pendingPrompt: null,
  framesSeen: false,
  connState: 'idle',
  mask: null,
  lastSession: null,
  lastClient: null,
  hist: [], // recent client samples: frame rate and receive buffer over a sliding window
  model: null, // GET /v1/model, once it answered
  rec: null, // the recording in progress: { handle, source, startedAt, started, timer, sideBySide }
  lastRec: null, // what the last recording saved (window.__lipar.recording())
};

const WINDOW_MS = 3000;

// Frame rate and receive-buffer delay over the last few seconds (Chromium's own framesPerSecond jumps when
// a block of frames arrives at once, and its buffer figure is an average since the start).
function windowed(cli) {
  const now = performance.now();
  st.hist.push({ t: now, n: cli.framesDecoded, d: cli.jitterBufferDelayS, c: cli.jitterBufferEmitted });
  while (st.hist.length > 2 && now - st.hist[1].t >= WINDOW_MS) st.hist.shift();
  const a = st.hist[0];
  const b = st.hist[st.hist.length - 1];
  const dt = (b.t - a.t) / 1000;
  const fps = dt > 0.5 ? (b.n - a.n) / dt : null;
  const buffer = b.c > a.c ? (1000 * (b.d - a.d)) / (b.c - a.c) : cli.jitterBufferMs;
  return { fps, buffer };
}

// ---- settings ------------------------------------------------------------------------------------------

function settings() {
  const seed = Number.parseInt(ui.seed.value, 10);
  const steps = Number.parseInt(ui.steps.value, 10);
  return {
    prompt: ui.prompt.value.trim(),
    seed: Number.isFinite(seed) && seed >= 0 ? seed : 0,
    strength: Number.parseFloat(ui.strength.value),
    steps: Number.isFinite(steps) ? Math.min(8, Math.max(1, steps)) : 3,
    transition: ui.transition.value === 'smooth' ? 'smooth' : 'cut',
    blend: Number.parseInt(ui.blend.value, 10) || 0,
    camera: ui.camera.value,
    mirror: ui.mirror.checked,
    recSideBySide: ui.recSbs.checked,
  };
}

function saveSettings() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(settings()));
  } catch {
    // private mode: settings live only in the page
  }
}

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE_KEY) || '{}') || {};
  } catch {
    saved = {};
  }
  const q = new URLSearchParams(location.search);
  const pick = (k) => (q.has(k) ? q.get(k) : saved[k]);
  if (pick('prompt')) ui.prompt.value = String(pick('prompt'));
  if (pick('seed') != null) ui.seed.value = String(pick('seed'));
  if (pick('strength') != null) ui.strength.value = String(pick('strength'));
  if (pick('steps') != null) ui.steps.value = String(pick('steps'));
  if (pick('transition')) ui.transition.value = pick('transition') === 'smooth' ? 'smooth' : 'cut';
  if (pick('blend') != null) ui.blend.value = String(pick('blend'));
  const mirror = pick('mirror');
  if (mirror != null) ui.mirror.checked = !['0', 'false', 'no', false].includes(mirror);
  if (typeof saved.recSideBySide === 'boolean') ui.recSbs.checked = saved.recSideBySide;
  syncMirror();
  st.savedCamera = saved.camera || '';
  const autostart = ['1', 'true', 'yes'].includes((q.get('autostart') || '').toLowerCase());
  ui.token.value = takeToken(q);
  syncLabels();
  return { autostart };
}

// The access token comes from the URL fragment (`#token=…`), which the browser never sends to the server, so it
// stays out of access logs, proxies and Referer headers; or the person types it. It is kept in sessionStorage
// (this tab only) and removed from the address bar and history at once. A `?token=` in the query is not used:
// the browser already sent it to the server in the request line; the page removes it and says why.
function takeToken(q) {
  const h = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fromFragment = h.get('token');
  const inQuery = q.has('token');
  if (h.has('token') || inQuery) {
    h.delete('token');
    q.delete('token');
    const query = q.toString() ? `?${q}` : '';
    const hash = h.toString() ? `#${h}` : '';
    history.replaceState(null, '', `${location.pathname}${query}${hash}`);
  }
  if (fromFragment) {
    try {
      sessionStorage.setItem('lipar.token', fromFragment);
    } catch {
      // storage disabled: the token lives in the field only
    }
  }
  if (inQuery && !fromFragment) {
    showError(
      'The link carried the access token as "?token=", which is sent to the server and can end up in logs: ' +
        'it was not used. Use a link with "#token=…" instead, or enter the token below.',
    );
  }
  let stored = '';
  try {
    stored = sessionStorage.getItem('lipar.token') || '';
  } catch {
    stored = '';
  }
  return fromFragment || stored;
}

function syncLabels() {
  ui.strengthV.textContent = Number.parseFloat(ui.strength.value).toFixed(2);
  ui.blendV.textContent = ui.blend.value;
  ui.blend.disabled = ui.transition.value !== 'smooth';
}

// ---- status and errors ---------------------------------------------------------------------------------

function setConn(state, text) {
  st.connState = state;
  ui.conn.dataset.state = state;
  ui.conn.textContent = text;
  ui.start.disabled = st.running;
  ui.stop.disabled = !st.running;
}

function showError(e) {
  ui.errorText.textContent = typeof e === 'string' ? e : describeError(e);
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.errorText.textContent = '';
}

function setPlaceholder(text) {
  if (text == null) {
    ui.placeholder.hidden = true;
    return;
  }
  ui.placeholder.hidden = false;
  ui.placeholderText.textContent = text;
}

// ---- camera --------------------------------------------------------------------------------------------

async function refreshCameras() {
  let cams = [];
  try {
    cams = await listCameras();
  } catch {
    return;
  }
  const current = ui.camera.value || st.savedCamera;
  ui.camera.replaceChildren(new Option('Default camera', ''));
  cams.forEach((c, i) => ui.camera.add(new Option(c.label || `Camera ${i + 1}`, c.deviceId)));
  if ([...ui.camera.options].some((o) => o.value === current)) ui.camera.value = current;
}

async function ensureCamera() {
  if (st.stream && st.stream.getVideoTracks().some((t) => t.readyState === 'live')) return st.stream;
  st.stream = await openCamera(ui.camera.value);
  ui.inp.srcObject = st.stream;
  refreshCameras();
  return st.stream;
}

function stopCamera() {
  if (st.stream) st.stream.getTracks().forEach((t) => t.stop());
  st.stream = null;
  ui.inp.srcObject = null;
}

async function switchCamera() {
  saveSettings();
  if (!st.stream) return;
  try {
    const fresh = await openCamera(ui.camera.value);
    const track = fresh.getVideoTracks()[0];
    const sender = st.pc && st.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (sender) await sender.replaceTrack(track);
    stopCamera();
    st.stream = fresh;
    ui.inp.srcObject = fresh;
  } catch (e) {
    showError(e);
  }
}

// ---- session lifecycle ---------------------------------------------------------------------------------

async function offerUrlFor(session) {
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

async function start() {
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
  setConn('connecting', 'Opening the camera…');
  try {
    await ensureCamera();
  } catch (e) {
    st.running = false;
    setConn('error', 'Camera unavailable');
    showError(e);
    return;
  }
  await connect();
}

async function connect() {
  clearTimeout(st.retryTimer);
  if (!st.running) return;
  const seq = ++st.offerSeq;
  const s = settings();
  api.token = ui.token.value.trim();
  setConn('connecting', st.attempt ? `Reconnecting (try ${st.attempt + 1})…` : 'Connecting…');
  setPlaceholder('Connecting to the server…');
  try {
    await ensureCamera();
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
    if (api.token) sessionStorage.setItem('lipar.token', api.token);
    loadModel();
    const offerUrl = await offerUrlFor(session);
    st.framesSeen = false;
    st.pc = await connectPeer({
      stream: st.stream,
      sendOffer: (sdp) => api.offer(session.id, sdp, offerUrl),
      onTrack: (stream) => {
        ui.out.srcObject = stream;
        ui.out.play().catch(() => {});
      },
      onState: (state) => onPeerState(seq, state),
    });
    if (seq !== st.offerSeq) return;
    setConn('connecting', 'Connected, warming up…');
    setPlaceholder('Warming up the model…');
    startPolling();
  } catch (e) {
    if (seq !== st.offerSeq) return;
    await teardown();
    handleConnectError(e);
  }
}

function handleConnectError(e) {
  if (!st.running) return;
  if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
    st.running = false;
    setConn('error', 'Access token needed');
    setPlaceholder('The server needs an access token.');
    showError(e);
    ui.token.focus();
    return;
  }
  if (e instanceof ApiError && (e.status === 422 || e.status === 413 || e.status === 400)) {
    st.running = false;
    setConn('error', 'Rejected by the server');
    setPlaceholder('Fix the settings and press Start.');
    showError(e);
    return;
  }
  if (e && ['NotAllowedError', 'NotFoundError', 'NotReadableError', 'OverconstrainedError'].includes(e.name)) {
    st.running = false;
    setConn('error', 'Camera unavailable');
    showError(e);
    return;
  }
  showError(e);
  scheduleReconnect(e instanceof ApiError ? e.retryAfter : null);
}

function scheduleReconnect(retryAfterS = null) {
  if (!st.running) return;
  clearTimeout(st.retryTimer);
  st.attempt += 1;
  const backoff = Math.min(MAX_BACKOFF_S, 2 ** (st.attempt - 1)) * (0.8 + 0.4 * Math.random());
  let left = Math.max(1, Math.ceil(retryAfterS != null ? retryAfterS : backoff));
  const tick = () => {
    if (!st.running) return;
    if (left <= 0) {
      connect();
      return;
    }
    setConn('reconnecting', `Reconnecting in ${left} s…`);
    left -= 1;
    st.retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

async function reconnect(reason) {
  if (!st.running) return;
  st.offerSeq += 1;
  await teardown();
  if (reason) showError(`${reason} Your prompt and settings are kept.`);
  scheduleReconnect();
}

function onPeerState(seq, state) {
  if (seq !== st.offerSeq) return;
  clearTimeout(st.discTimer);
  if (state === 'connected') {
    if (!st.framesSeen) setConn('connecting', 'Connected, warming up…');
  } else if (state === 'failed') {
    reconnect('The video connection failed.');
  } else if (state === 'disconnected') {
    setConn('reconnecting', 'Connection unstable…');
    st.discTimer = setTimeout(() => {
      if (seq === st.offerSeq && st.pc && st.pc.connectionState !== 'connected') {
        reconnect('The video connection dropped.');
      }
    }, 4000);
  }
}

async function teardown() {
  stopRecording(); // the file is saved with what was recorded so far
  clearInterval(st.pollTimer);
  clearTimeout(st.discTimer);
  clearTimeout(st.patchTimer);
  st.pollTimer = null;
  if (st.pc) {
    try {
      st.pc.close();
    } catch {
      // already closed
    }
  }
  st.pc = null;
  ui.out.srcObject = null;
  syncCapture();
  const old = st.session;
  st.session = null;
  st.pendingPrompt = null;
  st.hist = [];
  st.mask = null;
  drawMask(ui.mask, ui.out, null);
  if (old) await api.deleteSession(old.id).catch(() => {});
}

async function stop() {
  st.running = false;
  st.offerSeq += 1;
  clearTimeout(st.retryTimer);
  await teardown();
  stopCamera();
  resetStats();
  setConn('idle', 'Stopped');
  setPlaceholder('Stopped. Press Start to go live again.');
  ui.applied.textContent = '';
}

// ---- live updates --------------------------------------------------------------------------------------

function startPolling() {
  clearInterval(st.pollTimer);
  st.pollTimer = setInterval(poll, POLL_MS);
  poll();
}

async function poll() {
  const session = st.session;
  const seq = st.offerSeq;
  if (!session) return;
  const [srv, cli] = await Promise.all([
    api.getSession(session.id).catch((e) => e),
    readStats(st.pc).catch(() => null),
  ]);
  if (seq !== st.offerSeq) return;
  if (cli) {
    Object.assign(cli, windowed(cli));
    st.lastClient = cli;
    if (cli.framesDecoded > 0 && !st.framesSeen) {
      st.framesSeen = true;
      st.attempt = 0;
      clearError();
      setPlaceholder(null);
    }
  }
  if (srv instanceof ApiError) {
    if (srv.status === 404) reconnect('The server ended the session.');
    else if (srv.status === 401) handleConnectError(srv);
    return; // transient poll errors: keep the video, try again next second
  }
  if (srv instanceof Error) return;
  st.session = { ...session, ...srv };
  st.lastSession = srv;
  if (srv.state === 'closed' || srv.state === 'failed') {
    reconnect(`The session ${srv.state}${srv.reason ? `: ${srv.reason}` : ''}.`);
    return;
  }
  if (st.framesSeen) setConn('live', srv.state === 'streaming' ? 'Live' : 'Connected');
  renderStats(srv, cli);
  renderMask(srv);
}

function renderStats(srv, cli) {
  const stats = srv.stats || {};
  const fps = cli && cli.fps != null ? cli.fps : stats.fps_out;
  ui.s.fps.textContent = fmt.fps(fps);
  ui.s.fps.title = `shown ${fmt.fps(cli && cli.fps)} fps · server out ${fmt.fps(stats.fps_out)} fps · webcam in ${fmt.fps(stats.fps_in)} fps`;
  const lat = stats.latency_ms || {};
  const g2g = glassToGlass(lat.p50, cli && cli.rttMs, cli && cli.buffer, stats.fps_in);
  ui.s.lat.textContent = g2g == null ? '–' : `≈${fmt.ms(g2g)}`;
  ui.s.lat.title = `server p50 ${fmt.ms(lat.p50)} · p95 ${fmt.ms(lat.p95)} · rtt ${fmt.ms(cli && cli.rttMs)} · receive buffer ${fmt.ms(cli && cli.buffer)}`;
  ui.s.prune.textContent = fmt.pct(stats.prune_ratio);
  const stage = stats.stage_ms || {};
  ui.s.block.textContent = fmt.ms(stage.total);
  ui.s.block.title = Object.entries(stage)
    .map(([k, v]) => `${k} ${fmt.ms(v)}`)
    .join(' · ');
  if (st.pendingPrompt && stats.active_prompt === st.pendingPrompt) {
    st.pendingPrompt = null;
  }
  if (st.pendingPrompt) {
    ui.applied.textContent = '· applying the new prompt…';
  } else if (stats.active_prompt) {
    const at = stats.prompt_applied_at_block;
    ui.applied.textContent = `· “${stats.active_prompt}”${at != null ? ` since block ${at}` : ''}`;
  }
}

function resetStats() {
  for (const el of Object.values(ui.s)) {
    el.textContent = '–';
    el.title = '';
  }
}

function renderMask(srv) {
  const raw = srv.mask || (srv.stats && srv.stats.mask) || null;
  const grid = raw ? decodeMask(raw) : null;
  ui.maskField.hidden = !grid;
  ui.maskNote.hidden = Boolean(grid);
  st.mask = grid;
  ui.mask.hidden = !(grid && ui.maskOn.checked);
  if (!ui.mask.hidden) drawMask(ui.mask, ui.out, grid);
}

// ---- recording, snapshots, mirror -----------------------------------------------------------------------

function syncMirror() {
  ui.stage.classList.toggle('mirrored', ui.mirror.checked);
}

function outputPlaying() {
  const v = ui.out;
  return Boolean(v.srcObject) && v.videoWidth > 0 && v.readyState >= 2 && !v.paused;
}

// Record and Snapshot need edited frames on screen; Record stays enabled while recording (it is the Stop).
function syncCapture() {
  const playing = outputPlaying();
  const canRecord = pickMimeType() != null;
  ui.rec.disabled = !st.rec && !(playing && canRecord);
  ui.snap.disabled = !playing;
  if (!canRecord) ui.rec.title = 'This browser cannot record video (no MediaRecorder)';
}

function startRecording() {
  if (st.rec || !outputPlaying()) return;
  const mimeType = pickMimeType();
  if (mimeType == null) return;
  const wantSbs = ui.recSbs.checked;
  let source = null;
  let handle;
  try {
    source = composite(ui.out, ui.inp, wantSbs);
    handle = record(source.stream, mimeType, () => source.paint()); // a first frame at once
  } catch (e) {
    if (source) source.stop();
    showError(`The browser could not start the recording: ${e && e.message ? e.message : e}`);
    return;
  }
  const rec = { handle, source, startedAt: performance.now(), started: new Date(), sideBySide: wantSbs };
  const tick = () => {
    ui.recTime.textContent = clock(performance.now() - rec.startedAt);
  };
  tick();
  rec.timer = setInterval(tick, 250);
  st.rec = rec;
  ui.recBadge.hidden = false;
  ui.rec.textContent = '■ Stop & save';
  ui.rec.setAttribute('aria-pressed', 'true');
  ui.recSbs.disabled = true;
  syncCapture();
  handle.done.then(
    (blob) => finishRecording(rec, blob, null),
    (err) => finishRecording(rec, null, err),
  );
}

// The frame on screen once more, then stop: the file lasts until now even when the stream paused.
function stopRecording() {
  const rec = st.rec;
  if (!rec || rec.stopping) return;
  rec.stopping = true;
  rec.source.paint();
  setTimeout(() => rec.handle.stop(), 150); // time for the canvas to deliver that frame to the recorder
}

async function finishRecording(rec, blob, err) {
  const seconds = (performance.now() - rec.startedAt) / 1000;
  clearInterval(rec.timer);
  rec.source.stop();
  if (st.rec === rec) st.rec = null;
  ui.recBadge.hidden = true;
  ui.recTime.textContent = '00:00';
  ui.rec.textContent = '● Record';
  ui.rec.setAttribute('aria-pressed', 'false');
  ui.recSbs.disabled = false;
  syncCapture();
  if (err || !blob || !blob.size) {
    st.lastRec = { state: 'failed', error: String(err ? err.message || err : 'empty recording') };
    showError(`The recording failed${err && err.message ? `: ${err.message}` : ': no video was recorded.'}`);
    return;
  }
  const name = fileName('webm', rec.started);
  const file = await withDuration(blob, seconds);
  saveBlob(file, name);
  st.lastRec = {
    state: 'saved',
    name,
    bytes: file.size,
    durationWritten: file !== blob,
    mimeType: rec.handle.mimeType,
    seconds,
    sideBySide: rec.sideBySide,
  };
}

async function takeSnapshot() {
  try {
    saveBlob(await snapshot(ui.out), fileName('png'));
  } catch (e) {
    showError(e && e.message ? e.message : String(e));
  }
}

// ---- the model's known prompts -------------------------------------------------------------------------

// A model trained on a fixed set of prompts lists them (GET /v1/model); one chip per edit, its canonical
// prompt as the label and the paraphrases in the tooltip. Open-vocabulary models (prompts null) show nothing.
async function loadModel() {
  if (st.model) return;
  try {
    st.model = await api.model(); // public: no token needed, so the chips are there from the start
  } catch {
    return; // an older server or a network error: no chips (tried again after Start)
  }
  applyModelDefaults(st.model);
  showModelCrop(st.model);
  renderKnown(st.model && st.model.prompts);
}

// The webcam preview shows the part of the camera image the model sees: the server scales each frame to cover
// the model's size and keeps the centre (a 832x480 camera and a 256x256 model: the centre square). The preview
// frame takes the model's aspect ratio and the video covers it, centred (style.css, object-fit: cover).
function showModelCrop(model) {
  if (!model || !(model.width > 0) || !(model.height > 0)) return;
  const frame = ui.inp.closest('.frame');
  frame.style.setProperty('--model-aspect', `${model.width} / ${model.height}`);
  frame.dataset.crop = 'model';
  ui.inp.title = `The part of your camera the model edits (centre, ${model.width}:${model.height})`;
}

// The model's own strength and steps (a model trained for one noise level edits poorly at another), unless
// the address names them.
function applyModelDefaults(model) {
  const q = new URLSearchParams(location.search);
  if (model && Number.isFinite(model.strength) && !q.has('strength')) {
    ui.strength.value = String(model.strength);
    ui.strengthV.textContent = Number.parseFloat(ui.strength.value).toFixed(2);
  }
  if (model && Number.isFinite(model.steps) && !q.has('steps')) ui.steps.value = String(model.steps);
}

function renderKnown(prompts) {
  const edits = Object.entries(prompts || {}).filter(([, list]) => Array.isArray(list) && list.length);
  ui.knownList.replaceChildren(
    ...edits.map(([edit, [canonical, ...others]]) => {
      const chip = document.createElement('button');
      chip.type = 'button';
      chip.className = 'chip';
      chip.textContent = canonical;
      chip.dataset.prompt = canonical;
      chip.title = others.length ? `${edit} · also: ${others.join(' · ')}` : edit;
      chip.addEventListener('click', () => pickPrompt(canonical));
      return chip;
    }),
  );
  ui.known.hidden = edits.length === 0;
  markKnown();
}

function markKnown() {
  const current = ui.prompt.value.trim();
  for (const chip of ui.knownList.children) {
    if (chip.dataset.prompt === current) chip.setAttribute('aria-current', 'true');
    else chip.removeAttribute('aria-current');
  }
}

function pickPrompt(prompt) {
  ui.prompt.value = prompt;
  markKnown();
  if (st.session) applyPrompt(); // live: the same PATCH as a typed prompt + Enter
  else saveSettings(); // used by the next Start
}

// ---- controls ------------------------------------------------------------------------------------------

async function patch(changes) {
  if (!st.session) return;
  try {
    const updated = await api.patchSession(st.session.id, changes);
    st.session = { ...st.session, ...updated };
    clearError();
  } catch (e) {
    showError(e);
  }
}

async function applyPrompt() {
  const s = settings();
  saveSettings();
  if (!s.prompt) {
    showError('The prompt is empty.');
    return;
  }
  if (!st.session) {
    if (!st.running) await start();
    return;
  }
  st.pendingPrompt = s.prompt;
  ui.applied.textContent = '· applying the new prompt…';
  const body = { prompt: s.prompt, transition: s.transition };
  if (s.transition === 'smooth' && s.blend > 0) body.blend_blocks = s.blend;
  await patch(body);
}

function schedulePatch(changes) {
  saveSettings();
  clearTimeout(st.patchTimer);
  st.patchTimer = setTimeout(() => patch(changes), 250);
}

function wire() {
  ui.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    applyPrompt();
  });
  ui.start.addEventListener('click', start);
  ui.stop.addEventListener('click', stop);
  ui.errorClose.addEventListener('click', clearError);
  ui.transition.addEventListener('change', () => {
    syncLabels();
    saveSettings();
  });
  ui.blend.addEventListener('input', () => {
    syncLabels();
    saveSettings();
  });
  ui.strength.addEventListener('input', syncLabels);
  ui.strength.addEventListener('change', () => schedulePatch({ strength: settings().strength }));
  ui.steps.addEventListener('change', () => {
    ui.steps.value = String(settings().steps);
    schedulePatch({ steps: settings().steps });
  });
  ui.seed.addEventListener('change', () => schedulePatch({ seed: settings().seed }));
  ui.seedRand.addEventListener('click', () => {
    ui.seed.value = String(Math.floor(Math.random() * 2 ** 31));
    schedulePatch({ seed: settings().seed });
  });
  ui.camera.addEventListener('change', switchCamera);
  ui.rec.addEventListener('click', () => (st.rec ? stopRecording() : startRecording()));
  ui.snap.addEventListener('click', takeSnapshot);
  ui.mirror.addEventListener('change', () => {
    syncMirror();
    saveSettings();
  });
  ui.recSbs.addEventListener('change', saveSettings);
  for (const ev of ['playing', 'pause', 'resize', 'loadeddata', 'emptied']) ui.out.addEventListener(ev, syncCapture);
  ui.prompt.addEventListener('input', markKnown);
  ui.maskOn.addEventListener('change', () => {
    ui.mask.hidden = !(st.mask && ui.maskOn.checked);
    drawMask(ui.mask, ui.out, ui.maskOn.checked ? st.mask : null);
  });
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', refreshCameras);
  }
  document.addEventListener('keydown', (ev) => {
    const typing = ['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement?.tagName);
    if (ev.key === 'Escape' && !ui.error.hidden) clearError();
    if (ev.key === '/' && !typing) {
      ev.preventDefault();
      ui.prompt.focus();
    }
  });
  window.addEventListener('pagehide', () => {
    if (st.session) {
      // best effort: free the server's GPU state when the tab goes away
      fetch(`/v1/sessions/${encodeURIComponent(st.session.id)}`, {
        method: 'DELETE',
        keepalive: true,
        headers: api.token ? { Authorization: `Bearer ${api.token}` } : {},
      }).catch(() => {});
    }
  });
}

// A small hook for tests and debugging: window.__lipar.stats() → WebRTC numbers of the edited video.
window.__lipar = {
  stats: () => readStats(st.pc),
  session: () => st.session,
  state: () => st.connState,
  model: () => st.model,
  recording: () =>
    st.rec
      ? { state: 'recording', seconds: (performance.now() - st.rec.startedAt) / 1000, sideBySide: st.rec.sideBySide }
      : { state: 'idle', last: st.lastRec },
  applyPrompt: (p) => {
    ui.prompt.value = p;
    return applyPrompt();
  },
  start,
  stop,
};

const { autostart } = loadSettings();
wire();
refreshCameras();
loadModel();
if (!window.RTCPeerConnection || !navigator.mediaDevices) {
  showError('This browser lacks WebRTC or camera access (the page needs https or localhost).');
  ui.start.disabled = true;
} else if (autostart) {
  start();
}
