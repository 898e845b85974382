// The stats overlay over the output (fps, latency, pruned, block) and the mask heat map.
//
// A block-based stream delivers its frames in bursts (a block's frames within a few milliseconds, then nothing
// until the next block), and the server's figures change once per block. So the overlay shows steady numbers:
// the frame rate is counted over a sliding window longer than the gap between bursts, and every figure is
// smoothed exponentially (time constant SMOOTH_MS); the page renders them once per poll (1 s). Each figure's
// tooltip (`title`) says what it measures, over which window, and the raw values.

import { ui } from './dom.js';
import { decodeMask, drawMask, fmt, glassToGlass } from './overlay.js';

const MIN_WINDOW_MS = 4000; // the frame-rate window: at least this long ...
const MAX_WINDOW_MS = 12000; // ... and up to this long when bursts are further apart (two burst gaps)
const SMOOTH_MS = 2000; // time constant of the exponential smoothing

// Frame rate and receive-buffer delay over a sliding window (Chromium's own framesPerSecond jumps when a block
// of frames arrives at once, and its buffer figure is an average since the start). The window spans at least
// MIN_WINDOW_MS and two gaps between bursts (so that it never falls between two blocks), at most MAX_WINDOW_MS.
export function windowed(st, cli) {
  const hist = st.stats.hist;
  const now = performance.now();
  hist.push({ t: now, n: cli.framesDecoded, d: cli.jitterBufferDelayS, c: cli.jitterBufferEmitted });
  while (hist.length > 2 && now - hist[1].t >= MAX_WINDOW_MS) hist.shift();
  const arrivals = hist.filter((h, i) => i > 0 && h.n > hist[i - 1].n).map((h) => h.t);
  const gap = arrivals.length > 1 ? (arrivals[arrivals.length - 1] - arrivals[0]) / (arrivals.length - 1) : 0;
  const windowMs = Math.min(MAX_WINDOW_MS, Math.max(MIN_WINDOW_MS, 2 * gap));
  let i = 0;
  while (i < hist.length - 2 && now - hist[i + 1].t >= windowMs) i += 1;
  const a = hist[i];
  const b = hist[hist.length - 1];
  const dt = (b.t - a.t) / 1000;
  const fps = dt > 0.5 ? (b.n - a.n) / dt : null;
  const buffer = b.c > a.c ? (1000 * (b.d - a.d)) / (b.c - a.c) : cli.jitterBufferMs;
  return { fps, buffer, windowS: dt };
}

// Exponential smoothing of `raw` under `key`; a missing value keeps the last smoothed one (no flicker to –).
function smooth(st, key, raw) {
  const s = st.stats.smooth;
  const now = performance.now();
  if (raw == null || !Number.isFinite(raw)) return s[key] ? s[key].v : null;
  const prev = s[key];
  if (!prev) {
    s[key] = { v: raw, t: now };
    return raw;
  }
  prev.v += (1 - Math.exp(-(now - prev.t) / SMOOTH_MS)) * (raw - prev.v);
  prev.t = now;
  return prev.v;
}

const SMOOTHED = `smoothed over about ${SMOOTH_MS / 1000} s`;

// What each figure measures (its tooltip, followed by the current raw values while a session runs).
const ABOUT = {
  fps:
    `Edited frames shown per second in this browser: frames decoded over a sliding window of at least ` +
    `${MIN_WINDOW_MS / 1000} s (longer when the server's blocks arrive further apart), ${SMOOTHED}.`,
  lat:
    `Glass-to-glass estimate, ${SMOOTHED}: the server's capture-to-send median + network round trip + ` +
    `receive buffer (same window as fps) + one frame of capture and one of display.`,
  prune: `Share of latent patches LIPAR skipped (reused instead of recomputed) per block, ${SMOOTHED}.`,
  block: `Model time per block (encode + mask + DiT + decode), ${SMOOTHED}.`,
};

/** The overlay's figures from the session JSON (`srv`) and the browser's WebRTC numbers (`cli`, windowed). */
export function renderStats(st, srv, cli) {
  const stats = srv.stats || {};
  const win = cli && cli.windowS ? ` (last ${cli.windowS.toFixed(0)} s)` : '';
  const fps = smooth(st, 'fps', cli && cli.fps != null ? cli.fps : stats.fps_out);
  ui.s.fps.textContent = fmt.fps(fps);
  ui.s.fps.title =
    `${ABOUT.fps} Now: shown ${fmt.fps(cli && cli.fps)} fps${win} · ` +
    `server out ${fmt.fps(stats.fps_out)} fps · webcam in ${fmt.fps(stats.fps_in)} fps · ` +
    `camera asked for ${fmt.fps(st.camera.fps)} fps (the server's model sustains ` +
    `${fmt.fps(st.model && st.model.input_fps)} fps per session)`;
  const lat = stats.latency_ms || {};
  const g2g = smooth(st, 'lat', glassToGlass(lat.p50, cli && cli.rttMs, cli && cli.buffer, stats.fps_in));
  ui.s.lat.textContent = g2g == null ? '–' : `≈${fmt.ms(g2g)}`;
  ui.s.lat.title =
    `${ABOUT.lat} Now: server p50 ${fmt.ms(lat.p50)} · p95 ${fmt.ms(lat.p95)} · ` +
    `rtt ${fmt.ms(cli && cli.rttMs)} · receive buffer ${fmt.ms(cli && cli.buffer)}${win}`;
  const prune = smooth(st, 'prune', stats.prune_ratio);
  ui.s.prune.textContent = fmt.pct(prune);
  ui.s.prune.title = `${ABOUT.prune} Last block: ${fmt.pct(stats.prune_ratio)}`;
  const stage = stats.stage_ms || {};
  const block = smooth(st, 'block', stage.total);
  ui.s.block.textContent = fmt.ms(block);
  const stages = Object.entries(stage)
    .map(([k, v]) => `${k} ${fmt.ms(v)}`)
    .join(' · ');
  ui.s.block.title = ABOUT.block + (stages ? ` Last block: ${stages}` : '');
}

/** No session: dashes, and the tooltips say what each figure will measure. */
export function resetStats() {
  for (const [k, el] of Object.entries(ui.s)) {
    el.textContent = '–';
    el.title = ABOUT[k];
  }
}

/** The heat-map toggle appears when the session JSON carries the latest block's mask; painted when ticked. */
export function renderMask(st, srv) {
  const raw = srv.mask || (srv.stats && srv.stats.mask) || null;
  const grid = raw ? decodeMask(raw) : null;
  ui.maskField.hidden = !grid;
  ui.maskNote.hidden = Boolean(grid);
  st.stats.mask = grid;
  ui.mask.hidden = !(grid && ui.maskOn.checked);
  if (!ui.mask.hidden) drawMask(ui.mask, ui.out, grid);
}

export function syncMaskToggle(st) {
  ui.mask.hidden = !(st.stats.mask && ui.maskOn.checked);
  drawMask(ui.mask, ui.out, ui.maskOn.checked ? st.stats.mask : null);
}

/** A connection ends: its samples, smoothed figures and mask go. */
export function clearMask(st) {
  st.stats.hist = [];
  st.stats.smooth = {};
  st.stats.mask = null;
  drawMask(ui.mask, ui.out, null);
}
