// The read-only viewer page (/view/{session id}#token=…): one session's edited video, full window, no controls.
// It works as an OBS browser source. It reads the session (its state and the node that serves its media), sends a
// receive-only WebRTC offer to that node's /v1/sessions/{id}/view, and plays what comes back. It reconnects when the
// connection drops, waits while the session has not started, and says so in one small line when the session does
// not exist or has ended. window.liparViewer holds what tests read: frames shown, the video size, the state.

import { Api, ApiError } from './api.js';
import { gatheringDone } from './rtc.js';

const TOKEN_KEY = 'lipar.token'; // the main page's key (settings.js): one token per tab for both pages
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10000;
const DISCONNECTED_GRACE_MS = 4000; // "disconnected" often recovers by itself; reconnect only after this

const video = document.getElementById('video');
const message = document.getElementById('message');
const sessionId = decodeURIComponent(location.pathname.replace(/\/+$/, '').split('/').pop() || '');

/** What tests (and a curious person in the console) can read. */
const status = { state: 'starting', frames: 0, width: 0, height: 0, message: '', connects: 0 };
window.liparViewer = status;

let pc = null;
let retryTimer = null;
let graceTimer = null;
let backoffMs = RETRY_MIN_MS;
let stopped = false;

// The token comes from the URL fragment (`#token=…`; browsers never send it), as on the main page: it is kept in
// sessionStorage (this tab only, so a reload still has it) and removed from the address bar.
function takeToken() {
  const h = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fromFragment = h.get('token');
  if (h.has('token')) {
    h.delete('token');
    const hash = h.toString() ? `#${h}` : '';
    history.replaceState(null, '', `${location.pathname}${location.search}${hash}`);
  }
  try {
    if (fromFragment) sessionStorage.setItem(TOKEN_KEY, fromFragment);
    return fromFragment || sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return fromFragment || ''; // storage disabled
  }
}

const api = new Api('', takeToken());

function say(text) {
  status.message = text;
  message.textContent = text;
  message.hidden = !text;
}

function setState(state) {
  status.state = state;
  document.body.dataset.state = state;
}

function closePeer() {
  clearTimeout(graceTimer);
  if (pc) {
    pc.onconnectionstatechange = null;
    pc.ontrack = null;
    pc.close();
    pc = null;
  }
}

/** Stop for good (no such session, ended, no token): black video and one line saying why. */
function stop(text) {
  stopped = true;
  clearTimeout(retryTimer);
  closePeer();
  video.srcObject = null;
  setState('stopped');
  say(text);
}

/** Try again after a while (growing up to RETRY_MAX_MS, or the server's Retry-After). */
function retry(text, afterMs = null) {
  if (stopped) return;
  closePeer();
  setState('waiting');
  say(text);
  const wait = afterMs ?? backoffMs;
  backoffMs = Math.min(RETRY_MAX_MS, backoffMs * 2);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, wait);
}

function onConnectionState() {
  if (!pc) return;
  const s = pc.connectionState;
  if (s === 'connected') {
    clearTimeout(graceTimer);
    backoffMs = RETRY_MIN_MS;
    setState('playing');
    say('');
  } else if (s === 'failed' || s === 'closed') {
    retry('Connection lost; reconnecting…', RETRY_MIN_MS);
  } else if (s === 'disconnected') {
    clearTimeout(graceTimer);
    graceTimer = setTimeout(() => {
      if (pc && pc.connectionState !== 'connected') retry('Connection lost; reconnecting…', 0);
    }, DISCONNECTED_GRACE_MS);
  }
}

function explain(e, what) {
  if (!(e instanceof ApiError)) return retry(`${what}: ${e.message || e}; retrying…`);
  if (e.status === 404) return stop('No such session: it does not exist or has ended.');
  if (e.status === 401) {
    return stop('This server needs an access token: open the viewer link with #token=… at the end.');
  }
  if (e.status === 429) return retry(`${e.message}.`, 1000 * (e.retryAfter ?? 10));
  if (e.status === 409) return retry(`${e.message}; retrying…`);
  return retry(`${what}: ${e.message}; retrying…`, e.retryAfter != null ? 1000 * e.retryAfter : null);
}

async function connect() {
  if (stopped) return;
  closePeer();
  if (!sessionId) return stop('No session in the address: the viewer link is /view/<session id>.');
  let session;
  try {
    session = await api.getSession(sessionId);
  } catch (e) {
    return explain(e, 'Cannot read the session');
  }
  if (session.state === 'closed' || session.state === 'failed') return stop('The session has ended.');
  if (session.state === 'created') return retry('Waiting for the session to start…', 2000);

  setState('connecting');
  status.connects += 1;
  const conn = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  pc = conn;
  conn.addTransceiver('video', { direction: 'recvonly' });
  conn.ontrack = (ev) => {
    video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    video.play().catch(() => {}); // muted autoplay is allowed; OBS and headless browsers play anyway
  };
  conn.onconnectionstatechange = onConnectionState;
  try {
    await conn.setLocalDescription(await conn.createOffer());
    await gatheringDone(conn);
    if (pc !== conn) return; // replaced while gathering
    // the node that serves the session's media answers (offer_url names it); its /view sits beside /offer
    const url = session.offer_url.replace(/\/offer$/, '/view');
    const answer = await api.request('POST', '', { sdp: conn.localDescription.sdp, type: 'offer' }, {
      url,
      timeoutMs: 30000,
    });
    if (pc !== conn) return;
    await conn.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
  } catch (e) {
    if (pc === conn) explain(e, 'Cannot connect');
  }
}

// Count the frames actually shown (tests read them; a stalled stream shows as a count that stops).
function countFrames() {
  status.frames += 1;
  status.width = video.videoWidth;
  status.height = video.videoHeight;
  video.requestVideoFrameCallback(countFrames);
}
if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) video.requestVideoFrameCallback(countFrames);

say('Connecting…');
connect();
