// The controls' event listeners: the prompt form and chips, Start/Stop, the generation settings, camera,
// Record/Snapshot/Mirror, the heat-map toggle, keyboard shortcuts and leaving the page.

import { refreshCameras, switchCamera } from './camera.js';
import { ui } from './dom.js';
import { markKnown } from './prompts.js';
import { startRecording, stopRecording, syncCapture, takeSnapshot } from './recording.js';
import { applyPrompt, deleteOnPageHide, schedulePatch, start, stop } from './session.js';
import { saveSettings, settings, syncLabels } from './settings.js';
import { syncMaskToggle } from './stats.js';
import { clearError } from './status.js';
import { syncMirror } from './view.js';

// A chip fills the prompt field and, with a session running, applies it like Enter does.
function pickPrompt(app, prompt) {
  ui.prompt.value = prompt;
  markKnown();
  if (app.st.session) applyPrompt(app); // live: the same PATCH as a typed prompt + Enter
  else saveSettings(); // used by the next Start
}

/** Attach every listener once, at load. */
export function wire(app) {
  const { st } = app;
  ui.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    applyPrompt(app);
  });
  ui.start.addEventListener('click', () => start(app));
  ui.stop.addEventListener('click', () => stop(app));
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
  ui.strength.addEventListener('change', () => schedulePatch(app, { strength: settings().strength }));
  ui.steps.addEventListener('change', () => {
    ui.steps.value = String(settings().steps);
    schedulePatch(app, { steps: settings().steps });
  });
  ui.seed.addEventListener('change', () => schedulePatch(app, { seed: settings().seed }));
  ui.seedRand.addEventListener('click', () => {
    ui.seed.value = String(Math.floor(Math.random() * 2 ** 31));
    schedulePatch(app, { seed: settings().seed });
  });
  ui.camera.addEventListener('change', () => switchCamera(st));
  ui.rec.addEventListener('click', () => (st.rec.current ? stopRecording(st) : startRecording(st)));
  ui.snap.addEventListener('click', takeSnapshot);
  ui.mirror.addEventListener('change', () => {
    syncMirror();
    saveSettings();
  });
  ui.recSbs.addEventListener('change', saveSettings);
  for (const ev of ['playing', 'pause', 'resize', 'loadeddata', 'emptied']) {
    ui.out.addEventListener(ev, () => syncCapture(st));
  }
  ui.prompt.addEventListener('input', markKnown);
  ui.knownList.addEventListener('click', (ev) => {
    const chip = ev.target.closest('button.chip');
    if (chip) pickPrompt(app, chip.dataset.prompt);
  });
  ui.maskOn.addEventListener('change', () => syncMaskToggle(st));
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => refreshCameras(st));
  }
  document.addEventListener('keydown', (ev) => {
    const typing = ['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement?.tagName);
    if (ev.key === 'Escape' && !ui.error.hidden) clearError();
    if (ev.key === '/' && !typing) {
      ev.preventDefault();
      ui.prompt.focus();
    }
  });
  window.addEventListener('pagehide', () => deleteOnPageHide(app));
}
