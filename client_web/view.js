// How the videos are shown: the view mode (side by side, split, output only), the split divider, fullscreen,
// mirroring (selfie view) and the webcam preview cropped to what the model sees. No state of its own: the mode
// and the divider live in the DOM (the stage's data-view, the divider's value) and in the saved settings.

import { ui } from './dom.js';

export const VIEW_MODES = ['sbs', 'split', 'output'];
const NAMES = { sbs: 'side by side', split: 'split', output: 'output only' };

/** Preview, output and heat map flip together with the Mirror toggle (style.css `.stage.mirrored`). */
export function syncMirror() {
  ui.stage.classList.toggle('mirrored', ui.mirror.checked);
}

/** The view mode shown now. */
export function viewMode() {
  return VIEW_MODES.includes(ui.stage.dataset.view) ? ui.stage.dataset.view : 'sbs';
}

/** Show `mode` (`sbs`, `split`, `output`; anything else: side by side). */
export function setView(mode) {
  const m = VIEW_MODES.includes(mode) ? mode : 'sbs';
  ui.stage.dataset.view = m;
  for (const r of ui.viewModes) r.checked = r.value === m;
  const split = m === 'split';
  ui.splitClip.hidden = !split;
  ui.splitLine.hidden = !split;
  ui.splitPos.hidden = !split;
  syncSplitSource();
  ui.stage.setAttribute('aria-label', `Video, ${NAMES[m]}`);
}

// The split view's webcam layer plays the same stream as the preview (one MediaStream, two video elements),
// only while the split is shown.
export function syncSplitSource() {
  const want = viewMode() === 'split' ? ui.inp.srcObject : null;
  if (ui.splitIn.srcObject !== want) ui.splitIn.srcObject = want;
}

/** Put the split divider at `pct` % of the frame's width from the left (0..100). */
export function setSplit(pct) {
  const p = Math.min(100, Math.max(0, Number.isFinite(pct) ? pct : 50));
  ui.splitPos.value = String(p);
  ui.outFrame.style.setProperty('--split', `${p}%`);
  ui.splitPos.setAttribute('aria-valuetext', `webcam ${Math.round(p)} %, edited ${Math.round(100 - p)} %`);
}

export function splitPosition() {
  return Number.parseFloat(ui.splitPos.value);
}

// The output frame's aspect ratio in the split view: the model's (GET /v1/model), then the edited video's own
// once frames arrive; both layers cover that frame, so the pictures line up.
function setOutAspect(w, h) {
  if (!(w > 0 && h > 0)) return;
  ui.stage.style.setProperty('--out-aspect', `${w} / ${h}`);
  ui.stage.style.setProperty('--out-ratio', String(w / h));
}

export function syncOutAspect() {
  setOutAspect(ui.out.videoWidth, ui.out.videoHeight);
}

// The webcam preview shows the part of the camera image the model sees: the server scales each frame to cover
// the model's size and keeps the centre (a 832x480 camera and a 256x256 model: the centre square). The preview
// frame takes the model's aspect ratio and the video covers it, centred (style.css, object-fit: cover).
export function showModelCrop(model) {
  if (!model || !(model.width > 0) || !(model.height > 0)) return;
  const frame = ui.inp.closest('.frame');
  frame.style.setProperty('--model-aspect', `${model.width} / ${model.height}`);
  frame.dataset.crop = 'model';
  ui.inp.title = `The part of your camera the model edits (centre, ${model.width}:${model.height})`;
  if (!ui.out.videoWidth) setOutAspect(model.width, model.height);
}

// ---- fullscreen ----------------------------------------------------------------------------------------

/** The stage on the whole screen, or back (Esc leaves too: the browser's own). */
export async function toggleFullscreen() {
  if (document.fullscreenElement) {
    await document.exitFullscreen();
    return;
  }
  await ui.stage.requestFullscreen({ navigationUI: 'hide' });
}

export function syncFullscreen() {
  const on = document.fullscreenElement === ui.stage;
  ui.fullscreen.setAttribute('aria-pressed', String(on));
  ui.fullscreen.textContent = on ? 'Leave fullscreen' : 'Fullscreen';
}

/** Hide the button where the browser has no Fullscreen API (iPhone Safari) or it is not allowed. */
export function initFullscreen() {
  ui.fullscreen.hidden = !(document.fullscreenEnabled && ui.stage.requestFullscreen);
  syncFullscreen();
}
