// The stats overlay over the output (fps, latency, pruned, block) and the mask heat map.

import { ui } from './dom.js';
import { decodeMask, drawMask, fmt, glassToGlass } from './overlay.js';

const WINDOW_MS = 3000;

// Frame rate and receive-buffer delay over the last few seconds (Chromium's own framesPerSecond jumps when
// a block of frames arrives at once, and its buffer figure is an average since the start).
export function windowed(st, cli) {
  const hist = st.stats.hist;
  const now = performance.now();
  hist.push({ t: now, n: cli.framesDecoded, d: cli.jitterBufferDelayS, c: cli.jitterBufferEmitted });
  while (hist.length > 2 && now - hist[1].t >= WINDOW_MS) hist.shift();
  const a = hist[0];
  const b = hist[hist.length - 1];
  const dt = (b.t - a.t) / 1000;
  const fps = dt > 0.5 ? (b.n - a.n) / dt : null;
  const buffer = b.c > a.c ? (1000 * (b.d - a.d)) / (b.c - a.c) : cli.jitterBufferMs;
  return { fps, buffer };
}

/** The overlay's figures from the session JSON (`srv`) and the browser's WebRTC numbers (`cli`, windowed). */
export function renderStats(srv, cli) {
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
}

export function resetStats() {
  for (const el of Object.values(ui.s)) {
    el.textContent = '–';
    el.title = '';
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

export function clearMask(st) {
  st.stats.hist = [];
  st.stats.mask = null;
  drawMask(ui.mask, ui.out, null);
}
