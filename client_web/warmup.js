// Warm-up feedback: while no edited frame has arrived, the placeholder over the output says how long the page
// has waited and, when the server reports it (GET /readyz `progress: {stage, done, total}`, or a worker's
// `checks.workers[i].warmup`), the stage and a progress bar (n of m). Polled once a second, stopped by the first
// frame or Stop. A server that reports no progress: the elapsed time only.

import { ui } from './dom.js';

const POLL_MS = 1000;
const STAGES = {
  loading: 'loading the model',
  compiling: 'compiling',
  warmup: 'warming up',
  warming: 'warming up',
  ready: 'ready',
};

/** The progress in a /readyz body: top-level `progress`, else the first worker still warming up; or null. */
export function readProgress(body) {
  if (!body || typeof body !== 'object') return null;
  const valid = (p) => p && typeof p === 'object' && typeof p.stage === 'string';
  if (valid(body.progress)) return body.progress;
  const workers = body.checks && body.checks.workers;
  const list = Array.isArray(workers) ? workers : workers && typeof workers === 'object' ? Object.values(workers) : [];
  const warming = list.map((w) => w && w.warmup).filter(valid);
  return warming.find((p) => p.stage !== 'ready' && !(p.total > 0 && p.done >= p.total)) || null;
}

/** Words for a progress: `compiling (2 of 5)`. */
export function describeProgress(p) {
  const stage = STAGES[p.stage] || p.stage.replace(/_/g, ' ');
  return p.total > 0 && Number.isFinite(p.done) ? `${stage} (${p.done} of ${p.total})` : stage;
}

/** Show the warm-up: `base` (e.g. "Warming up the model"), the seconds waited, the server's stage and bar. */
function render(st, base) {
  const secs = Math.floor((performance.now() - st.warmup.since) / 1000);
  const p = st.warmup.progress;
  ui.placeholder.hidden = false;
  ui.placeholderText.textContent = `${base}${p ? `: ${describeProgress(p)}` : '…'} (${secs} s)`;
  const bar = p && p.total > 0 && Number.isFinite(p.done);
  ui.warmupBar.hidden = !bar;
  if (bar) {
    ui.warmupBar.max = p.total;
    ui.warmupBar.value = Math.min(p.done, p.total);
    ui.warmupBar.setAttribute('aria-valuetext', `${p.done} of ${p.total}`);
  }
}

/** From the answer to the offer until the first edited frame. */
export function watchWarmup(app, base = 'Warming up the model') {
  const { api, st } = app;
  stopWarmup(st);
  st.warmup.since = performance.now();
  st.warmup.progress = null;
  const tick = async () => {
    if (!st.running || st.framesSeen) {
      stopWarmup(st);
      return;
    }
    const { body } = await api.ready();
    if (!st.running || st.framesSeen || st.warmup.timer == null) return;
    st.warmup.progress = readProgress(body);
    render(st, base);
  };
  st.warmup.timer = setInterval(tick, POLL_MS);
  render(st, base);
  tick();
}

export function stopWarmup(st) {
  clearInterval(st.warmup.timer);
  st.warmup.timer = null;
  st.warmup.progress = null;
  ui.warmupBar.hidden = true;
}
