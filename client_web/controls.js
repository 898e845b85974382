// The controls' event listeners: the prompt form, its notice and chips, Start/Stop, the generation settings,
// camera, Record/Snapshot/Mirror, the heat-map toggle, view modes, the split divider, fullscreen, Copy viewer link,
// keyboard shortcuts and leaving the page.

import { refreshCameras, switchCamera } from './camera.js';
import { ui } from './dom.js';
import { markKnown, schedulePromptCheck } from './prompts.js';
import { startRecording, stopRecording, syncCapture, takeSnapshot } from './recording.js';
import { applyPrompt, deleteOnPageHide, schedulePatch, start, stop } from './session.js';
import { saveSettings, settings, syncLabels, syncStrengthRange } from './settings.js';
import { copyViewerLink } from './share.js';
import { syncMaskToggle } from './stats.js';
import { clearError, showError } from './status.js';
import {
  setSplit,
  setView,
  syncFullscreen,
  syncMirror,
  syncOutAspect,
  syncSplitSource,
  toggleFullscreen,
} from './view.js';

// A chip fills the prompt field and, with a session running, applies it like Enter does.
function pickPrompt(app, prompt) {
  ui.prompt.value = prompt;
  markKnown();
  schedulePromptCheck(app);
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
  // the full range or the recommended one; a strength outside the new range is clamped and sent
  ui.strengthFull.addEventListener('change', () => {
    if (syncStrengthRange(st.model && st.model.ranges)) schedulePatch(app, { strength: settings().strength });
    else saveSettings();
  });
  ui.steps.addEventListener('change', () => {
    ui.steps.value = String(settings().steps);
    // more steps need a higher strength (min_by_steps): both go together
    const changes = { steps: settings().steps };
    if (syncStrengthRange(st.model && st.model.ranges)) changes.strength = settings().strength;
    schedulePatch(app, changes);
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
  ui.prompt.addEventListener('input', () => {
    markKnown();
    schedulePromptCheck(app);
  });
  ui.knownList.addEventListener('click', (ev) => {
    const chip = ev.target.closest('button.chip');
    if (chip) pickPrompt(app, chip.dataset.prompt);
  });
  ui.maskOn.addEventListener('change', () => syncMaskToggle(st));
  // compare and look
  for (const r of ui.viewModes) {
    r.addEventListener('change', () => {
      if (!r.checked) return;
      setView(r.value);
      saveSettings();
    });
  }
  ui.splitPos.addEventListener('input', () => setSplit(Number.parseFloat(ui.splitPos.value)));
  ui.splitPos.addEventListener('change', saveSettings);
  for (const ev of ['loadstart', 'emptied']) ui.inp.addEventListener(ev, syncSplitSource);
  ui.out.addEventListener('resize', syncOutAspect);
  ui.out.addEventListener('loadedmetadata', syncOutAspect);
  ui.fullscreen.addEventListener('click', () =>
    toggleFullscreen().catch((e) => showError(`The browser refused fullscreen: ${e && e.message ? e.message : e}`)),
  );
  document.addEventListener('fullscreenchange', syncFullscreen);
  ui.copyLink.addEventListener('click', () => copyViewerLink(app));
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
