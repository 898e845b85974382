// The webcam: the camera list, opening it once per run, switching cameras mid-session, and its frame rate: what the
// server's model sustains for one session (GET /v1/model `input_fps`, measured at the server's warm-up), else
// DEFAULT_FPS; a rate that arrives while the camera is open is applied to its track (applyConstraints).

import { ui } from './dom.js';
import { DEFAULT_FPS, captureConstraints, listCameras, openCamera } from './rtc.js';
import { saveSettings } from './settings.js';
import { showError } from './status.js';

export async function refreshCameras(st) {
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

/** The frame rate to ask the camera for, fps: the server's `input_fps` when it has measured one, else
 * DEFAULT_FPS. */
export function cameraRate(st) {
  const fps = st.model && st.model.input_fps;
  return Number.isFinite(fps) && fps > 0 ? fps : DEFAULT_FPS;
}

// Open the chosen camera at `fps`; a camera that cannot go that slow (OverconstrainedError): at the default rate.
// Returns the stream and the rate it was asked for.
async function open(fps) {
  try {
    return { stream: await openCamera(ui.camera.value, fps), fps };
  } catch (e) {
    if (!(e && e.name === 'OverconstrainedError') || fps === DEFAULT_FPS) throw e;
    return { stream: await openCamera(ui.camera.value, DEFAULT_FPS), fps: DEFAULT_FPS };
  }
}

/** The open camera, or open the chosen one (reused across reconnections). */
export async function ensureCamera(st) {
  if (st.stream && st.stream.getVideoTracks().some((t) => t.readyState === 'live')) return st.stream;
  const { stream, fps } = await open(cameraRate(st));
  st.stream = stream;
  st.camera.fps = st.camera.openedFps = fps;
  ui.inp.srcObject = st.stream;
  refreshCameras(st);
  syncCameraRate(st); // the model info may have arrived while the camera opened
  return st.stream;
}

/** The open camera asked for another rate than `cameraRate` (the server's rate arrived after it opened): ask it
 * for that rate now. A camera that refuses keeps its rate. */
export async function syncCameraRate(st) {
  const track = st.stream && st.stream.getVideoTracks().find((t) => t.readyState === 'live');
  const fps = cameraRate(st);
  if (!track || st.camera.fps === fps) return;
  try {
    await track.applyConstraints(captureConstraints(fps));
    st.camera.fps = fps;
  } catch {
    // not every camera takes new constraints; the server copes with a faster one (it drops frames)
  }
}

/** What the camera was asked for and delivers (window.__lipar.camera(), for tests and debugging). */
export function cameraInfo(st) {
  const track = st.stream && st.stream.getVideoTracks()[0];
  return {
    requestedFps: st.camera.fps,
    openedFps: st.camera.openedFps,
    settings: track ? track.getSettings() : null,
  };
}

export function stopCamera(st) {
  if (st.stream) st.stream.getTracks().forEach((t) => t.stop());
  st.stream = null;
  st.camera.fps = null;
  st.camera.openedFps = null;
  ui.inp.srcObject = null;
}

/** Another camera picked: replace the track being sent without renegotiating. */
export async function switchCamera(st) {
  saveSettings();
  if (!st.stream) return;
  try {
    const { stream: fresh, fps } = await open(cameraRate(st));
    const track = fresh.getVideoTracks()[0];
    const sender = st.pc && st.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (sender) await sender.replaceTrack(track);
    stopCamera(st);
    st.stream = fresh;
    st.camera.fps = st.camera.openedFps = fps;
    ui.inp.srcObject = fresh;
  } catch (e) {
    showError(e);
  }
}
