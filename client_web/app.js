// The page's entry point: webcam → session → WebRTC → edited video, live controls, stats, reconnection.
// It makes the context (state.js), wires the controls (controls.js) and starts; each concern lives in its
// own module (client_web/README.md lists them).

import { cameraInfo, refreshCameras } from './camera.js';
import { wire } from './controls.js';
import { ui } from './dom.js';
import { loadModel } from './model.js';
import { recordingInfo } from './recording.js';
import { readStats } from './rtc.js';
import { applyPrompt, start, stop } from './session.js';
import { loadSettings } from './settings.js';
import { createApp } from './state.js';
import { viewerLink } from './share.js';
import { resetStats } from './stats.js';
import { showError } from './status.js';
import { initFullscreen } from './view.js';

const app = createApp();
const { st } = app;

// A small hook for tests and debugging: window.__lipar.stats() → WebRTC numbers of the edited video.
window.__lipar = {
  stats: () => readStats(st.pc),
  session: () => st.session,
  state: () => st.connState,
  model: () => st.model,
  camera: () => cameraInfo(st),
  recording: () => recordingInfo(st),
  viewerLink: () => viewerLink(app),
  applyPrompt: (p) => {
    ui.prompt.value = p;
    return applyPrompt(app);
  },
  start: () => start(app),
  stop: () => stop(app),
};

const { autostart } = loadSettings(st);
resetStats();
initFullscreen();
wire(app);
refreshCameras(st);
loadModel(app);
if (!window.RTCPeerConnection || !navigator.mediaDevices) {
  showError('This browser lacks WebRTC or camera access (the page needs https or localhost).');
  ui.start.disabled = true;
} else if (autostart) {
  start(app);
}
