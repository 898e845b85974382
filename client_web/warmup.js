// Warm-up feedback in the placeholder over the output, from GET /readyz (polled once a second):
// - the session's warm-up: from the answer to the offer until the first edited frame, "Warming up the model…
//   (12 s)", counting, plus the server's stage should its workers be starting (a restart);
// - the server's start: after a 503 on Start, while /readyz reports the workers starting (`progress: {stage, done,
//   total, fraction}`, or a worker's `checks.workers[i].warmup`), "The server is warming up: compiling (2 of 5)"
//   and a progress bar; once it is ready the page connects at once instead of waiting out its retry countdown.
// A server that reports no progress: the elapsed time only (session) or nothing (server).

import { ui } from './dom.js';

const POLL_MS = 1000;
const STAGES = {
  starting: 'starting',
  loading: 'loading the model',
  compiling: 'compiling',
  capturing: 'capturing CUDA graphs',
  measuring: 'measuring its frame rate',
};

const valid = (p) => p && typeof p === 'object' && typeof p.stage === 'string' && p.stage !== 'ready';

/** The warm-up still under way in a /readyz body: top-level `progress`, else the first worker still warming up;
 * null when there is none (ready, or an older server). */
export function readProgress(body) {
  if (!body || typeof body !== 'object') return null;
  if (body.progress && typeof body.progress === 'object') return valid(body.progress) ? body.progress : null;
  const workers = body.checks && body.checks.workers;
  const list = Array.isArray(workers) ? workers : workers && typeof workers === 'object' ? Object.values(workers) : [];
  return list.map((w) => w && w.warmup).find((p) => valid(p) && !(p.total > 0 && p.done >= p.total)) || null;
}

/** Words for a progress: `compiling (2 of 5)`. */
export function describeProgress(p) {
  const stage = STAGES[p.stage] || p.stage.replace(/_/g, ' ');
  return p.total > 0 && Number.isFinite(p.done) ? `${stage} (${p.done} of ${p.total})` : stage;
}

// The bar: done of total, else the workers' average fraction, else none.
function renderBar(p) {
  let value = null;
  let max = 1;
  if (p && p.total > 0 && Number.isFinite(p.done)) {
    value = Math.min(p.done, p.total);
    max = p.total;
  } else if (p && Number.isFinite(p.fraction)) {
    value = Math.min(1, Math.max(0, p.fraction));
  }
  ui.warmupBar.hidden = value == null;
  if (value == null) return;
  ui.warmupBar.max = max;
  ui.warmupBar.value = value;
  ui.warmupBar.setAttribute('aria-valuetext', max === 1 ? `${Math.round(100 * value)} %` : `${value} of ${max}`);
}

function render(st, base, counting) {
  const p = st.warmup.progress;
  const secs = Math.floor((performance.now() - st.warmup.since) / 1000);
  ui.placeholder.hidden = false;
  ui.placeholderText.textContent = `${base}${p ? `: ${describeProgress(p)}` : '…'}${counting ? ` (${secs} s)` : ''}`;
  renderBar(p);
}

/**
 * Watch /readyz while no edited frame has arrived. `mode` 'session': after the offer, counting seconds.
 * 'server': after a 503 on Start, shown only while the server reports its start; `onReady` runs once when a
 * server seen starting becomes ready (a server that was ready already, i.e. full, is left to the retry countdown).
 */
export function watchWarmup(app, mode = 'session', onReady = null) {
  const { api, st } = app;
  const session = mode === 'session';
  stopWarmup(st);
  st.warmup.since = performance.now();
  st.warmup.mode = mode;
  const base = session ? 'Warming up the model' : 'The server is warming up';
  let sawStarting = false;
  const tick = async () => {
    const timer = st.warmup.timer;
    if (!st.running || st.framesSeen) {
      stopWarmup(st);
      return;
    }
    const { ok, body } = await api.ready();
    if (!st.running || st.framesSeen || st.warmup.timer !== timer) return; // stopped or restarted meanwhile
    st.warmup.progress = readProgress(body);
    if (session) {
      render(st, base, true);
    } else if (st.warmup.progress) {
      sawStarting = true;
      render(st, base, false);
    } else if (ok) {
      stopWarmup(st);
      if (sawStarting && onReady) onReady();
    }
  };
  st.warmup.timer = setInterval(tick, POLL_MS);
  if (session) render(st, base, true);
  tick();
}

export function stopWarmup(st) {
  clearInterval(st.warmup.timer);
  st.warmup.timer = null;
  st.warmup.progress = null;
  st.warmup.mode = null;
  ui.warmupBar.hidden = true;
}
